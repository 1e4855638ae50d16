"""The vocab_trim strategy on tiny models: what is kept, what the tokenizer does, what the model computes."""

from __future__ import annotations

import copy
import gzip
import json
import lzma
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compresso.strategy import CompressionStrategy, ModelBundle, StrategyError
from compresso_vocab_trim import VocabTrimStrategy
from vocab_trim_fixtures import (
    FOREIGN,
    ROMANIAN,
    make_context,
    tiny_bert,
    tiny_xlm_roberta,
    unigram_tokenizer,
    wordpiece_tokenizer,
)

PLUGIN = Path(__file__).resolve().parents[1]


def run(bundle: ModelBundle, ctx, **params) -> ModelBundle:
    strategy = VocabTrimStrategy(VocabTrimStrategy.Params(**params))
    strategy.preflight(ctx)
    return strategy.apply(bundle, ctx)


def old_counts(tokenizer, texts) -> np.ndarray:
    """Token counts computed independently of the strategy, through the public tokenizer API."""
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for text in texts:
        for i in tokenizer(text, add_special_tokens=False)["input_ids"]:
            counts[i] += 1
    return counts


@torch.no_grad()
def logits(model, tokenizer, texts) -> list[torch.Tensor]:
    return [model(**tokenizer(t, return_tensors="pt"))[0][0] for t in texts]


def test_entry_point_is_declared_like_a_builtin():
    meta = tomllib.loads((PLUGIN / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["compresso.strategies"]
    assert eps == {"vocab_trim": "compresso_vocab_trim:VocabTrimStrategy"}
    assert issubclass(VocabTrimStrategy, CompressionStrategy) and VocabTrimStrategy.name == "vocab_trim"
    # A template must only lean on compresso's public API.
    src = "\n".join(p.read_text() for p in (PLUGIN / "src").rglob("*.py"))
    imported = {line.split()[1] for line in src.splitlines() if line.startswith(("from compresso.", "import compresso."))}
    assert imported == {"compresso.strategy"}


def test_wordpiece_trim_keeps_corpus_tokens_and_outputs(tmp_path, ctx, corpus_file):
    tokenizer = wordpiece_tokenizer()
    model = tiny_bert(tokenizer)
    original = copy.deepcopy(model)
    counts = old_counts(tokenizer, ROMANIAN)
    expected_keep = sorted(set(np.flatnonzero(counts).tolist()) | set(tokenizer.all_special_ids))

    out = run(ModelBundle(model, tokenizer, lineage=[{"source": "tiny"}]), ctx, corpus=[corpus_file])
    new_tok, new_model = out.tokenizer, out.model

    # Exactly the special tokens plus what the corpus used, renumbered in order.
    assert len(expected_keep) < len(tokenizer)
    assert new_tok.convert_ids_to_tokens(list(range(len(new_tok)))) == tokenizer.convert_ids_to_tokens(expected_keep)
    assert new_model.get_input_embeddings().num_embeddings == len(new_tok) == new_model.config.vocab_size
    assert new_model.cls.predictions.decoder.weight is new_model.bert.embeddings.word_embeddings.weight
    assert new_model.cls.predictions.bias.shape == (len(new_tok),)
    assert out.format == "transformers" and out.lineage == [{"source": "tiny"}]

    # Covered text: same pieces, ids renumbered, specials included; logits equal on kept ids.
    for text in ROMANIAN:
        assert new_tok.tokenize(text) == tokenizer.tokenize(text)
        old_ids = tokenizer(text)["input_ids"]
        assert new_tok(text)["input_ids"] == [expected_keep.index(i) for i in old_ids]
    for before, after in zip(logits(original, tokenizer, ROMANIAN[:6]), logits(new_model, new_tok, ROMANIAN[:6])):
        torch.testing.assert_close(after, before[:, expected_keep], rtol=1e-5, atol=1e-5)

    # Pieces only the foreign text needed are gone: characters never seen become [UNK].
    word = "Øresund"
    assert "[UNK]" not in tokenizer.tokenize(word)
    assert new_tok.tokenize(word) == ["[UNK]"]

    m = ctx.metrics
    assert (m["vocab_before"], m["vocab_after"]) == (len(tokenizer), len(expected_keep))
    assert m["corpus_documents"] == len(ROMANIAN) and m["corpus_tokens"] == counts.sum()
    assert m["corpus_coverage"] == 1.0
    assert m["parameters_before"] - m["parameters_after"] == (len(tokenizer) - len(expected_keep)) * (32 + 1)
    assert m["verify_covered_documents"] == m["verify_identical_documents"] == len(ROMANIAN)
    assert m["check_max_abs_logit_diff"] is not None and m["check_max_abs_logit_diff"] < 1e-4
    report = json.loads((ctx.stage_dir / "vocab_trim.json").read_text())
    assert report["kept_old_ids"] == expected_keep and report["metrics"]["vocab_after"] == len(expected_keep)
    assert "Kept" in (ctx.stage_dir / "vocab_trim.md").read_text()

    # The default save is plain save_pretrained: transformers alone loads the result.
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    VocabTrimStrategy.save(out, tmp_path / "saved")
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "saved")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "saved").eval()
    assert len(loaded_tok) == len(expected_keep)
    for before, after in zip(logits(original, tokenizer, ROMANIAN[6:9]), logits(loaded, loaded_tok, ROMANIAN[6:9])):
        torch.testing.assert_close(after, before[:, expected_keep], rtol=1e-5, atol=1e-5)


