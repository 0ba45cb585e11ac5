"""Checkpoint format shared by training, calibration and export.

A checkpoint is a `torch.save`d dict:
    arch         str, key of `models.net.ARCHS`, or 'KEY*N' for an ensemble of N members
    classes      list[str], output column order
    state_dict   the model weights
    config       dict, the TrainConfig that produced it (dataclasses.asdict)
    temperature  float, calibration temperature (1.0 until fitted)
    metrics      dict, e.g. {"real_dev": {"binary_accuracy": ..., "accuracy": ...}, "synthetic_val": {...}}
    data         str, a one-line description of the training data
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.net import Classifier, build_model


def save_checkpoint(path: Path, model: Classifier, arch: str, classes: list[str], **meta: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"arch": arch, "classes": list(classes), "state_dict": model.state_dict(), "temperature": 1.0}
    payload.update(meta)
    torch.save(payload, path)


def load_checkpoint(path: Path) -> tuple[Classifier, dict[str, Any]]:
    """The model in eval mode and the checkpoint's metadata (everything but the weights)."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(payload["arch"], len(payload["classes"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta.setdefault("temperature", 1.0)
    return model, meta
