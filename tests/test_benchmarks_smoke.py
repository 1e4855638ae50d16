"""Smoke runs of the distillation performance benchmarks at tiny sizes, on CPU.

The distillation speed benchmark runs compresso's side always; the HuggingFace reference side only
when ``COMPRESSO_REFERENCE_DIR`` names its ``distillation`` folder (it is never part of the
repository).
"""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _speed_argv(tmp_path, configs: str, *extra: str) -> list[str]:
    return ["--tiny", "--device", "cpu", "--threads", "1", "--workers", "0", "--configs", configs,
            "--batch-sizes", "4", "--budget-s", "6", "--turn-s", "0.05", "--min-rounds", "2", "--max-rounds", "2",
            "--warmup-max-steps", "4", "--out", str(tmp_path), *extra]


def test_distill_speed_tiny(tmp_path):
    """Interleaved 1-teacher / 2-teacher / cross-tokenizer runs of the real strategy (and the
    reference when COMPRESSO_REFERENCE_DIR names it), tiny models, CPU."""
    bench = load("distill_speed")
    reference = os.environ.get("COMPRESSO_REFERENCE_DIR")
    configs = "c1,c2,cx" + (",ref-fp32" if reference else "")
    out = bench.main(_speed_argv(tmp_path, configs, *(["--reference-dir", reference] if reference else [])))

    assert json.loads((tmp_path / "distill_speed.json").read_text()) == json.loads(json.dumps(out))
    assert out["complete"] and not list(tmp_path.glob("*.tmp"))
    (phase,) = out["phases"]
    runs = {r["config"]: r for r in phase["runs"]}
    assert set(runs) == set(configs.split(","))
    # the budget counts from the end of set-up: set-up is reported apart and is not in it
    assert 0 <= phase["setup_s"] <= phase["wall_s"] and phase["budget_s"] == 6
    sizes = bench.TINY
    for r in runs.values():
        s = r["step_ms"]
        assert len(s["samples"]) == r["turns_measured"] == 2
        assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        # the guaranteed warm-up (--warmup-min-steps, capped by --warmup-max-steps 4), whatever the budget
        assert r["warmup"]["steps"] >= 4 and r["first_step_s"] > 0
        # synthetic rows are exactly seq_len tokens, so tokens/step is known
        assert r["tokens_per_step"] == 4 * sizes.seq_len
        assert abs(r["tokens_per_s"] - r["tokens_per_step"] / (s["median"] / 1000)) < 1
        assert r["flop_per_token"] > 0 and r["mfu"] is None  # no peak on CPU
        # every timed turn, with its host-side input wait and GC time per step (measured turns last)
        host = r["host"]
        turns = host["turns"]
        assert [t["step_ms"] for t in turns[host["measured_from_turn"]:]] == s["samples"]
        assert len(turns) == len(r["warmup"]["turn_ms"]) + 2
        timed = r["system"] == "compresso"  # the reference's loader is not instrumented
        assert all((t["input_wait_ms"] >= 0 if timed else t["input_wait_ms"] is None)
                   and t["gc_ms"] >= 0 and t["full_collections"] >= 0 for t in turns)
        assert host["slowest_turn"]["step_ms"] == max(t["step_ms"] for t in turns)
        # the training thread's own CPU time per step: some, and never more than the step's wall time
        assert all(0 < t["thread_cpu_ms"] <= t["step_ms"] * 1.01 + 0.5 for t in turns)
        assert host["thread_cpu_ms_median"] > 0
        assert all(t["closing_sync_ms"] >= 0 for t in turns) and host["closing_sync_ms_median"] >= 0
    # A second teacher adds its forward pass to the FLOPs; the reference runs its head everywhere.
    assert runs["c2"]["flop_per_token"] > runs["c1"]["flop_per_token"]
    losses = runs["c1"]["mean_losses"]
    # Random initialisation: near-uniform predictions, so the masked-LM cross-entropy is about
    # ln(vocabulary); the student is cut from its teacher, so hidden states still point alike.
    assert abs(losses["mlm"] - math.log(out["vocab"]["A"])) < 0.5
    assert 0 <= losses["cos"] < 0.3 and 0 <= losses["kl_t2"] < 0.1
    assert "cx / c1 step time" in phase["ratios"] and "c2 / c1 step time" in phase["ratios"]
    if reference:
        ref = runs["ref-fp32"]
        assert ref["flop_per_token"] > runs["c1"]["flop_per_token"]
        # Same loss definition: the same components land on the same values.
        assert abs(ref["mean_losses"]["mlm"] - losses["mlm"]) < 0.3
        assert abs(ref["mean_losses"]["cos"] - losses["cos"]) < 0.05
        assert abs(ref["mean_losses"]["kl_t2"] - losses["kl_t2"]) < 0.05
        assert "c1 / reference tokens/s" in phase["ratios"]

    tables = load("distill_speed_tables")
    text = tables.main([str(tmp_path / "distill_speed.json")])
    assert f"| compresso, 1 teacher | {runs['c1']['step_ms']['median']:.1f} |" in text
    assert text.endswith("|\n\n")  # a blank line last: a page's end marker is not read as a table row
    # runs of other batch sizes (separate commands) merge into one set of tables; a batch size twice is refused
    other = json.loads((tmp_path / "distill_speed.json").read_text())
    other["phases"][0]["batch_size"] = 8
    (tmp_path / "b8.json").write_text(json.dumps(other))
    merged = tables.main([str(tmp_path / "distill_speed.json"), str(tmp_path / "b8.json")])
    assert "**Batch 4 × " in merged and "**Batch 8 × " in merged
    with pytest.raises(SystemExit, match="more than one"):
        tables.main([str(tmp_path / "distill_speed.json")] * 2)
    # --current: one row per batch size and configuration, the last file that has it winning
    later = json.loads(json.dumps(other))
    later["phases"][0]["batch_size"] = 4
    later["phases"][0]["runs"] = [r for r in later["phases"][0]["runs"] if r["config"] == "c1"]
    later["phases"][0]["runs"][0]["step_ms"]["median"] += 1000
    (tmp_path / "later.json").write_text(json.dumps(later))
    current = tables.main(["--current", str(tmp_path / "distill_speed.json"), str(tmp_path / "b8.json"),
                           str(tmp_path / "later.json")])
    rows = [line for line in current.splitlines() if line.startswith("| 4 | `c1` ")]
    assert len(rows) == 1 and f"| {runs['c1']['step_ms']['median'] + 1000:.1f} (" in rows[0]
    assert rows[0].endswith("| [`later.json`](" + (tmp_path / "later.json").as_posix() + ") |")
    assert sum(line.startswith("| 8 | `c1` ") for line in current.splitlines()) == 1
    # a file whose every row a later file replaces has no business in the command
    with pytest.raises(SystemExit, match="replaced by a later file"):
        tables.main(["--current", str(tmp_path / "later.json"), str(tmp_path / "later.json")])
    # a page's generated blocks: --check finds a stale one, --update rewrites it to what the command prints
    page = tmp_path / "page.md"
    command = f"python benchmarks/distill_speed_tables.py {tmp_path / 'b8.json'}"
    page.write_text(f"intro\n<!-- BEGIN GENERATED: {command} -->\nold\n<!-- END GENERATED -->\noutro\n")
    assert tables.main(["--check", str(page)]) == 1
    assert tables.main(["--update", str(page)]) == 0
    fresh = tables.main([str(tmp_path / "b8.json")])
    assert page.read_text() == f"intro\n<!-- BEGIN GENERATED: {command} -->\n{fresh}<!-- END GENERATED -->\noutro\n"
    assert tables.main(["--check", str(page)]) == 0


