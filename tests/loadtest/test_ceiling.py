"""In-process ceiling on the bundled model (tiny budgets: this proves the harness, not the speed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loadtest import ceiling
from loadtest.crops import CropPool
from service.core.modelconfig import load_config
from service.settings import BUNDLED_REPOSITORY

VERSION_DIR = BUNDLED_REPOSITORY / "omr-bubble" / "1"


@pytest.fixture(scope="module")
def pool() -> CropPool:
    return CropPool.build(16, seed=1)


def test_variants_find_the_bundled_fp32() -> None:
    found = ceiling.variants(VERSION_DIR)
    assert found["fp32"] == VERSION_DIR / "model.onnx"


def test_variants_skip_a_corrupt_file_and_list_unregistered(tmp_path: Path) -> None:
    version = tmp_path / "1"
    shutil.copytree(VERSION_DIR, version)
    (version / "model.onnx").write_bytes(b"corrupt")  # sha256 no longer matches the config
    shutil.copy(VERSION_DIR / "model.onnx", version / "extra.onnx")
    found = ceiling.variants(version)
    assert "fp32" not in found and found["extra.onnx"] == version / "extra.onnx"


def test_model_rates_count_every_batch(pool: CropPool) -> None:
    config = load_config(VERSION_DIR)
    sess = ceiling.session(VERSION_DIR / "model.onnx")
    rates = ceiling.model_rates(sess, config, pool.raw, [1, 40], min_cpu_s=0.02)
    assert [r.batch for r in rates] == [1, 40]
    assert all(r.crops % r.batch == 0 and r.per_core > 0 and r.wall > 0 for r in rates)
    assert ceiling.best(rates) in rates


def test_pipeline_rate_runs_the_service_path(pool: CropPool) -> None:
    config = load_config(VERSION_DIR)
    sess = ceiling.session(VERSION_DIR / "model.onnx")
    prep, full = ceiling.pipeline_rate(sess, config, pool.b64, 8, min_cpu_s=0.02)
    assert prep.label == "decode+preprocess" and full.label == "decode+preprocess+model"
    assert prep.crops >= 8 and full.crops >= 8
    assert full.to_dict()["crops_per_s_per_core"] == full.per_core


def test_parallel_pipeline_rate_runs_every_thread_at_once(pool: CropPool) -> None:
    config = load_config(VERSION_DIR)
    sess = ceiling.session(VERSION_DIR / "model.onnx")
    out = ceiling.parallel_pipeline_rate(sess, config, pool.b64, 8, threads=2, seconds=0.2)
    assert out["threads"] == 2 and out["batch"] == 8
    assert len(out["per_thread"]) == 2 and all(n >= 8 and n % 8 == 0 for n in out["per_thread"])  # each ran
    assert out["crops"] == sum(out["per_thread"])
    assert out["crops_per_s"] == out["crops"] / out["wall_s"] and out["wall_s"] >= 0.2
