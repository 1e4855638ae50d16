"""Held-out metrics: masked-LM accuracy of student and teachers, and top-1 agreement.

All models see the same held-out batches with the same masks. A teacher's accuracy is measured
on its own tokenization (every sub-token of the masked words, [UNK] targets excluded). The
student agrees with a teacher at a supervised position when its top-1 token, mapped into the
teacher's vocabulary, is the teacher's top-1 token (identical ids on the fast path).

Also here: the teacher's probability outside the shared vocabulary (``out_of_map_mass``), the
calibration of the entropy weighting's tau, and the cosine loss against its constant-vector
baseline (what a student outputting one fixed vector everywhere would score).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from compresso.strategies.distill.data import Batch
from compresso.strategies.distill.losses import TeacherLink, pool_words, shared_entropy
from compresso.strategies.distill.modeling import MaskedLM, StudentModule


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.inference_mode()
def teacher_predictions(links: list[TeacherLink], batches: list[Batch], device: torch.device,
                        unk_ids: dict[str, int]) -> tuple[dict, list[list[torch.Tensor]]]:
    """Each teacher's held-out accuracy, and its top-1 ids at supervised positions per batch."""
    stats = {link.name: {"correct": 0, "total": 0, "supervised": 0, "student_masked": 0, "out_mass": 0.0}
             for link in links}
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
                sup_logits = link.lm.logits_at(last, sup_pos, full).float() if link.cross else None
                sup_top = sup_logits.argmax(-1) if link.cross else pred
            if link.cross and sup_logits.shape[0]:
                probs = sup_logits.softmax(-1)
                stats[link.name]["out_mass"] += float(
                    (probs * link.unmapped("teacher", probs.shape[1], probs.device)).sum())
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
    for link in links:
        if link.cross:  # mean probability (T = 1) the teacher puts outside the shared vocabulary
            out[link.name]["out_of_map_mass"] = stats[link.name]["out_mass"] / max(stats[link.name]["supervised"], 1)
    return out, tops


@torch.inference_mode()
def calibrate_entropy_temperature(links: list[TeacherLink], batches: list[Batch], device: torch.device) -> dict:
    """tau for the entropy weighting: the mean gap (max - min) between the teachers' shared-space
    entropies at masked positions two or more of them supervise, so a typical gap weighs e:1."""
    gap_sum, positions = 0.0, 0
    mean_h = {link.name: [0.0, 0] for link in links}
    for cpu_batch in batches:
        batch = cpu_batch.to(device)
        n = batch.n_masked
        hi = torch.full((n,), float("-inf"), device=device)
        lo = torch.full((n,), float("inf"), device=device)
        count = torch.zeros(n, device=device)
        for link in links:
            if link.cross:
                vb = batch.views[link.view - 1]
                ids, att, pos, rows = vb.ids, vb.attention, vb.sup_pos, vb.sup_student
            else:
                ids, att, pos = batch.ids, batch.attention, batch.masked_pos
                rows = torch.arange(n, device=device)
            with _autocast(device):
                last, _, full = link.lm.encode(ids, att)
                h = shared_entropy(link, link.lm.logits_at(last, pos, full))
            hi.scatter_reduce_(0, rows, h, "amax")
            lo.scatter_reduce_(0, rows, h, "amin")
            count.index_add_(0, rows, torch.ones_like(h))
            mean_h[link.name][0] += float(h.sum())
            mean_h[link.name][1] += int(h.numel())
        both = count >= 2
        gap_sum += float((hi - lo)[both].sum())
        positions += int(both.sum())
    tau = gap_sum / positions if positions else 1.0
    return {"entropy_temperature": tau, "positions": positions,
            "mean_entropy": {k: s / max(c, 1) for k, (s, c) in mean_h.items()}}


@torch.inference_mode()
def cosine_check(student: StudentModule, links: list[TeacherLink], batches: list[Batch],
                 device: torch.device) -> dict:
    """Per teacher: the student's held-out cosine loss (through its projection, as trained) and the
    constant-vector baseline 1 - |sum of unit teacher vectors| / N -- the loss of the best single
    vector output everywhere. A trained loss near the baseline means the cosine term taught little."""
    out = {}
    was_training = student.training
    student.eval()
    try:
        for link in links:
            unit_sum, n, loss_sum = None, 0, 0.0
            for cpu_batch in batches:
                batch = cpu_batch.to(device)
                if link.cross and (batch.word_pos is None or batch.n_words == 0):
                    break
                with _autocast(device):
                    s_last, _, _ = student.lm.encode(batch.ids, batch.attention)
                    if link.cross:
                        vb = batch.views[link.view - 1]
                        t_last, _, _ = link.lm.encode(vb.ids, vb.attention)
                        t = pool_words(t_last, vb.word_pos, vb.word_index, batch.n_words)
                        s = pool_words(s_last, batch.word_pos, batch.word_index, batch.n_words)
                    else:
                        t_last, _, _ = link.lm.encode(batch.ids, batch.attention)
                        t = t_last.reshape(-1, t_last.shape[-1]).index_select(0, batch.token_pos).float()
                        s = s_last.reshape(-1, s_last.shape[-1]).index_select(0, batch.token_pos).float()
                if link.cos_projection is not None:
                    s = torch.nn.functional.linear(s, student.projections[link.cos_projection].weight.float())
                units = torch.nn.functional.normalize(t.float(), dim=-1)
                unit_sum = units.sum(0) if unit_sum is None else unit_sum + units.sum(0)
                loss_sum += float((1 - torch.nn.functional.cosine_similarity(s.float(), t.float(), dim=-1)).sum())
                n += t.shape[0]
            if n:
                out[link.name] = {"student_cos_loss": loss_sum / n,
                                  "constant_vector_baseline": 1 - float(unit_sum.norm()) / n, "vectors": n}
    finally:
        student.train(was_training)
    return out


@torch.inference_mode()
def student_metrics(student: MaskedLM, links: list[TeacherLink], batches: list[Batch], device: torch.device,
                    teacher_tops: list[list[torch.Tensor]]) -> dict:
    """Student's held-out MLM accuracy and agreement with every teacher."""
    was_training = student.model.training
    student.model.eval()
    correct = total = 0
    agree = {link.name: [0, 0] for link in links}
    out_mass = {link.name: 0.0 for link in links if link.cross}
    try:
        for b, cpu_batch in enumerate(batches):
            batch = cpu_batch.to(device)
            with _autocast(device):
                last, _, full = student.encode(batch.ids, batch.attention)
                masked_logits = student.logits_at(last, batch.masked_pos, full).float()
            pred = masked_logits.argmax(-1)
            correct += int((pred == batch.labels).sum())
            total += batch.n_masked
            for i, link in enumerate(links):
                top = teacher_tops[i][b].to(device)
                if link.cross:
                    rows = batch.views[link.view - 1].sup_student
                    mine = link.student_to_teacher[pred.index_select(0, rows)]
                    probs = masked_logits.index_select(0, rows).softmax(-1)
                    out_mass[link.name] += float((probs * link.unmapped("student", probs.shape[1], device)).sum())
                else:
                    mine = pred
                agree[link.name][0] += int((mine == top).sum())
                agree[link.name][1] += int(top.numel())
    finally:
        student.model.train(was_training)
    return {"mlm_accuracy": correct / max(total, 1), "masked_tokens": total,
            "agreement": {name: a / max(n, 1) for name, (a, n) in agree.items()},
            # Mean probability the student puts on its pieces outside each foreign teacher's vocabulary.
            "out_of_map_mass": {name: m / max(agree[name][1], 1) for name, m in out_mass.items()}}
