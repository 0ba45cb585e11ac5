"""`make gpu-check` on a machine without a GPU: it still writes its report, naming the missing providers."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import orjson
import pytest

from loadtest import gpu_check


@pytest.mark.skipif(
    bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())),
    reason="this onnxruntime has GPU providers: the CPU fall-back is not what runs here",
)
def test_gpu_check_reports_missing_providers_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    rc = gpu_check.main(["--out", str(out), "--seconds", "0.05", "--load-seconds", "0",
                         "--real-dev", str(tmp_path / "absent.csv")])  # fmt: skip
    assert rc == 0
    report = orjson.loads((out / "gpu-check.json").read_bytes())
    assert report["providers"]["active_gpu"] == []
    for name in gpu_check.GPU_PROVIDERS:
        assert not report["providers"]["providers"][name]["active"]
        assert "not in this onnxruntime build" in report["providers"]["providers"][name]["why"]
    assert report["parity"] == [] and "skipped" in report["tensorrt"]
    assert set(report["buckets"]["CPUExecutionProvider"]) == {str(b) for b in gpu_check.BUCKETS}
    assert all(v > 0 for v in report["buckets"]["CPUExecutionProvider"].values())
    assert report["crops"].startswith("synthetic")
    md = (out / "gpu-check.md").read_text()
    assert "**Missing GPU providers**: TensorrtExecutionProvider, CUDAExecutionProvider" in md
    assert gpu_check.main(["--out", str(out), "--seconds", "0.05", "--load-seconds", "0", "--require-gpu",
                           "--real-dev", str(tmp_path / "absent.csv")]) == 1  # fmt: skip