def test_added_tokens_beyond_the_model_vocabulary_are_kept(tmp_path, ctx):
    tokenizer = wordpiece_tokenizer()
    tokenizer.add_tokens(["supercalifragilistic"])
    tokenizer.add_tokens(["[ENT]"], special_tokens=True)
    model = tiny_bert(tokenizer)
    original = copy.deepcopy(model)
    docs = ROMANIAN + ["[ENT] Guvernul supercalifragilistic a anunțat ieri măsuri."]
    (tmp_path / "corpus.txt").write_text("\n".join(docs))
    out = run(ModelBundle(model, tokenizer), ctx, corpus=[tmp_path / "corpus.txt"])
    new_tok = out.tokenizer
    added = ["supercalifragilistic", "[ENT]"]
    old_ids = tokenizer.convert_tokens_to_ids(added)
    new_ids = new_tok.convert_tokens_to_ids(added)
    assert new_ids == [len(new_tok) - 2, len(new_tok) - 1]
    assert new_tok.added_tokens_decoder[new_ids[1]].special and not new_tok.added_tokens_decoder[new_ids[0]].special
    assert new_tok.tokenize(docs[-1]) == tokenizer.tokenize(docs[-1])
    emb_old, emb_new = original.get_input_embeddings().weight, out.model.get_input_embeddings().weight
    torch.testing.assert_close(emb_new[new_ids], emb_old[old_ids], rtol=0, atol=0)
    assert ctx.metrics["verify_identical_documents"] == len(docs)


def test_min_count_drops_rare_tokens(tmp_path, ctx):
    # The first eight documents appear twice, so all their tokens reach min_count=2.
    docs = ROMANIAN[:8] + ROMANIAN
    (tmp_path / "repeated.txt").write_text("\n".join(docs))
    tokenizer = wordpiece_tokenizer()
    counts = old_counts(tokenizer, docs)
    out = run(ModelBundle(tiny_bert(tokenizer), tokenizer), ctx, corpus=[tmp_path / "repeated.txt"], min_count=2)
    kept = tokenizer.convert_tokens_to_ids(out.tokenizer.convert_ids_to_tokens(list(range(len(out.tokenizer)))))
    assert set(kept) == set(np.flatnonzero(counts >= 2).tolist()) | set(tokenizer.all_special_ids)
    m = ctx.metrics
    assert m["corpus_coverage"] == pytest.approx(counts[counts >= 2].sum() / counts.sum(), abs=1e-6)
    assert m["corpus_coverage"] < 1
    # Documents without a rare piece still tokenize identically (and the model agrees on them).
    assert 8 <= m["verify_covered_documents"] == m["verify_identical_documents"] < len(docs)
    assert m["check_max_abs_logit_diff"] < 1e-4
    assert m["verify_unk_rate_after"] > m["verify_unk_rate_before"]


