"""Where the batch-1 time of the INT8 6-layer student goes, per backend: share of each operator kind
(int8 matrix products vs attention, LayerNorm, GELU, embedding, quantize/dequantize, other) and the
cost of compresso's wrapper (keyword inputs, output object) over calling the graph or session directly.

    python benchmarks/quantize_profile.py --backends inc-static ort-dynamic --out /tmp/profile.json

ort: ONNX Runtime's own session profiling (per-node times); inc/torchao: torch.profiler (per-op CPU
self time) on the same graph compiled with inductor's Python wrapper, since the C++ wrapper (the
default) calls the kernels where the profiler does not see them one by one. The same fixture teacher, student and text as ``quantize_cpu.py``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KINDS = (("int8 matmul", ("qlinear", "matmulinteger", "qattention", "dynamicquantizematmul", "matmulintegertofloat",
                          "qlinearmatmul", "_int_mm", "int8")),
         ("attention", ("attention", "softmax", "bmm", "scaled_dot")),
         ("layer norm", ("layernorm", "layer_norm", "skiplayernormalization")),
         ("gelu", ("gelu", "erf")),
         ("embedding", ("embed", "gather", "embedding", "index_select")),
         ("quantize / dequantize", ("quantize", "dequantize")),
         ("fp32 matmul", ("matmul", "gemm", "addmm", "linear", "mm")))


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(SHARED / "teachers" / "ro-bert-small-cased"))
    ap.add_argument("--corpus", default=str(SHARED / "corpus" / "ro-corpus-00.txt.xz"))
    ap.add_argument("--backends", nargs="+", default=["inc-static", "ort-static", "ort-dynamic"])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compresso.corpus import iter_documents
    from compresso.strategies.distill.modeling import build_student, default_layers
    from compresso.strategies.quantize import QuantizeParams, QuantizeStrategy, cpu
    from compresso.strategies.quantize.backends import BACKENDS
    from compresso.strategy import ModelBundle, RunContext

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher, dtype=torch.float32, num_labels=2)
    student = build_student(teacher.eval(), default_layers(teacher.config.num_hidden_layers, 6)).eval()
    doc = next(iter(iter_documents(args.corpus, part="all")))
    enc = dict(tokenizer([doc], truncation=True, max_length=args.seq_len, padding="max_length", return_tensors="pt"))
    results = {"cpu": cpu.describe(), "threads": args.threads, "seq_len": args.seq_len, "calls": args.calls,
               "load_average_before": os.getloadavg(), "backends": {}}
    for case in args.backends:
        backend, method = case.split("-")
        if BACKENDS[backend].missing():
            results["backends"][case] = {"skipped": BACKENDS[backend].missing()}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ctx = RunContext(stage_dir=Path(tmp), work_dir=Path(tmp), device=torch.device("cpu"), seed=0, teachers={},
                             base_dir=REPO)
            params = QuantizeParams.model_validate({"backend": backend, "method": method, "calibration": {
                "corpus": [args.corpus], "num_samples": 64, "max_length": args.seq_len}})
            model = QuantizeStrategy(params).apply(ModelBundle(student, tokenizer), ctx).model
        args_list = [enc[n] for n in model.input_names]
        if backend == "ort":
            feed = {n: enc[n].numpy() for n in model.session_inputs}
            direct = lambda: model.session.run(None, feed)  # noqa: E731
        else:
            direct = lambda: model.run(args_list)  # noqa: E731
        wrapped = lambda: model(**enc)  # noqa: E731
        with torch.inference_mode():
            for _ in range(5):
                wrapped()
            times = {"wrapped": [], "direct": []}
            for _ in range(args.calls):
                for name, fn in (("wrapped", wrapped), ("direct", direct)):
                    t = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t) * 1000)
        shares: dict[str, float] = collections.Counter()
        if backend == "ort":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "compresso-ort-profile")
            session = ort.InferenceSession(model.onnx_bytes, options, providers=["CPUExecutionProvider"])
            for _ in range(args.calls):
                session.run(None, feed)
            trace = Path(session.end_profiling())
            for event in json.loads(trace.read_text()):
                if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                    shares[kind_of(event["args"].get("op_name", event["name"]))] += event["dur"] / 1000
            trace.unlink()
        else:
            from torch.profiler import ProfilerActivity, profile

            from compresso.strategies.quantize.backends import get_backend
            from compresso.strategies.quantize.modeling import GraphModel

            # Inductor's C++ wrapper (the default) calls the kernels where torch.profiler does not see them one
            # by one: profile the same graph compiled with the Python wrapper, whose op calls it records. Its
            # "other" share is the generated C++ kernels (LayerNorm + quantize, ...) plus the Python glue.
            graph = copy.deepcopy(model.graph)
            profiled = GraphModel(graph, model.config, model.input_names, model.output_key, model.output_class,
                                  model.method, model.backend,
                                  inductor_options={**model.inductor_options, "cpp_wrapper": False},
                                  compiled_graph=get_backend(backend).compiled_form(graph))
            with torch.inference_mode():
                for _ in range(5):
                    profiled.run(args_list)
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.calls):
                    profiled.run(args_list)
            for event in prof.key_averages():
                if event.self_cpu_time_total > 0 and not event.key.startswith(("Torch-Compiled", "CompiledFunction")):
                    shares[kind_of(event.key)] += event.self_cpu_time_total / 1000
        total = sum(shares.values()) or 1.0
        results["backends"][case] = {
            "wrapped_ms": statistics.median(times["wrapped"]), "direct_ms": statistics.median(times["direct"]),
            "wrapper_overhead_ms": statistics.median(times["wrapped"]) - statistics.median(times["direct"]),
            "time_share": {k: round(v / total, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}}
        print(case, json.dumps(results["backends"][case], indent=1))
    results["load_average_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
