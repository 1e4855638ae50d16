"""The prune strategy on tiny encoders built here: targets, importance, shapes, persistence, errors."""

import gzip
import json

import pytest
import torch
from pydantic import ValidationError
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForMaskedLM,
)

from compresso import registry
from compresso.models import ModelLoadError, load_bundle, save_bundle
from compresso.strategies.prune import PruneStrategy, layer_shapes
from compresso.strategy import ModelBundle, RunContext, StrategyError
from tests.tiny import WORDS, tiny_tokenizer

HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 3
HEAD_DIM = HIDDEN // HEADS



@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def bert(tokenizer, seed=0, layers=LAYERS):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=layers,
                        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64)
    return BertForMaskedLM(config).eval()


def ctx_for(tmp_path, seed=0):
    return RunContext(stage_dir=tmp_path / "stage", work_dir=tmp_path / "work", device=torch.device("cpu"),
                      seed=seed, teachers={}, base_dir=tmp_path)


def prune(model, tokenizer, tmp_path, **params):
    strategy = PruneStrategy(PruneStrategy.Params(**params))
    return strategy.apply(ModelBundle(model, tokenizer), ctx_for(tmp_path))


def inputs(tokenizer):
    batch = tokenizer(["casa mare este frumos .", "oameni în bucurești , ziua și noaptea pe drum"],
                      padding=True, return_tensors="pt")
    return {k: v for k, v in batch.items()}


def outputs(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def clone(model):
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


# ---------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize("params, message", [
    ({"heads": 1.0}, "must be >= 0 and < 1"),
    ({"ffn": -0.1}, "must be >= 0 and < 1"),
    ({"ffn": {"ratio": [0.5, 1.2]}}, "ratio[1] is 1.2"),
    ({"heads": {"keep": 0}}, "at least one unit must be kept"),
    ({"heads": {"keep": {2: 0}}}, "keep[2] is 0"),
    ({"heads": {"ratio": 0.5, "keep": 2}}, "exactly one of ratio"),
    ({}, "nothing to prune"),
    ({"ffn": 0.5, "importance": "taylor"}, "needs calibration text"),
    ({"ffn": 0.5, "scope": "global", "heads": {"keep": [1, 2, 3]}}, "needs one heads value"),
    ({"ffn": 0.5, "scope": "global", "round_to": 8}, "round_to applies to scope: layer"),
    ({"ffn": 0.5, "speed": "fast"}, "Extra inputs are not permitted"),
])
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError) as err:
        PruneStrategy.Params(**params)
    assert message in str(err.value)


def test_params_shorthand_and_corpus_file(tmp_path):
    params = PruneStrategy.Params(heads=0.25, ffn={"keep": {0: 16}})
    assert params.heads.ratio == 0.25 and params.ffn.keep == {0: 16}
    with pytest.raises(ValidationError, match="does not exist"):
        PruneStrategy.Params(ffn=0.5, importance="taylor", corpus=str(tmp_path / "missing.txt"))
    with pytest.raises(ValidationError, match="only read by importance: taylor"):
        (tmp_path / "c.txt").write_text("text\n")
        PruneStrategy.Params(ffn=0.5, corpus=[str(tmp_path / "c.txt")])


def test_registered_under_its_name():
    assert registry.get("prune") is PruneStrategy


# ---------------------------------------------------------------------------------------------
# Errors before any work


