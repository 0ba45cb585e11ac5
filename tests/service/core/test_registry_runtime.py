"""Model repository loading and ONNX Runtime session set-up, on the bundled model and edited copies of it."""

from __future__ import annotations

import asyncio
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.app import _build_state
from service.core.batcher import Batcher
from service.core.modelconfig import ModelArtifactError, load_config
from service.core.registry import Registry, make_infer
from service.core.runtime import active_provider, available_providers, create_session, provider_options
from service.errors import ModelNotFound
from service.metrics import Metrics
from service.settings import BUNDLED_REPOSITORY, Settings

BUNDLED = BUNDLED_REPOSITORY / "omr-bubble" / "1"


def _repo_with_versions(tmp_path: Path, versions: list[str]) -> Path:
    for v in versions:
        dst = tmp_path / "omr-bubble" / v
        shutil.copytree(BUNDLED, dst)
        cfg = json.loads((dst / "config.json").read_text())
        cfg["version"] = v
        (dst / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def _load(settings: Settings) -> Registry:
    with ThreadPoolExecutor(1) as pool:
        return Registry.load(settings, create_session, pool, Metrics())


def test_available_providers_skips_missing_keeps_cpu() -> None:
    chosen = available_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert chosen[-1] == "CPUExecutionProvider"
    import onnxruntime as ort

    assert set(chosen) <= set(ort.get_available_providers())


def test_provider_options_trt_profile_covers_every_bucket(tmp_path: Path) -> None:
    config = load_config(BUNDLED)
    settings = Settings(trt_cache_dir=tmp_path, max_batch_size=2048)
    opts = provider_options("TensorrtExecutionProvider", BUNDLED / "model.onnx", config, settings)
    assert opts["trt_profile_min_shapes"] == "input:1x1x32x32"
    assert opts["trt_profile_max_shapes"] == "input:2048x1x32x32"
    cache = Path(opts["trt_engine_cache_path"])
    assert opts["trt_engine_cache_enable"] == "True" and cache.is_dir() and cache.is_relative_to(tmp_path)
    cuda = provider_options("CUDAExecutionProvider", BUNDLED / "model.onnx", config, settings)
    assert cuda == {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "True"}


def test_create_session_reports_active_provider() -> None:
    import onnxruntime as ort

    config = load_config(BUNDLED)
    settings = Settings(intra_op_threads=1)
    session = create_session(BUNDLED / "model.onnx", config, settings)
    # ONNX Runtime's own list decides: the first preferred provider this build has (CPU on a CPU-only build)
    expected = next(p for p in settings.providers if p in ort.get_available_providers())
    assert active_provider(session) == expected
    cpu_only = create_session(BUNDLED / "model.onnx", config, Settings(providers=["CPUExecutionProvider"]))
    assert active_provider(cpu_only) == "CPUExecutionProvider"


def test_registry_highest_version_default_and_pinned(tmp_path: Path) -> None:
    repo = _repo_with_versions(tmp_path, ["1", "2", "10"])
    reg = _load(Settings(model_repository=repo))
    assert reg.get().version == "10"  # numeric order, as Triton
    assert reg.get("omr-bubble", "2").version == "2"
    assert _load(Settings(model_repository=repo, default_version="2")).get().version == "2"
    with pytest.raises(ModelNotFound, match="no version"):
        reg.get("omr-bubble", "3")
    with pytest.raises(ModelNotFound, match="unknown model"):
        reg.get("other")


def test_registry_refuses_tampered_model_file(tmp_path: Path) -> None:
    repo = _repo_with_versions(tmp_path, ["1"])
    onnx_file = repo / "omr-bubble" / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ModelArtifactError, match="sha256 mismatch"):
        _load(Settings(model_repository=repo))


def test_registry_refuses_missing_default_model(tmp_path: Path) -> None:
    repo = _repo_with_versions(tmp_path, ["1"])
    with pytest.raises(ModelArtifactError, match="default model"):
        _load(Settings(model_repository=repo, default_model="absent"))


def test_require_provider_missing_keeps_readiness_false() -> None:
    settings = Settings(require_provider="TensorrtExecutionProvider", providers=["CPUExecutionProvider"])
    state = _build_state(settings, create_session)
    try:
        state.warm()
        assert not state.ready
        assert any("TensorrtExecutionProvider is required" in r for r in state.not_ready_reasons())
    finally:
        state.inference_pool.shutdown()
        state.preprocess_pool.shutdown()


def test_warm_runs_every_bucket_then_ready() -> None:
    state = _build_state(Settings(max_batch_size=16), create_session)
    try:
        assert not state.ready and state.not_ready_reasons() == ["warming up"]
        state.warm()
        assert state.ready
        state.start_draining()
        assert state.not_ready_reasons() == ["shutting down"]
    finally:
        state.inference_pool.shutdown()
        state.preprocess_pool.shutdown()


