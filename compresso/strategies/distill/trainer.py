"""The training loop: AdamW with warm-up + linear decay (or constant), accumulation, clipping, DDP, checkpoints.

A checkpoint (``work_dir/checkpoint/``) holds the trained weights as safetensors and everything
else (optimizer, scheduler, step, every rank's RNG states and data position, loss history) in a
``torch.load(weights_only=True)``-readable file. It is written by rank 0 into a temporary folder
and renamed into place, so a run killed at any moment finds either the previous checkpoint or
the new one. Losses stay on the device between logging steps: one host sync per ``log_every``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import TextColumn
from torch.profiler import record_function

from compresso.strategies.distill.data import BatchStream, StreamConfig
from compresso.strategies.distill.losses import LossConfig, TeacherLink, compute_losses
from compresso.strategies.distill.modeling import StudentModule
from compresso.strategy import RunContext, StageFailure

PART_NAMES = ("ce", "mlm", "cos", "mse")


@dataclass
class TrainConfig:
    max_steps: int
    grad_accum_steps: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    max_grad_norm: float | None = 5.0
    log_every: int = 20
    checkpoint_every: int = 500
    lr_schedule: str = "linear"  # after the warm-up: "linear" decay to 0 at max_steps, or "constant"
    snapshot_steps: tuple[int, ...] = ()  # steps at which ``Trainer.snapshot`` is called (and a checkpoint made)


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    history: list[dict]
    loss_share: dict[str, float]
    supervised_fraction: dict[str, float]
    resumed_from: int
    extra: dict = field(default_factory=dict)
    # Host seconds spent waiting for the input pipeline's next batch (this run, not resumed ones):
    # near 0 when the pipeline keeps up; the share of ``seconds`` the GPU may have idled for input.
    input_wait_seconds: float = 0.0


def fingerprint(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def warmup_steps(warmup_ratio: float, max_steps: int) -> int:
    """The warm-up's length in steps (a hair of tolerance, so that a ratio computed as steps / max_steps
    gives back those steps)."""
    return int(warmup_ratio * max_steps + 1e-9)


def _lr_lambda(max_steps: int, warmup: int, schedule: str = "linear") -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))
    return f


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _finite(module: torch.nn.Module) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in module.parameters()]).all())


def _dist():
    import torch.distributed as dist

    return dist


class Trainer:
    """Trains a StudentModule against teachers on a stream of batches; rank-aware."""

    def __init__(self, student: StudentModule, links: list[TeacherLink], loss_cfg: LossConfig,
                 train_cfg: TrainConfig, stream_cfg: StreamConfig, ctx: RunContext, run_fingerprint: str):
        self.student = student
        self.links = links
        self.loss_cfg = loss_cfg
        self.cfg = train_cfg
        self.stream_cfg = stream_cfg
        self.ctx = ctx
        self.device = ctx.device
        self.world = ctx.world_size
        self.rank = ctx.rank
        self.fingerprint = run_fingerprint
        self.checkpoint_dir = Path(ctx.work_dir) / "checkpoint"
        self.extra_state: dict = {}  # small things the strategy wants back after a resume (e.g. baseline metrics)
        # What the step hook may read (benchmarks): the last micro-batch's losses (device tensors,
        # never read back here) and running host counts of the real student tokens and masked ones.
        self.last_losses = None
        self.tokens_seen = 0
        self.masked_seen = 0
        self.input_wait_s = 0.0  # host time blocked on the input pipeline (benchmarks read it per turn)
        # Called as snapshot(step, tokens) at each of ``cfg.snapshot_steps`` (rank 0 only), after the
        # step's losses are logged and before its checkpoint: a run resumed from that checkpoint has the
        # snapshot, one that died before it retrains the step and writes the snapshot again.
        self.snapshot: Callable[[int, int], None] | None = None

    # Hook for tests: called after every optimizer step with the step number.
    def on_step_end(self, step: int) -> None:
        pass

    def _autocast(self):
        if self.device.type == "cuda":
            # no weight-cast cache: a CUDA graph captured inside the region (student_cuda_graphs)
            # would keep a cached cast from the capture instead of casting the updated weights.
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return nullcontext()

    # ------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg
        student = self.student.to(self.device)
        student.train()
        model = student
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = None
            if self.device.type == "cuda":
                device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
            model = DistributedDataParallel(
                student, device_ids=device_ids,
                broadcast_buffers=False, gradient_as_bucket_view=True)
        fused = self.device.type == "cuda"
        optimizer = torch.optim.AdamW(_param_groups(student, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                      eps=cfg.eps, fused=fused)
        warmup = warmup_steps(cfg.warmup_ratio, cfg.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.max_steps, warmup, cfg.lr_schedule))

        state = self._load_checkpoint(student, optimizer, scheduler)
        start = state.get("step", 0)
        history: list[dict] = state.get("history", [])
        tokens = state.get("tokens", 0)
        seconds_before = state.get("seconds", 0.0)
        n_teachers = len(self.links)
        share_sum = torch.as_tensor(state.get("share_sum", torch.zeros(n_teachers)), device=self.device).float()
        sup_counts = dict(state.get("sup_counts", {"masked": 0, **{lk.name: 0 for lk in self.links}}))
        position = state.get("position")

        acc = torch.zeros(5 + n_teachers, device=self.device)  # total, ce, mlm, cos, mse, per-teacher
        acc_n = 0
        window_tokens, window_start, window_wait_start = 0, time.perf_counter(), self.input_wait_s
        run_start = time.perf_counter()
        stream = BatchStream(self.stream_cfg, "train", position)
        batches = iter(stream)
        progress = self.ctx.progress(TextColumn("{task.fields[info]}"))
        try:
            with progress:
                task = progress.add_task("distilling", total=cfg.max_steps, completed=start,
                                         info="resumed" if start else "")
                for step in range(start, cfg.max_steps):
                    for micro in range(cfg.grad_accum_steps):
                        waited = time.perf_counter()
                        batch = next(batches)
                        self.input_wait_s += time.perf_counter() - waited
                        batch = batch.to(self.device)
                        sync = nullcontext() if (self.world == 1 or micro == cfg.grad_accum_steps - 1) \
                            else model.no_sync()
                        with sync:
                            # profiler ranges (no-ops unless a profiler runs; see benchmarks/distill_speed.py)
                            losses = compute_losses(model, self.links, batch, self.loss_cfg, self._autocast)
                            with record_function("compresso.backward"):
                                (losses.total / cfg.grad_accum_steps).backward()
                        acc += torch.cat([losses.total.detach().reshape(1), losses.parts, losses.contributions])
                        acc_n += 1
                        self.last_losses = losses
                        self.tokens_seen += batch.tokens
                        self.masked_seen += batch.n_masked
                        window_tokens += batch.tokens
                        sup_counts["masked"] += batch.n_masked
                        for link in self.links:
                            sup_counts[link.name] += batch.n_masked if not link.cross else \
                                batch.n_supervised_cross[link.view - 1]
                        position = batch.position
                    with record_function("compresso.optimizer"):  # clipping, AdamW, schedule
                        if cfg.max_grad_norm:
                            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    done = step + 1
                    snapshot_now = done in cfg.snapshot_steps
                    if done % cfg.log_every == 0 or done == cfg.max_steps or snapshot_now:
                        values = acc / max(acc_n, 1)
                        share_sum += acc[5:]
                        window = torch.tensor([float(window_tokens)], device=self.device)
                        if self.world > 1:
                            dist = _dist()
                            dist.all_reduce(values)
                            values /= self.world
                            dist.all_reduce(window)
                        now = time.perf_counter()
                        v = values.tolist()
                        if not all(map(math.isfinite, v)):
                            self._diverged(done, v[0], scheduler.get_last_lr()[0])
                        rate = window.item() / max(now - window_start, 1e-9)
                        tokens += int(window.item())
                        record = {"step": done, "lr": scheduler.get_last_lr()[0], "loss": v[0],
                                  **dict(zip(PART_NAMES, v[1:5])), "tokens_per_s": rate,
                                  "input_wait_share": (self.input_wait_s - window_wait_start)
                                                      / max(now - window_start, 1e-9)}
                        history.append(record)
                        progress.update(task, info=f"loss {v[0]:.3f} · ce {v[1]:.3f} · mlm {v[2]:.3f} · "
                                                   f"cos {v[3]:.3f}" + (f" · mse {v[4]:.3f}" if v[4] else "")
                                                   + f" · {rate / 1000:.1f}k tok/s"
                                                   + (f" · waiting for input {record['input_wait_share']:.0%}"
                                                      if record["input_wait_share"] >= 0.05 else ""))
                        acc.zero_()
                        acc_n, window_tokens, window_start, window_wait_start = 0, 0, now, self.input_wait_s
                    progress.update(task, completed=done)
                    if snapshot_now and self.snapshot is not None and self.rank == 0:
                        self.snapshot(done, tokens)
                    if done % cfg.checkpoint_every == 0 or done == cfg.max_steps or snapshot_now:
                        # Never overwrite a good checkpoint with a diverged model.
                        if not bool(torch.isfinite(acc).all()) or not _finite(student):
                            self._diverged(done, float("nan"), scheduler.get_last_lr()[0])
                        self._save_checkpoint(student, optimizer, scheduler, {
                            "step": done, "history": history, "tokens": tokens,
                            "seconds": seconds_before + time.perf_counter() - run_start,
                            "share_sum": share_sum.cpu(), "sup_counts": sup_counts}, position)
                    self.on_step_end(done)
        finally:
            stream.close()
        if self.world > 1:
            _dist().all_reduce(share_sum)
        share_total = share_sum.sum().item()
        all_sup = self._sum_counts(sup_counts)
        return TrainResult(
            steps=cfg.max_steps, tokens=tokens, seconds=seconds_before + time.perf_counter() - run_start,
            history=history,
            loss_share={lk.name: (share_sum[i].item() / share_total if share_total > 0 else 0.0)
                        for i, lk in enumerate(self.links)},
            supervised_fraction={lk.name: all_sup[lk.name] / max(all_sup["masked"], 1) for lk in self.links},
            resumed_from=start, input_wait_seconds=self.input_wait_s)

    def _diverged(self, step: int, loss: float, lr: float) -> None:
        kept = self.checkpoint_dir / "state.pt"
        where = (f"the last good checkpoint is kept in {self.checkpoint_dir}" if kept.is_file()
                 else "no checkpoint had been written yet")
        raise StageFailure(f"distill: training diverged at step {step}: the loss or the weights became "
                           f"non-finite (loss {loss}, learning rate {lr:.3g}); {where}. Lower `lr`, keep "
                           f"`max_grad_norm` on, or check the teachers' outputs")

    def _sum_counts(self, counts: dict) -> dict:
        if self.world == 1:
            return counts
        keys = sorted(counts)
        t = torch.tensor([float(counts[k]) for k in keys], device=self.device)
        _dist().all_reduce(t)
        return dict(zip(keys, t.tolist()))

    # ------------------------------------------------------------------------------------------
    def _rank_state(self, position) -> dict:
        state = {"cpu_rng": torch.get_rng_state(), "position": position}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save_checkpoint(self, student, optimizer, scheduler, state: dict, position) -> None:
        from safetensors.torch import save_model

        ranks = [self._rank_state(position)]
        if self.world > 1:
            gathered: list = [None] * self.world
            _dist().all_gather_object(gathered, ranks[0])
            ranks = gathered
        if self.rank == 0:
            tmp = self.checkpoint_dir.with_name("checkpoint.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            save_model(student, str(tmp / "student.safetensors"))
            torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "ranks": ranks, "world_size": self.world, "fingerprint": self.fingerprint,
                        "extra": self.extra_state}, tmp / "state.pt")
            old = self.checkpoint_dir.with_name("checkpoint.old")
            if self.checkpoint_dir.exists():
                if old.exists():
                    shutil.rmtree(old)
                self.checkpoint_dir.rename(old)
            tmp.rename(self.checkpoint_dir)
            if old.exists():
                shutil.rmtree(old)
        if self.world > 1:
            _dist().barrier()

    def peek_checkpoint(self) -> dict | None:
        """The checkpoint's state if it belongs to this run, else None (and say why)."""
        path = self.checkpoint_dir / "state.pt"
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            self.ctx.log(f"[yellow]checkpoint in {self.checkpoint_dir} was written by a run with other "
                         f"settings; starting from scratch[/yellow]")
            return None
        if state["step"] > self.cfg.max_steps:
            from compresso.strategy import StrategyError

            raise StrategyError(f"the checkpoint in {self.checkpoint_dir} is at step {state['step']}, past this run's "
                                f"max_steps {self.cfg.max_steps}; raise max_steps to at least {state['step']} or delete "
                                f"the folder to start over")
        if state.get("world_size") != self.world:
            from compresso.strategy import StrategyError

            raise StrategyError(f"the checkpoint in {self.checkpoint_dir} was written with {state.get('world_size')} "
                                f"data-parallel processes, this run has {self.world}; resume with the same "
                                f"number or delete the folder to start over")
        return state

    def _load_checkpoint(self, student, optimizer, scheduler) -> dict:
        from safetensors.torch import load_model

        state = self.peek_checkpoint()
        if state is None:
            return {}
        load_model(student, str(self.checkpoint_dir / "student.safetensors"), device=str(self.device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        mine = state["ranks"][self.rank]
        torch.set_rng_state(mine["cpu_rng"])
        if self.device.type == "cuda" and "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        self.extra_state = state.get("extra", {})
        self.ctx.log(f"resuming from the checkpoint at step {state['step']} ({self.checkpoint_dir})")
        return {**state, "position": mine["position"]}


__all__ = ["Trainer", "TrainConfig", "TrainResult", "fingerprint", "warmup_steps"]
