"""``source: hub``: the benchmark datasets through the `datasets` library (optional extra).

The hub copies of these datasets were published with loading scripts, which current `datasets`
releases no longer run; the hub's automatic Parquet conversion (revision ``refs/convert/parquet``)
serves the same rows. MOROCO's hub copy carries topic labels only, not the dialect labels that DI
needs, so DI has no default hub dataset: read MOROCO's own files (``source: local``) or name a
dataset with ``sample`` and ``dialect`` columns in ``hub_datasets.di``.
"""

from __future__ import annotations

from compresso.evaluation.config import HubDataset
from compresso.evaluation.data import (
    ConlluSentence,
    DataError,
    MorocoSample,
    NerSentence,
    RawSplits,
    Review,
    StsPair,
)

PARQUET = "refs/convert/parquet"

DEFAULT_HUB = {
    "ro_rrt": HubDataset(path="universal-dependencies/universal_dependencies", name="ro_rrt", revision=PARQUET),
    "ronec": HubDataset(path="dumitrescustefan/ronec", name="ronec", revision=PARQUET),
    "laroseda": HubDataset(path="universityofbucharest/laroseda", name="laroseda", revision=PARQUET),
    "ro_sts": HubDataset(path="dumitrescustefan/ro_sts", name="ro_sts", revision=PARQUET),
}


def _names(feature) -> list[str] | None:
    """Class names of a ClassLabel, or of a Sequence/List of ClassLabel."""
    inner = getattr(feature, "feature", feature)
    return list(inner.names) if hasattr(inner, "names") else None


def _decode(values, names):
    return [names[v] if names is not None and isinstance(v, int) else str(v) for v in values]


def _convert(dataset: str, ds) -> list:
    cols = set(ds.column_names)
    if dataset == "ro_rrt":
        upos_names, xpos_names = _names(ds.features["upos"]), _names(ds.features.get("xpos"))
        out = []
        for row in ds:
            upos = _decode(row["upos"], upos_names)
            xpos = _decode(row["xpos"], xpos_names) if "xpos" in cols else ["_"] * len(upos)
            # multiword-token ranges carry the placeholder tag "_": drop them like the CoNLL-U reader does
            keep = [i for i, tag in enumerate(upos) if tag != "_"]
            out.append(ConlluSentence([row["tokens"][i] for i in keep], [upos[i] for i in keep],
                                      [xpos[i] for i in keep], row.get("idx")))
        return out
    if dataset == "ronec":
        names = _names(ds.features["ner_tags"])
        return [NerSentence(list(row["tokens"]), _decode(row["ner_tags"], names), str(row.get("id")))
                for row in ds if row["tokens"]]
    if dataset == "laroseda":
        return [Review(row["title"] or "", row["content"] or "", int(row["starRating"]), str(row.get("index")))
                for row in ds]
    if dataset == "ro_sts":
        return [StsPair(float(row["score"]), row["sentence1"], row["sentence2"]) for row in ds]
    if dataset == "moroco":
        if "dialect" not in cols:
            raise DataError(f"hub dataset for DI has columns {sorted(cols)}; it needs 'sample' and 'dialect' "
                            f"(1 Moldavian, 2 Romanian)")
        names = _names(ds.features["dialect"])
        out = []
        for i, row in enumerate(ds):
            value = row["dialect"]
            label = names[value].lower() if names is not None else str(value).lower()
            dialect = 1 if label in ("1", "md", "moldavian") else 2 if label in ("2", "ro", "romanian") else None
            if dialect is None:
                raise DataError(f"hub dataset for DI, row {i}: dialect {value!r} is neither Moldavian nor Romanian")
            out.append(MorocoSample(str(row.get("id", i)), row["sample"], dialect, None))
        return out
    raise ValueError(dataset)


def hub_splits(dataset: str, spec: HubDataset | None) -> RawSplits:
    spec = spec or DEFAULT_HUB.get(dataset)
    if spec is None:
        raise DataError("DI on the hub: MOROCO's hub copy has no dialect labels; use source: local with "
                        "MOROCO's files, or set hub_datasets.di to a dataset with 'sample' and 'dialect' columns")
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("source: hub needs the `datasets` package: pip install 'compresso[hub]'") from None
    try:
        dsd = load_dataset(spec.path, spec.name, revision=spec.revision)
    except Exception as exc:  # network, missing repo, missing config: one message for the user
        raise DataError(f"could not load hub dataset {spec.path}"
                        f"{f' ({spec.name})' if spec.name else ''}"
                        f"{f' at {spec.revision}' if spec.revision else ''}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}. Offline, use source: local.") from exc
    where = f"{spec.path}{f'/{spec.name}' if spec.name else ''}"
    splits = {name: _convert(dataset, dsd[name]) for name in dsd}
    if "train" not in splits or "test" not in splits:
        raise DataError(f"hub dataset {where} has splits {sorted(splits)}; train and test are needed")
    validation = splits.get("validation", splits.get("dev"))
    return RawSplits(splits["train"], validation, splits["test"],
                     {k: f"hub:{where}[{k}]" for k in splits}, [])
