"""The fp32 vs INT8 CPU timing recorded at export (figures only; speed targets live in loadtest/)."""

from __future__ import annotations

import onnx

from export.bench import BATCH, measure


def test_measure_records_both_cpu_variants(exported) -> None:
    protos = {n: onnx.load(exported.version_dir / f) for n, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))}
    lines: list[str] = []
    out = measure(protos, lines.append)
    assert set(out) == {"fp32", "int8"}
    assert out["fp32"]["speedup_vs_fp32"] == 1.0
    for rec in out.values():
        assert rec["batch"] == BATCH and rec["threads"] == 1
        assert 0 < float(rec["ms_per_batch_best"]) <= float(rec["ms_per_batch"])
        assert "onnxruntime" in str(rec["machine"])
    assert len(lines) == 2 and "per batch of 256 on 1 thread" in lines[0]
