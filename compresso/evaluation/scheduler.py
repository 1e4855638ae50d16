"""Run independent fine-tuning jobs at once: worker processes, one job each at a time.

Why processes and not CUDA streams: a ~7M-parameter encoder fine-tuned at batch 16–32 keeps an
H200 busy for microseconds per kernel, so one job is bound by Python launching kernels (the issue
measured 13% SM utilisation for one process). Streams inside one process share one interpreter
and its GIL, so they cannot launch faster; separate processes each launch on their own core and
the GPU interleaves their kernels. On CPU, one job per core pair (two intra-op threads each).

Each worker process builds its state once (``init``: task data, caches), then takes jobs from a
queue in the order given (longest first is the caller's choice) and sends back, through a pipe of
its own, ``("start"|"progress"|"done"|"failed", job index, payload)``. A job that raises is reported as
failed and the worker goes on; a worker that dies (segfault, killed for memory) fails its current
job and is replaced. ``workers=1`` runs the jobs in this process, one by one, with the same
thread count, so a job's result does not depend on how many ran beside it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterator

import torch

GPU_BYTES_PER_JOB = 3 * 2 ** 30
"""Budget per GPU worker: its CUDA context (~0.5 GiB) plus a small encoder's training at batch 32
× 512 tokens in bf16 (< 1 GiB measured by torch.cuda.max_memory_allocated for 12 layers, hidden 256),
with room for a base-size model's shorter tasks."""


