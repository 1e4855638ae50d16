"""Efficiency numbers compare like with like: sizes at equal dtype, timings with their spread, and
ratios that contradict the architecture flagged as suspect rather than reported."""

from pathlib import Path

import pytest
import torch
from transformers import BertForMaskedLM

from compresso.evaluation.config import EfficiencyConfig
from compresso.evaluation.efficiency import (
    compare,
    markdown_section,
    measure,
    safetensors_bytes_by_dtype,
    size_at_fp32,
    spread,
    weight_files,
)
from tests.tiny import tiny_bert


@pytest.fixture(scope="module")
def fp16_teacher_fp32_student(tmp_path_factory):
    root = tmp_path_factory.mktemp("eff")
    teacher = tiny_bert(root / "teacher", layers=4, hidden=32)
    model = BertForMaskedLM.from_pretrained(teacher).half()  # the teacher saved in fp16, as hub teachers often are
    model.save_pretrained(teacher)
    student = tiny_bert(root / "student", layers=2, hidden=32)
    return str(teacher), str(student)


def test_sizes_compared_at_equal_dtype(fp16_teacher_fp32_student):
    teacher, student = fp16_teacher_fp32_student
    cfg = EfficiencyConfig(gpu=False, cpu_batch_sizes=[1], cpu_seq_length=16, cpu_threads=1, min_seconds=0.01,
                           repeats=5, warmup=1)
    measured = {"teacher": measure(teacher, cfg), "student": measure(student, cfg)}
    compare(measured, "teacher")
    t, s = measured["teacher"], measured["student"]
    assert t["weights_dtypes"] == ["fp16"] and s["weights_dtypes"] == ["fp32"]
    # As saved, the 2-layer fp32 student is bigger than the 4-layer fp16 teacher; at equal dtype it is smaller,
    # by about its share of the parameters (the weights are the parameters plus a few buffers).
    assert s["disk_bytes"] > t["disk_bytes"]
    assert "disk_bytes" not in s["ratios"]  # bytes as saved in different dtypes are not compared
    assert s["ratios"]["size_fp32"] < 1.0
    fp16_bytes = safetensors_bytes_by_dtype(weight_files(Path(teacher)))
    assert set(fp16_bytes) == {"F16"} and t["size_fp32_bytes"] == 2 * fp16_bytes["F16"]
    assert s["ratios"]["size_fp32"] == pytest.approx(s["ratios"]["parameters"], rel=0.1)
    assert "size_fp32" not in s["suspect"]
    timing = s["cpu_latency"]["1"]
    assert timing["repeats"] >= 5 and timing["min"] <= timing["q1"] <= timing["median"] <= timing["q3"] <= timing["max"]
    assert s["architecture"]["num_hidden_layers"] == 2


def test_size_at_fp32_needs_readable_weights(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 64)
    assert size_at_fp32(str(tmp_path)) is None  # dtypes of a pickle cannot be read without loading it


def _fake(parameters, layers, ms, size):
    return {"parameters": parameters,
            "architecture": {"num_hidden_layers": layers, "hidden_size": 256, "intermediate_size": 1024},
            "size_fp32_bytes": size, "disk_bytes": size, "weights_dtypes": ["fp32"], "gpu_throughput": None,
            "cpu_latency_ms": {"1": ms}, "cpu_count": 2, "notes": [],
            "cpu_latency": {"1": spread([ms * 0.9, ms, ms * 1.1, ms * 2.0]) | {"load_average": 5.5}}}


def test_a_smaller_student_measured_slower_is_suspect():
    measured = {"teacher": _fake(12_000_000, 12, 10.0, 48_000_000),
                "student": _fake(6_000_000, 6, 25.0, 24_000_000)}
    compare(measured, "teacher")
    s = measured["student"]
    assert s["ratios"]["cpu_speedup_b1"] == pytest.approx(0.4)
    assert "cpu_speedup_b1" in s["suspect"] and "load average 5.5" in s["suspect"]["cpu_speedup_b1"]
    assert "size_fp32" not in s["suspect"]
    assert s["noisy"]  # IQR of 10 ms around a median of ~10 ms
    lines = "\n".join(markdown_section({"reference": "teacher", "reference_is_teacher": True,
                                        "config": EfficiencyConfig().model_dump(), "models": measured},
                                       [{"name": "teacher"}, {"name": "student"}], {"cpu": "test cpu"}))
    assert "0.40× (suspect)" in lines and "**suspect**" in lines and "IQR" in lines

    # the same ratio for a model that is not smaller is a finding, not a suspicion
    measured = {"teacher": _fake(6_000_000, 6, 10.0, 24_000_000),
                "other": _fake(12_000_000, 12, 25.0, 48_000_000)}
    compare(measured, "teacher")
    assert measured["other"]["suspect"] == {}


def test_a_speedup_beyond_the_compute_saved_is_suspect():
    # 6 of 12 layers: about 2x less compute; a 22.7x speed-up (a teacher timed on a loaded machine) is not a finding
    measured = {"teacher": _fake(12_000_000, 12, 2576.0, 48_000_000),
                "student": _fake(6_000_000, 6, 113.6, 24_000_000)}
    compare(measured, "teacher")
    s = measured["student"]
    assert s["compute_ratio"] == pytest.approx(2.0)
    assert "cpu_speedup_b1" in s["suspect"] and "re-measure" in s["suspect"]["cpu_speedup_b1"]
    measured = {"teacher": _fake(12_000_000, 12, 10.0, 48_000_000),
                "student": _fake(6_000_000, 6, 5.5, 24_000_000)}  # 1.8x: what 6 of 12 layers allow
    compare(measured, "teacher")
    assert measured["student"]["suspect"] == {}


def test_bigger_at_equal_dtype_is_suspect():
    measured = {"teacher": _fake(12_000_000, 12, 10.0, 48_000_000),
                "student": _fake(6_000_000, 6, 5.0, 60_000_000)}
    compare(measured, "teacher")
    assert set(measured["student"]["suspect"]) == {"size_fp32"}
    assert torch.get_num_threads() >= 1


def test_efficiency_benchmark_script(fp16_teacher_fp32_student, tmp_path):
    import importlib.util
    import json

    teacher, student = fp16_teacher_fp32_student
    spec = importlib.util.spec_from_file_location("bench_efficiency", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "eff.json"
    assert bench.main([f"t={teacher}", f"s={student}", "--no-gpu", "--cpu-batches", "1", "--cpu-seq", "16",
                       "--threads", "1", "--min-seconds", "0.01", "--repeats", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["reference"] == "t" and data["models"]["s"]["ratios"]["size_fp32"] < 1.0
    assert data["models"]["s"]["cpu_latency"]["1"]["repeats"] >= 3
