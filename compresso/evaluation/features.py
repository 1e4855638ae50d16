"""Tokenised task examples and their batches: dynamic padding, length-grouped order.

Tagging tasks label the first sub-token of each word and ignore the rest (-100); words the
tokenizer truncated away (or turned into no token at all) are recorded, so that their prediction
falls back to the training-label prior instead of silently vanishing from the score.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from compresso.evaluation.data import Example
from compresso.evaluation.tasks import TaskSpec

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    labels: list[np.ndarray] | np.ndarray
    """Tagging: one array per example aligned with its sub-tokens; otherwise one value each."""
    word_pos: list[np.ndarray] | None
    """Tagging: sub-token position of each word's first piece, -1 where the word has no token."""
    lengths: np.ndarray
    missing_words: int = 0
    second: Encoded | None = None
    """Sentence pairs encoded apart (siamese head): the second sentences, each tokenised alone;
    ``input_ids`` then hold the first sentences alone."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def batch_lengths(self) -> np.ndarray:
        """The length that batching sorts and groups by: the longer sentence of a pair encoded apart."""
        return self.lengths if self.second is None else np.maximum(self.lengths, self.second.lengths)

    @property
    def n_words(self) -> np.ndarray:
        return np.array([len(p) for p in self.word_pos], dtype=np.int64)


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of a tokenizer's behaviour, so students sharing a teacher's tokenizer reuse its encodings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        import json

        # without the truncation/padding state, which the last call left there (not the vocabulary)
        config = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        state = json.dumps(config, sort_keys=True)
    else:
        state = repr(sorted(tokenizer.get_vocab().items())) + repr(type(tokenizer))
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def encode(spec: TaskSpec, examples: list[Example], tokenizer, max_length: int,
           label_index: dict[str, int] | None, chunk: int = 2000, pairs_apart: bool = False) -> Encoded:
    """Token ids (and labels) of ``examples``; without ``label_index`` (unlabelled text) a class
    or tag label is ``IGNORE`` and a score NaN. ``pairs_apart``: sentence pairs are tokenised one
    sentence at a time (the first sentences in the result, the second ones in ``.second``), for a
    siamese head; otherwise a pair is one sequence ``[CLS] a [SEP] b [SEP]``."""
    if pairs_apart:
        if spec.kind == "tagging" or any(ex.text_pair is None for ex in examples):
            raise ValueError(f"{spec.title}: encoding sentence pairs apart (the siamese head) needs sentence-pair "
                             f"examples; this task has single texts")
        first = encode(spec, [Example(ex.text, ex.label, id=ex.id) for ex in examples], tokenizer, max_length,
                       label_index, chunk)
        first.second = encode(spec, [Example(ex.text_pair, ex.label, id=ex.id) for ex in examples], tokenizer,
                              max_length, label_index, chunk)
        return first
    input_ids: list[np.ndarray] = []
    type_ids: list[np.ndarray] = []
    labels: list = []
    word_pos: list[np.ndarray] = []
    missing = 0
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        if spec.kind == "tagging":
            if not getattr(tokenizer, "is_fast", False):
                raise TypeError(f"{spec.title} needs a fast (Rust) tokenizer to align words and sub-tokens; "
                                f"{type(tokenizer).__name__} is not one")
            enc = tokenizer([ex.text for ex in part], is_split_into_words=True, truncation=True,
                            max_length=max_length)
        else:
            texts = [ex.text for ex in part]
            pairs = [ex.text_pair for ex in part]
            enc = tokenizer(texts, pairs if any(p is not None for p in pairs) else None,
                            truncation=True, max_length=max_length)
        has_types = "token_type_ids" in enc
        for i, ex in enumerate(part):
            ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
            input_ids.append(ids)
            if has_types:
                type_ids.append(np.asarray(enc["token_type_ids"][i], dtype=np.int64))
            if spec.kind == "tagging":
                pos = np.full(len(ex.text), -1, dtype=np.int64)
                token_labels = np.full(len(ids), IGNORE, dtype=np.int64)
                previous = None
                for j, w in enumerate(enc.word_ids(i)):
                    if w is not None and w != previous:
                        pos[w] = j
                        token_labels[j] = label_index[ex.label[w]] if label_index is not None else IGNORE
                    previous = w
                missing += int((pos < 0).sum())
                word_pos.append(pos)
                labels.append(token_labels)
            elif spec.kind == "classification":
                labels.append(label_index[ex.label] if label_index is not None else IGNORE)
            else:
                labels.append(float(ex.label) if ex.label is not None else float("nan"))
    if spec.kind == "classification":
        labels = np.asarray(labels, dtype=np.int64)
    elif spec.kind == "regression":
        labels = np.asarray(labels, dtype=np.float32)
    return Encoded(input_ids, type_ids or None, labels, word_pos if spec.kind == "tagging" else None,
                   np.array([len(x) for x in input_ids], dtype=np.int64), missing)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                           group: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: shuffle, sort within windows of ``group`` batches,
    cut, then shuffle the batch order (less padding, still random)."""
    order = rng.permutation(len(lengths))
    batches = []
    window = batch_size * group
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic batches for inference, longest first (the first batch shows memory trouble early)."""
    order = np.argsort(-lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        # no batch of one: exported graphs (INT8) often specialise the batch dimension to >= 2
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def collate(enc: Encoded, idx: np.ndarray, pad_id: int, with_labels: bool,
            multiple: int = 8) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member (rounded up to ``multiple`` for tensor cores); for pairs
    encoded apart, the second sentences come as ``pair_input_ids``, ``pair_attention_mask``, ..."""
    longest = int(enc.lengths[idx].max())
    width = -(-longest // multiple) * multiple
    n = len(idx)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64) if enc.token_type_ids is not None else None
    token_labels = np.full((n, width), IGNORE, dtype=np.int64) if with_labels and enc.word_pos is not None else None
    for row, i in enumerate(idx):
        length = enc.lengths[i]
        ids[row, :length] = enc.input_ids[i]
        mask[row, :length] = 1
        if types is not None:
            types[row, :length] = enc.token_type_ids[i]
        if token_labels is not None:
            token_labels[row, :length] = enc.labels[i]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    if with_labels:
        if token_labels is not None:
            batch["labels"] = torch.from_numpy(token_labels)
        else:
            batch["labels"] = torch.from_numpy(np.ascontiguousarray(enc.labels[idx]))
    if enc.second is not None:  # the second sentences, padded on their own, under "pair_" names
        batch |= {"pair_" + k: v for k, v in collate(enc.second, idx, pad_id, with_labels=False, multiple=multiple).items()}
    if enc.word_pos is not None:
        # flat positions (row * width + column) of the words' first sub-tokens, for one gather
        flat = [row * width + enc.word_pos[i][enc.word_pos[i] >= 0] for row, i in enumerate(idx)]
        batch["word_index"] = torch.from_numpy(np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64))
    return batch


