"""What a second teacher costs: ``distill`` training steps with 1 vs 2 teachers at base size.

Three runs of the real strategy (``DistillStrategy.apply``: its input pipeline, bf16 autocast
on GPU, teachers in bf16 + inference mode, MLM head at masked positions only, fused AdamW):

  1-teacher        teacher A -> student
  2-teachers       teachers A and B, both with the student's tokenizer (the fast path)
  2-teachers-xtok  teachers A and B', B' with another tokenizer (same words, other ids, uncased):
                   every step runs the cross-tokenizer machinery (second tokenization, word
                   alignment, vocabulary push-forward over the whole 50k vocabulary, per-word
                   hidden-state pooling, a learned projection)

Models are randomly initialised: teachers BertForMaskedLM with 12 layers, hidden 768, 12 heads,
FFN 3072 and a 50,000-word vocabulary; the student keeps 6 of teacher A's layers (0, 2, 4, 7, 9,
11). Documents are ``seq_len - 2`` one-token words, so every row is exactly ``seq_len`` tokens and
all runs see the same tokens. Steps ``warmup+1 .. warmup+steps`` are timed between two
``torch.cuda.synchronize()`` calls; peak GPU memory is measured over the same window.

The FLOP ratio of a 2-teacher to a 1-teacher step is about 1.4 (student forward + backward = 3
student passes = 1.5 teacher passes, plus one or two teacher forwards). The target is a measured
ratio of at most ~1.45.

Usage (repository root):
  python benchmarks/distill_teachers.py --device cuda --out distill_teachers.json
  python benchmarks/distill_teachers.py --tiny                  # CPU smoke run; timings mean nothing
  python benchmarks/distill_teachers.py --tiny --device cuda    # GPU smoke run of the same
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class Sizes:
    vocab: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    student_layers: int
    seq_len: int
    batch_size: int
    steps: int
    warmup: int


BASE = Sizes(vocab=50_000, hidden=768, layers=12, heads=12, ffn=3072, student_layers=6, seq_len=128,
             batch_size=64, steps=30, warmup=5)
TINY = Sizes(vocab=2_000, hidden=64, layers=4, heads=2, ffn=128, student_layers=2, seq_len=32, batch_size=8,
             steps=4, warmup=2)


def make_tokenizer(vocab_size: int, other: bool = False):
    """Words ``w5``..``w{V-1}``, one token each. ``other``: the same words under other ids and an
    uncased normaliser, so the strategy must treat it as a different tokenizer."""
    from transformers import BertTokenizerFast

    words = [f"w{i}" for i in range(len(SPECIAL), vocab_size)]
    if other:
        words = list(np.random.default_rng(1).permutation(words))
    vocab = {tok: i for i, tok in enumerate(SPECIAL + words)}
    return BertTokenizerFast(vocab=vocab, do_lower_case=other)


def make_teacher(sizes: Sizes, seed: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                        num_attention_heads=sizes.heads, intermediate_size=sizes.ffn,
                        max_position_embeddings=max(512, sizes.seq_len), attn_implementation="sdpa")
    return BertForMaskedLM(config).eval()


def write_corpus(sizes: Sizes, documents: int, path: Path) -> None:
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for row in rng.integers(len(SPECIAL), sizes.vocab, size=(documents, sizes.seq_len - 2)):
            f.write(" ".join(f"w{i}" for i in row) + "\n")


def run_case(name: str, teachers: dict, student_bundle, corpus: Path, sizes: Sizes, device: torch.device,
             work: Path, workers: int | None) -> dict:
    from rich.console import Console

    from compresso.strategies.distill import DistillStrategy
    from compresso.strategies.distill.trainer import Trainer
    from compresso.strategy import RunContext, TeacherRef

    class InMemoryTeacher(TeacherRef):
        def __init__(self, ref_name, bundle):
            super().__init__(ref_name, f"in-memory:{ref_name}", None, False)
            self.bundle = bundle

        def load(self):
            return self.bundle

    total = sizes.warmup + sizes.steps + 1
    params = DistillStrategy.Params(corpus=[corpus], seq_len=sizes.seq_len, batch_size=sizes.batch_size,
                                    max_steps=total, heldout_documents=0, checkpoint_every=10**9, log_every=total,
                                    num_layers=sizes.student_layers, num_workers=workers)
    stage = work / f"{name}-stage"
    stage.mkdir(parents=True)
    ctx = RunContext(stage_dir=stage, work_dir=work / f"{name}-work", device=device, seed=0,
                     teachers={n: InMemoryTeacher(n, b) for n, b in teachers.items()}, base_dir=work,
                     console=Console(stderr=True))
    marks: dict = {}

    def on_step_end(self, step: int) -> None:
        if step in (sizes.warmup, sizes.warmup + sizes.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks[step] = time.perf_counter()
            if step == sizes.warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if step == sizes.warmup + sizes.steps and device.type == "cuda":
                marks["peak"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)

    original = Trainer.on_step_end
    Trainer.on_step_end = on_step_end
    try:
        DistillStrategy(params).apply(student_bundle, ctx)
    finally:
        Trainer.on_step_end = original
    seconds = marks[sizes.warmup + sizes.steps] - marks[sizes.warmup]
    tokens = sizes.batch_size * sizes.seq_len
    report = json.loads((stage / "distill.json").read_text())
    out = {"name": name, "teachers": len(teachers), "step_ms": round(1000 * seconds / sizes.steps, 2),
           "tokens_per_s": round(tokens * sizes.steps / seconds, 1), "peak_gpu_mib": marks.get("peak"),
           "final_losses": report["training"]["final_losses"],
           "supervised_fraction": {n: t["supervised_fraction"] for n, t in report["teachers"].items()}}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", help="default: cuda when available (cpu with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny models: checks the script runs (CPU unless --device)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: the strategy's)")
    ap.add_argument("--cases", default="1-teacher,2-teachers,2-teachers-xtok")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from compresso.strategy import ModelBundle

    sizes = TINY if args.tiny else BASE
    sizes = replace(sizes, **{k: v for k, v in (("steps", args.steps), ("warmup", args.warmup),
                                                ("batch_size", args.batch_size)) if v is not None})
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    tok, other_tok = make_tokenizer(sizes.vocab), make_tokenizer(sizes.vocab, other=True)
    teacher_a, teacher_b = make_teacher(sizes, 1), make_teacher(sizes, 2)
    # Teacher B' has B's weights with its embedding rows permuted to the other tokenizer's ids.
    teacher_x = make_teacher(sizes, 2)
    perm = torch.tensor([tok.convert_tokens_to_ids(t) for t in other_tok.convert_ids_to_tokens(range(sizes.vocab))])
    with torch.no_grad():
        teacher_x.bert.embeddings.word_embeddings.weight.copy_(teacher_b.bert.embeddings.word_embeddings.weight[perm])
        teacher_x.cls.predictions.bias.copy_(teacher_b.cls.predictions.bias[perm])
    cases = {"1-teacher": {"A": ModelBundle(teacher_a, tok)},
             "2-teachers": {"A": ModelBundle(teacher_a, tok), "B": ModelBundle(teacher_b, tok)},
             "2-teachers-xtok": {"A": ModelBundle(teacher_a, tok), "B'": ModelBundle(teacher_x, other_tok)}}
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="compresso-distill-teachers-"))
    corpus = work / "corpus.txt"
    write_corpus(sizes, sizes.batch_size * (sizes.warmup + sizes.steps + 2) + 64, corpus)

    results = []
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr)
        results.append(run_case(name, cases[name], ModelBundle(teacher_a, tok), corpus, sizes, device, work,
                                args.workers))
    base = next((r for r in results if r["name"] == "1-teacher"), None)
    for r in results:
        r["step_ratio_vs_1_teacher"] = round(r["step_ms"] / base["step_ms"], 3) if base else None

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distill: 1 vs 2 teachers · {device}"
                        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}")
    for col in ("run", "step ms", "tokens/s", "peak GPU MiB", "× 1-teacher step", "supervised"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in results:
        table.add_row(r["name"], f"{r['step_ms']:.1f}", f"{r['tokens_per_s']:,.0f}",
                      "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:,.0f}",
                      "-" if r["step_ratio_vs_1_teacher"] is None else f"{r['step_ratio_vs_1_teacher']:.3f}",
                      ", ".join(f"{n} {v:.2f}" for n, v in r["supervised_fraction"].items()))
    Console().print(table)
    import transformers

    summary = {"sizes": asdict(sizes), "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               "torch": torch.__version__, "transformers": transformers.__version__, "results": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
