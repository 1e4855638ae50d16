"""Held-out metrics: masked-LM accuracy of student and teachers, and top-1 agreement.

All models see the same held-out batches with the same masks. A teacher's accuracy is measured
on its own tokenization (every sub-token of the masked words, [UNK] targets excluded). The
student agrees with a teacher at a supervised position when its top-1 token, mapped into the
teacher's vocabulary, is the teacher's top-1 token (identical ids on the fast path).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from compresso.strategies.distill.data import Batch
from compresso.strategies.distill.losses import TeacherLink
from compresso.strategies.distill.modeling import MaskedLM


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.inference_mode()
def teacher_predictions(links: list[TeacherLink], batches: list[Batch], device: torch.device,
                        unk_ids: dict[str, int]) -> tuple[dict, list[list[torch.Tensor]]]:
    """Each teacher's held-out accuracy, and its top-1 ids at supervised positions per batch."""
    stats = {link.name: {"correct": 0, "total": 0, "supervised": 0, "student_masked": 0} for link in links}
    tops: list[list[torch.Tensor]] = [[] for _ in links]
    for cpu_batch in batches:
        batch = cpu_batch.to(device)
        for i, link in enumerate(links):
            if link.cross:
                vb = batch.views[link.view - 1]
                ids, att, pos, labels = vb.ids, vb.attention, vb.masked_pos, vb.labels
                sup_pos = vb.sup_pos
            else:
                ids, att, pos, labels = batch.ids, batch.attention, batch.masked_pos, batch.labels
                sup_pos = batch.masked_pos
            with _autocast(device):
                last, _, full = link.lm.encode(ids, att)
                pred = link.lm.logits_at(last, pos, full).argmax(-1)
                sup_top = link.lm.logits_at(last, sup_pos, full).argmax(-1) if link.cross else pred
            valid = labels != unk_ids.get(link.name, -1)
            s = stats[link.name]
            s["correct"] += int(((pred == labels) & valid).sum())
            s["total"] += int(valid.sum())
            s["supervised"] += int(sup_pos.numel())
            s["student_masked"] += batch.n_masked
            tops[i].append(sup_top.cpu())
    out = {}
    for name, s in stats.items():
        out[name] = {"mlm_accuracy": s["correct"] / max(s["total"], 1),
                     "masked_tokens": s["total"],
                     "supervised_fraction": s["supervised"] / max(s["student_masked"], 1)}
    return out, tops


@torch.inference_mode()
def student_metrics(student: MaskedLM, links: list[TeacherLink], batches: list[Batch], device: torch.device,
                    teacher_tops: list[list[torch.Tensor]]) -> dict:
    """Student's held-out MLM accuracy and agreement with every teacher."""
    was_training = student.model.training
    student.model.eval()
    correct = total = 0
    agree = {link.name: [0, 0] for link in links}
    try:
        for b, cpu_batch in enumerate(batches):
            batch = cpu_batch.to(device)
            with _autocast(device):
                last, _, full = student.encode(batch.ids, batch.attention)
                pred = student.logits_at(last, batch.masked_pos, full).argmax(-1)
            correct += int((pred == batch.labels).sum())
            total += batch.n_masked
            for i, link in enumerate(links):
                top = teacher_tops[i][b].to(device)
                if link.cross:
                    mine = link.student_to_teacher[pred.index_select(0, batch.views[link.view - 1].sup_student)]
                else:
                    mine = pred
                agree[link.name][0] += int((mine == top).sum())
                agree[link.name][1] += int(top.numel())
    finally:
        student.model.train(was_training)
    return {"mlm_accuracy": correct / max(total, 1), "masked_tokens": total,
            "agreement": {name: a / max(n, 1) for name, (a, n) in agree.items()}}
