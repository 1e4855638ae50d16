"""Markdown tables from a ``distill_speed.py`` JSON file, for docs/performance.md.

Several JSON files (one run per batch size or group of batch sizes, e.g. to stay within a time
limit per command) are merged into one set of tables; they must come from the same GPU, sizes,
vocabularies and configurations, and no batch size may appear twice.

Prints the tables; with ``--write PAGE`` replaces the text between the markers
``<!-- distill-speed tables: begin -->`` and ``<!-- distill-speed tables: end -->`` in PAGE with
them (the page must already have both markers). ``--section NAME`` uses the markers
``<!-- distill-speed tables NAME: begin -->`` / ``… NAME: end -->`` instead, so one page can hold
the tables of several commands (runs with different configurations do not merge). Every figure comes from the JSON; the tables name
the JSON path they were rendered from.

Usage:
  python benchmarks/distill_speed_tables.py docs/results/benchmarks/distill_speed.json
  python benchmarks/distill_speed_tables.py docs/results/benchmarks/distill_speed.json --write docs/performance.md
  python benchmarks/distill_speed_tables.py b64/distill_speed.json b256/distill_speed.json --issue-note
  python benchmarks/distill_speed_tables.py b64.json b512.json --write docs/performance.md --section b64-b512
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN = "<!-- distill-speed tables: begin -->"
END = "<!-- distill-speed tables: end -->"

# The goals of issue 14, checked against the JSON: (ratio key or metric, comparison, bound, what).
GOALS = [
    ("cx / c1 step time", "<=", 1.45, "cross-tokenizer step ≤ 1.45 × the 1-teacher step"),
    ("c1-text / c1 tokens/s", ">=", 0.90, "real text ≥ 90 % of synthetic tokens/s, 1 teacher"),
    ("cx-text / cx tokens/s", ">=", 0.90, "real text ≥ 90 % of synthetic tokens/s, cross-tokenizer"),
    ("c1 / reference tokens/s", ">=", 2.0, "compresso ≥ 2 × the reference's tokens/s (its faster mode)"),
    ("c1 / reference peak memory", "<=", 0.6, "compresso peak memory ≤ 0.6 × the reference's"),
    # the same goals for the compiled configurations (distill `compile: true`)
    ("cxc / c1c step time", "<=", 1.45, "compiled: cross-tokenizer step ≤ 1.45 × the 1-teacher step"),
    ("c1c / reference tokens/s", ">=", 2.0, "compiled: compresso ≥ 2 × the reference's tokens/s"),
    ("c1c / reference peak memory", "<=", 0.6, "compiled: compresso peak memory ≤ 0.6 × the reference's"),
    ("cxg / c1g step time", "<=", 1.45, "teacher CUDA graphs: cross-tokenizer step ≤ 1.45 × the 1-teacher step"),
    ("c1g / reference tokens/s", ">=", 2.0, "teacher CUDA graphs: compresso ≥ 2 × the reference's tokens/s"),
    ("c1g / reference peak memory", "<=", 0.6, "teacher CUDA graphs: compresso peak memory ≤ 0.6 × the reference's"),
    ("c1g-text / c1g tokens/s", ">=", 0.90, "teacher CUDA graphs: real text ≥ 90 % of synthetic tokens/s, 1 teacher"),
    ("cxg-text / cxg tokens/s", ">=", 0.90, "teacher CUDA graphs: real text ≥ 90 % of synthetic tokens/s, cross-tokenizer"),
    ("cxs / c1s step time", "<=", 1.45, "student CUDA graphs: cross-tokenizer step ≤ 1.45 × the 1-teacher step"),
    ("c1s / reference tokens/s", ">=", 2.0, "student CUDA graphs: compresso ≥ 2 × the reference's tokens/s"),
    ("c1s / reference peak memory", "<=", 0.6, "student CUDA graphs: compresso peak memory ≤ 0.6 × the reference's"),
    ("cxgs / c1gs step time", "<=", 1.45, "teacher and student CUDA graphs: cross-tokenizer step ≤ 1.45 × the 1-teacher step"),
    ("c1gs / reference tokens/s", ">=", 2.0, "teacher and student CUDA graphs: compresso ≥ 2 × the reference's tokens/s"),
    ("c1gs / reference peak memory", "<=", 0.6, "teacher and student CUDA graphs: compresso peak memory ≤ 0.6 × the reference's"),
    ("c1gs-text / c1gs tokens/s", ">=", 0.90, "teacher and student CUDA graphs: real text ≥ 90 % of synthetic tokens/s, 1 teacher"),
    ("cxc8 / c1c8 step time", "<=", 1.45, "compiled, float8 teachers: cross-tokenizer step ≤ 1.45 × the 1-teacher step"),
    ("c1c8 / reference tokens/s", ">=", 2.0, "compiled, float8 teachers: compresso ≥ 2 × the reference's tokens/s"),
    ("c1c8 / reference peak memory", "<=", 0.6, "compiled, float8 teachers: compresso peak memory ≤ 0.6 × the reference's"),
    ("c1c-text / c1c tokens/s", ">=", 0.90, "compiled: real text ≥ 90 % of synthetic tokens/s, 1 teacher"),
    ("cxc-text / cxc tokens/s", ">=", 0.90, "compiled: real text ≥ 90 % of synthetic tokens/s, cross-tokenizer"),
    # KL at every token (ce_scope all) against the reference without restrict_ce_to_mask
    ("c1-all-chunk / reference tokens/s", ">=", 2.0, "KL everywhere, chunked: ≥ 2 × the reference's tokens/s"),
    ("c1-all-chunk / reference peak memory", "<=", 0.6, "KL everywhere, chunked: peak memory ≤ 0.6 × the reference's"),
]
MFU_GOALS = [("c1", 0.45, "1 teacher ≥ 45 % MFU"), ("cx", 0.40, "cross-tokenizer ≥ 40 % MFU"),
             ("c1c", 0.45, "compiled: 1 teacher ≥ 45 % MFU"), ("cxc", 0.40, "compiled: cross-tokenizer ≥ 40 % MFU"),
             ("c1g", 0.45, "teacher CUDA graphs: 1 teacher ≥ 45 % MFU"), ("cxg", 0.40, "teacher CUDA graphs: cross-tokenizer ≥ 40 % MFU"),
             ("c1s", 0.45, "student CUDA graphs: 1 teacher ≥ 45 % MFU"), ("cxs", 0.40, "student CUDA graphs: cross-tokenizer ≥ 40 % MFU"),
             ("c1gs", 0.45, "teacher and student CUDA graphs: 1 teacher ≥ 45 % MFU"),
             ("cxgs", 0.40, "teacher and student CUDA graphs: cross-tokenizer ≥ 40 % MFU"),
             # float8 teachers do the same FLOPs; MFU is still against the bf16 dense peak
             ("c1c8", 0.45, "compiled, float8 teachers: 1 teacher ≥ 45 % MFU (bf16 peak)"),
             ("cxc8", 0.40, "compiled, float8 teachers: cross-tokenizer ≥ 40 % MFU (bf16 peak)")]


def fmt_int(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def render(data: dict, sources: list[str]) -> str:
    env = data["environment"]
    lines = []
    gpu = env.get("gpu", env["device"])
    source = " and ".join(f"[`{s}`]({s})" for s in sources)
    lines.append(f"Rendered from {source} by `benchmarks/distill_speed_tables.py`. "
                 f"{gpu}, torch {env['torch']}, transformers {env['transformers']}, commit {env.get('commit')}; "
                 f"whole run {data['wall_s']} s. MFU against {data['peak_tflops']} TFLOP/s dense bf16."
                 if data.get("peak_tflops") else
                 f"Rendered from {source}. {gpu}, torch {env['torch']}; no MFU (no peak given).")
    if not data.get("complete", True):
        lines.append("")
        lines.append("**Incomplete run**: it stopped early; only the batch sizes below finished.")
    lines.append("")
    for when in ("gpu_before", "gpu_after"):
        smi = data.get(when)
        if smi and smi.get("gpus"):
            g = smi["gpus"][0]
            others = smi.get("other_processes", [])
            lines.append(f"- nvidia-smi {when.split('_')[1]} the run: SM {g.get('clocks.sm')} MHz "
                         f"(max {g.get('clocks.max.sm')}), memory {g.get('clocks.mem')} MHz, utilisation "
                         f"{g.get('utilization.gpu')} %, {g.get('power.draw')} W; other processes on the GPU: "
                         f"{', '.join(p['name'] for p in others) if others else 'none'}")
    lines.append("")
    for phase in data["phases"]:
        b = phase["batch_size"]
        setup = (f"; set-up {phase['setup_s']} s, then a budget of {phase['budget_s']} s for warm-up and measurement"
                 if "setup_s" in phase else f"; budget {phase['budget_s']} s, set-up included")
        lines.append(f"**Batch {b} × {data['sizes']['seq_len']} tokens** (phase wall time {phase['wall_s']} s{setup})")
        lines.append("")
        lines.append("| run | step ms, median | min – max | IQR | tokens/s | MFU | peak GPU MiB | host syncs / step "
                     "| steady after (steps) | turns |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in phase["runs"]:
            s = r["step_ms"]
            syncs = r.get("host_syncs_one_step")
            warm = r["warmup"]
            sustained = r.get("sustained_tokens_per_s")
            mfu = "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
            tps = fmt_int(r["tokens_per_s"]) + (f" (sustained {fmt_int(sustained)})"
                                                 if sustained is not None and sustained < r["tokens_per_s"] else "")
            lines.append(f"| {r['label']} | {s['median']:.1f} | {s['min']:.1f} – {s['max']:.1f} | "
                         f"{s['q1']:.1f} – {s['q3']:.1f} | {tps} | "
                         f"{mfu} | "
                         f"{fmt_int(r['peak_gpu_mib'])} | {'–' if not syncs else syncs['count']} | "
                         f"{warm['steps'] if warm['steady'] else 'not steady after ' + str(warm['steps'])} | "
                         f"{r['turns_measured']} × {r['turn_steps']} |")
        lines.append("")
        if phase["ratios"]:
            lines.append("| ratio | value |")
            lines.append("|---|---:|")
            for k, v in phase["ratios"].items():
                lines.append(f"| {k} | {v:.3f} |")
            lines.append("")
    pipes = [(p["batch_size"], r) for p in data["phases"] for r in p["runs"] if r.get("pipeline")]
    if pipes:
        lines.append("Input pipeline alone (the strategy's `BatchStream` with the workers below, no GPU work):")
        lines.append("")
        lines.append("| run | batch | workers | tokens/s | first batch after (s) |")
        lines.append("|---|---:|---:|---:|---:|")
        for b, r in pipes:
            p = r["pipeline"]
            lines.append(f"| {r['label']} | {b} | {p['workers']} | {fmt_int(p['tokens_per_s'])} | "
                         f"{p['first_batch_s']:.1f} |")
        lines.append("")
    lines.append("Goals of issue 14 at each batch size:")
    lines.append("")
    lines.append("| goal | " + " | ".join(f"batch {p['batch_size']}" for p in data["phases"]) + " |")
    lines.append("|---|" + "---:|" * len(data["phases"]))
    for key, op, bound, what in GOALS:
        if not any(key in p["ratios"] for p in data["phases"]):
            continue  # configurations this run did not have
        cells = []
        for p in data["phases"]:
            v = p["ratios"].get(key)
            cells.append("–" if v is None else f"{v:.3f} {'✓' if (v <= bound if op == '<=' else v >= bound) else '✗'}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    for name, bound, what in MFU_GOALS:
        if not any(r["config"] == name for p in data["phases"] for r in p["runs"]):
            continue
        cells = []
        for p in data["phases"]:
            r = next((r for r in p["runs"] if r["config"] == name), None)
            m = None if r is None else r["mfu"]
            cells.append("–" if m is None else f"{100 * m:.1f} % {'✓' if m >= bound else '✗'}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def issue_note(data: dict) -> str:
    """Issue 14's opening table (runs × batch sizes) with this run's figures: tokens/s (median step ms)."""
    phases = data["phases"]
    rows = [("compresso, 1 teacher, first warm-up turn (step 2 on)", "c1", "first"),
            ("compresso, 1 teacher, steady", "c1", "median"),
            ("compresso, 2 teachers, same tokenizer", "c2", "median"),
            ("compresso, 2 teachers, second with another tokenizer", "cx", "median"),
            ("compresso, 1 teacher, compiled", "c1c", "median"),
            ("compresso, 2 teachers, second with another tokenizer, compiled", "cxc", "median"),
            ("compresso, 1 teacher, compiled, teacher CUDA graphs", "c1g", "median"),
            ("compresso, 2 teachers, another tokenizer, compiled, teacher CUDA graphs", "cxg", "median"),
            ("compresso, 1 teacher, compiled, student CUDA graphs", "c1s", "median"),
            ("compresso, 2 teachers, another tokenizer, compiled, student CUDA graphs", "cxs", "median"),
            ("compresso, 1 teacher, teacher and student CUDA graphs", "c1gs", "median"),
            ("compresso, 2 teachers, another tokenizer, teacher and student CUDA graphs", "cxgs", "median"),
            ("compresso, 1 teacher, real text, teacher and student CUDA graphs (sustained)", "c1gs-text", "sustained"),
            ("compresso, 1 teacher, compiled, float8 teachers", "c1c8", "median"),
            ("compresso, 2 teachers, another tokenizer, compiled, float8 teachers", "cxc8", "median"),
            ("compresso, 1 teacher, real text (sustained)", "c1-text", "sustained"),
            ("compresso, 2 teachers, cross-tokenizer, real text (sustained)", "cx-text", "sustained"),
            ("compresso, 1 teacher, real text, compiled (sustained)", "c1c-text", "sustained"),
            ("compresso, 2 teachers, cross-tokenizer, real text, compiled (sustained)", "cxc-text", "sustained"),
            ("reference (HF DistilBERT, fp16 apex O1 emulated)", "ref", "median"),
            ("reference (HF DistilBERT, fp32)", "ref-fp32", "median")]
    lines = ["| run (base size, seq " + str(data["sizes"]["seq_len"]) + ") | "
             + " | ".join(f"batch {p['batch_size']}" for p in phases) + " |",
             "|---|" + "---|" * len(phases)]
    for label, config, kind in rows:
        cells = []
        for p in phases:
            r = next((r for r in p["runs"] if r["config"] == config), None)
            if r is None:
                cells.append("–")
                continue
            if kind == "first":
                ms = r["warmup"]["turn_ms"][0]
                tps = r["tokens_per_step"] / (ms / 1000)
            else:
                ms = r["step_ms"]["median"]
                tps = r.get("sustained_tokens_per_s", r["tokens_per_s"]) if kind == "sustained" else r["tokens_per_s"]
            cells.append(f"{tps / 1000:,.0f}k ({ms:.1f} ms)")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    # What the labels above claim but this run may not have: steadiness, a pipeline-alone rate.
    unsteady = [f"{r['config']} at batch {p['batch_size']}" for p in phases for r in p["runs"]
                if not r["warmup"]["steady"]]
    if unsteady:
        lines.append("")
        lines.append(f"Not steady (warm-up ended before {data['method']['steady_turns']} turns agreed): "
                     + ", ".join(unsteady) + ".")
    no_pipeline = [f"{r['config']} at batch {p['batch_size']}" for p in phases for r in p["runs"]
                   if r["data"] == "text" and "sustained_tokens_per_s" not in r]
    if no_pipeline:
        lines.append("")
        lines.append("No pipeline-alone measurement, so the GPU rate stands for the sustained one: "
                     + ", ".join(no_pipeline) + ".")
    return "\n".join(lines) + "\n"


MUST_AGREE = ("sizes", "vocab", "tiny", "peak_tflops", "loss", "optimiser")


def merge(runs: list[tuple[Path, dict]]) -> dict:
    """One result from several runs of the benchmark: their phases, in batch-size order."""
    (first_path, first), rest = runs[0], runs[1:]
    merged = dict(first)
    for path, data in rest:
        for key in MUST_AGREE:
            if data.get(key) != first.get(key):
                raise SystemExit(f"{path}: {key} differs from {first_path}'s; these runs cannot share a table")
        if data["environment"].get("gpu") != first["environment"].get("gpu"):
            raise SystemExit(f"{path}: GPU {data['environment'].get('gpu')!r} differs from {first_path}'s "
                             f"{first['environment'].get('gpu')!r}")
    phases = [p for _, data in runs for p in data["phases"]]
    sizes = [p["batch_size"] for p in phases]
    repeated = sorted({b for b in sizes if sizes.count(b) > 1})
    if repeated:
        raise SystemExit(f"batch size {', '.join(map(str, repeated))} appears in more than one of "
                         f"{', '.join(str(p) for p, _ in runs)}")
    commits = list(dict.fromkeys(str(data["environment"].get("commit")) for _, data in runs))
    merged.update(phases=sorted(phases, key=lambda p: p["batch_size"]),
                  complete=all(data.get("complete", True) for _, data in runs),
                  wall_s=round(sum(data["wall_s"] for _, data in runs), 1), gpu_after=runs[-1][1].get("gpu_after"),
                  environment={**first["environment"], "commit": ", ".join(commits)})
    return merged


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, nargs="+", help="distill_speed.json file(s); several are merged")
    ap.add_argument("--write", type=Path, help="page whose marked section is replaced by the tables")
    ap.add_argument("--section", help="name of the marked section of --write's page (default: the unnamed one)")
    ap.add_argument("--issue-note", action="store_true",
                    help="print only issue 14's opening table with this run's figures (for its closing note)")
    args = ap.parse_args(argv)
    runs = []
    for path in args.json:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: cannot read a distill_speed JSON ({exc})") from None
        if data.get("benchmark") != "distill_speed":
            raise SystemExit(f"{path}: not written by benchmarks/distill_speed.py (benchmark = "
                             f"{data.get('benchmark')!r})")
        runs.append((path, data))
    data = merge(runs)
    if args.issue_note:
        text = issue_note(data)
        print(text)
        return text
    if args.write:
        sources = []
        for path in args.json:  # links relative to the page when the JSON is beside or under it
            try:
                sources.append(path.resolve().relative_to(args.write.resolve().parent).as_posix())
            except ValueError:
                sources.append(path.as_posix())
        text = render(data, sources)
        begin, end = (BEGIN, END) if not args.section else (
            BEGIN.replace("tables:", f"tables {args.section}:"), END.replace("tables:", f"tables {args.section}:"))
        page = args.write.read_text()
        if page.count(begin) != 1 or page.count(end) != 1 or page.index(begin) > page.index(end):
            raise SystemExit(f"{args.write}: needs exactly one {begin} line followed by one {end} line")
        head, rest = page.split(begin)
        _, tail = rest.split(end)
        args.write.write_text(f"{head}{begin}\n{text}{end}{tail}")
        print(f"wrote the tables into {args.write}", file=sys.stderr)
    else:
        text = render(data, [path.as_posix() for path in args.json])
        print(text)
    return text


if __name__ == "__main__":
    main()
