"""Model cards: a README.md in every stage folder, in the Hugging Face model-card format.

YAML metadata (base_model, teachers, datasets, metrics, library_name, tags, model-index with the
scores) followed by what a reader needs: where the model came from (lineage and recipe), how good
it is (scores, loyalty to its teachers, size and speed when measured) and how to load it. Written
with ``huggingface_hub``'s ``ModelCard``, so the hub and ``ModelCard.load`` read it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from compresso.evaluation.report import format_stat, loyalty_cell, markdown_table, md_code, md_fence, md_text

if TYPE_CHECKING:
    from compresso.engine import RunResult, StageOutcome
    from compresso.recipe import LoadedRecipe

TAGS = {"distill": ["knowledge-distillation"], "quantize": ["int8", "quantized"], "prune": ["pruned"],
        "task_distill": ["knowledge-distillation", "task-distillation"]}
# model-index metric types as the hub spells them
METRIC_TYPES = {"macro_f1": "f1", "f1_macro": "f1", "f1_micro": "f1", "accuracy": "accuracy",
                "pearson": "pearsonr", "spearman": "spearmanr"}
TASK_TYPES = {"tagging": "token-classification", "classification": "text-classification",
              "regression": "sentence-similarity"}


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not Path(ref).expanduser().exists() \
        and not ref.startswith((".", "/", "~"))


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> list[str]:
    """The report's Markdown table as card lines (text columns left, numbers right), a blank line after."""
    align = ["l" if i < numeric_from else "r" for i in range(len(header))]
    return markdown_table(header, rows, align).split("\n") + [""]


def _non_default_params(strategy: str, params: dict) -> dict:
    """The parameters that differ from the strategy's defaults (all of them when it is not installed)."""
    from compresso import registry

    try:
        fields = registry.get(strategy).Params.model_fields
    except Exception:
        return params
    out = {}
    for key, value in params.items():
        field = fields.get(key)
        default = None if field is None or field.is_required() else field.get_default(call_default_factory=True)
        if field is None or field.is_required() or _plain(default) != value:
            out[key] = value
    return out


def _plain(value):
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return value


def _load_snippet(folder_name: str, fmt: str, kind_of_head: str) -> list[str]:
    folder = repr(folder_name.replace("\\", "/"))  # a Python string literal, whatever the folder is called
    lines = ["## How to load", ""]
    if fmt == "transformers":
        lines += ["A `save_pretrained` folder: plain transformers loads it.", ""]
        lines += md_fence("\n".join([f"from transformers import AutoTokenizer, {kind_of_head}", "",
                                     f"tokenizer = AutoTokenizer.from_pretrained({folder})",
                                     f"model = {kind_of_head}.from_pretrained({folder})"]), "python")
        lines += ["", "or, with its lineage, through compresso:", ""]
    else:
        lines += [f"Saved in the {md_code(fmt)} format, which plain transformers cannot rebuild: load it with "
                  f"compresso (`pip install compresso`, with the extra the strategy needs).", ""]
    lines += md_fence("\n".join(["import compresso", "", f"bundle = compresso.load({folder})",
                                 "model, tokenizer = bundle.model, bundle.tokenizer"]), "python") + [""]
    return lines


def _task_block(config: dict):
    """The task head of a task model's config, or None."""
    from compresso.evaluation.task_model import TaskModelError, task_head

    try:
        return task_head(config)
    except TaskModelError:
        return None


def _pipeline_tag(task) -> str | None:
    if task is None:
        return None
    if task.head == "siamese":
        return "sentence-similarity"
    return "token-classification" if task.kind == "tagging" else "text-classification"


