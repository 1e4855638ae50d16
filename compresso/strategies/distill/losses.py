"""Distillation losses for one batch, any number of teachers, same or different tokenizers.

    total = alpha_ce * T^2 * KL(teacher || student at T)     soft targets (``ce_scope``, below)
          + alpha_mlm * CE(student, true token)              on every masked position
          + alpha_cos * (1 - cos(student, teacher))          last hidden states: per token (same
                                                             tokenizer) or mean-pooled per word
          + alpha_hidden_mse * MSE(student_i, teacher_m(i))  optional intermediate layers, same pooling

``ce_scope``: ``all`` (DistilBERT's default) takes the KL at every non-pad student position -- for
a teacher with another tokenizer at every student token aligned with one of its pieces; ``masked``
(DistilBERT's ``restrict_ce_to_mask``) only at masked positions.

Teachers with another tokenizer are compared on the vocabulary intersection (``vocab.py``): the
student's probabilities are pushed forward onto the teacher ids they map to (many-to-one, summed in
log space). With ``unmapped_mass: other`` (default) each side's probability outside the
intersection goes to one extra "other" column, so nothing is renormalised away and the student
pays for mass on its unmapped pieces; ``renormalise`` restricts both sides to the intersection.

Several teachers: at each position the teachers that supervise it share weight 1 in proportion
to their recipe weights (``static``) or to weight * exp(-entropy / tau) (``entropy``), the entropy
taken on the teacher's distribution in one space all teachers share (``TeacherLink.shared_column``;
a cased teacher would otherwise look unsure for spreading mass over ``Casa``/``casa``).
With ``teacher_mixing: geometric`` the per-row teacher weights w_t (the same, static or entropy)
instead make one target, the normalised geometric mean prod_t p_t^w_t in the student's vocabulary,
and the soft-target loss is one KL to it (``geometric_targets``). Hidden-state losses use the recipe
weights. Nothing here reads a value back to the host, so a step runs without synchronising.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

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
    ce_scope: str = "all"  # "all" | "masked"
    unmapped_mass: str = "other"  # "other" | "renormalise"
    chunk_rows: int | None = None  # head + soft-target + MLM losses this many rows at a time (ChunkedHeadLoss)
    mixing: str = "arithmetic"  # "arithmetic" (one KL per teacher) | "geometric" (one KL to their geometric mean)
    compile: bool = False  # torch.compile the soft-target KL, teachers' log-probs, pooling, hidden-state losses


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
    # Entropy weighting: this teacher's ids -> column of the space shared by all teachers (one
    # foreign view's intersection; the last column, ``shared_size``, is "other"). None: all
    # teachers share the student's vocabulary and entropies are compared on it directly.
    shared_column: "np.ndarray | torch.Tensor | None" = None
    shared_size: int = 0
    # Device copies of the vocabulary map, set by ``to(device)``.
    student_ids: torch.Tensor | None = None
    teacher_ids: torch.Tensor | None = None
    student_to_teacher: torch.Tensor | None = None
    weight_t: torch.Tensor | None = None
    # The push-forward (``student_log_q``) on one permutation of the student's ids: first the ids
    # alone on their column, then per group size g > 1 its columns' ids, g after g, then the
    # unmapped ids. The target space's columns follow that layout: ``target_columns`` (indices into
    # ``vocab.teacher_ids``) and ``target_teacher_ids`` are the teacher's side of it.
    mapped_order: torch.Tensor | None = None  # the mapped student ids, laid out as above
    n_single: int = 0
    groups: tuple[tuple[int, int], ...] = ()  # (g, columns of g ids), in layout order
    target_columns: "np.ndarray | None" = None
    target_teacher_ids: torch.Tensor | None = None

    def to(self, device: torch.device) -> "TeacherLink":
        self.weight_t = torch.tensor(self.weight, device=device)  # made once: no host copy per step
        if self.vocab is not None:
            self.student_ids = torch.as_tensor(self.vocab.student_ids, device=device)
            self.teacher_ids = torch.as_tensor(self.vocab.teacher_ids, device=device)
            self.student_to_teacher = torch.as_tensor(self.vocab.student_to_teacher, device=device)
            self._lay_out_columns(device)
        if self.shared_column is not None:
            self.shared_column = torch.as_tensor(self.shared_column, device=device)
        # per (side, width): masks (``unmapped``) and their ids (``unmapped_ids``), on this device
        self._unmapped: dict[tuple[str, int], torch.Tensor] = {}
        self._unmapped_ids: dict[tuple[str, int], torch.Tensor] = {}
        return self

    def _lay_out_columns(self, device: torch.device) -> None:
        """Lay the student ids out by how many share a teacher column. Most columns hold one id
        (88 % for the fixture tokenizers; the rest are case variants, ``Casa``/``casa``), so their
        log-mass is the student's log-prob itself, and a column of g ids is a log-sum-exp over a
        row of a (columns, g) block. After one permutation of the student's logits every piece is
        a contiguous slice: no scatter forward, and backward the permutation's inverse, a gather."""
        columns, student_ids = np.asarray(self.vocab.columns), np.asarray(self.vocab.student_ids)
        n_cols = len(self.vocab.teacher_ids)
        by_column = np.argsort(columns, kind="stable")
        sizes = np.bincount(columns, minlength=n_cols)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        # Columns go in the order of their student ids, not the teacher's: the permutation then
        # reads each logit row nearly in order (coalesced loads on a GPU), forward and back; the
        # random order moves to the teacher's side, gathered once, forward only.
        single = np.flatnonzero(sizes == 1)
        single_ids = student_ids[by_column[starts[single]]]
        in_order = np.argsort(single_ids, kind="stable")
        placed, ids, groups = [single[in_order]], [single_ids[in_order]], []
        for g in np.unique(sizes[sizes > 1]):
            cols = np.flatnonzero(sizes == g)
            block = np.sort(student_ids[by_column[starts[cols][:, None] + np.arange(g)]], axis=1)  # (columns, g) ids
            in_order = np.argsort(block[:, 0], kind="stable")
            ids.append(block[in_order].reshape(-1))
            placed.append(cols[in_order])
            groups.append((int(g), len(cols)))
        self.mapped_order = torch.as_tensor(np.concatenate(ids), device=device)
        self.n_single, self.groups = len(single), tuple(groups)
        self.target_columns = np.concatenate(placed)
        self.target_teacher_ids = torch.as_tensor(np.asarray(self.vocab.teacher_ids)[self.target_columns],
                                                  device=device)

    def student_target_columns(self, width: int, device: torch.device) -> torch.Tensor:
        """(width,) long: each student id's column in this teacher's target space (layout order; the
        mapped ids' columns, ``len(target_columns)`` = "other" for the rest)."""
        cache = self.__dict__.setdefault("_student_target_columns", {})
        if width not in cache:
            n_cols = len(self.target_columns)
            layout = np.empty(n_cols, dtype=np.int64)
            layout[self.target_columns] = np.arange(n_cols)
            out = np.full(width, n_cols, dtype=np.int64)
            ids = np.asarray(self.vocab.student_ids)
            keep = ids < width
            out[ids[keep]] = layout[np.asarray(self.vocab.columns)[keep]]
            cache[width] = torch.as_tensor(out, device=device)
        return cache[width]

    def permutation(self, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(order, inverse) of a student logit row of ``width``: the mapped ids in layout order,
        then the unmapped ones (special tokens and padded output rows included)."""
        cache = self.__dict__.setdefault("_permutation", {})
        if width not in cache:
            order = torch.cat([self.mapped_order.to(device), self.unmapped_ids("student", width, device)])
            cache[width] = (order, torch.argsort(order))
        return cache[width]

    def unmapped_ids(self, side: str, width: int, device: torch.device) -> torch.Tensor:
        """The ids of ``unmapped(side, width)``, for gathering them."""
        cache = self.__dict__.setdefault("_unmapped_ids", {})
        key = (side, width)
        if key not in cache:
            cache[key] = torch.nonzero(self.unmapped(side, width, device)).squeeze(1)
        return cache[key]

    def unmapped(self, side: str, width: int, device: torch.device) -> torch.Tensor:
        """(width,) bool: ids of the student's (``side="student"``) or this teacher's logits
        outside the vocabulary intersection (special tokens and padded output rows included)."""
        cache = self.__dict__.setdefault("_unmapped", {})
        key = (side, width)
        if key not in cache:
            mask = torch.ones(width, dtype=torch.bool, device=device)
            mask[(self.student_ids if side == "student" else self.teacher_ids).to(device)] = False
            cache[key] = mask
        return cache[key]

    def shared_columns(self, width: int) -> torch.Tensor:
        """``shared_column`` padded to a logit width (extra output rows count as "other")."""
        col = self.shared_column
        if col.shape[0] < width:
            col = torch.cat([col, torch.full((width - col.shape[0],), self.shared_size, dtype=col.dtype,
                                             device=col.device)])
        return col[:width]

    @property
    def cross(self) -> bool:
        return self.view > 0


@dataclass
class TeacherTargets:
    # Row i of every per-row tensor goes with the student's soft-target row i (k rows).
    log_p: torch.Tensor | None  # (k, C) teacher log-probs at temperature T (full vocab or intersection)
    entropy: torch.Tensor | None  # (k,) entropy at T=1 in the shared space (entropy weighting)
    hidden: torch.Tensor | None  # (m, H_t) last hidden: per token (fast) or per word (cross)
    layers: dict[int, torch.Tensor]  # student hidden index -> teacher target (same layout as hidden)
    # Chunked losses: instead of ``log_p``, the teacher's last hidden states at its k positions;
    # its head turns a chunk of them into log-probs when that chunk's loss is taken.
    rows: torch.Tensor | None = None
    # (k,) bool: the rows a teacher with another tokenizer really supervises (None: every row)
    supervised: torch.Tensor | None = None

    def log_p_rows(self, link: TeacherLink, index: slice, cfg: LossConfig) -> torch.Tensor:
        if self.rows is None:
            return self.log_p[index]
        with torch.no_grad():
            return teacher_log_p(link, link.lm.head(self.rows[index]), cfg)


def pool_words(hidden: torch.Tensor, pos: torch.Tensor, index: torch.Tensor, n_words: int) -> torch.Tensor:
    """Mean of token states per word, in fp32: (B, L, H) -> (n_words, H)."""
    return _PoolWords.apply(hidden, pos, index, n_words)


class _PoolWords(torch.autograd.Function):
    """``pool_words`` with its gradient written out: a token's gradient is its word's divided by
    the word's token count, copied to the token's position (each position once). Autograd's own
    backward of the position gather would add into a zero (B*L, H) tensor in the hidden states'
    dtype, by atomic adds of bf16 on a GPU."""

    @staticmethod
    def forward(ctx, hidden, pos, index, n_words):
        flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pos).float()
        sums = torch.zeros(n_words, flat.shape[1], device=flat.device, dtype=flat.dtype).index_add_(0, index, flat)
        counts = torch.zeros(n_words, device=flat.device, dtype=flat.dtype).index_add_(
            0, index, torch.ones_like(index, dtype=flat.dtype))
        inverse_counts = 1 / counts.clamp_min(1).unsqueeze(1)
        ctx.save_for_backward(hidden, pos, index, inverse_counts)
        return sums * inverse_counts

    @staticmethod
    def backward(ctx, grad):
        hidden, pos, index, inverse_counts = ctx.saved_tensors
        per_token = (grad * inverse_counts).index_select(0, index).to(hidden.dtype)
        flat = torch.zeros(hidden.shape[0] * hidden.shape[1], hidden.shape[2], device=hidden.device,
                           dtype=hidden.dtype).index_copy_(0, pos, per_token)
        return flat.view(hidden.shape), None, None, None


def _gather(hidden: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, pos).float()


def soft_target_positions(link: TeacherLink, batch: Batch, scope: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per soft-target row of the student, the position in the teacher's view that supervises it,
    and (a teacher with another tokenizer) which rows it supervises at all: its pairs are spread
    over every row, a row it does not supervise pointing at position 0 and weighted 0. The KL then
    takes the student's logits as they are: picking the supervised rows would copy them, and
    backward add into a zero tensor of their size."""
    student_pos = batch.token_pos if scope == "all" else batch.masked_pos
    if not link.cross:
        return student_pos, None
    vb = batch.views[link.view - 1]
    pos, rows = (vb.aligned_pos, vb.aligned_token) if scope == "all" else (vb.sup_pos, vb.sup_student)
    n_rows = student_pos.shape[0]
    row_pos = torch.zeros(n_rows, dtype=pos.dtype, device=pos.device).index_copy_(0, rows, pos)
    supervised = torch.zeros(n_rows, dtype=torch.bool, device=pos.device).index_fill_(0, rows, True)
    return row_pos, supervised


def shared_entropy(link: TeacherLink, logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats, T = 1) of the teacher's distribution in the space all teachers share."""
    p = logits.float().softmax(-1)
    if link.shared_column is not None:
        cols = link.shared_columns(p.shape[1]).unsqueeze(0).expand(p.shape[0], -1)
        p = torch.zeros(p.shape[0], link.shared_size + 1, device=p.device, dtype=p.dtype).scatter_add_(1, cols, p)
    return -torch.special.xlogy(p, p).sum(-1)


def teacher_log_p(link: TeacherLink, logits: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Teacher log-probs at T in the target space (full vocab; or intersection [+ other])."""
    if not link.cross:
        return _piece(_log_softmax_at, cfg.compile)(_dynamic_rows(logits, cfg.compile), cfg.temperature,
                                                    link.shared_vocab)
    other_ids = None if cfg.unmapped_mass == "renormalise" else \
        link.unmapped_ids("teacher", logits.shape[1], logits.device)
    return _piece(_teacher_cross_log_p, cfg.compile)(_dynamic_rows(logits, cfg.compile), cfg.temperature,
                                                     link.target_teacher_ids, other_ids)


def _log_softmax_at(logits: torch.Tensor, temperature: float, width: int | None) -> torch.Tensor:
    if width is not None:  # output layers may be padded past the shared vocabulary
        logits = logits[:, :width]
    return (logits.float() / temperature).log_softmax(-1)


def _teacher_cross_log_p(logits: torch.Tensor, temperature: float, teacher_ids: torch.Tensor,
                         other_ids: torch.Tensor | None) -> torch.Tensor:
    logits = logits.float()
    if other_ids is None:  # renormalise: the intersection only
        return (logits.index_select(1, teacher_ids) / temperature).log_softmax(-1)
    log_p = (logits / temperature).log_softmax(-1)
    other = log_p.index_select(1, other_ids).logsumexp(-1, keepdim=True)
    return torch.cat([log_p.index_select(1, teacher_ids), other], 1)


def _piece(fn, compiled: bool, dynamic: bool | None = None):
    """A loss piece as it runs: ``fn`` itself, or with ``compiled`` its compiled version."""
    return _compiled(fn, dynamic) if compiled else fn


@functools.cache
def _compiled(fn, dynamic: bool | None = None):
    """``fn`` under torch.compile (one compiled function per loss piece, made on first use). Row
    counts (masked or aligned positions) change every batch: ``_dynamic_rows`` marks them dynamic
    before the first call, so a piece compiles once, not once per row count; word pooling, whose
    word count is an argument too, is compiled with every size dynamic."""
    return torch.compile(fn, dynamic=dynamic)


def _dynamic_rows(t: torch.Tensor, compiled: bool) -> torch.Tensor:
    if compiled:
        torch._dynamo.maybe_mark_dynamic(t, 0)
    return t


@torch.inference_mode()
def _teacher_pass(link: TeacherLink, batch: Batch, cfg: LossConfig, need_hidden: bool, region: str):
    pos, supervised = soft_target_positions(link, batch, cfg.ce_scope)
    if link.cross:
        vb = batch.views[link.view - 1]
        ids, att = vb.ids, vb.attention
    else:
        ids, att = batch.ids, batch.attention
    all_hidden = bool(link.layer_map)
    with record_function(f"{region}.encoder"):
        last, hidden_states, full = link.lm.encode(ids, att, all_hidden)
    rows = log_p = entropy = None
    with record_function(f"{region}.teacher_log_p"):
        if cfg.chunk_rows and full is None:
            # Chunked: keep the hidden states; the head runs chunk by chunk (twice with entropy weighting).
            rows = last.reshape(-1, last.shape[-1]).index_select(0, pos)
            if cfg.weighting == "entropy":
                entropy = torch.cat([shared_entropy(link, link.lm.head(rows[a: a + cfg.chunk_rows]))
                                     for a in range(0, rows.shape[0], cfg.chunk_rows)]) if rows.shape[0] else \
                    torch.zeros(0, device=rows.device)
        else:
            logits = link.lm.logits_at(last, pos, full)  # in the teacher's dtype: the log-probs go to fp32
            entropy = shared_entropy(link, logits) if cfg.weighting == "entropy" else None
            log_p = teacher_log_p(link, logits, cfg)
    hidden, layers = None, {}
    if need_hidden:
        if link.cross:
            vb = batch.views[link.view - 1]
            with record_function(f"{region}.pool_words"):
                pool = _piece(pool_words, cfg.compile, dynamic=True)
                hidden = pool(last, vb.word_pos, vb.word_index, batch.n_words)
                layers = {s: pool(hidden_states[t], vb.word_pos, vb.word_index, batch.n_words)
                          for s, t in link.layer_map.items()}
        else:
            hidden = _gather(last, batch.token_pos)
            layers = {s: _gather(hidden_states[t], batch.token_pos) for s, t in link.layer_map.items()}
    return log_p, entropy, hidden, layers, rows, supervised


def teacher_region(index: int, link: TeacherLink) -> str:
    """The profiler range of a teacher's pass: ``compresso.teacher<i>.same`` or ``.cross`` (another
    tokenizer), so a profile tells the cross-tokenizer teacher's cost apart."""
    return f"compresso.teacher{index}.{'cross' if link.cross else 'same'}"


def teacher_targets(link: TeacherLink, batch: Batch, cfg: LossConfig, need_hidden: bool,
                    region: str = "compresso.teacher") -> TeacherTargets:
    """Run a teacher (inference mode, its own dtype) and keep only what the losses need."""
    def out(t):  # inference tensors cannot be saved for backward
        return None if t is None else t.clone()

    with record_function(region):
        log_p, entropy, hidden, layers, rows, supervised = _teacher_pass(link, batch, cfg, need_hidden, region)
        return TeacherTargets(log_p=out(log_p), entropy=out(entropy), hidden=out(hidden),
                              layers={k: v.clone() for k, v in layers.items()}, rows=out(rows),
                              supervised=out(supervised))


def student_log_q(logits: torch.Tensor, link: TeacherLink, temperature: float,
                  unmapped_mass: str = "other") -> torch.Tensor:
    """Student log-probs at T in the teacher's target space (full vocab, or pushed onto the
    intersection -- columns in ``link.target_columns`` order -- plus the "other" column unless
    ``unmapped_mass`` is ``renormalise``)."""
    if not link.cross:
        return _log_softmax_at(logits, temperature, link.shared_vocab)
    return _push_forward(logits, temperature, *_push_forward_index(link, logits, unmapped_mass))


def _push_forward_index(link: TeacherLink, logits: torch.Tensor, unmapped_mass: str) -> tuple:
    order, inverse = link.permutation(logits.shape[1], logits.device)
    return order, inverse, link.n_single, link.groups, unmapped_mass == "renormalise"


class _Permute(torch.autograd.Function):
    """The columns of (k, V) logits in another order; the gradient goes back by the inverse order
    (a gather: index_select's own backward would scatter-add)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def _push_forward(logits: torch.Tensor, temperature: float, order: torch.Tensor, inverse: torch.Tensor,
                  n_single: int, groups: tuple[tuple[int, int], ...], renormalise: bool) -> torch.Tensor:
    z = _Permute.apply(logits, order, inverse) / temperature
    # A column's log-mass is the log-sum-exp of its student ids' logits (exact: logsumexp shifts by
    # each group's own max); columns of one id take the logit as it is. Normalised at the end.
    log_mass = _column_log_mass(z, n_single, groups, renormalise)
    return log_mass - (log_mass if renormalise else z).logsumexp(-1, keepdim=True)


def kl_per_position(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def soft_target_kl(logits: torch.Tensor, log_p: torch.Tensor, link: TeacherLink, cfg: LossConfig) -> torch.Tensor:
    """Per-row KL(teacher at T || student at T) of the student's logits (k, V) against the teacher's
    log-probs in its target space: ``kl_per_position(log_p, student_log_q(...))``. With
    ``cfg.compile`` the log-softmax, the push-forward's gathers and log-sum-exps and the KL are one
    compiled function (a few fused kernels, forward and backward, instead of a dozen passes over a
    rows x vocabulary tensor)."""
    if link.cross:
        fn, index = _cross_kl, _push_forward_index(link, logits, cfg.unmapped_mass)
    else:
        fn, index = _same_kl, (link.shared_vocab,)
    return _piece(fn, cfg.compile)(_dynamic_rows(logits, cfg.compile), _dynamic_rows(log_p, cfg.compile),
                                   cfg.temperature, *index)


def _same_kl(logits, log_p, temperature, width):
    return kl_per_position(log_p, _log_softmax_at(logits, temperature, width))


def _cross_kl(logits, log_p, temperature, order, inverse, n_single, groups, renormalise):
    return _PushForwardKL.apply(logits, log_p, temperature, order, inverse, n_single, groups, renormalise)


class _PushForwardKL(torch.autograd.Function):
    """``kl_per_position(log_p, _push_forward(...))`` with its gradient written out: autograd's
    chain through the permutation, the column log-sum-exps, the concatenation and the normaliser
    makes a rows x vocabulary tensor at every link, forward and back; the closed form needs one.

    With z = permuted logits / T, a column's log-mass M_c = logsumexp of its ids' z, the normaliser
    N (logsumexp of all z; with ``renormalise`` of the mapped columns' M) and s = sum of the
    teacher's probabilities p_c (1 up to rounding): d KL / d z_j = s exp(z_j - N) - p_c(j)
    exp(z_j - M_c(j)), where exp(z_j - M) is 1 for an id alone on its column; unmapped ids are
    column "other", or with ``renormalise`` get no gradient. ``tests/test_distill.py`` holds it
    against autograd through ``student_log_q`` in float64."""

    @staticmethod
    def forward(ctx, logits, log_p, temperature, order, inverse, n_single, groups, renormalise):
        z = logits.index_select(1, order) / temperature
        log_mass = _column_log_mass(z, n_single, groups, renormalise)
        norm = (log_mass if renormalise else z).logsumexp(-1, keepdim=True)
        ctx.save_for_backward(logits, log_p, log_mass, norm, order, inverse)
        ctx.layout = (temperature, n_single, groups, renormalise)
        return (log_p.exp() * (log_p - (log_mass - norm))).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        logits, log_p, mass, norm, order, inverse = ctx.saved_tensors  # mass: M per target column
        temperature, n_single, groups, renormalise = ctx.layout
        z = logits.index_select(1, order) / temperature
        p = log_p.exp()
        s = p.sum(-1, keepdim=True)
        k = z.shape[0]
        pieces, start, col = [s * (z[:, :n_single] - norm).exp() - p[:, :n_single]], n_single, n_single
        for g, n_cols in groups:
            zg = z[:, start:start + g * n_cols].reshape(k, n_cols, g)
            mg, pg = mass[:, col:col + n_cols, None], p[:, col:col + n_cols, None]
            pieces.append((s[:, :, None] * (zg - norm[:, :, None]).exp() - pg * (zg - mg).exp()).reshape(k, -1))
            start, col = start + g * n_cols, col + n_cols
        rest = z[:, start:]
        if renormalise:  # unmapped ids are in no column
            pieces.append(torch.zeros_like(rest))
        else:
            pieces.append(s * (rest - norm).exp() - p[:, col:] * (rest - mass[:, col:]).exp())
        grad_z = torch.cat(pieces, 1) * (grad[:, None] / temperature)
        return grad_z.index_select(1, inverse), None, None, None, None, None, None, None


def _column_log_mass(z: torch.Tensor, n_single: int, groups: tuple[tuple[int, int], ...],
                     renormalise: bool) -> torch.Tensor:
    """Per target column the log-sum-exp of its ids' z (in layout order: single ids, each group
    size, then "other" unless ``renormalise``)."""
    k = z.shape[0]
    parts, start = [z[:, :n_single]], n_single
    for g, n_cols in groups:
        parts.append(z[:, start:start + g * n_cols].reshape(k, n_cols, g).logsumexp(-1))
        start += g * n_cols
    if not renormalise:
        # Special tokens are never mapped, so "other" (the ids after the mapped ones) is never empty.
        parts.append(z[:, start:].logsumexp(-1, keepdim=True))
    return torch.cat(parts, 1)


@dataclass
class StepLosses:
    total: torch.Tensor
    parts: torch.Tensor  # [ce, mlm, cos, mse] (unweighted by alpha)
    contributions: torch.Tensor  # per teacher, its weighted share of the teacher-dependent loss
    # Nothing of the batch's size is kept here: the trainer holds the last StepLosses while the
    # next step runs, and logits or targets kept alive would add a whole step's worth to its peak.


class ChunkedHeadLoss(torch.autograd.Function):
    """A loss of the vocabulary logits of N rows, taken ``chunk`` rows at a time.

    ``loss_fn(logits, start, stop)`` gives the summed loss of rows start..stop (a scalar) and its
    detached parts. In the forward pass each chunk's logits are made, its loss and the gradient
    of that loss with respect to the chunk's hidden states and the head's parameters are taken at
    once, and the logits are freed; backward only scales the stored gradients. The loss is the same
    sum as over all rows at once (to float rounding); memory holds one chunk's logits, not N's.
    """

    @staticmethod
    def forward(ctx, rows, head, loss_fn, chunk, n_parts, *params):
        total = torch.zeros((), device=rows.device)
        parts = torch.zeros(n_parts, device=rows.device)
        grad_rows = torch.zeros_like(rows)
        grad_params = [torch.zeros_like(p) for p in params]
        for start in range(0, rows.shape[0], chunk):
            stop = min(start + chunk, rows.shape[0])
            with torch.enable_grad():
                h = rows[start:stop].detach().requires_grad_()
                loss, part = loss_fn(head(h).float(), start, stop)
                grads = torch.autograd.grad(loss, [h, *params], allow_unused=True)
            total += loss.detach()
            parts += part
            grad_rows[start:stop] = grads[0]
            for acc, g in zip(grad_params, grads[1:]):
                if g is not None:
                    acc += g
        ctx.save_for_backward(grad_rows, *grad_params)
        return total, parts

    @staticmethod
    def backward(ctx, grad_total, grad_parts):
        grad_rows, *grad_params = ctx.saved_tensors
        return (grad_rows * grad_total.to(grad_rows.dtype), None, None, None, None,
                *(g * grad_total for g in grad_params))


def compute_losses(student: torch.nn.Module, links: list[TeacherLink], batch: Batch, cfg: LossConfig,
                   autocast) -> StepLosses:
    """All losses of one micro-batch. ``student`` is the (possibly DDP-wrapped) StudentModule."""
    need_hidden = cfg.alpha_cos > 0
    need_layers = cfg.alpha_mse > 0
    all_scope = cfg.ce_scope == "all"
    logit_pos = batch.token_pos if all_scope else batch.masked_pos
    module: StudentModule = getattr(student, "module", student)
    chunked = bool(cfg.chunk_rows)
    if chunked and not module.lm.split:
        raise ValueError(f"chunked losses need the student's MLM head apart from its encoder; "
                         f"{type(module.model).__name__} has no known head")
    with autocast():
        targets = [teacher_targets(link, batch, cfg, need_hidden or need_layers, teacher_region(i, link))
                   for i, link in enumerate(links)]
        # chunked: ``out`` is the last hidden state at the soft-target rows, else their logits
        with record_function("compresso.student.forward"):
            last, hidden_states, out = student(batch.ids, batch.attention, logit_pos, need_layers,
                                               head=not chunked)
    device = out.device
    n_rows = logit_pos.shape[0]
    n = batch.n_masked
    zero = torch.zeros((), device=device)
    # Masked positions are non-pad tokens, so with ce_scope "all" they are rows of the soft-target
    # rows (both position lists are sorted).
    masked_rows = torch.searchsorted(batch.token_pos, batch.masked_pos) if all_scope else None

    with record_function("compresso.loss.head"):  # soft-target KL of every teacher + masked-LM CE
        # Per-row teacher weights over the teachers supervising each soft-target row.
        if cfg.weighting == "entropy":
            # weight * exp(-H / tau), computed as exp(log weight - H / tau - row max): a small tau must
            # not underflow every teacher of a row to 0.
            logits_w = [_where_supervised(tgt, math.log(link.weight) - tgt.entropy / cfg.entropy_temperature,
                                          float("-inf")) for link, tgt in zip(links, targets)]
            row_max = torch.stack(logits_w).amax(0)
            raw = [_where_supervised(tgt, (a - row_max).exp(), 0.0) for a, tgt in zip(logits_w, targets)]
        else:
            raw = [_where_supervised(tgt, torch.full((n_rows,), link.weight, device=device), 0.0)
                   for link, tgt in zip(links, targets)]
        denom = torch.stack(raw).sum(0)
        # a row no teacher supervises has weight 0 everywhere: divide it by 1, not 0
        denom_safe = torch.where(denom > 0, denom, 1.0)
        # Rows supervised by at least one teacher (a device tensor: no host sync).
        n_any = (denom > 0).sum().clamp_min(1).float()
        t2 = cfg.temperature ** 2

        if cfg.mixing == "geometric":
            logits = out.float()
            masked_logits = logits.index_select(0, masked_rows) if all_scope else logits
            mlm = F.cross_entropy(masked_logits, batch.labels) if n else zero
            anchor = next(link for link in links if not link.cross)
            row_w = [w / denom_safe for w in raw]
            if n_rows:
                log_r = geometric_targets(links, [tgt.log_p for tgt in targets], row_w, anchor)
                kl = soft_target_kl(logits, log_r, anchor, cfg)
                # one KL; each teacher's part of it is its share of the row weights (for the report)
                ce_parts = [(w * kl).sum() / n_any for w in row_w]
            else:
                ce_parts = [zero for _ in links]
            head_total = cfg.alpha_ce * t2 * torch.stack(ce_parts).sum() + cfg.alpha_mlm * mlm
        elif chunked:
            with autocast():  # the head's matmuls in the same precision as unchunked
                head_total, ce_parts, mlm = _chunked_head_losses(module, links, targets, raw, denom_safe, n_any, batch,
                                                                 masked_rows, out, cfg)
        else:
            logits = out.float()
            masked_logits = logits.index_select(0, masked_rows) if all_scope else logits
            mlm = F.cross_entropy(masked_logits, batch.labels) if n else zero
            ce_parts = []
            for link, tgt, w in zip(links, targets, raw):
                if n_rows:
                    with record_function("compresso.loss.student_log_q.cross" if link.cross
                                         else "compresso.loss.student_log_q"):
                        kl = soft_target_kl(logits, tgt.log_p, link, cfg)
                    ce_parts.append((w / denom_safe * kl).sum() / n_any)
                else:
                    ce_parts.append(zero)
            head_total = cfg.alpha_ce * t2 * torch.stack(ce_parts).sum() + cfg.alpha_mlm * mlm

    # Cosine (and MSE) of hidden states, every teacher. Under autocast the projections to a
    # teacher's width are bf16 matmuls like the student's layers (in fp32 they ran on the H200 as
    # non-tensor-core GEMMs, 5.3 ms of a 123 ms cross-tokenizer step at batch 512); the distances
    # themselves are taken in fp32.
    with record_function("compresso.loss.hidden"), autocast():
        cos_parts, mse_parts = [], []
        for link, tgt in zip(links, targets):
            if need_hidden:
                cos_parts.append(_hidden_loss(module, link, batch, last, tgt.hidden, link.cos_projection, "cos",
                                              cfg.compile))
            else:
                cos_parts.append(zero)
            if need_layers:
                per_layer = [_hidden_loss(module, link, batch, hidden_states[s], tgt.layers[s],
                                          link.mse_projections.get(s), "mse", cfg.compile) for s in link.layer_map]
                mse_parts.append(torch.stack(per_layer).mean())
            else:
                mse_parts.append(zero)

    weights = torch.stack([link.weight_t for link in links])
    ce = torch.stack(ce_parts).sum()
    cos = (weights * torch.stack(cos_parts)).sum()
    mse = (weights * torch.stack(mse_parts)).sum()
    contributions = (cfg.alpha_ce * t2 * torch.stack(ce_parts) + cfg.alpha_cos * weights * torch.stack(cos_parts)
                     + cfg.alpha_mse * weights * torch.stack(mse_parts)).detach()
    total = head_total + cfg.alpha_cos * cos + cfg.alpha_mse * mse
    parts = torch.stack([ce, mlm, cos, mse]).detach()
    return StepLosses(total=total, parts=parts, contributions=contributions)


def geometric_targets(links: list[TeacherLink], log_ps: list[torch.Tensor], row_weights: list[torch.Tensor],
                      anchor: TeacherLink) -> torch.Tensor:
    """Log-probs (k, W) at T of the normalised geometric mean prod_t p_t^w_t in the student's
    vocabulary (W: the anchor's target width), with per-row weights w_t (0 where t does not
    supervise; rows no teacher supervises come out uniform, and their weights are 0 in the loss).

    A teacher with the student's tokenizer gives each id its own log-prob. A teacher with another
    tokenizer has one probability per column of the shared vocabulary (plus "other" for the ids
    outside it); it is split among the student ids of a column as the anchor (a teacher with the
    student's tokenizer) splits that column: log p_t(col) + log p_a(id) - log p_a(col). Summed over
    a column's ids, the mix is then the geometric mean of the column distributions themselves."""
    log_a = log_ps[links.index(anchor)].float()
    k, width = log_a.shape
    total = torch.zeros_like(log_a)
    for link, log_p, w in zip(links, log_ps, row_weights):
        if not link.cross:
            if log_p.shape[1] != width:
                raise ValueError(f"teacher_mixing: geometric: teacher {link.name!r} has {log_p.shape[1]} output ids, "
                                 f"teacher {anchor.name!r} {width}; teachers with the student's tokenizer must agree")
            lifted = log_p.float()
        else:
            cols = link.student_target_columns(width, log_a.device)
            n_cols = log_p.shape[1]
            # the anchor's log-mass per column: log-sum-exp over the ids of each column
            peak = torch.full((k, n_cols), float("-inf"), device=log_a.device).scatter_reduce(
                1, cols.expand(k, -1), log_a, "amax", include_self=True)
            peak = torch.where(torch.isfinite(peak), peak, 0.0)
            mass = torch.zeros(k, n_cols, device=log_a.device).index_add_(1, cols, (log_a - peak.index_select(1, cols)).exp())
            log_mass = mass.clamp_min(torch.finfo(mass.dtype).tiny).log() + peak
            lifted = log_p.float().index_select(1, cols) + log_a - log_mass.index_select(1, cols)
        # a weight of 0 must silence a teacher even where its log-prob is -inf
        total = total + torch.where(w[:, None] > 0, w[:, None] * lifted.clamp_min(-1e4), 0.0)
    return total.log_softmax(-1)


def _where_supervised(tgt: TeacherTargets, value: torch.Tensor, otherwise: float) -> torch.Tensor:
    """``value`` at the rows the teacher supervises, ``otherwise`` at the rest."""
    return value if tgt.supervised is None else torch.where(tgt.supervised, value, otherwise)


def _chunked_head_losses(module: StudentModule, links: list[TeacherLink], targets: list[TeacherTargets],
                         raw: list[torch.Tensor], denom: torch.Tensor, n_any: torch.Tensor, batch: Batch,
                         masked_rows: torch.Tensor | None, rows: torch.Tensor, cfg: LossConfig):
    """The soft-target KL of every teacher and the masked-LM cross-entropy, through
    ``ChunkedHeadLoss``: ``alpha_ce T^2 ce + alpha_mlm mlm`` (with gradient), the per-teacher ce
    parts and mlm (detached). Every teacher's targets and weights go row for row with the student's
    rows, so a chunk of rows is the same slice of each."""
    device = rows.device
    n_rows = rows.shape[0]
    n = batch.n_masked
    labels = torch.full((n_rows,), -100, dtype=torch.long, device=device)
    if n:
        labels[masked_rows if masked_rows is not None else torch.arange(n, device=device)] = batch.labels
    row_weight = [w / denom / n_any for w in raw]
    k = len(links)
    scale = cfg.alpha_ce * cfg.temperature ** 2

    def loss_fn(z: torch.Tensor, start: int, stop: int):
        ce = []
        for link, tgt, rw in zip(links, targets, row_weight):
            log_p = tgt.log_p_rows(link, slice(start, stop), cfg)
            with record_function("compresso.loss.student_log_q.cross" if link.cross
                                 else "compresso.loss.student_log_q"):
                kl = soft_target_kl(z, log_p, link, cfg)
            ce.append((rw[start:stop] * kl).sum())
        mlm = F.cross_entropy(z, labels[start:stop], ignore_index=-100, reduction="sum") / max(n, 1)
        ce_t = torch.stack(ce)
        return scale * ce_t.sum() + cfg.alpha_mlm * mlm, torch.cat([ce_t, mlm.reshape(1)]).detach()

    params = module.lm.head_parameters()
    total, parts = ChunkedHeadLoss.apply(rows, module.lm.head, loss_fn, cfg.chunk_rows, k + 1, *params)
    return total, list(parts[:k].unbind()), parts[k]


def _hidden_loss(module: StudentModule, link: TeacherLink, batch: Batch, student_hidden: torch.Tensor,
                 target: torch.Tensor, projection: str | None, kind: str, compiled: bool = False) -> torch.Tensor:
    weight = bias = None
    if projection is not None:
        proj = module.projections[projection]
        weight, bias = proj.weight, proj.bias
    if link.cross:  # student states mean-pooled per word, as the teacher's are
        return _piece(_pooled_hidden_loss, compiled, dynamic=True)(
            student_hidden, batch.word_pos, batch.word_index, batch.n_words, target, weight, bias, kind)
    return _piece(_token_hidden_loss, compiled)(
        student_hidden, _dynamic_rows(batch.token_pos, compiled), _dynamic_rows(target, compiled), weight, bias, kind)


def _pooled_hidden_loss(hidden, word_pos, word_index, n_words, target, weight, bias, kind):
    return _hidden_distance(pool_words(hidden, word_pos, word_index, n_words), target, weight, bias, kind)


def _token_hidden_loss(hidden, token_pos, target, weight, bias, kind):
    return _hidden_distance(_gather(hidden, token_pos), target, weight, bias, kind)


def _hidden_distance(student: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, kind: str) -> torch.Tensor:
    if weight is not None:  # the student's projection to the teacher's width (bf16 under autocast)
        student = F.linear(student, weight, bias).float()
    if kind == "cos":
        return (1 - F.cosine_similarity(student, target, dim=-1)).mean()
    return F.mse_loss(student, target)