@pytest.mark.parametrize("params, message", [
    ({"heads": 0.9}, "prune every head of layer 0 (ratio 0.9 of 4 keeps 0)"),
    ({"heads": {"ratio": {1: 0.9}}}, "every head of layer 1"),
    ({"heads": {"keep": 5}}, "layer 0 has 4 heads, cannot keep 5"),
    ({"ffn": {"keep": [8, 8]}}, "the model has 3 layers, the list has 2"),
    ({"ffn": {"ratio": {3: 0.5}}}, "layer index 3 does not exist"),
    ({"heads": {"keep": 2}, "scope": "global"}, "would prune every head of some layer"),
])
def test_impossible_targets_fail_before_work(tokenizer, tmp_path, params, message):
    model = bert(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StrategyError) as err:
        prune(model, tokenizer, tmp_path, **params)
    assert message in str(err.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unsupported_architectures_are_named(tokenizer, tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(StrategyError, match="prune supports encoders of type bert, roberta.*distilbert; "
                                            "got GPT2LMHeadModel"):
        prune(gpt2, tokenizer, tmp_path, heads=0.5)
    decoder = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, is_decoder=True, add_cross_attention=True))
    with pytest.raises(StrategyError, match="encoders only"):
        prune(decoder, tokenizer, tmp_path, ffn=0.5)


def test_taylor_needs_a_masked_lm(tokenizer, tmp_path):
    (tmp_path / "c.txt").write_text("casa mare\n")
    config = bert(tokenizer).config
    config.num_labels = 2
    model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(StrategyError, match="needs a\n?.*ForMaskedLM model; got BertForSequenceClassification"):
        prune(model, tokenizer, tmp_path, ffn=0.5, importance="taylor", corpus=[str(tmp_path / "c.txt")])


# ---------------------------------------------------------------------------------------------
# What pruning does


def test_nothing_pruned_leaves_outputs_unchanged(tokenizer, tmp_path):
    model = bert(tokenizer)
    batch = inputs(tokenizer)
    reference = outputs(model, batch)
    n_before = sum(p.numel() for p in model.parameters())
    result = prune(model, tokenizer, tmp_path, heads=0.0, ffn={"ratio": 0.0})
    assert result.format == "transformers"
    assert sum(p.numel() for p in result.model.parameters()) == n_before
    assert torch.equal(outputs(result.model, batch), reference)


