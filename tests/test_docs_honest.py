"""The user docs (README.md, docs/*.md, benchmarks/README.md) checked against the repository:

- every relative link resolves, and its ``#anchor`` names a heading of the target file (GitHub's
  slug rule); every inline-code path into the repository (`benchmarks/x.py`, `tests/t.py::test_y`)
  exists;
- every generated block (``<!-- BEGIN GENERATED: <command> -->`` ... ``<!-- END GENERATED -->``,
  the command run from the repository root) regenerates byte-identical;
- every whole recipe a doc shows (a ``yaml`` block that starts with ``name:``) and every
  ``recipes/*.yaml`` a doc names passes ``compresso validate``;
- the Python examples of docs/api.md run as written, in order, on tiny stand-ins of the fixtures,
  and its reference tables list every parameter of the functions they describe;
- an error message reaches a pipe, a file or a pseudo-terminal on one line.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import lzma
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import SHARED
from tests.tiny import WORDS, tiny_bert

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# --- reading Markdown ----------------------------------------------------------------------------

@dataclass
class Fence:
    info: str   # the word after the opening fence: python, yaml, bash...
    line: int   # 1-based line of the first line inside the fence
    body: str


def split_markdown(text: str) -> tuple[list[str], list[Fence]]:
    """The prose lines (lines inside fenced code blanked, so numbering stays) and the fenced blocks."""
    prose, fences, fence, body, start, info = [], [], None, [], 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            m = re.match(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)", line)
            if m:
                fence, body, start, info = m.group(1), [], number + 1, m.group(2)
                prose.append("")
            else:
                prose.append(line)
        else:
            if re.match(r"^ {0,3}" + re.escape(fence[0]) + "{%d,}\\s*$" % len(fence), line):
                fences.append(Fence(info, start, "\n".join(body) + "\n"))
                fence = None
            else:
                body.append(line)
            prose.append("")
    assert fence is None, f"a code fence opened at line {start - 1} is never closed"
    return prose, fences


CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def code_spans(line: str) -> list[str]:
    return [m.group(2).strip() for m in CODE_SPAN.finditer(line)]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger on the rendered text): the text as rendered
    (link targets, HTML tags, emphasis markers and backticks dropped, code kept as written),
    lower-cased; every character that is not a letter, a mark, a digit, a space, ``-`` or ``_``
    removed; each space turned into ``-`` (runs are not collapsed)."""
    parts = re.split(r"(`+[^`]*?`+)", heading)  # code spans are kept verbatim, less their backticks
    text = []
    for i, part in enumerate(parts):
        if i % 2:
            text.append(part.strip("`"))
            continue
        part = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part)      # [text](target) -> text
        part = re.sub(r"<[^>]+>", "", part)                           # HTML tags
        part = re.sub(r"\\(.)", r"\1", part)                          # backslash escapes
        part = re.sub(r"(\*{1,3}|(?<![\w])_{1,3})(\S(?:.*?\S)?)\1(?![\w])", r"\2", part)  # emphasis
        text.append(part)
    rendered = "".join(text).strip().lower()
    kept = "".join(c for c in rendered if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (a repeated slug gets -1, -2, ...,
    exactly as github-slugger counts) and explicit ``<a id=...>`` / ``<a name=...>``."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    occurrences: dict[str, int] = {}
    found = set()
    for line in prose:
        m = re.match(r"^ {0,3}#{1,6}(?:\s+(.*?))?(?:\s+#+)?\s*$", line)
        if m:
            base = slug = github_slug(m.group(1) or "")
            while slug in occurrences:
                occurrences[base] += 1
                slug = f"{base}-{occurrences[base]}"
            occurrences[slug] = 0
            found.add(slug)
        found.update(re.findall(r"<a\s+(?:id|name)=[\"']([^\"']+)[\"']", line))
    return found


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and reference definition outside code."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    found = []
    for number, line in enumerate(prose, 1):
        line = CODE_SPAN.sub(lambda m: "code", line)
        found += [(number, m.group(1).strip("<>")) for m in LINK.finditer(line)]
        found += [(number, m.group(1).strip("<>")) for m in REFERENCE.finditer(line)]
    return found


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{rel(path)}:{number}: ({target})"
        if not resolved.exists():
            problems.append(f"{where} {file_part} does not exist")
        elif not resolved.is_relative_to(REPO):
            problems.append(f"{where} points outside the repository (GitHub cannot show it)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where} {rel(resolved)} has no heading with the anchor #{anchor}")
    return problems


# --- 1. links, anchors and paths ---------------------------------------------------------------

@pytest.mark.parametrize("heading, slug", [
    ("Custom tasks: your own files", "custom-tasks-your-own-files"),
    ("A stage's output as a teacher", "a-stages-output-as-a-teacher"),
    ("How speed is measured (`benchmarks/distill_speed.py`)", "how-speed-is-measured-benchmarksdistill_speedpy"),
    ("Scores (paper-style table)", "scores-paper-style-table"),
    ("Settings reference (`evaluate:`)", "settings-reference-evaluate"),
    ("GPU benchmark (H200)", "gpu-benchmark-h200"),
    ("C++ & Rust", "c--rust"),                       # each space becomes a hyphen, runs kept
    ("1. Install", "1-install"),
    ("**Bold** and _emphasis_ and snake_case", "bold-and-emphasis-and-snake_case"),
    ("[Link text](other.md#x) here", "link-text-here"),
    ("Loyalty — 1 − √JSD", "loyalty--1--jsd"),
    ("Română: ăîșțâ", "română-ăîșțâ"),
    ("`--set KEY=VALUE`", "--set-keyvalue"),
])
def test_github_slug_rule(heading, slug):
    assert github_slug(heading) == slug


def test_the_link_checker_finds_what_is_broken(tmp_path, monkeypatch):
    """The checker itself can fail: a missing file, a missing anchor, a repeated heading's -1, a
    link out of the repository, links in code ignored."""
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", root)
    (root / "other.md").write_text("# Title\n\n## Notes\n\n## Notes\n\n```\n# not a heading\n```\n")
    (root / "page.md").write_text(
        "[ok](other.md#notes) [ok2](other.md#notes-1) [bad](other.md#notes-2) [gone](missing.md)\n"
        "[self](#page) [code](other.md#not-a-heading) `[in code](missing2.md)`\n"
        "[out](../elsewhere.md) [web](https://example.com/x.md#y)\n\n# Page\n\n```\n[x](missing3.md)\n```\n")
    (tmp_path / "elsewhere.md").write_text("x")
    problems = broken_links(root / "page.md")
    assert len(problems) == 4, problems
    assert [p.split(" (")[1].split(")")[0] for p in problems] == [
        "other.md#notes-2", "missing.md", "other.md#not-a-heading", "../elsewhere.md"]


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_relative_link_and_anchor_resolves(doc):
    problems = broken_links(doc)
    assert not problems, "broken links:\n" + "\n".join(problems)


REPO_PATH = re.compile(r"^(?:\.\./)*(README\.md|CHANGELOG\.md|pyproject\.toml|(?:docs|benchmarks|recipes|compresso|tests|plugins)/"
                       r"[\w./-]*)(?:::(\w+))?$")


def repo_paths(path: Path) -> list[tuple[int, str, str | None]]:
    """Inline-code spans that name a repository file or folder: (line, path, test name or None).
    Placeholders (``<cpu>``, ``*``, ``…``) and commands (spaces) are not paths."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    found = []
    for number, line in enumerate(prose, 1):
        for span in code_spans(line):
            m = REPO_PATH.match(span)
            if m:
                found.append((number, m.group(1), m.group(2)))
    return found


def test_the_path_checker_finds_what_is_missing(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("`benchmarks/results_tables.py` `recipes/nothing.yaml` `docs/results/<cpu>.json`\n"
                   "`tests/test_docs_honest.py::test_github_slug_rule` `tests/test_docs_honest.py::test_nothing`\n"
                   "`python benchmarks/x.py`\n```\n`compresso/never.py`\n```\n")
    assert [(n, p, t) for n, p, t in repo_paths(doc)] == [
        (1, "benchmarks/results_tables.py", None), (1, "recipes/nothing.yaml", None),
        (2, "tests/test_docs_honest.py", "test_github_slug_rule"), (2, "tests/test_docs_honest.py", "test_nothing")]
    assert missing_paths(doc) == [f"{doc.name}:1: `recipes/nothing.yaml` does not exist",
                                  f"{doc.name}:2: tests/test_docs_honest.py has no test test_nothing"]


def missing_paths(doc: Path) -> list[str]:
    """`benchmarks/x.py`, `recipes/y.yaml`, `tests/test_z.py::test_name`: read from the repository
    root (or, for a path that is not there, from the doc's own folder, as its links are)."""
    problems = []
    for number, path, test in repo_paths(doc):
        target = next((p for p in (REPO / path, doc.parent / path) if p.exists()), None)
        if target is None:
            problems.append(f"{doc.name}:{number}: `{path}` does not exist")
        elif test and not re.search(rf"^\s*(?:async\s+)?def {test}\(", target.read_text(encoding="utf-8"), re.M):
            problems.append(f"{doc.name}:{number}: {path} has no test {test}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_repository_path_in_inline_code_exists(doc):
    problems = missing_paths(doc)
    assert not problems, "\n".join(problems)


# --- 2. generated blocks -------------------------------------------------------------------------

BEGIN = re.compile(r"^<!-- BEGIN GENERATED: (.+?) -->\s*$")
END = re.compile(r"^<!-- END GENERATED -->\s*$")


@dataclass
class Generated:
    doc: Path
    line: int
    command: str
    content: str


def generated_blocks(doc: Path) -> list[Generated]:
    """The doc's generated blocks; a BEGIN without its END (or an END without a BEGIN, or one
    inside another) is an error."""
    prose, _ = split_markdown(doc.read_text(encoding="utf-8"))
    blocks, open_block = [], None
    for number, line in enumerate(prose, 1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            assert open_block is None, f"{rel(doc)}:{number}: BEGIN GENERATED inside the block opened at line {open_block[0]}"
            open_block = (number, begin.group(1), [])
        elif end:
            assert open_block is not None, f"{rel(doc)}:{number}: END GENERATED without a BEGIN"
            blocks.append(Generated(doc, open_block[0], open_block[1], "\n".join(open_block[2]).strip("\n")))
            open_block = None
        elif open_block is not None:
            open_block[2].append(line)
        elif "GENERATED" in line and line.lstrip().startswith("<!--"):
            raise AssertionError(f"{rel(doc)}:{number}: malformed marker {line!r}")
    assert open_block is None, f"{rel(doc)}:{open_block[0]}: BEGIN GENERATED without an END"
    return blocks


def _collected(function) -> list:
    """What a collection-time helper finds, or nothing when a doc is malformed: the tests that
    read the docs directly then fail with the reason, instead of the whole module erroring."""
    try:
        return function()
    except AssertionError:
        return []


ALL_GENERATED = _collected(lambda: [block for doc in DOCS for block in generated_blocks(doc)])


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_generated_blocks_are_well_formed(doc):
    for block in generated_blocks(doc):
        assert block.content, f"{rel(block.doc)}:{block.line}: an empty generated block"


def test_generated_blocks_exist_and_the_check_can_fail(tmp_path, python_on_path):
    assert ALL_GENERATED, "no generated block in the docs: docs/results.md's tables are rendered from JSON"
    doc = tmp_path / "page.md"
    doc.write_text("a\n\n<!-- BEGIN GENERATED: python -c 'print(1 + 1)' -->\n\n2\n\n<!-- END GENERATED -->\n"
                   "<!-- BEGIN GENERATED: echo new -->\nold\n<!-- END GENERATED -->\n")
    first, second = generated_blocks(doc)
    assert regenerate(first, python_on_path) is None
    assert "-old" in regenerate(second, python_on_path) and "+new" in regenerate(second, python_on_path)
    doc.write_text("<!-- BEGIN GENERATED: echo a -->\na\n")
    with pytest.raises(AssertionError, match="without an END"):
        generated_blocks(doc)
    doc.write_text("<!-- BEGIN GENERATED echo a -->\na\n<!-- END GENERATED -->\n")
    with pytest.raises(AssertionError, match="without a BEGIN|malformed"):
        generated_blocks(doc)


@pytest.fixture(scope="module")
def python_on_path(tmp_path_factory) -> dict:
    """An environment whose ``python`` / ``python3`` is this interpreter (a venv's python found
    through a symlink elsewhere would not see the venv), with the checkout importable."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name in ("python", "python3"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def regenerate(block: Generated, env: dict) -> str | None:
    """Run the block's command from the repository root; None when it prints the block's content
    exactly (blank lines around either ignored), else a unified diff."""
    result = subprocess.run(["bash", "-c", block.command], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"{block.doc.name}:{block.line}: `{block.command}` failed:\n{result.stderr}"
    produced = result.stdout.strip("\n")
    if produced == block.content:
        return None
    return "\n".join(difflib.unified_diff(block.content.splitlines(), produced.splitlines(),
                                          f"{block.doc.name} (as committed)", "regenerated", lineterm=""))


@pytest.mark.parametrize("block", ALL_GENERATED, ids=lambda b: f"{rel(b.doc)}:{b.line}")
def test_generated_block_regenerates_byte_identical(block, python_on_path):
    diff = regenerate(block, python_on_path)
    assert diff is None, (f"{rel(block.doc)}:{block.line}: the block differs from what `{block.command}` "
                          f"prints (rerun it and paste its output):\n{diff}")


# --- 3. recipes ----------------------------------------------------------------------------------

RECIPE_NAME = re.compile(r"(?<![\w.-])(?:\.\./)?recipes/([\w.-]+\.ya?ml)\b")


def named_recipes() -> dict[str, list[str]]:
    """recipes/*.yaml named anywhere in the docs (prose, code, commands) → where."""
    named: dict[str, list[str]] = {}
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for name in RECIPE_NAME.findall(line):
                named.setdefault(name, []).append(f"{rel(doc)}:{number}")
    return named


def whole_recipes() -> list[tuple[str, str]]:
    """Every ``yaml`` block that is a whole recipe (it starts with ``name:``; fragments of one
    start with the section they show): (doc:line, text)."""
    found = []
    for doc in DOCS:
        _, fences = split_markdown(doc.read_text(encoding="utf-8"))
        for fence in fences:
            first = next((ln for ln in fence.body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
            if fence.info in ("yaml", "yml") and first.startswith("name:"):
                found.append((f"{rel(doc)}:{fence.line}", fence.body))
    return found


WHOLE_RECIPES = _collected(whole_recipes)


@pytest.fixture()
def validate(monkeypatch):
    """``compresso validate ARGS`` in-process, from ``cwd``: (exit code, output). Never online."""
    from click.testing import CliRunner

    from compresso import cli

    def run(args: list[str], cwd: Path) -> tuple[int, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(cli.console, "width", 1000)
        monkeypatch.setattr(cli.err_console, "width", 1000)
        result = CliRunner().invoke(cli.main, ["validate", *map(str, args)], catch_exceptions=False)
        return result.exit_code, result.output

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return run


def test_docs_name_recipes_that_exist():
    named = named_recipes()
    assert named, "no doc names a recipe under recipes/"
    missing = {name: where for name, where in named.items() if not (REPO / "recipes" / name).is_file()}
    assert not missing, f"docs name recipes that do not exist: {missing}"
    assert WHOLE_RECIPES, "no doc shows a whole recipe (a yaml block starting with name:); README.md does"


@pytest.mark.parametrize("name", sorted(named_recipes()))
def test_recipe_named_in_the_docs_validates(name, validate, tmp_path):
    path = REPO / "recipes" / name
    if "../shared" in path.read_text(encoding="utf-8") and not (SHARED / "teachers").is_dir():
        pytest.skip(f"recipes/{name} reads ../shared (teachers, corpus, task data), not found at {SHARED}")
    code, output = validate([f"recipes/{name}", "-o", tmp_path / "out"], cwd=REPO)  # -o: leave runs/ alone
    assert code == 0, output
    assert "valid" in output and not (tmp_path / "out").exists()


def _user_files(node, cwd: Path) -> None:
    """Create the files a doc's recipe reads as the user's own (its corpus, its task files), small
    and well-formed; paths into ../shared are left to the fixtures."""
    if isinstance(node, list):
        for item in node:
            _user_files(item, cwd)
        return
    if not isinstance(node, dict):
        return
    rng = random.Random(0)
    corpus = node.get("corpus")
    for name in corpus if isinstance(corpus, list) else []:
        path = cwd / name
        if isinstance(name, str) and not name.startswith("../shared") and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with lzma.open(path, "wt", encoding="utf-8") if path.suffix == ".xz" else path.open("w") as f:
                f.writelines(" ".join(rng.choice(WORDS) for _ in range(12)) + ".\n" for _ in range(3000))
    if node.get("kind") in ("classification", "regression", "tagging") and isinstance(node.get("files"), dict):
        for name in node["files"].values():
            path = cwd / name
            if name.startswith("../shared") or path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if node["kind"] == "tagging" or path.suffix not in (".csv", ".tsv"):
                pytest.fail(f"the test cannot yet build a stand-in for {name} ({node['kind']}); extend _user_files")
            columns = [node.get("text", "text"), *([node["text_pair"]] if node.get("text_pair") else []),
                       node.get("label", "label")]
            with path.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
                w.writerow(columns)
                for i in range(40):
                    label = f"{i % 5}.0" if node["kind"] == "regression" else ("pos" if i % 2 else "neg")
                    w.writerow([" ".join(rng.choice(WORDS) for _ in range(6)) for _ in columns[:-1]] + [label])
    for value in node.values():
        _user_files(value, cwd)


@pytest.mark.parametrize("where, text", WHOLE_RECIPES, ids=[w for w, _ in WHOLE_RECIPES])
def test_recipe_shown_in_a_doc_validates(where, text, validate, tmp_path):
    """Run from a folder beside ../shared, with stand-ins for the user's own files the recipe names
    (its corpus, its task files); hub ids are checked for their form only (validate stays offline)."""
    recipe = yaml.safe_load(text)
    evaluate = recipe.get("evaluate") or {}
    from compresso.evaluation.tasks import TASKS

    builtin_tasks = isinstance(evaluate, dict) and any(t in TASKS for t in evaluate.get("tasks") or TASKS)
    if ("../shared" in text or (recipe.get("evaluate") is not None and builtin_tasks)) and not (SHARED / "data").is_dir():
        pytest.skip(f"{where} reads ../shared (teachers, corpus or the task data), not found at {SHARED}")
    work = tmp_path / "work"
    work.mkdir()
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    _user_files(recipe, work)
    (work / "recipe.yaml").write_text(text, encoding="utf-8")
    code, output = validate(["recipe.yaml"], cwd=work)
    assert code == 0, f"{where}:\n{output}"


# --- 4. the Python API examples ------------------------------------------------------------------

API_DOC = REPO / "docs" / "api.md"


class _RecordingHubApi:
    """Stands in for huggingface_hub.HfApi: records the calls publish makes, uploads nothing."""
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/0"})()


def _stand_in_fixtures(root: Path) -> Path:
    """``root/repo`` laid out like the repository root with ``root/shared`` beside it: the two
    teachers as tiny 12-layer BERTs, a small corpus, the recipes, and ``my/train.csv`` /
    ``my/test.csv`` (columns review, stars) for the custom task. Returns the repository stand-in."""
    repo = root / "repo"
    shutil.copytree(REPO / "recipes", repo / "recipes")
    teachers = root / "shared" / "teachers"
    tiny_bert(teachers / "ro-bert-small-cased", layers=6, seed=0)
    tiny_bert(teachers / "ro-robert-small-uncased", layers=6, seed=1)
    (root / "shared" / "corpus").mkdir(parents=True)
    rng = random.Random(0)
    with lzma.open(root / "shared" / "corpus" / "ro-corpus-00.txt.xz", "wt", encoding="utf-8") as f:
        f.writelines(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + ".\n" for _ in range(1500))
    (repo / "my").mkdir()
    for split, n in (("train", 48), ("test", 24)):
        with (repo / "my" / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["review", "stars"])
            for i in range(n):
                good = i % 2 == 0
                w.writerow([f"casa {'mare frumos' if good else 'mic'} este, ziua", "5" if good else "1"])
    return repo


def api_examples() -> list[Fence]:
    _, fences = split_markdown(API_DOC.read_text(encoding="utf-8"))
    return [f for f in fences if f.info == "python"]


def test_api_examples_run_as_written(tmp_path, monkeypatch):
    """Every ``python`` block of docs/api.md, in order, in one namespace, from a stand-in of the
    repository root (tiny models in place of ../shared's teachers); publishing goes to a recorder
    instead of the Hub. The slowest test here: about 7 s on a busy 2-core CPU."""
    import huggingface_hub
    from rich.console import Console

    from compresso import console as compresso_console
    from compresso.evaluation import runner

    examples = api_examples()
    assert len(examples) >= 4, "docs/api.md shows apply, load, evaluate and publish"
    repo = _stand_in_fixtures(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingHubApi)
    monkeypatch.setattr(_RecordingHubApi, "calls", [])
    quiet = Console(quiet=True)
    monkeypatch.setattr(compresso_console, "console", quiet)  # the examples' progress output, silenced
    # One intra-op thread per fine-tuning job, as the suite runs everything (conftest.one_thread):
    # with tiny models, two threads contending on a busy 2-core machine were measured far slower.
    monkeypatch.setattr(runner, "threads_per_job", lambda *args, **kwargs: 1)
    namespace: dict = {}
    for fence in examples:
        code = compile("\n" * (fence.line - 1) + fence.body, str(API_DOC), "exec")  # tracebacks name api.md lines
        exec(code, namespace)
    run, results = namespace["run"], namespace["results"]
    assert run.final_stage == Path("runs/nb/00-distill") and run.stages[0].status == "ran"
    assert (repo / "runs" / "qs" / "00-distill" / "config.json").is_file()
    assert namespace["bundle"].format and namespace["clf"].model.config.num_labels == 3
    assert results["errors"] == [] and "reviews" in results["scores"]["student"]
    assert [c[0] for c in _RecordingHubApi.calls] == ["create_repo", "upload_folder"]
    assert _RecordingHubApi.calls[0][1]["private"] is True


def _signature_rows(text: str) -> dict[str, list[str]]:
    """``| `name(a, *, b=1, **c)` | ...`` table rows → {name: [a, b, c]}."""
    rows = {}
    for m in re.finditer(r"^\| `(\w+)\((.*?)\)` \|", text, re.M):
        params = [p.strip().lstrip("*").split("=")[0].strip() for p in m.group(2).split(",")]
        rows[m.group(1)] = [p for p in params if p]
    return rows


def test_api_reference_tables_list_every_parameter():
    import compresso
    from compresso.evaluation import task_model

    rows = _signature_rows(API_DOC.read_text(encoding="utf-8"))
    functions = {name: getattr(compresso, name) for name in ("apply", "evaluate", "load", "publish")}
    functions |= {name: getattr(task_model, name) for name in
                  ("task_head", "load_task_model", "predict_labels", "predict_examples", "save_task_model")}
    assert set(functions) <= set(rows), f"docs/api.md has no row for {sorted(set(functions) - set(rows))}"
    for name, function in functions.items():
        actual = list(inspect.signature(function).parameters)
        assert rows[name] == actual, f"docs/api.md: {name}({', '.join(rows[name])}) but the function takes {actual}"


# --- 5. errors on one line, whatever the output is -------------------------------------------------

def _long_error_recipe(tmp_path: Path) -> tuple[Path, str]:
    """A recipe whose error names a corpus path of 400+ characters."""
    long_dir = tmp_path / ("d" * 120) / ("e" * 120) / ("f" * 120)
    long_dir.mkdir(parents=True)
    corpus = long_dir / "missing.txt.xz"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "long", "output_dir": str(tmp_path / "run"), "device": "cpu", "student": {"model": "bert-base-cased"},
        "stages": [{"strategy": "distill", "params": {"teachers": [], "corpus": [str(corpus)]}}]}))
    return recipe, str(corpus)


def _one_line_error(output: str, corpus: str) -> str:
    lines = [line for line in output.replace("\r\n", "\n").split("\n") if "stages.0.params.corpus.0" in line]
    assert len(lines) == 1, output
    assert corpus in lines[0] and lines[0].rstrip().endswith(")") and len(lines[0]) > 300, lines[0]
    return lines[0]


def test_a_long_error_reaches_a_pipe_a_file_or_a_terminal_on_one_line(tmp_path):
    """A message of 400+ characters through the real CLI, with no COLUMNS and stdin from /dev/null
    (what a CI job or a script sees), its stderr a pipe, a file, and (with util-linux ``script``)
    a pseudo-terminal of unknown and of 80 columns, as in an interactive shell. It arrives as one
    line every time: a pipe or a file is never wrapped, and on a terminal the terminal folds it for
    display. The four run at once."""
    import shlex

    recipe, corpus = _long_error_recipe(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "compresso.cli", "validate", str(recipe)]
    err_file = (tmp_path / "err.txt").open("w")
    runs = {"pipe": subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True),
            "file": subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=err_file, text=True)}
    if shutil.which("script"):
        for name, extra in (("terminal", {}), ("terminal of 80 columns", {"COLUMNS": "80"})):
            runs[name] = subprocess.Popen(["script", "-qec", shlex.join(command), "/dev/null"], cwd=tmp_path,
                                          env={**env, **extra}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
    outputs = {name: proc.communicate(timeout=300) for name, proc in runs.items()}
    err_file.close()
    for name, (out, err) in outputs.items():
        assert runs[name].returncode == 2, (name, out, err)
        text = {"pipe": err, "file": (tmp_path / "err.txt").read_text()}.get(name, out)
        _one_line_error(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text), corpus)
    if len(runs) < 4:
        pytest.skip("checked on a pipe and a file; util-linux `script` (for a pseudo-terminal) is not installed")
