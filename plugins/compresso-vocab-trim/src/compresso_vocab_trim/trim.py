"""The two halves of vocabulary trimming: rewrite the tokenizer, cut the model's vocab rows.

Both take ``keep_ids``: the old ids to keep, ascending. The token with old id ``keep_ids[i]``
gets new id ``i``, so relative order (and with it the position of the special tokens, which
sit at the start of most vocabularies) is preserved.

Why trimming leaves covered text unchanged: WordPiece takes, at each position of a word, the
longest vocabulary entry that matches; Unigram takes the most probable segmentation. If every
piece of a word's original segmentation is kept, that segmentation is still available and
nothing better can have appeared (the new vocabulary is a subset), so the word is split exactly
as before. A word that needed a dropped piece is split into other kept pieces where possible,
and becomes the unknown token otherwise.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

SUPPORTED_MODELS = ("WordPiece", "Unigram")


class TrimError(Exception):
    """The model or tokenizer cannot be trimmed; the message says why."""


# ---------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_spec(tokenizer) -> dict:
    """The ``tokenizer.json`` of a fast tokenizer, checked to be one we know how to trim."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None:
        raise TrimError(f"{type(tokenizer).__name__} is not a fast (Rust `tokenizers`) tokenizer; vocabulary "
                        f"trimming rewrites tokenizer.json, so it needs one. Load the model's tokenizer "
                        f"with AutoTokenizer (which prefers the fast one) or convert it first.")
    spec = json.loads(backend.to_str())
    kind = spec["model"].get("type")
    if kind not in SUPPORTED_MODELS:
        raise TrimError(f"tokenizer model {kind!r} is not supported (supported: {', '.join(SUPPORTED_MODELS)}). "
                        f"BPE cannot be trimmed by dropping entries alone: its merge rules pass through "
                        f"intermediate tokens that never appear in the output.")
    return spec


def vocab_tokens(spec: dict) -> list[str]:
    """Every token as a list indexed by id: the model vocabulary, then added tokens that the
    model vocabulary does not hold (``tokenizer.add_tokens``), which get the ids after it."""
    model = spec["model"]
    if model["type"] == "WordPiece":
        tokens: list[str | None] = [None] * len(model["vocab"])
        for token, idx in model["vocab"].items():
            if idx >= len(tokens) or tokens[idx] is not None:
                raise TrimError("tokenizer.json's WordPiece vocab ids are not 0..N-1 without gaps")
            tokens[idx] = token
    else:
        tokens = [piece for piece, _score in model["vocab"]]
    beyond = sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []) if t["id"] >= len(tokens))
    for idx, content in beyond:
        if idx != len(tokens):
            raise TrimError(f"added token {content!r} has id {idx}, leaving a gap after id {len(tokens) - 1}")
        tokens.append(content)
    return tokens  # type: ignore[return-value]


def model_vocab_size(spec: dict) -> int:
    return len(spec["model"]["vocab"])