def test_keep_tokens_and_keep_characters(ctx, corpus_file):
    tokenizer = wordpiece_tokenizer()
    counts = old_counts(tokenizer, ROMANIAN)
    foreign_only = [t for t in tokenizer.tokenize(" ".join(FOREIGN))
                    if counts[tokenizer.convert_tokens_to_ids(t)] == 0 and len(t) > 3][:2]
    assert foreign_only
    out = run(ModelBundle(tiny_bert(tokenizer), tokenizer), ctx, corpus=[corpus_file],
              keep_tokens=foreign_only, keep_characters=True)
    vocab = out.tokenizer.get_vocab()
    assert all(t in vocab for t in foreign_only)
    # Words with unseen characters are now spelt out of single characters instead of [UNK].
    for word in ("Øresund", "Straße", "Größere"):
        pieces = out.tokenizer.tokenize(word)
        assert "[UNK]" not in pieces and "".join(p.removeprefix("##") for p in pieces) == word


def test_unknown_keep_token_is_refused(ctx, corpus_file):
    tokenizer = wordpiece_tokenizer()
    with pytest.raises(StrategyError, match="keep_tokens not in the tokenizer's vocabulary: 'nonexistenttoken'"):
        run(ModelBundle(tiny_bert(tokenizer), tokenizer), ctx, corpus=[corpus_file], keep_tokens=["nonexistenttoken"])
    assert ctx.metrics == {}


@pytest.mark.parametrize("head,tie", [("mlm", False), ("token-classification", True)])
def test_untied_decoder_and_headless_models(ctx, corpus_file, head, tie):
    tokenizer = wordpiece_tokenizer()
    model = tiny_bert(tokenizer, head=head, tie=tie)
    if head == "mlm":
        assert model.cls.predictions.decoder.weight is not model.bert.embeddings.word_embeddings.weight
    original = copy.deepcopy(model)
    out = run(ModelBundle(model, tokenizer), ctx, corpus=[corpus_file])
    keep = ctx.metrics["vocab_after"]
    assert out.model.get_input_embeddings().num_embeddings == keep
    texts = ROMANIAN[:4]
    for before, after in zip(logits(original, tokenizer, texts), logits(out.model, out.tokenizer, texts)):
        if head == "mlm":
            assert after.shape[-1] == keep
            before = before[:, tokenizer.convert_tokens_to_ids(out.tokenizer.convert_ids_to_tokens(list(range(keep))))]
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_unigram_tokenizer_and_xlm_roberta(tmp_path, ctx, corpus_file):
    tokenizer = unigram_tokenizer()
    model = tiny_xlm_roberta(tokenizer)
    original = copy.deepcopy(model)
    out = run(ModelBundle(model, tokenizer), ctx, corpus=[corpus_file])
    assert ctx.metrics["vocab_after"] < ctx.metrics["vocab_before"] == len(tokenizer)
    keep = tokenizer.convert_tokens_to_ids(out.tokenizer.convert_ids_to_tokens(list(range(len(out.tokenizer)))))
    assert keep == sorted(keep) and out.tokenizer.unk_token_id == keep.index(tokenizer.unk_token_id)
    VocabTrimStrategy.save(out, tmp_path / "saved")
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "saved")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "saved").eval()
    for text in ROMANIAN:
        assert loaded_tok.tokenize(text) == tokenizer.tokenize(text)
    for before, after in zip(logits(original, tokenizer, ROMANIAN[:4]), logits(loaded, loaded_tok, ROMANIAN[:4])):
        torch.testing.assert_close(after, before[:, keep], rtol=1e-5, atol=1e-5)
    # Unigram reports an unknown piece under its own text; its id is the unknown token's.
    assert loaded_tok("Øresund", add_special_tokens=False)["input_ids"].count(loaded_tok.unk_token_id) == 1
    assert tokenizer.unk_token_id not in tokenizer("Øresund", add_special_tokens=False)["input_ids"]


