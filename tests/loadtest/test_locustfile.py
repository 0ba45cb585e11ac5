"""The locustfile's users, bodies and step shape.

locust gevent-patches the process it is imported into, so the locustfile itself is only loaded by the
real `locust` CLI in a subprocess; the pieces it is built from are tested here directly.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import orjson

from loadtest.crops import SHEET_MAX, SHEET_MIN, prepared
from loadtest.run import LOCUSTFILE, USER_CLASSES
from loadtest.steps import step_users


def test_locust_lists_the_user_classes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--list"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert set(USER_CLASSES) <= set(out.stdout.split())


def test_prepared_bodies_are_valid_requests() -> None:
    bodies = prepared(0)
    assert set(bodies) == {"sheet_json", "sheet_raw", "single"}
    for p in bodies["sheet_json"]:
        doc = orjson.loads(p.body)
        assert SHEET_MIN <= p.crops == len(doc["crops"]) <= SHEET_MAX
        assert tuple(c["id"] for c in doc["crops"]) == p.ids
    for p in bodies["sheet_raw"]:
        n, h, w = (int(v) for v in p.headers["X-Crop-Shape"].split(","))
        assert n == p.crops and np.frombuffer(p.body, np.uint8).size == n * h * w
        assert p.ids == tuple(str(i) for i in range(n))
    assert all(p.crops == 1 for p in bodies["single"])


def test_step_users_climb_in_equal_steps_then_stop() -> None:
    counts = [step_users(t, peak=10, total_s=50, n_steps=5) for t in (0, 9.9, 10.1, 25, 49.9)]
    assert counts == [2, 2, 4, 6, 10]
    assert step_users(50.0, 10, 50, 5) is None


def test_step_users_never_drop_to_zero() -> None:
    assert step_users(0, peak=2, total_s=10, n_steps=5) == 1
