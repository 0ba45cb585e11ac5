"""What a running app holds: settings, metrics, the loaded models, readiness. One per `create_app`."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.core.classifier import Classifier
from service.core.registry import Registry
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    registry: Registry
    classifier: Classifier
    preprocess_pool: ThreadPoolExecutor
    inference_pool: ThreadPoolExecutor
    token: str | None
    warmed: threading.Event = field(default_factory=threading.Event)
    draining: bool = False
    problems: list[str] = field(default_factory=list)

    def not_ready_reasons(self) -> list[str]:
        reasons = list(self.problems)
        if self.draining:
            reasons.append("shutting down")
        if not self.warmed.is_set():
            reasons.append("warming up")
        return reasons

    @property
    def ready(self) -> bool:
        return not self.not_ready_reasons()

    def start_draining(self) -> None:
        """Readiness turns false at once (SIGTERM); queued and in-flight requests still complete."""
        if not self.draining:
            log.info("draining: readiness is now false")
        self.draining = True
        self.metrics.ready.set(0)

    def warm(self) -> None:
        """Run every batch bucket of every model once (executor thread), then check providers."""
        try:
            for served in self.registry.all():
                timings = served.batcher.warm()
                log.info("warmed %s/%s buckets %s in %.2fs", served.name, served.version, served.batcher.buckets,
                         sum(timings))  # fmt: skip
            required = self.settings.require_provider
            if required is not None:
                for served in self.registry.all():
                    if served.provider != required:
                        self.problems.append(
                            f"{served.name}/{served.version} runs on {served.provider}, {required} is required"
                        )
        except Exception as exc:
            log.exception("warm-up failed")
            self.problems.append(f"warm-up failed: {type(exc).__name__}")
        finally:
            self.warmed.set()
            self.metrics.ready.set(1 if self.ready else 0)
