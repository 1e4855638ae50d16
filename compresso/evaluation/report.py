"""report.md, results.json and PNG plots from an evaluation's results.

Every file is written under a temporary name in the output folder and renamed into place, so a
reader never sees half a report.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np

from compresso.evaluation.config import ReportConfig
from compresso.evaluation.tasks import METRIC_TITLES


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def is_evaluation_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an evaluation compresso wrote (its results.json says so), or only
    the finished jobs of an interrupted one."""
    try:
        entries = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    if entries and entries <= {".partial-jobs"}:
        return True
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and {"scores", "config", "environment"} <= set(results)


def check_evaluation_folder(out_dir: Path) -> None:
    """The rules ``apply`` has for its output folder: new, empty, or an evaluation compresso wrote
    (never a folder of someone else's files, whose report.md and results.json would be replaced),
    and no symbolic link inside."""
    from compresso.engine import RunError, check_writable_folder, symlinks_inside
    from compresso.evaluation.runner import EvaluationError

    try:
        check_writable_folder(out_dir, "evaluation folder")
    except RunError as exc:
        raise EvaluationError(str(exc)) from None
    if not out_dir.is_dir():
        return
    try:
        entries = sorted(p.name for p in out_dir.iterdir())
    except OSError as exc:
        raise EvaluationError(f"evaluation folder {out_dir} cannot be read: {exc.strerror or exc}") from None
    if entries and not is_evaluation_folder(out_dir):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise EvaluationError(f"evaluation folder {out_dir} already holds files that are not a compresso evaluation "
                              f"({shown}); give an empty or new folder (--out), so that nothing of yours is "
                              f"overwritten")
    links = symlinks_inside(out_dir)
    if links:
        raise EvaluationError(f"evaluation folder {out_dir} holds a symbolic link, {links[0]}; compresso never "
                              f"makes one, and would write through it outside the folder: remove it")


def format_stat(stat: dict | None, decimals: int = 2) -> str:
    """``mean ± std`` of a statistic from results.json (``–`` when missing)."""
    if not stat:
        return "–"
    text = f"{stat['mean']:.{decimals}f}"
    if stat.get("std") is not None:
        text += f" ± {stat['std']:.{decimals}f}"
    return text


def _regression_range(task: dict) -> str:
    low, high = task.get("value_range") or (0.0, 5.0)  # results written before value_range was recorded: STS
    return f"regression {low:g}–{high:g}"


def md_text(value) -> str:
    """User text (a title, a model or task name) as inert Markdown: one line, HTML shown rather than
    run (``<script>``, ``<img onerror>``), and no character that would start a heading, a link, an
    image, emphasis, code or a table cell."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\`*\[\]#|!~])", r"\\\1", text)


def md_code(value) -> str:
    """User text as an inline code span, delimited by more backticks than it holds in a row."""
    text = " ".join(str(value).split())
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def md_fence(text: str, language: str = "") -> list[str]:
    """A fenced code block that nothing inside can close: its fence is longer than any run of
    backticks in ``text`` (and at least three)."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [fence + language, text, fence]


