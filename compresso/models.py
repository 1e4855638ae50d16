"""Loading and saving model bundles: hub ids or local folders in, ``save_pretrained`` out."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
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


def folder_fingerprint(root: Path, skip: tuple[str, ...] = ()) -> str:
    """A short hash of every file under ``root`` by relative name, size and modification time
    (rewriting a file changes it; reading the weights is not needed). Names in ``skip`` are left out."""
    files = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in root.rglob("*") if p.is_file() and p.name not in skip)
    return hashlib.sha256(json.dumps(files, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_identity(ref: str | None, revision: str | None = None) -> dict | None:
    """What a model *is*, independent of where it lies: a local folder by its files (and, for a
    compresso stage, the stage's content key), a hub id by its revision. Results cached for a
    model must be keyed by this, never by the path, which a rerun fills with another model."""
    if ref is None:
        return None
    if not is_local(ref):
        return {"hub": ref, "revision": revision or "main"}
    root = Path(ref).expanduser()
    if not root.is_dir():
        return {"missing": str(ref)}
    stage_key = None
    try:
        stage_key = json.loads((root / "stage.json").read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        pass
    # The model card (README.md) is written after evaluation: it is not part of the model.
    return {"files": folder_fingerprint(root, skip=("README.md",)), "stage_key": stage_key}


def _auto_class(config) -> type:
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        for suffix, auto in _HEADS.items():
            if arch.endswith(suffix):
                return getattr(transformers, auto)
    return transformers.AutoModel


HUB_CHECK_TIMEOUT = 10.0
"""Seconds ``apply`` waits for the Hugging Face Hub to answer whether a hub id exists: one request,
no retries, so that a machine without network fails at once instead of after minutes of backoff."""


@contextmanager
def hub_offline():
    """Within this block nothing leaves the machine: huggingface_hub (and transformers through it)
    answers from the local cache or fails at once. ``compresso validate`` runs in it."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: nothing can reach the network anyway
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _local_copy_hint(ref: str) -> str:
    return (f"download it on a connected machine (`hf download {ref} --local-dir ./models/{ref.split('/')[-1]}`), "
            f"copy the folder here and put its path in the recipe instead of the hub id")


def check_available(ref: str, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """Fail fast, before any stage runs, when a model cannot be had. A hub id is looked up in the
    local cache first (no request); otherwise the hub is asked once, with ``HUB_CHECK_TIMEOUT``."""
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model folder {path} does not exist")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} holds no config.json: not a save_pretrained folder")
        return
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    from transformers import AutoConfig

    named = f"{ref!r}{f' (revision {revision})' if revision else ''}"
    try:
        with hub_offline():
            AutoConfig.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
        return  # in the local cache
    except Exception:
        pass
    if constants.is_offline_mode():
        raise ModelLoadError(f"hub id {named} is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set, "
                             f"so nothing is downloaded. Unset HF_HUB_OFFLINE on a machine with network, or "
                             f"{_local_copy_hint(ref)}.")
    try:
        HfApi(endpoint=constants.ENDPOINT).model_info(ref, revision=revision, timeout=HUB_CHECK_TIMEOUT)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise ModelLoadError(f"hub id {named}: {type(exc).__name__}: the Hugging Face Hub has no such model or "
                             f"revision, or your token may not read it (`hf auth login`)") from None
    except Exception as exc:  # no route, DNS, a proxy that never answers
        raise ModelLoadError(f"hub id {named}: the Hugging Face Hub ({constants.ENDPOINT}) did not answer within "
                             f"{HUB_CHECK_TIMEOUT:g} s ({type(exc).__name__}). Without network, set "
                             f"HF_HUB_OFFLINE=1 to use models already in the local cache, or {_local_copy_hint(ref)}.") \
            from None
    try:
        AutoConfig.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        raise ModelLoadError(
            f"could not fetch {named} from the Hugging Face Hub: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}\nWithout network access, {_local_copy_hint(ref)}."
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
    if not isinstance(ref, (str, Path)):
        raise TypeError(f"a model reference is a folder path or a hub id (str or pathlib.Path), "
                        f"not {type(ref).__name__}")
    ref = str(ref)
    if not ref.strip():
        raise ModelLoadError("the model reference is an empty string; name a folder (\".\" for the current "
                             "one) or a hub id")
    try:
        return _load_bundle(ref, revision, trust_remote_code, dtype, model_class, **model_kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # a broken folder fails in many ways (JSON, missing files, unknown format)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(f"cannot load the model {ref}: {type(exc).__name__}: {detail}") from exc


def _load_bundle(ref: str, revision: str | None, trust_remote_code: bool, dtype: torch.dtype,
                 model_class: type | None, **model_kwargs) -> ModelBundle:
    meta_path = Path(ref).expanduser() / BUNDLE_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if not isinstance(meta, dict):
        raise ModelLoadError(f"cannot load the model {ref}: its {BUNDLE_META} is not a JSON object")
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