@pytest.mark.shared
def test_distill_speed_profile_tiny(tmp_path):
    """--profile-steps: one more turn per configuration under torch.profiler, started in the runner's
    own thread (a profiler started by the scheduler's thread would see none of the step's ranges),
    summarised per compresso.* range, with the cross-tokenizer teacher's cost against one teacher."""
    bench = load("distill_speed")
    out = bench.main(_speed_argv(tmp_path, "c1,cx", "--warmup-min-steps", "2", "--warmup-max-steps", "2",
                                 "--budget-s", "1", "--profile-steps", "2"))
    (phase,) = out["phases"]
    runs = {r["config"]: r["profile"] for r in phase["runs"]}
    step = {"compresso.student.forward", "compresso.loss.head", "compresso.loss.hidden", "compresso.backward",
            "compresso.optimizer", "compresso.teacher0.same", "compresso.teacher0.same.encoder",
            "compresso.teacher0.same.teacher_log_p"}
    cross = {"compresso.teacher1.cross", "compresso.teacher1.cross.encoder",
             "compresso.teacher1.cross.teacher_log_p", "compresso.teacher1.cross.pool_words",
             "compresso.loss.student_log_q.cross"}
    assert step <= set(runs["c1"]["ranges"]) and not cross & set(runs["c1"]["ranges"])
    assert step | cross <= set(runs["cx"]["ranges"])
    for prof in runs.values():
        assert prof["steps"] == 2 and prof["basis"] == "cpu" and prof["total_ms_per_step"] > 0
        for name, r in prof["ranges"].items():
            assert r["ms"] == r["cpu_ms"] >= 0 and r["device_ms"] is None, name
            assert r["calls_per_step"] >= 1, name  # every range runs at least once a step
        assert prof["ranges"]["compresso.teacher0.same"]["ms"] > 0
        assert 0 < len(prof["top_ops"]) <= 40
        assert all(op["ms"] >= 0 and len(op["name"]) <= 80 for op in prof["top_ops"])
        # nested ranges lie inside their parent
        assert prof["ranges"]["compresso.teacher0.same.encoder"]["ms"] <= prof["ranges"]["compresso.teacher0.same"]["ms"]
    diff = phase["profile_diff"]["cx - c1"]
    assert diff["basis"] == "cpu"
    teacher = diff["ranges"]["compresso.teacher1.cross"]
    assert teacher["c1"] == 0 and teacher["diff"] == teacher["cx"] > 0
    assert diff["total_ms"]["diff"] == round(diff["total_ms"]["cx"] - diff["total_ms"]["c1"], 4)
    assert out["method"]["profile_steps"] == 2
    assert json.loads((tmp_path / "distill_speed.json").read_text()) == json.loads(json.dumps(out))


