"""How far do word overlap, and a model with no fine-tuning, go on RO-STS? Baselines for reading
the suite's STS Pearson (docs/evaluation.md, "STS").

On the test split (and dev, for reference), the Pearson and Spearman correlation (×100) between
the gold 0–5 score and: the Jaccard and Dice overlap of the two sentences' word sets (lower-cased
``\\w+`` tokens), and the cosine of their TF-IDF vectors (fitted on the training sentences). With
``--models``, also the cosine of each model's mean-pooled last hidden states of the two sentences
encoded separately — the pretrained encoder as it is, no training at all (CPU, a minute each).

    python benchmarks/sts_lexical_baseline.py --data-dir ../shared/data \\
        --models ../shared/teachers/ro-bert-small-cased ../shared/teachers/ro-robert-small-uncased --out sts.json
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


def untrained_cosine(path: str, split) -> dict:
    import torch
    from scipy.stats import pearsonr, spearmanr
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()

    @torch.inference_mode()
    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 64):
            batch = tok(texts[i:i + 64], truncation=True, max_length=128, padding=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1))
        return torch.cat(out)

    gold = np.array([ex.label for ex in split], dtype=np.float64)
    cos = torch.nn.functional.cosine_similarity(embed([ex.text for ex in split]),
                                                embed([ex.text_pair for ex in split])).numpy()
    return {"pearson": 100 * float(pearsonr(gold, cos)[0]), "spearman": 100 * float(spearmanr(gold, cos)[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--models", nargs="*", default=[], help="encoders for the untrained mean-pooled cosine")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from compresso.evaluation.data import LOCAL_READERS
    from compresso.evaluation.tasks import _examples

    raw = LOCAL_READERS["ro_sts"](Path(args.data_dir).expanduser())
    train, test = _examples("sts", raw.train), _examples("sts", raw.test)
    scaled = np.array([ex.label for ex in train], dtype=np.float64) / 5.0
    result = {"data": {k: v for k, v in raw.sources.items()}, "sizes": {"train": len(train), "test": len(test)},
              # the MSE of always predicting the mean, on the [0, 1] scale the suite trains on
              "train_target_scaled": {"mean": float(scaled.mean()), "variance": float(scaled.var())},
              "test": baselines(train, test)}
    if raw.validation is not None:
        dev = _examples("sts", raw.validation)
        result["sizes"]["dev"] = len(dev)
        result["dev"] = baselines(train, dev)
    for path in args.models:
        name = Path(path.rstrip("/")).name
        result["test"][f"untrained_cosine:{name}"] = untrained_cosine(path, test)
    for split in ("test", "dev"):
        for name, v in result.get(split, {}).items():
            print(f"{split:5s} {name:40s} Pearson {v['pearson']:6.2f}  Spearman {v['spearman']:6.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
