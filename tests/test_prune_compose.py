"""prune → distill (recovery, and a shallower student) → quantize through the engine, on tiny models."""

import json
import random

import torch
from safetensors.torch import load_file

from compresso.engine import Runner
from compresso.models import load_bundle
from compresso.recipe import load_recipe
from compresso.strategies.prune import layer_shapes
from tests.tiny import WORDS, tiny_bert



def test_prune_then_recovery_distillation_then_int8_keep_the_pruned_shapes(tmp_path):
    teacher = tiny_bert(tmp_path / "teacher", layers=2, hidden=32)  # 2 heads of 16, FFN 64
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(120)) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
name: prune-recover
output_dir: {tmp_path / 'run'}
device: cpu
teachers:
  - name: t
    model: {teacher}
student:
  model: t
stages:
  - strategy: prune
    params: {{heads: {{keep: [1, 2]}}, ffn: 0.5}}
  - strategy: distill
    name: recover
    params:
      teachers: [t]
      layers: all
      corpus: [{corpus}]
      heldout_documents: 8
      seq_len: 32
      batch_size: 4
      max_steps: 4
      checkpoint_every: 4
      lr: 1.0e-3
      warmup_ratio: 0.0
  - strategy: quantize
    params: {{backend: torchao, method: dynamic, compile: false, calibration: {{check_samples: 4}}}}
  - strategy: distill
    name: shallow
    input: prune
    params:
      teachers: [t]
      layers: [1]
      corpus: [{corpus}]
      heldout_documents: 8
      seq_len: 32
      batch_size: 4
      max_steps: 2
      checkpoint_every: 2
""")
    runner = Runner(load_recipe(recipe))
    runner.preflight()
    runner.run()
    run = tmp_path / "run"
    for stage in ("00-prune", "01-recover", "03-shallow"):
        assert json.loads((run / stage / "stage.json").read_text())["model"]["format"] == "prune", stage
    pruned = load_bundle(run / "00-prune")
    recovered = load_bundle(run / "01-recover")
    assert [(s.heads, s.ffn) for s in layer_shapes(recovered.model)] == [(1, 32), (2, 32)]
    # Recovery trained the pruned weights (same shapes, new values).
    before, after = load_file(run / "00-prune" / "model.safetensors"), load_file(run / "01-recover" / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert before[name].shape == after[name].shape == (16, 32) and not torch.equal(before[name], after[name])
    # INT8 of the recovered model: the pruned shapes travel with it and it reloads to the same outputs.
    assert (run / "02-quantize" / "prune_layout.json").is_file()
    int8 = load_bundle(run / "02-quantize")
    batch = pruned.tokenizer(["casa mare este frumos ."], return_tensors="pt")
    with torch.no_grad():
        reference = recovered.model(**batch).logits
        quantized = int8.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert quantized.shape == reference.shape
    assert (quantized - reference).norm() / reference.norm() < 0.2
    shallow = load_bundle(run / "03-shallow")
    assert [(s.heads, s.ffn) for s in layer_shapes(shallow.model)] == [(2, 32)]
    with torch.no_grad():
        assert torch.isfinite(recovered.model(**batch).logits).all()
        assert torch.isfinite(shallow.model(**batch).logits).all()
