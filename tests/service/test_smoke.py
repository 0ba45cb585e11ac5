"""The documented start-up path works end to end against the bundled model."""

from __future__ import annotations

import httpx
import pytest

from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.integration


def test_classify_returns_one_result_per_crop_in_order(live_server, make_crops, b64_crops) -> None:
    body = {"crops": b64_crops(make_crops(5, seed=1))}
    with live_server(create_app(Settings())) as url:
        r = httpx.post(f"{url}/classify", json=body, timeout=10)
        assert r.status_code == 200, r.text
        out = r.json()
        assert [x["id"] for x in out["results"]] == [f"q{i}" for i in range(5)]
        assert out["model"] == {"name": "omr-bubble", "version": "1", "provider": "CPUExecutionProvider"}
        for res in out["results"]:
            assert abs(sum(res["probabilities"].values()) - 1) < 1e-4
            assert res["confidence"] == max(res["probabilities"].values())
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert "omr_requests_total" in httpx.get(f"{url}/metrics", timeout=5).text
