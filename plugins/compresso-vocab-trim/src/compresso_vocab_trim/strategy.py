"""``vocab_trim``: drop the vocabulary a model never needs for a given corpus.

Multilingual and general-purpose encoders spend a large share of their parameters on the
token embedding (and the tied MLM decoder). For a model that will only see one language or
domain, most rows are dead weight: this strategy counts which tokens the model's own tokenizer
produces on a corpus, keeps those seen at least ``min_count`` times plus every special token,
and rewrites the tokenizer so that it emits the new, dense ids. The transformer layers are
untouched, so for text the corpus covers the trimmed model computes exactly what the original
did (the stage checks this on a sample before it returns).
"""

from __future__ import annotations

from pathlib import Path

from typing import Annotated

import numpy as np
import torch
from pydantic import AfterValidator, Field, PositiveInt

from compresso.strategy import (
    CompressionStrategy,
    InputPath,
    ModelBundle,
    RunContext,
    StrategyError,
    StrategyParams,
    write_json,
)

from compresso_vocab_trim.corpus import CorpusError, CorpusReader, check_readable, check_suffix
from compresso_vocab_trim.trim import (
    TrimError,
    character_ids,
    config_token_ids,
    required_ids,
    tokenizer_spec,
    trim_model,
    trim_tokenizer,
    vocab_tokens,
)

CorpusFile = Annotated[InputPath, AfterValidator(check_suffix)]

# Documents handed to the Rust tokenizer per call: large enough to amortise the call, small
# enough that the progress bar moves.
BATCH_DOCUMENTS = 512
# Documents (truncated to this many tokens) on which the trimmed model's logits are compared
# with the original's before the stage returns.
CHECK_DOCUMENTS, CHECK_TOKENS = 8, 128


class VocabTrimParams(StrategyParams):
    corpus: list[CorpusFile] = Field(
        min_length=1,
        description="Text files, one document per line (.txt, .gz or .xz), in the language/domain the "
                    "trimmed model will serve. Every token the tokenizer produces on them is counted.")
    max_documents: PositiveInt | None = Field(
        None, description="Read at most this many non-blank lines in total (across files, in order); "
                          "default: all of them.")
    min_count: PositiveInt = Field(
        1, description="Keep tokens seen at least this many times. 1 keeps everything the corpus uses, "
                       "so every corpus document tokenizes exactly as before.")
    keep_tokens: list[str] = Field(
        default_factory=list,
        description="Extra vocabulary entries to keep whatever their count (e.g. markup or label words).")
    keep_characters: bool = Field(
        False, description="Also keep every single-character piece (and its ## continuation), so that "
                           "unseen words made of known characters are split into pieces rather than "
                           "becoming [UNK]. Costs a few hundred rows for alphabetic scripts, thousands "
                           "for vocabularies with CJK characters.")
    verify_documents: int = Field(
        1000, ge=0,
        description="Re-tokenize this many corpus documents with the trimmed tokenizer and check that "
                    "every document whose tokens were all kept gets exactly the same tokens.")


