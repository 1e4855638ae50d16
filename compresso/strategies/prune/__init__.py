"""Structured pruning of BERT-family encoders: whole attention heads and FFN channels.

torch-pruning does the structural work: its dependency graph, traced once per step, finds every
tensor coupled to a head or an FFN channel (query/key/value rows and the attention output's
columns; the intermediate layer's rows and the output layer's columns), its group importance
estimators score them, and ``group.prune()`` cuts them. This package decides *how many* units
each layer keeps (ratio or absolute size, uniform or per layer, or ranked across layers), runs
the optional iterative schedule, and persists the result.

One file per job: ``params`` (the recipe schema), ``layout`` (where heads and FFN channels live,
per-layer shapes, ``prune_layout.json``), ``data`` (calibration text and gradients for taylor
importance), ``pruner`` (scoring and cutting through torch-pruning), ``saving`` (weights back into a
resized model), ``report`` (the stage's report files) and ``strategy`` (``PruneStrategy``).

Persistence: a model whose layers all keep every head and the same FFN width is still a plain
transformers model (``config.intermediate_size`` is updated) and is saved as such. Anything else
(heads removed, or per-layer widths) cannot be described by a transformers 5 config; it is saved
as ``format: prune``: ``save_pretrained`` weights (safetensors) and config, plus
``prune_layout.json`` with every layer's shapes, and ``load`` rebuilds the model from the config,
resizes each layer to the stored shapes and loads the weights strictly. A plain
``from_pretrained`` of such a folder fails loudly (the pruned shapes do not fit the config's: a
size-mismatch error), and the folder's ``HOW_TO_LOAD.md`` says how to load it.
"""

from __future__ import annotations

from compresso.strategies.prune.data import accumulate_gradients, mlm_batches, sample_documents
from compresso.strategies.prune.layout import (
    ARCHITECTURES,
    LAYOUT_FILE,
    Architecture,
    LayerShape,
    apply_saved_layout,
    architecture_of,
    config_describes,
    layer_shapes,
    read_layout,
    resize_to_layout,
    write_layout,
    write_layout_if_pruned,
)
from compresso.strategies.prune.params import PruneParams, PruneTarget
from compresso.strategies.prune.strategy import PruneStrategy

__all__ = ["PruneStrategy", "PruneParams", "PruneTarget", "Architecture", "ARCHITECTURES", "LAYOUT_FILE",
           "LayerShape", "architecture_of", "layer_shapes", "config_describes", "resize_to_layout", "write_layout",
           "write_layout_if_pruned", "read_layout", "apply_saved_layout", "sample_documents", "mlm_batches",
           "accumulate_gradients"]
