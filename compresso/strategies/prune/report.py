"""``prune_report.json`` / ``.md`` / ``prune_layers.png`` in the stage folder."""

from __future__ import annotations

from pathlib import Path

from compresso.strategy import write_json


def _write_report(stage_dir: Path, report: dict) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(stage_dir / "prune_report.json", report)
    lines = [
        f"# Pruning report ({report['architecture']})", "",
        f"- importance: {report['importance']}, scope: {report['scope']}, steps: {report['steps']}",
        f"- parameters: {report['parameters_before']:,} → {report['parameters_after']:,} "
        f"({100 * (1 - report['parameters_after'] / report['parameters_before']):.1f}% removed)",
        f"- saved as: `{report['format']}`", "",
        "| layer | heads | FFN | heads removed (original index) |", "|---:|---:|---:|---|",
    ]
    for row in report["layers"]:
        lines.append(f"| {row['layer']} | {row['heads_before']} → {row['heads_after']} | "
                     f"{row['ffn_before']} → {row['ffn_after']} | {row['heads_removed'] or '-'} |")
    (stage_dir / "prune_report.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in report["layers"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "heads", "attention heads"), (axes[1], "ffn", "FFN channels")):
        ax.bar(layers, [r[f"{key}_before"] for r in report["layers"]], color="#dddddd", label="before")
        ax.bar(layers, [r[f"{key}_after"] for r in report["layers"]], color="#3b6ea8", label="after")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(stage_dir / "prune_layers.png", dpi=110)
    plt.close(fig)
