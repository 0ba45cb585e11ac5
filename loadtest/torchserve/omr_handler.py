"""TorchServe handler for the reference run (`loadtest.reference`): the bundled ONNX model behind TorchServe's
Java front end, with the SAME decode / resize / normalise / calibration code as the service, so the comparison
is of the serving stacks, not of the image code. Request body: the service's JSON ({"crops": [{"id", "image"}]});
answer: per crop id, label and probabilities. TorchServe batches requests (batch_size / max_batch_delay)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.ceiling import input_dtype, model_input, session
from service.core.modelconfig import load_config
from service.core.postprocess import calibrated_probabilities

_state: dict[str, Any] = {}


def _initialize(model_dir: str) -> None:
    config = load_config(Path(os.environ["OMR_REFERENCE_VERSION_DIR"]))
    sess = session(Path(model_dir) / "model.onnx")  # as the service: one intra-op thread
    _state.update(config=config, sess=sess)


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    if not _state:
        _initialize(context.system_properties["model_dir"])
    if data is None:
        return None
    config, sess = _state["config"], _state["sess"]
    images, spans, ids = [], [], []
    for req in data:
        body = req.get("body") or req.get("data")
        payload = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
        crops = payload["crops"]
        spans.append((len(images), len(images) + len(crops)))
        for c in crops:
            images.append(c["image"])
            ids.append(c.get("id"))
    x = model_input(images, config, input_dtype(sess))
    (logits,) = sess.run([config.output_name], {config.input.name: x})
    probs = calibrated_probabilities(np.asarray(logits, np.float32), config.temperature)
    labels = config.classes
    out = []
    for a, b in spans:
        out.append(
            {
                "results": [
                    {"id": ids[i], "label": labels[int(np.argmax(probs[i]))], "probabilities": probs[i].tolist()}
                    for i in range(a, b)
                ]
            }
        )
    return out
