"""``task_distill``: train a student on a task from one or several fine-tuned teachers.

The teachers are task models (``finetune`` stages, or folders with a task block); their
predictions on the task's training text (and on unlabelled text, when given) are computed once
and cached, then the student is trained with evaluation's own fine-tuning loop (optimiser groups,
schedule, early stopping on validation in the task's metric) under the distillation loss of
``losses.py``. Each model reads the text through its own tokenizer; predictions line up by
example and word index (docs/architecture.md, "Task distillation").
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from compresso.corpus import CorpusError, check_corpus, iter_documents
from compresso.strategies.task_distill.losses import (
    ensemble_probs,
    ensemble_values,
    gold_cross_entropy,
    hidden_cosine,
    masked_mse,
    soft_target_kl,
    soften,
)
from compresso.strategies.task_distill.params import TaskDistillParams
from compresso.strategy import CompressionStrategy, ModelBundle, RunContext, StrategyError

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_WORDS = re.compile(r"\w+|[^\w\s]")  # a corpus line's words for tagging: runs of letters/digits, punctuation alone


@dataclass
class Teacher:
    """One loaded teacher task model."""

    name: str
    reference: str
    model: torch.nn.Module
    tokenizer: object
    head: object  # compresso.evaluation.task_model.TaskHead
    weight: float


def stage_label(ctx: RunContext) -> str:
    """The stage's folder name, for messages (the engine builds it in ``.tmp-<name>``)."""
    return ctx.stage_dir.name.removeprefix(".tmp-")


def check_teachers(stage: str, spec, labels: list[str] | None, heads: dict[str, object]) -> dict[str, object]:
    """Refuse teachers that do not fit the task or each other: no task model, another task, another
    kind (a regression teacher for a classification task), another label set, another head. The
    message names the stage, the teacher and the labels. Returns each teacher's output column of
    every task label (None for regression)."""
    from compresso.evaluation.task_model import TaskModelError, check_head

    columns = {}
    for name, head in heads.items():
        who = f"stage {stage}, teacher {name!r}"
        try:
            columns[name] = check_head(head, spec, labels, who)
        except TaskModelError as exc:
            theirs = f"its labels: {', '.join(head.labels)}" if head is not None and head.labels else None
            ours = f"the task's: {', '.join(labels)}" if labels else None
            extra = "; ".join(x for x in (theirs, ours) if x)
            raise StrategyError(f"{exc}" + (f" ({extra})" if extra and "lacks" not in str(exc) else "")) from None
        extra_labels = [x for x in head.labels or [] if x not in (labels or [])]
        if extra_labels:
            raise StrategyError(f"stage {stage}, teacher {name!r} has label(s) {', '.join(map(repr, extra_labels))} "
                                f"that {spec.title} has not (its labels: {', '.join(head.labels)}; the task's: "
                                f"{', '.join(labels)}); teachers and task need one label set")
    first = next(iter(heads))
    for name, head in heads.items():
        if head.head != heads[first].head:
            raise StrategyError(f"stage {stage}: teachers {first!r} and {name!r} have different heads "
                                f"({heads[first].head} and {head.head}); the student takes one")
    return columns


