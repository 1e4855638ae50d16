"""Small custom tasks written as the user's own files (CSV, CoNLL), over the tiny tokenizer's words,
with a rule a tiny model can learn: for tests of fine-tuning, task models and their stages."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from tests.tiny import WORDS

BIG = {"mare", "frumos", "casa", "românia"}


def _sentence(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def classification_files(root: Path, n_train: int = 48, n_test: int = 16, seed: int = 0) -> dict[str, str]:
    """``text,label`` CSV files: "big" when the text holds one of ``BIG``'s words, else "small"."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_test), ("test", n_test)):
        path = root / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(n):
                words = _sentence(rng, rng.randint(3, 7))
                if i % 2 == 0 and not BIG & set(words):
                    words[rng.randrange(len(words))] = rng.choice(sorted(BIG))
                writer.writerow([" ".join(words), "big" if BIG & set(words) else "small"])
        files[split] = str(path)
    return files


def tagging_files(root: Path, n_train: int = 40, n_test: int = 12, seed: int = 0) -> dict[str, str]:
    """CoNLL files (word TAB tag): ``B-BIG`` for ``BIG``'s words, ``O`` for the others."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_test), ("test", n_test)):
        path = root / f"{split}.conll"
        lines = []
        for _ in range(n):
            for w in _sentence(rng, rng.randint(3, 8)):
                lines.append(f"{w}\t{'B-BIG' if w in BIG else 'O'}")
            lines.append("")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[split] = str(path)
    return files


def regression_files(root: Path, n_train: int = 40, n_test: int = 12, seed: int = 0) -> dict[str, str]:
    """``text,text_pair,label`` CSV files: the score is the share of words the two sentences share, 0..5."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_test), ("test", n_test)):
        path = root / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "text_pair", "label"])
            for _ in range(n):
                a = _sentence(rng, 5)
                b = [w if rng.random() < 0.5 else rng.choice(WORDS) for w in a]
                score = 5.0 * len(set(a) & set(b)) / len(set(a) | set(b))
                writer.writerow([" ".join(a), " ".join(b), f"{score:.3f}"])
        files[split] = str(path)
    return files


def custom_task(name: str, kind: str, files: dict[str, str], **extra) -> dict:
    """A ``custom_tasks`` entry for these files."""
    task = {"name": name, "kind": kind, "files": files}
    if kind == "regression":
        task |= {"text_pair": "text_pair", "value_range": [0.0, 5.0]}
    return task | extra
