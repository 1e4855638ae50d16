"""The ``prune`` strategy: plan the targets, run the (iterative) pruning, save and load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from compresso.strategies.prune.data import accumulate_gradients, mlm_batches, sample_documents
from compresso.strategies.prune.layout import (
    LAYOUT_FILE,
    Architecture,
    LayerShape,
    architecture_of,
    config_describes,
    layer_shapes,
    read_layout,
    resize_to_layout,
    write_layout,
)
from compresso.strategies.prune.params import PruneParams, PruneTarget, round_half_up
from compresso.strategies.prune.pruner import _Pruner, _schedule, _select_global, _select_layer, parameter_count
from compresso.strategies.prune.report import _write_report
from compresso.strategies.prune.saving import _load_weights
from compresso.strategies.load_note import write_load_note
from compresso.strategy import (
    BUNDLE_META,
    CompressionStrategy,
    ModelBundle,
    RunContext,
    StrategyError,
    check_text_source,
    write_json,
)


class PruneStrategy(CompressionStrategy):
    """Remove attention heads and FFN channels by importance; torch-pruning keeps tensors consistent."""

    name = "prune"
    summary = "structured pruning of attention heads and FFN channels (torch-pruning)"
    Params = PruneParams
    params: PruneParams

    def output_format(self, input_format: str) -> str:
        """``transformers`` when every layer ends with all its heads and one FFN width (one FFN target
        for all layers, no head target), else ``prune``. Known from the parameters alone for models
        whose layers start alike (every supported encoder); ``apply`` decides from the result."""
        p = self.params
        uniform_ffn = p.ffn is None or (p.ffn.is_single and p.scope == "layer")
        return "transformers" if p.heads is None and uniform_ffn else self.name

    def preflight(self, ctx: RunContext) -> None:
        try:
            import torch_pruning  # noqa: F401
        except ImportError as exc:
            raise StrategyError(f"prune needs torch-pruning: pip install 'compresso[prune]' ({exc})") from None
        for path in self.params.corpus:
            resolved = ctx.resolve_path(path)
            if not resolved.is_file():
                raise StrategyError(f"corpus file {resolved} does not exist")
        if self.params.importance == "taylor":
            check_text_source(self._calibration_corpus(ctx), ctx, "prune (taylor importance text)")

    def _calibration_corpus(self, ctx: RunContext):
        from compresso.corpus import Corpus

        p = self.params
        return (Corpus(files=tuple(ctx.resolve_path(x) for x in p.corpus)) if p.corpus else
                Corpus(dataset=p.dataset, dataset_config=p.dataset_config, split=p.dataset_split,
                       text_field=p.text_field))

    def plan(self, model: nn.Module) -> tuple[Architecture, list[LayerShape], list[int] | None, list[int] | None]:
        """Check the model and the targets before any work; return the per-layer targets.

        Targets are heads/FFN widths kept per layer (``scope: layer``) or, for ``scope: global``,
        a one-element list with the total kept over all layers.
        """
        p = self.params
        arch = architecture_of(model)
        shapes = layer_shapes(model, arch)
        if p.importance == "taylor":
            if model.get_output_embeddings() is None or not type(model).__name__.endswith("ForMaskedLM"):
                raise StrategyError(f"importance: taylor scores units by the masked-LM loss and needs a "
                                    f"...ForMaskedLM model; got {type(model).__name__}. Use importance: "
                                    f"magnitude for this model.")
        targets: dict[str, list[int] | None] = {"heads": None, "ffn": None}
        for kind in ("heads", "ffn"):
            target: PruneTarget | None = getattr(p, kind)
            if target is None:
                continue
            sizes = [s.heads if kind == "heads" else s.ffn for s in shapes]
            what = "heads" if kind == "heads" else "FFN channels"
            if p.scope == "global":
                total = sum(sizes)
                kept_total = (round_half_up(total * (1 - target.ratio)) if target.ratio is not None
                              else int(target.keep))
                if kept_total > total:
                    raise StrategyError(f"{kind}.keep is {kept_total} in all, but the model has {total} {what}")
                if kind == "heads" and kept_total < len(sizes):
                    raise StrategyError(f"{kind}: keeping {kept_total} heads over {len(sizes)} layers would prune "
                                        f"every head of some layer; each layer needs at least one head")
                targets[kind] = [kept_total]
                continue
            kept = target.kept_per_layer(sizes, p.round_to if kind == "ffn" else 1)
            for i, (k, size) in enumerate(zip(kept, sizes)):
                if k > size:
                    raise StrategyError(f"{kind}: layer {i} has {size} {what}, cannot keep {k}")
                if k < 1:
                    detail = (f"ratio {target.ratio if target.is_single else _at(target.ratio, i)} of "
                              f"{size} keeps 0" if target.ratio is not None else "keep is 0")
                    raise StrategyError(f"{kind}: this would prune every {what[:-1]} of layer {i} ({detail}); "
                                        f"keep at least one")
            targets[kind] = kept
        return arch, shapes, targets["heads"], targets["ffn"]

    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        p = self.params
        model = bundle.model
        arch, before, head_targets, ffn_targets = self.plan(model)
        home = next(model.parameters()).device
        params_before = parameter_count(model)
        started = time.time()

        batches = None
        if p.importance == "taylor":
            if bundle.tokenizer is None or bundle.tokenizer.mask_token is None:
                raise StrategyError("importance: taylor needs a tokenizer with a mask token")
            source = self._calibration_corpus(ctx)
            lines = sample_documents(source, p.calibration_batches * p.batch_size, ctx.seed, p.max_documents)
            batches = mlm_batches(bundle.tokenizer, lines, p.batch_size, p.seq_len, p.mask_prob, ctx.seed)
            ctx.log(f"prune: taylor importance on {len(lines)} documents of {source.describe()} "
                    f"in {len(batches)} batches")

        import torch_pruning as tp

        scorer = (tp.importance.GroupMagnitudeImportance(p=2, normalizer=None) if p.importance == "magnitude"
                  else tp.importance.GroupTaylorImportance(normalizer=None))
        requires_grad = {name: q.requires_grad for name, q in model.named_parameters()}
        losses = []
        # Original indices of the heads removed and still present, for the report.
        heads_removed: list[list[int]] = [[] for _ in before]
        heads_alive = [list(range(s.heads)) for s in before]
        with ctx.progress() as progress:
            step_task = progress.add_task("pruning steps", total=p.steps)
            for step in range(1, p.steps + 1):
                if batches is not None:
                    for q in model.parameters():
                        q.requires_grad_(True)
                    losses.append(accumulate_gradients(model, batches, ctx.device, progress,
                                                       f"taylor gradients, step {step}/{p.steps}"))
                model.to("cpu")  # tracing and cutting are cheap; on CPU they behave the same everywhere
                pruner = _Pruner(model, arch)
                for kind, targets in (("heads", head_targets), ("ffn", ffn_targets)):
                    if targets is None:
                        continue
                    scores = pruner.scores(kind, scorer)
                    if p.scope == "global":
                        start = sum(s.heads if kind == "heads" else s.ffn for s in before)
                        keep_total = _schedule(start, targets[0], step, p.steps)
                        chosen = _select_global(scores, keep_total, minimum=1)
                    else:
                        chosen = [
                            _select_layer(scores[i], _schedule(b.heads if kind == "heads" else b.ffn,
                                                               targets[i], step, p.steps))
                            for i, b in enumerate(before)]
                    for i, units in enumerate(chosen):
                        pruner.remove(i, kind, units)
                        if kind == "heads":
                            heads_removed[i] += [heads_alive[i][u] for u in units]
                            heads_alive[i] = [h for j, h in enumerate(heads_alive[i]) if j not in units]
                model.zero_grad(set_to_none=True)
                progress.advance(step_task)
        for name, q in model.named_parameters():
            q.requires_grad_(requires_grad.get(name, True))
        model.to(home)

        after = layer_shapes(model, arch)
        expressible = config_describes(model, arch)
        if expressible:
            setattr(model.config, arch.ffn_config_key, after[0].ffn)
        fmt = "transformers" if expressible else self.name
        params_after = parameter_count(model)
        report = {
            "architecture": type(model).__name__, "importance": p.importance, "scope": p.scope, "steps": p.steps,
            "format": fmt, "parameters_before": params_before, "parameters_after": params_after,
            "seconds": round(time.time() - started, 2),
            "taylor_mlm_loss": [round(x, 4) for x in losses] or None,
            "layers": [{"layer": i, "heads_before": b.heads, "heads_after": a.heads,
                        "ffn_before": b.ffn, "ffn_after": a.ffn,
                        "heads_removed": sorted(heads_removed[i]), "heads_kept": heads_alive[i]}
                       for i, (b, a) in enumerate(zip(before, after))],
        }
        ctx.metrics.update({
            "parameters_before": params_before, "parameters_after": params_after,
            "parameters_removed_fraction": round(1 - params_after / params_before, 4),
            "heads": [s.heads for s in after], "ffn": [s.ffn for s in after], "format": fmt,
        })
        if ctx.is_main:
            _write_report(ctx.stage_dir, report)
        ctx.log(f"prune: {params_before / 1e6:.2f} M → {params_after / 1e6:.2f} M parameters "
                f"(heads {[s.heads for s in after]}, FFN {sorted({s.ffn for s in after})}), saved as {fmt}")
        return ModelBundle(model=model, tokenizer=bundle.tokenizer, lineage=bundle.lineage, format=fmt)

    # -- persistence ----------------------------------------------------------------------

    @classmethod
    def save(cls, bundle: ModelBundle, path: Path) -> None:
        """Weights and config by ``save_pretrained`` (safetensors), the per-layer shapes, the tokenizer."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = bundle.model
        architecture_of(model)  # refuses what load could not rebuild
        model.save_pretrained(path, safe_serialization=True)
        if bundle.tokenizer is not None:
            bundle.tokenizer.save_pretrained(path)
        write_layout(model, path)
        write_load_note(path, "prune", "a structurally pruned model (heads and FFN widths differ per layer)",
                        "plain `from_pretrained` refuses this folder with a size-mismatch error: the pruned "
                        "shapes in the weights do not fit `config.json`, which cannot describe per-layer shapes")
        write_json(path / "compresso.json", {**bundle.meta(), "format": cls.name})

    @classmethod
    def load(cls, path: Path, model_class: type | None = None, **model_kwargs) -> ModelBundle:
        """Rebuild a pruned model: config → model → pruned shapes → weights (strict for the backbone)."""
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        path = Path(path)
        layout = read_layout(path)
        if layout is None:
            raise FileNotFoundError(f"{path} has format 'prune' in {BUNDLE_META} but no {LAYOUT_FILE}")
        dtype = model_kwargs.pop("dtype", torch.float32)
        attn_implementation = model_kwargs.pop("attn_implementation", "sdpa")
        config = AutoConfig.from_pretrained(path)
        for key, value in model_kwargs.items():
            if key != "num_labels" and not hasattr(config, key):
                raise TypeError(f"load() got {key}={value!r}, which is not a {type(config).__name__} setting")
            setattr(config, key, value)
        saved_class = getattr(transformers, layout["architecture"], None)
        target_class = model_class or saved_class
        if target_class is None:
            raise ValueError(f"{path / LAYOUT_FILE}: architecture {layout['architecture']!r} is not a transformers "
                             f"class")
        build = getattr(target_class, "from_config", None) or target_class._from_config
        model = build(config, attn_implementation=attn_implementation)
        resize_to_layout(model, layout["layers"])
        _load_weights(model, path, same_head=type(model).__name__ == layout["architecture"])
        model.to(dtype).eval()
        meta_path = path / BUNDLE_META
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
        tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else None
        return ModelBundle(model=model, tokenizer=tokenizer, lineage=meta.get("lineage", []), format=cls.name)


def _at(spec, i):
    return spec[i] if isinstance(spec, list) else spec.get(i)