def _table_cell(cell: str) -> str:
    """A cell stays in its column and row: newlines become spaces, an unescaped ``|`` is escaped."""
    return re.sub(r"(?<!\\)\|", r"\\|", " ".join(str(cell).split()))


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A Markdown table; ``align`` per column: l, r or c (default: first column left, the rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = [{"l": ":---", "r": "---:", "c": ":---:"}[a] for a in align]
    lines = ["| " + " | ".join(map(_table_cell, header)) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(map(_table_cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _model_label(m: dict) -> str:
    label = md_text(m["name"])
    if m["role"] == "teacher":
        label += " (teacher)"
    elif m.get("strategy"):
        label += f" ({md_text(m['strategy'])})"
    return label


def markdown(results: dict, cfg: ReportConfig, plots: list[str]) -> str:
    d = cfg.decimals
    tasks = results["tasks"]
    models = results["models"]
    scores = results["scores"]
    seeds = results["seeds"]
    env = results["environment"]
    # User text (titles, names, notes) goes through md_text: it is shown, never read as Markdown or HTML.
    out = [f"# {md_text(results['title'])}", ""]
    out.append(f"{len(models)} model(s) × {len(tasks)} task(s) × {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) "
               f"on {env['device']}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}; "
               f"{results['created']}; wall time {results['seconds']:.0f} s. Scores are 0–100 on the test sets"
               + (", mean ± sample std over seeds" if len(seeds) > 1 else "") + ".")
    out.append("")
    if results["errors"]:
        out += ["**Failures** (cells left empty below):", ""]
        out += [f"- {md_text(e['model'])} · {md_text(tasks.get(e['task'], {}).get('title', e['task']))} · seed "
                f"{e['seed']}: {md_code(e['error'][:300])}" for e in results["errors"]]
        out.append("")
    if results.get("not_scored"):
        out += ["**Not scored** (a task model is scored on its own task only): "
                + "; ".join(f"{md_text(e['model'])} on {md_text(tasks.get(e['task'], {}).get('title', e['task']))}"
                            for e in results["not_scored"]), ""]

    # Paper-style table: one row per model, one column per task's headline metric.
    out += ["## Scores", ""]
    header = ["model"] + [f"{md_text(t['title'])} ({METRIC_TITLES[t['headline']]})" for t in tasks.values()]
    best = {}
    for task, t in tasks.items():
        vals = [scores[m["name"]][task]["metrics"][t["headline"]]["mean"]
                for m in models if task in scores.get(m["name"], {})]
        best[task] = max(vals) if vals else None
    rows = []
    for m in models:
        row = [_model_label(m)]
        for task, t in tasks.items():
            entry = scores.get(m["name"], {}).get(task)
            stat = entry["metrics"][t["headline"]] if entry else None
            cell = format_stat(stat, d)
            if stat and best[task] is not None and len(models) > 1 and stat["mean"] == best[task]:
                cell = f"**{cell}**"
            row.append(cell)
        rows.append(row)
    out += [markdown_table(header, rows), ""]

    # Every metric.
    out += ["### All metrics", ""]
    header, keys = ["model"], []
    for task, t in tasks.items():
        for metric in _metric_names(scores, task, t):
            header.append(f"{md_text(t['title'])} {METRIC_TITLES.get(metric, md_text(metric.replace('_', ' ')))}")
            keys.append((task, metric))
    rows = [[md_text(m["name"])] + [format_stat(scores.get(m["name"], {}).get(task, {}).get("metrics", {}).get(metric), d)
                           for task, metric in keys] for m in models]
    out += [markdown_table(header, rows), ""]

    reapplied = [(m, task) for m in models for task in tasks
                 if "input_metrics" in scores.get(m["name"], {}).get(task, {})]
    if reapplied:
        out += ["### Before and after re-applying a strategy to the fine-tuned model", "",
                "The input model is fine-tuned on the task, the strategy (e.g. INT8 quantization) is applied to "
                "that fine-tuned model, and both are scored on the test set.", ""]
        rows = []
        for m, task in reapplied:
            t, e = tasks[task], scores[m["name"]][task]
            before, after = e["input_metrics"][t["headline"]], e["metrics"][t["headline"]]
            rows.append([md_text(m["name"]), md_text(m["strategy"]), f"{md_text(t['title'])} {METRIC_TITLES[t['headline']]}",
                         format_stat(before, d), format_stat(after, d), f"{after['mean'] - before['mean']:+.{d}f}"])
        out += [markdown_table(["model", "strategy", "metric", "before", "after", "Δ"], rows, list("lllrrr")), ""]

    # Paired bootstrap differences.
    comparisons = results.get("comparisons") or []
    if comparisons:
        first = comparisons[0]
        out += ["## Differences", "",
                f"Headline metric of A minus B (seed means), with the {first['confidence']:.0%} interval of a paired "
                f"bootstrap over test examples ({first['resamples']} resamples; the same resample for both models "
                f"and every seed). **Bold**: the interval excludes 0, so the difference is distinguishable from "
                f"test-set noise; otherwise the two models are not told apart by this benchmark.", ""]
        rows = []
        for c in comparisons:
            t = tasks[c["task"]]
            cell = f"{c['difference']:+.{d}f} [{c['low']:+.{d}f}, {c['high']:+.{d}f}]"
            rows.append([md_text(t["title"]), md_text(c["a"]), md_text(c["b"]), c["relation"], f"**{cell}**" if c["distinguishable"] else cell,
                         "yes" if c["distinguishable"] else "no"])
        out += [markdown_table(["task", "A", "B", "pair", "A − B [95% interval]", "distinguishable"], rows,
                       list("lllllr")), ""]

    # Loyalty.
    if results["loyalty"]:
        out += ["## Loyalty", "",
                "Each cell: label loyalty / probability loyalty (for STS: regression loyalty), in [0, 1]; "
                "1 = the student predicts exactly what the reference predicts. Tagging tasks count words. "
                "Definitions in docs/evaluation.md.", ""]
        for (reference, relation), entries in _group_loyalty(results["loyalty"]).items():
            title = f"### Loyalty to {md_text(reference)}" + (" (teacher)" if relation == "teacher" else " (its input model)")
            students = list(dict.fromkeys(e["student"] for e in entries))
            rows = []
            for s in students:
                row = [md_text(s)]
                for task in tasks:
                    e = next((x for x in entries if x["student"] == s and x["task"] == task), None)
                    row.append(loyalty_cell(e, d + 1))
                rows.append(row)
            out += [title, "", markdown_table(["student"] + [md_text(t["title"]) for t in tasks.values()], rows), ""]

    # Efficiency.
    if results.get("efficiency"):
        from compresso.evaluation.efficiency import markdown_section

        out += markdown_section(results["efficiency"], models, env)

    # Data and settings.
    out += ["## Data", ""]
    rows = []
    for task, t in tasks.items():
        s = t["sizes"]
        rows.append([md_text(t["title"]), md_text(t["dataset"]), str(s["train"]), str(s["validation"]),
                     str(s["test"]), str(t["classes"] or _regression_range(t)),
                     "; ".join(md_text(n) for n in t["notes"]) or "–"])
    out += [markdown_table(["task", "dataset", "train", "validation", "test", "classes", "notes"], rows,
                   list("llrrrll")), ""]
    # the built-in tasks' files on one line; each custom task's files with what was read from them
    builtin = sorted({md_code(v) for t in tasks.values() if not t.get("columns_read") for v in t["sources"].values()
                      if v})
    if builtin:
        out += ["Files: " + ", ".join(builtin), ""]
    for t in tasks.values():
        if t.get("columns_read"):
            files = ", ".join(f"{split} {md_code(v)}" for split, v in t["sources"].items() if v)
            out += [f"- {md_text(t['title'])}: {files}; read: {md_text(t['columns_read'])}"]
    if any(t.get("columns_read") for t in tasks.values()):
        out.append("")

    out += ["## Fine-tuning", "",
            "AdamW, linear warm-up then linear decay, gradient clipping, best epoch on validation "
            "(headline metric); bf16 autocast on GPU; dynamic padding with length-grouped batches.", ""]
    rows = []
    for task, t in tasks.items():
        st = t.get("settings") or {}
        epochs = "; ".join(f"{md_text(m['name'])}: {', '.join(_epoch_cell(r) for r in scores[m['name']][task]['runs'])}"
                           for m in models if task in scores.get(m["name"], {}))
        rows.append([md_text(t["title"]), f"{st.get('lr', 0):g}", str(st.get("epochs", "")),
                     str(st.get("patience") or "–"), str(st.get("batch_size", "")),
                     str(st.get("max_length", "")), f"{st.get('warmup_ratio', 0):g}", epochs or "–"])
    out += [markdown_table(["task", "lr", "epochs (max)", "patience", "batch", "max length", "warm-up",
                    "best epoch / epochs run, per model and seed"], rows, list("lrrrrrrl")), ""]
    out += _settings_sources(tasks)
    sched = results.get("scheduler")
    if sched:
        tok = results.get("tokenisation") or {}
        out += [f"{sched['jobs']} fine-tuning jobs, {sched['workers']} at a time ({sched['mode']}, "
                f"{sched['threads_per_job']} thread(s) each), {sched.get('wall_seconds', 0):.0f} s; task data "
                f"tokenised {tok.get('encoded', 0)} time(s), reused {tok.get('reused', 0)} time(s).", ""]

    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(out)


def _settings_sources(tasks: dict) -> list[str]:
    """Where each task's settings came from: its defaults (and why), then every setting given
    elsewhere (evaluate.finetune, the task's own finetune, evaluate.per_task)."""
    lines = []
    for t in tasks.values():
        sources = t.get("settings_from")
        if not sources:
            continue
        settings = t.get("settings") or {}
        default = next((v for v in sources.values() if v.startswith("default")), "default")
        given: dict[str, list[str]] = {}
        for key, source in sources.items():
            if not source.startswith("default"):
                given.setdefault(source, []).append(f"{key} {settings.get(key)}")
        parts = [default.replace("default: ", "defaults: ") if default != "default" else "the task's defaults"]
        parts += [f"{', '.join(keys)} from {source}" for source, keys in given.items()]
        lines.append(f"- {md_text(t['title'])}: " + "; ".join(parts))
    return (["Where the settings come from (the more specific wins: defaults < evaluate.finetune < a custom "
             "task's own finetune < evaluate.per_task):", ""] + lines + [""]) if lines else []


def _epoch_cell(run: dict) -> str:
    if run.get("as_is"):
        return "as is"
    return f"{run['best_epoch']}/{run.get('epochs_run', run['best_epoch'])}"


def _metric_names(scores: dict, task: str, t: dict) -> list[str]:
    for per_task in scores.values():
        if task in per_task:
            names = list(per_task[task]["metrics"])
            return [n for n in t["metrics"]] + [n for n in names if n not in t["metrics"]]
    return list(t["metrics"])


def _group_loyalty(entries: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["reference"], e["relation"]), []).append(e)
    return groups


def loyalty_cell(e: dict | None, decimals: int) -> str:
    """label / probability loyalty, or regression loyalty, each mean ± std (``–`` when missing)."""
    if e is None:
        return "–"
    if "regression" in e:
        return format_stat(e["regression"], decimals)
    return f"{format_stat(e['label'], decimals)} / {format_stat(e['probability'], decimals)}"


# --- plots ---------------------------------------------------------------------------------------


def _save(fig, path: Path, dpi: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)


def _tick_label(title: str, metric: str, width: int) -> str:
    """A task's x label: its title wrapped at ``width`` characters (long words broken), the metric below."""
    import textwrap

    return "\n".join((textwrap.wrap(title, width, break_long_words=True) or [title])
                     + textwrap.wrap(f"({metric})", width, break_long_words=True))


MAX_PLOT_WIDTH = 30.0
"""Inches; a wider scores plot would not fit a screen or a page."""


def plot_scores(results: dict, path: Path, dpi: int) -> bool:
    import matplotlib.pyplot as plt

    fig = scores_figure(results)
    if fig is None:
        return False
    _save(fig, path, dpi)
    plt.close(fig)
    return True


def scores_figure(results: dict):
    """Grouped bars, one group per task (None when nothing was scored): the figure widens with
    tasks × models, long task titles wrap (and stand upright when many tasks share the axis), and the
    legend sits to the right of the axes, never over a bar."""
    import matplotlib.pyplot as plt

    tasks, models, scores = results["tasks"], results["models"], results["scores"]
    if not any(scores.get(m["name"]) for m in models):
        return None
    n_tasks, n_models = len(tasks), max(1, len(models))
    group = max(1.0, 0.5 + 0.3 * n_models)  # inches per task: room for its bars and its label
    fig_width = min(max(4.0, 2.0 + group * n_tasks), MAX_PLOT_WIDTH)
    group = (fig_width - 2.0) / n_tasks  # what each task really gets
    fig, ax = plt.subplots(figsize=(fig_width, 4.6))
    width = 0.8 / n_models
    x = np.arange(n_tasks)
    for i, m in enumerate(models):
        means, stds = [], []
        for task, t in tasks.items():
            stat = scores.get(m["name"], {}).get(task, {}).get("metrics", {}).get(t["headline"])
            means.append(stat["mean"] if stat else np.nan)
            stds.append(stat["std"] or 0.0 if stat else 0.0)
        ax.bar(x + (i - (n_models - 1) / 2) * width, means, width, yerr=stds if any(stds) else None,
               label=m["name"], capsize=2)
    # labels wrap to their group's width (~9 characters per inch at 8 pt); past the widest figure,
    # groups get narrow and the labels stand upright (a few lines of text are narrower than a group)
    tilt = fig_width >= MAX_PLOT_WIDTH
    wrap = 22 if tilt else max(10, int(group * 9))
    labels = [_tick_label(t["title"], METRIC_TITLES[t["headline"]], wrap) for t in tasks.values()]
    ax.set_xticks(x, labels, fontsize=8, rotation=90 if tilt else 0)
    ax.set_xlim(-0.6, n_tasks - 0.4)
    ax.set_ylabel("test score (0–100)")
    lowest = np.nanmin([b.get_height() for b in ax.patches] + [0.0])
    ax.set_ylim(min(0.0, lowest - 5), 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="model",
              title_fontsize=8)
    ax.set_title("Headline metric per task (mean ± std over seeds)" if len(results.get("seeds", [])) > 1
                 else "Headline metric per task", fontsize=10)
    return fig


def _pm(stat: dict) -> str:
    """A heat-map cell: mean ± std over seeds (a heat map has no error bars)."""
    return f"{stat['mean']:.3f}" + (f"±{stat['std']:.3f}" if stat.get("std") is not None else "")


def plot_loyalty(results: dict, path: Path, dpi: int) -> bool:
    import matplotlib.pyplot as plt

    groups = _group_loyalty(results["loyalty"])
    if not groups:
        return False
    tasks = results["tasks"]
    task_names = list(tasks)
    students_all = [list(dict.fromkeys(e["student"] for e in entries)) for entries in groups.values()]
    fig, axes = plt.subplots(1, len(groups), squeeze=False,
                             figsize=(1.2 + 1.5 * len(task_names) * len(groups),
                                      1.4 + 0.55 * max(len(s) for s in students_all)))
    shown = [e["regression" if "regression" in e else "probability"]["mean"] for es in groups.values() for e in es]
    vmin = max(0.0, np.floor((min(shown) - 0.02) * 20) / 20)  # colour range follows the data, in steps of 0.05
    image = None
    for ax, ((reference, relation), entries), students in zip(axes[0], groups.items(), students_all):
        grid = np.full((len(students), len(task_names)), np.nan)
        text = [["" for _ in task_names] for _ in students]
        for e in entries:
            r, c = students.index(e["student"]), task_names.index(e["task"])
            if "regression" in e:
                grid[r, c] = e["regression"]["mean"]
                text[r][c] = f"R {_pm(e['regression'])}"
            else:
                grid[r, c] = e["probability"]["mean"]
                text[r][c] = f"L {_pm(e['label'])}\nP {_pm(e['probability'])}"
        image = ax.imshow(grid, vmin=vmin, vmax=1.0, cmap="viridis", aspect="auto")
        for r in range(len(students)):
            for c in range(len(task_names)):
                if text[r][c]:
                    ax.text(c, r, text[r][c], ha="center", va="center", fontsize=7,
                            color="white" if grid[r, c] < vmin + 0.6 * (1 - vmin) else "black")
        ax.set_xticks(range(len(task_names)), [tasks[t]["title"] for t in task_names], fontsize=8)
        ax.set_yticks(range(len(students)), students, fontsize=8)
        ax.set_title(f"to {reference}" + (" (teacher)" if relation == "teacher" else " (input)"), fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8,
                 label="probability loyalty (STS: regression loyalty)")
    fig.suptitle("Loyalty of students (L label, P probability, R regression; mean ± std over seeds)",
                 fontsize=10, y=1.08)
    _save(fig, path, dpi)
    plt.close(fig)
    return True


def plot_efficiency(results: dict, path: Path, dpi: int) -> bool:
    import matplotlib.pyplot as plt

    eff = results.get("efficiency")
    if not eff:
        return False
    keys = [("parameters", "parameters"), ("size_fp32", "size\n(equal dtype)"), ("gpu_speedup", "GPU speed-up")]
    keys += [(f"cpu_speedup_b{b}", f"CPU speed-up\n(batch {b})") for b in eff["config"]["cpu_batch_sizes"]]
    names = [m["name"] for m in results["models"] if m["name"] in eff["models"]]
    keys = [(k, label) for k, label in keys if any(eff["models"][n]["ratios"].get(k) for n in names)]
    if not keys or len(names) < 2:
        return False
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(keys) * len(names) / 3, 3.8))
    width = 0.8 / len(names)
    x = np.arange(len(keys))
    for i, n in enumerate(names):
        vals = [eff["models"][n]["ratios"].get(k) or np.nan for k, _ in keys]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=n)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [label for _, label in keys], fontsize=8)
    ax.set_ylabel(f"ratio to {eff['reference']}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Size (model / reference) and speed-up (reference time / model time)")
    _save(fig, path, dpi)
    plt.close(fig)
    return True


def write_outputs(results: dict, cfg: ReportConfig, out_dir: Path) -> None:
    """Plots, results.json and report.md into ``out_dir``; records the file names in ``results``."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if cfg.plots:
        for name, fn in (("scores.png", plot_scores), ("loyalty.png", plot_loyalty),
                         ("efficiency.png", plot_efficiency)):
            if fn(results, out_dir / name, cfg.plot_dpi):
                plots.append(name)
    results["outputs"] = {"plots": plots}
    if "markdown" in cfg.formats:
        results["outputs"]["report"] = "report.md"
    if "json" in cfg.formats:
        results["outputs"]["results"] = "results.json"
        _atomic_write(out_dir / "results.json",
                      json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n")
    if "markdown" in cfg.formats:
        _atomic_write(out_dir / "report.md", markdown(results, cfg, plots))
