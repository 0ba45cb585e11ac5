"""Open Inference Protocol (V2): the real `tritonclient.http` client against a real uvicorn."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "omr-bubble"


def _probs(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    classes = r.json()["results"][0]["probabilities"].keys()
    return np.array([[res["probabilities"][c] for c in classes] for res in r.json()["results"]])


def _classify(url: str, images: list[bytes], **extra: object) -> np.ndarray:
    body = {"crops": [{"image": base64.b64encode(b).decode()} for b in images], **extra}
    return _probs(httpx.post(f"{url}/classify", json=body, timeout=10))


def _classify_raw(url: str, pixels: np.ndarray) -> np.ndarray:
    headers = {"content-type": "application/octet-stream", "x-crop-shape": ",".join(map(str, pixels.shape))}
    return _probs(httpx.post(f"{url}/classify", content=pixels.tobytes(), headers=headers, timeout=10))


def test_infer_tritonclient_binary_and_json(live_server, make_crops, encode_image) -> None:
    images = make_crops(6, seed=3)
    encoded = [encode_image(im) for im in images]
    with live_server(create_app(Settings())) as url:
        client = triton.InferenceServerClient(
            url=url.removeprefix("http://"), connection_timeout=10, network_timeout=10
        )
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert {o["name"] for o in meta["outputs"]} == {"probabilities", "label", "marked"}
        expected = _classify(url, encoded)

        # encoded images as BYTES with the binary tensor extension, binary outputs
        inp = triton.InferInput("IMAGE", [len(encoded)], "BYTES")
        inp.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=True)
        outs = [triton.InferRequestedOutput(n, binary_data=True) for n in ("probabilities", "label", "marked")]
        result = client.infer(MODEL, [inp], outputs=outs)
        probs = result.as_numpy("probabilities")
        assert probs.dtype == np.float32 and probs.shape == (6, 8)
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        assert result.as_numpy("label").shape == (6,)
        assert result.as_numpy("marked").dtype == np.bool_

        # raw pixels as UINT8 [N,H,W] in JSON, JSON outputs, a named version
        pixels = np.stack([np.resize(im, (20, 24)) for im in images]).astype(np.uint8)
        inp = triton.InferInput("PIXELS", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels, binary_data=False)
        outs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
        result = client.infer(MODEL, [inp], model_version="1", outputs=outs)
        np.testing.assert_allclose(result.as_numpy("probabilities"), _classify_raw(url, pixels), atol=1e-6)
        assert not np.allclose(_classify_raw(url, pixels), expected, atol=1e-3)  # really other input than IMAGE

        # encoded images as base64 strings in JSON (JSON cannot carry raw bytes)
        inp = triton.InferInput("IMAGE", [len(encoded)], "BYTES")
        inp.set_data_from_numpy(np.array([base64.b64encode(b) for b in encoded], dtype=np.object_), binary_data=False)
        result = client.infer(MODEL, [inp], outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)

        # request parameters: TTA on and another profile, through the client's `parameters`
        result = client.infer(MODEL, [inp], parameters={"tta": True, "profile": "fill"})
        with_tta = _classify(url, encoded, tta=True, profile="fill")
        np.testing.assert_allclose(result.as_numpy("probabilities"), with_tta, atol=1e-6)
        assert not np.allclose(with_tta, expected, atol=1e-4)  # TTA really changed the answer
        fill = httpx.post(f"{url}/classify", json={"crops": [{"image": base64.b64encode(b).decode()} for b in encoded],
                                                   "tta": True, "profile": "fill"}, timeout=10).json()  # fmt: skip
        assert result.as_numpy("marked").tolist() == [r["marked"] for r in fill["results"]]
        with pytest.raises(InferenceServerException, match="unknown profile"):
            client.infer(MODEL, [inp], parameters={"profile": "nope"})

        with pytest.raises(InferenceServerException, match="unknown model"):
            client.infer("no-such-model", [inp])
        client.close()
