"""Locust users for the service's real clients, with a step-load shape.

- `SheetJsonUser`: an OMR engine posting whole sheets (50-500 base64-PNG crops) as JSON.
- `SheetRawUser`: the same engine on the raw-tensor fast path (uint8 [N,32,32], `X-Crop-Shape`).
- `SingleCropUser`: a latency-sensitive client posting one crop at a time.
Every response is checked (200, one result per crop, ids in order). Bodies are built once per process
from real-looking synthetic crops, so locust spends its CPU on sending, not on encoding.

Run through `python -m loadtest.run` (starts the service, writes CSV/HTML/PNG, checks the SLO), or by hand:
`locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8000 -u 20 -t 60s`.
`-u` is the peak user count and `-t` the total time; the shape climbs to the peak in `--steps` equal steps.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.user.wait_time import constant_pacing

from loadtest.crops import check_response, prepared
from loadtest.steps import step_users


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--steps", type=int, default=5, help="load steps up to the peak user count")
    parser.add_argument("--sheet-pace", type=float, default=1.0, help="seconds between one engine's sheets")
    parser.add_argument("--single-pace", type=float, default=0.05, help="seconds between one client's crops")
    parser.add_argument("--crop-seed", type=int, default=0, help="seed of the synthetic crop pool")
    parser.add_argument("--requests-csv", default="", help="write every request (time, name, ms, crops, ok)")


@events.init.add_listener
def _build_bodies(environment: Any, **_: Any) -> None:
    """Build the request bodies before the clock starts (about a second of CPU that would stall gevent)."""
    opts = environment.parsed_options
    prepared(opts.crop_seed if opts else 0)


class _ClassifyUser(FastHttpUser):
    abstract = True
    kind = ""
    pace_option = ""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self._bodies = prepared(opts.crop_seed if opts else 0)[self.kind]
        self._next = random.randrange(len(self._bodies))
        self._pace = constant_pacing(getattr(opts, self.pace_option, 1.0) if opts else 1.0)

    def wait_time(self) -> float:  # paced: each user offers a fixed request rate until the service saturates
        return self._pace(self)

    @task
    def classify(self) -> None:
        p = self._bodies[self._next]
        self._next = (self._next + 1) % len(self._bodies)
        with self.client.post(
            "/classify", data=p.body, headers=p.headers, name=self.kind, catch_response=True, context={"crops": p.crops}
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            why = check_response(resp.content or b"", p.ids, p.crops)
            if why:
                resp.failure(why)


class SheetJsonUser(_ClassifyUser):
    weight = 2
    kind = "sheet_json"
    pace_option = "sheet_pace"


class SheetRawUser(_ClassifyUser):
    weight = 1
    kind = "sheet_raw"
    pace_option = "sheet_pace"


class SingleCropUser(_ClassifyUser):
    weight = 3
    kind = "single"
    pace_option = "single_pace"


class StepLoad(LoadTestShape):
    """`--steps` equal steps up to `-u` users over `-t`; each step holds its user count, then the run stops."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options if self.runner else None
        peak = int(getattr(opts, "num_users", None) or 10)
        total = float(getattr(opts, "run_time", None) or 60)
        users = step_users(self.get_run_time(), peak, total, int(getattr(opts, "steps", 5)))
        return None if users is None else (users, float(users))  # reach each step within about a second


class _Recorder:
    """Every request with the user count at its time, for per-step percentiles in `loadtest.run`."""

    runner: Any = None
    rows: list[tuple[float, str, float, int, bool, int]] = []  # noqa: RUF012 - one recorder per process


@events.test_start.add_listener
def _on_start(environment: Any, **_: Any) -> None:
    _Recorder.runner = environment.runner


@events.request.add_listener
def _record(name: str, response_time: float, context: dict[str, Any], exception: Any, **kw: Any) -> None:
    users = _Recorder.runner.user_count if _Recorder.runner else 0
    start = float(kw.get("start_time") or 0.0)
    _Recorder.rows.append((start, name, float(response_time), int(context.get("crops", 0)), exception is None, users))


@events.quitting.add_listener
def _dump(environment: Any, **_: Any) -> None:
    path = getattr(environment.parsed_options, "requests_csv", "") if environment.parsed_options else ""
    if not path:
        return
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["start_time", "name", "response_ms", "crops", "ok", "users"])
        w.writerows(_Recorder.rows)
