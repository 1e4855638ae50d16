"""Float8 teachers (distill ``teacher_float8: true``): how much faster a teacher's pass gets, and how
much its predictions move.

Speed: the encoder pass of a base-size BERT teacher (12 layers, 768 wide; and large, 24 layers,
1024 wide; random weights: speed does not depend on them), bf16 against float8 encoder layers, both compiled as the strategy
compiles teachers (layer by layer), under inference mode, at each batch size; the two variants
interleaved and repeated, after a warm-up. Fidelity: the two shared Romanian teachers on real
text (the first documents of a corpus part: the distill strategy's held-out slice), 15 % of the
non-special tokens masked: masked-LM accuracy of each precision against the true tokens, top-1
agreement between them, and KL(bf16 || float8) of the soft targets at the distillation temperature
(T = 2) and at T = 1. Prints tables and writes JSON with the GPU, its clocks and the versions.

    python benchmarks/teacher_float8.py --shared ../shared --out teacher_float8.json
"""

from __future__ import annotations

import argparse
import functools
import lzma
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.push_forward import nvidia_smi, sync, time_interleaved  # noqa: E402
from compresso.strategies.distill.modeling import MaskedLM  # noqa: E402

TEACHERS = ("ro-bert-small-cased", "ro-robert-small-uncased")


# BERT sizes: hidden width, layers, attention heads, FFN width
SIZES = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}


def random_teacher(size: str, vocab: int, seq_len: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    hidden, layers, heads, ffn = SIZES[size]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=max(512, seq_len))
    return BertForMaskedLM(config).cuda().to(torch.bfloat16).eval().requires_grad_(False)


def time_passes(args, size: str) -> dict:
    """Median / min / max ms of one encoder pass, bf16 and float8, per batch size."""
    bf16 = MaskedLM(random_teacher(size, args.vocab, args.seq_len))
    f8 = MaskedLM(random_teacher(size, args.vocab, args.seq_len))
    converted = f8.to_float8()
    for lm in (bf16, f8):
        lm.compile()
    out = {"size": dict(zip(("hidden", "layers", "heads", "ffn"), SIZES[size])),
           "converted_linear_layers": list(converted), "batches": {}}
    gen = torch.Generator().manual_seed(0)
    for batch in args.batch_sizes:
        ids = torch.randint(5, args.vocab, (batch, args.seq_len), generator=gen).cuda()
        variants = {"bf16": bf16, "float8": f8}
        with torch.inference_mode():
            for lm in variants.values():  # warm-up: compilation, autotuning, allocator
                for _ in range(args.warmup):
                    lm.encode(ids, None)
            sync(ids.device)
            summary = time_interleaved({name: functools.partial(lm.encode, ids, None) for name, lm in variants.items()},
                                       ids.device, args.repeats, args.iters)
        summary["float8 / bf16 time"] = round(summary["float8"]["median_ms"] / summary["bf16"]["median_ms"], 3)
        out["batches"][str(batch)] = summary
    return out


def held_out_lines(corpus: Path, n: int) -> list[str]:
    lines = []
    with lzma.open(corpus, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.strip())
            if len(lines) == n:
                break
    return lines


