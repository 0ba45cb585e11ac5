"""TensorRT profile and engine-cache keys (service.core.trt_cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.modelconfig import InputSpec
from service.core.trt_cache import cache_dir, cache_key, next_pow2, profile_shapes, provider_options, tensorrt_spec

SHA = "ab" * 32
BASE = ("omr-bubble", SHA, "1.32.0", "10.9.0", "NVIDIA H100 80GB HBM3")


def test_tensorrt_spec_derives_profile_from_batch_and_views() -> None:
    spec = tensorrt_spec(256, 5)
    assert (spec.min_batch, spec.opt_batch, spec.max_batch) == (1, 256, 2048)  # 1280 rows -> 2048 bucket
    assert tensorrt_spec(64, 1).max_batch == 64


def test_tensorrt_spec_refuses_zero_views() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        tensorrt_spec(256, 0)


@pytest.mark.parametrize(("n", "want"), [(1, 1), (2, 2), (3, 4), (256, 256), (1280, 2048)])
def test_next_pow2_rounds_up(n: int, want: int) -> None:
    assert next_pow2(n) == want


def test_cache_key_is_stable_and_filesystem_safe() -> None:
    key = cache_key(*BASE)
    assert key == cache_key(*BASE)
    assert "/" not in key and " " not in key
    assert key.startswith("omr-bubble-abababababababab-ort1.32.0-trt10.9.0-NVIDIA_H100_80GB_HBM3-")


@pytest.mark.parametrize("index", range(5))
def test_cache_key_changes_with_each_component(index: int) -> None:
    changed = list(BASE)
    changed[index] = "cd" * 32 if index == 1 else changed[index] + "x"
    assert cache_key(*changed) != cache_key(*BASE)


def test_cache_key_refuses_non_digest() -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cache_key("m", "abc", "1", "2", "gpu")


def test_provider_options_name_caches_and_profile(tmp_path: Path) -> None:
    folder = cache_dir(tmp_path, *BASE)
    opts = provider_options(InputSpec(), tensorrt_spec(256, 5), folder)
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(folder)
    assert opts["trt_engine_cache_enable"] == opts["trt_timing_cache_enable"] == "True"
    assert profile_shapes(InputSpec(), tensorrt_spec(256, 5)) == {
        "trt_profile_min_shapes": "input:1x1x32x32",
        "trt_profile_opt_shapes": "input:256x1x32x32",
        "trt_profile_max_shapes": "input:2048x1x32x32",
    }
