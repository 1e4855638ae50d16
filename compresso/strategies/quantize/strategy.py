"""The ``quantize`` strategy: choose the backend, prepare text and the fp32 copy, quantize, check."""

from __future__ import annotations

from pathlib import Path

from compresso.strategies.quantize import cpu
from compresso.strategies.quantize.backends import available, get_backend
from compresso.strategies.quantize.backends.base import Backend, Job
from compresso.strategies.quantize.calibration import (
    batches,
    calibration_source,
    random_batches,
    sample_documents,
)
from compresso.strategies.quantize.checks import (
    check_model,
    check_platform,
    compare_outputs,
    copy_fp32,
    ensure_sane,
    output_spec,
    run_outputs,
)
from compresso.strategies.quantize.params import BACKEND_METHODS, QuantizeParams
from compresso.strategies.quantize.weights import int8_embedding, linear_names
from compresso.strategy import (
    CompressionStrategy,
    ModelBundle,
    RunContext,
    StrategyError,
    check_text_source,
)


class QuantizeStrategy(CompressionStrategy):
    name = "quantize"
    summary = "INT8 post-training quantization for x86 CPUs (INC static, torchao dynamic or ONNX Runtime)"
    Params = QuantizeParams
    reapply_after_finetune = True
    accepts_formats = frozenset({"transformers", "prune"})
    params: QuantizeParams

    def output_format(self, input_format: str) -> str:
        return "quantize"

    def choose(self) -> tuple[Backend, str]:
        """(backend, method) this stage uses on this machine: as given, or ``auto``'s choice."""
        p = self.params
        if p.backend == "auto":
            name, method = cpu.auto_backend(p.method, available)
        else:
            name, method = p.backend, p.method or BACKEND_METHODS[p.backend][-1]
        return get_backend(name), method

    def preflight(self, ctx: RunContext) -> None:
        backend, _ = self.choose()
        backend.require()
        check_platform(self.params.compile and backend.compiles)
        source = calibration_source(self.params, [], ctx)  # the recipe's own calibration text, if any
        if source is not None:
            check_text_source(source, ctx, "quantize (calibration text)")

    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        p = self.params
        backend, method = self.choose()
        backend.require()
        check_platform(p.compile and backend.compiles)
        input_names = check_model(bundle)
        if ctx.device.type != "cpu":
            ctx.log(f"[yellow]quantize runs on the CPU: the INT8 model is for x86 CPUs (recipe device "
                    f"{ctx.device})[/yellow]")
        ctx.log(f"quantize: backend {backend.name}, method {method}"
                + (f" (auto, CPU class {cpu.capability_class()})" if p.backend == "auto" else ""))
        source = calibration_source(p, bundle.lineage, ctx)
        if source is not None:  # the default text comes from the model's lineage: unknown until now
            check_text_source(source, ctx, "quantize (calibration text)")
        if source is None and method == "static":
            raise StrategyError(
                "static quantization needs calibration text: set params.calibration.corpus (text files, one "
                "document per line) or params.calibration.dataset, or quantize a model made by a distill "
                "stage (its corpus is the default); method: dynamic needs none")
        model = bundle.model
        fp32 = copy_fp32(model)
        quantized, excluded = linear_names(fp32, p.exclude)
        if not quantized:
            raise StrategyError(f"exclude {p.exclude} leaves no Linear layer to quantize in {type(model).__name__}")
        tokenizer = bundle.tokenizer
        max_length = min(p.calibration.max_length, int(getattr(fp32.config, "max_position_embeddings", 512)))
        cal = p.calibration
        need_cal = cal.num_samples if method == "static" else 0
        if source is not None:
            ctx.log(f"calibration text: {source.describe()}")
            docs = sample_documents(source, need_cal + cal.check_samples, cal.scan_documents, ctx.seed)
            if len(docs) < need_cal + 1:
                raise StrategyError(f"calibration text ({source.describe()}) has {len(docs)} documents; "
                                    f"num_samples {need_cal} plus at least one check document are needed")
            calib_docs = docs[:need_cal] if need_cal else []
            check_docs = docs[need_cal:] or docs[-1:]
            check = list(batches(tokenizer, check_docs, input_names, max_length, cal.batch_size))
        else:
            calib_docs = []
            check = random_batches(fp32.config.vocab_size, input_names, cal.check_samples, min(64, max_length),
                                   ctx.seed)
            ctx.log("[yellow]no text named for the dynamic method's check: comparing with fp32 on random token "
                    "ids[/yellow]")
        output_key, output_class = output_spec(fp32, check[0])
        reference = run_outputs(fp32, check)

        embedding = int8_embedding(fp32) if p.embeddings == "int8" else None
        job = Job(fp32=fp32, input_names=input_names, output_key=output_key, output_class=output_class,
                  quantized=quantized, excluded=excluded, method=method, params=p, ctx=ctx,
                  calibration=list(batches(tokenizer, calib_docs, input_names, max_length, cal.batch_size)))
        qmodel = backend.quantize(job, p.compile)
        qmodel.saved.update(params=p.model_dump(mode="json"), architecture=type(model).__name__,
                            embedding_int8=embedding, quantized_on=cpu.describe())

        compiling = p.compile and backend.compiles
        ctx.log(f"checking INT8 against fp32 on {sum(len(b['input_ids']) for b in check)} documents"
                + (" (compiling first)" if compiling else ""))
        result = compare_outputs(reference, run_outputs(qmodel, check), [b["attention_mask"] for b in check])
        object.__setattr__(qmodel, "_check", result)
        ctx.metrics.update({"backend": backend.name, "method": method, "cpu_class": cpu.capability_class(),
                            "quantized_linear": len(quantized), "excluded_linear": excluded,
                            "calibration": source.describe() if source is not None else None,
                            "calibration_documents": len(calib_docs), "check": result})
        ensure_sane(result, p.max_relative_error)
        ctx.log(f"INT8 vs fp32: relative error {result['relative_error']:.4f}, argmax agreement "
                f"{result['argmax_agreement']:.4f} over {result['positions']} outputs")
        return ModelBundle(model=qmodel, tokenizer=tokenizer, lineage=list(bundle.lineage), format=self.name)

    @classmethod
    def save(cls, bundle: ModelBundle, path: Path) -> None:
        from compresso.strategies.quantize import saving

        saving.save(bundle, path, cls.name)

    @classmethod
    def load(cls, path: Path, model_class: type | None = None, **model_kwargs) -> ModelBundle:
        """Rebuild the INT8 model saved by ``save``. ``compile=False`` skips torch.compile."""
        from compresso.strategies.quantize import saving

        return saving.load(path, cls.name, model_class, **model_kwargs)