def required_ids(tokenizer, spec: dict) -> set[int]:
    """Ids that must survive whatever the corpus says: special, added and unknown tokens, and
    (Unigram with byte fallback) the 256 byte pieces."""
    ids = set(tokenizer.all_special_ids)
    ids.update(t["id"] for t in spec.get("added_tokens", []))
    model = spec["model"]
    if model["type"] == "WordPiece":
        unk = model["vocab"].get(model.get("unk_token"))
        if unk is not None:
            ids.add(unk)
    else:
        if model.get("unk_id") is not None:
            ids.add(model["unk_id"])
        if model.get("byte_fallback"):
            ids.update(i for i, (piece, _) in enumerate(model["vocab"])
                       if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"))
    return ids


def character_ids(spec: dict) -> set[int]:
    """Single-character pieces (and their ``##`` continuations): keeping them lets any word
    spelt with known characters still be split into pieces instead of becoming unknown."""
    prefix = spec["model"].get("continuing_subword_prefix") or ""
    out = set()
    for i, token in enumerate(vocab_tokens(spec)):
        bare = token[len(prefix):] if prefix and token.startswith(prefix) and len(token) > len(prefix) else token
        if spec["model"]["type"] == "Unigram":
            bare = bare.lstrip("\u2581") or bare  # the metaspace marker does not count
        if len(bare) == 1:
            out.add(i)
    return out


def _remap_post_processor(node: Any, old_to_new: dict[int, int]) -> Any:
    """Special-token ids live in the post-processor too (TemplateProcessing's ``ids``,
    BertProcessing/RobertaProcessing's ``[token, id]`` pairs)."""
    if isinstance(node, list):
        return [_remap_post_processor(x, old_to_new) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "ids" and isinstance(value, list):
            out[key] = [old_to_new[i] for i in value]
        elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            out[key] = [value[0], old_to_new[value[1]]]
        else:
            out[key] = _remap_post_processor(value, old_to_new)
    return out


def trimmed_spec(spec: dict, keep_ids: list[int]) -> dict:
    """A new ``tokenizer.json`` holding only ``keep_ids``, renumbered in order."""
    old_to_new = {old: new for new, old in enumerate(keep_ids)}
    spec = json.loads(json.dumps(spec))
    model = spec["model"]
    # Added tokens beyond the model vocabulary stay outside it; being kept and last, they are
    # renumbered right after the kept model vocabulary, where tokenizers expects them.
    in_model = [old for old in keep_ids if old < model_vocab_size(spec)]
    if model["type"] == "WordPiece":
        tokens = vocab_tokens(spec)
        model["vocab"] = {tokens[old]: new for new, old in enumerate(in_model)}
    else:
        model["vocab"] = [model["vocab"][old] for old in in_model]
        if model.get("unk_id") is not None:
            model["unk_id"] = old_to_new[model["unk_id"]]
    for added in spec.get("added_tokens", []):
        added["id"] = old_to_new[added["id"]]
    if spec.get("post_processor"):
        spec["post_processor"] = _remap_post_processor(spec["post_processor"], old_to_new)
    if spec.get("padding") and spec["padding"].get("pad_id") is not None:
        spec["padding"]["pad_id"] = old_to_new[spec["padding"]["pad_id"]]
    return spec


def trim_tokenizer(tokenizer, spec: dict, keep_ids: list[int]):
    """Return a tokenizer that produces the new ids, loaded back with ``AutoTokenizer`` so that
    it is exactly what plain transformers will load from the saved stage."""
    from transformers import AutoTokenizer

    new_spec = trimmed_spec(spec, keep_ids)
    with tempfile.TemporaryDirectory(prefix="vocab-trim-") as tmp:
        folder = Path(tmp)
        tokenizer.save_pretrained(folder)
        (folder / "tokenizer.json").write_text(json.dumps(new_spec, ensure_ascii=False))
        # Files a slow tokenizer would read instead of tokenizer.json must not disagree with it.
        if (folder / "vocab.txt").exists():
            tokens = vocab_tokens(new_spec)[:model_vocab_size(new_spec)]
            (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens))
        for stale in ("sentencepiece.bpe.model", "spiece.model", "tokenizer.model"):
            (folder / stale).unlink(missing_ok=True)
        return AutoTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# Model


def vocab_parameters(model: torch.nn.Module) -> dict[int, torch.nn.Parameter]:
    """Every parameter indexed by token id (rows = vocabulary), keyed by ``id()``.

    That is the input embedding, the output projection and its bias, and anything tied to
    them (BERT's ``cls.predictions.bias`` is the decoder's bias under another name).
    """
    try:
        inputs = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        inputs = None
    if not isinstance(inputs, torch.nn.Embedding):
        raise TrimError(f"{type(model).__name__} has no token embedding (get_input_embeddings() returned "
                        f"{type(inputs).__name__})")
    vocab = inputs.num_embeddings
    found = {id(inputs.weight): inputs.weight}
    outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if outputs is not None:
        for p in (getattr(outputs, "weight", None), getattr(outputs, "bias", None)):
            if p is not None:
                found[id(p)] = p
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for name in [*tied.keys(), *tied.values()]:
        try:
            p = model.get_parameter(name)
        except AttributeError:
            continue
        if p.shape[0] == vocab:
            found[id(p)] = p
    for p in found.values():
        if p.shape[0] != vocab:
            raise TrimError(f"{type(model).__name__}: a vocabulary parameter has {p.shape[0]} rows, the "
                            f"embedding {vocab}; cannot tell which rows belong to which token")
    return found


def trim_model(model: torch.nn.Module, keep_ids: list[int]) -> None:
    """Keep only ``keep_ids`` rows of every vocabulary parameter, in place, preserving ties."""
    params = vocab_parameters(model)
    vocab = model.get_input_embeddings().num_embeddings
    if keep_ids[-1] >= vocab:
        raise TrimError(f"token id {keep_ids[-1]} is outside the model's embedding ({vocab} rows)")
    old_to_new = {old: new for new, old in enumerate(keep_ids)}
    index = torch.tensor(keep_ids, dtype=torch.long)
    replaced: dict[int, torch.nn.Parameter] = {}
    resized: set[int] = set()
    # remove_duplicate=False: a module reachable under two names must be visited under both.
    for _name, module in model.named_modules(remove_duplicate=False):
        for attr, p in list(module._parameters.items()):
            if p is None or id(p) not in params:
                continue
            if id(p) not in replaced:
                rows = p.detach().index_select(0, index.to(p.device)).clone()
                replaced[id(p)] = torch.nn.Parameter(rows, requires_grad=p.requires_grad)
            setattr(module, attr, replaced[id(p)])
        if id(module) in resized:
            continue
        new_ids = {id(v) for v in replaced.values()}
        if isinstance(module, torch.nn.Embedding) and id(module.weight) in new_ids:
            module.num_embeddings = len(keep_ids)
            if module.padding_idx is not None:
                module.padding_idx = old_to_new[module.padding_idx]
            resized.add(id(module))
        if isinstance(module, torch.nn.Linear) and id(module.weight) in new_ids:
            module.out_features = len(keep_ids)
            resized.add(id(module))

    configs = [model.config]
    if hasattr(model.config, "get_text_config") and model.config.get_text_config() is not model.config:
        configs.append(model.config.get_text_config())
    for config in configs:
        config.vocab_size = len(keep_ids)
        for key in token_id_keys(config):
            if getattr(config, key) in old_to_new:  # ids outside the vocabulary were never usable
                setattr(config, key, old_to_new[getattr(config, key)])


def token_id_keys(config) -> list[str]:
    """Config entries that hold a token id (``pad_token_id`` ...), which must move with it."""
    return [k for k in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                        "mask_token_id", "unk_token_id", "decoder_start_token_id")
            if isinstance(getattr(config, k, None), int)]


def config_token_ids(model: torch.nn.Module) -> set[int]:
    """Ids the model's config or embedding names (pad, bos ...): kept whatever the corpus says."""
    ids = {getattr(model.config, k) for k in token_id_keys(model.config)}
    emb = model.get_input_embeddings()
    if emb.padding_idx is not None:
        ids.add(emb.padding_idx)
    return {i for i in ids if 0 <= i < emb.num_embeddings}