class VocabTrimStrategy(CompressionStrategy):
    name = "vocab_trim"
    summary = ("Drop embedding/decoder rows for tokens a corpus never uses and renumber the tokenizer "
               "(WordPiece, Unigram); transformer layers untouched.")
    Params = VocabTrimParams
    accepts_formats = frozenset({"transformers"})
    params: VocabTrimParams

    def preflight(self, ctx: RunContext) -> None:
        for path in self.params.corpus:
            try:
                check_readable(ctx.resolve_path(path))
            except CorpusError as exc:
                raise StrategyError(f"vocab_trim: {exc}") from None

    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        p = self.params
        model, tokenizer = bundle.model, bundle.tokenizer
        if bundle.format != "transformers":
            raise StrategyError(f"vocab_trim needs a transformers model, got a {bundle.format!r} bundle; "
                                f"put vocab_trim before quantization in the recipe")
        try:
            spec = tokenizer_spec(tokenizer)
            vocab = vocab_tokens(spec)
            always = required_ids(tokenizer, spec) | config_token_ids(model)
        except TrimError as exc:
            raise StrategyError(f"vocab_trim: {exc}") from None
        rows = model.get_input_embeddings().num_embeddings
        if len(vocab) > rows:
            raise StrategyError(f"vocab_trim: the tokenizer has {len(vocab)} entries but the model's embedding "
                                f"only {rows} rows; they do not belong together")
        token_to_id = {t: i for i, t in enumerate(vocab)}
        unknown = [t for t in p.keep_tokens if t not in token_to_id]
        if unknown:
            raise StrategyError(f"vocab_trim: keep_tokens not in the tokenizer's vocabulary: "
                                f"{', '.join(map(repr, unknown[:20]))}{' ...' if len(unknown) > 20 else ''}")
        always |= {token_to_id[t] for t in p.keep_tokens}
        if p.keep_characters:
            always |= character_ids(spec)
        unk_id = tokenizer.unk_token_id

        counts, sample, docs, corpus_tokens = self._count(tokenizer, len(vocab), ctx)
        if docs == 0:
            raise StrategyError(f"vocab_trim: the corpus is empty (no non-blank line in "
                                f"{', '.join(str(f) for f in p.corpus)})")

        keep = np.flatnonzero(counts >= p.min_count)
        keep_ids = sorted(set(keep.tolist()) | always)
        kept_mask = np.zeros(len(vocab), dtype=bool)
        kept_mask[keep_ids] = True

        params_before = _count_parameters(model)
        reference = self._reference_logits(model, sample, kept_mask)
        try:
            new_tokenizer = trim_tokenizer(tokenizer, spec, keep_ids)
            trim_model(model, keep_ids)
        except TrimError as exc:
            raise StrategyError(f"vocab_trim: {exc}") from None
        probe = next((text for text, ids in sample if kept_mask[ids].all()), None)
        self._check_special_tokens(tokenizer, new_tokenizer, keep_ids, probe)
        verify = self._verify_tokenizer(new_tokenizer, sample, keep_ids, kept_mask, unk_id)
        max_diff = self._compare_logits(model, reference, keep_ids)

        seen = counts > 0
        metrics = {
            "vocab_before": len(vocab),
            "vocab_after": len(keep_ids),
            "vocab_kept_fraction": round(len(keep_ids) / len(vocab), 4),
            "embedding_rows_before": rows,
            "parameters_before": params_before,
            "parameters_after": _count_parameters(model),
            "corpus_documents": docs,
            "corpus_tokens": corpus_tokens,
            "corpus_distinct_tokens": int(seen.sum()),
            # Share of the corpus's token occurrences whose token survived (1.0 when min_count is 1).
            "corpus_coverage": round(float(counts[kept_mask].sum() / max(corpus_tokens, 1)), 6),
            "corpus_unk_rate": round(float(counts[unk_id] / max(corpus_tokens, 1)), 6) if unk_id is not None else None,
            **verify,
            "check_max_abs_logit_diff": max_diff,
        }
        metrics["parameters_saved_fraction"] = round(1 - metrics["parameters_after"] / params_before, 4)
        ctx.metrics.update(metrics)
        ctx.log(f"vocab_trim: kept {len(keep_ids):,} of {len(vocab):,} tokens; parameters "
                f"{params_before:,} -> {metrics['parameters_after']:,}")
        if ctx.is_main:
            self._write_report(ctx.stage_dir, metrics, vocab, keep_ids, counts)
        return ModelBundle(model=model, tokenizer=new_tokenizer, lineage=bundle.lineage, format="transformers")

    # -----------------------------------------------------------------------------------------

    def _count(self, tokenizer, vocab_size: int, ctx: RunContext):
        """Token counts over the corpus, plus the first documents (and their ids) for checks."""
        p = self.params
        paths = [ctx.resolve_path(f) for f in p.corpus]
        reader = CorpusReader(paths)
        backend = tokenizer.backend_tokenizer
        counts = np.zeros(vocab_size, dtype=np.int64)
        sample: list[tuple[str, list[int]]] = []
        docs = tokens = 0
        by_docs = p.max_documents is not None
        # Without max_documents the amount of text is only known as file size: show MiB on disk.
        mib = 1 << 20
        total = p.max_documents if by_docs else max(1, round(reader.total_bytes / mib))
        what = "documents" if by_docs else "MiB of corpus files"
        batch: list[str] = []

        def flush():
            nonlocal docs, tokens
            encodings = backend.encode_batch(batch, add_special_tokens=False)
            ids = [e.ids for e in encodings]
            flat = np.fromiter((i for doc in ids for i in doc), dtype=np.int64)
            if flat.size and flat.max() >= vocab_size:
                raise StrategyError(f"vocab_trim: the tokenizer produced id {int(flat.max())}, outside its "
                                    f"model vocabulary of {vocab_size}")
            counts[:] += np.bincount(flat, minlength=vocab_size)
            room = p.verify_documents - len(sample)
            if room > 0:
                sample.extend(zip(batch[:room], ids[:room]))
            docs += len(batch)
            tokens += int(flat.size)
            batch.clear()

        with ctx.progress() as progress:
            task = progress.add_task(f"vocab_trim: counting tokens ({what})", total=total)
            try:
                for text in reader.documents():
                    batch.append(text)
                    if len(batch) == BATCH_DOCUMENTS or (by_docs and docs + len(batch) >= p.max_documents):
                        flush()
                        progress.update(task, completed=docs if by_docs else reader.bytes_read / mib)
                        if by_docs and docs >= p.max_documents:
                            break
                if batch:
                    flush()
            except CorpusError as exc:
                raise StrategyError(f"vocab_trim: {exc}") from None
            progress.update(task, completed=total)
        return counts, sample, docs, tokens

    @staticmethod
    def _check_special_tokens(old, new, keep_ids, probe: str | None) -> None:
        """Some tokenizer classes rebuild themselves on load with fixed special ids; make sure the
        reloaded one agrees with the renumbering, including the ids its post-processor adds."""
        old_to_new = {o: n for n, o in enumerate(keep_ids)}
        for token, old_id in zip(old.all_special_tokens, old.all_special_ids):
            if new.convert_tokens_to_ids(token) != old_to_new[old_id]:
                raise StrategyError(f"vocab_trim: {type(new).__name__} reloads {token!r} as id "
                                    f"{new.convert_tokens_to_ids(token)}, expected {old_to_new[old_id]}; this "
                                    f"tokenizer class cannot be trimmed safely")
        if probe is not None:
            old_ids = old(probe, add_special_tokens=True)["input_ids"]
            if [old_to_new.get(i) for i in old_ids] != new(probe, add_special_tokens=True)["input_ids"]:
                raise StrategyError(f"vocab_trim: the trimmed {type(new).__name__} encodes a covered document "
                                    f"differently (special tokens included) than the original; cannot trim "
                                    f"it safely")

    @staticmethod
    def _verify_tokenizer(tokenizer, sample, keep_ids, kept_mask, unk_id) -> dict:
        """Covered documents must tokenize identically; report what happens to the others."""
        old_to_new = np.full(kept_mask.size, -1, dtype=np.int64)
        old_to_new[keep_ids] = np.arange(len(keep_ids))
        new_unk = int(old_to_new[unk_id]) if unk_id is not None else None
        encodings = tokenizer.backend_tokenizer.encode_batch([t for t, _ in sample], add_special_tokens=False)
        covered = identical = old_unks = new_unks = total = 0
        for (text, old_ids), enc in zip(sample, encodings):
            old = np.asarray(old_ids, dtype=np.int64)
            total += len(enc.ids)
            old_unks += int((old == unk_id).sum()) if unk_id is not None else 0
            new_unks += sum(1 for i in enc.ids if i == new_unk)
            if kept_mask[old].all():
                covered += 1
                if old_to_new[old].tolist() == enc.ids:
                    identical += 1
                else:
                    raise StrategyError(
                        f"vocab_trim: internal error: the trimmed tokenizer splits a fully covered document "
                        f"differently ({text[:80]!r}...); please report this with the tokenizer")
        return {
            "verify_documents": len(sample),
            "verify_covered_documents": covered,
            "verify_identical_documents": identical,
            "verify_unk_rate_before": round(old_unks / max(total, 1), 6),
            "verify_unk_rate_after": round(new_unks / max(total, 1), 6),
        }

    @staticmethod
    def _reference_logits(model, sample, kept_mask):
        """The original model's outputs on a few fully covered documents, before trimming."""
        docs = [ids[:CHECK_TOKENS] for _, ids in sample if ids and kept_mask[ids].all()][:CHECK_DOCUMENTS]
        if not docs:
            return None
        return docs, _forward(model, docs)

    @staticmethod
    def _compare_logits(model, reference, keep_ids) -> float | None:
        if reference is None:
            return None
        docs, before = reference
        old_to_new = {old: new for new, old in enumerate(keep_ids)}
        after = _forward(model, [[old_to_new[i] for i in doc] for doc in docs])
        if before.shape[-1] != after.shape[-1]:  # a vocabulary-sized output: compare the kept columns
            before = before[..., keep_ids]
        diff = float((before - after).abs().max())
        scale = float(before.abs().max()) or 1.0
        if diff > 1e-4 * scale + 1e-5:
            raise StrategyError(f"vocab_trim: the trimmed model's outputs differ from the original's by {diff:.3g} "
                                f"on covered text; {type(model).__name__} keeps token-indexed weights this "
                                f"strategy does not know about")
        return diff

    def _write_report(self, stage_dir: Path, metrics: dict, vocab: list[str], keep_ids: list[int],
                      counts: np.ndarray) -> None:
        stage_dir.mkdir(parents=True, exist_ok=True)
        kept = set(keep_ids)
        dropped = [i for i in np.argsort(-counts, kind="stable").tolist() if i not in kept and counts[i] > 0]
        write_json(stage_dir / "vocab_trim.json", {
            "params": self.params.model_dump(mode="json"),
            "metrics": metrics,
            # new id -> old id: what maps a teacher's (untrimmed) logits onto this student's vocabulary.
            "kept_old_ids": keep_ids,
            "most_frequent_dropped": [{"token": vocab[i], "count": int(counts[i])} for i in dropped[:50]],
        })
        rows = "\n".join(f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |" for k, v in metrics.items())
        (stage_dir / "vocab_trim.md").write_text(
            "# Vocabulary trimming\n\n"
            f"Kept {metrics['vocab_after']:,} of {metrics['vocab_before']:,} tokens "
            f"({metrics['vocab_kept_fraction']:.1%}); parameters {metrics['parameters_before']:,} → "
            f"{metrics['parameters_after']:,} (−{metrics['parameters_saved_fraction']:.1%}).\n\n"
            f"| metric | value |\n|---|---|\n{rows}\n")


def _count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once


@torch.no_grad()
def _forward(model: torch.nn.Module, docs: list[list[int]]) -> torch.Tensor:
    """First output (logits or hidden states) at the real positions of right-padded id lists."""
    device = next(model.parameters()).device
    width = max(len(d) for d in docs)
    pad = model.config.pad_token_id if isinstance(getattr(model.config, "pad_token_id", None), int) else 0
    ids = torch.full((len(docs), width), pad, dtype=torch.long)
    mask = torch.zeros(len(docs), width, dtype=torch.long)
    for row, doc in enumerate(docs):
        ids[row, :len(doc)] = torch.tensor(doc)
        mask[row, :len(doc)] = 1
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        model.train(was_training)
    return out[0].float().cpu()[mask.bool()]
