"""``distill``: DistilBERT-style task-agnostic distillation from one or more teachers.

The student is cut from the stage's input model (a subset of its layers, embeddings and MLM
head kept) and trained on a masked-LM corpus against the teachers' soft targets and hidden
states. Teachers may use other tokenizers than the student (see ``data.py`` and ``vocab.py``
and docs/distillation.md). Everything that can be checked is checked before training starts.
"""

from __future__ import annotations

import copy
import os

import torch

import numpy as np

from compresso.corpus import Corpus, CorpusError, check_corpus, iter_indexed_documents
from compresso.strategies.distill import evaluate as heldout
from compresso.strategies.distill.data import (
    CHUNK_DOCUMENTS,
    BatchStream,
    MaskingConfig,
    RowEncoder,
    StreamConfig,
    ViewSpec,
    token_mask_weights,
)
from compresso.strategies.distill.losses import LossConfig, TeacherLink
from compresso.strategies.distill.modeling import (
    MaskedLM,
    StudentModule,
    build_student,
    check_positions,
    check_teacher,
    choose_layers,
    default_layer_map,
    first_line,
    is_masked_lm,
    make_projection,
    usable_positions,
)
from compresso.strategies.distill.params import DistillParams
from compresso.strategies.distill.report import write_report
from compresso.strategies.distill.trainer import Trainer, TrainConfig, fingerprint, warmup_steps
from compresso.strategies.distill.vocab import build_vocab_map, same_tokenization
from compresso.strategy import CompressionStrategy, ModelBundle, RunContext, StrategyError, check_text_source


