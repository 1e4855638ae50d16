"""CPU latency and size: fp32 12-layer teacher vs fp32 6-layer student vs its INT8 versions, per backend.

Side by side in one run, on this machine's CPU: the fp32 teacher, the fp32 student made from it
(every other layer: 0, 2, 4, 7, 9, 11, the distill strategy's default choice) and the student
quantized by the ``quantize`` strategy with each INT8 backend installed here (inc static, torchao
dynamic, ort static, ort dynamic; a backend that is missing or cannot run is listed as skipped,
with the reason, in the JSON). Latency at each batch size (sequence length 128, a fixed number of
threads): timed calls in blocks interleaved across the models over several rounds, each block after
one untimed call; reported as median, interquartile range and minimum. Size: bytes of each saved
model's weights file(s). The CPU (model, flags, capability class), the emulation variables, the
thread count and affinity, the load average before and after, and library versions go into the JSON.

Models carry a sequence-classification head (2 labels, seeded): the way an encoder is served; latency
does not depend on the head's training. Default teacher (``--size fixture``): the ``ro-bert-small-cased``
fixture (12 layers, hidden 256, 16k vocabulary), calibration and inputs from the ``ro-corpus-00``
fixture. ``--size base`` builds, inside the script, a randomly initialised (seeded) teacher of
BERT-base's shape — 12 layers, hidden 768, 12 heads, FFN 3072 — with the vocabulary and tokenizer of
``--teacher`` (the fixture's by default), and cuts and quantizes its student the same way: the size
users deploy, where the matrix products, not the per-call overhead, are the time. Latency does not
depend on the weights' values, so a random teacher times like a trained one.

    python benchmarks/quantize_cpu.py                                  # → docs/results/benchmarks/
    python benchmarks/quantize_cpu.py --size base                      # → ...-base.json/.md
    python benchmarks/quantize_cpu.py --emulate-avx2                   # torch/oneDNN/MKL capped at AVX2
    taskset -c 0,1 python benchmarks/quantize_cpu.py --threads 2 --teacher ... --corpus ...

``--render JSON`` prints the Markdown table of a committed run and ``--headline FOLDER`` the table of
INT8 speed-ups at base size beside fixture size, per CPU (docs/quantization.md's generated blocks;
nothing is measured).

``--compare-levers`` adds, for each torch INT8 graph, a row per compile-time lever turned off (the
Python wrapper instead of inductor's C++ wrapper; for inc, separate query/key/value products instead
of one merged product), all interleaved with the rest. ``--clock cpu`` times the process's CPU time
instead of elapsed time: with ``--threads 1`` a comparison of models that a busy machine disturbs far
less (not a latency figure).

``--emulate-avx2`` sets ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and
MKL_ENABLE_INSTRUCTIONS=AVX2 before torch loads, and checks that they took effect (torch's reported
capability, oneDNN's verbose ISA line). ONNX Runtime's MLAS kernels dispatch on CPUID and have no
such switch: under emulation the ort rows still use the machine's full ISA; the JSON says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RESULTS = REPO / "docs" / "results" / "benchmarks"
CASES = ("inc-static", "torchao-dynamic", "ort-static", "ort-dynamic")
BASE_SHAPE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
"""BERT-base's shape (``--size base``); vocabulary, positions and tokenizer come from ``--teacher``."""
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(SHARED / "teachers" / "ro-bert-small-cased"),
                    help="the fp32 teacher (--size fixture), or where the tokenizer and vocabulary of the random "
                         "base-size teacher come from (--size base)")
    ap.add_argument("--size", choices=("fixture", "base"), default="fixture",
                    help="fixture: time --teacher as it is; base: a randomly initialised teacher of BERT-base's shape "
                         "(12 layers, hidden 768, 12 heads, FFN 3072) with --teacher's tokenizer")
    ap.add_argument("--corpus", default=str(SHARED / "corpus" / "ro-corpus-00.txt.xz"),
                    help="text for calibration and for the benchmark inputs")
    ap.add_argument("--student-layers", type=int, default=6)
    ap.add_argument("--backends", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--num-samples", type=int, default=128, help="calibration documents (static methods)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per model and batch size")
    ap.add_argument("--rounds", type=int, default=5, help="blocks the repeats are split into (interleaved)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time (what a user waits; needs a quiet machine). cpu: CPU time of this process, "
                         "with --threads 1 a comparison that other processes on a busy machine disturb far less "
                         "(not a latency)")
    ap.add_argument("--emulate-avx2", action="store_true",
                    help="cap torch, oneDNN and MKL at AVX2 (set before torch loads; ONNX Runtime is not capped)")
    ap.add_argument("--compare-levers", action="store_true",
                    help="also time each torch INT8 graph (inc, torchao) without each of the compile-time levers that "
                         "are on by default, as rows of their own: inductor's Python wrapper instead of its C++ wrapper; "
                         "(inc) the query, key and value products kept separate instead of merged")
    ap.add_argument("--out", help="JSON file or folder (default: docs/results/benchmarks/, one file per CPU, "
                                  "capability class and size)")
    ap.add_argument("--render", metavar="JSON", help="print the Markdown table of a run's JSON and exit (links "
                                                     "relative to --relative-to)")
    ap.add_argument("--headline", metavar="FOLDER", help="print the base-size vs fixture-size table of the runs in "
                                                         "FOLDER and exit (links relative to --relative-to)")
    ap.add_argument("--relative-to", default=str(REPO / "docs"), help="folder the printed links start from "
                                                                      "(default: docs/)")
    return ap.parse_args(argv)


def architecture(config) -> dict:
    """The shape a run's teacher had (recorded in the JSON)."""
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
    return {k: getattr(config, k) for k in keys}


def base_teacher(tokenizer_source: str):
    """A randomly initialised (seeded) BERT of BERT-base's shape with ``tokenizer_source``'s vocabulary,
    positions and tokenizer, and a 2-label sequence-classification head."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tokenizer_source)
    for key, value in BASE_SHAPE.items():
        setattr(config, key, value)
    config.num_labels = 2
    config.dtype = "float32"
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa",
                                                          dtype=torch.float32).eval()


def onednn_isa(env: dict) -> str | None:
    """The ISA oneDNN reports it dispatches to, from its verbose output in a child process."""
    code = "import torch; torch.randn(1, 8, 16, 16).to_mkldnn()"  # a oneDNN reorder: oneDNN initialises
    try:
        out = subprocess.run([sys.executable, "-c", code], env={**env, "ONEDNN_VERBOSE": "1"}, capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"isa:([^\n,]+)", out.stdout + out.stderr)
    return match.group(1).strip() if match else None


def timing(models: dict, encs: dict, args) -> dict:
    """{model: {batch: {median, q1, q3, min, n}}} with interleaved blocks across models."""
    import torch

    result: dict = {name: {} for name in models}
    per_block = max(1, args.repeats // args.rounds)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with torch.inference_mode():
        for batch_size, enc in encs.items():
            for model in models.values():
                for _ in range(args.warmup):  # the torch INT8 graphs compile on their first call of a shape
                    model(**enc)
            times: dict[str, list[float]] = {name: [] for name in models}
            # Blocks of consecutive calls per model, interleaved across models: load changes hit every
            # model alike, and each block starts with an untimed call so that a model is timed with its
            # weights in cache, as when it serves requests back to back.
            for _ in range(args.rounds):
                for name, model in models.items():
                    model(**enc)
                    for _ in range(per_block):
                        t = clock()
                        model(**enc)
                        times[name].append((clock() - t) * 1000)
            for name, ts in times.items():
                q1, median, q3 = statistics.quantiles(ts, n=4)
                result[name][batch_size] = {"median_ms": statistics.median(ts), "q1_ms": q1, "q3_ms": q3,
                                            "min_ms": min(ts), "calls": len(ts)}
    return result


def merges_qkv(backend) -> bool:
    """Whether the backend compiles a form of its graph with the q/k/v products merged (inc; not torchao)."""
    from compresso.strategies.quantize.backends.torch_graph import TorchGraphBackend

    return type(backend).compiled_form is not TorchGraphBackend.compiled_form


def lever_variants(model, backend) -> list[tuple[str, dict, bool]]:
    """(row suffix, inductor options, merged q/k/v) for each default lever turned off alone."""
    merges = merges_qkv(backend)
    variants = [("python wrapper", {**model.inductor_options, "cpp_wrapper": False}, merges)]
    if merges:
        variants.append(("separate q/k/v products", dict(model.inductor_options), False))
    return variants


def variant_model(model, backend, options: dict, merged: bool):
    """The INT8 model compiled anew with other settings: a copy of its graph, since compiled code is
    cached per graph (the same graph would reuse the first compilation)."""
    from compresso.strategies.quantize.modeling import GraphModel

    graph = copy.deepcopy(model.graph)
    return GraphModel(graph, model.config, model.input_names, model.output_key, model.output_class, model.method,
                      model.backend, inductor_options=options,
                      compiled_graph=backend.compiled_form(graph) if merged else None)


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".onnx"))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render or args.headline:
        text = (markdown(json.loads(Path(args.render).read_text()), Path(args.render), Path(args.relative_to))
                if args.render else headline(Path(args.headline), Path(args.relative_to)))
        print(text, end="")
        return 0
    if args.emulate_avx2:
        os.environ.update(AVX2_ENV)  # before torch loads: ATen reads its variable at import
    import torch

    torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compresso.corpus import iter_documents
    from compresso.models import save_bundle
    from compresso.strategies.distill.modeling import build_student, default_layers
    from compresso.strategies.quantize import QuantizeParams, QuantizeStrategy, cpu
    from compresso.strategies.quantize.backends import BACKENDS, get_backend
    from compresso.strategies.quantize.modeling import GraphModel
    from compresso.strategies.quantize.saving import versions
    from compresso.strategy import ModelBundle, RunContext, StrategyError

    console = Console()
    for path in (args.teacher, args.corpus):
        if not Path(path).exists():
            console.print(f"[red]{path} does not exist (the ../shared fixtures sit beside the checkout)[/red]")
            return 2
    cpu_info = cpu.describe()
    emulation = {"requested": args.emulate_avx2, "env": cpu_info["emulation_env"],
                 "torch_capability": torch.backends.cpu.get_cpu_capability(),
                 "onednn_isa": onednn_isa(dict(os.environ)),
                 "ort_restricted": False,
                 "ort_note": "ONNX Runtime's MLAS kernels dispatch on CPUID; no variable caps them, so ort rows use "
                             "this CPU's full ISA even when torch/oneDNN/MKL are capped"}
    if args.emulate_avx2 and (emulation["torch_capability"] != "AVX2"
                              or "AVX2" not in (emulation["onednn_isa"] or "").upper().replace(" ", "")
                              or "512" in (emulation["onednn_isa"] or "")):
        console.print(f"[red]AVX2 emulation did not take effect: torch {emulation['torch_capability']}, oneDNN "
                      f"{emulation['onednn_isa']}[/red]")
        return 1
    console.print(f"CPU: {cpu_info['model']} ({cpu_info['capability_class']}, flags {', '.join(cpu_info['flags'])}); "
                  f"torch {emulation['torch_capability']}, oneDNN {emulation['onednn_isa']}; {args.threads} threads")
    load_before = os.getloadavg()
    started = time.time()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    if args.size == "base":
        teacher = base_teacher(args.teacher)
    else:
        teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher, dtype=torch.float32, num_labels=2,
                                                                     attn_implementation="sdpa").eval()
    layers = default_layers(teacher.config.num_hidden_layers, args.student_layers)
    student = build_student(teacher, layers).eval()

    models = {"fp32 teacher": teacher, "fp32 student": student}
    sizes, rows_extra, skipped = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="compresso-qbench-") as tmp:
        tmp = Path(tmp)
        for name, model in (("fp32 teacher", teacher), ("fp32 student", student)):
            save_bundle(ModelBundle(model, tokenizer), tmp / name.replace(" ", "-"))
            sizes[name] = weights_bytes(tmp / name.replace(" ", "-"))
        for case in args.backends:
            backend, method = case.split("-")
            reason = BACKENDS[backend].missing()
            if reason:
                skipped[case] = f"not installed: {reason}"
                console.print(f"[yellow]skipping {case}: {skipped[case]}[/yellow]")
                continue
            ctx = RunContext(stage_dir=tmp / case / "stage", work_dir=tmp / case / "work", device=torch.device("cpu"),
                             seed=0, teachers={}, base_dir=REPO, console=console)
            ctx.stage_dir.mkdir(parents=True)
            ctx.work_dir.mkdir()
            params = QuantizeParams.model_validate({"backend": backend, "method": method, "calibration": {
                "corpus": [args.corpus], "num_samples": args.num_samples, "max_length": args.seq_len}})
            t0 = time.perf_counter()
            try:
                int8 = QuantizeStrategy(params).apply(ModelBundle(student, tokenizer), ctx)
            except StrategyError as exc:  # e.g. no C++ compiler for inductor on this host
                skipped[case] = f"could not quantize: {exc}"
                console.print(f"[yellow]skipping {case}: {skipped[case]}[/yellow]")
                continue
            name = f"int8 student, {case}"
            QuantizeStrategy.save(int8, tmp / case / "saved")
            models[name] = int8.model
            sizes[name] = weights_bytes(tmp / case / "saved")
            rows_extra[name] = {"backend": backend, "method": method, "quantize_seconds": round(time.perf_counter() - t0, 1),
                                "check_vs_fp32_student": int8.model._check,
                                "inductor_options": getattr(int8.model, "inductor_options", None)}
            if isinstance(int8.model, GraphModel):
                rows_extra[name]["merged_qkv"] = merges_qkv(get_backend(backend))
            if args.compare_levers and isinstance(int8.model, GraphModel):
                for variant, options, merged in lever_variants(int8.model, get_backend(backend)):
                    models[f"{name} ({variant})"] = variant_model(int8.model, get_backend(backend), options, merged)
                    sizes[f"{name} ({variant})"] = sizes[name]
                    rows_extra[f"{name} ({variant})"] = {"backend": backend, "method": method, "variant": variant,
                                                         "inductor_options": options, "merged_qkv": merged}

    docs = [d for _, d in zip(range(64), iter_documents(args.corpus, part="all"))]
    encs = {b: dict(tokenizer(docs[:b], truncation=True, max_length=args.seq_len, padding="max_length",
                              return_tensors="pt")) for b in args.batch_sizes}
    console.print(f"timing {len(models)} models × batch sizes {args.batch_sizes} ({args.repeats} calls each, "
                  f"{args.rounds} interleaved rounds)")
    latency = timing(models, encs, args)
    load_after = os.getloadavg()

    teacher_name = "fp32 teacher"
    shape = architecture(teacher.config)
    table = Table(title=f"{cpu_info['model']} ({cpu.capability_class()}{', emulated' if args.emulate_avx2 else ''}): "
                        f"{args.size} size ({shape['num_hidden_layers']} × {shape['hidden_size']}), "
                        f"seq {args.seq_len}, {args.threads} threads, median [IQR] of {args.repeats} calls")
    table.add_column("model")
    for b in args.batch_sizes:
        table.add_column(f"batch {b} ms", justify="right")
        table.add_column(f"× b{b}", justify="right")
    table.add_column("MB", justify="right")
    table.add_column("of teacher", justify="right")
    rows = []
    for name in models:
        row = {"model": name, **rows_extra.get(name, {}), "latency": {str(b): latency[name][b] for b in args.batch_sizes},
               "speedup_vs_teacher": {str(b): latency[teacher_name][b]["median_ms"] / latency[name][b]["median_ms"]
                                      for b in args.batch_sizes},
               "weights_bytes": sizes[name], "size_ratio_vs_teacher": sizes[name] / sizes[teacher_name]}
        rows.append(row)
        cells = []
        for b in args.batch_sizes:
            t = latency[name][b]
            cells += [f"{t['median_ms']:.1f} [{t['q1_ms']:.1f}–{t['q3_ms']:.1f}]", f"{row['speedup_vs_teacher'][str(b)]:.2f}×"]
        table.add_row(name, *cells, f"{sizes[name] / 1e6:.2f}", f"{row['size_ratio_vs_teacher']:.1%}")
    console.print(table)
    int8_rows = [r for r in rows if r["model"].startswith("int8") and "variant" not in r]
    fastest = {str(b): min(int8_rows, key=lambda r: r["latency"][str(b)]["median_ms"])["model"] if int8_rows else None
               for b in args.batch_sizes}
    auto = cpu.AUTO_CHOICE[cpu.capability_class()]
    console.print(f"fastest INT8 backend per batch size: {fastest}; auto's table for {cpu.capability_class()}: "
                  f"{'-'.join(auto)}")
    busy = max(load_before[0], load_after[0]) > args.threads + 0.5
    if busy:
        console.print(f"[yellow]machine load average {load_before[0]:.1f} → {load_after[0]:.1f} on {os.cpu_count()} "
                      f"cores: other processes competed for the CPU; these timings are not publishable[/yellow]")
    result = {
        "benchmark": "quantize_cpu", "size": args.size, "teacher": args.teacher,
        "teacher_note": ("randomly initialised (seed 0) with BERT-base's shape and the tokenizer and vocabulary of "
                         "the teacher path" if args.size == "base" else "the teacher path as saved"),
        "teacher_architecture": shape, "corpus": args.corpus, "student_layers": layers,
        "seq_len": args.seq_len, "batch_sizes": args.batch_sizes, "threads": args.threads,
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "clock": args.clock,
        "calibration_documents": args.num_samples, "rows": rows, "skipped": skipped, "fastest_int8": fastest,
        "auto_choice": {"capability_class": cpu.capability_class(), "backend": auto[0], "method": auto[1]},
        "cpu": cpu_info, "emulation": emulation,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "versions": versions(),
                    "load_average_before": load_before, "load_average_after": load_after, "busy": busy,
                    "seconds": round(time.time() - started, 1)},
    }
    out = Path(args.out) if args.out else RESULTS
    if out.suffix != ".json":
        slug = re.sub(r"[^a-z0-9]+", "-", cpu_info["model"].lower()).strip("-")
        out = out / (f"quantize_cpu-{slug}-{cpu.capability_class()}{'-emulated' if args.emulate_avx2 else ''}"
                     f"{'-base' if args.size == 'base' else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result, out, out.parent))
    console.print(f"wrote {out} and {out.with_suffix('.md').name}")
    return 0


def _link(path: Path, relative_to: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(relative_to).resolve())


def teacher_words(result: dict) -> str:
    """The run's teacher in words: its size and shape (runs before ``size`` was recorded: the fixture)."""
    shape = result.get("teacher_architecture")
    if result.get("size") == "base":
        return (f"base size: random teacher of BERT-base's shape ({shape['num_hidden_layers']} layers, hidden "
                f"{shape['hidden_size']}, {shape['num_attention_heads']} heads, FFN {shape['intermediate_size']}, "
                f"{shape['vocab_size']:,} vocabulary)")
    if shape:
        return (f"fixture size: `{Path(result['teacher']).name}` ({shape['num_hidden_layers']} layers, hidden "
                f"{shape['hidden_size']}, {shape['num_attention_heads']} heads, FFN {shape['intermediate_size']}, "
                f"{shape['vocab_size']:,} vocabulary)")
    return f"fixture size: `{Path(result['teacher']).name}`"


def markdown(result: dict, json_path: Path, relative_to: Path) -> str:
    """The table of ``result`` for docs/quantization.md, every number from the JSON (linked relative
    to ``relative_to``)."""
    cpu_info, emulation, machine = result["cpu"], result["emulation"], result["machine"]
    sizes = result["batch_sizes"]
    link = _link(json_path, relative_to)
    emulated = (f"; torch/oneDNN/MKL capped by {', '.join(f'{k}={v}' for k, v in emulation['env'].items())} "
                f"(torch {emulation['torch_capability']}, oneDNN {emulation['onednn_isa']}; ONNX Runtime not capped)"
                if emulation["env"] else "")
    size = f"Teacher: {teacher_words(result)}. " if result.get("size") else ""
    lines = [
        f"{size}**{cpu_info['model']}**, class `{cpu_info['capability_class']}` (flags {', '.join(cpu_info['flags'])})"
        f"{emulated}; {result['threads']} threads (CPUs {result['affinity']}), sequence {result['seq_len']}, "
        f"median [interquartile range] of {result['repeats']} calls in {result['rounds']} interleaved rounds"
        f"{' (**CPU time** of the process, not latency)' if result.get('clock') == 'cpu' else ''}; "
        f"load average {machine['load_average_before'][0]:.1f} → {machine['load_average_after'][0]:.1f}"
        f"{' (**busy machine: not a speed claim**)' if machine['busy'] else ''}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + f". Source: [{Path(link).name}]({link}).",
        "",
        "| model | " + " | ".join(f"batch {b} ms | × teacher" for b in sizes) + " | weights | of teacher |",
        "|---|" + "---:|---:|" * len(sizes) + "---:|---:|",
    ]
    for row in result["rows"]:
        cells = []
        for b in sizes:
            t = row["latency"][str(b)]
            cells += [f"{t['median_ms']:.1f} [{t['q1_ms']:.1f}–{t['q3_ms']:.1f}]",
                      f"{row['speedup_vs_teacher'][str(b)]:.2f}×"]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['weights_bytes'] / 1e6:.2f} MB | "
                     f"{row['size_ratio_vs_teacher']:.1%} |")
    for case, reason in result["skipped"].items():
        lines.append(f"| int8 student, {case} | skipped: {reason} |" + " |" * (2 * len(sizes) + 1))
    auto = result["auto_choice"]
    lines += ["", "Fastest INT8 backend: " + ", ".join(f"batch {b}: {m}" for b, m in result["fastest_int8"].items())
              + f". `backend: auto` on this class: {auto['backend']} ({auto['method']}).", ""]
    return "\n".join(lines)