def test_compressed_corpora_and_max_documents(tmp_path, corpus_file):
    text = corpus_file.read_bytes()
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(text))
    (tmp_path / "c.txt.xz").write_bytes(lzma.compress(text))
    tokenizer = wordpiece_tokenizer()
    results = []
    for name in ("romanian.txt", "c.txt.gz", "c.txt.xz"):
        ctx = make_context(tmp_path / name.replace(".", "-"))
        run(ModelBundle(tiny_bert(tokenizer), tokenizer), ctx, corpus=[tmp_path / name])
        results.append({k: ctx.metrics[k] for k in ("corpus_documents", "corpus_tokens", "vocab_after")})
    assert results[0] == results[1] == results[2]
    ctx = make_context(tmp_path / "limited")
    run(ModelBundle(tiny_bert(tokenizer), tokenizer), ctx, corpus=[corpus_file, tmp_path / "c.txt.xz"],
        max_documents=5)
    assert ctx.metrics["corpus_documents"] == 5
    assert ctx.metrics["vocab_after"] < results[0]["vocab_after"]


def test_relative_corpus_paths_resolve_against_base_dir(tmp_path, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctx = make_context(tmp_path)
    tokenizer = wordpiece_tokenizer()
    run(ModelBundle(tiny_bert(tokenizer), tokenizer), ctx, corpus=["romanian.txt"])
    assert ctx.metrics["corpus_documents"] == len(ROMANIAN)


def test_parameter_errors(tmp_path):
    (tmp_path / "corpus.csv").write_text("a,b\n")
    with pytest.raises(ValidationError, match="expected a .txt, .gz or .xz file"):
        VocabTrimStrategy.Params(corpus=[tmp_path / "corpus.csv"])
    with pytest.raises(ValidationError, match="does not exist"):
        VocabTrimStrategy.Params(corpus=[tmp_path / "missing.txt"])
    with pytest.raises(ValidationError, match="at least 1 item"):
        VocabTrimStrategy.Params(corpus=[])
    with pytest.raises(ValidationError, match="greater than 0"):
        VocabTrimStrategy.Params(corpus=[tmp_path / "corpus.csv"], min_count=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        VocabTrimStrategy.Params.model_validate({"corpus": [], "min_cout": 2})


def test_empty_and_corrupt_corpora(tmp_path, ctx):
    tokenizer = wordpiece_tokenizer()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(StrategyError, match="corpus is empty.*empty.txt"):
        run(ModelBundle(tiny_bert(tokenizer), tokenizer), ctx, corpus=[empty])
    corrupt = tmp_path / "broken.xz"
    corrupt.write_bytes(b"this is not xz data\n")
    with pytest.raises(StrategyError, match=r"broken.xz: cannot be read as \.xz"):
        VocabTrimStrategy(VocabTrimStrategy.Params(corpus=[corrupt])).preflight(ctx)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("prima linie\nîn UTF-8\n".encode("utf-8") + "înainte\n".encode("latin-1"))
    with pytest.raises(StrategyError, match="latin1.txt: line 3 is not valid UTF-8"):
        run(ModelBundle(tiny_bert(tokenizer), tokenizer), ctx, corpus=[latin1])


def test_unsupported_tokenizers_are_refused_before_reading(ctx, corpus_file):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import ByT5Tokenizer, RobertaTokenizer

    slow = ByT5Tokenizer()  # a real pure-Python tokenizer
    with pytest.raises(StrategyError, match="ByT5Tokenizer is not a fast"):
        run(ModelBundle(tiny_bert(slow), slow), ctx, corpus=[corpus_file])

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.train_from_iterator(ROMANIAN, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    spec = json.loads(backend.to_str())["model"]
    bpe = RobertaTokenizer(vocab=spec["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split()) for m in spec["merges"]])
    with pytest.raises(StrategyError, match="tokenizer model 'BPE' is not supported"):
        run(ModelBundle(tiny_bert(bpe), bpe), ctx, corpus=[corpus_file])
    assert ctx.metrics == {}


def test_quantized_bundles_are_refused(ctx, corpus_file):
    tokenizer = wordpiece_tokenizer()
    with pytest.raises(StrategyError, match="needs a transformers model, got a 'quantize' bundle"):
        run(ModelBundle(tiny_bert(tokenizer), tokenizer, format="quantize"), ctx, corpus=[corpus_file])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
