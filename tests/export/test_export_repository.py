"""The published entry: loadable by the service's loaders, self-describing metadata, measured = served."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest

from export import parity
from export.pipeline import ExportOptions, export_checkpoint
from export.torch_onnx import ExportError
from models.evaluate import evaluate, load_model
from models.labelled import read_labels
from service.core.modelconfig import (
    METADATA_KEY,
    METADATA_SHA256_KEY,
    METADATA_VARIANT_KEY,
    ModelConfig,
    config_from_metadata,
    list_versions,
    load_config,
    verified_model_path,
    verify_session,
)
from service.core.taxonomy import CLASSES, profile_maps


def test_config_loads_through_service_loaders(exported) -> None:
    config = load_config(exported.version_dir)
    assert config == exported.result.config
    assert set(config.variants) == {"fp32", "fp16", "int8"}
    for name in config.variants:
        sess = parity.session(str(verified_model_path(exported.version_dir, config, name)))
        verify_session(sess, config, name)
    assert list_versions(exported.repository, "omr-bubble") == ["1"]


def test_config_holds_what_the_service_needs(exported) -> None:
    c = exported.result.config
    assert c.classes == CLASSES
    assert c.profiles == profile_maps(CLASSES)
    assert c.input.name == "input" and (c.input.height, c.input.width) == (32, 32)
    assert c.temperature == pytest.approx(1.2)
    assert (c.tensorrt.min_batch, c.tensorrt.opt_batch, c.tensorrt.max_batch) == (1, 256, 2048)
    assert c.versions["opset"] == "18" and c.versions["onnxruntime"]
    assert c.training["checkpoint_sha256"] and c.training["data"] == "test: synthetic crops"
    real = c.metrics["real_dev"]
    assert real["n"] == len(exported.real.y) and 0.0 <= real["binary_accuracy"] <= 1.0


def test_metadata_round_trips_config(exported) -> None:
    config = exported.result.config
    for name, spec in config.variants.items():
        sess = parity.session(str(exported.version_dir / spec.file))
        meta = sess.get_modelmeta().custom_metadata_map
        embedded = config_from_metadata(meta[METADATA_KEY])
        assert meta[METADATA_VARIANT_KEY] == name
        assert "cannot contain its own digest" in meta[METADATA_SHA256_KEY]
        assert all(v.sha256 is None and v.benchmark == {} for v in embedded.variants.values())
        stripped = {k: v.model_copy(update={"sha256": None, "benchmark": {}}) for k, v in config.variants.items()}
        assert embedded == config.model_copy(update={"variants": stripped})


def test_metadata_is_readable_with_onnx_alone(exported) -> None:
    model = onnx.load(exported.version_dir / "model.onnx")
    props = {p.key: p.value for p in model.metadata_props}
    assert ModelConfig.model_validate(json.loads(props[METADATA_KEY])).classes == CLASSES
    assert model.opset_import[0].version >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis


def test_real_dev_metrics_match_models_evaluate(exported, real_dev) -> None:
    report = evaluate(load_model(exported.version_dir), read_labels(real_dev), False, "ink", None)
    recorded = exported.result.config.variants["fp32"].metrics
    assert report["binary_accuracy"] == pytest.approx(recorded["binary_accuracy"])
    assert report["accuracy"] == pytest.approx(recorded["accuracy"])


def test_export_refuses_existing_version_without_force(exported) -> None:
    before = (exported.version_dir / "config.json").read_bytes()
    with pytest.raises(ExportError, match="exists; pass --force"):
        export_checkpoint(exported.checkpoint, exported.repository, ExportOptions(log=lambda _m: None))
    assert (exported.version_dir / "config.json").read_bytes() == before


def test_export_is_byte_reproducible(checkpoint, synthetic_labels, tmp_path) -> None:
    opts = ExportOptions(variants=("fp32",), real_dev=synthetic_labels, benchmark=False, threads=1, log=lambda _m: None)
    a = export_checkpoint(checkpoint, tmp_path / "a", opts).config.variants["fp32"].sha256
    b = export_checkpoint(checkpoint, tmp_path / "b", opts).config.variants["fp32"].sha256
    assert a == b
    assert not [p for p in (tmp_path / "a" / "omr-bubble").iterdir() if p.name.startswith(".")]  # no staging left


def test_export_force_replaces_the_version(checkpoint, synthetic_labels, tmp_path) -> None:
    """--force swaps the whole version: the new files, the new config, nothing of the old one left behind."""
    common = {"real_dev": synthetic_labels, "benchmark": False, "threads": 1, "log": lambda _m: None}
    first = export_checkpoint(checkpoint, tmp_path, ExportOptions(variants=("fp32", "int8"), int8_max_binary_drop=1.0,
                                                                  **common))  # fmt: skip
    assert (first.version_dir / "model.int8.onnx").is_file()
    with pytest.raises(ExportError, match="exists; pass --force"):
        export_checkpoint(checkpoint, tmp_path, ExportOptions(variants=("fp32",), **common))
    again = export_checkpoint(checkpoint, tmp_path, ExportOptions(variants=("fp32",), force=True, **common))
    assert again.version_dir == first.version_dir
    assert not (again.version_dir / "model.int8.onnx").exists()  # the old variant is gone with the old version
    config = load_config(again.version_dir)
    assert set(config.variants) == {"fp32"} and config == again.config
    on_disk = hashlib.sha256((again.version_dir / "model.onnx").read_bytes()).hexdigest()
    assert config.variants["fp32"].sha256 == on_disk  # the config describes the new file, not the old one
    assert [p.name for p in (tmp_path / "omr-bubble").iterdir()] == ["1"]  # no staging or backup folder left
