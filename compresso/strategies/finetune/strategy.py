"""The ``finetune`` strategy: fine-tune the input model on one task and output the task model."""

from __future__ import annotations

from dataclasses import asdict

import torch

from compresso.strategies.finetune.params import FinetuneParams
from compresso.strategy import CompressionStrategy, ModelBundle, RunContext, StrategyError

CHECKPOINT = "finetune.pt"


def _task_data(params: FinetuneParams):
    """(config, data, settings) of the stage's task, or a ``StrategyError`` naming the file."""
    from compresso.evaluation.data import DataError
    from compresso.evaluation.runner import EvaluationError, _settings
    from compresso.evaluation.task_model import read_task_data

    cfg = params.data_config()
    try:
        data = read_task_data(cfg)
        settings = _settings(cfg, data)
    except (DataError, EvaluationError) as exc:
        raise StrategyError(f"finetune on {params.task_name}: {exc}") from None
    return cfg, data, settings


class FinetuneStrategy(CompressionStrategy):
    name = "finetune"
    summary = "fine-tune on a task (built-in or your own files) and output a task model transformers serves"
    Params = FinetuneParams
    accepts_formats = frozenset({"transformers"})
    params: FinetuneParams

    def preflight(self, ctx: RunContext) -> None:
        if ctx.world_size > 1:
            raise StrategyError("finetune runs in one process: start this recipe without torchrun")
        _task_data(self.params)  # the task's files are read now (seconds), not after earlier stages

    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        from compresso.evaluation import scoring
        from compresso.evaluation.finetune import predict
        from compresso.evaluation.task_model import attach_head, pad_id, train_task_model

        p = self.params
        cfg, data, settings = _task_data(p)
        spec = data.spec
        seed = p.seed if p.seed is not None else ctx.seed
        sizes = data.sizes()
        ctx.log(f"fine-tuning on {spec.title} ({spec.kind}"
                + (f", {len(data.labels)} labels" if data.labels else "") + f"): {sizes['train']} training, "
                f"{sizes['validation']} validation, {sizes['test']} test examples; lr {settings.lr:g}, "
                f"{settings.epochs} epochs, batch {settings.batch_size}, seed {seed}, {ctx.device}")
        for note in data.notes:
            ctx.log(f"[dim]{spec.title}: {note}[/dim]")
        checkpoint = ctx.work_dir / CHECKPOINT
        if checkpoint.is_file():
            ctx.log(f"resuming from the last finished epoch ({checkpoint})")
        with ctx.progress() as progress:
            bar = progress.add_task(f"fine-tuning on {spec.title}", total=settings.epochs)

            def on_epoch(epoch: int, epochs: int, score: float) -> None:
                progress.update(bar, completed=epoch,
                                description=f"fine-tuning on {spec.title} · validation {spec.headline} {score:.2f}")

            trained = train_task_model(bundle, data, settings, ctx.device, seed, on_epoch, checkpoint=checkpoint)
        model, tokenizer = trained.bundle.model, trained.bundle.tokenizer
        head = trained.head(data, settings, cfg)
        prior = data.label_prior
        scores = {}
        for split in ("validation", "test"):
            pred = predict(model, trained.encoded[split], spec, ctx.device, settings.eval_batch_size,
                           pad_id(tokenizer), prior)
            scores[split] = scoring.score(spec, getattr(data, split), data.labels, pred)
        outcome = trained.outcome
        ctx.metrics.update({
            "task": spec.name, "title": spec.title, "kind": spec.kind, "headline": spec.headline,
            "labels": data.labels, "test": scores["test"], "validation": scores["validation"],
            "best_epoch": outcome.best_epoch, "epochs_run": len(outcome.history),
            "stopped_early": outcome.stopped_early, "history": outcome.history,
            "train_seconds": round(outcome.seconds, 2), "seed": seed, "sizes": sizes,
            "sources": dict(data.sources), "notes": list(data.notes),
            "settings": asdict(settings) | {"max_length": trained.max_length},
        })
        if trained.encoded["test"].missing_words:
            ctx.metrics["test_words_without_token"] = trained.encoded["test"].missing_words
        ctx.log(f"{spec.title}: test {spec.headline} {scores['test'][spec.headline]:.2f}, validation "
                f"{scores['validation'][spec.headline]:.2f} (best epoch {outcome.best_epoch} of "
                f"{len(outcome.history)})")
        # the task model leaves on the CPU in float32, as the stages after it (quantize, prune) take it
        saved = attach_head(model, head).to(torch.device("cpu"), torch.float32).eval()
        return ModelBundle(saved, tokenizer, list(bundle.lineage))
