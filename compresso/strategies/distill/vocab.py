"""Relating two tokenizers: are they the same, and which of the student's tokens a teacher knows.

A teacher whose tokenizer equals the student's (same vocabulary, normaliser, pre-tokeniser and
model) takes the fast path: same ids, position-wise losses, no alignment. For any other teacher,
the student's vocabulary is mapped onto the teacher's by token *string*: each piece is reduced to
``(word_initial, surface)`` (WordPiece marks continuations with ``##``, SentencePiece/Metaspace
marks word starts with ``▁``), the surface is passed through the teacher's own normaliser (this
is what folds case for an uncased teacher, and strips accents if it does), and looked up among
the teacher's pieces of the same kind. Several student ids may land on one teacher id (``Casa``
and ``casa`` both on ``casa``); the soft-target loss sums their probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from compresso.strategy import StrategyError


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise StrategyError(f"{type(tokenizer).__name__} is not a fast (Rust `tokenizers`) tokenizer; "
                            f"distillation needs one for word alignment (load it with use_fast=True)")
    return json.loads(backend.to_str())


def same_tokenization(a, b) -> bool:
    """True when two tokenizers turn any text into the same ids (the fast path)."""
    if a is b:
        return True
    if a.get_vocab() != b.get_vocab():
        return False
    ja, jb = _backend_json(a), _backend_json(b)
    model_a = {k: v for k, v in ja["model"].items() if k != "vocab"}
    model_b = {k: v for k, v in jb["model"].items() if k != "vocab"}
    return (ja.get("normalizer") == jb.get("normalizer") and ja.get("pre_tokenizer") == jb.get("pre_tokenizer")
            and model_a == model_b and a.mask_token == b.mask_token)


def _find(node, type_name: str):
    """First sub-config of a tokenizers component (possibly a Sequence) with the given type."""
    if isinstance(node, dict):
        if node.get("type") == type_name:
            return node
        for value in node.values():
            found = _find(value, type_name)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _find(value, type_name)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class PieceScheme:
    """How a tokenizer marks where a piece sits in its word."""

    kind: str  # "continuation": prefix marks non-initial pieces; "word_start": prefix marks initial ones
    prefix: str

    @classmethod
    def of(cls, tokenizer, name: str) -> "PieceScheme":
        spec = _backend_json(tokenizer)
        model = spec.get("model", {})
        if model.get("type") == "WordPiece":
            return cls("continuation", model.get("continuing_subword_prefix") or "##")
        meta = _find(spec.get("pre_tokenizer"), "Metaspace") or _find(spec.get("decoder"), "Metaspace")
        if meta is not None:
            return cls("word_start", meta.get("replacement", "\u2581"))
        raise StrategyError(
            f"{name}: its tokenizer ({model.get('type')} model"
            f"{', byte-level' if _find(spec.get('pre_tokenizer'), 'ByteLevel') else ''}) is neither WordPiece nor "
            f"SentencePiece/Metaspace, so its vocabulary cannot be matched to another tokenizer's; use it only "
            f"with a student that shares its tokenizer")

    def split(self, token: str) -> tuple[bool, str]:
        """``(word_initial, surface)`` of a vocabulary entry."""
        marked = token.startswith(self.prefix)
        surface = token[len(self.prefix):] if marked else token
        return (not marked, surface) if self.kind == "continuation" else (marked, surface)


def lowercases(tokenizer) -> bool:
    """Whether the tokenizer folds case (its normaliser maps 'A' to 'a')."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    return normalizer is not None and normalizer.normalize_str("ABC") == "abc"


@dataclass
class VocabMap:
    """Student ids -> teacher ids, many-to-one, restricted to strings both vocabularies hold.

    The soft-target loss works on the ``columns`` space (the distinct teacher ids reached):
    ``student_ids[i]`` adds its probability to column ``columns[i]``, which is teacher id
    ``teacher_ids[columns[i]]``.
    """

    student_ids: np.ndarray
    columns: np.ndarray
    teacher_ids: np.ndarray
    student_to_teacher: np.ndarray  # every student id -> teacher id or -1 (top-1 agreement)
    student_vocab_mapped: float
    teacher_vocab_covered: float
    case_folded: bool
    merged: int  # student ids that share a teacher id with another one (case variants, mostly)

    def report(self) -> dict:
        return {"student_vocab_mapped": round(self.student_vocab_mapped, 4),
                "teacher_vocab_covered": round(self.teacher_vocab_covered, 4),
                "intersection_size": int(len(self.teacher_ids)), "case_folded": self.case_folded,
                "student_ids_merged": int(self.merged)}


def _special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids)


def build_vocab_map(student_tok, teacher_tok, teacher_name: str) -> VocabMap:
    s_scheme = PieceScheme.of(student_tok, "the student")
    t_scheme = PieceScheme.of(teacher_tok, f"teacher {teacher_name!r}")
    t_norm = teacher_tok.backend_tokenizer.normalizer
    t_special = _special_ids(teacher_tok)
    lookup: dict[tuple[bool, str], int] = {}
    for token, tid in teacher_tok.get_vocab().items():
        if tid in t_special:
            continue
        initial, surface = t_scheme.split(token)
        if surface:
            lookup.setdefault((initial, surface), tid)

    s_vocab = student_tok.get_vocab()
    s_special = _special_ids(student_tok)
    size = max(max(s_vocab.values()) + 1, len(student_tok))
    to_teacher = np.full(size, -1, dtype=np.int64)
    cache: dict[str, str] = {}
    for token, sid in s_vocab.items():
        if sid in s_special:
            continue
        initial, surface = s_scheme.split(token)
        if not surface:
            continue
        if t_norm is not None:
            if surface not in cache:
                normalized = t_norm.normalize_str(surface).strip()
                if t_scheme.kind == "word_start" and normalized.startswith(t_scheme.prefix):
                    normalized = normalized[len(t_scheme.prefix):]  # normalisers that prepend '▁'
                cache[surface] = normalized
            surface = cache[surface]
        tid = lookup.get((initial, surface))
        if tid is not None:
            to_teacher[sid] = tid
    student_ids = np.flatnonzero(to_teacher >= 0)
    targets = to_teacher[student_ids]
    teacher_ids, columns, counts = np.unique(targets, return_inverse=True, return_counts=True)
    n_student = len(s_vocab.keys() - {t for t, i in s_vocab.items() if i in s_special}) or 1
    n_teacher = len([1 for i in teacher_tok.get_vocab().values() if i not in t_special]) or 1
    return VocabMap(student_ids=student_ids, columns=columns.astype(np.int64), teacher_ids=teacher_ids,
                    student_to_teacher=to_teacher, student_vocab_mapped=len(student_ids) / n_student,
                    teacher_vocab_covered=len(teacher_ids) / n_teacher,
                    case_folded=lowercases(teacher_tok) and not lowercases(student_tok),
                    merged=int(counts[counts > 1].sum()))
