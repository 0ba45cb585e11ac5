"""Hot-spot tables from py-spy's collapsed stacks."""

from __future__ import annotations

from loadtest.profile import top_functions, top_markdown

_SVC = "/srv/omr/service"  # any checkout path: only the part after service/ counts
COLLAPSED = "\n".join(
    [
        f"thread (1): MainThread;run (uvicorn/main.py:1);classify ({_SVC}/http/classify.py:40);"
        f"decode_image ({_SVC}/core/preprocess.py:60);imdecode (cv2.so) 30",
        f"thread (1): MainThread;run (uvicorn/main.py:1);classify ({_SVC}/http/classify.py:41);loads (orjson.so) 10",
        f"thread (2): Worker;run ({_SVC}/core/batcher.py:80);"
        "InferenceSession.run (site-packages/onnxruntime/session.py:220) 60",
        "garbage line",
    ]
)


def test_top_functions_counts_self_and_service_inclusive() -> None:
    total, self_top, incl_top = top_functions(COLLAPSED)
    assert total == 100
    assert self_top[0] == ("InferenceSession.run (onnxruntime/session.py)", 60)
    assert ("imdecode (cv2.so)", 30) in self_top
    incl = dict(incl_top)
    assert incl["classify (http/classify.py)"] == 40  # two lines of one function add up
    assert incl["run (core/batcher.py)"] == 60
    assert not any("uvicorn" in f or "onnxruntime" in f for f in incl)  # only the service's own code


def test_top_markdown_shows_percentages() -> None:
    md = top_markdown("sheets", COLLAPSED)
    assert "100 samples" in md and "| 60.0 | `InferenceSession.run" in md
