"""Benchmark structured pruning: size, CPU latency, GPU throughput and (optionally) MLM quality.

For each setting the model is pruned with the ``prune`` strategy (no recovery training), saved
the way compresso saves it, and measured:

- parameters and size on disk (safetensors, float32, MLM head included);
- forward GFLOPs of the encoder per 128-token sequence, counted by torch (noise-free);
- CPU latency of the encoder (the part a task model runs; the MLM head is left out) at batch 1
  and 8, sequence 128, ``--threads`` threads: median and minimum of runs interleaved across the
  models (on a shared machine the minimum is the steadier figure; speed-ups use it);
- GPU throughput when CUDA is available: bf16 weights, batch 128 x sequence 128, sequences/s;
- with ``--quality``: masked-LM loss and accuracy on unseen sentences (RO-STS test, which the
  fixture teachers' corpus excludes), the same masks for every model.

A "6 layers" row drops every other layer of the unpruned model (no training): the shape of a
6-layer distilled student of similar size, for the latency side of "which is better for the
same budget".

    python benchmarks/prune.py                           # CPU, magnitude importance
    python benchmarks/prune.py --quality --importance magnitude taylor --out prune.json
    python benchmarks/prune.py --render prune.json       # the quality table of a run, from its JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from compresso.models import load_bundle, save_bundle  # noqa: E402
from compresso.strategies.prune import PruneStrategy, layer_shapes, mlm_batches  # noqa: E402
from compresso.strategy import ModelBundle, RunContext  # noqa: E402

SETTINGS: dict[str, dict | None] = {
    "unpruned": None,
    "ffn50": {"ffn": 0.5},
    "heads25": {"heads": 0.25},
    "ffn50+heads25": {"ffn": 0.5, "heads": 0.25},
    "ffn75+heads50": {"ffn": 0.75, "heads": 0.5},
    "6 layers": "drop",
}


def drop_layers(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    model = copy.deepcopy(model)
    encoder = model.base_model.encoder
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    return model


def size_on_disk(bundle: ModelBundle) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if bundle.format == "transformers":
            save_bundle(bundle, Path(tmp))
        else:
            PruneStrategy.save(bundle, Path(tmp))
        return sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))


def encoder_inputs(vocab: int, batch: int, seq: int, device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}


@torch.inference_mode()
def cpu_latencies_ms(encoders: list, vocab: int, batch: int, seq: int, runs: int) -> list[dict[str, float]]:
    """Median and minimum latency per encoder. Runs are interleaved across the encoders, so that
    load from other processes on a shared machine hits every model alike."""
    inputs = encoder_inputs(vocab, batch, seq, "cpu")
    for encoder in encoders:
        for _ in range(2):
            encoder(**inputs)
    times: list[list[float]] = [[] for _ in encoders]
    for _ in range(runs):
        for i, encoder in enumerate(encoders):
            start = time.perf_counter()
            encoder(**inputs)
            times[i].append(time.perf_counter() - start)
    return [{"median": round(1000 * statistics.median(t), 1), "min": round(1000 * min(t), 1)} for t in times]


@torch.inference_mode()
def gflops_per_sequence(encoder, vocab: int, seq: int = 128) -> float:
    """Forward FLOPs of one sequence, counted by torch (machine-independent, unlike latency).

    Counted on an eager-attention copy: torch's counter does not see the CPU SDPA kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(encoder)
    model.config._attn_implementation = "eager"
    with FlopCounterMode(display=False) as counter:
        model(**encoder_inputs(vocab, 1, seq, "cpu"))
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def gpu_throughput(encoder, vocab: int, batch: int = 128, seq: int = 128, iters: int = 20) -> float:
    device = torch.device("cuda")
    model = copy.deepcopy(encoder).to(device=device, dtype=torch.bfloat16).eval()
    inputs = encoder_inputs(vocab, batch, seq, device)
    for _ in range(5):
        model(**inputs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        model(**inputs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del model
    torch.cuda.empty_cache()
    return batch * iters / seconds


def sts_sentences(path: Path, limit: int) -> list[str]:
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        sentences += [s.strip() for s in parts[1:3] if s.strip()]
    return sentences[:limit]


@torch.inference_mode()
def mlm_quality(model, batches) -> dict[str, float]:
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches:
        out = model(**batch)
        labels = batch["labels"]
        masked = labels != -100
        n = int(masked.sum())
        total_loss += out.loss.item() * n
        correct += int((out.logits.argmax(-1)[masked] == labels[masked]).sum())
        count += n
    return {"mlm_loss": round(total_loss / count, 4), "mlm_accuracy": round(correct / count, 4),
            "masked_tokens": count}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHARED / "teachers" / "ro-bert-small-cased"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--importance", nargs="+", default=["magnitude"], choices=["magnitude", "taylor"])
    parser.add_argument("--corpus", default=str(SHARED / "corpus" / "ro-corpus-00.txt.xz"),
                        help="calibration text for taylor importance")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--quality", action="store_true", help="also measure MLM loss/accuracy on unseen text")
    parser.add_argument("--quality-text", default=str(SHARED / "data" / "ro_sts" / "RO-STS.test.tsv"))
    parser.add_argument("--quality-sentences", type=int, default=100000, help="at most this many (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15, help="timed CPU runs per measurement (median)")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--no-cpu", action="store_true", help="skip CPU latency (e.g. for a quality-only run)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--render", metavar="JSON", help="print the Markdown quality table of a run's JSON and exit")
    args = parser.parse_args(argv)
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())), end="")
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    torch.set_num_threads(args.threads)
    base = load_bundle(args.model)
    vocab = base.model.config.vocab_size
    use_gpu = torch.cuda.is_available() and not args.no_gpu
    quality_batches = None
    if args.quality:
        sentences = sts_sentences(Path(args.quality_text), args.quality_sentences)
        quality_batches = mlm_batches(base.tokenizer, sentences, 32, 128, 0.15, seed=1234)

    rows, encoders = [], []
    for setting in args.settings:
        spec = SETTINGS[setting]
        for importance in (args.importance if isinstance(spec, dict) else ["-"]):
            started = time.time()
            model = copy.deepcopy(base.model)
            if spec is None:
                bundle = ModelBundle(model, base.tokenizer)
            elif spec == "drop":
                n = base.model.config.num_hidden_layers
                bundle = ModelBundle(drop_layers(model, list(range(1, n, 2))), base.tokenizer)
            else:
                params = dict(spec, importance=importance)
                if importance == "taylor":
                    params.update(corpus=[args.corpus], calibration_batches=args.calibration_batches)
                with tempfile.TemporaryDirectory() as tmp:
                    ctx = RunContext(stage_dir=Path(tmp) / "stage", work_dir=Path(tmp) / "work",
                                     device=torch.device("cuda" if use_gpu else "cpu"), seed=0, teachers={},
                                     base_dir=Path.cwd(), console=console)
                    bundle = PruneStrategy(PruneStrategy.Params(**params)).apply(
                        ModelBundle(model, base.tokenizer), ctx)
                bundle.model.to("cpu")
            prune_seconds = time.time() - started
            shapes = layer_shapes(bundle.model)
            encoder = bundle.model.base_model.eval()
            row = {
                "setting": setting, "importance": importance, "format": bundle.format,
                "layers": len(shapes), "heads": sorted({s.heads for s in shapes}),
                "ffn": sorted({s.ffn for s in shapes}),
                "parameters": sum(p.numel() for p in bundle.model.parameters()),
                "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
                "size_bytes": size_on_disk(bundle),
                "prune_seconds": round(prune_seconds, 1),
                "gflops_per_seq_s128": round(gflops_per_sequence(encoder, vocab), 3),
                "gpu_seq_per_s_bf16_b128_s128": round(gpu_throughput(encoder, vocab)) if use_gpu else None,
            }
            if quality_batches is not None:
                row.update(mlm_quality(bundle.model.eval(), quality_batches))
            rows.append(row)
            encoders.append(encoder)
            console.log(f"{setting} ({importance}): {row['parameters'] / 1e6:.2f} M parameters, heads {row['heads']}, "
                        f"FFN {row['ffn']}")

    for batch, runs in ((1, 2 * args.runs), (8, args.runs)) if not args.no_cpu else ():
        console.log(f"CPU latency, batch {batch}: {runs} interleaved runs of {len(encoders)} models")
        for row, timing in zip(rows, cpu_latencies_ms(encoders, vocab, batch, 128, runs)):
            row[f"cpu_ms_b{batch}_s128"] = timing["median"]
            row[f"cpu_ms_b{batch}_s128_min"] = timing["min"]

    reference = rows[0]
    table = Table(title=f"prune benchmark · {Path(args.model).name} · CPU {args.threads} threads"
                        + (f" · {torch.cuda.get_device_name()}" if use_gpu else ""))
    columns = ["setting", "importance", "heads", "FFN", "params (M)", "size (MiB)", "GFLOPs/seq"]
    if not args.no_cpu:
        columns += ["CPU b1 ms (min)", "CPU b8 ms (min)", "b8 speed-up"]
    if use_gpu:
        columns.append("GPU seq/s")
    if quality_batches is not None:
        columns += ["MLM loss", "MLM acc"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("setting", "importance") else "right")
    for r in rows:
        cells = [r["setting"], r["importance"], ",".join(map(str, r["heads"])), ",".join(map(str, r["ffn"])),
                 f"{r['parameters'] / 1e6:.2f}", f"{r['size_bytes'] / 2**20:.1f}", f"{r['gflops_per_seq_s128']:.2f}"]
        if not args.no_cpu:
            speed = reference["cpu_ms_b8_s128_min"] / r["cpu_ms_b8_s128_min"]
            cells += [f"{r['cpu_ms_b1_s128']:.1f} ({r['cpu_ms_b1_s128_min']:.1f})",
                      f"{r['cpu_ms_b8_s128']:.1f} ({r['cpu_ms_b8_s128_min']:.1f})", f"{speed:.2f}x"]
        if use_gpu:
            cells.append(f"{r['gpu_seq_per_s_bf16_b128_s128']:,}")
        if quality_batches is not None:
            cells += [f"{r['mlm_loss']:.3f}", f"{100 * r['mlm_accuracy']:.1f}%"]
        table.add_row(*cells)
    console.print(table)

    if args.out:
        result = {
            "model": args.model, "threads": args.threads, "runs": args.runs,
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "gpu": torch.cuda.get_device_name() if use_gpu else None},
            "quality_text": args.quality_text if args.quality else None,
            "quality_sentences": len(sentences) if args.quality else None,
            "taylor_calibration": {"corpus": args.corpus, "batches": args.calibration_batches,
                                   "batch_size": 16, "seq_len": 128},
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.out}")
    return 0


def markdown(result: dict) -> str:
    """The size and masked-LM quality table of a run (docs/pruning.md), every figure from its JSON."""
    lines = ["| setting | importance | heads/layer | FFN/layer | parameters | size (MiB) | GFLOPs/seq | MLM loss "
             "| MLM accuracy |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        quality = (f"{r['mlm_loss']:.3f} | {100 * r['mlm_accuracy']:.1f}%" if "mlm_loss" in r else "– | –")
        lines.append(f"| {r['setting']} | {r['importance']} | {','.join(map(str, r['heads']))} | "
                     f"{','.join(map(str, r['ffn']))} | {r['parameters'] / 1e6:.2f} M | {r['size_bytes'] / 2**20:.1f} | "
                     f"{r['gflops_per_seq_s128']:.2f} | {quality} |")
    tokens = {r.get("masked_tokens") for r in result["rows"]} - {None}
    if tokens:
        lines += ["", f"MLM loss and accuracy over {', '.join(f'{t:,}' for t in sorted(tokens))} masked tokens of "
                      f"`{Path(result['quality_text']).name}`"
                  + (f" ({result['quality_sentences']:,} sentences)" if result.get("quality_sentences") else "")
                  + f"; torch {result['environment']['torch']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
