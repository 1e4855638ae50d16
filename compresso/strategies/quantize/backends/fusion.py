"""One INT8 matrix product instead of several that read the same input (a layer's query, key and
value projections), applied to the copy of INC's converted graph that inductor compiles.

At batch 1 × 128 tokens a BERT layer's three 256 × 256 projections are small products whose fixed
costs (kernel call, blocking, threads) weigh as much as their arithmetic; one 256 × 768 product
does the same work in less time (oneDNN int8 linear on the 6-layer student: 74 µs instead of 109 µs
of CPU time per layer with AVX-512 VNNI, 239 instead of 276 µs capped at AVX2, one thread). The
weights are quantized per output channel, so the concatenated weight has the very int8 values and
scales of its parts: the outputs are the same numbers, split afterwards.
"""

from __future__ import annotations

import copy
import operator
from collections import defaultdict

import torch

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


def _weight_parts(linear: torch.fx.Node):
    """(weight, scale, zero point get_attr nodes, quantize node, dequantize node) of a linear whose
    weight is an int8 per-channel quantize → dequantize of a stored fp32 tensor, else None."""
    if len(linear.args) < 2:
        return None
    deq = linear.args[1]
    if not (isinstance(deq, torch.fx.Node) and deq.target == qd.dequantize_per_channel.default and len(deq.users) == 1):
        return None
    q = deq.args[0]
    if not (isinstance(q, torch.fx.Node) and q.target == qd.quantize_per_channel.default and len(q.users) == 1):
        return None
    weight, scale, zero = q.args[:3]
    if not all(isinstance(n, torch.fx.Node) and n.op == "get_attr" for n in (weight, scale, zero)):
        return None
    if q.args[3] != 0 or deq.args[1:] != q.args[1:]:  # per output channel, dequantized with its own parameters
        return None
    return weight, scale, zero, q, deq


def _input_key(linear: torch.fx.Node):
    """The quantized tensor and parameters a linear's input is dequantized from (None: not such an input)."""
    x = linear.args[0]
    if not (isinstance(x, torch.fx.Node) and x.target == qd.dequantize_per_tensor.default):
        return None
    return (x.args[0], *x.args[1:], tuple(sorted(x.kwargs.items())))


def _attr(gm: torch.fx.GraphModule, target: str) -> torch.Tensor:
    value = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def concat_shared_input_linears(graph: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, int]:
    """A new GraphModule (sharing ``graph``'s tensors; ``graph`` itself is left as it is) in which
    linears with int8 per-channel weights that read the same quantized input are one linear followed
    by a split; and how many groups were merged."""
    new_graph = torch.fx.Graph()
    new_graph._codegen = copy.deepcopy(graph.graph._codegen)  # torch.export's input/output flattening
    output = new_graph.graph_copy(graph.graph, {})
    new_graph.output(output)
    gm = torch.fx.GraphModule(graph, new_graph)
    groups: dict[tuple, list[torch.fx.Node]] = defaultdict(list)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == aten.linear.default and not node.kwargs:
            key = _input_key(node)
            if key is not None and _weight_parts(node) is not None:
                groups[key].append(node)
    merged = 0
    for linears in groups.values():
        biases = [n.args[2] if len(n.args) > 2 else None for n in linears]
        if len(linears) < 2 or (any(b is None for b in biases) and not all(b is None for b in biases)) \
                or any(b is not None and not (isinstance(b, torch.fx.Node) and b.op == "get_attr") for b in biases):
            continue
        parts = [_weight_parts(n) for n in linears]
        weights = [_attr(gm, p[0].target) for p in parts]
        if len({w.shape[1:] for w in weights}) != 1 or len({p[3].args[3:] for p in parts}) != 1:
            continue
        tensors = {"weight": torch.cat(weights), "scale": torch.cat([_attr(gm, p[1].target) for p in parts]),
                   "zero": torch.cat([_attr(gm, p[2].target) for p in parts])}
        if biases[0] is not None:
            tensors["bias"] = torch.cat([_attr(gm, b.target) for b in biases])
        first = linears[0]
        nodes = {}
        with gm.graph.inserting_before(first):
            for name, value in tensors.items():
                attr = f"_concat_linear_{merged}_{name}"
                gm.register_buffer(attr, value)
                nodes[name] = gm.graph.get_attr(attr)
            q_args = parts[0][3].args[3:]
            q = gm.graph.call_function(qd.quantize_per_channel.default,
                                       (nodes["weight"], nodes["scale"], nodes["zero"], *q_args))
            deq = gm.graph.call_function(qd.dequantize_per_channel.default,
                                         (q, nodes["scale"], nodes["zero"], *q_args), dict(parts[0][4].kwargs))
            fused = gm.graph.call_function(aten.linear.default, (first.args[0], deq, nodes.get("bias")))
            split = gm.graph.call_function(aten.split_with_sizes.default, (fused, [w.shape[0] for w in weights], -1))
            for i, linear in enumerate(linears):
                piece = gm.graph.call_function(operator.getitem, (split, i))
                linear.replace_all_uses_with(piece)
        for linear in linears:
            gm.graph.erase_node(linear)
        merged += 1
    if merged:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return gm, merged

