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
from compresso.evaluation.task_model import model_input_batches, task_head
from compresso.strategy import (
    CompressionStrategy,
    ModelBundle,
    RunContext,
    StrategyError,
    check_text_source,
)


def _task_data(head, train_examples: int, eval_examples: int | None):
    """The task model's data (a fixed subset of training examples for calibration and the check,
    the validation split for the task check), read again from where its head says it came from."""
    from compresso.evaluation.data import DataError
    from compresso.evaluation.task_model import TaskModelError, task_data_for

    try:
        return task_data_for(head, max_train_examples=train_examples, max_eval_examples=eval_examples)
    except (DataError, TaskModelError) as exc:
        raise StrategyError(f"the input is a {head.title} task model, whose data is read for calibration and the "
                            f"task check: {exc}. Name calibration.corpus and set task_check: false to quantize "
                            f"without it") from None


def _task_check(head, data, fp32, qmodel, tokenizer, max_drop: float | None, ctx: RunContext) -> dict:
    """fp32 and INT8 scored on the task's validation split in the task's metrics, and their loyalty."""
    import torch

    from compresso.evaluation import scoring
    from compresso.evaluation.finetune import SiameseRegressor
    from compresso.evaluation.task_model import check_head, encode_for, in_task_order, predict_examples
    from compresso.strategy import StageFailure

    spec = data.spec
    columns = check_head(head, spec, data.labels, "the input model")
    encoded = encode_for(head, tokenizer, data.validation)
    cpu = torch.device("cpu")
    scores, preds = {}, {}
    for name, model in (("fp32", fp32), ("int8", qmodel)):
        if head.head == "siamese":
            model = SiameseRegressor(model)
        pred = predict_examples(model, tokenizer, head, [], cpu, encoded=encoded, use_autocast=False)
        preds[name] = in_task_order(pred, columns)
        scores[name] = scoring.score(spec, data.validation, data.labels, preds[name])
    drop = scores["fp32"][spec.headline] - scores["int8"][spec.headline]
    check = {"task": head.task, "split": "validation", "examples": len(data.validation), "metric": spec.headline,
             "fp32": scores["fp32"], "int8": scores["int8"], "difference": -drop,
             "loyalty": scoring.loyalty(spec, preds["fp32"], preds["int8"])}
    ctx.log(f"{head.title} validation {spec.headline}: fp32 {scores['fp32'][spec.headline]:.2f}, INT8 "
            f"{scores['int8'][spec.headline]:.2f} ({len(data.validation)} examples)")
    if max_drop is not None and drop > max_drop:
        raise StageFailure(f"INT8 loses {drop:.2f} points of {head.title} {spec.headline} on the validation split "
                           f"(fp32 {scores['fp32'][spec.headline]:.2f}, INT8 {scores['int8'][spec.headline]:.2f}); "
                           f"max_task_drop is {max_drop:g}")
    return check


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
        cal = p.calibration
        need_cal = cal.num_samples if method == "static" else 0
        head = task_head(bundle.model)
        task_data = None
        if head is not None and (p.task_check or not (cal.corpus or cal.dataset)):
            task_data = _task_data(head, need_cal + cal.check_samples, p.task_check_examples)
        source = None if head is not None and not (cal.corpus or cal.dataset) else \
            calibration_source(p, bundle.lineage, ctx)
        if source is not None:  # the default text comes from the model's lineage: unknown until now
            check_text_source(source, ctx, "quantize (calibration text)")
        if source is None and task_data is None and method == "static":
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
        max_length = min(cal.max_length, int(getattr(fp32.config, "max_position_embeddings", 512)))
        calibration: list[dict] = []
        if source is not None:
            described = source.describe()
            ctx.log(f"calibration text: {described}")
            docs = sample_documents(source, need_cal + cal.check_samples, cal.scan_documents, ctx.seed)
            if len(docs) < need_cal + 1:
                raise StrategyError(f"calibration text ({described}) has {len(docs)} documents; "
                                    f"num_samples {need_cal} plus at least one check document are needed")
            calib_docs = docs[:need_cal] if need_cal else []
            check_docs = docs[need_cal:] or docs[-1:]
            check = list(batches(tokenizer, check_docs, input_names, max_length, cal.batch_size))
            calibration = list(batches(tokenizer, calib_docs, input_names, max_length, cal.batch_size))
        elif task_data is not None:
            # a task model: calibrated on its task's training examples, encoded as it is served
            examples = list(task_data.train)
            described = f"{len(examples)} training examples of {head.title} ({head.task})"
            ctx.log(f"calibration text: {described}")
            if len(examples) < need_cal + 1:
                raise StrategyError(f"{head.title} has {len(examples)} training examples; num_samples {need_cal} "
                                    f"plus at least one check example are needed (lower calibration.num_samples)")
            calib_docs = examples[:need_cal]
            check = model_input_batches(head, tokenizer, examples[need_cal:] or examples[-1:], input_names,
                                        cal.batch_size)
            calibration = model_input_batches(head, tokenizer, calib_docs, input_names, cal.batch_size) \
                if calib_docs else []
        else:
            calib_docs, described = [], None
            check = random_batches(fp32.config.vocab_size, input_names, cal.check_samples, min(64, max_length),
                                   ctx.seed)
            ctx.log("[yellow]no text named for the dynamic method's check: comparing with fp32 on random token "
                    "ids[/yellow]")
        output_key, output_class = output_spec(fp32, check[0])
        reference = run_outputs(fp32, check)

        embedding = int8_embedding(fp32) if p.embeddings == "int8" else None
        job = Job(fp32=fp32, input_names=input_names, output_key=output_key, output_class=output_class,
                  quantized=quantized, excluded=excluded, method=method, params=p, ctx=ctx, calibration=calibration)
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
                            "calibration": described,
                            "calibration_documents": len(calib_docs), "check": result})
        ensure_sane(result, p.max_relative_error)
        ctx.log(f"INT8 vs fp32: relative error {result['relative_error']:.4f}, argmax agreement "
                f"{result['argmax_agreement']:.4f} over {result['positions']} outputs")
        if head is not None and p.task_check:
            ctx.metrics["task_check"] = _task_check(head, task_data, fp32, qmodel, tokenizer, p.max_task_drop, ctx)
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
