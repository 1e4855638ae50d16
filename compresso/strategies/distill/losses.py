"""Distillation losses for one batch, any number of teachers, same or different tokenizers.

    total = alpha_ce * T^2 * KL(teacher || student at T)     on masked positions a teacher supervises
          + alpha_mlm * CE(student, true token)              on every masked position
          + alpha_cos * (1 - cos(student, teacher))          last hidden states: per token (same
                                                             tokenizer) or mean-pooled per word
          + alpha_hidden_mse * MSE(student_i, teacher_m(i))  optional intermediate layers, same pooling

Teachers with another tokenizer are compared on the vocabulary intersection (``vocab.py``):
the student's probabilities are pushed forward onto the teacher ids they map to (many-to-one,
summed in log space) and both distributions are renormalised over that intersection.

Several teachers: at each masked position the teachers that supervise it share weight 1 in
proportion to their recipe weights (``static``) or to weight * exp(-entropy / tau)
(``entropy``: more confident teachers count more). Hidden-state losses use the recipe weights.
Nothing here reads a value back to the host, so a step runs without synchronising.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from compresso.strategies.distill.data import Batch
from compresso.strategies.distill.modeling import MaskedLM, StudentModule
from compresso.strategies.distill.vocab import VocabMap


@dataclass
class LossConfig:
    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    alpha_mse: float = 0.0
    weighting: str = "static"
    entropy_temperature: float = 1.0


@dataclass
class TeacherLink:
    """One teacher as the losses see it."""

    name: str
    lm: MaskedLM
    weight: float  # normalised over the teachers
    view: int  # 0: the student's tokenizer (fast path); v >= 1: Batch.views[v - 1]
    vocab: VocabMap | None = None
    shared_vocab: int | None = None  # fast path: compare the first N logits (output layers may be padded)
    cos_projection: str | None = None  # key into StudentModule.projections
    layer_map: dict[int, int] = field(default_factory=dict)  # student hidden index -> teacher hidden index
    mse_projections: dict[int, str] = field(default_factory=dict)
    # Device copies of the vocabulary map, set by ``to(device)``.
    student_ids: torch.Tensor | None = None
    columns: torch.Tensor | None = None
    teacher_ids: torch.Tensor | None = None
    student_to_teacher: torch.Tensor | None = None
    weight_t: torch.Tensor | None = None

    def to(self, device: torch.device) -> "TeacherLink":
        self.weight_t = torch.tensor(self.weight, device=device)  # made once: no host copy per step
        if self.vocab is not None:
            self.student_ids = torch.as_tensor(self.vocab.student_ids, device=device)
            self.columns = torch.as_tensor(self.vocab.columns, device=device)
            self.teacher_ids = torch.as_tensor(self.vocab.teacher_ids, device=device)
            self.student_to_teacher = torch.as_tensor(self.vocab.student_to_teacher, device=device)
        return self

    @property
    def cross(self) -> bool:
        return self.view > 0


@dataclass
class TeacherTargets:
    log_p: torch.Tensor  # (k, C) teacher log-probs at temperature T (full vocab or intersection)
    sup_student: torch.Tensor  # (k,) index into the student's masked positions
    entropy: torch.Tensor | None  # (k,) full-vocabulary entropy at T=1 (entropy weighting)
    hidden: torch.Tensor | None  # (m, H_t) last hidden: per token (fast) or per word (cross)
    layers: dict[int, torch.Tensor]  # student hidden index -> teacher target (same layout as hidden)
    top1: torch.Tensor  # (k,) teacher's top-1 id (full vocabulary) at supervised positions


def pool_words(hidden: torch.Tensor, pos: torch.Tensor, index: torch.Tensor, n_words: int) -> torch.Tensor:
    """Mean of token states per word: (B, L, H) -> (n_words, H)."""
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pos).float()
    sums = torch.zeros(n_words, flat.shape[1], device=flat.device, dtype=flat.dtype).index_add_(0, index, flat)
    counts = torch.zeros(n_words, device=flat.device, dtype=flat.dtype).index_add_(
        0, index, torch.ones_like(index, dtype=flat.dtype))
    return sums / counts.clamp_min(1).unsqueeze(1)


def _gather(hidden: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, pos).float()


@torch.inference_mode()
def _teacher_pass(link: TeacherLink, batch: Batch, cfg: LossConfig, need_hidden: bool):
    if link.cross:
        vb = batch.views[link.view - 1]
        ids, att, pos, sup_student = vb.ids, vb.attention, vb.sup_pos, vb.sup_student
    else:
        ids, att, pos = batch.ids, batch.attention, batch.masked_pos
        sup_student = torch.arange(batch.n_masked, device=ids.device)
    all_hidden = bool(link.layer_map)
    last, hidden_states, full = link.lm.encode(ids, att, all_hidden)
    logits = link.lm.logits_at(last, pos, full).float()
    top1 = logits.argmax(-1)
    entropy = None
    if cfg.weighting == "entropy":
        logp1 = logits.log_softmax(-1)
        entropy = -(logp1.exp() * logp1).sum(-1)
    if link.cross:
        logits = logits.index_select(1, link.teacher_ids)
    elif link.shared_vocab is not None:
        logits = logits[:, : link.shared_vocab]
    log_p = (logits / cfg.temperature).log_softmax(-1)
    hidden, layers = None, {}
    if need_hidden:
        if link.cross:
            vb = batch.views[link.view - 1]
            hidden = pool_words(last, vb.word_pos, vb.word_index, batch.n_words)
            layers = {s: pool_words(hidden_states[t], vb.word_pos, vb.word_index, batch.n_words)
                      for s, t in link.layer_map.items()}
        else:
            hidden = _gather(last, batch.token_pos)
            layers = {s: _gather(hidden_states[t], batch.token_pos) for s, t in link.layer_map.items()}
    return log_p, sup_student, entropy, hidden, layers, top1


def teacher_targets(link: TeacherLink, batch: Batch, cfg: LossConfig, need_hidden: bool) -> TeacherTargets:
    """Run a teacher (inference mode, its own dtype) and keep only what the losses need."""
    log_p, sup, entropy, hidden, layers, top1 = _teacher_pass(link, batch, cfg, need_hidden)
    # Inference tensors cannot be saved for backward; these clones are small (masked rows, words).
    return TeacherTargets(log_p=log_p.clone(), sup_student=sup.clone(),
                          entropy=None if entropy is None else entropy.clone(),
                          hidden=None if hidden is None else hidden.clone(),
                          layers={k: v.clone() for k, v in layers.items()}, top1=top1.clone())


def student_log_q(logits: torch.Tensor, link: TeacherLink, temperature: float) -> torch.Tensor:
    """Student log-probs at T in the teacher's target space (full vocab, or pushed onto the intersection)."""
    if not link.cross:
        if link.shared_vocab is not None:
            logits = logits[:, : link.shared_vocab]
        return (logits / temperature).log_softmax(-1)
    log_q = (logits / temperature).log_softmax(-1)
    mapped = log_q.index_select(1, link.student_ids)  # (k, M)
    k, n_cols = mapped.shape[0], link.teacher_ids.shape[0]
    cols = link.columns.unsqueeze(0).expand(k, -1)
    # Grouped log-sum-exp over the student ids that share a teacher id, shifted per column for
    # exactness (a detached shift does not change the gradient).
    col_max = torch.full((k, n_cols), float("-inf"), device=mapped.device, dtype=mapped.dtype)
    col_max = col_max.scatter_reduce(1, cols, mapped.detach(), reduce="amax", include_self=True)
    shifted = (mapped - col_max.gather(1, cols)).exp()
    mass = torch.zeros(k, n_cols, device=mapped.device, dtype=mapped.dtype).scatter_add(1, cols, shifted)
    log_mass = mass.log() + col_max
    return log_mass - log_mass.logsumexp(-1, keepdim=True)