def _task_section(task, metrics: dict, folder: str, fmt: str) -> list[str]:
    """What the task model was trained for, on which data, how good it is on the test split, and
    how to serve it."""
    folder = folder.replace("\\", "/")
    lines = ["## Task", ""]
    kind = {"tagging": "tags each word", "classification": "classifies each text",
            "regression": "scores each sentence pair" if task.pair else "scores each text"}[task.kind]
    lines += [f"A task model: it {kind} for **{task.title}** (`{task.task}`, {task.kind}"
              + (f", {len(task.labels)} labels" if task.labels else "") + ")."]
    if task.kind == "tagging":
        lines += ["A word's label is the prediction at its first sub-token (the other sub-tokens are not "
                  "trained); a word cut off by the length limit gets none."]
    if task.kind == "regression":
        low, high = task.value_range
        if task.head == "siamese":
            lines += [f"Each sentence is encoded alone and mean-pooled; the score is the cosine of the two "
                      f"vectors, clipped at 0, times {high - low:g} plus {low:g} (scores {low:g}–{high:g})."]
        else:
            lines += [f"The pair is encoded as one sequence; the head's output y maps to the score "
                      f"{low:g} + y × {high - low:g} (scores {low:g}–{high:g})."]
    lines += [f"Inputs are truncated to {task.max_length} sub-tokens.", ""]
    if task.labels:
        shown = ", ".join(f"`{label}`" for label in task.labels[:40])
        lines += [f"Labels, in the head's order: {shown}" + (" ..." if len(task.labels) > 40 else "") + ".", ""]
    sizes = metrics.get("sizes") or {}
    sources = metrics.get("sources") or task.source.get("files") or {}
    if sizes or sources:
        rows = [[split, str(sizes.get(split, "–")), f"`{sources[split]}`" if split in sources else "–"]
                for split in ("train", "validation", "test")]
        lines += ["Data:", ""] + _table(["split", "examples", "file"], rows, numeric_from=1)
    for note in metrics.get("notes") or []:
        lines += [f"- {note}"]
    if metrics.get("notes"):
        lines += [""]
    test, validation = metrics.get("test") or {}, metrics.get("validation") or {}
    if test:
        from compresso.evaluation.tasks import METRIC_TITLES

        rows = [[METRIC_TITLES.get(k, k), f"{test[k]:.2f}", f"{validation[k]:.2f}" if k in validation else "–"]
                for k in test]
        seed = f", seed {metrics['seed']}" if "seed" in metrics else ""
        epoch = f", best epoch {metrics['best_epoch']} of {metrics['epochs_run']}" if "best_epoch" in metrics else ""
        lines += [f"Scores of this model as it is (0–100, one run{seed}{epoch}):", ""]
        lines += _table(["metric", "test", "validation"], rows)
    check = metrics.get("task_check")
    if check:
        from compresso.evaluation.tasks import METRIC_TITLES

        metric = check["metric"]
        lines += [f"INT8 against its fp32 input on {check['examples']} validation examples: "
                  f"{METRIC_TITLES.get(metric, metric)} {check['int8'][metric]:.2f} (fp32 "
                  f"{check['fp32'][metric]:.2f}).", ""]
    if fmt == "transformers" and task.head != "siamese":
        pipe = "token-classification" if task.kind == "tagging" else "text-classification"
        example = {"tagging": '"Ion Popescu locuiește în Cluj ."',
                   "classification": '{"text": "prima propoziție", "text_pair": "a doua"}' if task.pair
                   else '"Un text de clasificat."',
                   "regression": '{"text": "prima propoziție", "text_pair": "a doua"}' if task.pair
                   else '"Un text."'}[task.kind]
        extra = ", function_to_apply=\"none\"" if task.kind == "regression" else ""
        lines += ["Serve it with transformers' pipeline:", "", "```python", "from transformers import pipeline", "",
                  f'model = pipeline("{pipe}", model="{folder}")',
                  f"print(model({example}{extra}))", "```", ""]
    elif fmt == "transformers":
        lines += ["Serve it with sentence-transformers (the folder holds `modules.json` and `1_Pooling/`):", "",
                  "```python", "from sentence_transformers import SentenceTransformer", "",
                  f'model = SentenceTransformer("{folder}")',
                  'a, b = model.encode(["prima propoziție", "a doua propoziție"], convert_to_tensor=True)', "```", ""]
    return lines