def headline_row(result: dict) -> dict | None:
    """The INT8 row a user of ``backend: auto`` gets on the run's CPU class (the fastest INT8 row when
    that backend was skipped), with the fp32 rows it is compared with."""
    rows = {r["model"]: r for r in result["rows"] if "variant" not in r}
    auto = result["auto_choice"]
    chosen = rows.get(f"int8 student, {auto['backend']}-{auto['method']}")
    if chosen is None:
        int8 = [r for r in rows.values() if r["model"].startswith("int8")]
        if not int8:
            return None
        b = str(result["batch_sizes"][0])
        chosen = min(int8, key=lambda r: r["latency"][b]["median_ms"])
    return {"int8": chosen, "student": rows["fp32 student"], "teacher": rows["fp32 teacher"]}


def headline(folder: Path, relative_to: Path) -> str:
    """Per CPU: the INT8 student against the fp32 teacher at base size, and at fixture size beside it
    (the run of the same CPU and class without ``-base``), every figure from the JSON it links."""
    runs = sorted(folder.glob("quantize_cpu-*-base.json"))
    if not runs:
        return ("No base-size run is committed yet: `python benchmarks/quantize_cpu.py --size base` on a quiet "
                "machine writes `docs/results/benchmarks/quantize_cpu-<cpu>-<class>-base.json`.\n")
    lines = ["| CPU (class) | threads, sequence | teacher | INT8 student | INT8 × fp32 teacher, batch 1 | batch 8 | "
             "fp32 student × teacher, batch 1 | batch 8 | INT8 weights, of the teacher's | of the fp32 student's "
             "| source |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for base in runs:
        pair = [base, base.with_name(base.name.removesuffix("-base.json") + ".json")]
        for path in [p for p in pair if p.is_file()]:
            result = json.loads(path.read_text())
            picked = headline_row(result)
            if picked is None or set(result["batch_sizes"]) < {1, 8}:
                continue
            int8, student, teacher = picked["int8"], picked["student"], picked["teacher"]
            shape = result.get("teacher_architecture") or {}
            size = ("**base**" if result.get("size") == "base" else "fixture") + (
                f" ({shape['num_hidden_layers']} × {shape['hidden_size']})" if shape else "")
            busy = " (busy machine: not a speed claim)" if result["machine"]["busy"] else ""
            speed = [f"{int8['speedup_vs_teacher'][b]:.2f}×" for b in ("1", "8")]
            if result.get("size") == "base":
                speed = [f"**{x}**" for x in speed]
            lines.append(
                f"| {result['cpu']['model']} (`{result['cpu']['capability_class']}`) | {result['threads']}, "
                f"{result['seq_len']}{busy} | {size} | {int8['model'].removeprefix('int8 student, ')} | {speed[0]} "
                f"| {speed[1]} | "
                + " | ".join(f"{student['speedup_vs_teacher'][b]:.2f}×" for b in ("1", "8"))
                + f" | {int8['weights_bytes'] / teacher['weights_bytes']:.1%} "
                f"| {int8['weights_bytes'] / student['weights_bytes']:.1%} "
                f"| [{path.name}]({_link(path, relative_to)}) |")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    sys.exit(main())
