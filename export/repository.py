"""Write one `<repo>/<name>/<version>/` entry: ONNX files with embedded metadata, then config.json.

The entry is assembled in a hidden sibling folder and renamed into place, so a service scanning the
repository never sees a half-written version. Before the rename every file is re-read through the
service's own loaders (`load_config`, `verified_model_path`, `verify_session`) and must give bit-identical
logits to the graph that passed parity: what was checked is what is published.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.parity import session
from export.torch_onnx import ExportError
from service.core.modelconfig import (
    CONFIG_FILE,
    METADATA_KEY,
    METADATA_SHA256_KEY,
    METADATA_SHA256_NOTE,
    METADATA_VARIANT_KEY,
    ModelArtifactError,
    ModelConfig,
    load_config,
    metadata_payload,
    sha256_file,
    verified_model_path,
    verify_session,
)

FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


@dataclass(frozen=True)
class Built:
    """A checked variant: its graph and the logits it gave on the probe input (for the final re-check)."""

    proto: onnx.ModelProto
    probe_logits: np.ndarray


def embed_metadata(proto: onnx.ModelProto, config: ModelConfig, variant: str) -> onnx.ModelProto:
    """A copy of `proto` whose metadata_props describe it (the config minus digests and timings)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.metadata_props[:]
    onnx.helper.set_model_props(
        out,
        {
            METADATA_KEY: metadata_payload(config),
            METADATA_VARIANT_KEY: variant,
            METADATA_SHA256_KEY: METADATA_SHA256_NOTE,
        },
    )
    out.doc_string = (
        f"{config.name}/{config.version} ({variant}): OMR bubble classifier, classes {list(config.classes)}"
    )
    if config.version.isdigit():
        out.model_version = int(config.version)
    return out


def write_version(
    repository: Path, config: ModelConfig, built: Mapping[str, Built], probe: np.ndarray, force: bool
) -> tuple[Path, ModelConfig]:
    """Publish the entry atomically; returns its folder and the final config (with sha256s)."""
    final = repository / config.name / config.version
    if final.exists() and not force:
        raise ExportError(f"{final} exists; pass --force to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{config.version}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        variants = {}
        for name, item in built.items():
            spec = config.variants[name]
            path = staging / spec.file
            onnx.save(embed_metadata(item.proto, config, name), path)
            variants[name] = spec.model_copy(update={"sha256": sha256_file(path)})
        config = config.model_copy(update={"variants": variants})
        (staging / CONFIG_FILE).write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
        _recheck(staging, built, probe)
        if final.exists():
            retired = final.parent / f".{config.version}.retired-{os.getpid()}"
            final.rename(retired)
            staging.rename(final)
            shutil.rmtree(retired)
        else:
            staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, config


def _recheck(version_dir: Path, built: Mapping[str, Built], probe: np.ndarray) -> None:
    """Load every written file the way the service will, and compare it with the graph that passed parity."""
    try:
        config = load_config(version_dir)
        for name, item in built.items():
            sess = session(str(verified_model_path(version_dir, config, name)))
            verify_session(sess, config, name)
            (got,) = sess.run([config.output_name], {config.input.name: probe})
            if not np.array_equal(got, item.probe_logits):
                raise ExportError(f"{name}: the written file's logits differ from the checked graph's")
    except ModelArtifactError as exc:
        raise ExportError(f"written artifact fails the service's loader: {exc}") from exc