def test_distill_speed_real_text_tiny(tmp_path, shared_dir):
    """The real-text configurations: the fixture tokenizers on the fixture corpus, the strategy's
    input pipeline measured alone too."""
    bench = load("distill_speed")
    out = bench.main(_speed_argv(tmp_path, "c1,c1-text,cx-text", "--shared", str(shared_dir), "--pipeline-s", "1"))
    (phase,) = out["phases"]
    runs = {r["config"]: r for r in phase["runs"]}
    assert out["vocab"] == {"A": 16000, "B": 14000}  # the models fit the fixture tokenizers
    for name in ("c1-text", "cx-text"):
        r = runs[name]
        assert 0 < r["tokens_per_step"] <= 4 * bench.TINY.seq_len  # packed real text: rows nearly full
        assert r["pipeline"]["tokens_per_s"] > 0 and r["pipeline"]["views"] == (1 if name == "c1-text" else 2)
        assert r["sustained_tokens_per_s"] <= r["tokens_per_s"]
    assert "c1-text / c1 tokens/s" in phase["ratios"]


def test_distill_speed_rejects_bad_arguments(tmp_path):
    bench = load("distill_speed")
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--device", "cpu", "--configs", "c1,nope"])
    with pytest.raises(SystemExit):  # the reference needs its folder
        bench.main(["--tiny", "--device", "cpu", "--configs", "ref-fp32"])
    with pytest.raises(SystemExit):  # fp16 (apex O1) is GPU-only
        bench.main(["--tiny", "--device", "cpu", "--configs", "ref", "--reference-dir", str(BENCHMARKS)])
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--device", "cpu", "--configs", "c1", "--batch-sizes", "0"])
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--device", "cpu", "--configs", "c1", "--budget-s", "0"])


