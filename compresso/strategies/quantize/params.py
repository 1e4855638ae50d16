"""The ``quantize`` strategy's parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compresso.strategy import InputPath, StrategyParams

BACKEND_METHODS = {"inc": ("static",), "torchao": ("dynamic",), "ort": ("static", "dynamic")}
"""Which methods each backend implements (``auto`` chooses among these)."""


class CalibrationParams(StrategyParams):
    corpus: list[InputPath] = Field(
        default_factory=list,
        description="Text files, one document per line (.txt, .gz, .xz, .bz2). Default: for a task model, its "
                    "task's training examples (encoded as the model is served); otherwise the corpus of the "
                    "distillation stage that made the input model (from its lineage).")
    dataset: str | None = Field(None, description="Instead of `corpus`: a Hugging Face dataset id, streamed.")
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    num_samples: int = Field(512, ge=1, description="Documents used to calibrate activation ranges (static).")
    check_samples: int = Field(32, ge=1, description="Further documents on which the INT8 model is compared "
                                                     "with the fp32 model after quantizing.")
    max_length: int = Field(128, ge=8, description="Tokens per document (truncated).")
    batch_size: int = Field(16, ge=1)
    scan_documents: int = Field(20000, ge=1, description="Samples are drawn (seeded) from the corpus's first N "
                                                         "documents.")

    @model_validator(mode="after")
    def _one_source(self):
        if self.corpus and self.dataset:
            raise ValueError("give calibration text as either `corpus` (text files) or `dataset` (a hub "
                             "dataset id), not both")
        return self


class QuantizeParams(StrategyParams):
    backend: Literal["auto", "inc", "torchao", "ort"] = Field(
        "auto", description="auto: the backend measured fastest on this CPU's class (AVX2, AVX2+VNNI, AVX-512 "
                            "VNNI; table in docs/quantization.md). inc: Intel Neural Compressor PT2E graph "
                            "(static). torchao: int8 tensors, dynamic activations. ort: ONNX Runtime int8 "
                            "(static QDQ or dynamic), saved as an .onnx file.")
    method: Literal["static", "dynamic"] | None = Field(
        None, description="static: activation ranges calibrated on text. dynamic: activation scales computed at "
                          "run time (no calibration). Default: the chosen backend's (auto's table, or inc → "
                          "static, torchao → dynamic, ort → dynamic).")
    calibration: CalibrationParams = Field(default_factory=CalibrationParams)
    exclude: list[str] = Field(
        default_factory=lambda: ["classifier"],
        description="Modules kept in fp32, by name relative to the model (glob patterns; a pattern also "
                    "covers the module's children), e.g. [classifier, 'bert.encoder.layer.0.*'].")
    embeddings: Literal["int8", "fp32"] = Field(
        "int8", description="Storage of the word-embedding table: int8 with a scale per row, or fp32.")
    activation_observer: Literal["minmax", "kl"] = Field(
        "minmax", description="inc static only: how activation ranges are taken from the calibration data "
                              "(minmax: moving-average min/max; kl: histogram, minimising the L2 error).")
    compile: bool = Field(
        True, description="inc/torchao: compile with torch.compile (inductor, freezing) so that int8 kernels run. "
                          "false keeps the quantize/dequantize graph uncompiled: same numbers, no speed-up. "
                          "(ort: no effect.)")
    task_check: bool = Field(
        True, description="For a task model (the output of finetune or task distillation): score the fp32 and the "
                          "INT8 model on the task's validation split in the task's own metrics and record both "
                          "in stage.json (`task_check`).")
    task_check_examples: int | None = Field(
        None, ge=1, description="Score the task check on a fixed subset of this many validation examples "
                                "(default: the subset the task model was fine-tuned with, or all).")
    max_task_drop: float | None = Field(
        None, gt=0, description="Fail when the INT8 model's headline metric on the validation split is more than this "
                                "many points (0-100 scale) below the fp32 model's. Default: record only.")
    max_relative_error: float = Field(
        0.5, gt=0, description="Fail when the INT8 outputs differ from fp32 by more than this (relative L2 "
                               "error of centred logits on the check documents).")

    @model_validator(mode="after")
    def _method_fits_backend(self):
        if self.backend != "auto" and self.method is not None and self.method not in BACKEND_METHODS[self.backend]:
            raise ValueError(f"backend {self.backend} has no method {self.method!r}; it offers "
                             f"{', '.join(BACKEND_METHODS[self.backend])}")
        return self
