"""Schemathesis against the service's own OpenAPI document, served by a real `python -m service` on 127.0.0.1.

Every operation in `/openapi.json` gets schema-valid (positive) and schema-violating (negative) cases from
schemathesis' hypothesis strategies (for /v2/models/{name}/...: with random names and again with the served
model's name, so the bodies are fuzzed past the model lookup), >= 1,000 in all, with a fixed seed so a failure
reproduces. Each answer: never a 5xx; every 4xx a JSON error (`error` + `code`, no stack trace); every 2xx JSON
or Prometheus text. The case count is asserted, so a schema that stops generating cases fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable

from loadtest import server as service_process

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: examples per operation and generation mode; operations with inputs (classify, V2) get the most
EXAMPLES = {"/classify": 250, "/v2/models/{name}/infer": 120, "/v2/models/{name}/versions/{version}/infer": 120}
DEFAULT_EXAMPLES = 40
MIN_CASES = 1000


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[service_process.Service]:
    log = Path(tmp_path_factory.mktemp("svc")) / "service.log"
    # a small crop limit keeps generated 'many crops' bodies cheap; limits themselves are covered elsewhere
    with service_process.running({"OMR_MAX_CROPS_PER_REQUEST": "64", "OMR_LOG_LEVEL": "warning"}, log) as s:
        yield s


def check(resp: Any, where: str, problems: list[str]) -> None:
    """`resp` is schemathesis' Response: headers map lower-case names to lists of values."""
    status, ctype = resp.status_code, (resp.headers.get("content-type") or [""])[0]
    if status >= 500:
        problems.append(f"{where}: {status} {resp.text[:300]}")
    elif status >= 400:
        try:
            body: Any = resp.json()
        except ValueError:
            body = None
        if not (ctype.startswith("application/json") and isinstance(body, dict) and isinstance(body.get("error"), str)
                and isinstance(body.get("code"), str)):  # fmt: skip
            problems.append(f"{where}: {status} is not a JSON error: {ctype} {resp.text[:200]}")
        elif "Traceback" in resp.text:
            problems.append(f"{where}: stack trace in a {status}")
    elif not ctype.startswith(("application/json", "text/plain")):
        problems.append(f"{where}: {status} with content type {ctype!r}")


def test_fuzz_every_operation_no_5xx_json_4xx(svc: service_process.Service) -> None:
    schema = schemathesis.openapi.from_url(f"{svc.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}
    problems: list[str] = []
    session = requests.Session()

    def fuzz(op: Any, mode: schemathesis.GenerationMode, pinned: dict[str, str] | None = None) -> None:
        label = f"{op.label} [{mode.value}{', served model' if pinned else ''}]"

        @seed(20261124)
        @settings(max_examples=EXAMPLES.get(op.path, DEFAULT_EXAMPLES), deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=op.as_strategy(generation_mode=mode, path_parameters=pinned))
        def run(case: schemathesis.Case) -> None:
            resp = case.call(base_url=svc.url, session=session, timeout=60)
            counts[label] = counts.get(label, 0) + 1
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            check(resp, f"{label} {case.method} {case.formatted_path}", problems)

        try:
            run()
        except Unsatisfiable:
            if mode is schemathesis.GenerationMode.POSITIVE:
                raise
            no_negative.append(op.label)  # nothing to violate: no parameters, no body

    no_negative: list[str] = []
    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz(op, mode)
            if "{name}" in op.path:  # random names mostly meet 404: fuzz the served model's bodies too
                pinned = {"name": "omr-bubble", **({"version": "1"} if "{version}" in op.path else {})}
                fuzz(op, mode, pinned)
    total = sum(counts.values())
    print(f"{total} cases over {len(operations)} operations; statuses {dict(sorted(statuses.items()))}")
    print(f"no negative cases possible for: {no_negative}")
    for label, n in sorted(counts.items()):
        print(f"  {n:5d}  {label}")
    assert not problems, f"{len(problems)} bad answers, first: {problems[:5]}"
    assert total >= MIN_CASES, f"only {total} cases generated"
    assert svc.process.poll() is None
    assert requests.get(f"{svc.url}/readyz", timeout=10).status_code == 200