def test_registry_model_variant_picks_file_by_precision(tmp_path: Path) -> None:
    # the bundled version holds real exported variants (verify_session refuses a file of another variant)
    repo = _repo_with_versions(tmp_path, ["1"])
    vdir = repo / "omr-bubble" / "1"
    cfg = json.loads((vdir / "config.json").read_text())
    assert "fp16" in cfg["variants"]  # export always writes the GPU variant
    fp16 = _load(Settings(model_repository=repo, model_variant="fp16")).get()
    assert fp16.path.name == cfg["variants"]["fp16"]["file"]
    if "int8" in cfg["variants"]:
        auto_cpu = Settings(model_repository=repo, model_variant="auto", providers=["CPUExecutionProvider"])
        assert _load(auto_cpu).get().path.name == cfg["variants"]["int8"]["file"]
        del cfg["variants"]["int8"]
        (vdir / "config.json").write_text(json.dumps(cfg))
    # a variant the version does not offer falls back to fp32
    assert _load(Settings(model_repository=repo, model_variant="int8")).get().path.name == "model.onnx"


@pytest.mark.integration
def test_two_models_served_side_by_side(tmp_path: Path, live_server, make_crops, b64_crops) -> None:
    import httpx

    from service.app import create_app

    repo = _repo_with_versions(tmp_path, ["1"])
    other = repo / "omr-other" / "3"
    shutil.copytree(BUNDLED, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(name="omr-other", version="3")
    (other / "config.json").write_text(json.dumps(cfg))
    with live_server(create_app(Settings(model_repository=repo))) as url:
        crops = b64_crops(make_crops(3))
        default = httpx.post(f"{url}/classify", json={"crops": crops}, timeout=10).json()
        chosen = httpx.post(f"{url}/classify", json={"crops": crops, "model": "omr-other"}, timeout=10).json()
        assert default["model"]["name"] == "omr-bubble"
        assert (chosen["model"]["name"], chosen["model"]["version"]) == ("omr-other", "3")
        assert httpx.get(f"{url}/v2/models/omr-other/versions/3/ready", timeout=5).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=5).json()
        assert {m["name"] for m in ready["models"]} == {"omr-bubble", "omr-other"}


class _Recording:
    """The real ONNX Runtime session, recording the batch size of every call."""

    def __init__(self, session) -> None:
        self.session = session
        self.sizes: list[int] = []

    def run(self, names, feeds):
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)

    def __getattr__(self, name: str):
        return getattr(self.session, name)


async def _submit_once(batcher: Batcher, rows: np.ndarray) -> np.ndarray:
    """One request through a started batcher (stopped again after)."""
    batcher.start()
    try:
        return await batcher.submit(rows)
    finally:
        await batcher.stop()


@pytest.mark.parametrize(("pad_batches", "expect_pads", "sizes"), [(None, False, [5]), (True, True, [8])])
def test_cpu_model_calls_are_not_padded_unless_asked(pad_batches, expect_pads, sizes) -> None:
    recorded: list[_Recording] = []

    def factory(path, config, settings):
        recorded.append(_Recording(create_session(path, config, settings)))
        return recorded[-1]

    with ThreadPoolExecutor(1) as pool:
        registry = Registry.load(Settings(pad_batches=pad_batches), factory, pool, Metrics())
        served = registry.get()
        assert served.provider == "CPUExecutionProvider" and served.batcher.pads is expect_pads
        rows = np.full((5, served.config.input.height, served.config.input.width), 255, np.uint8)

        out = asyncio.run(_submit_once(served.batcher, rows))
    assert out.shape == (5, len(served.config.classes))
    assert recorded[0].sizes == sizes  # 5 rows: exactly 5 on CPU, the 8-row bucket when padding is asked for


@pytest.mark.parametrize(("call_rows", "sizes"), [(64, [64, 64, 64, 8]), (4096, [200])])
def test_cpu_batches_run_as_calls_of_at_most_cpu_call_rows(call_rows, sizes) -> None:
    """A 200-row batch on CPU is four ONNX Runtime calls of <= 64 rows (activations stay in cache), and its
    probabilities are bit-identical to one 200-row call (what a limit above the batch gives): chunking is a
    speed choice, never an answer change."""
    recorded: list[_Recording] = []

    def factory(path, config, settings):
        recorded.append(_Recording(create_session(path, config, settings)))
        return recorded[-1]

    rng = np.random.default_rng(3)
    with ThreadPoolExecutor(1) as pool:
        settings = Settings(cpu_call_rows=call_rows, max_batches_in_flight=1)  # one 200-row batch
        served = Registry.load(settings, factory, pool, Metrics()).get()
        rows = rng.integers(0, 256, (200, served.config.input.height, served.config.input.width), dtype=np.uint8)

        out = asyncio.run(_submit_once(served.batcher, rows))
    assert recorded[0].sizes == sizes
    with ThreadPoolExecutor(1) as pool:
        whole = Registry.load(Settings(cpu_call_rows=4096), create_session, pool, Metrics()).get()
    assert np.array_equal(out, make_infer(whole.config, whole.session)(rows))
