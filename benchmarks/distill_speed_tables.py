"""Markdown tables for docs/performance.md, rendered from the JSON of the distillation benchmarks.

What it renders depends on the JSON given:

* ``distill_speed.py`` JSON, one run or several runs of other batch sizes (merged; same GPU, sizes,
  vocabularies): every table of the run — step times, tokens/s, MFU, peak memory, host
  synchronisations, warm-up, the ratios of each lever against its twin, the input pipeline alone.
* ``--current`` with ``distill_speed.py`` JSON files of one GPU: one table for that GPU, a row per
  batch size and configuration, taken from the *last* file given that measured it, with its
  ratios against the compiled 1-teacher step (``c1c``) of the same run. This is the table of
  docs/performance.md; list the files oldest first.
* ``teacher_float8.py`` JSON: the speed and fidelity tables of float8 teachers.

Output goes to stdout. Every figure comes from the JSON, and the tables name the files they were
rendered from; ``--link-base DIR`` writes those links relative to DIR (``docs`` for a page in docs/).

Pages mark a generated block as ``<!-- BEGIN GENERATED: <command> -->`` … ``<!-- END GENERATED -->``,
where the command, run from the repository root, prints the block's content exactly.
``--update PAGE`` reruns every such block of PAGE whose command is this script and rewrites the
page; ``--check PAGE`` only reports (exit status 1) the blocks that differ.

Usage:
  python benchmarks/distill_speed_tables.py runs/bench/distill_speed.json
  python benchmarks/distill_speed_tables.py b64/distill_speed.json b256/distill_speed.json
  python benchmarks/distill_speed_tables.py --current --link-base docs old.json newer.json newest.json
  python benchmarks/distill_speed_tables.py docs/results/benchmarks/teacher_float8/teacher_float8-h200.json
  python benchmarks/distill_speed_tables.py --update docs/performance.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/distill_speed_tables.py"
BLOCK = re.compile(r"<!-- BEGIN GENERATED: (?P<command>.+?) -->\n(?P<body>.*?)<!-- END GENERATED -->", re.S)

MUST_AGREE = ("sizes", "vocab", "tiny", "peak_tflops", "loss", "optimiser")
BASELINE = "c1c"  # the default configuration on a GPU: 1 teacher, compile: auto
# Row order of --current (distill_speed.py's configurations; others follow in the order first seen)
ORDER = ("c1", "c1c", "c2", "c2c", "cx", "cxc", "c1-text", "c1c-text", "cx-text", "cxc-text", "c1g", "cxg",
         "c1g-text", "cxg-text", "c1s", "cxs", "c1gs", "cxgs", "c1gs-text", "c1c8", "cxc8", "c1-all", "c1-all-chunk",
         "c1c-all-chunk", "cx-all-chunk", "ref", "ref-fp32", "ref-all", "ref-fp32-all")


def fmt_int(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def fmt_ms(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def link(path: Path, base: Path | None) -> str:
    """A Markdown link to path, relative to base (a folder) when given."""
    if base is None:
        target = path.as_posix()
    else:
        target = Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    return f"[`{path.name}`]({target})"


def environment_line(data: dict) -> str:
    env = data["environment"]
    gpu = env.get("gpu", env["device"])
    memory = f" ({env['gpu_memory_gib']} GiB)" if env.get("gpu_memory_gib") else ""
    return f"{gpu}{memory}, torch {env['torch']}, transformers {env['transformers']}"


def commit_of(data: dict) -> str:
    commit = data["environment"].get("commit")
    return f"commit {commit}" if commit else "commit not recorded"


def smi_line(data: dict) -> str:
    """The GPU's clocks before and after a run, and whether anything else ran on it."""
    parts, others = [], set()
    for when in ("gpu_before", "gpu_after"):
        smi = data.get(when)
        if smi and smi.get("gpus"):
            g = smi["gpus"][0]
            parts.append(f"SM {g.get('clocks.sm')}/{g.get('clocks.max.sm')} MHz {when.split('_')[1]}")
            others.update(p["name"] for p in smi.get("other_processes", []))
    if not parts:
        return "no nvidia-smi reading"
    return ", ".join(parts) + f"; other processes on the GPU: {', '.join(sorted(others)) if others else 'none'}"


def warmup_cell(r: dict) -> str:
    warm = r["warmup"]
    return f"after {warm['steps']} steps" if warm["steady"] else f"not steady after {warm['steps']}"


# ---------------------------------------------------------------------------------------------
# One run (or runs of other batch sizes, merged): every table