@pytest.mark.shared
def test_corpus_memory_flat(tmp_path, shared_dir):
    bench = load("corpus_memory")
    out = bench.main(["--corpus-dir", str(shared_dir / "corpus"),
                      "--tokenizer", str(shared_dir / "teachers" / "ro-bert-small-cased"),
                      "--small-mb", "1", "--big-mb", "20", "--batches", "3", "--cases", "small,big",
                      "--work-dir", str(tmp_path / "files"), "--out", str(tmp_path / "memory.json")])
    by = {r["case"]: r for r in out["results"]}
    assert by["small"]["batches"] == by["big"]["batches"] == 3
    assert by["big"]["file_mb"] >= 19 and by["small"]["file_mb"] <= 1.5
    assert by["big"]["tokens"] > 0
    # Holding the 20 MB file's text in Python would add ~40 MB (UCS-2 strings for Romanian text);
    # streaming keeps the two peaks within noise.
    assert abs(out["summary"]["big_minus_small_peak_mib"]) < 10


@pytest.mark.shared
def test_quantize_cpu_benchmark_records_the_machine(tmp_path, shared_dir):
    pytest.importorskip("onnxruntime")
    bench = load("quantize_cpu")
    out_file = tmp_path / "q.json"
    assert bench.main(["--teacher", str(shared_dir / "teachers" / "ro-bert-small-cased"),
                       "--corpus", str(shared_dir / "corpus" / "ro-corpus-00.txt.xz"), "--backends", "ort-dynamic",
                       "--batch-sizes", "1", "--seq-len", "32", "--threads", "1", "--warmup", "1", "--repeats", "4",
                       "--rounds", "2", "--out", str(out_file)]) == 0
    result = json.loads(out_file.read_text())
    assert [r["model"] for r in result["rows"]] == ["fp32 teacher", "fp32 student", "int8 student, ort-dynamic"]
    int8 = result["rows"][-1]
    assert int8["latency"]["1"]["calls"] == 4 and int8["latency"]["1"]["q1_ms"] <= int8["latency"]["1"]["q3_ms"]
    assert int8["size_ratio_vs_teacher"] < 0.3 and int8["check_vs_fp32_student"]["argmax_agreement"] > 0.9
    assert result["cpu"]["capability_class"] in ("avx512_vnni", "avx2_vnni", "avx2", "other")
    assert len(result["machine"]["load_average_before"]) == 3 and result["threads"] == 1
    assert result["emulation"]["ort_restricted"] is False and result["auto_choice"]["backend"]

