"""Tiny models, tokenizers and installable strategy distributions built inside tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

WORDS = ("casa masa om oameni carte cărți este sunt un o și în la de pe cu mare mic frumos "
         "român românia bucurești ziua noaptea apa drum").split()


def tiny_tokenizer() -> BertTokenizerFast:
    """A cased WordPiece tokenizer over a few Romanian words (enough to tokenize any lowercase text)."""
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "##a", "##i", "##e", "##ul"]
    chars = sorted(set("".join(WORDS)))
    vocab = pieces + WORDS + chars + [f"##{c}" for c in chars]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(vocab))}
    return BertTokenizerFast(vocab=vocab, do_lower_case=False)


def tiny_bert(folder: Path, layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised BertForMaskedLM + tokenizer saved with save_pretrained."""
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


STRATEGIES_SOURCE = '''
"""Strategies used by the engine tests: small, real model transformations."""
import os
from pathlib import Path

import torch
from pydantic import Field

from compresso.strategy import CompressionStrategy, ModelBundle, StrategyError, StrategyParams


class KeepLayers(CompressionStrategy):
    """Keeps the first `layers` encoder layers: real layer dropping on BERT."""
    name = "keep_layers"
    summary = "keep the first N encoder layers"

    class Params(StrategyParams):
        layers: int = Field(ge=1)
        fail: bool = False

    def apply(self, bundle, ctx):
        calls = Path(os.environ["COMPRESSO_TEST_CALLS"])
        calls.write_text(calls.read_text() + f"{ctx.stage_dir.name}\\n" if calls.exists() else f"{ctx.stage_dir.name}\\n")
        encoder = bundle.model.bert.encoder
        if self.params.layers > len(encoder.layer):
            raise StrategyError(f"layers={self.params.layers} but the model has {len(encoder.layer)}")
        (ctx.work_dir / "progress.txt").write_text("started")
        if self.params.fail:
            raise RuntimeError("failing on purpose")
        encoder.layer = torch.nn.ModuleList(list(encoder.layer)[: self.params.layers])
        bundle.model.config.num_hidden_layers = self.params.layers
        (ctx.stage_dir / "extra.txt").write_text("written by the strategy")
        ctx.metrics["layers"] = self.params.layers
        return ModelBundle(bundle.model, bundle.tokenizer, bundle.lineage)
'''


def install_distribution(root: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """Write an importable module plus a ``*.dist-info`` that importlib.metadata discovers.

    Putting ``root`` on sys.path / PYTHONPATH is all it takes to 'install' it, which keeps the
    test environment untouched.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    lines = ["[compresso.strategies]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def run_cli(args: list[str], cwd: Path, extra_path: list[Path] = (), env: dict | None = None):
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(p) for p in extra_path] + [full_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "compresso.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def tiny_berts_with_tokenizer(tokenizer_dir: Path, root: Path, layers: dict[str, int]) -> dict[str, str]:
    """Randomly initialised tiny BertForMaskedLMs (hidden 32) saved with a real tokenizer, one per
    ``name: layers``, seeded by their order; returns name → folder."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    paths = {}
    for seed, (name, n_layers) in enumerate(layers.items()):
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128)
        BertForMaskedLM(config).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def quiet():
    """A rich console that prints nowhere (the suite's logs, kept out of the test output)."""
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=120)