def _teachers_section(metrics: dict) -> list[str]:
    """The teacher task models a task model was distilled from (``metrics["teachers"]`` as
    ``task_distill`` records it): weights, tokenizers, their own scores beside the student's, the
    teachers' ensemble, and the loss."""
    teachers = metrics.get("teachers")
    headline = metrics.get("headline")
    if not isinstance(teachers, dict) or not teachers or not headline:
        return []
    from compresso.evaluation.tasks import METRIC_TITLES

    title = METRIC_TITLES.get(headline, headline)
    lines = ["## Teachers", "", f"Distilled from {len(teachers)} fine-tuned teacher task model(s); {title} (0–100) "
                                "of each on this task's validation and test splits, beside this model's:", ""]
    rows = []
    for name, t in teachers.items():
        rows.append([f"`{name}`", f"`{t.get('model', '?')}`", f"{t.get('weight', 0):.2f}",
                     "same" if t.get("same_tokenizer") else "other",
                     f"{t['validation'][headline]:.2f}" if headline in (t.get("validation") or {}) else "–",
                     f"{t['test'][headline]:.2f}" if headline in (t.get("test") or {}) else "–"])
    ensemble = metrics.get("ensemble")
    if isinstance(ensemble, dict):
        rows.append([f"ensemble ({ensemble.get('mode')} mean)", "–", "1.00", "–",
                     f"{ensemble['validation'][headline]:.2f}" if headline in (ensemble.get("validation") or {}) else "–",
                     f"{ensemble['test'][headline]:.2f}" if headline in (ensemble.get("test") or {}) else "–"])
    rows.append(["this model", "–", "–", "–",
                 f"{metrics['validation'][headline]:.2f}" if headline in (metrics.get("validation") or {}) else "–",
                 f"{metrics['test'][headline]:.2f}" if headline in (metrics.get("test") or {}) else "–"])
    lines += _table(["teacher", "model", "weight", "tokenizer", "validation", "test"], rows, numeric_from=2)
    loss = metrics.get("loss") or {}
    if loss and metrics.get("kind") == "regression":
        lines += [f"Loss, per example: {loss.get('alpha_kd')} × squared error to the teachers' mean score + "
                  f"{loss.get('alpha_ce')} × squared error to the gold score (scores scaled to 0–1).", ""]
    elif loss:
        lines += [f"Loss, per {loss.get('per', 'example')}: {loss.get('alpha_kd')} × T² × KL(teachers' soft targets ‖ "
                  f"student) at T = {loss.get('temperature')} + {loss.get('alpha_ce')} × cross-entropy on gold labels"
                  + (f" + {loss.get('alpha_hidden')} × (1 − cos) of last hidden states" if loss.get("alpha_hidden")
                     else "") + ".", ""]
    return lines


