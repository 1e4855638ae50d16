"""distill with the real fixture teachers (../shared/teachers) on a slice of the Romanian corpus.

The baseline for "distillation helps" is the student at step 0: the same six layers copied from
the same teacher, same embeddings and head, only not distilled. It is the fair comparison: same
shape, same information from the teacher's weights, and everything the trained student gains over
it comes from the distillation run itself (a randomly initialised student would make the test
trivially easy to pass).
"""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForMaskedLM, AutoTokenizer

from compresso.models import load_bundle, save_bundle
from compresso.strategies.distill import DistillStrategy
from tests.test_distill import make_ctx

pytestmark = pytest.mark.shared



@pytest.fixture(scope="module")
def fixtures(shared_dir, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("distill_corpus") / "slice.txt"
    lines = []
    with lzma.open(shared_dir / "corpus" / "ro-corpus-00.txt.xz", "rt", encoding="utf-8") as f:
        for line in f:
            lines.append(line)
            if len(lines) == 400:
                break
    corpus.write_text("".join(lines))
    teachers = shared_dir / "teachers"
    return {"cased": teachers / "ro-bert-small-cased", "uncased": teachers / "ro-robert-small-uncased",
            "corpus": corpus}


def _params(corpus: Path, **kw):
    base = dict(corpus=[str(corpus)], seq_len=64, batch_size=8, heldout_documents=48, log_every=2,
                checkpoint_every=1000, lr=3e-4, warmup_ratio=0.0)
    return DistillStrategy.Params(**{**base, **kw})


def test_cased_teacher_distils_into_a_better_six_layer_student(fixtures, tmp_path):
    ctx = make_ctx(tmp_path, {"cased": fixtures["cased"]})
    bundle = load_bundle(fixtures["cased"])
    out = DistillStrategy(_params(fixtures["corpus"], max_steps=20)).apply(bundle, ctx)
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    assert report["student"]["layers_kept"] == [0, 2, 4, 7, 9, 11]
    losses = [h["loss"] for h in report["loss_curve"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    before, after = report["heldout"]["student_before"], report["heldout"]["student_after"]
    teacher = report["heldout"]["teachers"]["cased"]
    assert after["agreement"]["cased"] > before["agreement"]["cased"] + 0.02, (before, after)
    assert after["mlm_accuracy"] > before["mlm_accuracy"]
    assert teacher["mlm_accuracy"] > after["mlm_accuracy"]  # 20 steps do not beat a 12-layer teacher
    # The output is a plain transformers masked-LM with its tokenizer.
    save_bundle(out, tmp_path / "student")
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "student")
    tok = AutoTokenizer.from_pretrained(tmp_path / "student")
    assert model.config.num_hidden_layers == 6 and len(tok) == 16000


def test_cased_and_uncased_teachers_both_supervise(fixtures, tmp_path):
    ctx = make_ctx(tmp_path, {"cased": fixtures["cased"], "uncased": fixtures["uncased"]})
    DistillStrategy(_params(fixtures["corpus"], max_steps=3, heldout_documents=24)).apply(
        load_bundle(fixtures["cased"]), ctx)
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    cased, uncased = report["teachers"]["cased"], report["teachers"]["uncased"]
    assert cased["same_tokenizer"] and not uncased["same_tokenizer"]
    assert cased["supervised_fraction"] == 1.0
    assert 0.5 < uncased["supervised_fraction"] < 1.0  # most masked pieces align across the vocabularies
    assert uncased["vocab"]["case_folded"] and uncased["vocab"]["teacher_vocab_covered"] > 0.5
    assert cased["loss_share"] > 0.2 and uncased["loss_share"] > 0.2
    held = report["heldout"]["teachers"]
    assert held["uncased"]["mlm_accuracy"] > 0.2 and held["cased"]["mlm_accuracy"] > 0.2
    assert 0 < report["heldout"]["student_after"]["agreement"]["uncased"] < 1
    for key in ("agreement_uncased", "supervised_fraction_uncased", "loss_share_cased", "heldout_mlm_accuracy"):
        assert key in ctx.metrics
