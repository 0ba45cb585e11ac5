"""Paths the default settings never take, over a real uvicorn: the TTA default's order of precedence (request >
`OMR_TTA_DEFAULT` > the model config) and decoding split across several preprocess threads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.settings import BUNDLED_REPOSITORY, Settings

pytestmark = pytest.mark.integration


def repository_with_tta_default(tmp_path: Path, default: bool) -> Path:
    """A copy of the bundled model whose config says `tta.default = default`."""
    version = tmp_path / f"repo-{default}" / "omr-bubble" / "1"
    shutil.copytree(BUNDLED_REPOSITORY / "omr-bubble" / "1", version)
    cfg = json.loads((version / "config.json").read_text())
    cfg["tta"]["default"] = default
    (version / "config.json").write_text(json.dumps(cfg))
    return version.parent.parent


@pytest.mark.parametrize("model_default", [False, True])
@pytest.mark.parametrize("setting", [None, False, True])
def test_tta_request_overrides_setting_overrides_model_config(
    live_server, make_crops, b64_crops, tmp_path: Path, model_default: bool, setting: bool | None
) -> None:
    repo = repository_with_tta_default(tmp_path, model_default)
    settings = Settings(model_repository=repo, tta_default=setting, max_batch_size=64, log_level="critical")
    crops = b64_crops(make_crops(2, seed=4))
    unsaid = model_default if setting is None else setting  # what a request that does not say gets
    with live_server(create_app(settings)) as url:
        for asked, expected in ((None, unsaid), (True, True), (False, False)):
            body = {"crops": crops} if asked is None else {"crops": crops, "tta": asked}
            r = httpx.post(f"{url}/classify", json=body, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["tta"] is expected, (asked, setting, model_default)


def test_decoding_split_across_threads_gives_the_one_thread_answer(live_server, make_crops, b64_crops) -> None:
    """200 crops with 2 preprocess threads: two chunks of 100 decoded in parallel; same answer, same order, and
    a bad crop in the second chunk is named by its index in the request, not in its chunk."""
    crops = b64_crops(make_crops(200, seed=12, min_side=14, max_side=90))
    answers = {}
    for threads in (1, 2):
        settings = Settings(preprocess_threads=threads, log_level="critical")
        with live_server(create_app(settings)) as url:
            r = httpx.post(f"{url}/classify", json={"crops": crops, "tta": False}, timeout=60)
            assert r.status_code == 200, r.text
            answers[threads] = r.json()["results"]
            bad = [dict(c) for c in crops]
            bad[150] = {"id": "late", "image": "@@"}
            bad[3] = {"id": "early", "image": "@@"}
            e = httpx.post(f"{url}/classify", json={"crops": bad}, timeout=60)
            assert e.status_code == 422, e.text
            assert [(c["index"], c["id"]) for c in e.json()["crops"]] == [(3, "early"), (150, "late")], threads
    one, two = answers[1], answers[2]
    assert [r["id"] for r in two] == [c["id"] for c in crops]
    p1 = np.array([list(r["probabilities"].values()) for r in one])
    p2 = np.array([list(r["probabilities"].values()) for r in two])
    np.testing.assert_allclose(p2, p1, atol=1e-6)
    assert [r["label"] for r in two] == [r["label"] for r in one]
