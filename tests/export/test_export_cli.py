"""`python -m export` and `python -m export.trt_build` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from export.__main__ import main
from export.trt_build import main as trt_main
from service.core.modelconfig import ModelConfig, load_config

HAS_TRT = "TensorrtExecutionProvider" in ort.get_available_providers()


def test_cli_exits_2_on_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_cli_exits_2_on_missing_real_dev(checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([str(checkpoint), "--out", str(tmp_path), "--real-dev", str(tmp_path / "labels.csv")])
    assert rc == 2
    assert "labels CSV not found" in capsys.readouterr().err
    assert not (tmp_path / "omr-bubble").exists()


def test_cli_exits_1_when_version_exists(exported, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(exported.checkpoint), "--out", str(exported.repository)]) == 1
    assert "nothing written" in capsys.readouterr().err


def test_cli_writes_loadable_version(checkpoint, synthetic_labels: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "export", str(checkpoint), "--out", str(tmp_path), "--name", "m", "--version", "3",
           "--variants", "fp32", "--no-benchmark", "--threads", "1", "--json",
           "--real-dev", str(synthetic_labels)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # cwd: the session's empty folder
    assert proc.returncode == 0, proc.stderr
    printed = ModelConfig.model_validate(json.loads(proc.stdout))
    assert load_config(tmp_path / "m" / "3") == printed
    assert "fp32: parity ok" in proc.stderr


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is available here: the GPU test covers this machine")
def test_trt_build_exits_0_with_message_without_gpu(exported, capsys: pytest.CaptureFixture[str]) -> None:
    assert trt_main([str(exported.version_dir), "--cache-root", str(exported.repository / "trt")]) == 0
    assert "nothing to build on this machine" in capsys.readouterr().out
    assert not (exported.repository / "trt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs onnxruntime-gpu with TensorRT and an NVIDIA GPU")
def test_trt_build_creates_engine_cache(exported, tmp_path: Path) -> None:
    assert trt_main([str(exported.version_dir), "--cache-root", str(tmp_path)]) == 0
    (folder,) = list(tmp_path.iterdir())
    assert folder.name.startswith("omr-bubble-") and any(folder.iterdir())