@dataclass
class JobEvent:
    kind: str  # "start", "progress", "done" or "failed"
    index: int
    payload: Any = None


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(device: torch.device, workers: int) -> int:
    """Intra-op threads of one job: on CPU its share of the cores, at most two (a core pair: small
    encoders gain little from more); beside a GPU one (the job only launches kernels)."""
    return 1 if device.type == "cuda" else max(1, min(2, cpu_cores() // max(1, workers)))


def default_workers(device: torch.device, n_jobs: int) -> int:
    """Workers for ``n_jobs``: on GPU as many as free memory and CPU cores allow (one core left for
    this process and one for the system), on CPU one per core pair."""
    cores = cpu_cores()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        by_memory = max(1, int(free // GPU_BYTES_PER_JOB))
        by_cores = max(1, cores - 2)
        wanted = min(by_memory, by_cores)
    else:
        wanted = max(1, cores // 2)
    return max(1, min(wanted, n_jobs))


def _worker(init: Callable, init_args: tuple, job_fn: Callable, threads: int, jobs, conn) -> None:
    torch.set_num_threads(threads)
    state = init(*init_args)
    while True:
        item = jobs.get()
        if item is None:
            conn.close()
            return
        index, job = item
        # a pipe of its own, written synchronously: a worker that dies mid-message can only cut
        # its own pipe (the parent reads EOF), never block the others as a shared queue would
        conn.send(JobEvent("start", index, os.getpid()))
        try:
            result = job_fn(state, job, lambda text, i=index: conn.send(JobEvent("progress", i, text)))
        except Exception as exc:  # the job fails, the worker goes on
            conn.send(JobEvent("failed", index, {"error": f"{type(exc).__name__}: {exc}",
                                                 "traceback": traceback.format_exc(limit=8)}))
        else:
            conn.send(JobEvent("done", index, result))


def worker_start_method(device: torch.device) -> str:
    """How worker processes start: forked on a CPU-only run under Linux, so each worker inherits the
    imported torch/transformers and the task data instead of importing them again (seconds per
    worker: more than a small job takes); spawned wherever CUDA may be used, since CUDA cannot be
    used in a forked child once the parent has touched it."""
    if device.type == "cpu" and "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def run_jobs(jobs: list, init: Callable, init_args: tuple, job_fn: Callable, workers: int, threads: int,
             on_progress: Callable[[int, Any], None] | None = None, start_method: str = "spawn"
             ) -> Iterator[JobEvent]:
    """Run ``job_fn(state, job, report)`` for every job, ``workers`` at a time; yield the "start",
    "done" and "failed" events as they come (every job ends with exactly one "done" or "failed");
    ``report(payload)`` calls reach ``on_progress(job index, payload)``. ``init``, ``job_fn`` and
    the jobs must be picklable (top-level functions, plain data). ``start_method``: see
    ``worker_start_method``."""
    on_progress = on_progress or (lambda index, payload: None)
    if workers <= 1:
        yield from _run_here(jobs, init, init_args, job_fn, threads, on_progress)
        return
    ctx = mp.get_context(start_method)
    job_queue = ctx.Queue()
    for item in enumerate(jobs):
        job_queue.put(item)
    workers = min(workers, len(jobs))
    for _ in range(workers):
        job_queue.put(None)

    def start() -> tuple:
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(init, init_args, job_fn, threads, job_queue, writer), daemon=True)
        p.start()
        writer.close()  # only the worker holds the write end, so its death reads as EOF here
        return p, reader

    slots = {}  # reader -> [process, index of its running job or None]
    for _ in range(workers):
        p, reader = start()
        slots[reader] = [p, None]
    finished: set[int] = set()
    try:
        while len(finished) < len(jobs):
            if not slots:
                raise RuntimeError("every evaluation worker process has exited with jobs left to run")
            for reader in wait(list(slots), timeout=1.0):
                p, running = slots[reader]
                try:
                    event = reader.recv()
                except (EOFError, OSError):  # the worker is gone
                    del slots[reader]
                    reader.close()
                    p.join(timeout=10)
                    if running is not None and running not in finished:
                        finished.add(running)
                        yield JobEvent("failed", running, {"error": f"worker process died (exit code "
                                                                    f"{p.exitcode})", "traceback": ""})
                        if len(finished) < len(jobs):
                            q, new_reader = start()
                            slots[new_reader] = [q, None]
                    elif p.exitcode not in (0, None):
                        raise RuntimeError(f"an evaluation worker process exited with code {p.exitcode} "
                                           f"outside any job (see the messages above)") from None
                    continue
                if event.kind == "progress":
                    on_progress(event.index, event.payload)
                    continue
                if event.kind == "start":
                    slots[reader][1] = event.index
                elif event.kind in ("done", "failed"):
                    slots[reader][1] = None
                    if event.index in finished:
                        continue
                    finished.add(event.index)
                yield event
    finally:
        for p, _ in slots.values():
            if p.is_alive():
                p.terminate()
        for p, _ in slots.values():
            p.join(timeout=10)
        for reader in slots:
            reader.close()
        job_queue.close()


def _run_here(jobs: list, init: Callable, init_args: tuple, job_fn: Callable, threads: int,
              on_progress: Callable[[int, str], None]) -> Iterator[JobEvent]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        state = init(*init_args)
        for index, job in enumerate(jobs):
            yield JobEvent("start", index, os.getpid())
            try:
                result = job_fn(state, job, lambda text, i=index: on_progress(i, text))
            except (KeyboardInterrupt, torch.cuda.OutOfMemoryError):
                raise
            except Exception as exc:
                yield JobEvent("failed", index, {"error": f"{type(exc).__name__}: {exc}",
                                                 "traceback": traceback.format_exc(limit=8)})
            else:
                yield JobEvent("done", index, result)
    finally:
        torch.set_num_threads(before)


def longest_first(costs: list[float], tie_breaks: list | None = None) -> list[int]:
    """Job order for a pool: longest first (LPT), so the last jobs to finish are short ones; equal
    costs in ``tie_breaks`` order, then in the given order."""
    ties = tie_breaks or [0] * len(costs)
    return sorted(range(len(costs)), key=lambda i: (-costs[i], ties[i], i))


def estimated_cost(steps: float, tokens_per_sequence: float, encoder_calls: int = 1, layers: int = 1) -> float:
    """Relative duration of a fine-tuning job, for ordering a pool longest first.

    A small encoder's training step is bound by kernel launches on a GPU, so its cost is about
    fixed per encoder call and layer, plus a part that grows with the tokens of a sequence (long
    documents, e.g. MOROCO's, fill the GPU for real). Measured on an H200 with 14 jobs at once
    (docs/results/previous_3seeds_cross_encoder): ~0.075 s per step of a 12-layer teacher for
    every task but DI, and DI's 512-token steps about 2.5 times that."""
    return steps * layers * (encoder_calls + tokens_per_sequence / 256)