def kl_per_position(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@dataclass
class StepLosses:
    total: torch.Tensor
    parts: torch.Tensor  # [ce, mlm, cos, mse] (unweighted by alpha)
    contributions: torch.Tensor  # per teacher, its weighted share of the teacher-dependent loss
    student_logits: torch.Tensor
    targets: list[TeacherTargets]


def compute_losses(student: torch.nn.Module, links: list[TeacherLink], batch: Batch, cfg: LossConfig,
                   autocast) -> StepLosses:
    """All losses of one micro-batch. ``student`` is the (possibly DDP-wrapped) StudentModule."""
    need_hidden = cfg.alpha_cos > 0
    need_layers = cfg.alpha_mse > 0
    with autocast():
        targets = [teacher_targets(link, batch, cfg, need_hidden or need_layers) for link in links]
        last, hidden_states, logits = student(batch.ids, batch.attention, batch.masked_pos, need_layers)
    module: StudentModule = getattr(student, "module", student)
    device = logits.device
    logits = logits.float()
    n = batch.n_masked
    zero = torch.zeros((), device=device)

    mlm = F.cross_entropy(logits, batch.labels) if n else zero
    n_any = n if any(not link.cross for link in links) else \
        (int(batch.any_cross_supervised.sum()) if batch.any_cross_supervised is not None else 0)

    # Per-position teacher weights over the teachers supervising each masked position.
    raw = []
    for link, tgt in zip(links, targets):
        w = torch.full((tgt.sup_student.shape[0],), link.weight, device=device)
        if cfg.weighting == "entropy":
            w = w * torch.exp(-tgt.entropy / cfg.entropy_temperature)
        raw.append(w)
    denom = torch.zeros(max(n, 1), device=device)
    for w, tgt in zip(raw, targets):
        denom.index_add_(0, tgt.sup_student, w)

    ce_parts, cos_parts, mse_parts = [], [], []
    for link, tgt, w in zip(links, targets, raw):
        if tgt.sup_student.numel() and n:
            z = logits if not link.cross else logits.index_select(0, tgt.sup_student)
            kl = kl_per_position(tgt.log_p, student_log_q(z, link, cfg.temperature))
            weight = w / denom.index_select(0, tgt.sup_student)
            ce_parts.append((weight * kl).sum() / max(n_any, 1))
        else:
            ce_parts.append(zero)
        if need_hidden:
            cos_parts.append(_hidden_loss(module, link, batch, last, tgt.hidden, link.cos_projection, "cos"))
        else:
            cos_parts.append(zero)
        if need_layers:
            per_layer = [_hidden_loss(module, link, batch, hidden_states[s], tgt.layers[s],
                                      link.mse_projections.get(s), "mse") for s in link.layer_map]
            mse_parts.append(torch.stack(per_layer).mean())
        else:
            mse_parts.append(zero)

    weights = torch.stack([link.weight_t for link in links])
    ce = torch.stack(ce_parts).sum()
    cos = (weights * torch.stack(cos_parts)).sum()
    mse = (weights * torch.stack(mse_parts)).sum()
    t2 = cfg.temperature ** 2
    contributions = (cfg.alpha_ce * t2 * torch.stack(ce_parts) + cfg.alpha_cos * weights * torch.stack(cos_parts)
                     + cfg.alpha_mse * weights * torch.stack(mse_parts)).detach()
    total = cfg.alpha_ce * t2 * ce + cfg.alpha_mlm * mlm + cfg.alpha_cos * cos + cfg.alpha_mse * mse
    parts = torch.stack([ce, mlm, cos, mse]).detach()
    return StepLosses(total=total, parts=parts, contributions=contributions, student_logits=logits.detach(),
                      targets=targets)


def _hidden_loss(module: StudentModule, link: TeacherLink, batch: Batch, student_hidden: torch.Tensor,
                 target: torch.Tensor, projection: str | None, kind: str) -> torch.Tensor:
    if link.cross:
        vb_student = pool_words(student_hidden, batch.word_pos, batch.word_index, batch.n_words)
    else:
        vb_student = _gather(student_hidden, batch.token_pos)
    if projection is not None:
        proj = module.projections[projection]
        vb_student = F.linear(vb_student, proj.weight.float(), proj.bias.float())
    if kind == "cos":
        return (1 - F.cosine_similarity(vb_student, target, dim=-1)).mean()
    return F.mse_loss(vb_student, target)