def fidelity(args) -> dict:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    lines = held_out_lines(args.corpus, args.documents)
    result = {}
    for name in TEACHERS:
        path = args.shared / "teachers" / name
        tok = AutoTokenizer.from_pretrained(path)
        lm = MaskedLM(AutoModelForMaskedLM.from_pretrained(path).cuda().to(torch.bfloat16).eval()
                      .requires_grad_(False))
        gen = torch.Generator().manual_seed(0)
        batches = []
        for start in range(0, len(lines), 64):
            enc = tok(lines[start:start + 64], truncation=True, max_length=args.seq_len, padding=True,
                      return_tensors="pt")
            ids, att = enc["input_ids"], enc["attention_mask"]
            special = torch.tensor(tok.all_special_ids)
            pick = (torch.rand(ids.shape, generator=gen) < 0.15) & ~torch.isin(ids, special) & att.bool()
            masked = ids.masked_fill(pick, tok.mask_token_id)
            batches.append((masked.cuda(), att.cuda(), pick.cuda(), ids.cuda()))

        def logits_at_masks():
            with torch.inference_mode():
                return [lm.model(input_ids=m, attention_mask=a).logits[p].float() for m, a, p, _ in batches]

        want = logits_at_masks()
        lm.to_float8()
        got = logits_at_masks()
        truth = torch.cat([t[p] for _, _, p, t in batches])
        want, got = torch.cat(want), torch.cat(got)

        def kl(t: float) -> float:
            lp, lq = (want / t).log_softmax(-1), (got / t).log_softmax(-1)
            return float((lp.exp() * (lp - lq)).sum(-1).mean())

        result[name] = {
            "masked_positions": int(truth.numel()),
            "mlm_accuracy_bf16": round(float((want.argmax(-1) == truth).float().mean()), 4),
            "mlm_accuracy_float8": round(float((got.argmax(-1) == truth).float().mean()), 4),
            "top1_agreement": round(float((want.argmax(-1) == got.argmax(-1)).float().mean()), 4),
            "kl_bf16_float8_T2": round(kl(2.0), 6), "kl_bf16_float8_T1": round(kl(1.0), 6),
        }
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="folder with teachers/ and corpus/")
    ap.add_argument("--corpus", type=Path, help="held-out text (default: <shared>/corpus/ro-corpus-00.txt.xz)")
    ap.add_argument("--documents", type=int, default=1000, help="held-out documents for the fidelity figures")
    ap.add_argument("--batch-sizes", default="256,512", help="rows per pass, comma list (default: %(default)s)")
    ap.add_argument("--sizes", default="base,large", help="teacher sizes to time, comma list (default: %(default)s)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--warmup", type=int, default=20, help="passes of each variant before timing")
    ap.add_argument("--repeats", type=int, default=9, help="timed rounds, variants interleaved")
    ap.add_argument("--iters", type=int, default=10, help="passes per timing")
    ap.add_argument("--out", type=Path, help="JSON file")
    args = ap.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.corpus = args.corpus or args.shared / "corpus" / "ro-corpus-00.txt.xz"
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        ap.error("float8 matmuls need a CUDA GPU of compute capability 8.9+")
    for name in TEACHERS:
        if not (args.shared / "teachers" / name / "config.json").exists():
            ap.error(f"{args.shared / 'teachers' / name} is not a model folder (--shared must hold the teachers)")
    if not args.corpus.exists():
        ap.error(f"{args.corpus} does not exist (--corpus)")
    from rich.console import Console
    from rich.table import Table

    import torchao
    import transformers

    before = nvidia_smi()
    speed = {size: time_passes(args, size) for size in args.sizes.split(",")}
    quality = fidelity(args)
    console = Console()
    table = Table(title=f"teacher encoder pass, seq {args.seq_len}, compiled · {torch.cuda.get_device_name()}")
    for col in ("size", "batch", "bf16 ms", "float8 ms", "float8 / bf16"):
        table.add_column(col, justify="right")
    for size, timing in speed.items():
        for batch, s in timing["batches"].items():
            table.add_row(size, batch,
                          f"{s['bf16']['median_ms']:.2f} ({s['bf16']['min_ms']:.2f}–{s['bf16']['max_ms']:.2f})",
                          f"{s['float8']['median_ms']:.2f} ({s['float8']['min_ms']:.2f}–{s['float8']['max_ms']:.2f})",
                          f"{s['float8 / bf16 time']:.3f}")
    console.print(table)
    table = Table(title=f"float8 against bf16 on {args.documents} held-out documents ({args.corpus.name})")
    for col in ("teacher", "masked", "MLM acc. bf16", "MLM acc. float8", "top-1 agreement", "KL T=2", "KL T=1"):
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for name, q in quality.items():
        table.add_row(name, f"{q['masked_positions']:,}", f"{q['mlm_accuracy_bf16']:.4f}",
                      f"{q['mlm_accuracy_float8']:.4f}", f"{q['top1_agreement']:.4f}",
                      f"{q['kl_bf16_float8_T2']:.2e}", f"{q['kl_bf16_float8_T1']:.2e}")
    console.print(table)
    result = {"benchmark": "teacher_float8", "gpu": torch.cuda.get_device_name(), "nvidia_smi_before": before,
              "nvidia_smi_after": nvidia_smi(), "torch": torch.__version__, "transformers": transformers.__version__,
              "torchao": torchao.__version__, "seq_len": args.seq_len, "vocab": args.vocab,
              "warmup": args.warmup, "repeats": args.repeats, "iters": args.iters, "speed": speed,
              "documents": args.documents, "corpus": args.corpus.name, "fidelity": quality}
    if args.out:
        from compresso.strategy import write_json  # never a half-written file

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
