"""Checks before quantizing (model, machine) and after (the INT8 outputs against fp32)."""

from __future__ import annotations

import inspect
import platform
import shutil

import torch

from compresso.strategy import ModelBundle, StrategyError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def check_platform(compile_: bool) -> None:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "x64"):
        raise StrategyError(f"quantize makes INT8 models for x86-64 CPUs (oneDNN / MLAS int8 kernels); this machine "
                            f"is {platform.machine()}. Quantize on an x86-64 machine.")
    if compile_ and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise StrategyError("compile: true needs a C++ compiler (g++ or clang++) for torch.compile's CPU backend; "
                            "install one, or set compile: false (same INT8 numbers, no speed-up)")


def forward_inputs(model: torch.nn.Module) -> list[str]:
    params = inspect.signature(model.forward).parameters
    return [n for n in INPUT_NAMES if n in params]


def check_model(bundle: ModelBundle) -> list[str]:
    """Refuse what cannot be quantized here, before any work. Returns the model's input names."""
    from transformers import PreTrainedModel

    model = bundle.model
    if bundle.format == "quantize":
        raise StrategyError("the input model is already INT8-quantized; quantize its fp32 input instead")
    if bundle.format not in ("transformers", "prune"):
        raise StrategyError(f"quantize takes models in the transformers or prune formats; the input has format "
                            f"{bundle.format!r}")
    if not isinstance(model, PreTrainedModel):
        raise StrategyError(f"quantize works on transformers encoder models; got {type(model).__name__}")
    config = model.config
    generates = getattr(model, "can_generate", lambda: False)()
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False) or generates:
        raise StrategyError(f"{type(model).__name__} is not an encoder-only model; quantize supports BERT-family "
                            f"encoders (masked-LM, sequence and token classification heads)")
    names = forward_inputs(model)
    if names[:2] != ["input_ids", "attention_mask"]:
        raise StrategyError(f"{type(model).__name__}.forward does not take input_ids and attention_mask; quantize "
                            f"supports BERT-family encoders")
    return names


def output_spec(model: torch.nn.Module, batch: dict) -> tuple[str, str]:
    """(output key, output class name) of the fp32 model: what the INT8 model returns too."""
    with torch.no_grad():
        out = model(**batch, return_dict=True)
    key = "logits" if "logits" in out else "last_hidden_state"
    if key not in out:
        raise StrategyError(f"{type(model).__name__} returns neither logits nor last_hidden_state; quantize supports "
                            f"BERT-family encoders with masked-LM, classification or no head")
    return key, type(out).__name__


def copy_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """A detached fp32 CPU copy: the input bundle stays usable (evaluation reuses it)."""
    import copy

    clone = copy.deepcopy(model).to("cpu").float().eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def compare_outputs(reference: list[torch.Tensor], quantized: list[torch.Tensor],
                    masks: list[torch.Tensor | None]) -> dict[str, float]:
    """Relative L2 error of centred outputs, argmax agreement, and whether the outputs are usable."""
    ref_rows, q_rows = [], []
    for r, q, m in zip(reference, quantized, masks):
        if r.dim() == 3 and m is not None:  # token-level: only real tokens
            keep = m.bool()
            r, q = r[keep], q[keep]
        ref_rows.append(r.reshape(-1, r.shape[-1]).float())
        q_rows.append(q.reshape(-1, q.shape[-1]).float())
    r, q = torch.cat(ref_rows), torch.cat(q_rows)
    finite = bool(torch.isfinite(q).all())
    # Centre each row (logits are shift-invariant); a single output (regression) is centred over rows.
    dim = 0 if r.shape[-1] == 1 else -1
    rc = r - r.mean(dim, keepdim=True)
    qc = q - q.mean(dim, keepdim=True)
    denom = rc.norm().clamp_min(1e-12)
    rel = float((qc - rc).norm() / denom) if finite else float("inf")
    return {"relative_error": rel, "argmax_agreement": float((r.argmax(-1) == q.argmax(-1)).float().mean()),
            "finite": finite, "constant": bool(qc.abs().max() == 0) if finite else False,
            "positions": int(r.shape[0])}


def run_outputs(fn, batches: list[dict]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for batch in batches:
            out = fn(**batch)
            outs.append((out.logits if hasattr(out, "logits") and out.logits is not None
                         else out.last_hidden_state).detach())
    return outs


def ensure_sane(result: dict, max_relative_error: float) -> None:
    """Raise when the INT8 outputs are unusable (the guard against silently broken backends)."""
    if not result["finite"]:
        raise StrategyError("the INT8 model produced NaN or infinite outputs on the check documents")
    if result["constant"]:
        raise StrategyError("the INT8 model's outputs are constant (e.g. all zeros) on the check documents: the "
                            "quantized graph is broken (an uncalibrated backend does this)")
    if result["relative_error"] > max_relative_error:
        raise StrategyError(f"the INT8 outputs differ from fp32 by a relative error of {result['relative_error']:.3f}"
                            f" (limit max_relative_error {max_relative_error}); argmax agreement "
                            f"{result['argmax_agreement']:.3f}. Exclude sensitive layers (exclude: [...]), use "
                            f"more calibration text, or try another method or backend")
