"""The fixed class contract and the binary "marked" readings (profiles).

The class order here is the training order; the order that a served model actually uses is the one in its
repository config (`ModelConfig.classes`), which export copies from the checkpoint.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("empty", "filled", "partial", "dot", "cross", "erased", "scribble", "no_bubble")

#: Profile name -> set of classes that count as *marked*. Every other class is "not marked".
#: - ink: any deliberate ink counts (the default reading of the real-dev labels).
#: - fill: fill-in-the-bubble forms: only filled/partial fills count; X's, ticks and scribbles do not.
#: - check-correct: check-box forms where a scribble-out cancels a choice: crosses and fills count,
#:   scribble means de-selection.
PROFILES: dict[str, frozenset[str]] = {
    "ink": frozenset({"filled", "partial", "cross", "scribble"}),
    "fill": frozenset({"filled", "partial"}),
    "check-correct": frozenset({"filled", "partial", "cross"}),
}
DEFAULT_PROFILE = "ink"


def profile_maps(classes: tuple[str, ...] | list[str] = CLASSES) -> dict[str, dict[str, bool]]:
    """Profiles as explicit class -> marked maps (the form stored in model configs)."""
    return {name: {c: c in marked for c in classes} for name, marked in PROFILES.items()}
