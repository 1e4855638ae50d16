"""Run independent fine-tuning jobs at once: worker processes, one job each at a time.

Why processes and not CUDA streams: a ~7M-parameter encoder fine-tuned at batch 16–32 keeps an
H200 busy for microseconds per kernel, so one job is bound by Python launching kernels (the issue
measured 13% SM utilisation for one process). Streams inside one process share one interpreter
and its GIL, so they cannot launch faster; separate processes each launch on their own core and
the GPU interleaves their kernels. On CPU, one job per core pair (two intra-op threads each).

Each worker process builds its state once (``init``: task data, caches), then takes jobs from a
queue in the order given (longest first is the caller's choice) and sends back
``("start"|"progress"|"done"|"failed", job index, payload)``. A job that raises is reported as
failed and the worker goes on; a worker that dies (segfault, killed for memory) fails its current
job and is replaced. ``workers=1`` runs the jobs in this process, one by one, with the same
thread count, so a job's result does not depend on how many ran beside it.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import traceback
from dataclasses import dataclass
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


def _worker(init: Callable, init_args: tuple, job_fn: Callable, threads: int, jobs: mp.Queue,
            events: mp.Queue, current, slot: int) -> None:
    torch.set_num_threads(threads)
    state = init(*init_args)
    while True:
        item = jobs.get()
        if item is None:
            return
        index, job = item
        current[slot] = index  # shared memory, written at once: the parent knows the job if we die
        events.put(JobEvent("start", index, os.getpid()))
        try:
            result = job_fn(state, job, lambda text, i=index: events.put(JobEvent("progress", i, text)))
        except Exception as exc:  # the job fails, the worker goes on
            events.put(JobEvent("failed", index, {"error": f"{type(exc).__name__}: {exc}",
                                                  "traceback": traceback.format_exc(limit=8)}))
        else:
            events.put(JobEvent("done", index, result))


def run_jobs(jobs: list, init: Callable, init_args: tuple, job_fn: Callable, workers: int, threads: int,
             on_progress: Callable[[int, str], None] | None = None) -> Iterator[JobEvent]:
    """Run ``job_fn(state, job, report)`` for every job, ``workers`` at a time; yield the "start",
    "done" and "failed" events as they come (every job ends with exactly one "done" or "failed");
    ``report(text)`` calls reach ``on_progress(job index, text)``. ``init``, ``job_fn`` and the jobs
    must be picklable (top-level functions, plain data)."""
    on_progress = on_progress or (lambda index, text: None)
    if workers <= 1:
        yield from _run_here(jobs, init, init_args, job_fn, threads, on_progress)
        return
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    job_queue, events = ctx.Queue(), ctx.Queue()
    for item in enumerate(jobs):
        job_queue.put(item)
    workers = min(workers, len(jobs))
    for _ in range(workers):
        job_queue.put(None)

    current = ctx.Array("i", [-1] * workers, lock=False)  # the job each worker slot took last

    def start(slot: int):
        p = ctx.Process(target=_worker, args=(init, init_args, job_fn, threads, job_queue, events, current, slot),
                        daemon=True)
        p.start()
        return p

    procs = [start(slot) for slot in range(workers)]
    finished: set[int] = set()
    try:
        while len(finished) < len(jobs):
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:  # a quiet second: anything a dead worker sent has arrived by now
                for slot, p in enumerate(procs):
                    if p.is_alive() or p.exitcode == 0:
                        continue
                    index = current[slot]
                    if index < 0 or index in finished:  # died while starting up or between jobs
                        raise RuntimeError(f"an evaluation worker process exited with code {p.exitcode} "
                                           f"outside any job (see the messages above)")
                    finished.add(index)
                    yield JobEvent("failed", index, {"error": f"worker process died (exit code {p.exitcode})",
                                                     "traceback": ""})
                    current[slot] = -1
                    procs[slot] = start(slot)
                continue
            if event.kind == "progress":
                on_progress(event.index, event.payload)
                continue
            if event.kind in ("done", "failed"):
                if event.index in finished:
                    continue
                finished.add(event.index)
            yield event
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
        job_queue.close()
        events.close()


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


def longest_first(costs: list[float]) -> list[int]:
    """Job order for a pool: longest first, so the last jobs to finish are short ones."""
    return sorted(range(len(costs)), key=lambda i: (-costs[i], i))


def estimated_cost(n_train: int, epochs: int, max_length: int) -> float:
    return n_train * epochs * math.sqrt(max_length)
