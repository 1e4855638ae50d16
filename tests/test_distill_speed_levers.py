"""Smoke run (tiny models, CPU) of the speed benchmark's lever configurations: compiled and chunked
runs beside their eager / unchunked twins in one interleaved run, and the same initial losses on
every side (the reference's too when ``COMPRESSO_REFERENCE_DIR`` names its ``distillation`` folder)."""

import json
import os

import pytest

from tests.test_benchmarks_smoke import _speed_argv, load


@pytest.mark.slow
def test_distill_speed_compares_compiled_and_chunked_with_their_twins(tmp_path):
    bench = load("distill_speed")
    reference = os.environ.get("COMPRESSO_REFERENCE_DIR")
    configs = "c1,c1c,cxc,c1-all,c1-all-chunk" + (",ref-fp32,ref-fp32-all" if reference else "")
    out = bench.main(_speed_argv(tmp_path, configs, "--chunk-rows", "50",
                                 *(["--reference-dir", reference] if reference else [])))
    (phase,) = out["phases"]
    runs = {r["config"]: r for r in phase["runs"]}
    assert set(runs) == set(configs.split(","))
    assert runs["c1c"]["compiled"] and not runs["c1"]["compiled"]
    assert runs["c1-all-chunk"]["loss_chunk_rows"] == 50 and runs["c1-all"]["loss_chunk_rows"] is None
    assert runs["c1-all"]["scope"] == "all" and runs["c1"]["scope"] == "masked"
    # the heads run at every token with KL everywhere: more FLOPs than at masked tokens only
    assert runs["c1-all"]["flop_per_token"] > runs["c1"]["flop_per_token"]
    for key in ("c1c / c1 step time", "cxc / c1c step time", "c1-all-chunk / c1-all step time"):
        assert phase["ratios"][key] > 0
    # compiled for real, one graph per region, no fallback to eager code
    stats = phase["compile"]
    assert stats["stats"]["unique_graphs"] >= 2 and not stats["graph_breaks"]
    # Initial weights are the same everywhere, so the first step's losses agree (masks differ).
    first = {name: r["first_step_losses"] for name, r in runs.items()}
    for name in configs.split(","):
        if name == "cxc":
            continue  # a second teacher with another vocabulary: another KL
        assert first[name]["mlm"] == pytest.approx(first["c1"]["mlm"], abs=0.3), name
        assert first[name]["cos"] == pytest.approx(first["c1"]["cos"], abs=0.03), name
        assert first[name]["kl_t2"] == pytest.approx(first["c1"]["kl_t2"], abs=0.01), name
    assert json.loads((tmp_path / "distill_speed.json").read_text())["phases"][0]["compile"] == stats
    if reference:
        assert "c1-all-chunk / reference tokens/s" in phase["ratios"] and "c1c / reference tokens/s" in phase["ratios"]
