"""Is the two-teacher ensemble a better teacher than either teacher, and does DistilMulti gain from it?

The study, on the fixture teachers (``--shared DIR`` holding ``teachers/`` and ``corpus/``):

(a) **The ceiling.** On the held-out corpus slice (the first ``--heldout-docs`` documents, which no
    student is distilled on; the teachers, though, were pretrained on the whole corpus), with the
    whole-word masking the students are trained with, at every masked position *both* teachers
    supervise (the uncased teacher has a piece with the same characters): MLM accuracy and NLL of
    each teacher alone and of ensembles, all in the shared space -- the uncased teacher's ids that
    the cased vocabulary maps onto, plus one "other" entry for everything else, exactly the space
    the distillation loss uses. Ensembles: probabilities averaged (1:1, 2:1 and 1:2), the
    normalised geometric mean, and the entropy-weighted mix with tau calibrated as the ``distill``
    strategy does; "oracle" (either teacher right) is an upper bound no mix reaches. Differences to
    the best single teacher come with 95 % intervals from a bootstrap over rows (paired).
(b) **Students** (``--train-steps N``, 0 skips): short ``distill`` stages at one token budget
    (N steps x batch x seq_len each; the ``-2x`` variant at twice the budget) -- the single-teacher
    students and DistilMulti variants -- evaluated on the same held-out positions: MLM accuracy on
    their own tokenization, and in the shared space accuracy, NLL and top-1 agreement with each
    teacher. Each variant trains in a process of its own, ``--jobs`` at a time (small students
    leave most of a large GPU idle, so several share it; quality figures only, no timings), and is
    saved under ``OUT/students/NAME`` as a plain ``save_pretrained`` folder that ``compresso
    evaluate`` takes. ``--max-seconds`` bounds the whole run: a variant not started in time is
    skipped, one still running at the deadline is stopped, and both are recorded as such.

(c) **The token-budget curve** (``--budgets 1,2,4,8``, multiples of ``--train-steps``): each of
    ``--variants`` (of ``CURVE_STUDENTS``: Distil-BERT, DistilMulti 2:1, DistilMulti 2:1 mixed
    geometrically) trains **once**, to the largest budget, with the same seed and corpus order. The
    schedule is linear warm-up over ``--warmup-steps`` then a **constant** learning rate, and the
    strategy saves the student at every smaller budget (``snapshot_steps``): the student at 2x is
    the 8x run stopped at 2x, as a 2x run of the same schedule would be, and the whole curve costs
    one 8x run per student instead of 1+2+4+8. (The linearly decayed single-budget students of (b)
    are annealed and so not comparable point for point.) Every budget's student is scored on the
    ceiling's held-out positions: shared-space accuracy and NLL, and paired intervals against
    Distil-BERT at the same budget. Resumable: the strategy checkpoints every
    ``--checkpoint-every`` steps and at each budget, a rerun with the same arguments resumes
    training, and budgets already scored (``OUT/curve/NAME/step-N.json``) are not scored again; a
    rerun with a larger largest budget continues the finished runs from their last checkpoint (a
    constant-rate run resumes into a longer one), keeping every point already there.
    Writes ``OUT/budget_curve.json`` and ``OUT/budget_curve.png``.

Writes ``OUT/ensemble_study.json`` (with GPU name and clocks) and prints tables.

    python benchmarks/ensemble_study.py --shared ../shared --out /tmp/ens --device cuda --train-steps 300
    python benchmarks/ensemble_study.py --shared ../shared --out /tmp/curve --device cuda --train-steps 1000 \
        --budgets 1,2,4,8 --jobs 2 --max-seconds 3000
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compresso.corpus import Corpus  # noqa: E402
from compresso.strategies.distill.data import BatchStream, MaskingConfig, StreamConfig, ViewSpec  # noqa: E402
from compresso.strategies.distill.modeling import MaskedLM, default_layers  # noqa: E402
from compresso.strategies.distill.vocab import build_vocab_map  # noqa: E402

CASED, UNCASED = "bert-cased", "robert-uncased"

# name -> (input model, distill parameters beyond the common ones). Order = priority under the time budget.
# "steps_factor" scales --train-steps (the 2x-budget variant); everything else goes to DistillStrategy.Params.
VARIANTS = {
    "distil-bert": (CASED, {"teachers": [CASED]}),
    "distilmulti": (CASED, {"teachers": [CASED, UNCASED]}),
    "distil-robert": (UNCASED, {"teachers": [UNCASED]}),
    "distilmulti-2to1": (CASED, {"teachers": {CASED: 2, UNCASED: 1}}),
    "distilmulti-entropy": (CASED, {"teachers": [CASED, UNCASED], "teacher_weighting": "entropy"}),
    "distilmulti-previous": (CASED, {"teachers": [CASED, UNCASED], "ce_scope": "masked",
                                     "unmapped_mass": "renormalise"}),
    "distilmulti-init-uncased": (UNCASED, {"teachers": [CASED, UNCASED]}),
    # 2x the token budget: the recipe's DistilMulti (2:1), and Distil-BERT beside it, so that a gain
    # of the ensemble student at 2x is not credited to the ensemble when it is the budget's.
    "distilmulti-2x": (CASED, {"teachers": {CASED: 2, UNCASED: 1}, "steps_factor": 2}),
    "distil-bert-2x": (CASED, {"teachers": [CASED], "steps_factor": 2}),
}

# The budget curve's students (``--budgets``): the single-teacher student, the recipe's DistilMulti
# (2:1), and the same with the teachers mixed as a geometric mean, the best mix of the ceiling.
CURVE_STUDENTS = {
    "distil-bert": (CASED, {"teachers": [CASED]}),
    "distilmulti-2to1": (CASED, {"teachers": {CASED: 2, UNCASED: 1}}),
    "distilmulti-2to1-geometric": (CASED, {"teachers": {CASED: 2, UNCASED: 1}, "teacher_mixing": "geometric"}),
}
CURVE_REFERENCE = "distil-bert"  # every other curve student is compared with it at each budget


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, required=True, help="folder with teachers/ and corpus/")
    ap.add_argument("--out", type=Path, required=True, help="output folder (ensemble_study.json)")
    ap.add_argument("--cased", default="ro-bert-small-cased", help="teachers/ folder of the cased teacher")
    ap.add_argument("--uncased", default="ro-robert-small-uncased", help="teachers/ folder of the uncased teacher")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--heldout-docs", type=int, default=2000)
    ap.add_argument("--mask-passes", type=int, default=4, help="maskings of the held-out slice (seeds)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=0, help="steps per student (0: ceiling only)")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated, of {', '.join(VARIANTS)} (default all); with --budgets of "
                         f"{', '.join(CURVE_STUDENTS)} (default all)")
    ap.add_argument("--budgets", default="",
                    help="the token-budget curve: comma-separated multiples of --train-steps, e.g. 1,2,4,8 "
                         "(one constant-rate run per student to the largest, snapshots at the others)")
    ap.add_argument("--warmup-steps", type=int, default=None,
                    help="curve: linear warm-up steps before the constant rate (default 5%% of --train-steps)")
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="curve: steps between checkpoints (default a quarter of --train-steps)")
    ap.add_argument("--max-seconds", type=float, default=230.0, help="wall-time budget of the whole run")
    ap.add_argument("--jobs", type=int, default=1, help="variants trained at once, each in its own process")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="tokenizer worker processes per variant (default: the strategy's)")
    ap.add_argument("--train-variant", default=None, help=argparse.SUPPRESS)  # internal: one variant's process
    ap.add_argument("--max-documents", type=int, default=None, help="cap the training documents (smoke runs)")
    ap.add_argument("--fp16-copies", action="store_true",
                    help="also write every trained student in float16 under OUT/students-fp16/NAME (half the "
                         "bytes: what a device run brings back for `compresso evaluate`)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    try:
        args.budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    except ValueError:
        ap.error(f"--budgets takes comma-separated whole multiples of --train-steps, e.g. 1,2,4,8; got {args.budgets!r}")
    if any(b < 1 for b in args.budgets):
        ap.error(f"--budgets must be positive multiples of --train-steps, got {args.budgets}")
    if args.budgets and args.train_steps < 1:
        ap.error("--budgets needs --train-steps N (the steps of budget 1)")
    known = CURVE_STUDENTS if args.budgets else VARIANTS
    if args.variants is None:
        args.variants = ",".join(known)
    unknown = [v for v in args.variants.split(",") if v and v not in known]
    if unknown:
        ap.error(f"unknown {'curve student' if args.budgets else 'variant'}(s) {unknown}; choose from {list(known)}")
    return args


def gpu_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "host": platform.node(),
            "cpu_count": os.cpu_count()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["clocks"] = nvidia_smi()
    return info


def nvidia_smi() -> dict | str:
    fields = "name,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,temperature.gpu"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip().splitlines()[0]
        return dict(zip(fields.split(","), (v.strip() for v in out.split(","))))
    except Exception as exc:  # record why, never fail the study for it
        return f"nvidia-smi unavailable: {exc}"


def corpus_files(shared: Path) -> list[Path]:
    files = sorted(p.resolve() for p in (shared / "corpus").iterdir() if p.suffix in (".xz", ".gz", ".bz2", ".txt"))
    if not files:
        raise SystemExit(f"no corpus files (.txt, .txt.xz, ...) in {shared / 'corpus'}")
    return files


# --- the shared space ------------------------------------------------------------------------------

class SharedSpace:
    """Columns: the uncased teacher's ids that the cased vocabulary maps onto; column C = other."""

    def __init__(self, cased_tok, uncased_tok, uncased_width: int):
        self.vmap = build_vocab_map(cased_tok, uncased_tok, UNCASED)
        self.C = len(self.vmap.teacher_ids)
        self.uncased_tok = uncased_tok
        col = np.full(max(uncased_width, int(self.vmap.teacher_ids.max()) + 1), self.C, dtype=np.int64)
        col[self.vmap.teacher_ids] = np.arange(self.C)
        self.uncased_column = col  # uncased id -> column

    def columns_for(self, tokenizer, width: int) -> np.ndarray:
        """A model's vocabulary id -> column (C: other), through its own map onto the uncased ids."""
        to_uncased = build_vocab_map(tokenizer, self.uncased_tok, UNCASED).student_to_teacher
        out = np.full(width, self.C, dtype=np.int64)
        n = min(width, len(to_uncased))
        hit = to_uncased[:n] >= 0
        out[:n][hit] = self.uncased_column[to_uncased[:n][hit]]
        return out


