"""What a running app holds: settings, metrics, the loaded models, readiness. One per `create_app`.

In a pod of several workers (`service.serve`) each worker's state also holds its `WorkerSlot` of the shared
block: readiness is then the pod's (every worker warmed, no replacement starting, the pod not draining), and
this worker reports its own phase there.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.core.classifier import Classifier
from service.core.registry import Registry
from service.metrics import Metrics
from service.serve.pod import MAX_MODELS, Phase, WorkerSlot
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
    pod: WorkerSlot | None = None  # set when this process is one worker of several
    #: called once on the first SIGTERM, after readiness turned false (e.g. a per-worker gRPC server's drain)
    on_drain: list[Callable[[], None]] = field(default_factory=list)

    def not_ready_reasons(self) -> list[str]:
        reasons = list(self.problems)
        if self.draining:
            reasons.append("shutting down")
        if not self.warmed.is_set():
            reasons.append("warming up")
        if self.pod is not None and not reasons:
            reasons.extend(self.pod.not_ready_reasons())
        return reasons

    @property
    def shutting_down(self) -> bool:
        """This worker, or the pod it belongs to, got the signal to drain."""
        return self.draining or (self.pod is not None and self.pod.pod.draining)

    @property
    def ready(self) -> bool:
        return not self.not_ready_reasons()

    def join_pod(self, slot: WorkerSlot) -> None:
        """This process is one worker of a pod: pod-wide readiness, queue limit and metrics."""
        if len(self.registry.all()) > MAX_MODELS:
            raise ValueError(f"a pod shares the queue of at most {MAX_MODELS} model versions")
        self.pod = slot
        slot.set_phase(Phase.STARTING)
        for index, served in enumerate(self.registry.all()):
            served.admission.share(slot, index)
        self.metrics.add_pod(slot.pod)

    def start_draining(self) -> None:
        """Readiness turns false at once (SIGTERM); queued and in-flight requests still complete."""
        first = not self.draining
        if first:
            log.info("draining: readiness is now false")
        self.draining = True
        self.metrics.ready.set(0)
        if self.pod is not None:
            self.pod.set_phase(Phase.DRAINING)
        if first:
            for callback in self.on_drain:
                try:
                    callback()
                except Exception:
                    log.exception("a drain callback failed")

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
            # Everything alive now (modules, the app, sessions, configs) lives as long as the process: frozen
            # out of the collector, a full collection no longer walks it. Under single-crop load the young
            # objects of each request trigger collections; with the start-up heap frozen they cost less and
            # the p99 of single crops fell from ~50 to ~30 ms (docs/performance.md). Collect first, so no
            # garbage is frozen with it.
            gc.collect()
            gc.freeze()
            # young objects alive at once before a collection: a request's crops, decisions and response live
            # together and die by reference counting; at Python's 700 a 100-crop sheet paid one collection of
            # them (~125 us) on its critical path, and every 10th a gen-1 one (docs/performance.md)
            _gen0, gen1, gen2 = gc.get_threshold()
            gc.set_threshold(self.settings.gc_young_threshold, gen1, gen2)
            self.warmed.set()
            healthy = not self.problems and not self.draining
            self.metrics.ready.set(1 if healthy else 0)
            if self.pod is not None and healthy:
                self.pod.set_phase(Phase.READY)
