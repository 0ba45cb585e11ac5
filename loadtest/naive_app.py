"""The naive baseline of issue 13's table: what one writes first. One FastAPI process, a plain `def` endpoint
(so FastAPI runs it in its threadpool), one ONNX Runtime call per request, no batching across requests.

It reads the service's JSON body ({"crops": [{"id", "image"}]}) and runs the SAME decode / resize / normalise /
calibration code as the service and the TorchServe handler (`loadtest/torchserve/omr_handler.py`), so the
comparison is of serving stacks. Started by `loadtest.reference.running_naive` as
`uvicorn loadtest.naive_app:app` with `OMR_REFERENCE_VERSION_DIR` naming the model version folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Body, FastAPI

from loadtest.ceiling import input_dtype, model_input, session
from service.core.modelconfig import load_config
from service.core.postprocess import calibrated_probabilities

_VERSION_DIR = Path(os.environ["OMR_REFERENCE_VERSION_DIR"])
_CONFIG = load_config(_VERSION_DIR)
_SESSION = session(_VERSION_DIR / "model.onnx")  # one intra-op thread, as a service worker and TorchServe's

app = FastAPI()


@app.post("/classify")
def classify(payload: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
    crops = payload["crops"]
    x = model_input([c["image"] for c in crops], _CONFIG, input_dtype(_SESSION))
    (logits,) = _SESSION.run([_CONFIG.output_name], {_CONFIG.input.name: x})
    probs = calibrated_probabilities(np.asarray(logits, np.float32), _CONFIG.temperature)
    labels = _CONFIG.classes
    return {
        "results": [
            {"id": c.get("id"), "label": labels[int(np.argmax(p))], "probabilities": p.tolist()}
            for c, p in zip(crops, probs, strict=True)
        ]
    }