def to_shared(logits: torch.Tensor, columns: torch.Tensor, size: int) -> torch.Tensor:
    """(k, V) logits -> (k, size + 1) probabilities in the shared space (T = 1)."""
    p = logits.float().softmax(-1)
    cols = columns[: p.shape[1]].unsqueeze(0).expand(p.shape[0], -1)
    return torch.zeros(p.shape[0], size + 1, device=p.device).scatter_add_(1, cols, p)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


def heldout_batches(files, views, args, passes: int) -> list:
    out = []
    for k in range(passes):
        cfg = StreamConfig(corpus=Corpus(files=tuple(files)), views=views, masking=MaskingConfig(),
                           batch_size=args.batch_size, seed=args.seed + k, heldout=args.heldout_docs)
        with BatchStream(cfg, "heldout") as stream:
            out += [(k, b) for b in stream]
    return out


def autocast(device):
    from contextlib import nullcontext

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# --- (a) the ceiling -------------------------------------------------------------------------------

@torch.inference_mode()
def teacher_shared(cased: MaskedLM, uncased: MaskedLM, batch, space_cols, C: int, device):
    """Both teachers' shared-space distributions at the positions both supervise, and the labels."""
    vb = batch.views[0]
    rows = vb.sup_student
    with autocast(device):
        last_c, _, full_c = cased.encode(batch.ids, batch.attention)
        logits_c = cased.logits_at(last_c, batch.masked_pos.index_select(0, rows), full_c)
        last_u, _, full_u = uncased.encode(vb.ids, vb.attention)
        logits_u = uncased.logits_at(last_u, vb.sup_pos, full_u)
    p_c = to_shared(logits_c, space_cols["cased"], C)
    p_u = to_shared(logits_u, space_cols["uncased"], C)
    label = space_cols["cased"][batch.labels.index_select(0, rows)]
    return p_c, p_u, label