def test_ensemble_study_tiny(tmp_path):
    """The issue-13 study end to end on tiny teachers with two tokenizers: the ceiling and students."""
    from tests.test_distill import cased_tokenizer, tiny_mlm, uncased_tokenizer, write_corpus

    shared = tmp_path / "shared"
    tiny_mlm(cased_tokenizer(), shared / "teachers" / "ro-bert-small-cased", seed=1)
    tiny_mlm(uncased_tokenizer(), shared / "teachers" / "ro-robert-small-uncased", seed=2)
    (shared / "corpus").mkdir()
    write_corpus(shared / "corpus" / "c.txt", lines=200)
    study = load("ensemble_study")
    out = study.main(["--shared", str(shared), "--out", str(tmp_path / "out"), "--device", "cpu",
                      "--heldout-docs", "30", "--mask-passes", "2", "--seq-len", "32", "--batch-size", "4",
                      "--train-steps", "2", "--bootstrap", "50", "--jobs", "2", "--fp16-copies", "--max-seconds", "1200",
                      "--variants", "distil-bert,distilmulti,distil-robert,distilmulti-init-uncased,distilmulti-2x,distil-bert-2x"])
    assert json.loads((tmp_path / "out" / "ensemble_study.json").read_text()) == json.loads(json.dumps(out))
    ceil = out["ceiling"]
    models = ceil["models"]
    assert ceil["positions"] > 50
    cased, uncased, mean = models["bert-cased"], models["robert-uncased"], models["mean 1:1"]
    # Jensen: the NLL of the averaged distribution never exceeds the average NLL.
    assert mean["nll"] <= (cased["nll"] + uncased["nll"]) / 2 + 1e-9
    assert ceil["oracle_accuracy"] >= max(cased["accuracy"], uncased["accuracy"])
    d = mean["accuracy_minus_best_single"]
    assert d["low"] <= d["mean"] <= d["high"]
    assert 0 < ceil["out_of_map_mass"]["robert-uncased"] < 1
    students = out["students"]
    assert set(students) == {"distil-bert", "distilmulti", "distil-robert", "distilmulti-init-uncased",
                             "distilmulti-2x", "distil-bert-2x"}
    for s in students.values():
        assert 0 <= s["shared_accuracy"] <= 1 and 0 <= s["own_mlm_accuracy"] <= 1 and s["shared_nll"] > 0
        assert s["tokens"] > 0
    assert out["best_single_student"] in ("distil-bert", "distil-robert")
    assert "shared_accuracy_minus_best_single" in students["distilmulti"]
    # Each student is compared with the best single-teacher student of its own token budget.
    assert students["distilmulti"]["best_single"] == out["best_single_student"]
    assert students["distilmulti-2x"]["best_single"] == "distil-bert-2x"
    assert out["best_single_student_by_steps"] == {"2": out["best_single_student"], "4": "distil-bert-2x"}
    assert "best_single" not in students["distil-bert-2x"]
    # Each variant was trained in its own process and saved as a plain folder that evaluate takes,
    # and (--fp16-copies) again in float16 under the same name, every one of them.
    import torch
    from safetensors import safe_open

    for name, s in students.items():
        copy = tmp_path / "out" / "students-fp16" / name
        assert s["saved_fp16"] == str(copy) and (copy / "variant.json").is_file()
        with safe_open(str(copy / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        assert s["steps"] == (4 if name.endswith("-2x") else 2) and (tmp_path / "out" / "students" / name / "model.safetensors").exists()

def test_ensemble_budget_curve_tiny(tmp_path):
    """The budget curve end to end on tiny teachers with two tokenizers: one constant-rate run per
    student gives every budget, scored with paired intervals, plotted; a rerun trains and scores
    nothing again; a rerun with a larger budget continues the runs and keeps the earlier points."""
    from tests.test_distill import cased_tokenizer, tiny_mlm, uncased_tokenizer, write_corpus

    shared = tmp_path / "shared"
    tiny_mlm(cased_tokenizer(), shared / "teachers" / "ro-bert-small-cased", seed=1)
    tiny_mlm(uncased_tokenizer(), shared / "teachers" / "ro-robert-small-uncased", seed=2)
    (shared / "corpus").mkdir()
    write_corpus(shared / "corpus" / "c.txt", lines=200)
    study = load("ensemble_study")
    out_dir = tmp_path / "out"
    argv = ["--shared", str(shared), "--out", str(out_dir), "--device", "cpu", "--heldout-docs", "30",
            "--mask-passes", "1", "--seq-len", "32", "--batch-size", "4", "--train-steps", "2",
            "--bootstrap", "50", "--max-seconds", "600", "--variants", "distil-bert,distilmulti-2to1-geometric"]
    out = study.main([*argv, "--budgets", "1,2"])
    assert json.loads((out_dir / "budget_curve.json").read_text()) == json.loads(json.dumps(out))
    assert (out_dir / "budget_curve.png").stat().st_size > 10_000
    curve = out["curve"]
    assert curve["budgets"] == [1, 2] and not curve["missing_budgets"] and not out["skipped"]
    assert curve["schedule"]["after_warmup"] == "constant" and curve["schedule"]["snapshot_steps"] == [2]
    assert set(curve["students"]) == {"distil-bert", "distilmulti-2to1-geometric"}
    for name, entry in curve["students"].items():
        assert list(entry["budgets"]) == ["1", "2"] and entry["training"]["steps"] == 4  # one run to 2x
        assert 0 < entry["budgets"]["1"]["tokens"] < entry["budgets"]["2"]["tokens"]
        for e in entry["budgets"].values():
            assert 0 <= e["shared_accuracy"] <= 1 and e["shared_nll"] > 0
            d = e.get("shared_accuracy_minus_distil-bert")
            assert (d is None) == (name == "distil-bert")
            if d is not None:
                assert d["low"] <= d["mean"] <= d["high"]
    # the same seed and corpus order: the single-teacher student's tokens equal a two-teacher one's
    # up to the row packing a second tokenizer changes
    multi = curve["students"]["distilmulti-2to1-geometric"]["budgets"]["1"]["tokens"]
    assert abs(curve["students"]["distil-bert"]["budgets"]["1"]["tokens"] - multi) <= 0.1 * multi
    geo = json.loads((out_dir / "work" / "distilmulti-2to1-geometric" / "stage" / "distill.json").read_text())
    assert geo["config"]["teacher_mixing"] == "geometric" and geo["config"]["lr_schedule"] == "constant"

    # a rerun: nothing trained or scored again, the same figures
    stamps = {p: p.stat().st_mtime_ns for p in (out_dir / "curve").rglob("*.json")}
    again = study.main([*argv, "--budgets", "1,2"])
    assert {p: p.stat().st_mtime_ns for p in (out_dir / "curve").rglob("*.json")} == stamps
    assert again["curve"]["students"] == curve["students"]

    # a larger budget: the runs continue from their checkpoints; 1x and 2x are kept as they were
    longer = study.main([*argv, "--budgets", "1,2,4"])["curve"]
    assert not longer["missing_budgets"]
    for name, entry in longer["students"].items():
        assert list(entry["budgets"]) == ["1", "2", "4"] and entry["training"]["steps"] == 8
        for b in ("1", "2"):
            assert entry["budgets"][b]["shared_accuracy"] == curve["students"][name]["budgets"][b]["shared_accuracy"]
        assert entry["budgets"]["4"]["tokens"] > entry["budgets"]["2"]["tokens"]
        assert (out_dir / "work" / name / "stage" / "snapshots" / "step-4" / "snapshot.json").is_file()
        log = (out_dir / "logs" / f"{name}.log").read_text()
        assert "resuming from the checkpoint at step 4" in log


def test_distill_speed_flop_formula_matches_the_docs():
    """docs/performance.md quotes 14.5 MFLOP per layer-token and ~452 MFLOP per token for the
    1-teacher base-size step (h 768, f 3072, L 128, V 16,000, 15 % masked)."""
    bench = load("distill_speed")
    one = bench.flops_per_token(bench.BASE, "compresso", [16000], 0.15)
    assert abs(one - 451.92e6) < 0.01e6
    two = bench.flops_per_token(bench.BASE, "compresso", [16000, 14000], 0.15)
    layer = 8 * 768**2 + 4 * 768 * 3072 + 4 * 128 * 768
    assert abs(layer - 14.549e6) < 0.001e6
    assert abs((two - one) - (12 * layer + 0.15 * (2 * 768**2 + 2 * 768 * 14000))) < 1  # teacher B's forward
    ref = bench.flops_per_token(bench.BASE, "reference", [16000], 0.15)
    assert ref > one  # heads on every token


def test_gpu_utilisation_summary_reads_the_samples_and_rejects_bad_lines(tmp_path, capsys):
    bench = load("gpu_utilisation_summary")
    samples = tmp_path / "nvidia-smi.csv"
    samples.write_text("2026/11/29 13:19:20.423, 0, 4, 345\n2026/11/29 13:19:20.923, 100, 527, 1980\n"
                       "2026/11/29 13:19:21.423, 80, 527, 1980\n2026/11/29 13:19:21.923, 59, 600, 1980\n")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({
        "created": "2026-11-29T13:19:22+00:00", "seconds": 601.0, "seeds": [42],
        "environment": {"gpu": "GPU X", "device": "cuda", "torch": "t", "transformers": "x"},
        "scheduler": {"jobs": 2, "workers": 2, "threads_per_job": 1, "mode": "worker processes"},
        "models": [{"name": "a"}], "tasks": {"sts": {}}, "errors": []}))
    out = tmp_path / "speed.json"
    assert bench.main(["--samples", str(samples), "--evaluation", str(results), "--note", "n", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    u = report["utilisation"]
    assert (u["samples"], u["utilisation_mean"], u["utilisation_median"]) == (4, 59.75, 69.5)
    assert u["fraction_at_or_above_threshold"] == 0.5 and u["span_seconds"] == 1.5
    assert report["targets"] == {"wall_seconds": 600, "utilisation_mean": 60.0, "wall_met": False,
                                 "utilisation_met": False}
    assert report["evaluation"]["workers"] == 2 and report["notes"] == ["n"]
    samples.write_text("2026/11/29 13:19:20.423, 0, 4\n")
    assert bench.main(["--samples", str(samples), "--evaluation", str(results), "--out", str(tmp_path / "x.json")]) == 2
    assert "line 1: expected 4" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_results_tables_come_from_the_json():
    """docs/results.md's tables are generated: every cell traces back to results.json."""
    tables = load("results_tables")
    path = BENCHMARKS.parent / "docs" / "results" / "fixtures_3seeds_h200" / "results.json"
    results = json.loads(path.read_text())
    text = tables.main([str(path), "--names", "cased=bert-cased", "distil-bert=Distil-BERT"])
    score_rows = [line for line in text.splitlines() if line.startswith("| Distil-BERT |")]
    means = [results["scores"]["distil-bert"][t]["metrics"][tables.results_headline(results, t)]["mean"]
             for t in results["tasks"]]
    assert score_rows and score_rows[0].endswith(f"| {sum(means) / len(means):.2f} |")
    pair = [c for c in results["comparisons"] if (c["a"], c["b"]) == ("distil-bert", "cased")]
    diff_row = next(line for line in text.splitlines() if line.startswith("| Distil-BERT − bert-cased |"))
    assert diff_row.count("**") == 2 * sum(c["distinguishable"] for c in pair)


def test_results_tables_leave_failed_cells_empty():
    """A model whose runs failed (the 2x-budget study lost one student's folder) gets "–" cells and
    no mean, not a crash and not a mean over fewer tasks."""
    tables = load("results_tables")
    path = BENCHMARKS.parent / "docs" / "results" / "ensemble_study" / "budget2x_h200" / "evaluation_3seeds" / \
        "results.json"
    text = tables.main([str(path), "--names", "distilmulti-2x=multi", "distil-bert-2x=single"])
    single = next(line for line in text.splitlines() if line.startswith("| single |"))
    assert single == "| single |" + " – |" * 8
    multi = next(line for line in text.splitlines() if line.startswith("| multi |"))
    assert "–" not in multi


def test_stream_workers_come_from_a_preloaded_forkserver():
    """The pipeline's workers fork from a server that imported the pipeline once (Linux/macOS), not
    a fresh interpreter each."""
    import multiprocessing as mp

    from compresso.strategies.distill import data

    ctx = data._worker_context()
    if "forkserver" in mp.get_all_start_methods():
        assert ctx.get_start_method() == "forkserver"
    else:
        assert ctx.get_start_method() == "spawn"


def test_push_forward_benchmark_times_both_and_they_agree(tmp_path, shared_dir):
    """benchmarks/push_forward.py: the closed-form KL against the layouts it replaced, with the
    fixture tokenizers' map; all give the same values and gradients."""
    bench = load("push_forward")
    out = bench.main(["--shared", str(shared_dir), "--rows", "16", "--device", "cpu", "--repeats", "2",
                      "--iters", "1", "--out", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads(json.dumps(out))
    # compiled: on CUDA only by default
    assert set(out["variants"]) == {"scatter", "gathers", "permuted", "closed form"}
    assert all(v < 1e-4 for v in out["agreement"].values()) and len(out["agreement"]) == 6
    assert set(out["ratios"]) == {"gathers / scatter", "permuted / gathers", "closed form / permuted"}
    assert out["single_columns"] + sum(out["groups"].values()) == out["columns"]


def test_performance_page_tables_come_from_the_json():
    """docs/performance.md's tables are generated blocks: each regenerates byte for byte from the
    committed JSON its command names."""
    tables = load("distill_speed_tables")
    page = BENCHMARKS.parent / "docs" / "performance.md"
    blocks = tables.blocks(page)
    assert len(blocks) >= 2
    for m in blocks:
        assert tables.regenerate(m["command"]) == m["body"], m["command"]


def test_float8_tables_come_from_the_json():
    tables = load("distill_speed_tables")
    path = BENCHMARKS.parent / "docs" / "results" / "benchmarks" / "teacher_float8" / "teacher_float8-h200.json"
    data = json.loads(path.read_text())
    text = tables.main([str(path)])
    large = data["speed"]["large"]["batches"]["512"]
    assert f"| large (24 × 1024) | 512 | {large['bf16']['median_ms']:.2f} (" in text
    assert f"| {large['float8 / bf16 time']:.3f} |" in text
    cased = data["fidelity"]["ro-bert-small-cased"]
    assert f"| {cased['top1_agreement']:.4f} |" in text
