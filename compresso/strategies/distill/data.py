"""From text to training batches: word splitting, one tokenization per *view*, packing, masking.

A *view* is one tokenizer: view 0 is the student's, the others belong to teachers whose tokenizer
differs (teachers sharing the student's tokenizer read the student's view). Every document is
split into words once; each view tokenises the same words (``is_pretokenized``), so word ``i`` of
a row is word ``i`` in every view. Rows are packed greedily from consecutive documents
(``[CLS] doc [SEP] doc [SEP] ...``), splitting a document at a word boundary where a row is full
in *any* view, so no view ever truncates.

Masking is decided per word (whole-word masking) and applied to every view: a masked word is
``[MASK]`` in all views (or random in all, or kept in all). A student sub-token is *supervised*
by a teacher when the teacher has a piece covering exactly the same characters of the same word
(``Bucureşti|ului`` in both: both pieces; ``Frum|oasele`` vs ``frumoase|le``: neither).

Stages: ``RowEncoder`` (pure numpy + tokenizers, runs in worker processes) turns a chunk of
documents into fixed-width row arrays; ``BatchStream`` orders chunks, cuts them into batches,
masks them with a per-batch seeded generator, and remembers the exact position for resuming.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
import torch

from compresso.corpus import Corpus, CorpusError, iter_indexed_documents

CHUNK_DOCUMENTS = 256
"""Documents per encoding chunk: rows never span chunks (the last row of a chunk may be short)."""
_BATCHES_IN_FLIGHT = 2  # batches being masked by workers at once, besides the ready ones in the queue
_MAX_WORD_CHARS = 2048  # offsets are packed into int keys; longer "words" are dropped


@dataclass(frozen=True)
class ViewSpec:
    """One tokenization, in a form worker processes can rebuild."""

    name: str
    tokenizer_json: str
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    unk_id: int
    max_len: int
    vocab_size: int
    special_ids: tuple[int, ...]
    unmatchable_ids: tuple[int, ...] = ()  # pieces with no text of their own (a bare '▁'): never aligned

    @classmethod
    def from_tokenizer(cls, tokenizer, name: str, max_len: int) -> "ViewSpec":
        missing = [k for k in ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id")
                   if getattr(tokenizer, k, None) is None]
        if missing:
            raise ValueError(f"{name}: tokenizer has no {', '.join(m.replace('_id', '') for m in missing)}; "
                             f"masked-LM distillation needs [CLS]/[SEP]/[PAD]/[MASK]-style special tokens")
        unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else -1
        special = tuple(sorted(set(tokenizer.all_special_ids)))
        try:
            from compresso.strategies.distill.vocab import PieceScheme

            scheme = PieceScheme.of(tokenizer, name)
            empty = [i for t, i in tokenizer.get_vocab().items() if not scheme.split(t)[1]]
        except Exception:  # a tokenizer only used on the fast path needs no alignment
            empty = []
        return cls(name=name, tokenizer_json=tokenizer.backend_tokenizer.to_str(), cls_id=tokenizer.cls_token_id,
                   sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id, mask_id=tokenizer.mask_token_id,
                   unk_id=unk, max_len=max_len, vocab_size=len(tokenizer), special_ids=special,
                   unmatchable_ids=tuple(sorted(set(empty) | set(special))))


class RowEncoder:
    """Documents -> packed rows, for every view at once. Holds no state between chunks."""

    def __init__(self, views: list[ViewSpec], threads: bool = True):
        """``threads=False`` encodes document by document, never starting the tokenizers library's
        thread pool: in the training process it would compete with torch for the cores."""
        from tokenizers import Tokenizer
        from tokenizers.pre_tokenizers import BertPreTokenizer

        self.views = views
        self.threads = threads
        self.backends = []
        for spec in views:
            backend = Tokenizer.from_str(spec.tokenizer_json)
            backend.no_truncation()
            backend.no_padding()
            self.backends.append(backend)
        # Words are whitespace/punctuation-separated runs of the raw text, whatever the tokenizers.
        self.splitter = BertPreTokenizer()

    def split_words(self, text: str) -> list[str]:
        return [w for w, _ in self.splitter.pre_tokenize_str(text)]

    def encode(self, texts: list[str], first_doc: int = 0, last_doc: int = 0) -> dict[str, Any]:
        views = self.views
        words = [self.split_words(t) for t in texts]
        n_words = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        word_base = np.concatenate([[0], np.cumsum(n_words)])
        total_words = int(word_base[-1])

        ids, wid, starts, ends = [], [], [], []
        for backend in self.backends:
            if self.threads:
                encs = backend.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
            else:
                encs = [backend.encode(w, is_pretokenized=True, add_special_tokens=False) for w in words]
            lens = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
            n = int(lens.sum())
            ids.append(np.fromiter(chain.from_iterable(e.ids for e in encs), dtype=np.int64, count=n))
            local = np.fromiter(chain.from_iterable(e.word_ids for e in encs), dtype=np.int64, count=n)
            wid.append(local + np.repeat(word_base[:-1], lens))
            offs = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encs)),
                               dtype=np.int64, count=2 * n).reshape(n, 2)
            starts.append(offs[:, 0])
            ends.append(offs[:, 1])

        # Keep words that every view tokenises into 1..max_len-2 pieces of sane length.
        keep = np.ones(total_words, dtype=bool)
        counts = []
        for v, spec in enumerate(views):
            c = np.bincount(wid[v], minlength=total_words)
            counts.append(c)
            keep &= (c >= 1) & (c <= spec.max_len - 2)
            keep &= np.bincount(wid[v][ends[v] >= _MAX_WORD_CHARS], minlength=total_words) == 0
        new_word = np.cumsum(keep) - 1
        doc_of_word = np.repeat(np.arange(len(texts)), n_words)
        doc_ptr = np.concatenate([[0], np.cumsum(np.bincount(doc_of_word[keep], minlength=len(texts)))])
        kept_words = int(keep.sum())

        tok_cum, kids, kwid, keys, unk_tok = [], [], [], [], []
        for v in range(len(views)):
            mask = keep[wid[v]]
            kids.append(ids[v][mask])
            kw = new_word[wid[v][mask]]
            kwid.append(kw)
            tok_cum.append(np.concatenate([[0], np.cumsum(counts[v][keep])]))
            key = (kw << 22) | (starts[v][mask] << 11) | ends[v][mask]
            key[np.isin(kids[v], views[v].unmatchable_ids)] = -1 - v  # never equal across views
            keys.append(key)
            unk_tok.append(kids[v] == views[v].unk_id)
        # Words the student reads as [UNK] (or any special token) are never masked.
        special0 = np.isin(kids[0], views[0].special_ids)
        maskable = np.bincount(kwid[0][special0], minlength=kept_words) == 0

        # Student token -> token of view v covering the same characters of the same word.
        matches, unk_hits = [], []
        for v in range(1, len(views)):
            order = None if np.all(np.diff(keys[v]) > 0) else np.argsort(keys[v], kind="stable")
            sorted_keys = keys[v] if order is None else keys[v][order]
            pos = np.searchsorted(sorted_keys, keys[0])
            pos_c = np.minimum(pos, max(len(sorted_keys) - 1, 0))
            hit = (pos < len(sorted_keys)) & (sorted_keys[pos_c] == keys[0]) if len(sorted_keys) else \
                np.zeros(len(keys[0]), dtype=bool)
            target = pos_c if order is None else order[pos_c] if len(sorted_keys) else pos_c
            m = np.where(hit, target, -1)
            unk_hit = (m >= 0) & unk_tok[v][np.maximum(m, 0)]
            m[unk_hit] = -1  # a teacher [UNK] supervises nothing
            matches.append(m)
            unk_hits.append(int(unk_hit.sum()))

        rows = self._pack(doc_ptr, tok_cum)
        out = self._materialise(rows, kids, kwid, tok_cum, matches, maskable, first_doc, last_doc)
        out["alignment_stats"] = alignment_stats(total_words, keep, maskable, kids, matches, unk_hits)
        return out

    def _pack(self, doc_ptr: np.ndarray, tok_cum: list[np.ndarray]) -> list[list[tuple[int, int]]]:
        """Greedy packing of word ranges into rows that fit every view (CLS + pieces each + SEP)."""
        caps = [spec.max_len for spec in self.views]
        rows: list[list[tuple[int, int]]] = []
        current: list[tuple[int, int]] = []
        used = [1] * len(caps)
        for d in range(len(doc_ptr) - 1):
            a, b = int(doc_ptr[d]), int(doc_ptr[d + 1])
            while a < b:
                end = b
                for v, cum in enumerate(tok_cum):
                    limit = cum[a] + caps[v] - used[v] - 1
                    end = min(end, int(np.searchsorted(cum, limit, side="right")) - 1)
                if end <= a:
                    rows.append(current)  # full: the next word does not fit (words always fit an empty row)
                    current, used = [], [1] * len(caps)
                    continue
                current.append((a, end))
                for v, cum in enumerate(tok_cum):
                    used[v] += int(cum[end] - cum[a]) + 1
                a = end
                if a < b:
                    rows.append(current)
                    current, used = [], [1] * len(caps)
        if current:
            rows.append(current)
        return rows

    def _materialise(self, rows, kids, kwid, tok_cum, matches, maskable, first_doc, last_doc) -> dict[str, Any]:
        views = self.views
        R, L0 = len(rows), views[0].max_len
        out: dict[str, Any] = {"first_doc": first_doc, "last_doc": last_doc, "rows": R}
        for v, spec in enumerate(views):
            out[f"ids{v}"] = np.full((R, spec.max_len), spec.pad_id, dtype=np.int32)
            out[f"word{v}"] = np.full((R, spec.max_len), -1, dtype=np.int32)
            out[f"len{v}"] = np.zeros(R, dtype=np.int32)
        for v in range(1, len(views)):
            out[f"match{v}"] = np.full((R, L0), -1, dtype=np.int32)
        out["maskable"] = np.zeros((R, L0), dtype=bool)
        for r, pieces in enumerate(rows):
            first_word = pieces[0][0]
            last_word = pieces[-1][1]
            out["maskable"][r, : last_word - first_word] = maskable[first_word:last_word]
            piece_pos: list[list[int]] = []
            for v, spec in enumerate(views):
                parts_ids, parts_word, positions = [[spec.cls_id]], [[-1]], []
                pos = 1
                for a, e in pieces:
                    s, t = int(tok_cum[v][a]), int(tok_cum[v][e])
                    positions.append(pos)
                    parts_ids.append(kids[v][s:t])
                    parts_word.append(kwid[v][s:t] - first_word)
                    parts_ids.append([spec.sep_id])
                    parts_word.append([-1])
                    pos += t - s + 1
                row_ids = np.concatenate(parts_ids)
                out[f"ids{v}"][r, : len(row_ids)] = row_ids
                out[f"word{v}"][r, : len(row_ids)] = np.concatenate(parts_word)
                out[f"len{v}"][r] = len(row_ids)
                piece_pos.append(positions)
            for v in range(1, len(views)):
                row_match = out[f"match{v}"][r]
                for i, (a, e) in enumerate(pieces):
                    s0, t0 = int(tok_cum[0][a]), int(tok_cum[0][e])
                    m = matches[v - 1][s0:t0]
                    shift = piece_pos[v][i] - int(tok_cum[v][a])
                    p0 = piece_pos[0][i]
                    row_match[p0: p0 + (t0 - s0)] = np.where(m >= 0, m + shift, -1)
        return out


def alignment_stats(total_words, keep, maskable, kids, matches, unk_hits) -> dict[str, int]:
    """What the aligner drops from a chunk: words removed (some view gives them no piece or more
    than a row holds), kept words never masked (the student reads them as [UNK] or another special
    token), and per foreign view the student pieces left unsupervised because the teacher's piece
    covering the same characters is its [UNK]."""
    stats = {"words": int(total_words), "words_dropped": int(total_words - keep.sum()),
             "words_never_masked": int((~maskable).sum()), "student_tokens": int(len(kids[0]))}
    for v, m in enumerate(matches, start=1):
        stats[f"view{v}_aligned_tokens"] = int((m >= 0).sum())
        stats[f"view{v}_teacher_unk_tokens"] = unk_hits[v - 1]
    return stats


# --- worker processes ---------------------------------------------------------------------------

_WORKER_ENCODER: RowEncoder | None = None


def _init_worker(views: list[ViewSpec]) -> None:
    global _WORKER_ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    torch.set_num_threads(1)
    _WORKER_ENCODER = RowEncoder(views)


def _encode_in_worker(texts: list[str], first_doc: int, last_doc: int) -> dict[str, Any]:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER.encode(texts, first_doc, last_doc)


def _worker_ready() -> int:
    time.sleep(0.05)  # long enough that each of the first N calls lands in a process of its own
    return os.getpid()


# --- batches ------------------------------------------------------------------------------------

@dataclass
class MaskingConfig:
    prob: float = 0.15
    replace: float = 0.8
    random: float = 0.1
    whole_word: bool = True
    # Token-level masking only: per student id, its weight for being picked (DistilBERT's
    # count ** -mlm_smoothing, 0 for special tokens); None picks every maskable token alike.
    token_weights: np.ndarray | None = None


@dataclass
class ViewBatch:
    """One teacher view of a batch (teachers with the student's tokenizer use the student's)."""

    ids: torch.Tensor  # (B, L) corrupted input
    attention: torch.Tensor | None  # None when no row is padded (lets SDPA use its fastest kernel)
    masked_pos: torch.Tensor  # flat positions of this view's masked tokens
    labels: torch.Tensor  # their original ids
    sup_student: torch.Tensor  # supervised pairs: index into the student's masked list ...
    sup_pos: torch.Tensor  # ... and flat position in this view
    word_pos: torch.Tensor  # flat positions of word tokens (no CLS/SEP/pad) ...
    word_index: torch.Tensor  # ... and their word (0..n_words-1, shared with the student's)
    aligned_token: torch.Tensor  # every aligned pair (masked or not): index into Batch.token_pos ...
    aligned_pos: torch.Tensor  # ... and flat position in this view (soft targets with ce_scope: all)


@dataclass
class Batch:
    ids: torch.Tensor
    attention: torch.Tensor | None
    masked_pos: torch.Tensor
    labels: torch.Tensor
    token_pos: torch.Tensor  # flat positions of non-pad tokens (fast-path hidden losses)
    word_pos: torch.Tensor | None
    word_index: torch.Tensor | None
    n_words: int
    views: list[ViewBatch]  # index v-1 for view v
    tokens: int  # real (non-pad) student tokens
    n_masked: int
    n_supervised_cross: list[int]  # per view >= 1: supervised masked positions
    any_cross_supervised: np.ndarray | None = None  # (n_masked,) bool: covered by some view >= 1
    position: dict = field(default_factory=dict)

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"

        def mv(t):
            return None if t is None else t.to(device, non_blocking=nb)

        views = [ViewBatch(*(mv(getattr(vb, f)) for f in ViewBatch.__dataclass_fields__)) for vb in self.views]
        return Batch(mv(self.ids), mv(self.attention), mv(self.masked_pos), mv(self.labels), mv(self.token_pos),
                     mv(self.word_pos), mv(self.word_index), self.n_words, views, self.tokens, self.n_masked,
                     self.n_supervised_cross, self.any_cross_supervised, self.position)


def smoothed_token_mask(ids: np.ndarray, maskable: np.ndarray, masking: MaskingConfig,
                        rng: np.random.Generator) -> np.ndarray:
    """DistilBERT's token-level masking: exactly ceil(prob * maskable tokens) positions, drawn
    without replacement with probability proportional to ``token_weights[id]`` (count^-smoothing:
    rare tokens are masked more often than their frequency alone would). Exponential keys /
    weight, smallest first, is sampling without replacement in proportion to the weights
    (Efraimidis & Spirakis), what ``torch.multinomial(..., replacement=False)`` does."""
    weights = np.where(maskable, masking.token_weights[ids], 0.0)
    candidates = np.flatnonzero(weights > 0)
    n = min(int(np.ceil(masking.prob * int(maskable.sum()))), len(candidates))
    masked = np.zeros(len(ids), dtype=bool)
    if n:
        keys = rng.exponential(size=len(candidates)) / weights[candidates]
        masked[candidates[np.argpartition(keys, n - 1)[:n]]] = True
    return masked


def token_mask_weights(counts: np.ndarray, smoothing: float, special_ids) -> np.ndarray:
    """DistilBERT's ``np.maximum(counts, 1) ** -mlm_smoothing``, special tokens never picked."""
    weights = np.maximum(counts.astype(np.float64), 1.0) ** -smoothing
    weights[np.asarray(list(special_ids), dtype=np.int64)] = 0.0
    return weights