def test_shapes_and_parameter_counts(tokenizer, tmp_path):
    model = bert(tokenizer)
    n_before = sum(p.numel() for p in model.parameters())
    result = prune(model, tokenizer, tmp_path, heads={"keep": [3, 1, 2]}, ffn=0.5)
    assert result.format == "prune"
    shapes = [s.as_dict() for s in layer_shapes(result.model)]
    assert shapes == [{"heads": h, "head_dim": HEAD_DIM, "ffn": FFN // 2} for h in (3, 1, 2)]
    for layer, heads in zip(result.model.bert.encoder.layer, (3, 1, 2)):
        attention = layer.attention.self
        width = heads * HEAD_DIM
        assert attention.query.weight.shape == attention.key.weight.shape == attention.value.weight.shape \
            == (width, HIDDEN)
        assert layer.attention.output.dense.weight.shape == (HIDDEN, width)
        assert (attention.num_attention_heads, attention.all_head_size) == (heads, width)
        assert layer.intermediate.dense.weight.shape == (FFN // 2, HIDDEN)
        assert layer.output.dense.weight.shape == (HIDDEN, FFN // 2)
    # Per head removed: q, k, v rows (+ biases) and the attention output's columns. Per FFN channel:
    # one row + bias of the intermediate layer and one column of the output layer.
    heads_removed = (4 - 3) + (4 - 1) + (4 - 2)
    per_head = 3 * (HEAD_DIM * HIDDEN + HEAD_DIM) + HIDDEN * HEAD_DIM
    per_channel = 2 * HIDDEN + 1
    expected = n_before - heads_removed * per_head - LAYERS * (FFN // 2) * per_channel
    assert sum(p.numel() for p in result.model.parameters()) == expected
    batch = inputs(tokenizer)
    assert outputs(result.model, batch).shape == (*batch["input_ids"].shape, len(tokenizer))
    report = json.loads((tmp_path / "stage" / "prune_report.json").read_text())
    assert report["parameters_after"] == expected
    assert [len(r["heads_removed"]) for r in report["layers"]] == [1, 3, 2]
    assert (tmp_path / "stage" / "prune_report.md").is_file() and (tmp_path / "stage" / "prune_layers.png").is_file()


def test_magnitude_removes_the_weakest_units_and_equals_masking_them(tokenizer, tmp_path):
    """Plant weak heads and channels; pruning must remove exactly those, and the pruned model must
    compute what the unpruned one computes with those units silenced."""
    model = bert(tokenizer)
    weak_heads = {0: [2], 1: [0], 2: [3]}
    weak_channels = {0: [1, 5, 9, 60], 1: [0, 2, 4, 6], 2: [63, 62, 10, 11]}
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):
            for h in weak_heads[i]:
                cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                    lin.weight[cols] *= 0.01
                layer.attention.output.dense.weight[:, cols] *= 0.01
            layer.intermediate.dense.weight[weak_channels[i]] *= 0.01
            layer.output.dense.weight[:, weak_channels[i]] *= 0.01
    masked = clone(model)
    with torch.no_grad():
        for i, layer in enumerate(masked.bert.encoder.layer):
            for h in weak_heads[i]:
                layer.attention.output.dense.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
            layer.output.dense.weight[:, weak_channels[i]] = 0
    result = prune(model, tokenizer, tmp_path, heads={"keep": 3}, ffn={"keep": 60})
    report = json.loads((tmp_path / "stage" / "prune_report.json").read_text())
    assert {r["layer"]: r["heads_removed"] for r in report["layers"]} == weak_heads
    batch = inputs(tokenizer)
    torch.testing.assert_close(outputs(result.model, batch), outputs(masked, batch), rtol=1e-4, atol=1e-5)


def test_iterative_magnitude_equals_one_shot(tokenizer, tmp_path):
    # Magnitude scores of the remaining units do not change when others are removed, so n steps
    # must land on the same model as one (taylor is where steps matter).
    one = prune(bert(tokenizer), tokenizer, tmp_path / "a", heads=0.5, ffn=0.75)
    three = prune(bert(tokenizer), tokenizer, tmp_path / "b", heads=0.5, ffn=0.75, steps=3)
    batch = inputs(tokenizer)
    assert torch.equal(outputs(one.model, batch), outputs(three.model, batch))


def test_global_scope_takes_units_where_they_matter_least(tokenizer, tmp_path):
    model = bert(tokenizer)
    with torch.no_grad():  # layer 1's FFN is nearly silent: a global ranking should empty it first
        model.bert.encoder.layer[1].intermediate.dense.weight *= 0.01
        model.bert.encoder.layer[1].output.dense.weight *= 0.01
    result = prune(model, tokenizer, tmp_path, ffn={"keep": 2 * FFN}, heads={"keep": 6}, scope="global")
    shapes = layer_shapes(result.model)
    assert sum(s.ffn for s in shapes) == 2 * FFN and shapes[1].ffn == 1
    assert sum(s.heads for s in shapes) == 6 and min(s.heads for s in shapes) >= 1
    assert result.format == "prune"


def test_round_to_and_ratio_rounding(tokenizer, tmp_path):
    result = prune(bert(tokenizer), tokenizer, tmp_path, ffn={"ratio": 0.3}, round_to=16)
    # 64 * 0.7 = 44.8 -> 48 (nearest multiple of 16); uniform, so a plain transformers model.
    assert {s.ffn for s in layer_shapes(result.model)} == {48}
    assert result.format == "transformers" and result.model.config.intermediate_size == 48


# ---------------------------------------------------------------------------------------------
# Taylor importance


def write_corpus(tmp_path):
    lines = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) for i in range(40)]
    plain = tmp_path / "corpus.txt"
    plain.write_text("\n".join(lines[:20]) + "\n\n")
    packed = tmp_path / "corpus.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines[20:]) + "\n")
    return [str(plain), str(packed)]


def test_taylor_importance_runs_and_is_deterministic(tokenizer, tmp_path):
    corpus = write_corpus(tmp_path)
    params = dict(heads={"keep": 2}, ffn=0.5, importance="taylor", corpus=corpus, calibration_batches=2,
                  batch_size=4, seq_len=16, steps=2)
    first = prune(bert(tokenizer), tokenizer, tmp_path / "a", **params)
    second = prune(bert(tokenizer), tokenizer, tmp_path / "b", **params)
    report = json.loads((tmp_path / "a" / "stage" / "prune_report.json").read_text())
    assert report["importance"] == "taylor" and len(report["taylor_mlm_loss"]) == 2
    assert all(0 < loss < 20 for loss in report["taylor_mlm_loss"])
    assert [s.heads for s in layer_shapes(first.model)] == [2, 2, 2]
    batch = inputs(tokenizer)
    assert torch.equal(outputs(first.model, batch), outputs(second.model, batch))
    assert all(p.grad is None for p in first.model.parameters())
    # Taylor ranks by the loss, not by weight size: on this random model the choice differs from magnitude.
    magnitude = prune(bert(tokenizer), tokenizer, tmp_path / "c", heads={"keep": 2}, ffn=0.5)
    assert not torch.equal(outputs(first.model, batch), outputs(magnitude.model, batch))


# ---------------------------------------------------------------------------------------------
# Saving and loading


def test_uniform_ffn_pruning_reloads_with_plain_transformers(tokenizer, tmp_path):
    result = prune(bert(tokenizer), tokenizer, tmp_path, ffn=0.5)
    assert result.format == "transformers"
    save_bundle(result, tmp_path / "out")
    batch = inputs(tokenizer)
    plain = AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert plain.config.intermediate_size == FFN // 2
    assert torch.equal(outputs(plain, batch), outputs(result.model, batch))
    again = load_bundle(tmp_path / "out")
    assert torch.equal(outputs(again.model, batch), outputs(result.model, batch))


def test_prune_format_round_trip_through_compresso(tokenizer, tmp_path):
    result = prune(bert(tokenizer), tokenizer, tmp_path, heads={"keep": [3, 1, 2]}, ffn={"keep": [40, 20, 64]})
    assert result.format == "prune"
    PruneStrategy.save(result, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "compresso.json").read_text())["format"] == "prune"
    layout = json.loads((tmp_path / "out" / "prune_layout.json").read_text())
    assert [(x["heads"], x["ffn"]) for x in layout["layers"]] == [(3, 40), (1, 20), (2, 64)]
    assert not list((tmp_path / "out").glob("*.bin")) and not list((tmp_path / "out").glob("*.pt"))
    # A plain from_pretrained must refuse rather than load wrong shapes silently.
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
    loaded = load_bundle(tmp_path / "out")  # dispatches on compresso.json's format
    assert loaded.format == "prune" and type(loaded.model).__name__ == "BertForMaskedLM"
    batch = inputs(tokenizer)
    assert torch.equal(outputs(loaded.model, batch), outputs(result.model, batch))
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()


def test_prune_format_loads_under_a_task_head_and_as_a_bare_encoder(tokenizer, tmp_path):
    result = prune(bert(tokenizer), tokenizer, tmp_path, heads=0.5, ffn=0.25)
    PruneStrategy.save(result, tmp_path / "out")
    batch = inputs(tokenizer)
    with torch.no_grad():
        hidden = result.model.bert(**batch).last_hidden_state
    labels = ["neg", "neu", "poz"]
    task = load_bundle(tmp_path / "out", model_class=AutoModelForSequenceClassification, num_labels=3,
                       id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    assert type(task.model).__name__ == "BertForSequenceClassification" and task.model.num_labels == 3
    assert task.model.config.id2label == {0: "neg", 1: "neu", 2: "poz"}
    with torch.no_grad():
        assert torch.equal(task.model.bert(**batch).last_hidden_state, hidden)
        assert task.model(**batch).logits.shape == (2, 3)
    task_state = task.model.bert.state_dict()
    for name, tensor in result.model.bert.state_dict().items():
        assert torch.equal(task_state[name], tensor), name
    with pytest.raises(TypeError, match="not a BertConfig setting"):
        PruneStrategy.load(tmp_path / "out", AutoModelForSequenceClassification, num_lables=3)
    encoder = PruneStrategy.load(tmp_path / "out", AutoModel)
    assert type(encoder.model).__name__ == "BertModel"
    assert torch.equal(outputs(encoder.model, batch), hidden)
    # The fine-tuned task model is itself a pruned bundle: it saves and reloads with its head.
    PruneStrategy.save(task, tmp_path / "task")
    again = load_bundle(tmp_path / "task")
    assert type(again.model).__name__ == "BertForSequenceClassification"
    assert torch.equal(outputs(again.model, batch), outputs(task.model, batch))


def test_prune_format_refuses_weights_that_do_not_fit(tokenizer, tmp_path):
    result = prune(bert(tokenizer), tokenizer, tmp_path, heads=0.5)
    PruneStrategy.save(result, tmp_path / "out")
    layout_path = tmp_path / "out" / "prune_layout.json"
    layout = json.loads(layout_path.read_text())
    layout["layers"][1]["heads"] = 3
    layout_path.write_text(json.dumps(layout))
    with pytest.raises(ModelLoadError, match="do not fit the pruned layout"):
        load_bundle(tmp_path / "out")


def test_pruning_a_pruned_model_again(tokenizer, tmp_path):
    # A prune-format input whose second pruning is uniform FFN only is still not config-describable.
    first = prune(bert(tokenizer), tokenizer, tmp_path / "a", heads={"keep": [3, 3, 2]})
    PruneStrategy.save(first, tmp_path / "first")
    loaded = load_bundle(tmp_path / "first")
    second = prune(loaded.model, loaded.tokenizer, tmp_path / "b", ffn=0.5)
    assert second.format == "prune"
    assert [(s.heads, s.ffn) for s in layer_shapes(second.model)] == [(3, 32), (3, 32), (2, 32)]


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_other_families(tokenizer, tmp_path, family):
    torch.manual_seed(0)
    if family == "roberta":
        config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2, pad_token_id=0,
                               num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=66)
        model = RobertaForMaskedLM(config).eval()
    else:
        config = DistilBertConfig(vocab_size=len(tokenizer), dim=HIDDEN, n_layers=2, n_heads=HEADS, hidden_dim=FFN,
                                  max_position_embeddings=64, pad_token_id=0)
        model = DistilBertForMaskedLM(config).eval()
    batch = inputs(tokenizer)
    batch.pop("token_type_ids", None)
    uniform = prune(clone(model), tokenizer, tmp_path / "u", ffn=0.5)
    assert uniform.format == "transformers"
    save_bundle(uniform, tmp_path / "uniform")
    plain = AutoModelForMaskedLM.from_pretrained(tmp_path / "uniform").eval()
    assert torch.equal(outputs(plain, batch), outputs(uniform.model, batch))

    result = prune(model, tokenizer, tmp_path / "h", heads={"keep": [1, 3]}, ffn=0.25)
    assert [s.heads for s in layer_shapes(result.model)] == [1, 3]
    PruneStrategy.save(result, tmp_path / "out")
    loaded = load_bundle(tmp_path / "out")
    assert torch.equal(outputs(loaded.model, batch), outputs(result.model, batch))
    task = load_bundle(tmp_path / "out", model_class=AutoModelForSequenceClassification, num_labels=2)
    assert outputs(task.model, batch).shape == (2, 2)


# ---------------------------------------------------------------------------------------------
# Through the engine: stage folders in the prune format feed the next stage, also after a skip


def test_recipe_chains_pruning_stages_and_resumes_from_a_pruned_folder(tmp_path):
    from compresso.engine import Runner
    from compresso.recipe import load_recipe
    from tests.tiny import tiny_bert

    teacher = tiny_bert(tmp_path / "teacher", layers=2, hidden=32)  # 2 heads of 16, FFN 64

    def write(ffn_ratio):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            f"name: prune-chain\noutput_dir: {tmp_path / 'run'}\ndevice: cpu\n"
            f"teachers:\n  - name: t\n    model: {teacher}\nstudent:\n  model: t\n"
            "stages:\n  - strategy: prune\n    name: heads\n    params: {heads: {keep: [1, 2]}}\n"
            f"  - strategy: prune\n    name: ffn\n    params: {{ffn: {ffn_ratio}}}\n")
        return recipe

    def run(recipe):
        runner = Runner(load_recipe(recipe))
        runner.preflight()
        return runner.run()

    first = run(write(0.5))
    assert [o.status for o in first.stages] == ["ran", "ran"]
    stage = json.loads((tmp_path / "run" / "01-ffn" / "stage.json").read_text())
    assert stage["model"]["format"] == "prune" and stage["metrics"]["ffn"] == [32, 32]
    assert (tmp_path / "run" / "00-heads" / "prune_report.md").is_file()
    second = run(write(0.25))  # the first stage is reused: its pruned folder must load as the input
    assert [o.status for o in second.stages] == ["skipped", "ran"]
    final = load_bundle(tmp_path / "run" / "01-ffn")
    assert [(s.heads, s.ffn) for s in layer_shapes(final.model)] == [(1, 48), (2, 48)]
    assert [e.get("strategy") for e in final.lineage][-2:] == ["prune", "prune"]


