"""What a distillation stage leaves behind: ``distill.json``, ``loss_curve.png``, stage metrics."""

from __future__ import annotations

from compresso.strategy import RunContext, write_json


def _round(x, n=5):
    return None if x is None else round(float(x), n)


def write_report(ctx: RunContext, params, *, layers, input_layers, student, teachers, result, views, heldout_docs,
                 teachers_eval, before, after, links, calibration=None, alignment=None, cosine=None) -> dict:
    final = result.history[-1] if result.history else {}
    n_params = sum(p.numel() for p in student.parameters())
    teacher_section = {}
    for link in links:
        info = dict(teachers[link.name])
        info["loss_share"] = _round(result.loss_share.get(link.name))
        info["supervised_fraction"] = _round(result.supervised_fraction.get(link.name))
        if link.name in teachers_eval:
            info["heldout"] = {**teachers_eval[link.name],
                               "student_agreement_before": (before or {}).get("agreement", {}).get(link.name),
                               "student_agreement": (after or {}).get("agreement", {}).get(link.name)}
            if link.cross:
                info["heldout"]["student_out_of_map_mass"] = (after or {}).get("out_of_map_mass", {}).get(link.name)
        if cosine and link.name in cosine:
            info.setdefault("heldout", {})["cosine"] = cosine[link.name]
        teacher_section[link.name] = info
    report = {
        "config": params.model_dump(mode="json"),
        "student": {"layers_kept": layers, "num_layers": len(layers), "input_layers": input_layers,
                    "parameters": n_params, "hidden_size": int(student.config.hidden_size),
                    "class": type(student).__name__},
        "teachers": teacher_section,
        "tokenizations": [{"view": i, "name": v.name, "max_len": v.max_len, "vocab_size": v.vocab_size}
                          for i, v in enumerate(views)],
        "training": {"steps": result.steps, "resumed_from_step": result.resumed_from, "tokens": result.tokens,
                     "seconds": round(result.seconds, 2),
                     "tokens_per_second": round(result.tokens / max(result.seconds, 1e-9), 1),
                     # waiting for the input pipeline (this process's run; a resumed run counts its own part)
                     "input_wait_seconds": round(result.input_wait_seconds, 2),
                     "world_size": ctx.world_size, "device": str(ctx.device),
                     "final_losses": {k: _round(final.get(k)) for k in ("loss", "ce", "mlm", "cos", "mse")}},
        "heldout": {"documents": heldout_docs, "student_before": before, "student_after": after,
                    "teachers": teachers_eval},
        # Entropy weighting: the tau used and how it was calibrated (None: static or a given tau).
        "entropy_calibration": calibration,
        # What the word aligner dropped, counted on the held-out slice (None: one tokenizer only).
        "alignment": alignment,
        "loss_curve": result.history,
    }
    write_json(ctx.stage_dir / "distill.json", report)
    (ctx.stage_dir / "distill.md").write_text(markdown(report))
    plot_losses(result.history, ctx.stage_dir / "loss_curve.png", title=f"distill: {len(layers)}-layer student "
                f"from {', '.join(teachers)}")

    m = ctx.metrics
    m.update({"steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 2),
              "tokens_per_second": report["training"]["tokens_per_second"], "student_layers": len(layers),
              "student_parameters": n_params})
    for k in ("loss", "ce", "mlm", "cos", "mse"):
        if final.get(k) is not None:
            m[f"final_{k}"] = _round(final[k])
    if after:
        m["heldout_mlm_accuracy"] = _round(after["mlm_accuracy"])
        m["heldout_mlm_accuracy_before"] = _round(before["mlm_accuracy"])
    for name, info in teacher_section.items():
        m[f"loss_share_{name}"] = info["loss_share"]
        m[f"supervised_fraction_{name}"] = info["supervised_fraction"]
        m[f"vocab_coverage_{name}"] = _round(info["vocab"]["teacher_vocab_covered"])
        if "heldout" in info:
            m[f"teacher_mlm_accuracy_{name}"] = _round(info["heldout"]["mlm_accuracy"])
            m[f"agreement_{name}"] = _round(info["heldout"]["student_agreement"])
            m[f"agreement_before_{name}"] = _round(info["heldout"]["student_agreement_before"])
    return report


