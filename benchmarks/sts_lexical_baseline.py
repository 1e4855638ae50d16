"""How far does word overlap alone go on RO-STS? Baselines without any model, for reading the
suite's STS Pearson (docs/evaluation.md, "STS").

On the test split (and dev, for reference), the Pearson and Spearman correlation (×100) between
the gold 0–5 score and: the Jaccard and Dice overlap of the two sentences' word sets (lower-cased
``\\w+`` tokens), and the cosine of their TF-IDF vectors (fitted on the training sentences).

    python benchmarks/sts_lexical_baseline.py --data-dir ../shared/data --out sts_baseline.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def baselines(train, split) -> dict:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.feature_extraction.text import TfidfVectorizer

    gold = np.array([ex.label for ex in split], dtype=np.float64)
    a = [words(ex.text) for ex in split]
    b = [words(ex.text_pair) for ex in split]
    jaccard = np.array([len(x & y) / max(1, len(x | y)) for x, y in zip(a, b)])
    dice = np.array([2 * len(x & y) / max(1, len(x) + len(y)) for x, y in zip(a, b)])
    vectorizer = TfidfVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b")
    vectorizer.fit([ex.text for ex in train] + [ex.text_pair for ex in train])
    va, vb = vectorizer.transform([ex.text for ex in split]), vectorizer.transform([ex.text_pair for ex in split])
    tfidf = np.asarray(va.multiply(vb).sum(axis=1)).ravel()  # rows are L2-normalised: the cosine
    out = {}
    for name, x in (("word_jaccard", jaccard), ("word_dice", dice), ("tfidf_cosine", tfidf)):
        out[name] = {"pearson": 100 * float(pearsonr(gold, x)[0]), "spearman": 100 * float(spearmanr(gold, x)[0])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from compresso.evaluation.data import LOCAL_READERS
    from compresso.evaluation.tasks import _examples

    raw = LOCAL_READERS["ro_sts"](Path(args.data_dir).expanduser())
    train, test = _examples("sts", raw.train), _examples("sts", raw.test)
    result = {"data": {k: v for k, v in raw.sources.items()}, "sizes": {"train": len(train), "test": len(test)},
              "test": baselines(train, test)}
    if raw.validation is not None:
        dev = _examples("sts", raw.validation)
        result["sizes"]["dev"] = len(dev)
        result["dev"] = baselines(train, dev)
    for split in ("test", "dev"):
        for name, v in result.get(split, {}).items():
            print(f"{split:5s} {name:13s} Pearson {v['pearson']:6.2f}  Spearman {v['spearman']:6.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