def _on_device(index: np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch's row index on the device, copied the way evaluation copies its batches (pinned,
    asynchronous on a GPU), so that the training step does not wait for the host."""
    tensor = torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def _fingerprint(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TaskDistillStrategy(CompressionStrategy):
    name = "task_distill"
    summary = "train a task model from fine-tuned teacher task models (soft targets per example or per word)"
    Params = TaskDistillParams
    accepts_formats = frozenset({"transformers"})

    params: TaskDistillParams

    # --- data --------------------------------------------------------------------------------
    def _task_data(self, ctx: RunContext):
        from compresso.evaluation.data import DataError
        from compresso.evaluation.task_model import read_task_data

        try:
            cfg = self.params.data_config()
            return cfg, read_task_data(cfg)
        except (DataError, ValueError) as exc:
            raise StrategyError(f"stage {stage_label(ctx)}: {exc}") from None

    def _corpus_files(self, ctx: RunContext) -> list[Path]:
        return [ctx.resolve_path(f) for f in self.params.unlabelled_corpus]

    def preflight(self, ctx: RunContext) -> None:
        stage = stage_label(ctx)
        unknown = [t for t in self.params.teachers if t not in ctx.teachers]
        if unknown:
            raise StrategyError(f"stage {stage}: teacher {unknown[0]!r} is not a teacher of the recipe "
                                f"({', '.join(ctx.teachers) or 'none'}) nor an earlier stage")
        _, data = self._task_data(ctx)
        if self.params.unlabelled_corpus:
            if data.train[0].text_pair is not None:
                raise StrategyError(f"stage {stage}: unlabelled_corpus gives single texts, task {data.spec.name!r} "
                                    f"takes sentence pairs; use unlabelled_task_text instead")
            try:
                for warning in check_corpus(self._corpus_files(ctx)):
                    ctx.log(f"[yellow]task_distill: {warning}[/yellow]")
            except CorpusError as exc:
                raise StrategyError(f"stage {stage}: unlabelled_corpus: {exc}") from None
        # teachers that exist already (a recipe teacher, a stage from an earlier run) are checked now
        from compresso.evaluation.task_model import task_head

        heads = {}
        for name in self.params.teachers:
            folder = Path(str(ctx.teachers[name].model)).expanduser()
            if (folder / "config.json").is_file():
                heads[name] = task_head(folder)
        if heads:
            check_teachers(stage, data.spec, data.labels, heads)

    # --- setup -------------------------------------------------------------------------------
    def _teachers(self, ctx: RunContext, data) -> tuple[list[Teacher], dict]:
        from compresso.evaluation.task_model import load_task_model, task_head

        stage = stage_label(ctx)
        weights = self.params.weights()
        heads, refs = {}, {}
        for name in self.params.teachers:
            if name not in ctx.teachers:
                raise StrategyError(f"stage {stage}: teacher {name!r} is not a teacher of the recipe "
                                    f"({', '.join(ctx.teachers) or 'none'}) nor an earlier stage")
            refs[name] = str(ctx.teachers[name].model)
            heads[name] = task_head(refs[name])
        columns = check_teachers(stage, data.spec, data.labels, heads)
        out = []
        for name in self.params.teachers:
            model, tokenizer, head = load_task_model(refs[name], torch.device("cpu"))
            out.append(Teacher(name, refs[name], model, tokenizer, head, weights[name]))
        return out, columns

    def _training_examples(self, data, ctx: RunContext) -> tuple[list, np.ndarray, dict]:
        """(examples, has_gold, counts): the labelled training examples, then the unlabelled ones
        (the task's own text beyond ``labelled_examples``, then corpus lines)."""
        from compresso.evaluation.data import Example, fixed_subset

        p = self.params
        labelled = fixed_subset(data.train, p.labelled_examples)
        kept = {id(ex) for ex in labelled}
        unlabelled = [ex for ex in data.train if id(ex) not in kept] if p.unlabelled_task_text else []
        placeholder = data.labels[0] if data.labels else 0.0
        corpus = []
        if p.unlabelled_corpus:
            try:
                for text in iter_documents(self._corpus_files(ctx), max_documents=p.max_unlabelled):
                    if data.spec.kind == "tagging":
                        words = _WORDS.findall(text)[:p.max_unlabelled_words]
                        if words:
                            corpus.append(Example(words, [placeholder] * len(words)))
                    else:
                        corpus.append(Example(text, placeholder))
            except CorpusError as exc:
                raise StrategyError(f"stage {stage_label(ctx)}: unlabelled_corpus: {exc}") from None
        # the unlabelled examples keep their text only: their labels are never read
        task_text = [Example(ex.text, ([placeholder] * len(ex.text) if data.spec.kind == "tagging" else placeholder),
                             ex.text_pair, ex.id) for ex in unlabelled]
        examples = list(labelled) + task_text + corpus
        has_gold = np.zeros(len(examples), dtype=bool)
        has_gold[:len(labelled)] = True
        counts = {"labelled": len(labelled), "unlabelled_task_text": len(task_text), "unlabelled_corpus": len(corpus)}
        return examples, has_gold, counts

    # --- the run -----------------------------------------------------------------------------
    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        from compresso.engine import model_fingerprint
        from compresso.evaluation import scoring
        from compresso.evaluation.features import encode, tokenizer_fingerprint
        from compresso.evaluation.finetune import finetune, predict
        from compresso.evaluation.task_model import attach_head, head_for, load_for_task, pad_id, usable_max_length

        p = self.params
        stage = stage_label(ctx)
        device = ctx.device
        if bundle.tokenizer is None or not getattr(bundle.tokenizer, "is_fast", False):
            raise StrategyError(f"stage {stage}: the input model needs a fast (Rust) tokenizer beside it")
        cfg, data = self._task_data(ctx)
        spec = data.spec
        teachers, columns = self._teachers(ctx, data)
        head0 = teachers[0].head
        settings = replace(spec.defaults.with_overrides(p.overrides()), head=head0.head)
        siamese = head0.head == "siamese"
        seed = ctx.seed if p.seed is None else p.seed
        torch.manual_seed(seed)  # the new head's initialisation
        student = load_for_task(bundle, spec, data.labels, head0.head).model
        max_length = usable_max_length(student, bundle.tokenizer, settings.max_length)
        pad = pad_id(bundle.tokenizer)
        label_index = {x: i for i, x in enumerate(data.labels)} if data.labels else None

        examples, has_gold, counts = self._training_examples(data, ctx)
        splits = {"train": examples, "validation": data.validation, "test": data.test}
        student_enc = {name: encode(spec, split, bundle.tokenizer, max_length, label_index, pairs_apart=siamese)
                       for name, split in splits.items()}
        ctx.log(f"task distillation on {spec.title}: {counts['labelled']} labelled training examples"
                + (f", {counts['unlabelled_task_text']} of the task's own without labels" if counts[
                    "unlabelled_task_text"] else "")
                + (f", {counts['unlabelled_corpus']} corpus lines" if counts["unlabelled_corpus"] else "")
                + (f"; teachers {', '.join(f'{t.name} ({t.weight:.2f})' for t in teachers)}, {p.ensemble} ensemble"
                   if len(teachers) > 1 else f"; teacher {teachers[0].name}"))

        # Teachers' predictions, once (cached in work_dir, so a resumed stage does not redo them).
        identity = {"params": p.model_dump(mode="json"), "seed": seed, "lineage": bundle.lineage,
                    "teachers": {t.name: model_fingerprint(t.reference, None) for t in teachers},
                    "max_length": max_length}
        run_id = _fingerprint(identity)
        preds, coverage = self._teacher_predictions(teachers, columns, data, splits, ctx, run_id)

        # Soft targets on the training rows; the ensemble at T = 1 scored on validation and test.
        targets = self._targets(spec, data, teachers, preds, coverage, student_enc["train"], examples, has_gold,
                                label_index)
        metrics = {"task": spec.name, "teachers": {}, "examples": counts}
        for t in teachers:
            metrics["teachers"][t.name] = {
                "model": t.reference, "weight": round(t.weight, 6),
                "same_tokenizer": tokenizer_fingerprint(t.tokenizer) == tokenizer_fingerprint(bundle.tokenizer),
                **{split: scoring.score(spec, getattr(data, split), data.labels, preds[t.name][split])
                   for split in ("validation", "test")}}
        if len(teachers) > 1:
            metrics["ensemble"] = {"mode": p.ensemble, **{
                split: scoring.score(spec, getattr(data, split), data.labels,
                                     self._ensemble_prediction(spec, teachers, preds, coverage, split, data))
                for split in ("validation", "test")}}

        hidden_teachers, hidden_notes = self._hidden_teachers(teachers, student, bundle.tokenizer, siamese, stage,
                                                              max_length)
        metrics["hidden_loss"] = hidden_notes
        forward = self._forward(student, hidden_teachers)
        loss_fn = self._loss(spec, targets, hidden_teachers, device)

        # Training: evaluation's loop, with this loss, checkpointed every epoch.
        # (named by the run's settings: a checkpoint of other settings is never resumed)
        checkpoint = Path(ctx.work_dir) / f"checkpoint-{run_id}.pt"
        resumed = None
        if checkpoint.is_file():
            resumed = len(torch.load(checkpoint, map_location="cpu", weights_only=True)["history"])
            ctx.log(f"resuming from the checkpoint after epoch {resumed} ({checkpoint})")
        headline = spec.headline
        with ctx.progress() as progress:
            bar = progress.add_task(f"task distillation · {spec.title}", total=settings.epochs,
                                    completed=resumed or 0)

            def on_epoch(epoch, epochs, score):
                progress.update(bar, completed=epoch, description=f"task distillation · {spec.title} · "
                                                                  f"validation {headline} {score:.2f}")
            for t in hidden_teachers:
                t.model.to(device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
            outcome = finetune(
                student, spec, settings, student_enc["train"], student_enc["validation"],
                lambda pred: scoring.score(spec, data.validation, data.labels, pred)[headline],
                device, seed, pad, data.label_prior, on_epoch=on_epoch, checkpoint=checkpoint, loss_fn=loss_fn,
                forward=forward)
        for t in hidden_teachers:
            t.model.to("cpu")
        scores = {split: scoring.score(spec, getattr(data, split), data.labels,
                                       predict(student, student_enc[split], spec, device, settings.eval_batch_size,
                                               pad, data.label_prior))
                  for split in ("validation", "test")}
        student.to("cpu").eval()
        # the keys `finetune` records (cards and evaluation read them alike), then the distillation's own
        metrics.update({
            "title": spec.title, "kind": spec.kind, "headline": headline, "labels": data.labels,
            "test": scores["test"], "validation": scores["validation"],
            "best_epoch": outcome.best_epoch, "epochs_run": len(outcome.history),
            "stopped_early": outcome.stopped_early, "history": outcome.history,
            "train_seconds": round(outcome.seconds, 2), "seed": seed,
            "sizes": {"train": counts["labelled"], "validation": len(data.validation), "test": len(data.test)},
            "sources": dict(data.sources), "notes": list(data.notes),
            "settings": asdict(settings) | {"max_length": max_length},
            "loss": {"temperature": p.temperature, "alpha_kd": p.alpha_kd, "alpha_ce": p.alpha_ce,
                     "alpha_hidden": p.alpha_hidden, "ensemble": p.ensemble,
                     "per": {"tagging": "word", "classification": "example", "regression": "example"}[spec.kind]},
        })
        if student_enc["test"].missing_words:
            metrics["test_words_without_token"] = student_enc["test"].missing_words
        ctx.metrics.update(metrics)
        ctx.log(f"{spec.title}: student {headline} {metrics['test'][headline]:.2f} on test (validation "
                f"{metrics['validation'][headline]:.2f}, best epoch {outcome.best_epoch}); teachers "
                + ", ".join(f"{n} {m['test'][headline]:.2f}" for n, m in metrics["teachers"].items())
                + (f", ensemble {metrics['ensemble']['test'][headline]:.2f}" if "ensemble" in metrics else ""))

        # the task block of a model trained on this data with these settings (the engine saves it)
        head = head_for(data, settings, max_length, cfg)
        return ModelBundle(attach_head(student, head), bundle.tokenizer, list(bundle.lineage))

    # --- pieces ------------------------------------------------------------------------------
    def _teacher_predictions(self, teachers: list[Teacher], columns: dict, data, splits: dict, ctx: RunContext,
                             run_id: str):
        """Every teacher's predictions on every split (its own tokenizer and max_length), and for
        tagging which words it saw (a word its tokenizer truncated away carries no target)."""
        from compresso.evaluation.finetune import Predictions, SiameseRegressor
        from compresso.evaluation.task_model import encode_for, predict_examples

        spec = data.spec
        device = ctx.device
        folder = Path(ctx.work_dir) / "teacher_predictions"
        folder.mkdir(parents=True, exist_ok=True)
        preds: dict[str, dict] = {}
        coverage: dict[str, dict] = {}
        for t in teachers:
            preds[t.name], coverage[t.name] = {}, {}
            order = columns[t.name]  # the teacher's output column of each task label
            # an INT8 teacher runs on the CPU whatever the stage's device
            inner = t.model.encoder if isinstance(t.model, SiameseRegressor) else t.model
            here = torch.device("cpu") if getattr(inner, "runs_on_cpu_only", False) else device
            moved = False
            for split, examples in splits.items():
                path = folder / f"{t.name}-{split}-{run_id}.npz"
                if path.is_file():
                    with np.load(path, allow_pickle=False) as z:
                        arrays = {k: z[k] for k in z.files}
                else:
                    if not moved and here != torch.device("cpu"):
                        t.model.to(here)
                        moved = True
                    # its own tokenizer and the max_length it was trained with
                    enc = encode_for(t.head, t.tokenizer, examples)
                    ctx.log(f"teacher {t.name}: predicting {len(examples)} {split} examples")
                    pred = predict_examples(t.model, t.tokenizer, t.head, examples, here, encoded=enc)
                    arrays = {}
                    if pred.probs is not None:
                        arrays["probs"] = pred.probs[:, order].astype(np.float32)
                    if pred.values is not None:
                        arrays["values"] = pred.values
                    if pred.offsets is not None:
                        arrays["offsets"] = pred.offsets
                        arrays["seen"] = np.concatenate([pos >= 0 for pos in enc.word_pos]) if enc.word_pos \
                            else np.zeros(0, dtype=bool)
                    tmp = path.with_name(path.name + ".partial.npz")
                    np.savez(tmp, **arrays)
                    tmp.replace(path)
                probs = arrays.get("probs")
                preds[t.name][split] = Predictions(spec.kind, probs.astype(np.float64) if probs is not None else None,
                                                   arrays.get("values"), arrays.get("offsets"))
                coverage[t.name][split] = arrays.get("seen")
            if moved:
                t.model.to("cpu")
        return preds, coverage

    def _ensemble_prediction(self, spec, teachers, preds, coverage, split: str, data):
        """The teachers' ensemble (at T = 1) as a prediction of its own, for scoring."""
        from compresso.evaluation.finetune import Predictions

        weights = [t.weight for t in teachers]
        if spec.kind == "regression":
            return Predictions("regression", values=ensemble_values([preds[t.name][split].values for t in teachers],
                                                                    weights))
        cover = [coverage[t.name][split] for t in teachers] if spec.kind == "tagging" else None
        probs, seen = ensemble_probs([preds[t.name][split].probs for t in teachers], weights, self.params.ensemble,
                                     cover)
        if spec.kind == "tagging":
            probs[~seen] = data.label_prior  # as evaluation does for a word no model saw
        return Predictions(spec.kind, probs=probs, offsets=preds[teachers[0].name][split].offsets)

    def _targets(self, spec, data, teachers, preds, coverage, enc, examples, has_gold, label_index) -> dict:
        """Training targets as arrays indexed by training row (example, or word for tagging)."""
        p = self.params
        weights = [t.weight for t in teachers]
        if spec.kind == "regression":
            low, high = spec.value_range
            teacher = (ensemble_values([preds[t.name]["train"].values for t in teachers], weights) - low) / (high - low)
            gold = (np.array([float(ex.label) for ex in examples]) - low) / (high - low)
            return {"teacher": teacher, "gold": gold, "has_gold": has_gold}
        cover = [coverage[t.name]["train"] for t in teachers] if spec.kind == "tagging" else None
        soft, seen = ensemble_probs([soften(preds[t.name]["train"].probs, p.temperature) for t in teachers],
                                    weights, p.ensemble, cover)
        if spec.kind == "classification":
            gold = np.array([label_index[ex.label] for ex in examples], dtype=np.int64)
            gold[~has_gold] = -100
            return {"soft": soft, "seen": seen, "gold": gold}
        # tagging: one row per word of every example, in order; the student's words are gathered by row
        offsets = np.concatenate([[0], np.cumsum([len(ex.text) for ex in examples])]).astype(np.int64)
        gold = np.full(int(offsets[-1]), -100, dtype=np.int64)
        for i, ex in enumerate(examples):
            if has_gold[i]:
                gold[offsets[i]:offsets[i + 1]] = [label_index[x] for x in ex.label]
        student_rows = [offsets[i] + np.flatnonzero(pos >= 0) for i, pos in enumerate(enc.word_pos)]
        return {"soft": soft, "seen": seen, "gold": gold, "student_rows": student_rows}

    def _hidden_teachers(self, teachers, student, tokenizer, siamese: bool, stage: str, max_length: int):
        """The teachers the hidden-state loss can use, and for each teacher what was decided and why."""
        from compresso.evaluation.features import tokenizer_fingerprint

        p = self.params
        notes, usable = {}, []
        if p.alpha_hidden == 0:
            return [], {t.name: "off (alpha_hidden is 0)" for t in teachers}
        if siamese:
            raise StrategyError(f"stage {stage}: alpha_hidden is not available with the siamese head (the student is "
                                f"trained on the cosine of mean-pooled states); set alpha_hidden: 0")
        s_width = student.config.hidden_size
        mine = tokenizer_fingerprint(tokenizer)
        for t in teachers:
            config = getattr(t.model, "config", None)
            t_width = getattr(config, "hidden_size", None)
            positions = getattr(config, "max_position_embeddings", None)
            if getattr(t.model, "runs_on_cpu_only", False) or config is None:
                notes[t.name] = "skipped: an INT8 or exported model gives no hidden states"
            elif tokenizer_fingerprint(t.tokenizer) != mine:
                notes[t.name] = "skipped: its tokenizer differs from the student's, so their tokens do not line up"
            elif t_width != s_width:
                notes[t.name] = f"skipped: hidden size {t_width}, the student's is {s_width}"
            elif positions is not None and positions < max_length:
                notes[t.name] = f"skipped: it takes {positions} positions, the student's sequences {max_length}"
            else:
                notes[t.name] = "used"
                usable.append(t)
        if not usable:
            raise StrategyError(f"stage {stage}: alpha_hidden > 0 but no teacher shares the student's tokenizer and "
                                f"hidden size ({'; '.join(f'{n}: {r}' for n, r in notes.items())}); set alpha_hidden: 0")
        return usable, notes

    @staticmethod
    def _forward(student, hidden_teachers: list[Teacher]):
        """What the training loop calls: the logits, and the last hidden states when a hidden-state
        loss needs them."""
        from compresso.evaluation.finetune import make_forward

        if not hidden_teachers:
            return make_forward(student)

        def forward(batch):
            out = student(**{k: batch[k] for k in _INPUTS if k in batch}, output_hidden_states=True)
            return out.logits, out.hidden_states[-1]
        return forward

    def _loss(self, spec, targets: dict, hidden_teachers: list[Teacher], device: torch.device):
        """``loss_fn(batch, output, idx)`` for evaluation's fine-tuning loop."""
        p = self.params
        on = {k: torch.as_tensor(v).to(device) for k, v in targets.items() if k != "student_rows"}
        inputs = _INPUTS

        def hidden_loss(batch, hidden):
            total = 0.0
            for t in hidden_teachers:
                with torch.no_grad():
                    t_out = t.model(**{k: batch[k] for k in inputs if k in batch}, output_hidden_states=True)
                total = total + t.weight * hidden_cosine(hidden, t_out.hidden_states[-1], batch["attention_mask"])
            return total / sum(t.weight for t in hidden_teachers)

        def loss_fn(batch, output, idx):
            logits, hidden = output if hidden_teachers else (output, None)
            logits = logits.float()
            rows_idx = _on_device(idx, device)
            if spec.kind == "regression":
                pred = logits.reshape(len(idx), -1)[:, 0]
                loss = p.alpha_kd * masked_mse(pred, on["teacher"][rows_idx])
                loss = loss + p.alpha_ce * masked_mse(pred, on["gold"][rows_idx], on["has_gold"][rows_idx])
            else:
                if spec.kind == "tagging":
                    flat = logits.reshape(-1, logits.shape[-1]).index_select(0, batch["word_index"])
                    rows = _on_device(np.concatenate([targets["student_rows"][i] for i in idx]), device)
                else:
                    flat, rows = logits, rows_idx
                loss = p.alpha_kd * soft_target_kl(flat, on["soft"][rows], p.temperature, on["seen"][rows])
                loss = loss + p.alpha_ce * gold_cross_entropy(flat, on["gold"][rows])
            if hidden is not None:
                loss = loss + p.alpha_hidden * hidden_loss(batch, hidden)
            return loss

        return loss_fn


__all__ = ["TaskDistillStrategy", "TaskDistillParams", "check_teachers"]
