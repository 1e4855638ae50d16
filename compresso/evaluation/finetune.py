"""Task fine-tuning and inference.

One loop for every task: AdamW with linear warm-up and decay, bf16 autocast on GPU, dynamic
padding with length-grouped batches, and no host synchronisation inside an epoch (the loss is
accumulated on the device; the best epoch is chosen on validation after each epoch).
"""

from __future__ import annotations

import inspect
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from compresso.evaluation.features import (
    Encoded,
    collate,
    length_grouped_batches,
    sorted_batches,
)
from compresso.evaluation.tasks import FinetuneSettings, TaskSpec

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CPU_EVAL_BATCH = 32  # long sequences at batch 256 would need gigabytes of attention scores on CPU


@dataclass
class Predictions:
    """A model's outputs on one split, in example order."""

    kind: str
    probs: np.ndarray | None = None
    """Classification: [examples, classes]; tagging: [words of all examples, classes]."""
    values: np.ndarray | None = None
    """Regression: one prediction per example, in label units."""
    offsets: np.ndarray | None = None
    """Tagging: example i owns rows offsets[i]:offsets[i+1] of ``probs``."""

    def label_ids(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def per_example(self, rows: np.ndarray) -> list[np.ndarray]:
        return [rows[self.offsets[i]:self.offsets[i + 1]] for i in range(len(self.offsets) - 1)]


def _output_tensor(output, name: str) -> torch.Tensor:
    """``output.name`` from whatever a model returns: a tensor (itself), a ModelOutput, a dict or a
    tuple (its first tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    value = getattr(output, name, None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(output, dict) and name in output:
        return output[name]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find {name} in a model output of type {type(output).__name__}")


def as_logits(output) -> torch.Tensor:
    """Logits from whatever a model returns."""
    return _output_tensor(output, "logits")


def hidden_states(output) -> torch.Tensor:
    """The last hidden states [batch, tokens, hidden] from what an encoder returns."""
    return _output_tensor(output, "last_hidden_state")


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the non-padding tokens of each sequence, in float32."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return (states.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class SiameseRegressor(torch.nn.Module):
    """Sentence-pair similarity as Sentence-BERT's CosineSimilarityLoss trains it: each sentence
    through the same encoder alone, mean-pooled over its tokens, and the cosine of the two vectors
    as the prediction (trained towards the score scaled to [0, 1]). No parameters besides the
    encoder's, so it starts from the pretrained encoder's sentence geometry."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def embed(self, inputs: dict) -> torch.Tensor:
        """Mean-pooled sentence vectors [batch, hidden] of one padded batch of sentences."""
        # the call is made here, not stored: a deep copy of this module must call its own encoder
        return mean_pool(hidden_states(make_call(self.encoder)(inputs)), inputs["attention_mask"])

    def forward(self, batch: dict) -> torch.Tensor:
        """Cosine similarity [batch] of the first sentences and the ``pair_``-prefixed second ones.

        Both sides go through the encoder in one call (padded to the wider side; the extra
        positions are masked, so each sentence's vector is the same as alone): on a GPU a small
        encoder's step costs its kernel launches, which one call instead of two halves."""
        first = {k: batch[k] for k in _INPUTS if k in batch}
        second = {k: batch["pair_" + k] for k in first}
        width = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
        both = {k: torch.cat([F.pad(first[k], (0, width - first[k].shape[1])),
                              F.pad(second[k], (0, width - second[k].shape[1]))]) for k in first}
        vectors = self.embed(both)
        n = first["input_ids"].shape[0]
        return F.cosine_similarity(vectors[:n], vectors[n:], dim=-1)


def make_forward(model: torch.nn.Module) -> Callable[[dict], torch.Tensor]:
    """A call ``batch -> logits`` that fits the model's signature (see ``make_call``)."""
    if isinstance(model, SiameseRegressor):
        return model
    call = make_call(model)

    def forward(batch):
        return as_logits(call(batch))
    return forward


def make_call(model: torch.nn.Module) -> Callable[[dict], object]:
    """A call ``batch -> model output`` that fits the model's signature: keywords for
    transformers models and modules that name their inputs, positional inputs for exported graphs."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = {p.name for p in params}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if names & set(_INPUTS):
        accepted = [k for k in _INPUTS if k in names or takes_kwargs]

        def call(batch):
            return model(**{k: batch[k] for k in accepted if k in batch})
        return call
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    count = len(positional) if positional else 2
    count = max(1, min(count, len(_INPUTS)))

    def call_positional(batch):
        return model(*[batch[k] for k in _INPUTS[:count] if k in batch])
    return call_positional


def module_device(model: torch.nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _to(batch: dict, device: torch.device) -> dict:
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return batch


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.inference_mode()
def predict(model: torch.nn.Module, enc: Encoded, spec: TaskSpec, device: torch.device, batch_size: int,
            pad_id: int, prior: np.ndarray | None, forward: Callable | None = None,
            use_autocast: bool = True) -> Predictions:
    forward = forward or make_forward(model)
    was_training = model.training
    model.eval()
    if device.type != "cuda":
        batch_size = min(batch_size, CPU_EVAL_BATCH)
    outputs, order = [], []
    for idx in sorted_batches(enc.batch_lengths, batch_size):
        batch = _to(collate(enc, idx, pad_id, with_labels=False), device)
        with _autocast(device) if use_autocast else nullcontext():
            logits = forward(batch)
        logits = logits.float()
        if spec.kind == "tagging":
            flat = logits.reshape(-1, logits.shape[-1]).index_select(0, batch["word_index"])
            outputs.append(flat.softmax(-1))
        elif spec.kind == "classification":
            outputs.append(logits.softmax(-1))
        else:
            outputs.append(logits.reshape(len(idx), -1)[:, 0])
        order.append(idx)
    model.train(was_training)
    gathered = torch.cat(outputs).cpu().numpy().astype(np.float64)  # the one synchronisation
    if spec.kind == "tagging":
        counts = enc.n_words
        offsets = np.concatenate([[0], np.cumsum(counts)])
        probs = np.tile(prior, (int(offsets[-1]), 1))  # words without a token get the label prior
        rows = np.concatenate([offsets[i] + np.flatnonzero(enc.word_pos[i] >= 0) for idx in order for i in idx])
        probs[rows] = gathered
        return Predictions("tagging", probs=probs, offsets=offsets)
    idx_all = np.concatenate(order)
    if spec.kind == "classification":
        probs = np.empty_like(gathered)
        probs[idx_all] = gathered
        return Predictions("classification", probs=probs)
    low, high = spec.value_range
    if isinstance(model, SiameseRegressor):
        gathered = np.clip(gathered, 0.0, 1.0)  # a negative cosine (opposed sentences) is no similarity
    values = np.empty(len(enc), dtype=np.float64)
    values[idx_all] = gathered * (high - low) + low  # the head is trained on targets scaled to [0, 1]
    return Predictions("regression", values=values)


@dataclass
class TrainOutcome:
    best_epoch: int
    best_validation: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    stopped_early: bool = False


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def task_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (tagging, classification) or MSE against the target scaled to [0, 1]
    (regression: one output per example, or the siamese head's cosine)."""
    logits = logits.float()
    if spec.kind == "tagging":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    if spec.kind == "classification":
        return F.cross_entropy(logits, labels)
    low, high = spec.value_range
    return F.mse_loss(logits.reshape(len(labels), -1)[:, 0], (labels.float() - low) / (high - low))


def finetune(model: torch.nn.Module, spec: TaskSpec, settings: FinetuneSettings, train: Encoded,
             validation: Encoded, validation_score: Callable[[Predictions], float], device: torch.device,
             seed: int, pad_id: int, prior: np.ndarray | None,
             on_epoch: Callable[[int, int, float], None] | None = None,
             checkpoint: Path | None = None,
             loss_fn: Callable[[dict, object, np.ndarray], torch.Tensor] | None = None,
             forward: Callable[[dict], object] | None = None) -> TrainOutcome:
    """Fine-tune ``model`` in place and leave it at its best epoch on validation.

    Training stops early once validation has not improved for ``settings.patience`` epochs (the
    learning-rate schedule still spans ``settings.epochs``, so stopping never changes the steps
    taken before it). ``on_epoch(epoch, epochs, validation)`` reports progress. ``checkpoint``: a
    file written after every epoch (weights, optimizer, schedule, random states, the best epoch
    so far) and read back when it exists, so that a killed run goes on from its last epoch to the
    same result. ``loss_fn(batch, output, idx)`` replaces the loss on gold labels (task
    distillation: ``idx`` are the batch's example indices into ``train``, ``output`` what
    ``forward(batch)`` returns, by default the logits)."""
    started = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    predict_forward = make_forward(model)
    forward = forward or predict_forward
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warmup = int(total * settings.warmup_ratio)
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr,
                                  fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup
        else max(0.0, (total - step) / max(1, total - warmup)))
    best_score, best_epoch, best_state, history = -math.inf, 0, None, []
    first = 1
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        best_score, best_epoch, history = state["best_score"], state["best_epoch"], state["history"]
        best_state = {k: v.to(device) for k, v in state["best"].items()}
        first = len(history) + 1
        if settings.patience is not None and history and history[-1]["epoch"] - best_epoch >= settings.patience:
            first = settings.epochs + 1  # it had stopped early
    for epoch in range(first, settings.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        for idx in length_grouped_batches(train.batch_lengths, settings.batch_size, rng):
            batch = _to(collate(train, idx, pad_id, with_labels=True), device)
            with _autocast(device):
                output = forward(batch)
            loss = task_loss(spec, output, batch["labels"]) if loss_fn is None else loss_fn(batch, output, idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        val_pred = predict(model, validation, spec, device, settings.eval_batch_size, pad_id, prior,
                           predict_forward)
        score = float(validation_score(val_pred))
        history.append({"epoch": epoch, "train_loss": float(loss_sum) / steps_per_epoch, "validation": score})
        if on_epoch is not None:
            on_epoch(epoch, settings.epochs, score)
        if score > best_score or best_state is None:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if checkpoint is not None:
            _save_checkpoint(Path(checkpoint), model, optimizer, schedule, rng, device, best_score, best_epoch,
                             best_state, history)
        if best_epoch != epoch and settings.patience is not None and epoch - best_epoch >= settings.patience:
            break
    model.load_state_dict(best_state)
    return TrainOutcome(best_epoch, best_score, history, time.time() - started, steps_per_epoch * len(history),
                        stopped_early=len(history) < settings.epochs)


def _save_checkpoint(path: Path, model, optimizer, schedule, rng: np.random.Generator, device: torch.device,
                     best_score: float, best_epoch: int, best_state: dict, history: list[dict]) -> None:
    """One epoch's training state, written under a temporary name and renamed (never half a file)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
             "best_score": best_score, "best_epoch": best_epoch, "best": best_state, "history": history}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
