"""The model repository, loaded: every `<name>/<version>/` becomes a session plus its own batcher.

Files are verified (`verified_model_path`: exists, sha256 matches config) before a session is created; a
repository entry that fails verification stops start-up loudly rather than serving something unverified.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.admission import Admission
from service.core.batcher import Batcher, InferFn
from service.core.modelconfig import ModelArtifactError, ModelConfig, list_versions, load_config, verified_model_path
from service.core.postprocess import calibrated_probabilities
from service.core.preprocess import normalize
from service.core.runtime import Session, SessionFactory, active_provider, available_providers
from service.errors import ModelNotFound, clip
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


def make_infer(config: ModelConfig, session: Session, call_rows: int | None = None) -> InferFn:
    """uint8 [B, H, W] -> float32 [B, C] calibrated probabilities. Thread-safe (ORT's `run` is).

    `call_rows`: at most this many rows per `session.run` (None: the whole batch at once). On CPU a batch of
    256 rows costs 15-40 % more per row than four of 64 (the activations leave the core's cache: measured
    46-58 vs 40 us/row, docs/performance.md), and the rows come out bit-identical either way.
    """

    def run(batch_u8: np.ndarray) -> np.ndarray:
        x = normalize(batch_u8, config.preprocess, config.input.dtype)
        (logits,) = session.run([config.output_name], {config.input.name: x})
        return np.asarray(logits, dtype=np.float32)

    def infer(batch_u8: np.ndarray) -> np.ndarray:
        if call_rows is None or len(batch_u8) <= call_rows:
            logits = run(batch_u8)
        else:
            logits = np.concatenate([run(batch_u8[a : a + call_rows]) for a in range(0, len(batch_u8), call_rows)])
        return calibrated_probabilities(logits, config.temperature)

    return infer


@dataclass
class ServedModel:
    config: ModelConfig
    path: Path
    session: Session
    provider: str
    batcher: Batcher
    admission: Admission

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version


def _variant(config: ModelConfig, wanted: str, provider: str) -> str:
    """The variant key to load: the requested precision if the version has it, else the default (fp32).

    `auto` takes the fastest precision exported for `provider` (the preferred provider this ORT build has):
    int8 on CPU, fp16 on GPUs (each variant's `providers` list says where export meant it to run).
    """
    if wanted == "auto":
        order = ("int8", "fp32") if provider == "CPUExecutionProvider" else ("fp16", "fp32")
        for precision in order:
            for key, spec in config.variants.items():
                if spec.precision == precision and provider in spec.providers:
                    return key
        return config.default_variant
    for key, spec in config.variants.items():
        if spec.precision == wanted:
            return key
    return config.default_variant


def _call_rows(settings: Settings, provider: str) -> int | None:
    """Rows per model call: chunked on CPU (`Settings.cpu_call_rows`); GPUs take a batch whole."""
    return settings.cpu_call_rows if provider == "CPUExecutionProvider" else None


def _pads(settings: Settings, provider: str) -> bool:
    """Pad model calls to batch buckets: as set, else only off CPU (`Settings.pad_batches`)."""
    return settings.pad_batches if settings.pad_batches is not None else provider != "CPUExecutionProvider"


class Registry:
    def __init__(self, models: dict[str, dict[str, ServedModel]], default_model: str, default_version: str | None):
        if default_model not in models:
            raise ModelArtifactError(f"default model {default_model!r} not in the repository ({sorted(models)})")
        self.models = models
        self.default_model = default_model
        self.default_version = default_version

    @classmethod
    def load(
        cls, settings: Settings, session_factory: SessionFactory, executor: Executor, metrics: Metrics
    ) -> Registry:
        repo = settings.model_repository
        if not repo.is_dir():
            raise ModelArtifactError(f"model repository {repo} is not a folder")
        models: dict[str, dict[str, ServedModel]] = {}
        for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
            for version in list_versions(repo, model_dir.name):
                vdir = model_dir / version
                config = load_config(vdir)
                if (config.name, config.version) != (model_dir.name, version):
                    raise ModelArtifactError(f"{vdir}: config names {config.name}/{config.version}")
                wanted = available_providers(list(settings.providers))[0]
                path = verified_model_path(vdir, config, _variant(config, settings.model_variant, wanted))
                session = session_factory(path, config, settings)
                provider = active_provider(session)
                if provider != wanted:
                    log.warning("%s/%s: %s did not load, running on %s", config.name, version, wanted, provider)
                batcher = Batcher(
                    config.name,
                    provider,
                    make_infer(config, session, _call_rows(settings, provider)),
                    row_shape=(config.input.height, config.input.width),
                    max_batch_size=settings.max_batch_size,
                    max_delay_s=settings.max_delay_ms / 1000.0,
                    max_in_flight=settings.max_batches_in_flight,
                    executor=executor,
                    metrics=metrics,
                    pad=_pads(settings, provider),
                )
                admission = Admission(batcher, settings.queue_limit, metrics)
                served = ServedModel(config, path, session, provider, batcher, admission)
                models.setdefault(config.name, {})[version] = served
                metrics.model_info.labels(config.name, version).info({"provider": provider, "file": path.name})
                log.info("loaded %s/%s from %s on %s", config.name, version, path.name, provider)
        if settings.default_version is not None:
            versions = models.get(settings.default_model, {})
            if settings.default_version not in versions:
                raise ModelArtifactError(
                    f"default version {settings.default_model}/{settings.default_version} not in the repository"
                )
        return cls(models, settings.default_model, settings.default_version)

    def all(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    def get(self, name: str | None = None, version: str | None = None) -> ServedModel:
        name = name or self.default_model
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model {clip(name)}; served: {sorted(self.models)}")
        if version is None:
            version = self.default_version if name == self.default_model and self.default_version else None
        if version is None:
            version = list(versions)[-1]  # list_versions order: highest last
        if version not in versions:
            raise ModelNotFound(f"model {clip(name)} has no version {clip(version)}; served: {list(versions)}")
        return versions[version]