class DistillStrategy(CompressionStrategy):
    name = "distill"
    summary = "multi-teacher masked-LM distillation into fewer layers; teachers may use other tokenizers"
    Params = DistillParams
    accepts_formats = frozenset({"transformers", "prune"})

    params: DistillParams

    def output_format(self, input_format: str) -> str:
        return input_format  # a pruned student keeps the format that describes its shapes

    # --- checks ------------------------------------------------------------------------------
    def _teacher_weights(self, ctx: RunContext) -> dict[str, float]:
        available = list(ctx.teachers)
        weights = self.params.teacher_weights(available)
        unknown = [n for n in weights if n not in ctx.teachers]
        if unknown:
            raise StrategyError(f"distill: teacher {unknown[0]!r} is not among the recipe's teachers "
                                f"({', '.join(available) or 'none defined'})")
        if not weights:
            raise StrategyError("distill needs at least one teacher: add `teachers:` to the recipe")
        return weights

    def _corpus(self, ctx: RunContext) -> Corpus:
        p = self.params
        try:
            if p.corpus:
                return Corpus(files=tuple(ctx.resolve_path(f) for f in p.corpus))
            return Corpus(dataset=p.dataset, dataset_config=p.dataset_config, split=p.dataset_split,
                          text_field=p.text_field)
        except CorpusError as exc:
            raise StrategyError(f"distill: {exc}") from None

    def preflight(self, ctx: RunContext) -> None:
        weights = self._teacher_weights(ctx)
        check_text_source(self._corpus(ctx), ctx, "distill", self.params.heldout_documents,
                          self.params.max_undecodable)
        rows = max(self.params.seq_len, self.params.teacher_seq_len or 0)
        for name in weights:
            ref = ctx.teachers[name]
            try:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(ref.model, revision=ref.revision,
                                                    trust_remote_code=ref.trust_remote_code)
            except Exception:  # unreachable hub models are reported by the engine's own checks
                continue
            archs = getattr(config, "architectures", None) or []
            if archs and not any(a.endswith("ForMaskedLM") for a in archs):
                raise StrategyError(f"teacher {name!r} ({ref.model}) is a {archs[0]}, not a masked-LM: "
                                    f"distillation needs its MLM head")
            usable = usable_positions(config)
            if usable is not None and rows > usable:
                raise StrategyError(f"teacher {name!r} accepts at most {usable} positions, but seq_len / "
                                    f"teacher_seq_len ask for {rows}")

    # --- setup -------------------------------------------------------------------------------
    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        p = self.params
        device = ctx.device
        weights = self._teacher_weights(ctx)
        corpus = self._corpus(ctx)

        if not is_masked_lm(bundle.model):
            raise StrategyError(f"distill: the stage's input is a {type(bundle.model).__name__}, not a masked-LM "
                                f"(...ForMaskedLM); the student needs the MLM head of its input")
        student_tok = bundle.tokenizer
        if getattr(student_tok, "backend_tokenizer", None) is None:
            raise StrategyError("distill: the input model's tokenizer is not a fast tokenizer")
        layers = choose_layers(bundle.model, p.layers, p.num_layers)
        check_positions("the student (input model)", bundle.model, p.seq_len)
        if corpus.files:
            try:
                check_corpus(corpus, p.heldout_documents, p.max_undecodable)
            except CorpusError as exc:
                raise StrategyError(f"distill: {exc}") from None

        # Teachers: checks, views (one per distinct foreign tokenizer), vocabulary maps.
        teacher_len = p.teacher_seq_len or p.seq_len
        views = [ViewSpec.from_tokenizer(student_tok, "student", p.seq_len)]
        view_tokenizers = [student_tok]
        total_w = sum(weights.values())
        links: list[TeacherLink] = []
        teacher_info: dict[str, dict] = {}
        student_emb = bundle.model.get_input_embeddings().weight
        for name, w in weights.items():
            ref = ctx.teachers[name]
            tb = ref.load()
            tokenizer = tb.tokenizer
            same = same_tokenization(student_tok, tokenizer)
            check_teacher(name, tb.model, tokenizer, p.seq_len if same else teacher_len)
            info = {"model": str(ref.model), "weight": w / total_w, "same_tokenizer": same,
                    "layers": tb.model.config.num_hidden_layers, "hidden_size": MaskedLM(tb.model).hidden_size}
            if same:
                view, vmap = 0, None
                info["vocab"] = {"student_vocab_mapped": 1.0, "teacher_vocab_covered": 1.0, "identical": True}
            else:
                if not p.whole_word_mask:
                    raise StrategyError(f"distill: teacher {name!r} uses another tokenizer than the student, which "
                                        f"needs whole-word masking (whole_word_mask: true) so that both see the "
                                        f"same words masked")
                view = next((i for i, t in enumerate(view_tokenizers) if i and same_tokenization(t, tokenizer)), 0)
                if view == 0:
                    try:
                        views.append(ViewSpec.from_tokenizer(tokenizer, name, teacher_len))
                    except ValueError as exc:
                        raise StrategyError(f"distill: {exc}") from None
                    view_tokenizers.append(tokenizer)
                    view = len(views) - 1
                vmap = build_vocab_map(student_tok, tokenizer, name)
                if len(vmap.teacher_ids) == 0:
                    raise StrategyError(f"distill: no token of the student's vocabulary exists in teacher "
                                        f"{name!r}'s vocabulary; its soft targets cannot be compared")
                info["vocab"] = vmap.report()
            t_emb = tb.model.get_input_embeddings().weight
            same_origin = t_emb.shape == student_emb.shape and torch.equal(t_emb, student_emb)
            info["initialised_student"] = bool(same_origin)
            link = TeacherLink(name=name, lm=MaskedLM(tb.model), weight=w / total_w, view=view, vocab=vmap)
            if same:
                s_out = bundle.model.get_output_embeddings().weight.shape[0]
                t_out = tb.model.get_output_embeddings().weight.shape[0]
                if s_out != t_out:  # one of them pads its output layer; the tokenizer's ids are the same
                    link.shared_vocab = min(s_out, t_out)
            links.append(link)
            teacher_info[name] = info

        student_model = build_student(bundle.model, layers)
        student_lm = MaskedLM(student_model)
        if p.loss_chunk_rows and not student_lm.split:
            raise StrategyError(f"distill: loss_chunk_rows needs the student's MLM head apart from its encoder; "
                                f"{type(student_model).__name__} has none compresso knows (remove loss_chunk_rows)")
        projections = self._projections(links, teacher_info, student_lm, layers,
                                        bundle.model.config.num_hidden_layers)
        if p.teacher_weighting == "entropy":
            self._shared_space(links)
        if p.teacher_mixing == "geometric" and len(links) > 1:
            self._check_geometric(links)
        if p.teacher_weighting == "entropy" and p.entropy_temperature == "auto" and p.heldout_documents == 0:
            raise StrategyError("distill: entropy_temperature: auto is calibrated on the held-out slice; set "
                                "heldout_documents > 0 or give entropy_temperature a number")

        loss_cfg = LossConfig(temperature=p.temperature, alpha_ce=p.alpha_ce, alpha_mlm=p.alpha_mlm,
                              alpha_cos=p.alpha_cos, alpha_mse=p.alpha_hidden_mse, weighting=p.teacher_weighting,
                              entropy_temperature=1.0 if p.entropy_temperature == "auto" else p.entropy_temperature,
                              ce_scope=p.ce_scope, unmapped_mass=p.unmapped_mass, chunk_rows=p.loss_chunk_rows,
                              mixing=p.teacher_mixing if len(links) > 1 else "arithmetic")
        token_weights = None
        if not p.whole_word_mask and p.mlm_smoothing > 0:
            token_weights = self._token_weights(corpus, student_tok, p)
        need_words = any(lk.cross for lk in links) and (p.alpha_cos > 0 or p.alpha_hidden_mse > 0)
        workers = p.num_workers if p.num_workers is not None else (
            0 if device.type == "cpu" else max(0, min(12, (os.cpu_count() or 1) // max(ctx.world_size, 1) - 2)))
        compiled = compiles_on(p.compile, device)
        loss_cfg.compile = compiled
        teacher_graphs = graphs_on(p.teacher_cuda_graphs, device)
        student_graphs = student_graphs_on(p.student_cuda_graphs, device, ctx.world_size)
        float8 = float8_on(p.teacher_float8, device)
        stream_cfg = StreamConfig(
            corpus=corpus, views=views, batch_size=p.batch_size, seed=ctx.seed, heldout=p.heldout_documents,
            max_documents=p.max_documents, rank=ctx.rank, world_size=ctx.world_size, num_workers=workers,
            need_words=need_words, pin=device.type == "cuda", fixed_width=compiled or teacher_graphs or student_graphs,
            masking=MaskingConfig(prob=p.mask_prob, replace=p.mask_replace_prob, random=p.mask_random_prob,
                                  whole_word=p.whole_word_mask, token_weights=token_weights))

        self._init_distributed(ctx)
        # Teachers: private copies on the device (the recipe's cached teacher stays untouched),
        # in bf16 on GPU, eval mode, no gradients.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        for link in links:
            model = copy.deepcopy(link.lm.model).to(device=device, dtype=dtype).eval().requires_grad_(False)
            link.lm = MaskedLM(model)
            link.to(device)
            if float8:  # before graphs or compiling: both then see the float8 layers
                converted, linears = link.lm.to_float8()
                ctx.log(f"teacher {link.name}: {converted} of {linears} linear layers of its encoder layers "
                        "run in float8" + ("" if converted == linears else
                                           " (the others' widths are not multiples of 16: bf16)"))
            if teacher_graphs:
                # Replayed, a teacher costs the host nothing per layer, and torch.compile's code
                # cannot be captured here (it recompiled under capture on the H200): graphs replace
                # compiling the teachers (and, with student_cuda_graphs, the student's encoder).
                link.lm.use_cuda_graphs()
            elif compiled:
                link.lm.compile()

        student = StudentModule(student_model, projections)
        if student_graphs:
            student.lm.use_training_graphs()
        if compiled:
            student.lm.compile(encoder=not student_graphs)
        run_id = fingerprint({"params": resumable_params(p), "layers": layers, "seed": ctx.seed,
                              "teachers": {n: i["model"] for n, i in teacher_info.items()},
                              "views": [v.name for v in views]})
        train_cfg = TrainConfig(max_steps=p.max_steps, grad_accum_steps=p.grad_accum_steps, lr=p.lr,
                                weight_decay=p.weight_decay, warmup_ratio=p.warmup_ratio, betas=tuple(p.adam_betas),
                                eps=p.adam_eps, max_grad_norm=p.max_grad_norm, log_every=p.log_every,
                                checkpoint_every=p.checkpoint_every, lr_schedule=p.lr_schedule,
                                snapshot_steps=tuple(p.snapshot_steps))
        trainer = Trainer(student, links, loss_cfg, train_cfg, stream_cfg, ctx, run_id)
        if p.snapshot_steps and ctx.is_main:
            trainer.snapshot = lambda step, tokens: save_snapshot(
                ModelBundle(model=student_model, tokenizer=student_tok, lineage=list(bundle.lineage),
                            format=bundle.format), ctx.stage_dir / "snapshots", step, tokens)

        # Held-out metrics before training (teachers and the undistilled student), kept across resumes.
        calibrate = p.teacher_weighting == "entropy" and p.entropy_temperature == "auto"
        heldout_batches = self._heldout_batches(stream_cfg) if (ctx.is_main or calibrate) else []
        calibration = None
        if calibrate:  # every rank computes the same tau from the same held-out batches
            calibration = heldout.calibrate_entropy_temperature(links, heldout_batches, device)
            loss_cfg.entropy_temperature = calibration["entropy_temperature"]
            if not ctx.is_main:
                heldout_batches = []
            ctx.log(f"entropy weighting: tau = {loss_cfg.entropy_temperature:.3f} nats, calibrated on "
                    f"{calibration['positions']} held-out positions")
        alignment = self._alignment_stats(stream_cfg) if ctx.is_main and len(views) > 1 else None
        unk = {lk.name: (views[lk.view].unk_id) for lk in links}
        previous = trainer.peek_checkpoint() if ctx.is_main else None
        teacher_tops = None
        if ctx.is_main and heldout_batches:
            student_model.to(device)
            teachers_eval, teacher_tops = heldout.teacher_predictions(links, heldout_batches, device, unk)
            before = (previous or {}).get("extra", {}).get("student_before")
            if before is None:
                before = heldout.student_metrics(student_lm, links, heldout_batches, device, teacher_tops)
            trainer.extra_state = {"student_before": before}
        else:
            teachers_eval, before = {}, None
        self._barrier(ctx)

        ctx.log(f"distilling {len(layers)} of {bundle.model.config.num_hidden_layers} layers "
                f"({layers}) from {', '.join(f'{n} ({w / total_w:.2f})' for n, w in weights.items())}; "
                f"{len(views) - 1} teacher tokenizer(s) differ from the student's")
        try:
            result = trainer.train()
        except CorpusError as exc:
            raise StrategyError(f"distill: {exc}") from None
        except Exception as exc:
            if compiled and is_compile_failure(exc):
                raise StrategyError(
                    f"distill: torch.compile failed on this machine ({type(exc).__name__}: {first_line(exc)}); "
                    f"`compile` is {p.compile!r} — set `compile: false` in this stage's params to train "
                    "without it (a rerun resumes from the last checkpoint, if there is one)") from exc
            raise

        after = cosine = None
        if ctx.is_main and heldout_batches:
            after = heldout.student_metrics(student_lm, links, heldout_batches, device, teacher_tops)
            if p.alpha_cos > 0:
                cosine = heldout.cosine_check(student, links, heldout_batches, device)
        self._barrier(ctx)

        student.lm.drop_graphs()
        if compiled:
            student.lm.uncompile()
        student_model.eval()
        student_model.to("cpu")
        for link in links:
            link.lm.model.to("cpu")
        if ctx.is_main:
            write_report(ctx, p, layers=layers, input_layers=bundle.model.config.num_hidden_layers,
                         student=student_model, teachers=teacher_info, result=result, views=views,
                         heldout_docs=p.heldout_documents if heldout_batches else 0,
                         teachers_eval=teachers_eval, before=before, after=after, links=links,
                         calibration=calibration, alignment=alignment, cosine=cosine)
        # A pruned student (format "prune") stays in the format that can describe its shapes.
        return ModelBundle(model=student_model, tokenizer=student_tok, lineage=list(bundle.lineage),
                           format=bundle.format)

    # --- helpers -----------------------------------------------------------------------------
    def _projections(self, links: list[TeacherLink], info: dict, student_lm: MaskedLM, kept: list[int],
                     input_layers: int) -> dict:
        p = self.params
        out = {}
        s_width = student_lm.hidden_size
        s_layers = student_lm.num_layers
        for i, link in enumerate(links):
            t_width = info[link.name]["hidden_size"]
            t_layers = info[link.name]["layers"]
            needed = {"always": True, "never": False}.get(
                p.project_hidden, t_width != s_width or not info[link.name]["initialised_student"])
            if t_width != s_width and not needed:
                raise StrategyError(f"distill: teacher {link.name!r} has hidden size {t_width}, the student "
                                    f"{s_width}; hidden-state losses need a projection (project_hidden: auto)")
            info[link.name]["projection"] = bool(needed and (p.alpha_cos > 0 or p.alpha_hidden_mse > 0))
            if p.alpha_cos > 0 and needed:
                out[f"t{i}_last"] = make_projection(s_width, t_width)
                link.cos_projection = f"t{i}_last"
            if p.alpha_hidden_mse > 0:
                layer_map = p.hidden_layer_map or default_layer_map(kept, input_layers, t_layers)
                for s, t in layer_map.items():
                    if s > s_layers or t > t_layers:
                        raise StrategyError(f"distill: hidden_layer_map {s}: {t} is out of range (student hidden "
                                            f"states 1..{s_layers}, teacher {link.name!r} 0..{t_layers})")
                link.layer_map = dict(layer_map)
                if needed:
                    for s in layer_map:
                        out[f"t{i}_h{s}"] = make_projection(s_width, t_width)
                        link.mse_projections[s] = f"t{i}_h{s}"
                info[link.name]["layer_map"] = {str(k): v for k, v in layer_map.items()}
        return out

    @staticmethod
    def _check_geometric(links: list[TeacherLink]) -> None:
        """The geometric mix lives in the student's vocabulary: a teacher with the student's tokenizer
        splits each foreign teacher's column among the student ids of that column."""
        if not any(not lk.cross for lk in links):
            raise StrategyError("distill: teacher_mixing: geometric mixes the teachers in the student's vocabulary "
                                "and needs a teacher with the student's tokenizer to split a foreign teacher's "
                                "probabilities among the student's ids; none of "
                                f"{', '.join(lk.name for lk in links)} has it. Use teacher_mixing: arithmetic")

    @staticmethod
    def _shared_space(links: list[TeacherLink]) -> None:
        """The space the entropy weighting compares teachers in: the student's vocabulary when every
        teacher shares it, else the one foreign tokenizer's vocabulary intersection (+ "other")."""
        foreign = {lk.view: lk.vocab for lk in links if lk.cross}
        if len(foreign) > 1:
            raise StrategyError("distill: teacher_weighting: entropy compares the teachers' entropies in one "
                                "shared vocabulary; with teachers on more than one foreign tokenizer there is "
                                "none. Use teacher_weighting: static")
        if not foreign:
            return
        vmap = next(iter(foreign.values()))
        size = len(vmap.teacher_ids)
        for link in links:
            if link.cross:
                column = np.full(int(vmap.teacher_ids.max()) + 1, size, dtype=np.int64)
                column[vmap.teacher_ids] = np.arange(size)
            else:  # the student's ids, pushed forward as the foreign teacher's soft targets are
                column = np.full(len(vmap.student_to_teacher), size, dtype=np.int64)
                column[vmap.student_ids] = vmap.columns
            link.shared_column, link.shared_size = column, size

    def _token_weights(self, corpus: Corpus, tokenizer, p: DistillParams) -> np.ndarray:
        """DistilBERT's masking weights from token counts over the first training documents."""
        backend = tokenizer.backend_tokenizer
        counts = np.zeros(max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1), dtype=np.int64)
        texts: list[str] = []

        def flush():
            nonlocal counts
            for enc in backend.encode_batch(texts, add_special_tokens=False):
                counts += np.bincount(np.asarray(enc.ids, dtype=np.int64), minlength=len(counts))[: len(counts)]
            texts.clear()

        docs = iter_indexed_documents(corpus, part="train", heldout=p.heldout_documents,
                                      max_documents=p.max_documents, rank=0, world_size=1)
        for n, (_, text) in enumerate(docs):
            if n == p.smoothing_documents:
                break
            texts.append(text)
            if len(texts) == CHUNK_DOCUMENTS:
                flush()
        flush()
        return token_mask_weights(counts, p.mlm_smoothing, tokenizer.all_special_ids)

    def _alignment_stats(self, cfg: StreamConfig) -> dict:
        """What the aligner drops, counted on the held-out slice (the training text is alike)."""
        encoder = RowEncoder(cfg.views, threads=False)
        total: dict[str, int] = {}
        texts = []

        def add(chunk):
            for k, v in encoder.encode(chunk)["alignment_stats"].items():
                total[k] = total.get(k, 0) + v

        for _, text in iter_indexed_documents(cfg.corpus, part="heldout", heldout=cfg.heldout):
            texts.append(text)
            if len(texts) == CHUNK_DOCUMENTS:
                add(texts)
                texts = []
        if texts:
            add(texts)
        return total

    def _heldout_batches(self, cfg: StreamConfig) -> list:
        if cfg.heldout <= 0:
            return []
        held = StreamConfig(**{**cfg.__dict__, "rank": 0, "world_size": 1, "num_workers": 0, "pin": False,
                               "max_documents": None})
        with BatchStream(held, "heldout") as stream:
            return list(stream)

    @staticmethod
    def _init_distributed(ctx: RunContext) -> None:
        if ctx.device.type == "cuda" and ctx.device.index is not None:
            torch.cuda.set_device(ctx.device)  # collectives (all_gather_object) use the current device
        if ctx.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if ctx.device.type == "cuda" else "gloo",
                                        rank=ctx.rank, world_size=ctx.world_size)

    @staticmethod
    def _barrier(ctx: RunContext) -> None:
        if ctx.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


__all__ = ["DistillStrategy", "DistillParams"]


# Settings that change how fast a run goes, not the weights it trains: a checkpoint made with other
# values of these resumes (``teacher_float8`` is not among them: it changes the soft targets).
SPEED_ONLY = frozenset({"num_workers", "log_every", "checkpoint_every", "compile", "loss_chunk_rows",
                        "teacher_cuda_graphs", "student_cuda_graphs"})


# Settings that choose what is written besides the stage's output, not how it trains.
OUTPUT_ONLY = frozenset({"snapshot_steps"})

# Settings added after checkpoints existed: at these values they train as before their time, so they
# stay out of the fingerprint there and such checkpoints still resume.
ADDED_WITH_DEFAULT = {"lr_schedule": "linear", "teacher_mixing": "arithmetic"}


def resumable_params(p: DistillParams) -> dict:
    """What of the parameters makes a checkpoint resumable: everything but ``SPEED_ONLY`` and
    ``OUTPUT_ONLY``, and the ``ADDED_WITH_DEFAULT`` settings only where they differ from that value.
    Under ``lr_schedule: constant`` the rate at a step does not depend on ``max_steps``, only on the
    warm-up's length in steps: such a run's checkpoint resumes into a longer run of the same warm-up
    (the curve of ``benchmarks/ensemble_study.py --budgets`` grows that way)."""
    dump = p.model_dump(mode="json", exclude=set(SPEED_ONLY | OUTPUT_ONLY))
    for key, value in ADDED_WITH_DEFAULT.items():
        if dump.get(key) == value:
            del dump[key]
    if p.lr_schedule == "constant":
        dump["warmup_steps"] = warmup_steps(dump.pop("warmup_ratio"), dump.pop("max_steps"))  # as the trainer counts
    return dump


def save_snapshot(bundle: ModelBundle, folder, step: int, tokens: int):
    """The student at ``step`` as a save_pretrained folder ``folder/step-N`` with ``snapshot.json``,
    written under a temporary name and renamed: a snapshot is there complete or not at all."""
    import json
    import shutil
    from pathlib import Path

    from compresso.models import save_bundle

    dest = Path(folder) / f"step-{step}"
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_bundle(bundle, tmp)
    (tmp / "snapshot.json").write_text(json.dumps({"step": step, "tokens": tokens}, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return dest


def compiles_on(setting: bool | str, device: torch.device) -> bool:
    """``compile: auto`` means on CUDA devices: it paid there (docs/performance.md); on a CPU inductor's
    compile time outweighs the gain for the short runs CPUs are used for."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def graphs_on(setting: bool, device: torch.device, key: str = "teacher_cuda_graphs") -> bool:
    """CUDA graphs exist only on CUDA devices: ``teacher_cuda_graphs: true`` (or ``key``) elsewhere
    is refused rather than ignored."""
    if setting and device.type != "cuda":
        raise StrategyError(f"distill: {key}: true needs a CUDA device, this stage runs on {device}; "
                            "set it to false")
    return bool(setting)


def float8_on(setting: bool, device: torch.device) -> bool:
    """``teacher_float8``: float8 matmuls exist on CUDA GPUs of compute capability 8.9 and newer (Ada,
    Hopper, Blackwell), through torchao; anywhere else the setting is refused rather than ignored."""
    if not setting:
        return False
    fix = "; set teacher_float8 to false"
    if device.type != "cuda":
        raise StrategyError(f"distill: teacher_float8: true needs a CUDA GPU of compute capability 8.9 or newer "
                            f"(Ada, Hopper, Blackwell), this stage runs on {device}{fix}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise StrategyError(f"distill: teacher_float8: true needs compute capability 8.9 or newer, "
                            f"{torch.cuda.get_device_name(device)} has {major}.{minor}{fix}")
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        raise StrategyError(f"distill: teacher_float8: true needs torchao ({exc}); pip install torchao{fix}") from None
    return True


def student_graphs_on(setting: bool, device: torch.device, world_size: int) -> bool:
    """``student_cuda_graphs``: CUDA only, and one process (data-parallel gradient hooks would fire
    only after the whole replayed backward; not supported)."""
    if setting and world_size > 1:
        raise StrategyError(f"distill: student_cuda_graphs: true runs in one process, this stage has {world_size} "
                            "data-parallel processes; set it to false")
    return graphs_on(setting, device, "student_cuda_graphs")


def is_compile_failure(exc: BaseException) -> bool:
    """An error raised by torch.compile itself (dynamo tracing, or the inductor backend: no C++ compiler,
    no Triton for this GPU), not by the model's own code."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(exc, TorchDynamoException)