def model_card(loaded: LoadedRecipe, outcome: StageOutcome, evaluation: dict | None):
    """The ``huggingface_hub.ModelCard`` of one stage folder."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from compresso import __version__

    recipe = loaded.recipe
    folder = Path(outcome.path)
    stage = json.loads((folder / "stage.json").read_text()) if (folder / "stage.json").is_file() else {}
    meta = json.loads((folder / "compresso.json").read_text()) if (folder / "compresso.json").is_file() else {}
    fmt = meta.get("format", stage.get("model", {}).get("format", "transformers"))
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    head = next((a for a in config.get("architectures") or [] if a.endswith("ForMaskedLM")), None)
    auto_class = "AutoModelForMaskedLM" if head else "AutoModel"
    task_model = _task_block(config)
    if task_model is not None:
        auto_class = "AutoModel" if task_model.head == "siamese" else \
            "AutoModelForTokenClassification" if task_model.kind == "tagging" else "AutoModelForSequenceClassification"

    start, _ = recipe.student_ref()
    # a stage's output as a teacher has no model id: it is named by the stage folder it comes from
    teachers = [{"name": t.name, "model": t.model} if t.model is not None
                else {"name": t.name, "stage": recipe.stage_dirname(recipe.teacher_stage(t))} for t in recipe.teachers]
    name = outcome.dirname
    scores = (evaluation or {}).get("scores", {}).get(name)
    tasks = (evaluation or {}).get("tasks", {})
    eval_results, metrics = [], set()
    for task, entry in (scores or {}).items():
        t = tasks.get(task, {})
        headline = t.get("headline")
        stat = entry["metrics"].get(headline) if headline else None
        if stat is None:
            continue
        metrics |= {METRIC_TYPES.get(m, m) for m in entry["metrics"]}
        eval_results.append(EvalResult(
            task_type=TASK_TYPES.get(t.get("kind"), "text-classification"), task_name=t.get("title", task),
            dataset_type=str(t.get("dataset", task)), dataset_name=f"{t.get('title', task)} ({t.get('dataset', task)})",
            dataset_split="test", metric_type=METRIC_TYPES.get(headline, headline),
            metric_name=headline.replace("_", " "), metric_value=round(stat["mean"], 2)))
    datasets = sorted({d["path"] for d in ((evaluation or {}).get("config") or {}).get("hub_datasets", {}).values()
                       if isinstance(d, dict) and d.get("path")}) if scores else []
    data = ModelCardData(
        model_name=f"{recipe.name}/{name}",
        library_name="transformers" if fmt == "transformers" else "compresso",
        base_model=start if _looks_like_hub_id(start) else None,
        tags=["compresso", outcome.strategy] + TAGS.get(outcome.strategy, []),
        pipeline_tag=_pipeline_tag(task_model),
        datasets=datasets or None,
        metrics=sorted(metrics) or None,
        eval_results=eval_results or None,
        teachers=teachers or None,
        compresso={"version": __version__, "recipe": recipe.name, "stage": name, "strategy": outcome.strategy,
                   "format": fmt},
    )

    # The recipe's words (name, models, titles) are user text: escaped for Markdown and HTML, or put
    # in code spans, so that a card read on the hub shows them and never runs or renders them.
    teacher_list = ", ".join(f"{md_text(t['name'])} ({md_code(t['model']) if 'model' in t else 'stage ' + md_code(t['stage'])})"
                             for t in teachers)
    body = [f"# {md_text(recipe.name)} · {md_text(name)}", "",
            f"Made by compresso {__version__}: stage {md_code(name)} (strategy {md_code(outcome.strategy)}) of the "
            f"recipe {md_text(recipe.name)}, starting from {md_code(start)}"
            + (f", with teacher(s) {teacher_list}" if teachers else "") + ".", ""]
    model = stage.get("model", {})
    facts = [f"format: {md_code(fmt)}"]
    if model.get("parameters"):
        facts.append(f"{model['parameters'] / 1e6:.2f} M parameters")
    if model.get("size_bytes"):
        facts.append(f"{model['size_bytes'] / 2**20:.1f} MiB of safetensors weights")
    if stage.get("seconds") is not None:
        facts.append(f"stage time {stage['seconds']:.0f} s")
    body += ["; ".join(facts) + ".", ""]

    lineage = meta.get("lineage") or []
    if lineage:
        body += ["## Lineage", ""]
        rows = []
        for rec in lineage:
            if "strategy" in rec:
                changed = _non_default_params(rec["strategy"], rec.get("params") or {})
                params = ", ".join(f"{k}={v}" for k, v in changed.items())
                rows.append([md_code(rec.get("stage", "?")), md_text(rec["strategy"]),
                             md_text(params) if params else "(defaults)"])
            else:
                rows.append(["start", "–", md_code(rec.get("source", rec))])
        body += ["Parameters that differ from the strategy's defaults (all of them: `stage.json`).", ""]
        body += _table(["stage", "strategy", "parameters"], rows, numeric_from=3)

    body += ["## Evaluation", ""]
    if scores:
        models_scored = [m["name"] for m in (evaluation or {}).get("models", [])
                         if m.get("role") == "teacher" and m["name"] in evaluation["scores"]]
        header = ["task", "metric", md_text(name)] + [f"{md_text(t)} (teacher)" for t in models_scored]
        rows = []
        for task, entry in scores.items():
            t = tasks.get(task, {})
            headline = t.get("headline")
            rows.append([md_text(t.get("title", task)), md_text(headline.replace("_", " ")) if headline else "–",
                         format_stat(entry["metrics"].get(headline))]
                        + [format_stat(evaluation["scores"][m].get(task, {}).get("metrics", {}).get(headline))
                           for m in models_scored])
        as_is = [tasks.get(t, {}).get("title", t) for t, entry in scores.items()
                 if entry.get("runs") and entry["runs"][0].get("as_is")]
        how = "after fine-tuning on each task" if not as_is else \
            f"this task model scored as it is on {', '.join(as_is)}" + \
            (", after fine-tuning on the others" if len(as_is) < len(scores) else "")
        body += [f"Test-set scores (0–100), {how}; "
                 f"{len((evaluation or {}).get('seeds', [])) or 1} seed(s).", ""] + _table(header, rows, numeric_from=2)
        loyal = [e for e in (evaluation or {}).get("loyalty", []) if e["student"] == name]
        if loyal:
            rows = []
            for e in loyal:
                rows.append([md_text(tasks.get(e["task"], {}).get("title", e["task"])), md_text(e["reference"]),
                             loyalty_cell(e, 3)])
            body += ["Loyalty (1 = predicts exactly what the reference predicts; label / probability loyalty, "
                     "or regression loyalty):", ""] + _table(["task", "reference", "loyalty"], rows, numeric_from=2)
        eff = ((evaluation or {}).get("efficiency") or {}).get("models", {}).get(name)
        if eff:
            ref = evaluation["efficiency"]["reference"]
            parts = []
            r, suspect = eff.get("ratios", {}), eff.get("suspect", {})
            if r.get("size_fp32"):
                parts.append(f"size at equal dtype {r['size_fp32']:.2f}× {md_text(ref)}"
                             + (" (suspect)" if "size_fp32" in suspect else ""))
            for key, value in r.items():
                if key.startswith("cpu_speedup_b"):
                    parts.append(f"CPU speed-up {value:.2f}× at batch {key.removeprefix('cpu_speedup_b')}"
                                 + (f" (suspect: {suspect[key]})" if key in suspect else ""))
            if r.get("gpu_speedup"):
                parts.append(f"GPU speed-up {r['gpu_speedup']:.2f}×" + (" (suspect)" if "gpu_speedup" in suspect
                                                                          else ""))
            if parts:
                body += ["Size and speed: " + "; ".join(parts) + ". Details in the run's `evaluation/report.md`.",
                         ""]
    else:
        body += ["Not evaluated in this run (the recipe's `evaluate:` section did not include this stage, or "
                 "evaluation was skipped). `compresso evaluate` scores it.", ""]

    if task_model is not None:
        body += _task_section(task_model, stage.get("metrics") or {}, str(folder), fmt)
        body += _teachers_section(stage.get("metrics") or {})
    body += _load_snippet(str(folder), fmt, auto_class)
    recipe_yaml = yaml.safe_dump(loaded.raw, sort_keys=False, allow_unicode=True).strip()
    # The fence is longer than any run of backticks in the YAML, so no line of the recipe closes it.
    body += ["## Recipe", "", f"The resolved recipe ({md_code(loaded.path)}):", ""] + md_fence(recipe_yaml, "yaml") + [""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(loaded: LoadedRecipe, outcome: StageOutcome, evaluation: dict | None) -> Path:
    """Write README.md into the stage folder (via a temporary file)."""
    path = Path(outcome.path) / "README.md"
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text(str(model_card(loaded, outcome, evaluation)), encoding="utf-8")
    tmp.replace(path)
    return path


def write_run_cards(loaded: LoadedRecipe, result: RunResult) -> list[Path]:
    """A model card in every stage folder of a finished run, with the run's evaluation."""
    return [write_model_card(loaded, o, result.evaluation) for o in result.stages if Path(o.path).is_dir()]