def plot_losses(history: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history]
    left.plot(steps, [h["loss"] for h in history], color="black")
    left.set(title="total loss", xlabel="optimizer step", ylabel="loss")
    for key, label in (("ce", "soft targets (KL)"), ("mlm", "masked-LM CE"), ("cos", "hidden cosine"),
                       ("mse", "hidden MSE")):
        values = [h.get(key) for h in history]
        if any(v for v in values):
            right.plot(steps, values, label=label)
    right.set(title="components (before alpha weights)", xlabel="optimizer step")
    right.set_yscale("log")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def markdown(report: dict) -> str:
    """A human-readable summary of ``distill.json``."""
    st, tr, held = report["student"], report["training"], report["heldout"]
    lines = [f"# Distillation: {st['num_layers']}-layer student ({st['parameters'] / 1e6:.1f} M parameters)", "",
             f"Layers kept from the {st['input_layers']}-layer input: {st['layers_kept']}. "
             f"{tr['steps']} steps, {tr['tokens']:,} tokens in {tr['seconds']:.0f} s "
             f"({tr['tokens_per_second']:,.0f} tokens/s, {tr['world_size']} process(es), {tr['device']}; "
             f"{tr.get('input_wait_seconds', 0):.1f} s waiting for input)"
             + (f", resumed from step {tr['resumed_from_step']}" if tr["resumed_from_step"] else "") + ".", "",
             "| teacher | weight | tokenizer | vocabulary covered | supervised | loss share | held-out MLM acc. "
             "| agreement before → after |", "|---|---|---|---|---|---|---|---|"]
    for name, t in report["teachers"].items():
        h = t.get("heldout", {})
        lines.append(f"| {name} | {t['weight']:.2f} | {'same as student' if t['same_tokenizer'] else 'other'} | "
                     f"{_pct(t['vocab']['teacher_vocab_covered'])} | {_pct(t['supervised_fraction'])} | "
                     f"{_pct(t['loss_share'])} | {_pct(h.get('mlm_accuracy'))} | "
                     f"{_pct(h.get('student_agreement_before'))} → {_pct(h.get('student_agreement'))} |")
    if held.get("student_after"):
        lines += ["", f"Student held-out MLM accuracy ({held['documents']} documents, whole-word masking): "
                      f"{_pct(held['student_before']['mlm_accuracy'])} before distillation → "
                      f"{_pct(held['student_after']['mlm_accuracy'])} after."]
    for name, t in report["teachers"].items():
        h = t.get("heldout", {})
        extra = []
        if h.get("cosine"):
            extra.append(f"held-out cosine loss {h['cosine']['student_cos_loss']:.4f} against a constant-vector "
                         f"baseline of {h['cosine']['constant_vector_baseline']:.4f}")
        if h.get("out_of_map_mass") is not None:
            extra.append(f"probability outside the shared vocabulary: teacher {_pct(h['out_of_map_mass'])}, "
                         f"student {_pct(h.get('student_out_of_map_mass'))}")
        if extra:
            lines += ["", f"{name}: " + "; ".join(extra) + "."]
    cal = report.get("entropy_calibration")
    if cal:
        lines += ["", f"Entropy weighting: tau = {cal['entropy_temperature']:.3f} nats, calibrated on "
                      f"{cal['positions']:,} held-out positions."]
    align = report.get("alignment")
    if align:
        lines += ["", f"Word alignment (held-out slice): {align['words']:,} words, {align['words_dropped']:,} dropped, "
                      f"{align['words_never_masked']:,} never masked (student [UNK])."]
    final = {k: v for k, v in tr["final_losses"].items()
             if v is not None and not (k == "mse" and not report["config"]["alpha_hidden_mse"])}
    lines += ["", "Final losses (last logging window): " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()) + ".",
              "", "![loss curve](loss_curve.png)", ""]
    return "\n".join(lines)