# --- the tokenisation cache: each (task, tokenizer, max_length) encoded once per evaluation -----


def _flatten(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return flat.astype(np.int64, copy=False), offsets


def _split(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _arrays(enc: Encoded) -> dict[str, np.ndarray]:
    arrays = {"lengths": enc.lengths, "missing_words": np.array(enc.missing_words)}
    arrays["input_ids"], arrays["offsets"] = _flatten(enc.input_ids)
    if enc.token_type_ids is not None:
        arrays["token_type_ids"], _ = _flatten(enc.token_type_ids)
    if enc.word_pos is not None:
        arrays["labels"], _ = _flatten(enc.labels)
        arrays["word_pos"], arrays["word_offsets"] = _flatten(enc.word_pos)
    else:
        arrays["labels"] = np.asarray(enc.labels)
    if enc.second is not None:
        arrays |= {"second." + k: v for k, v in _arrays(enc.second).items()}
    return arrays


def save_encoded(path, enc: Encoded) -> None:
    """Write ``enc`` as plain arrays (``np.savez``, no pickle), under a temporary name then renamed."""
    from pathlib import Path

    arrays = _arrays(enc)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _from_arrays(z: dict[str, np.ndarray]) -> Encoded:
    offsets = z["offsets"]
    input_ids = _split(z["input_ids"], offsets)
    types = _split(z["token_type_ids"], offsets) if "token_type_ids" in z else None
    if "word_pos" in z:
        labels = _split(z["labels"], offsets)
        word_pos = _split(z["word_pos"], z["word_offsets"])
    else:
        labels, word_pos = z["labels"], None
    second = {k[len("second."):]: v for k, v in z.items() if k.startswith("second.")}
    return Encoded(input_ids, types, labels, word_pos, z["lengths"], int(z["missing_words"]),
                   _from_arrays(second) if second else None)


def load_encoded(path) -> Encoded:
    with np.load(path, allow_pickle=False) as z:
        return _from_arrays({k: z[k] for k in z.files})


class EncodingCache:
    """Encoded splits on disk, shared by the processes of one evaluation: the first job that needs
    a (task, tokenizer, max_length) encodes it under a file lock, the others load it; each process
    also keeps what it loaded. ``get`` says which of "encoded", "loaded" or "memory" it was."""

    def __init__(self, folder):
        from pathlib import Path

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.memory: dict[str, dict[str, Encoded]] = {}

    def get(self, task: str, splits: dict[str, list[Example]], spec: TaskSpec, tokenizer, max_length: int,
            label_index: dict[str, int] | None, pairs_apart: bool = False) -> tuple[dict[str, Encoded], str]:
        import fcntl

        key = f"{task}-{tokenizer_fingerprint(tokenizer)}-{max_length}" + ("-apart" if pairs_apart else "")
        if key in self.memory:
            return self.memory[key], "memory"
        files = {name: self.folder / f"{key}.{name}.npz" for name in splits}
        with open(self.folder / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if all(f.is_file() for f in files.values()):
                encoded, how = {name: load_encoded(f) for name, f in files.items()}, "loaded"
            else:
                encoded = {name: encode(spec, examples, tokenizer, max_length, label_index, pairs_apart=pairs_apart)
                           for name, examples in splits.items()}
                for name, f in files.items():
                    save_encoded(f, encoded[name])
                how = "encoded"
        self.memory[key] = encoded
        return encoded, how
