"""Count the numeric claims in the user docs and say where each one's evidence is.

A heuristic for reviewing the docs, not a test. It reads README.md and docs/*.md (or the files
given), splits each into units (a paragraph, a list item, a table, a heading; fenced code is
skipped) and finds the numeric claims in each: a number with a decimal point, a percentage, a
ratio (``×``), a number with a unit (``ms``, ``s``, ``min``, ``GiB``, ``tok/s``, ...) or with
thousands separators (``74,287``). Numbers in inline code, in link targets, in section numbers,
dates, versions, plain integers ("7 tasks", "12 layers") and the rows of reference tables (first
cell a `parameter`: defaults, not claims) are not counted. Settings quoted in prose ("weight decay
0.01") still are: the counts are an upper bound. Each unit is then classified:

- ``generated``: inside a ``<!-- BEGIN GENERATED: ... -->`` block (rendered from JSON by a script);
- ``links JSON``: the unit links or names a ``.json`` file (for a table: the table, the paragraph
  just before it, or the one just after it does);
- ``links results``: it links another file or folder under ``docs/results/`` or ``benchmarks/``
  (a report.md, a log, a run folder) but no JSON;
- ``neither``: no evidence next to it.

Prints the counts per file and in all, then every ``neither`` unit with its claims::

    python benchmarks/doc_claims.py                 # README.md and docs/*.md
    python benchmarks/doc_claims.py docs/quantization.md --show "links results"
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("generated", "links JSON", "links results", "neither")

UNIT = r"(?:%|×|x\b|\s?(?:ms|µs|us|s|sec|min|h|GiB|GB|MiB|MB|KiB|kB|TB|k|M|B|tok/s|seq/s|it/s|ex/s|tokens/s|W|TFLOPS|" \
       r"points?|pp|nats|bits|°C)(?![\w/]))"
NUMBER = r"[−+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
CLAIM = re.compile(rf"(?<![\w.\-/#]){NUMBER}(?:\s?[–-]\s?{NUMBER})?{UNIT}?")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"(`+)(.+?)\1")
BEGIN = re.compile(r"^<!-- BEGIN GENERATED: .+ -->\s*$")
END = re.compile(r"^<!-- END GENERATED -->\s*$")


@dataclass
class Unit:
    kind: str        # paragraph, item, table, heading
    line: int
    lines: list[str] = field(default_factory=list)
    generated: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def units(text: str) -> list[Unit]:
    found: list[Unit] = []
    current: Unit | None = None
    fence = None
    generated = False

    def close():
        nonlocal current
        if current is not None and current.lines:
            found.append(current)
        current = None

    for number, line in enumerate(text.splitlines(), 1):
        if fence:
            if re.match(r"^ {0,3}" + re.escape(fence[0]) + "{%d,}\\s*$" % len(fence), line):
                fence = None
            continue
        m = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if m:
            close()
            fence = m.group(1)
            continue
        if BEGIN.match(line):
            close()
            generated = True
            continue
        if END.match(line):
            close()
            generated = False
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("<!--"):
            close()
            continue
        kind = ("heading" if re.match(r"^ {0,3}#{1,6}\s", line) else "table" if stripped.startswith("|")
                else "item" if re.match(r"^\s*(?:[-*+]|\d+[.)])\s", line) else None)
        if kind in ("heading", "item") or (kind == "table") != (current is not None and current.kind == "table"):
            close()
        if current is None:
            current = Unit(kind or "paragraph", number, generated=generated)
        current.lines.append(line)
        if kind == "heading":
            close()
    close()
    return found


def claims(unit: Unit) -> list[str]:
    lines = unit.lines
    if unit.kind == "table":  # rows of a reference table (first cell a `parameter`) hold defaults, not claims
        lines = [ln for ln in lines if not re.match(r"^\s*\|\s*`", ln)]
    text = "\n".join(lines)
    if unit.kind == "heading":
        text = re.sub(r"^\s*#+\s*(?:\d+(?:\.\d+)*[.)]?\s)?", "", text)  # a section number is no claim
    text = LINK.sub(lambda m: m.group(1), text)             # link targets are paths, not claims
    text = CODE.sub(" ", text)                              # inline code: names, commands, paths
    text = re.sub(r"\b\d{4}-\d{2}-\d{2}\b", " ", text)      # dates
    text = re.sub(r"\bv?\d+\.\d+\.\d+\S*", " ", text)      # versions (2.11.0+cu130)
    text = re.sub(r"^\s*(?:\d+[.)])\s", " ", text, flags=re.M)  # list numbering
    found = []
    for m in CLAIM.finditer(text):
        token = m.group(0).strip()
        number = re.match(NUMBER, token).group(0)
        if "." in number or token != number or (len(number.lstrip("−+-").replace(",", "")) >= 4 and "," in number):
            found.append(token)
    return found


def targets(unit: Unit) -> list[str]:
    text = unit.text
    found = [m.group(2) for m in LINK.finditer(text)]
    found += [m.group(2) for m in CODE.finditer(text)]
    return found


def evidence(unit: Unit) -> str | None:
    paths = targets(unit)
    if any(re.search(r"\.json(?:$|[#?\s])", p) for p in paths):
        return "links JSON"
    if any(re.search(r"(?:^|/)(?:results|benchmarks)/", p) for p in paths):
        return "links results"
    return None


def classify(doc_units: list[Unit]) -> list[tuple[Unit, str, list[str]]]:
    rows = []
    for i, unit in enumerate(doc_units):
        found = claims(unit)
        if not found:
            continue
        if unit.generated:
            rows.append((unit, "generated", found))
            continue
        category = evidence(unit)
        if unit.kind == "table" and category != "links JSON":
            neighbours = [doc_units[j] for j in (i - 1, i + 1) if 0 <= j < len(doc_units)
                          and doc_units[j].kind in ("paragraph", "item")]
            found_near = [evidence(n) for n in neighbours]
            category = ("links JSON" if "links JSON" in found_near else
                        category or ("links results" if "links results" in found_near else None))
        rows.append((unit, category or "neither", found))
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    ap.add_argument("--show", action="append", choices=CATEGORIES,
                    help="list the units of this category with their claims (default: neither)")
    args = ap.parse_args(argv)
    files = args.files or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    show = args.show or ["neither"]
    totals: Counter = Counter()
    unit_totals: Counter = Counter()
    listed = []
    names = {path: str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
             for path in files}
    width = max(len(n) for n in [*names.values(), "file"])
    print("claims (in how many paragraphs, list items or tables)")
    print(f"{'file':{width}} {'claims':>11} " + " ".join(f"{c:>15}" for c in CATEGORIES))

    def row(name, counts, unit_counts):
        cells = [f"{counts[c]} ({unit_counts[c]})" for c in CATEGORIES]
        return (f"{name:{width}} {f'{sum(counts.values())} ({sum(unit_counts.values())})':>11} "
                + " ".join(f"{c:>15}" for c in cells))

    for path in files:
        rows = classify(units(path.read_text(encoding="utf-8")))
        counts, unit_counts = Counter(), Counter()
        for unit, category, found in rows:
            counts[category] += len(found)
            unit_counts[category] += 1
            if category in show:
                listed.append((path, unit, category, found))
        totals.update(counts)
        unit_totals.update(unit_counts)
        print(row(names[path], counts, unit_counts))
    print(row("all", totals, unit_totals))
    for path, unit, category, found in listed:
        name = names[path]
        snippet = " ".join(unit.text.split())
        print(f"\n[{category}] {name}:{unit.line} ({unit.kind}, {len(found)}): {', '.join(found)}\n    "
              f"{snippet[:160]}{'…' if len(snippet) > 160 else ''}")
    return dict(totals)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # piped into head
        sys.stderr.close()
