"""A real pod (`service.serve.supervisor`) whose ONNX sessions can be held at gates the test opens.

`python -m tests.reliability._pod` with `OMR_*` settings in the environment and `POD_GATE_DIR`: serves like
`python -m service` with `OMR_WORKERS` workers, except that each worker's session (the real one, wrapped):
- blocks every model call while `<gate>/warm.hold` exists, in the ONE worker that claims `<gate>/warm.claim<N>`
  for N = the number written in warm.hold (workers warm one after another: "2" holds the second one);
- blocks a model call whose batch holds a crop of pixel value SLOW_VALUE until `<gate>/slow.open` exists
  (a held model: rows queue behind it, so the pod's backlog is known exactly).
The gates poll a file every 10 ms inside the *server under test*; the test itself waits on observable state.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.modelconfig import ModelConfig
from service.core.preprocess import normalize
from service.core.runtime import Session, create_session
from service.serve import supervisor
from service.serve.cpus import resolve_workers
from service.settings import Settings

SLOW_VALUE = 9


def _hold(path: Path, opened: bool) -> None:
    """Wait while `path` exists (opened=False) or until it exists (opened=True); at most 120 s."""
    deadline = time.monotonic() + 120
    while path.exists() != opened and time.monotonic() < deadline:
        time.sleep(0.01)


@dataclass
class GatedSession:
    inner: Session
    gate: Path
    slow_mark: float
    warm_gated: bool

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[Any]:
        if self.warm_gated:
            _hold(self.gate / "warm.hold", opened=False)
        (x,) = input_feed.values()
        flat = x.reshape(x.shape[0], -1)
        if bool(np.any(np.all(flat == np.float32(self.slow_mark), axis=1))):
            _hold(self.gate / "slow.open", opened=True)
        return self.inner.run(output_names, input_feed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class GatedFactory:
    gate: Path

    def __call__(self, path: Path, config: ModelConfig, settings: Settings) -> Session:
        mark = float(normalize(np.full((1, 1, 1), SLOW_VALUE, np.uint8), config.preprocess, config.input.dtype).flat[0])
        warm_gated = False
        hold = self.gate / "warm.hold"
        if hold.exists():
            target = int(hold.read_text().strip() or "1")
            for n in range(1, target + 1):  # claim the first free number: the n-th worker to load claims n
                try:
                    os.close(os.open(self.gate / f"warm.claim{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue
                warm_gated = n == target
                break
        return GatedSession(create_session(path, config, settings), self.gate, mark, warm_gated)


def main() -> int:
    settings = Settings()
    return supervisor.run(settings, resolve_workers(settings.workers), GatedFactory(Path(os.environ["POD_GATE_DIR"])))


if __name__ == "__main__":
    raise SystemExit(main())