# ---------------------------------------------------------------------------------------------
# The fixture teacher (12 layers, hidden 256, 4 heads, FFN 1024)


@pytest.mark.shared
def test_fixture_teacher_ffn50_heads25(shared_dir, tmp_path):
    teacher = load_bundle(shared_dir / "teachers" / "ro-bert-small-cased")
    config = teacher.model.config
    hidden, heads, ffn, layers = (config.hidden_size, config.num_attention_heads, config.intermediate_size,
                                  config.num_hidden_layers)
    head_dim = hidden // heads
    n_before = sum(p.numel() for p in teacher.model.parameters())
    batch = teacher.tokenizer(["Bucureștiul este capitala României.", "Vremea a fost frumoasă ieri."],
                              padding=True, return_tensors="pt")
    result = prune(teacher.model, teacher.tokenizer, tmp_path, heads=0.25, ffn=0.5)
    per_head = 3 * (head_dim * hidden + head_dim) + hidden * head_dim
    expected = n_before - layers * (heads // 4) * per_head - layers * (ffn // 2) * (2 * hidden + 1)
    assert sum(p.numel() for p in result.model.parameters()) == expected
    assert [(s.heads, s.ffn) for s in layer_shapes(result.model)] == [(heads - heads // 4, ffn // 2)] * layers
    PruneStrategy.save(result, tmp_path / "out")
    loaded = load_bundle(tmp_path / "out")
    torch.testing.assert_close(outputs(loaded.model, batch), outputs(result.model, batch), rtol=0, atol=0)
    from transformers import AutoModelForTokenClassification

    tagger = load_bundle(tmp_path / "out", model_class=AutoModelForTokenClassification, num_labels=17)
    assert outputs(tagger.model, batch).shape == (*batch["input_ids"].shape, 17)


def test_layout_helpers_for_other_formats(tokenizer, tmp_path):
    """What a format that stores a pruned model its own way (INT8) uses: record the layout, rebuild."""
    from compresso.strategies.prune import apply_saved_layout, write_layout_if_pruned

    uniform = prune(bert(tokenizer), tokenizer, tmp_path / "u", ffn=0.5)
    assert not write_layout_if_pruned(uniform.model, tmp_path)  # the config says it all
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=32))
    assert not write_layout_if_pruned(gpt2, tmp_path)
    assert not apply_saved_layout(bert(tokenizer), tmp_path)
    pruned = prune(bert(tokenizer), tokenizer, tmp_path / "h", heads={"keep": [2, 3, 1]}, ffn={"keep": [8, 16, 24]})
    assert write_layout_if_pruned(pruned.model, tmp_path)
    rebuilt = BertForMaskedLM(pruned.model.config).eval()
    assert apply_saved_layout(rebuilt, tmp_path)
    rebuilt.load_state_dict(pruned.model.state_dict())
    batch = inputs(tokenizer)
    assert torch.equal(outputs(rebuilt, batch), outputs(pruned.model, batch))
