"""A corrupted or mismatched artifact is refused by the service's loaders with a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export import parity
from service.core.modelconfig import (
    CONFIG_FILE,
    ModelArtifactError,
    load_config,
    sha256_file,
    verified_model_path,
    verify_session,
)


@pytest.fixture
def version(synthetic_export: Path, tmp_path: Path) -> Path:
    """A private copy of an exported version folder (checked on synthetic crops: no real data needed), to damage."""
    return Path(shutil.copytree(synthetic_export, tmp_path / "omr-bubble" / "1"))


def _edit_config(version: Path, **changes: object) -> None:
    path = version / CONFIG_FILE
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def _load(version: Path, variant: str = "fp32") -> None:
    """Everything the service does before serving a variant."""
    config = load_config(version)
    sess = parity.session(str(verified_model_path(version, config, variant)))
    verify_session(sess, config, variant)


def test_load_accepts_intact_copy(version: Path) -> None:
    for variant in ("fp32", "int8", "fp16"):
        _load(version, variant)


def test_load_refuses_wrong_sha256(version: Path) -> None:
    with (version / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelArtifactError, match=r"sha256 mismatch for .*model\.onnx"):
        _load(version)


def test_load_refuses_missing_config(version: Path) -> None:
    (version / CONFIG_FILE).unlink()
    with pytest.raises(ModelArtifactError, match=r"missing config\.json"):
        _load(version)


def test_load_refuses_missing_model_file(version: Path) -> None:
    (version / "model.int8.onnx").unlink()
    with pytest.raises(ModelArtifactError, match=r"missing model file .*model\.int8\.onnx"):
        _load(version, "int8")


def test_load_refuses_config_without_sha256(version: Path) -> None:
    raw = json.loads((version / CONFIG_FILE).read_text())
    raw["variants"]["fp16"]["sha256"] = None
    (version / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelArtifactError, match=r"\['fp16'\] lack sha256"):
        load_config(version)


def test_load_refuses_wrong_class_count(version: Path) -> None:
    raw = json.loads((version / CONFIG_FILE).read_text())
    classes = raw["classes"][:-1]  # a config for a 7-class model next to an 8-class file
    raw["classes"] = classes
    raw["profiles"] = {p: {c: m[c] for c in classes} for p, m in raw["profiles"].items()}
    (version / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelArtifactError, match="ONNX output has 8 classes, config lists 7"):
        _load(version)


def test_load_refuses_reordered_classes(version: Path) -> None:
    raw = json.loads((version / CONFIG_FILE).read_text())
    raw["classes"] = [raw["classes"][1], raw["classes"][0], *raw["classes"][2:]]  # same count, wrong order
    (version / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelArtifactError, match="ONNX metadata lists classes"):
        _load(version)


def test_load_refuses_swapped_variant_file(version: Path) -> None:
    shutil.copy(version / "model.int8.onnx", version / "model.onnx")  # the INT8 file posing as fp32 ...
    raw = json.loads((version / CONFIG_FILE).read_text())
    raw["variants"]["fp32"]["sha256"] = sha256_file(version / "model.onnx")  # ... with its digest re-pinned
    (version / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelArtifactError, match="ONNX file is variant 'int8'"):
        _load(version)


def test_load_refuses_wrong_input_size(version: Path) -> None:
    raw = json.loads((version / CONFIG_FILE).read_text())
    raw["input"]["height"] = raw["input"]["width"] = 48
    (version / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelArtifactError, match=r"ONNX input shape .* config expects \[batch, \*\[1, 48, 48\]\]"):
        _load(version)


def test_load_refuses_unparseable_config(version: Path) -> None:
    (version / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelArtifactError, match=r"invalid .*config\.json"):
        load_config(version)


def test_load_refuses_unknown_variant(version: Path) -> None:
    _edit_config(version, default_variant="fp32")
    with pytest.raises(ModelArtifactError, match="has no variant 'bf16'"):
        verified_model_path(version, load_config(version), "bf16")
