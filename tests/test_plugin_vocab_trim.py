"""The third-party plugin template, installed like a user would and driven through the CLI.

``plugins/compresso-vocab-trim`` is built with pip into a private folder (the venv stays
untouched), and the CLI runs in a subprocess with that folder on PYTHONPATH, so the strategy is
found only through its ``compresso.strategies`` entry point, exactly as after ``pip install``.
"""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from tests.tiny import WORDS, run_cli, tiny_bert

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "compresso-vocab-trim"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """``pip install --target`` of the plugin; returns the folder to put on PYTHONPATH."""
    pytest.importorskip("setuptools", reason="building the plugin needs setuptools in the venv")
    tmp = tmp_path_factory.mktemp("plugin")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = shutil.copytree(PLUGIN, tmp / "source",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = tmp / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--no-input", "-q", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip could not install the plugin:\n{result.stdout}\n{result.stderr}"
    assert (site / "compresso_vocab_trim" / "strategy.py").is_file()
    entry_points = next(site.glob("compresso_vocab_trim-*.dist-info")) / "entry_points.txt"
    assert "vocab_trim = compresso_vocab_trim:VocabTrimStrategy" in entry_points.read_text()
    return site


def test_strategies_lists_the_installed_plugin(plugin_site, tmp_path):
    result = run_cli(["strategies"], cwd=tmp_path, extra_path=[plugin_site])
    assert result.returncode == 0, result.stderr
    row = next((line for line in result.stdout.splitlines() if " vocab_trim " in line), None)
    assert row is not None, result.stdout
    assert "compresso-vocab-trim" in row and "0.1.0" in row and "failed" not in row


def write_recipe(tmp_path: Path, model: Path, corpus: Path, **params) -> Path:
    params_yaml = ", ".join(f"{k}: {json.dumps(v)}" for k, v in {"corpus": [str(corpus)], **params}.items())
    recipe = tmp_path / "trim.yaml"
    recipe.write_text(
        "name: trim-demo\n"
        "seed: 0\n"
        f"output_dir: {tmp_path / 'unused'}\n"
        "device: cpu\n"
        f"student: {{model: {model}}}\n"
        "stages:\n"
        "  - strategy: vocab_trim\n"
        f"    params: {{{params_yaml}}}\n")
    return recipe


def apply_and_load(recipe: Path, plugin_site: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli(["apply", str(recipe), "--output-dir", str(out)], cwd=tmp_path, extra_path=[plugin_site])
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    stage = out / "00-vocab_trim"
    stage_json = json.loads((stage / "stage.json").read_text())
    report = json.loads((stage / "vocab_trim.json").read_text())
    # Plain transformers, no compresso: the stage folder is an ordinary save_pretrained folder.
    tokenizer = AutoTokenizer.from_pretrained(stage)
    model = AutoModelForMaskedLM.from_pretrained(stage, dtype=torch.float32).eval()
    return stage_json["metrics"], report, tokenizer, model


@torch.no_grad()
def assert_same_outputs(texts, old_tok, old_model, new_tok, new_model, keep):
    for text in texts:
        assert new_tok.tokenize(text) == old_tok.tokenize(text)
        old_ids = old_tok(text, return_tensors="pt", truncation=True, max_length=128)
        new_ids = new_tok(text, return_tensors="pt", truncation=True, max_length=128)
        assert new_ids["input_ids"][0].tolist() == [keep.index(i) for i in old_ids["input_ids"][0].tolist()]
        before = old_model(**old_ids).logits[0][:, keep]
        after = new_model(**new_ids).logits[0]
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def check_words(texts, old_tok, new_tok) -> dict[str, int]:
    """Word by word: the same pieces if all were kept, else [UNK] or another split of the same word."""
    backend = old_tok.backend_tokenizer
    outcome = {"same": 0, "unknown": 0, "resplit": 0}
    vocab = new_tok.get_vocab()
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            old, new = old_tok.tokenize(word), new_tok.tokenize(word)
            if all(piece in vocab for piece in old):
                assert new == old, word
                outcome["same"] += 1
            elif new == ["[UNK]"]:
                outcome["unknown"] += 1
            else:
                assert "[UNK]" not in new and "".join(p.removeprefix("##") for p in new) == word, (word, old, new)
                outcome["resplit"] += 1
    return outcome


def test_apply_trims_a_tiny_model(plugin_site, tmp_path):
    model_dir = tiny_bert(tmp_path / "tiny", layers=2)
    used = WORDS[: len(WORDS) // 2]
    texts = [" ".join(used[i:] + used[:i]) + "." for i in range(len(used))]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")

    metrics, report, tokenizer, model = apply_and_load(write_recipe(tmp_path, model_dir, corpus), plugin_site, tmp_path)

    old_tok = AutoTokenizer.from_pretrained(model_dir)
    old_model = AutoModelForMaskedLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    keep = report["kept_old_ids"]
    assert len(tokenizer) == len(keep) == metrics["vocab_after"] < metrics["vocab_before"] == len(old_tok)
    assert model.config.vocab_size == len(keep) and metrics["corpus_documents"] == len(texts)
    assert_same_outputs(texts, old_tok, old_model, tokenizer, model, keep)
    # Words the corpus never used lost their pieces: spelt from smaller kept pieces, or unknown.
    outcome = check_words([" ".join(WORDS)], old_tok, tokenizer)
    assert outcome["same"] >= len(used) and outcome["unknown"] + outcome["resplit"] > 0


@pytest.mark.shared
def test_apply_trims_the_fixture_teacher_on_real_corpus(plugin_site, tmp_path, shared_dir):
    teacher = shared_dir / "teachers" / "ro-bert-small-cased"
    with lzma.open(shared_dir / "corpus" / "ro-corpus-00.txt.xz", "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in islice(f, 400) if line.strip()]
    corpus = tmp_path / "corpus.txt.xz"
    with lzma.open(corpus, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[:300]) + "\n")

    metrics, report, tokenizer, model = apply_and_load(
        write_recipe(tmp_path, teacher, corpus, verify_documents=300), plugin_site, tmp_path)

    old_tok = AutoTokenizer.from_pretrained(teacher)
    old_model = AutoModelForMaskedLM.from_pretrained(teacher, dtype=torch.float32).eval()
    keep = report["kept_old_ids"]
    assert len(tokenizer) == len(keep) == metrics["vocab_after"] < 16000 == metrics["vocab_before"]
    assert metrics["parameters_after"] < metrics["parameters_before"]
    assert metrics["corpus_documents"] == 300 and metrics["corpus_coverage"] == 1.0
    assert metrics["verify_identical_documents"] == metrics["verify_covered_documents"] == 300
    assert_same_outputs(lines[:6], old_tok, old_model, tokenizer, model, keep)
    # Held-out text: words whose pieces were all kept split as before; the others are
    # re-spelt from kept pieces or become [UNK].
    outcome = check_words(lines[300:], old_tok, tokenizer)
    assert outcome["same"] > 2 * (outcome["unknown"] + outcome["resplit"]) and outcome["unknown"] and outcome["resplit"]


def test_bad_plugin_parameter_is_reported_with_its_line(plugin_site, tmp_path):
    model_dir = tiny_bert(tmp_path / "tiny", layers=1)
    (tmp_path / "corpus.csv").write_text("a,b\n")
    recipe = write_recipe(tmp_path, model_dir, tmp_path / "corpus.csv", min_count=0)
    result = run_cli(["apply", str(recipe), "--output-dir", str(tmp_path / "run")], cwd=tmp_path,
                     extra_path=[plugin_site])
    assert result.returncode == 2, result.stdout + result.stderr
    err = " ".join(result.stderr.split())
    assert f"{recipe}:8: stages.0.params.corpus.0" in err and "expected a .txt, .gz or .xz file" in err
    assert "stages.0.params.min_count" in err
    assert not (tmp_path / "run").exists()
