"""Loading and saving model bundles: hub ids or local folders in, ``save_pretrained`` out."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compresso.strategy import BUNDLE_META, ModelBundle, write_json


class ModelLoadError(Exception):
    """A model could not be loaded; the message says which and what to do."""


_HEADS = {
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
}


def is_local(ref: str) -> bool:
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~"))


def _auto_class(config) -> type:
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        for suffix, auto in _HEADS.items():
            if arch.endswith(suffix):
                return getattr(transformers, auto)
    return transformers.AutoModel


def check_available(ref: str, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """Fail fast, before any stage runs, when a model cannot be had."""
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model folder {path} does not exist")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} holds no config.json: not a save_pretrained folder")
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        raise ModelLoadError(
            f"could not fetch {ref!r}{f' (revision {revision})' if revision else ''} from the "
            f"Hugging Face Hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
            f"Without network access, download it on a connected machine "
            f"(`hf download {ref} --local-dir ./models/{ref.split('/')[-1]}`), copy the folder here "
            f"and put its path in the recipe instead of the hub id."
        ) from exc


def load_bundle(ref: str | Path, revision: str | None = None, trust_remote_code: bool = False,
                dtype: torch.dtype = torch.float32, model_class: type | None = None,
                **model_kwargs) -> ModelBundle:
    """Load a model and its tokenizer from a hub id or a local folder.

    ``model_class`` (e.g. ``transformers.AutoModelForSequenceClassification``) and
    ``model_kwargs`` (e.g. ``num_labels=3``) load the backbone under another head; by default
    the saved architecture is used. Folders written by compresso carry ``compresso.json``; a
    non-``transformers`` format there is handed to the strategy that wrote it.
    """
    ref = str(ref)
    meta_path = Path(ref).expanduser() / BUNDLE_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    fmt = meta.get("format", "transformers")
    if fmt != "transformers":
        from compresso import registry

        return registry.get(fmt).load(Path(ref).expanduser(), model_class, **model_kwargs)

    from transformers import AutoConfig, AutoTokenizer

    check_available(ref, revision, trust_remote_code)
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(ref, **kwargs)
    model_class = model_class or _auto_class(config)
    model = model_class.from_pretrained(ref, dtype=dtype, attn_implementation="sdpa", **kwargs, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
    lineage = meta.get("lineage") or [{"source": ref, "revision": revision}]
    return ModelBundle(model=model, tokenizer=tokenizer, lineage=lineage)


def save_bundle(bundle: ModelBundle, path: Path) -> None:
    """``save_pretrained`` for model and tokenizer (safetensors), plus ``compresso.json``."""
    path.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(path, safe_serialization=True)
    bundle.tokenizer.save_pretrained(path)
    config = getattr(bundle.model, "config", None)
    if getattr(config, "compresso_task", None):
        # a task model under a siamese head: the files sentence-transformers reads go beside it
        from compresso.evaluation.task_model import task_head, write_pooling_files

        head = task_head(config)
        if head.head == "siamese":
            write_pooling_files(path, head, config.hidden_size)
    write_json(path / BUNDLE_META, bundle.meta())


def load(path: str | Path) -> ModelBundle:
    """Load anything compresso saved (or any ``save_pretrained`` folder / hub id)."""
    return load_bundle(path)