def aligned_pairs(match: np.ndarray, len0: np.ndarray, Lv: int, Wv: int) -> dict[str, torch.Tensor]:
    """Every student token with a counterpart in view v (masked or not), as an index into the
    batch's ``token_pos`` (non-pad student tokens, row-major) and a flat position in the trimmed
    view. ``match`` is (B, L0): per student position, the view-v position or -1."""
    W0 = _trim(int(len0.max()))
    valid0 = np.arange(W0)[None, :] < len0[:, None]
    m = match[:, :W0][valid0].astype(np.int64)  # one entry per token_pos, in order
    rows = np.broadcast_to(np.arange(len(len0))[:, None], valid0.shape)[valid0]
    hit = np.flatnonzero(m >= 0)
    return {"aligned_token": torch.from_numpy(hit), "aligned_pos": torch.from_numpy(rows[hit] * Wv + m[hit])}


@lru_cache(maxsize=16)
def _random_pool(vocab_size: int, special_ids: tuple[int, ...]) -> np.ndarray:
    return np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids, dtype=np.int64))


def _trim(width: int) -> int:
    return (width + 7) // 8 * 8


def make_batch(rows: dict[str, np.ndarray], views: list[ViewSpec], masking: MaskingConfig,
               rng: np.random.Generator, need_words: bool, pin: bool = False, fixed_width: bool = False) -> Batch:
    """Mask a stack of rows (all views) and build index tensors for the losses. Rows are cut to the
    longest one (rounded up to a multiple of 8), or with ``fixed_width`` kept at each view's full
    row length, so that every batch has one shape (a compiled model then never recompiles)."""
    B = len(rows["ids0"])
    L0 = views[0].max_len
    word_masked = np.zeros((B, L0), dtype=bool)
    action = rng.random((B, L0))  # per word (whole-word) or per student token
    if masking.whole_word:
        word_masked = (rng.random((B, L0)) < masking.prob) & rows["maskable"]
    wm_flat = word_masked.reshape(-1)
    act_flat = action.reshape(-1)
    row_base = (np.arange(B, dtype=np.int64) * L0)[:, None]

    def corrupt(v: int, spec: ViewSpec, token_masked: np.ndarray, token_action: np.ndarray):
        ids = rows[f"ids{v}"].astype(np.int64)
        labels_pos = np.flatnonzero(token_masked)
        labels = ids.reshape(-1)[labels_pos]
        flat = ids.reshape(-1)
        use_mask = token_action < masking.replace
        use_rand = (token_action >= masking.replace) & (token_action < masking.replace + masking.random)
        flat[labels_pos[use_mask]] = spec.mask_id
        n_rand = int(use_rand.sum())
        if n_rand:
            pool = _random_pool(spec.vocab_size, spec.special_ids)  # never inject a special token
            flat[labels_pos[use_rand]] = pool[rng.integers(0, len(pool), n_rand)]
        return ids, labels_pos, labels

    # Student view.
    word0 = rows["word0"].astype(np.int64)
    is_word0 = word0 >= 0
    gword0 = np.where(is_word0, word0 + row_base, -1).reshape(-1)
    if masking.whole_word:
        tok_masked0 = np.zeros(B * L0, dtype=bool)
        tok_masked0[is_word0.reshape(-1)] = wm_flat[gword0[is_word0.reshape(-1)]]
        tok_action0 = act_flat[gword0[tok_masked0]]
    else:
        maskable_tok = is_word0.reshape(-1).copy()
        maskable_tok[maskable_tok] = rows["maskable"].reshape(-1)[gword0[maskable_tok]]
        if masking.token_weights is None:
            tok_masked0 = (rng.random(B * L0) < masking.prob) & maskable_tok
        else:
            tok_masked0 = smoothed_token_mask(rows["ids0"].reshape(-1), maskable_tok, masking, rng)
        tok_action0 = rng.random(B * L0)[tok_masked0]
    ids0, masked0, labels0 = corrupt(0, views[0], tok_masked0, tok_action0)
    len0 = rows["len0"]
    W0 = L0 if fixed_width else _trim(int(len0.max()))

    def flat_to(pos: np.ndarray, L: int, W: int) -> np.ndarray:
        return (pos // L) * W + (pos % L)  # flat positions after trimming columns to W

    words_used = np.zeros(0, dtype=np.int64)
    word_lookup = None
    if need_words:
        words_used = np.unique(gword0[gword0 >= 0])
        word_lookup = np.full(B * L0, -1, dtype=np.int64)
        word_lookup[words_used] = np.arange(len(words_used))

    view_batches, n_sup, any_cross = [], [], None
    for v in range(1, len(views)):
        spec = views[v]
        Lv = spec.max_len
        wordv = rows[f"word{v}"].astype(np.int64)
        is_wordv = wordv >= 0
        gwordv = np.where(is_wordv, wordv + row_base, -1).reshape(-1)
        tok_maskedv = np.zeros(B * Lv, dtype=bool)
        tok_maskedv[is_wordv.reshape(-1)] = wm_flat[gwordv[is_wordv.reshape(-1)]]
        idsv, maskedv, labelsv = corrupt(v, spec, tok_maskedv, act_flat[gwordv[tok_maskedv]])
        Wv = Lv if fixed_width else _trim(int(rows[f"len{v}"].max()))
        match = rows[f"match{v}"].reshape(-1).astype(np.int64)[masked0]
        sup = np.flatnonzero(match >= 0)
        sup_pos = (match[sup] + (masked0[sup] // L0) * Lv)  # flat in the untrimmed view
        any_cross = (match >= 0) if any_cross is None else (any_cross | (match >= 0))
        n_sup.append(len(sup))
        if need_words:
            wp = np.flatnonzero(gwordv >= 0)
            wi = word_lookup[gwordv[wp]]
        else:
            wp = wi = np.zeros(0, dtype=np.int64)
        att = None if (rows[f"len{v}"] == Wv).all() else \
            torch.from_numpy(np.arange(Wv)[None, :] < rows[f"len{v}"][:, None]).long()
        view_batches.append(ViewBatch(
            ids=torch.from_numpy(np.ascontiguousarray(idsv[:, :Wv])), attention=att,
            masked_pos=torch.from_numpy(flat_to(maskedv, Lv, Wv)), labels=torch.from_numpy(labelsv),
            sup_student=torch.from_numpy(sup), sup_pos=torch.from_numpy(flat_to(sup_pos, Lv, Wv)),
            word_pos=torch.from_numpy(flat_to(wp, Lv, Wv)), word_index=torch.from_numpy(wi),
            **aligned_pairs(rows[f"match{v}"], rows["len0"], Lv, Wv)))

    valid0 = np.arange(W0)[None, :] < len0[:, None]
    token_pos = np.flatnonzero(valid0.reshape(-1))
    att0 = None if (len0 == W0).all() else torch.from_numpy(valid0).long()
    if need_words:
        wp0 = np.flatnonzero(gword0 >= 0)
        word_pos0 = torch.from_numpy(flat_to(wp0, L0, W0))
        word_index0 = torch.from_numpy(word_lookup[gword0[wp0]])
    else:
        word_pos0 = word_index0 = None
    batch = Batch(ids=torch.from_numpy(np.ascontiguousarray(ids0[:, :W0])), attention=att0,
                  masked_pos=torch.from_numpy(flat_to(masked0, L0, W0)), labels=torch.from_numpy(labels0),
                  token_pos=torch.from_numpy(token_pos), word_pos=word_pos0, word_index=word_index0,
                  n_words=len(words_used), views=view_batches, tokens=int(len0.sum()), n_masked=len(masked0),
                  n_supervised_cross=n_sup, any_cross_supervised=any_cross)
    if pin:
        batch = _pin(batch)
    return batch


def _tensors_as(obj, fn, names: list[str] | None = None):
    """``obj`` (a Batch or ViewBatch) with ``fn`` applied to its tensor fields, or to ``names``."""
    if names is None:
        names = [f.name for f in fields(obj) if isinstance(getattr(obj, f.name), torch.Tensor)]
    return replace(obj, **{n: fn(getattr(obj, n)) for n in names}), names


def _pin(batch: Batch) -> Batch:
    def pin(t):
        return t.pin_memory()

    batch, _ = _tensors_as(batch, pin)
    return replace(batch, views=[_tensors_as(vb, pin)[0] for vb in batch.views])


def _batch_in_worker(rows: dict[str, np.ndarray], masking: MaskingConfig, seed_key: list[int], need_words: bool,
                     fixed_width: bool = False):
    """``make_batch`` in a worker process. Tensors travel back as numpy arrays (plain pickles, no
    shared-memory handles), with the names of the fields to turn back into tensors."""
    assert _WORKER_ENCODER is not None
    batch = make_batch(rows, _WORKER_ENCODER.views, masking, np.random.default_rng(seed_key), need_words,
                       fixed_width=fixed_width)
    batch, names = _tensors_as(batch, torch.Tensor.numpy)
    views = [_tensors_as(vb, torch.Tensor.numpy) for vb in batch.views]
    return replace(batch, views=[v for v, _ in views]), names, [n for _, n in views]


def _batch_from_worker(packed, pin: bool) -> Batch:
    batch, names, view_names = packed
    batch, _ = _tensors_as(batch, torch.from_numpy, names)
    batch = replace(batch, views=[_tensors_as(vb, torch.from_numpy, n)[0] for vb, n in zip(batch.views, view_names)])
    return _pin(batch) if pin else batch


def _worker_context():
    """Where workers come from: forked from a *forkserver* that has imported this module once, where
    the platform has one; else spawned. Not plain fork: the training process has threads (the
    pinning thread, CUDA's) that a fork would copy mid-flight. Not spawn where avoidable: every
    spawned worker imports torch anew, and a dozen doing so at once hold the first batch of a GPU
    run back; a forkserver pays one import per process, and
    only once however many streams (stages, benchmark configurations) start workers."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Takes effect when the server starts (the first pool); harmless afterwards.
    ctx.set_forkserver_preload([__name__])
    return ctx


class _Chunks:
    """Encoded chunks of one rank's documents, in order, from a bounded pool of workers."""

    def __init__(self, encoder_views: list[ViewSpec], num_workers: int):
        self.views = encoder_views
        self.num_workers = num_workers
        self.pool = None
        self.encoder = None
        if num_workers > 0:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(num_workers, mp_context=_worker_context(),
                                            initializer=_init_worker, initargs=(encoder_views,))
            # Start every worker now (the pool would start them one per submitted task) and let them
            # import and build their tokenizers before the first chunk: a training step that overlaps
            # with a dozen processes importing torch runs at a fraction of its speed.
            self._ready = [self.pool.submit(_worker_ready) for _ in range(num_workers)]
        else:
            self.encoder = RowEncoder(encoder_views, threads=False)

    def wait_ready(self) -> None:
        if self.pool is not None:
            for f in self._ready:
                f.result()

    def map(self, doc_chunks: Iterator[tuple[list[str], int, int]]) -> Iterator[dict[str, Any]]:
        if self.pool is None:
            for texts, first, last in doc_chunks:
                yield self.encoder.encode(texts, first, last)
            return
        pending: deque = deque()
        for texts, first, last in doc_chunks:
            pending.append(self.pool.submit(_encode_in_worker, texts, first, last))
            if len(pending) >= 2 * self.num_workers:  # bounded: memory stays flat on any corpus
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


@dataclass
class StreamConfig:
    corpus: Corpus
    views: list[ViewSpec]
    masking: MaskingConfig
    batch_size: int
    seed: int
    heldout: int
    max_documents: int | None = None
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    need_words: bool = False
    pin: bool = False
    fixed_width: bool = False  # every batch seq_len wide (see make_batch)


class BatchStream:
    """Endless training batches (or one pass over the held-out slice), with resumable positions.

    A position is ``{"epoch", "doc", "row", "batch"}``: the next batch starts at row ``row`` of
    the chunk whose first document is the first one with index >= ``doc`` in epoch ``epoch``;
    ``batch`` counts batches drawn so far and seeds the masking of the next one, so a resumed
    stream produces exactly the batches an uninterrupted one would have.
    """

    def __init__(self, cfg: StreamConfig, part: str = "train", position: dict | None = None, prefetch: int = 4):
        self.cfg = cfg
        self.part = part
        self.start = dict(position or {"epoch": 0, "doc": 0, "row": 0, "batch": 0})
        self.prefetch = prefetch
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._chunks: _Chunks | None = None

    # Document chunks -> encoded chunks -> batches, in a background thread.
    def _doc_chunks(self, epoch: int, start_doc: int) -> Iterator[tuple[list[str], int, int]]:
        cfg = self.cfg
        texts, first, last = [], None, None
        for index, text in iter_indexed_documents(cfg.corpus, part=self.part, heldout=cfg.heldout,
                                                  max_documents=cfg.max_documents, rank=cfg.rank,
                                                  world_size=cfg.world_size, start=start_doc):
            if self._stop.is_set():
                return
            if first is None:
                first = index
            texts.append(text)
            last = index
            if len(texts) == CHUNK_DOCUMENTS:
                yield texts, first, last
                texts, first = [], None
        if texts:
            yield texts, first, last

    def _chunk_runs(self) -> Iterator[tuple[int, dict[str, Any], int]]:
        """(epoch, encoded chunk, first row to use) for every chunk, in order."""
        epoch, doc, skip = self.start["epoch"], self.start["doc"], self.start["row"]
        while True:
            produced = 0
            for chunk in self._chunks.map(self._doc_chunks(epoch, doc)):
                if skip < chunk["rows"]:
                    produced += chunk["rows"] - skip
                    yield epoch, chunk, skip
                skip = 0
            if self.part != "train":
                return
            if produced == 0 and doc == 0:
                raise CorpusError(f"rank {self.cfg.rank} of {self.cfg.world_size} received no training text from "
                                  f"{self.cfg.corpus.describe()}")
            epoch, doc = epoch + 1, 0

    def _produce(self) -> None:
        """Cut chunks into batches (runs of consecutive rows, no per-row Python work) and mask them:
        in the worker processes when there are any, so the training process only copies arrays."""
        cfg = self.cfg
        pending: deque = deque()  # (future, position) of batches being made by workers, in order
        try:
            self._chunks = _Chunks(cfg.views, cfg.num_workers)
            self._chunks.wait_ready()
            batch_no = self.start["batch"]
            picked: list[tuple[dict, int, int]] = []
            need, after = cfg.batch_size, None
            for epoch, chunk, r in self._chunk_runs():
                n = chunk["rows"]
                while r < n:
                    take = min(need, n - r)
                    picked.append((chunk, r, r + take))
                    r, need = r + take, need - take
                    if need == 0 or r == n:
                        after = {"epoch": epoch, "doc": chunk["first_doc"], "row": r} if r < n else \
                            {"epoch": epoch, "doc": chunk["last_doc"] + 1, "row": 0}
                    if need == 0:
                        self._submit(pending, picked, batch_no, after)
                        batch_no += 1
                        picked, need = [], cfg.batch_size
                        if self._stop.is_set():
                            return
            if picked:
                self._submit(pending, picked, batch_no, after)
            self._deliver(pending, 0)
            self._put(None)
        except BaseException as exc:  # hand any failure to the consumer
            self._put(exc)
        finally:
            for future, _ in pending:
                future.cancel()
            if self._chunks is not None:
                self._chunks.close()

    def _submit(self, pending: deque, picked: list[tuple[dict, int, int]], batch_no: int, after: dict) -> None:
        cfg = self.cfg
        first = picked[0][0]
        keys = [k for k in first if isinstance(first[k], np.ndarray)]
        rows = {k: np.concatenate([chunk[k][a:b] for chunk, a, b in picked]) for k in keys}
        seed_key = [cfg.seed, cfg.rank, batch_no, 0 if self.part == "train" else 1]
        position = dict(after, batch=batch_no + 1)
        pool = self._chunks.pool
        if pool is None:
            batch = make_batch(rows, cfg.views, cfg.masking, np.random.default_rng(seed_key), cfg.need_words,
                               pin=cfg.pin, fixed_width=cfg.fixed_width)
            batch.position = position
            self._put(batch)
            return
        pending.append((pool.submit(_batch_in_worker, rows, cfg.masking, seed_key, cfg.need_words, cfg.fixed_width),
                        position))
        self._deliver(pending, _BATCHES_IN_FLIGHT)

    def _deliver(self, pending: deque, keep: int) -> None:
        """Hand finished batches to the consumer, in order, until at most ``keep`` are in flight."""
        while len(pending) > keep and not self._stop.is_set():
            future, position = pending.popleft()
            batch = _batch_from_worker(future.result(), self.cfg.pin)
            batch.position = position
            self._put(batch)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Batch]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name=f"distill-{self.part}-data", daemon=True)
            self._thread.start()
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.1)
                except queue.Empty:
                    pass
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