def mixtures(p_c, p_u, tau: float | None) -> dict[str, torch.Tensor]:
    out = {CASED: p_c, UNCASED: p_u, "mean 1:1": (p_c + p_u) / 2, "mean 2:1 (cased)": (2 * p_c + p_u) / 3,
           "mean 1:2 (uncased)": (p_c + 2 * p_u) / 3}
    geo = (p_c.clamp_min(1e-12).log() + p_u.clamp_min(1e-12).log()) / 2
    out["geometric mean"] = geo.softmax(-1)
    if tau is not None:
        w = torch.softmax(torch.stack([-entropy(p_c), -entropy(p_u)], 1) / tau, 1)
        out[f"entropy-weighted (tau {tau:.2f})"] = w[:, :1] * p_c + w[:, 1:] * p_u
    return out


def ceiling(cased, uncased, batches, space_cols, C, device, n_boot: int, seed: int):
    """The ceiling table, the teachers' shared-space top-1 per batch, and the bootstrap row of
    every scored position (students are scored at the same positions, in the same order)."""
    # Pass 1: calibrate tau as the distill strategy does (mean entropy gap, shared space).
    gaps = []
    for _, cpu_batch in track(batches, description="ceiling: calibrating tau", transient=True):
        p_c, p_u, _ = teacher_shared(cased, uncased, cpu_batch.to(device), space_cols, C, device)
        gaps.append((entropy(p_c) - entropy(p_u)).abs().cpu())
    gap = torch.cat(gaps)
    tau = float(gap.mean()) if len(gap) else 1.0
    # Pass 2: every teacher and mix at the same positions.
    correct: dict[str, list] = {}
    nll: dict[str, list] = {}
    rows_id, oracle, agree, out_of_map, tops = [], [], [], {CASED: [], UNCASED: []}, []
    unmapped_label = total = 0
    for b, (k, cpu_batch) in enumerate(track(batches, description="ceiling: teachers and mixes", transient=True)):
        batch = cpu_batch.to(device)
        p_c, p_u, label = teacher_shared(cased, uncased, batch, space_cols, C, device)
        tops.append((p_c.argmax(-1).cpu(), p_u.argmax(-1).cpu()))
        out_of_map[CASED].append(p_c[:, C].cpu())
        out_of_map[UNCASED].append(p_u[:, C].cpu())
        keep = label < C  # the true token has a column (else it is "other": no exact answer to score)
        total += int(label.numel())
        unmapped_label += int((~keep).sum())
        lab = label[keep]
        row = (batch.masked_pos.index_select(0, batch.views[0].sup_student) // batch.ids.shape[1])[keep]
        rows_id.append((row + 10**6 * (k * 10**4 + b)).cpu())
        for name, p in mixtures(p_c[keep], p_u[keep], tau).items():
            correct.setdefault(name, []).append((p.argmax(-1) == lab).cpu())
            nll.setdefault(name, []).append(-p.gather(1, lab[:, None]).squeeze(1).clamp_min(1e-12).log().cpu())
        oracle.append(((p_c[keep].argmax(-1) == lab) | (p_u[keep].argmax(-1) == lab)).cpu())
        agree.append((p_c.argmax(-1) == p_u.argmax(-1)).cpu())
    rows_all = torch.cat(rows_id).numpy()
    acc = {n: torch.cat(v).float().numpy() for n, v in correct.items()}
    nlls = {n: torch.cat(v).double().numpy() for n, v in nll.items()}
    best = max((CASED, UNCASED), key=lambda n: acc[n].mean())
    table = {}
    for name in acc:
        entry = {"accuracy": float(acc[name].mean()), "nll": float(nlls[name].mean())}
        if name != best:
            entry["accuracy_minus_best_single"] = paired_interval(acc[name], acc[best], rows_all, n_boot, seed)
            entry["nll_minus_best_single"] = paired_interval(nlls[name], nlls[best], rows_all, n_boot, seed)
        table[name] = entry
    result = {"positions": int(len(rows_all)), "positions_label_outside_shared_space": unmapped_label,
              "positions_both_supervise": total, "best_single_teacher": best, "entropy_temperature": tau,
              "oracle_accuracy": float(torch.cat(oracle).float().mean()),
              "teacher_top1_agreement": float(torch.cat(agree).float().mean()),
              "out_of_map_mass": {n: float(torch.cat(v).mean()) for n, v in out_of_map.items()},
              "models": table}
    result["ensemble_beats_best_single"] = {
        n: {"accuracy": e["accuracy_minus_best_single"]["low"] > 0, "nll": e["nll_minus_best_single"]["high"] < 0}
        for n, e in table.items() if n not in (CASED, UNCASED)}
    return result, tops, rows_all


def paired_interval(a: np.ndarray, b: np.ndarray, rows: np.ndarray, n_boot: int, seed: int) -> dict:
    """Mean of a - b with a 95 % percentile interval, resampling whole rows (positions in one row
    share context, so they are not independent)."""
    diff = a - b
    uniq, inv = np.unique(rows, return_inverse=True)
    sums = np.bincount(inv, weights=diff, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    boot = sums[draws].sum(1) / counts[draws].sum(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high)}


# --- (b) students ----------------------------------------------------------------------------------

@torch.inference_mode()
def evaluate_student(model, tokenizer, kind: str, batches, space: SharedSpace, space_cols, tops,
                     device) -> tuple[dict, dict]:
    """Own-tokenization MLM accuracy on every masked piece; shared-space accuracy, NLL and agreement
    at the ceiling's positions (those whose true token has a column)."""
    lm = MaskedLM(model.to(device).eval())
    cols = torch.as_tensor(space.columns_for(tokenizer, model.get_output_embeddings().weight.shape[0]),
                           device=device)
    own_ok = own_n = 0
    ok, nll, ag_c, ag_u = [], [], [], []
    for b, (_, cpu_batch) in enumerate(track(batches, description="evaluating the student", transient=True)):
        batch = cpu_batch.to(device)
        vb = batch.views[0]
        with autocast(device):
            if kind == CASED:
                last, _, full = lm.encode(batch.ids, batch.attention)
                masked = lm.logits_at(last, batch.masked_pos, full).float()
                labels = batch.labels
                sup = masked.index_select(0, vb.sup_student)
            else:
                last, _, full = lm.encode(vb.ids, vb.attention)
                masked = lm.logits_at(last, vb.masked_pos, full).float()
                labels = vb.labels
                sup = lm.logits_at(last, vb.sup_pos, full).float()
        own_ok += int((masked.argmax(-1) == labels).sum())
        own_n += int(labels.numel())
        p = to_shared(sup, cols, space.C)
        label = space_cols["cased"][batch.labels.index_select(0, vb.sup_student)]
        keep = label < space.C
        top = p.argmax(-1)
        ag_c.append((top == tops[b][0].to(device)).cpu())
        ag_u.append((top == tops[b][1].to(device)).cpu())
        ok.append((top[keep] == label[keep]).cpu())
        nll.append(-p[keep].gather(1, label[keep][:, None]).squeeze(1).clamp_min(1e-12).log().cpu())
    model.to("cpu")
    acc = torch.cat(ok).float().numpy()
    nlls = torch.cat(nll).double().numpy()
    return ({"own_mlm_accuracy": own_ok / max(own_n, 1), "shared_accuracy": float(acc.mean()),
             "shared_nll": float(nlls.mean()), "agreement": {CASED: float(torch.cat(ag_c).float().mean()),
                                                              UNCASED: float(torch.cat(ag_u).float().mean())}},
            {"acc": acc, "nll": nlls})


def student_spec(name: str, args) -> tuple[str, dict]:
    """(input model, distill parameters) of a variant, or with --budgets of a curve student."""
    return (CURVE_STUDENTS if args.budgets else VARIANTS)[name]


def curve_schedule(args) -> dict:
    """The curve's distill parameters beyond a student's own: a constant rate after the warm-up, and
    a snapshot at every budget below the largest (that one is the stage's output)."""
    steps = args.train_steps * args.budgets[-1]
    warmup = args.warmup_steps if args.warmup_steps is not None else round(0.05 * args.train_steps)
    if not 0 <= warmup < steps:
        raise SystemExit(f"--warmup-steps {warmup} must be at least 0 and below the run's {steps} steps")
    return {"lr_schedule": "constant", "warmup_ratio": warmup / steps,
            "snapshot_steps": [args.train_steps * b for b in args.budgets[:-1]]}


def run_variant(name: str, args, refs: dict, work: Path, device) -> tuple[object, dict]:
    from rich.console import Console

    from compresso.strategies.distill import DistillStrategy
    from compresso.strategy import RunContext

    input_name, extra = student_spec(name, args)
    extra = dict(extra)
    if args.budgets:
        steps = args.train_steps * args.budgets[-1]
        extra.update(curve_schedule(args))
        checkpoint_every = args.checkpoint_every or max(1, args.train_steps // 4)
    else:
        steps = args.train_steps * extra.pop("steps_factor", 1)
        checkpoint_every = 10**9
    bundle = refs[input_name].load()
    n_layers = bundle.model.config.num_hidden_layers
    params = DistillStrategy.Params(
        corpus=corpus_files(args.shared), heldout_documents=args.heldout_docs, seq_len=args.seq_len,
        batch_size=args.batch_size, max_steps=steps, lr=5e-4, checkpoint_every=checkpoint_every,
        log_every=max(1, steps // 10), layers=default_layers(n_layers, max(1, n_layers // 2)),
        max_documents=args.max_documents, num_workers=args.num_workers, **extra)
    stage = work / name / "stage"
    stage.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(stage_dir=stage, work_dir=work / name / "work", device=device, seed=args.seed,
                     teachers=refs, base_dir=work, console=Console(stderr=True))
    start = time.perf_counter()
    out = DistillStrategy(params).apply(bundle, ctx)
    report = json.loads((stage / "distill.json").read_text())
    info = {"input": input_name, "params": dict(student_spec(name, args)[1]), "steps": steps,
            "seconds": time.perf_counter() - start,
            "tokens": report["training"]["tokens"], "train_seconds": report["training"]["seconds"],
            "tokens_per_second": report["training"]["tokens_per_second"],
            "final_losses": report["training"]["final_losses"],
            "entropy_calibration": report.get("entropy_calibration"), "alignment": report.get("alignment"),
            "teachers": {n: {k: t.get(k) for k in ("weight", "loss_share", "supervised_fraction")}
                         | {"heldout": t.get("heldout")} for n, t in report["teachers"].items()}}
    return out, info


def save_student(bundle, dest: Path, variant_json: str) -> Path:
    """``bundle`` as a plain save_pretrained folder ``dest`` with its ``variant.json``, written under
    a temporary name and renamed: a folder appears complete or not at all."""
    import shutil

    from compresso.models import save_bundle

    tmp = dest.with_name(dest.name + ".partial")
    save_bundle(bundle, tmp)
    (tmp / "variant.json").write_text(variant_json)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return dest


def train_one(args, refs: dict) -> None:
    """The body of one variant's process: distil, then save the student where the study reads it."""
    name = args.train_variant
    out, info = run_variant(name, args, refs, args.out / "work", torch.device(args.device))
    save_student(out, args.out / "students" / name, json.dumps(info, indent=2) + "\n")


def save_fp16_copy(bundle, folder: Path, out: Path) -> Path:
    """``OUT/students-fp16/NAME``: the student in float16, with its variant.json. Every trained
    student gets one, by the same name."""
    bundle.model.half()
    return save_student(bundle, out / "students-fp16" / folder.name, (folder / "variant.json").read_text())


def train_variants(names: list[str], args, t0: float, console) -> tuple[list[str], dict]:
    """Run each variant's ``train_one`` in a process of its own, ``--jobs`` at a time, within
    ``--max-seconds``. Returns the variants that finished and {variant: why skipped}."""
    # The same arguments as this run (from main's argv when called as a function), plus --train-variant.
    base = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if args.argv is None else args.argv)]
    (args.out / "students").mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    queue, running, done, skipped = deque(names), {}, [], {}
    while queue or running:
        while queue and len(running) < max(1, args.jobs):
            name = queue.popleft()
            if (args.out / "students" / name / "variant.json").exists():
                done.append(name)  # finished by an earlier, interrupted run: resume
                continue
            if time.perf_counter() - t0 > args.max_seconds:
                skipped[name] = f"time budget: not started within {args.max_seconds:.0f} s"
                continue
            log = open(args.out / "logs" / f"{name}.log", "a")  # a resumed run's log follows the first's
            console.print(f"[bold]student {name}[/bold] (process, log {log.name})")
            running[name] = (subprocess.Popen([*base, "--train-variant", name], stdout=log,
                                              stderr=subprocess.STDOUT), log)
        time.sleep(0.5)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is None and time.perf_counter() - t0 > args.max_seconds:
                proc.terminate()
                proc.wait()
                skipped[name] = f"time budget: stopped at {args.max_seconds:.0f} s"
            elif proc.poll() is None:
                continue
            elif proc.returncode == 0:
                done.append(name)
            else:
                skipped[name] = f"failed with exit code {proc.returncode}; see logs/{name}.log"
            log.close()
            del running[name]
    return [n for n in names if n in done], skipped


# --- (c) the token-budget curve --------------------------------------------------------------------

def snapshot_folder(name: str, step: int, args) -> Path:
    return args.out / "work" / name / "stage" / "snapshots" / f"step-{step}"


def curve_point(name: str, budget: int, args) -> tuple[Path, int] | None:
    """(folder, tokens) of the student of ``name`` at ``budget``: a snapshot of its run, or the
    run's output when the run ended there; None while the run has not reached it."""
    step = args.train_steps * budget
    snap = snapshot_folder(name, step, args)
    if (snap / "snapshot.json").is_file():
        return snap, json.loads((snap / "snapshot.json").read_text())["tokens"]
    variant = args.out / "students" / name / "variant.json"
    if variant.is_file():
        info = json.loads(variant.read_text())
        if info["steps"] == step:
            return variant.parent, info["tokens"]
    return None


def extend_shorter_runs(names: list[str], args, console) -> None:
    """A student whose finished run is shorter than the largest budget: its output becomes the
    snapshot at its step, so that training resumes from its last checkpoint to the new largest
    budget (a constant-rate run resumes into a longer one) and the curve keeps that point."""
    import shutil

    for name in names:
        out = args.out / "students" / name
        if not (out / "variant.json").is_file():
            continue
        info = json.loads((out / "variant.json").read_text())
        if info["steps"] >= args.train_steps * args.budgets[-1]:
            continue
        snap = snapshot_folder(name, info["steps"], args)
        if (snap / "snapshot.json").is_file():
            shutil.rmtree(out)
        else:
            snap.parent.mkdir(parents=True, exist_ok=True)
            (out / "snapshot.json").write_text(json.dumps({"step": info["steps"], "tokens": info["tokens"]},
                                                          indent=2) + "\n")
            out.replace(snap)
        console.print(f"{name}: its run ended at step {info['steps']}; continuing it to "
                      f"{args.train_steps * args.budgets[-1]} (that student kept as {snap})")


def scored_once(folder: Path, cache: Path, key: dict, score) -> tuple[dict, dict]:
    """``score(folder)`` -> (metrics, per-position arrays), kept in ``cache``.json/.npz and reused
    while ``key`` (the held-out positions and the saved weights) is unchanged."""
    meta, arrays = cache.with_suffix(".json"), cache.with_suffix(".npz")
    if meta.is_file() and arrays.is_file():
        kept = json.loads(meta.read_text())
        if kept.get("key") == key:
            with np.load(arrays) as z:
                return kept["metrics"], {k: z[k] for k in z.files}
    metrics, per_pos = score(folder)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(arrays, **per_pos)
    meta.write_text(json.dumps({"key": key, "metrics": metrics}, indent=2) + "\n")  # written last: the marker
    return metrics, per_pos


def budget_curve(names: list[str], args, batches, space, space_cols, tops, rows_all, ceil, device,
                 console) -> dict:
    """Every curve student at every budget it has reached, scored at the ceiling's positions, with
    paired intervals against ``CURVE_REFERENCE`` at the same budget."""
    from compresso.models import load_bundle

    heldout_key = {k: getattr(args, k) for k in ("heldout_docs", "mask_passes", "seq_len", "batch_size", "seed")}
    heldout_key["positions"] = int(len(rows_all))
    students, per_pos, missing = {}, {}, {}
    for name in names:
        input_name, extra = CURVE_STUDENTS[name]
        entry = {"input": input_name, "params": extra, "budgets": {}}
        variant = args.out / "students" / name / "variant.json"
        if variant.is_file() and json.loads(variant.read_text())["steps"] == args.train_steps * args.budgets[-1]:
            info = json.loads(variant.read_text())
            entry["training"] = {k: info.get(k) for k in ("steps", "tokens", "train_seconds", "tokens_per_second",
                                                         "final_losses", "teachers")}
        for budget in args.budgets:
            point = curve_point(name, budget, args)
            if point is None:
                missing.setdefault(name, []).append(budget)
                continue
            folder, tokens = point
            weights = folder / "model.safetensors"
            key = {**heldout_key, "weights_mtime_ns": weights.stat().st_mtime_ns, "weights_bytes": weights.stat().st_size}

            def score(path, kind=input_name):
                bundle = load_bundle(path)
                console.print(f"scoring {name} at {budget}x ({path})")
                return evaluate_student(bundle.model, bundle.tokenizer, kind, batches, space, space_cols, tops, device)

            metrics, arrays = scored_once(folder, args.out / "curve" / name / f"step-{args.train_steps * budget}",
                                          key, score)
            entry["budgets"][str(budget)] = {"steps": args.train_steps * budget, "tokens": tokens, **metrics,
                                             "saved": str(folder)}
            per_pos[(name, budget)] = arrays
        students[name] = entry
    for name, entry in students.items():
        if name == CURVE_REFERENCE:
            continue
        for b, e in entry["budgets"].items():
            ref = per_pos.get((CURVE_REFERENCE, int(b)))
            if ref is None:
                continue
            mine = per_pos[(name, int(b))]
            e[f"shared_accuracy_minus_{CURVE_REFERENCE}"] = paired_interval(mine["acc"], ref["acc"], rows_all,
                                                                             args.bootstrap, args.seed)
            e[f"shared_nll_minus_{CURVE_REFERENCE}"] = paired_interval(mine["nll"], ref["nll"], rows_all,
                                                                        args.bootstrap, args.seed)
    teachers = {n: {"accuracy": e["accuracy"], "nll": e["nll"]} for n, e in ceil["models"].items()}
    return {"budgets": args.budgets, "steps_per_budget": args.train_steps,
            "nominal_tokens_per_budget": args.train_steps * args.batch_size * args.seq_len,
            "schedule": {"lr": 5e-4, "warmup_steps": round(curve_schedule(args)["warmup_ratio"]
                                                           * args.train_steps * args.budgets[-1]), "after_warmup": "constant",
                         "one_run_per_student": True, "max_steps": args.train_steps * args.budgets[-1],
                         "snapshot_steps": curve_schedule(args)["snapshot_steps"]},
            "reference": CURVE_REFERENCE, "students": students, "teachers_and_mixes": teachers,
            "missing_budgets": missing}


def plot_curve(curve: dict, path: Path, title: str) -> Path:
    """Shared-space accuracy against tokens (students; teachers and the mixes as horizontal lines),
    and each two-teacher student's paired difference to the reference with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    styles = {CASED: ("tab:blue", "-"), UNCASED: ("tab:orange", "-"), "mean 2:1 (cased)": ("tab:green", ":"),
              "geometric mean": ("tab:purple", ":")}
    for name, (color, ls) in styles.items():
        t = curve["teachers_and_mixes"].get(name)
        if t is not None:
            top.axhline(100 * t["accuracy"], color=color, ls=ls, lw=1,
                        label=f"{name} ({'teacher' if name in (CASED, UNCASED) else 'teacher mix'})")
    looks = iter(zip("osD^v", ("tab:red", "tab:cyan", "tab:olive", "tab:brown", "tab:pink")))
    ref = curve["reference"]
    ticks = set()
    for name, entry in curve["students"].items():
        pts = sorted((e["tokens"], e["shared_accuracy"]) for e in entry["budgets"].values())
        if not pts:
            continue
        m, color = next(looks)
        ticks.update(t / 1e6 for t, _ in pts)
        top.plot([t / 1e6 for t, _ in pts], [100 * a for _, a in pts], marker=m, color=color, label=f"student {name}")
        diffs = sorted((e["tokens"], e[f"shared_accuracy_minus_{ref}"]) for e in entry["budgets"].values()
                       if f"shared_accuracy_minus_{ref}" in e)
        if diffs:
            x = [t / 1e6 for t, _ in diffs]
            mean = [100 * d["mean"] for _, d in diffs]
            err = [[100 * (d["mean"] - d["low"]) for _, d in diffs], [100 * (d["high"] - d["mean"]) for _, d in diffs]]
            bottom.errorbar(x, mean, yerr=err, marker=m, color=color, capsize=3, label=f"{name} − {ref}")
    top.set_xscale("log", base=2)
    if ticks:  # one tick per budget (the reference student's token counts), in plain numbers
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

        ref_ticks = sorted(e["tokens"] / 1e6 for e in curve["students"].get(ref, {}).get("budgets", {}).values())
        bottom.xaxis.set_major_locator(FixedLocator(ref_ticks or sorted(ticks)))
        bottom.xaxis.set_minor_locator(NullLocator())
        bottom.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    top.set_ylabel("held-out MLM accuracy, shared space (%)")
    top.set_title(title, fontsize=9)
    top.legend(fontsize=7, loc="lower right")
    bottom.axhline(0, color="black", lw=0.8)
    bottom.set_ylabel(f"Δ accuracy vs {ref} (points, 95% CI)")
    bottom.set_xlabel("training tokens per student (millions)")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- main ------------------------------------------------------------------------------------------

def main(argv=None) -> dict | None:
    args = parse_args(argv)
    args.argv = None if argv is None else list(argv)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    from rich.console import Console
    from rich.table import Table

    from compresso.strategy import TeacherRef

    console = Console(stderr=True)
    env = gpu_info(device)
    paths = {CASED: args.shared / "teachers" / args.cased, UNCASED: args.shared / "teachers" / args.uncased}
    for p in paths.values():
        if not (p / "config.json").exists():
            raise SystemExit(f"teacher folder {p} has no config.json")
    refs = {n: TeacherRef(n, str(p), None, False) for n, p in paths.items()}
    if args.train_variant:
        train_one(args, refs)
        return None
    bundles = {n: r.load() for n, r in refs.items()}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lms = {n: MaskedLM(copy.deepcopy(b.model).to(device=device, dtype=dtype).eval())
           for n, b in bundles.items()}
    views = [ViewSpec.from_tokenizer(bundles[CASED].tokenizer, CASED, args.seq_len),
             ViewSpec.from_tokenizer(bundles[UNCASED].tokenizer, UNCASED, args.seq_len)]
    space = SharedSpace(bundles[CASED].tokenizer, bundles[UNCASED].tokenizer,
                        bundles[UNCASED].model.get_output_embeddings().weight.shape[0])
    space_cols = {
        "cased": torch.as_tensor(space.columns_for(bundles[CASED].tokenizer,
                                                   bundles[CASED].model.get_output_embeddings().weight.shape[0]),
                                 device=device),
        "uncased": torch.as_tensor(space.uncased_column, device=device)}
    files = corpus_files(args.shared)
    console.print(f"held-out batches: {args.heldout_docs} documents x {args.mask_passes} maskings")
    batches = heldout_batches(files, views, args, args.mask_passes)
    t_ceiling = time.perf_counter()
    ceil, tops, rows_all = ceiling(lms[CASED], lms[UNCASED], batches, space_cols, space.C, device,
                                   args.bootstrap, args.seed)
    ceil["seconds"] = time.perf_counter() - t_ceiling
    ceil["shared_space"] = {"columns": space.C, **space.vmap.report()}
    del lms
    result = {"env": env, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "heldout_note": "the held-out documents were never distilled on; the fixture teachers were pretrained "
                              "on the whole corpus, these documents included",
              "ceiling": ceil, "students": {}, "skipped": {}}

    if args.budgets:
        names = [v for v in args.variants.split(",") if v]
        extend_shorter_runs(names, args, console)
        trained, result["skipped"] = train_variants(names, args, t0, console)
        curve = budget_curve(names, args, batches, space, space_cols, tops, rows_all, ceil, device, console)
        result["curve"] = curve
        if args.fp16_copies:
            from compresso.models import load_bundle

            for name in trained:
                folder = args.out / "students" / name
                curve["students"][name]["saved_fp16"] = str(save_fp16_copy(load_bundle(folder), folder, args.out))
        if device.type == "cuda":
            env["clocks_end"] = nvidia_smi()
        result["wall_seconds"] = time.perf_counter() - t0
        (args.out / "budget_curve.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_curve(curve, args.out / "budget_curve.png",
                   f"{args.train_steps} steps x {args.batch_size} x {args.seq_len} per budget; one constant-rate run "
                   f"per student, {env.get('gpu', env['device'])}")
        print_curve(curve, result["skipped"], args)
        return result
    if args.train_steps > 0:
        from compresso.models import load_bundle

        evals = {}
        trained, result["skipped"] = train_variants([v for v in args.variants.split(",") if v], args, t0, console)
        for name in trained:
            folder = args.out / "students" / name
            info = json.loads((folder / "variant.json").read_text())
            bundle = load_bundle(folder)
            metrics, per_pos = evaluate_student(bundle.model, bundle.tokenizer, VARIANTS[name][0], batches, space,
                                                space_cols, tops, device)
            evals[name] = per_pos
            result["students"][name] = {**info, **metrics, "saved": str(folder)}
            if args.fp16_copies:
                result["students"][name]["saved_fp16"] = str(save_fp16_copy(bundle, folder, args.out))
            del bundle
        # Paired intervals against the best single-teacher student trained on the same token budget
        # (a 2x DistilMulti is compared with a 2x Distil-BERT when the run has one, not with a 1x one).
        singles = {}
        for name in evals:
            e = result["students"][name]
            if len(e["teachers"]) == 1:
                singles.setdefault(e["steps"], []).append(name)
        best_by_steps = {steps: max(names, key=lambda n: result["students"][n]["shared_accuracy"])
                         for steps, names in singles.items()}
        if best_by_steps:
            result["best_single_student_by_steps"] = {str(k): v for k, v in sorted(best_by_steps.items())}
            first = min(best_by_steps)
            result["best_single_student"] = best_by_steps[first]  # the shortest budget's, as before
        for name, per_pos in evals.items():
            best = best_by_steps.get(result["students"][name]["steps"])
            if best is not None and name != best:
                result["students"][name]["best_single"] = best
                result["students"][name]["shared_accuracy_minus_best_single"] = paired_interval(
                    per_pos["acc"], evals[best]["acc"], rows_all, args.bootstrap, args.seed)
                result["students"][name]["shared_nll_minus_best_single"] = paired_interval(
                    per_pos["nll"], evals[best]["nll"], rows_all, args.bootstrap, args.seed)
    if device.type == "cuda":
        env["clocks_end"] = nvidia_smi()
    result["wall_seconds"] = time.perf_counter() - t0
    (args.out / "ensemble_study.json").write_text(json.dumps(result, indent=2) + "\n")

    out = Console(width=170)
    t = Table(title=f"Ceiling: {ceil['positions']:,} held-out masked positions both teachers supervise "
                    f"(shared space, {space.C:,} columns + other)")
    for col in ("model", "accuracy", "Δ acc vs best [95% CI]", "NLL", "Δ NLL vs best [95% CI]"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, e in ceil["models"].items():
        da, dn = e.get("accuracy_minus_best_single"), e.get("nll_minus_best_single")
        t.add_row(name, f"{100 * e['accuracy']:.2f}%",
                  "–" if da is None else f"{100 * da['mean']:+.2f} [{100 * da['low']:+.2f}, {100 * da['high']:+.2f}]",
                  f"{e['nll']:.4f}",
                  "–" if dn is None else f"{dn['mean']:+.4f} [{dn['low']:+.4f}, {dn['high']:+.4f}]")
    t.add_row("oracle (either right)", f"{100 * ceil['oracle_accuracy']:.2f}%", "", "", "")
    out.print(t)
    if result["students"]:
        s = Table(title=f"Students: {args.train_steps} steps x {args.batch_size} x {args.seq_len} tokens each")
        for col in ("student", "own MLM acc", "shared acc", "Δ vs best single, same budget [95% CI]", "shared NLL",
                    f"agree {CASED}", f"agree {UNCASED}", "s"):
            s.add_column(col, justify="left" if col == "student" else "right")
        for name, e in result["students"].items():
            d = e.get("shared_accuracy_minus_best_single")
            s.add_row(name, f"{100 * e['own_mlm_accuracy']:.2f}%", f"{100 * e['shared_accuracy']:.2f}%",
                      "–" if d is None else f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]",
                      f"{e['shared_nll']:.4f}", f"{100 * e['agreement'][CASED]:.1f}%",
                      f"{100 * e['agreement'][UNCASED]:.1f}%", f"{e['seconds']:.0f}")
        out.print(s)
    for name, why in result["skipped"].items():
        out.print(f"skipped {name}: {why}")
    out.print(f"wall time {result['wall_seconds']:.0f} s; JSON: {args.out / 'ensemble_study.json'}")
    return result


def print_curve(curve: dict, skipped: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(width=170)
    ref = curve["reference"]
    t = Table(title=f"Budget curve: {args.train_steps} steps per budget x {args.batch_size} x {args.seq_len} "
                    "tokens, one constant-rate run per student (shared space, held-out positions)")
    for col in ("student", "budget", "tokens", "accuracy", f"Δ acc vs {ref} [95% CI]", "NLL",
                f"Δ NLL vs {ref} [95% CI]"):
        t.add_column(col, justify="left" if col == "student" else "right")
    for name, entry in curve["students"].items():
        for b, e in entry["budgets"].items():
            da, dn = e.get(f"shared_accuracy_minus_{ref}"), e.get(f"shared_nll_minus_{ref}")
            t.add_row(name, f"{b}x", f"{e['tokens']:,}", f"{100 * e['shared_accuracy']:.2f}%",
                      "–" if da is None else f"{100 * da['mean']:+.2f} [{100 * da['low']:+.2f}, {100 * da['high']:+.2f}]",
                      f"{e['shared_nll']:.4f}",
                      "–" if dn is None else f"{dn['mean']:+.4f} [{dn['low']:+.4f}, {dn['high']:+.4f}]")
    for name, e in curve["teachers_and_mixes"].items():
        t.add_row(name, "", "", f"{100 * e['accuracy']:.2f}%", "", f"{e['nll']:.4f}", "")
    out.print(t)
    for name, budgets in curve["missing_budgets"].items():
        out.print(f"not reached yet: {name} at {', '.join(f'{b}x' for b in budgets)} (a rerun resumes)")
    for name, why in skipped.items():
        out.print(f"skipped {name}: {why}")
    out.print(f"JSON: {args.out / 'budget_curve.json'}; plot: {args.out / 'budget_curve.png'}")


if __name__ == "__main__":
    main()
