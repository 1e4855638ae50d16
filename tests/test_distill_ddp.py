"""distill under data parallelism: two CPU processes on gloo, as torchrun would start them."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compresso.models import load_bundle
from compresso.strategies.distill import DistillStrategy
from compresso.strategies.distill import trainer as trainer_module
from tests.test_distill import cased_tokenizer, make_ctx, small_params, tiny_mlm, uncased_tokenizer, write_corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, paths: dict) -> None:
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    root = Path(root)
    teachers = {"cased": paths["cased"], "uncased": paths["uncased"]}
    params = DistillStrategy.Params(**small_params(Path(paths["corpus"]), max_steps=5, checkpoint_every=2))

    # An uninterrupted run.
    out = DistillStrategy(params).apply(load_bundle(paths["cased"]), make_ctx(root, teachers, rank, world, "a"))
    torch.save(out.model.state_dict(), root / f"a{rank}.pt")

    # The same run with chunked head losses: gradients reach DDP through ChunkedHeadLoss's backward.
    chunked = DistillStrategy.Params(**small_params(Path(paths["corpus"]), max_steps=5, checkpoint_every=2,
                                                    loss_chunk_rows=7))
    out = DistillStrategy(chunked).apply(load_bundle(paths["cased"]), make_ctx(root, teachers, rank, world, "c"))
    torch.save(out.model.state_dict(), root / f"c{rank}.pt")

    # The same run killed after step 3 (last checkpoint: step 2), then started again.
    def die(self, step):
        if step == 3:
            raise KeyboardInterrupt("killed")

    original = trainer_module.Trainer.on_step_end
    trainer_module.Trainer.on_step_end = die
    try:
        DistillStrategy(params).apply(load_bundle(paths["cased"]), make_ctx(root, teachers, rank, world, "b"))
    except KeyboardInterrupt:
        pass
    finally:
        trainer_module.Trainer.on_step_end = original
    out = DistillStrategy(params).apply(load_bundle(paths["cased"]), make_ctx(root, teachers, rank, world, "b"))
    torch.save(out.model.state_dict(), root / f"b{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_processes_train_identical_weights_and_resume(tmp_path):
    paths = {"cased": str(tiny_mlm(cased_tokenizer(), tmp_path / "cased", seed=1)),
             "uncased": str(tiny_mlm(uncased_tokenizer(), tmp_path / "uncased", seed=2)),
             "corpus": str(write_corpus(tmp_path / "corpus.txt"))}
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), paths), nprocs=2, join=True)

    a0, a1 = torch.load(tmp_path / "a0.pt"), torch.load(tmp_path / "a1.pt")
    b0, b1 = torch.load(tmp_path / "b0.pt"), torch.load(tmp_path / "b1.pt")
    c0, c1 = torch.load(tmp_path / "c0.pt"), torch.load(tmp_path / "c1.pt")
    initial = load_bundle(paths["cased"]).model.state_dict()
    changed = False
    for k in a0:
        assert torch.equal(a0[k], a1[k]), f"ranks disagree on {k}"
        assert torch.equal(b0[k], b1[k]), f"ranks disagree on {k} after resuming"
        assert torch.equal(a0[k], b0[k]), f"resumed run differs from the uninterrupted one on {k}"
        assert torch.equal(c0[k], c1[k]), f"ranks disagree on {k} with chunked losses"
        torch.testing.assert_close(c0[k], a0[k], rtol=1e-4, atol=1e-5, msg=f"chunked losses trained {k} otherwise")
        changed |= k in initial and not torch.equal(a0[k], initial[k])
    assert changed  # it trained

    report = json.loads((tmp_path / "b" / "stage" / "distill.json").read_text())
    assert report["training"]["world_size"] == 2 and report["training"]["resumed_from_step"] == 2
    first = json.loads((tmp_path / "a" / "stage" / "distill.json").read_text())
    assert [h["loss"] for h in report["loss_curve"]] == [h["loss"] for h in first["loss_curve"]]
    assert first["teachers"]["uncased"]["supervised_fraction"] > 0