def render_run(data: dict, sources: list[str]) -> str:
    lines = [f"Rendered from {' and '.join(sources)} by `{SCRIPT}`. {environment_line(data)}, "
             f"{commit_of(data)}; whole run {data['wall_s']} s."
             + (f" MFU against {data['peak_tflops']} TFLOP/s dense bf16." if data.get("peak_tflops") else
                " No MFU (no peak given).")]
    if not data.get("complete", True):
        lines += ["", "**Incomplete run**: it stopped early; only the batch sizes below finished."]
    lines += ["", f"nvidia-smi: {smi_line(data)}.", ""]
    for phase in data["phases"]:
        b = phase["batch_size"]
        setup = (f"; set-up {phase['setup_s']} s, then a budget of {phase['budget_s']} s for warm-up and measurement"
                 if "setup_s" in phase else f"; budget {phase['budget_s']} s, set-up included")
        lines.append(f"**Batch {b} × {data['sizes']['seq_len']} tokens** (phase wall time {phase['wall_s']} s{setup})")
        lines.append("")
        lines.append("| run | step ms, median | min – max | IQR | tokens/s | MFU | peak GPU MiB | host syncs / step "
                     "| warm-up | turns |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in phase["runs"]:
            s = r["step_ms"]
            syncs = r.get("host_syncs_one_step")
            sustained = r.get("sustained_tokens_per_s")
            mfu = "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
            tps = fmt_int(r["tokens_per_s"]) + (f" (sustained {fmt_int(sustained)})"
                                                 if sustained is not None and sustained < r["tokens_per_s"] else "")
            lines.append(f"| {r['label']} | {s['median']:.1f} | {s['min']:.1f} – {s['max']:.1f} | "
                         f"{s['q1']:.1f} – {s['q3']:.1f} | {tps} | {mfu} | {fmt_int(r['peak_gpu_mib'])} | "
                         f"{'–' if not syncs else syncs['count']} | {warmup_cell(r)} | "
                         f"{r['turns_measured']} × {r['turn_steps']} |")
        lines.append("")
        if phase["ratios"]:
            lines += ["| ratio | value |", "|---|---:|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in phase["ratios"].items()]
            lines.append("")
    lines += pipeline_table([(p["batch_size"], r) for p in data["phases"] for r in p["runs"]])
    return "\n".join(lines).rstrip("\n") + "\n"


def pipeline_table(rows: list[tuple[int, dict]]) -> list[str]:
    rows = [(b, r) for b, r in rows if r.get("pipeline")]
    if not rows:
        return []
    lines = ["Input pipeline alone (the strategy's `BatchStream` with the workers it chose, no GPU work):", "",
             "| batch | configuration | workers | tokens/s | first batch after (s) |", "|---:|---|---:|---:|---:|"]
    for b, r in rows:
        p = r["pipeline"]
        lines.append(f"| {b} | `{r['config']}` {r['label']} | {p['workers']} | {fmt_int(p['tokens_per_s'])} | "
                     f"{p['first_batch_s']:.1f} |")
    return lines + [""]


def merge(runs: list[tuple[Path, dict]]) -> dict:
    """One result from several runs of the benchmark: their phases, in batch-size order."""
    (first_path, first), rest = runs[0], runs[1:]
    merged = dict(first)
    for path, data in rest:
        agree(first_path, first, path, data)
    phases = [p for _, data in runs for p in data["phases"]]
    sizes = [p["batch_size"] for p in phases]
    repeated = sorted({b for b in sizes if sizes.count(b) > 1})
    if repeated:
        raise SystemExit(f"batch size {', '.join(map(str, repeated))} appears in more than one of "
                         f"{', '.join(str(p) for p, _ in runs)} (--current takes the last of them)")
    commits = list(dict.fromkeys(str(data["environment"].get("commit")) for _, data in runs))
    merged.update(phases=sorted(phases, key=lambda p: p["batch_size"]),
                  complete=all(data.get("complete", True) for _, data in runs),
                  wall_s=round(sum(data["wall_s"] for _, data in runs), 1), gpu_after=runs[-1][1].get("gpu_after"),
                  environment={**first["environment"],
                               "commit": None if commits == ["None"] else ", ".join(commits)})
    return merged


def agree(first_path: Path, first: dict, path: Path, data: dict) -> None:
    for key in MUST_AGREE:
        if data.get(key) != first.get(key):
            raise SystemExit(f"{path}: {key} differs from {first_path}'s; these runs cannot share a table")
    if data["environment"].get("gpu") != first["environment"].get("gpu"):
        raise SystemExit(f"{path}: GPU {data['environment'].get('gpu')!r} differs from {first_path}'s "
                         f"{first['environment'].get('gpu')!r}: one table per GPU")


# ---------------------------------------------------------------------------------------------
# --current: one table per GPU, the latest measurement of every batch size and configuration


def twin(config: str) -> str | None:
    """The configuration a row is compared with when its run has no c1c: its synthetic-text twin."""
    return config[:-len("-text")] if config.endswith("-text") else None


def render_current(runs: list[tuple[Path, dict]], base: Path | None) -> str:
    (first_path, first) = runs[0]
    for path, data in runs[1:]:
        agree(first_path, first, path, data)
    chosen: dict[tuple[int, str], tuple[int, dict, dict]] = {}  # (batch, config) -> (file index, phase, run)
    for i, (_, data) in enumerate(runs):
        for phase in data["phases"]:
            for r in phase["runs"]:
                chosen[(phase["batch_size"], r["config"])] = (i, phase, r)
    order = {name: k for k, name in enumerate(ORDER)}
    for _, data in runs:
        for name in data["configs"]:
            order.setdefault(name, len(order))
    used = sorted({i for i, _, _ in chosen.values()})
    unused = [str(path) for i, (path, _) in enumerate(runs) if i not in used]
    if unused:
        raise SystemExit(f"{', '.join(unused)}: every row of it is replaced by a later file; leave it out")
    sizes, vocab = first["sizes"], first["vocab"]
    loss = first["loss"]
    lines = [
        f"Rendered by `{SCRIPT} --current` from the JSON files listed below the table. "
        f"{environment_line(first)}. Random base-size models: teachers {sizes['layers']} × {sizes['hidden']} "
        f"(FFN {sizes['ffn']}, {sizes['heads']} heads), student {sizes['student_layers']} layers; vocabularies "
        f"{vocab['A']:,} (student, teacher A) and {vocab['B']:,} (teacher B, another tokenizer); rows of "
        f"{sizes['seq_len']} tokens; loss {loss['alpha_ce']:g}·T²·KL (T = {loss['temperature']:g}) + "
        f"{loss['alpha_mlm']:g}·MLM + {loss['alpha_cos']:g}·cosine. "
        + (f"MFU against {first['peak_tflops']} TFLOP/s dense bf16. " if first.get("peak_tflops") else "")
        + f"Each row comes from the last of the files listed below that measured that configuration at that "
        f"batch size; its ratios compare it with the compiled 1-teacher step (`{BASELINE}`) of the same run, or, "
        f"where that run has none, with the configuration named in the cell.",
        "",
        "| batch | configuration | step ms, median (IQR) | tokens/s | tokens/s ÷ `c1c` | MFU | peak GPU MiB "
        "| peak memory ÷ `c1c` | warm-up | training thread CPU ms / step | GPU work queued at turn end, ms | JSON |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (b, name), (i, phase, r) in sorted(chosen.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        same_run = {x["config"]: x for x in phase["runs"]}
        ref_name = BASELINE if BASELINE in same_run else twin(name) if twin(name) in same_run else None

        def ratio(value, key):
            if name == BASELINE:
                return "1"
            if ref_name is None:
                return "–"
            other = same_run[ref_name][key]
            cell = f"{value / other:.3f}"
            return cell if ref_name == BASELINE else f"{cell} of `{ref_name}`"

        s, host = r["step_ms"], r.get("host", {})
        sustained = r.get("sustained_tokens_per_s")
        tps = fmt_int(r["tokens_per_s"]) + (f" (sustained {fmt_int(sustained)})"
                                             if sustained is not None and sustained < r["tokens_per_s"] else "")
        mfu = "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        lines.append(
            f"| {b} | `{name}` {r['label']} | {s['median']:.1f} ({s['q1']:.1f} – {s['q3']:.1f}) | {tps} | "
            f"{ratio(r['tokens_per_s'], 'tokens_per_s')} | {mfu} | {fmt_int(r['peak_gpu_mib'])} | "
            f"{ratio(r['peak_gpu_mib'], 'peak_gpu_mib')} | {warmup_cell(r)} | "
            f"{fmt_ms(host.get('thread_cpu_ms_median'))} | {fmt_ms(host.get('closing_sync_ms_median'))} | "
            f"{link(runs[i][0], base)} |")
    lines.append("")
    lines += pipeline_table([(b, r) for (b, _), (_, _, r) in sorted(chosen.items(), key=lambda kv: kv[0])])
    lines += ["Files, in the order given (a later file's row replaces an earlier one's):", ""]
    for i in used:
        path, data = runs[i]
        batches = ", ".join(str(p["batch_size"]) for p in data["phases"])
        env = "" if environment_line(data) == environment_line(first) else f"{environment_line(data)}, "
        lines.append(f"- {link(path, base)}: batch {batches}; {env}{commit_of(data)}; whole run {data['wall_s']} s; "
                     f"nvidia-smi: {smi_line(data)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# teacher_float8.py


def render_float8(data: dict, source: str) -> str:
    lines = [f"Rendered from {source} by `{SCRIPT}`. {data['gpu']}, torch {data['torch']}, transformers "
             f"{data['transformers']}, torchao {data.get('torchao')}. Speed: one compiled encoder pass of a random "
             f"teacher, rows of {data['seq_len']} tokens, {data['repeats']} interleaved rounds of {data['iters']} "
             f"passes after {data['warmup']} warm-up passes each.", "",
             "| teacher | rows | bf16 ms, median (min – max) | float8 ms, median (min – max) | float8 / bf16 |",
             "|---|---:|---:|---:|---:|"]
    for size, entry in data["speed"].items():
        dims = entry["size"]
        for rows, b in entry["batches"].items():
            cells = [f"{b[k]['median_ms']:.2f} ({b[k]['min_ms']:.2f} – {b[k]['max_ms']:.2f})" for k in ("bf16", "float8")]
            lines.append(f"| {size} ({dims['layers']} × {dims['hidden']}) | {rows} | {cells[0]} | {cells[1]} | "
                         f"{b['float8 / bf16 time']:.3f} |")
    lines += ["", f"Fidelity on the shared Romanian teachers: the first {data['documents']:,} documents of "
                  f"`{data['corpus']}`, 15 % of the tokens masked.", "",
              "| teacher | masked positions | MLM accuracy bf16 | MLM accuracy float8 | top-1 agreement "
              "| KL(bf16 ‖ float8), T = 2 | T = 1 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, f in data["fidelity"].items():
        lines.append(f"| {name} | {f['masked_positions']:,} | {f['mlm_accuracy_bf16']:.4f} | "
                     f"{f['mlm_accuracy_float8']:.4f} | {f['top1_agreement']:.4f} | {f['kl_bf16_float8_T2']:.2e} | "
                     f"{f['kl_bf16_float8_T1']:.2e} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Generated blocks of a page


def blocks(page: Path) -> list[re.Match]:
    return [m for m in BLOCK.finditer(page.read_text()) if shlex.split(m["command"])[1:2] == [SCRIPT]]


def regenerate(command: str) -> str:
    """What the block's command prints, run in this process from the repository root."""
    argv = shlex.split(command)
    if argv[:2] != ["python", SCRIPT]:
        raise SystemExit(f"not a command of this script: {command}")
    out, cwd = io.StringIO(), Path.cwd()
    try:
        os.chdir(REPO)
        with contextlib.redirect_stdout(out):
            main(argv[2:])
    finally:
        os.chdir(cwd)
    return out.getvalue()


def update(page: Path, write: bool) -> int:
    text, stale = page.read_text(), []

    def fresh(m: re.Match) -> str:
        if shlex.split(m["command"])[1:2] != [SCRIPT]:
            return m[0]
        body = regenerate(m["command"])
        if body != m["body"]:
            stale.append(m["command"])
        return f"<!-- BEGIN GENERATED: {m['command']} -->\n{body}<!-- END GENERATED -->"

    new = BLOCK.sub(fresh, text)
    for command in stale:
        print(f"{page}: {'rewrote' if write else 'out of date'}: {command}", file=sys.stderr)
    if write and new != text:
        page.write_text(new)
    return 1 if stale and not write else 0


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read a benchmark JSON ({exc})") from None


def main(argv=None) -> str | int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, nargs="*", help="benchmark JSON file(s)")
    ap.add_argument("--current", action="store_true",
                    help="one table for the GPU: each batch size and configuration from the last file that has it")
    ap.add_argument("--link-base", type=Path, help="write links to the JSON relative to this folder")
    ap.add_argument("--update", type=Path, metavar="PAGE", help="rewrite the generated blocks of PAGE")
    ap.add_argument("--check", type=Path, metavar="PAGE", help="exit 1 if a generated block of PAGE is out of date")
    args = ap.parse_args(argv)
    if args.update or args.check:
        if args.json:
            ap.error("--update/--check take a page, not JSON files")
        return update(args.update or args.check, write=bool(args.update))
    if not args.json:
        ap.error("give a benchmark JSON file")
    runs = [(path, read(path)) for path in args.json]
    kinds = {data.get("benchmark") for _, data in runs}
    if kinds == {"teacher_float8"} and len(runs) == 1 and not args.current:
        text = render_float8(runs[0][1], link(runs[0][0], args.link_base))
    elif kinds == {"distill_speed"}:
        text = (render_current(runs, args.link_base) if args.current else
                render_run(merge(runs), [link(path, args.link_base) for path, _ in runs]))
    else:
        raise SystemExit(f"{', '.join(map(str, args.json))}: expected distill_speed.py JSON (one or more; "
                         f"--current for several runs of one GPU) or one teacher_float8.py JSON, got "
                         f"{sorted(map(str, kinds))}")
    # a blank line last: in a page, the block's end marker must not be read as a table row
    text = text.rstrip("\n") + "\n\n"
    sys.stdout.write(text)
    return text


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
