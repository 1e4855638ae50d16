"""Model plumbing for distillation: encoder/head access, student construction, sanity checks.

The losses need the encoder's hidden states everywhere but vocabulary logits only at masked
positions (at a 50k vocabulary the output projection costs as much as several layers), so every
masked-LM is driven as ``encoder(...) -> hidden`` then ``head(hidden[masked])``. The MLM heads of
the common encoder families are listed here; anything else falls back to a full forward pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from compresso.strategy import StrategyError

# Models whose position ids start after the padding index (RoBERTa style) lose that many positions.
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "data2vec-text", "xmod", "roberta-prelayernorm",
                          "longformer", "xlm-roberta-xl"}


def is_masked_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForMaskedLM") and model.get_output_embeddings() is not None


def usable_positions(config) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if getattr(config, "model_type", "") in _POSITION_OFFSET_TYPES:
        limit -= (config.pad_token_id or 0) + 1
    return int(limit)


def _mlm_head(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, list[nn.Module]]:
    """The MLM head as a function of hidden states, and the modules that hold its parameters."""
    name = type(model).__name__
    if name == "DistilBertForMaskedLM":
        parts = [model.vocab_transform, model.vocab_layer_norm, model.vocab_projector]
        return (lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))), parts
    if name == "ElectraForMaskedLM":
        return (lambda h: model.generator_lm_head(model.generator_predictions(h))), \
            [model.generator_predictions, model.generator_lm_head]
    for attr in ("cls", "lm_head", "predictions"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            return head, [head]
    return None, []


def _allow_recompiles(limit: int) -> None:
    """Modules compiled in place share one compiled function (``nn.Module._call_impl``), so every
    layer and head of the student and the teachers, in training and evaluation, with the few batch
    shapes of a run (training, held-out, a short last batch), counts against one recompilation
    limit (8 by default); past it torch.compile silently runs eager code."""
    from torch import _dynamo

    for knob in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(_dynamo.config, knob):
            setattr(_dynamo.config, knob, max(getattr(_dynamo.config, knob), limit))


class MaskedLM:
    """Uniform access to a ``...ForMaskedLM``: ``encode`` -> hidden states, ``head`` -> logits."""

    def __init__(self, model: nn.Module):
        self.model = model
        prefix = getattr(model, "base_model_prefix", "")
        self.base = getattr(model, prefix, None) if prefix else None
        self._head, self._head_modules = _mlm_head(model)
        self.split = self.base is not None and self._head is not None
        self._graphs: EncoderGraphs | None = None
        self._train_graphs: TrainingGraphs | None = None

    def compile(self, encoder: bool = True) -> None:
        """``torch.compile`` the model in place (``encoder=False``: only the MLM head), region by region: each encoder layer (all layers of
        a model share one compiled graph, so a 12-layer teacher compiles as fast as one layer and
        the student's layers reuse the teachers' work where shapes and modes agree) and the MLM
        head. Module names and state dicts do not change. The layers see one shape per run when
        batches are fixed-width (``StreamConfig.fixed_width``); the head's row count (masked or
        aligned positions) changes every batch, so it is compiled for dynamic shapes. A model whose
        layer list is not found is compiled whole."""
        _allow_recompiles(64)
        if encoder:
            try:
                parent, attr = layer_list(self.model)
            except StrategyError:
                self.model.compile(dynamic=False)
                return
            for layer in getattr(parent, attr):
                layer.compile(dynamic=False)
        if self.split:
            self._head = torch.compile(self._head, dynamic=True)

    def uncompile(self) -> None:
        """Back to plain modules (the trained student leaves the stage as an ordinary model; later
        stages trace, quantize or prune it)."""
        for module in self.model.modules():
            module._compiled_call_impl = None
        self._head, _ = _mlm_head(self.model)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size")
                   else self.model.config.dim)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def to_float8(self) -> tuple[int, int]:
        """Run the linear layers of the encoder's transformer layers in float8, in place (torchao:
        each weight scaled per output row once, each activation per row on the fly; products
        accumulate in fp32 and come out in the model's dtype). For a frozen teacher: its matmuls
        then run at float8 speed (on Hopper about twice bf16's peak), but each activation's scaling
        costs a pass over it, so only wide layers gain (docs/performance.md). Embeddings and the MLM head
        stay as they are, so the soft targets keep the head's precision. A linear layer whose
        widths are not multiples of 16 (float8 matmuls need that) stays as it is. Returns (linear
        layers converted, linear layers in the transformer layers)."""
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        try:
            parent, attr = layer_list(self.model)
        except StrategyError:
            raise StrategyError(f"{type(self.model).__name__}: float8 teachers need the encoder's layer list, "
                                "which was not found; set teacher_float8: false") from None
        layers = getattr(parent, attr)

        def fits(module: nn.Module, fqn: str = "") -> bool:
            return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0

        linears = [m for m in layers.modules() if isinstance(m, nn.Linear)]
        converted = sum(fits(m) for m in linears)
        quantize_(layers, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fits)
        return converted, len(linears)

    def use_cuda_graphs(self, max_graphs: int = 4) -> None:
        """Replay this (frozen, eval-mode) model's encoder pass from CUDA graphs under inference
        mode: one graph per input shape, captured on first sight, at most ``max_graphs`` of them
        (other shapes run as usual). A teacher's pass is then one launch for the host instead of a
        Python call per layer and a launch per kernel (``EncoderGraphs``)."""
        self._graphs = EncoderGraphs(self._encode, max_graphs)

    def use_training_graphs(self, max_graphs: int = 4) -> None:
        """Replay this (trained) model's encoder pass, forward and backward, from CUDA graphs in
        training mode with gradients on: one pair of graphs per input shape (``TrainingGraphs``).
        Evaluation (eval mode or no gradients) runs the plain pass."""
        if not self.split:
            raise StrategyError(f"{type(self.model).__name__}: CUDA graphs of the student need its encoder "
                                "and MLM head as separate modules (BERT, RoBERTa, DistilBERT, ELECTRA, ...)")
        self._train_graphs = TrainingGraphs(self.base, max_graphs)

    def drop_graphs(self) -> None:
        """Forget captured graphs (their memory pools go with them)."""
        self._graphs = self._train_graphs = None

    def encode(self, ids: torch.Tensor, attention: torch.Tensor | None, all_hidden: bool = False):
        """``(last_hidden (B, L, H), hidden_states tuple or None, full_logits or None)``."""
        sdpa = getattr(self.model.config, "_attn_implementation", None) == "sdpa"
        if attention is not None and sdpa:
            # A ready 4-D boolean mask goes to SDPA as is; a 2-D one would make transformers check
            # on the host whether it can be dropped, a device sync in every forward pass.
            attention = attention.bool()[:, None, None, :]
        graphs = None
        if ids.is_cuda:
            if self._graphs is not None and torch.is_inference_mode_enabled():
                graphs = self._graphs
            elif self._train_graphs is not None and torch.is_grad_enabled() and self.model.training:
                graphs = self._train_graphs
        if graphs is None:
            return self._encode(ids, attention, all_hidden)
        if attention is None and sdpa:
            # Under capture transformers cannot look at a mask to drop it: some versions then build
            # an all-ones mask whose last dimension has stride 0, which no fused SDPA kernel takes,
            # so attention ran in the fp32 math kernel (H200, docs/performance.md). A real
            # (B, 1, 1, L) mask keeps the fused kernels.
            attention = torch.ones((ids.shape[0], 1, 1, ids.shape[1]), dtype=torch.bool, device=ids.device)
        return graphs(ids, attention, all_hidden)

    def _encode(self, ids: torch.Tensor, attention: torch.Tensor | None, all_hidden: bool):
        if self.split:
            out = self.base(input_ids=ids, attention_mask=attention, output_hidden_states=all_hidden,
                            return_dict=True)
            return out.last_hidden_state, (out.hidden_states if all_hidden else None), None
        out = self.model(input_ids=ids, attention_mask=attention, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1], out.hidden_states, out.logits

    def head(self, rows: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of (N, H) hidden states (only when ``split``)."""
        return self._head(rows)

    def head_parameters(self) -> list[nn.Parameter]:
        """The head's trainable parameters, each once (an output layer tied to the input embeddings
        is one parameter)."""
        params = {id(p): p for m in self._head_modules for p in m.parameters() if p.requires_grad}
        return list(params.values())

    def logits_at(self, hidden: torch.Tensor, flat_pos: torch.Tensor, full_logits: torch.Tensor | None):
        """Vocabulary logits at flat positions of a (B, L, H) hidden-state tensor."""
        if full_logits is not None:
            return full_logits.reshape(-1, full_logits.shape[-1]).index_select(0, flat_pos)
        return self._head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_pos))


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters (for one-line errors
    that wrap a library's long one)."""
    return (str(exc).strip().splitlines() or [""])[0][:limit]


def _graph_key(inputs: tuple, all_hidden: bool) -> tuple:
    """What a captured pass depends on besides the inputs' contents: their shapes and dtypes, the
    outputs asked for, the device, and autocast (the captured kernels' precision)."""
    return (tuple((tuple(t.shape), t.dtype) for t in inputs), all_hidden, inputs[0].device,
            torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))


@contextmanager
def _aside(device: torch.device) -> Iterator[None]:
    """Run on a side stream: warm-up before a capture, so lazy initialisation, library workspaces
    and torch.compile's compilation and autotuning stay outside the graph."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream(device).wait_stream(side)


@contextmanager
def _recording(graph: torch.cuda.CUDAGraph, what: str, switch: str, pool=None) -> Iterator[None]:
    """Capture into ``graph``; an operation that cannot be captured (a host sync, say) stops the
    stage with an error naming the switch that turns capture off. Thread-local mode: only this
    thread's CUDA calls are held to capture rules, the input pipeline's thread keeps pinning and
    copying batches meanwhile."""
    try:
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            yield
    except RuntimeError as exc:
        raise StrategyError(f"distill: capturing {what} failed ({type(exc).__name__}: {first_line(exc)}); "
                            f"set `{switch}: false` in this stage's params") from exc


class EncoderGraphs:
    """CUDA graphs of an inference-only encoder pass ``encode(ids, attention, all_hidden)``, keyed
    by input shapes. A shape's first call warms the pass up on a side stream (lazy initialisation,
    torch.compile's compilation and autotuning stay outside the graph), then captures it; every
    later call copies its inputs into the graph's static inputs and replays. The outputs are the
    graph's static tensors, overwritten by the next replay: callers take what they need from them
    before the next pass (the teacher pass gathers its targets at once and clones them)."""

    def __init__(self, encode: Callable, max_graphs: int):
        self.encode = encode
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, ids: torch.Tensor, attention: torch.Tensor | None, all_hidden: bool):
        key = _graph_key((ids,) if attention is None else (ids, attention), all_hidden)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.encode(ids, attention, all_hidden)
            entry = self.graphs[key] = self._capture(ids, attention, all_hidden)
        graph, static_ids, static_attention, out = entry
        static_ids.copy_(ids)
        if attention is not None:
            static_attention.copy_(attention)
        graph.replay()
        return out

    def _capture(self, ids: torch.Tensor, attention: torch.Tensor | None, all_hidden: bool) -> tuple:
        static_ids = ids.clone()
        static_attention = None if attention is None else attention.clone()
        with _aside(ids.device):
            for _ in range(2):
                self.encode(static_ids, static_attention, all_hidden)
        graph = torch.cuda.CUDAGraph()
        with _recording(graph, "a teacher's encoder pass in a CUDA graph", "teacher_cuda_graphs"):
            out = self.encode(static_ids, static_attention, all_hidden)
        return graph, static_ids, static_attention, out


class TrainingGraphs:
    """CUDA graphs of a trained encoder's pass (``encoder(input_ids=, attention_mask=,
    output_hidden_states=)``, a transformers base model): its forward and its backward to the
    encoder's trainable parameters, keyed by input shapes (at most ``max_graphs``; other shapes run the
    plain pass). For the host a training pass is then two launches instead of a Python call and a
    kernel launch per operation, forward and backward.

    A shape's first call warms the pass up on a side stream (three forward + backward rounds, so
    lazy initialisation and library workspaces stay outside the graphs), then captures the forward
    and, in the same memory pool, the backward. Replays copy the inputs (and later the incoming
    gradients) into the graphs' static tensors. The graphs' gradients are handed to autograd as
    clones, because autograd keeps a stealable gradient as ``.grad`` and the next replay would
    overwrite it (with gradient accumulation, wrong sums; torch.compile's cudagraph trees and
    ``make_graphed_callables`` both hand theirs over in place). The clone costs one copy of the
    encoder's gradients per step. Dropout draws from the CUDA generator, which replays advance.
    Capture runs in thread-local mode, so the input pipeline's thread may keep pinning. The
    captured pass runs on stand-ins of the parameters (``functional_call`` with detached tensors
    sharing their storage): autograd ties a parameter's gradient to the stream its accumulator was
    made on, and an accumulator made before the capture (a plain pass whose graph is still alive)
    would tie the captured backward to the default stream, which CUDA refuses."""

    def __init__(self, encoder: nn.Module, max_graphs: int):
        self.encoder = encoder
        self.names = [n for n, p in encoder.named_parameters() if p.requires_grad]
        self.params = [encoder.get_parameter(n) for n in self.names]
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, type[torch.autograd.Function]] = {}

    def __call__(self, ids: torch.Tensor, attention: torch.Tensor | None, all_hidden: bool):
        inputs = (ids,) if attention is None else (ids, attention)
        key = _graph_key(inputs, all_hidden)
        replay = self.graphs.get(key)
        if replay is None:
            if len(self.graphs) >= self.max_graphs:
                return self._plain(self.encoder, ids, attention, all_hidden)
            replay = self.graphs[key] = self._capture(inputs, all_hidden)
        outs = replay.apply(*inputs, *self.params)
        if all_hidden:
            return outs[-1], outs, None
        return outs[0], None, None

    @staticmethod
    def _plain(encoder, ids, attention, all_hidden):
        out = encoder(input_ids=ids, attention_mask=attention, output_hidden_states=all_hidden, return_dict=True)
        return out.last_hidden_state, (out.hidden_states if all_hidden else None), None

    def _capture(self, inputs: tuple, all_hidden: bool) -> type[torch.autograd.Function]:
        params = [p.detach().requires_grad_() for p in self.params]  # stand-ins, same storage
        stand_ins = dict(zip(self.names, params))

        def run(*args):
            out = torch.func.functional_call(
                self.encoder, stand_ins, (),
                {"input_ids": args[0], "attention_mask": args[1] if len(args) > 1 else None,
                 "output_hidden_states": all_hidden, "return_dict": True})
            return tuple(out.hidden_states) if all_hidden else (out.last_hidden_state,)

        static_in = tuple(t.clone() for t in inputs)
        with _aside(inputs[0].device):
            for _ in range(3):
                outs = run(*static_in)
                torch.autograd.grad(outs, params, grad_outputs=[torch.ones_like(o) for o in outs],
                                    allow_unused=True)
            del outs
        forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        what, switch = "the student's training pass in CUDA graphs", "student_cuda_graphs"
        with _recording(forward, what, switch):
            static_out = run(*static_in)
        with _recording(backward, what, switch, pool=forward.pool()):
            # the incoming-gradient buffers live in the graphs' pool (as make_graphed_callables has them)
            static_grad_out = tuple(torch.empty_like(o) for o in static_out)
            static_grads = torch.autograd.grad(static_out, params, grad_outputs=static_grad_out,
                                               allow_unused=True)
        n_in = len(inputs)

        class Replay(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                for static, given in zip(static_in, args[:n_in]):
                    if static.data_ptr() != given.data_ptr():
                        static.copy_(given)
                forward.replay()
                return tuple(o.detach() for o in static_out)

            @staticmethod
            @torch.autograd.function.once_differentiable
            def backward(ctx, *grads):
                for static, given in zip(static_grad_out, grads):
                    if static.data_ptr() != given.data_ptr():
                        static.copy_(given)
                backward.replay()
                return (None,) * n_in + tuple(None if g is None else g.clone() for g in static_grads)

        return Replay


def layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    """The encoder's ``nn.ModuleList`` of transformer layers: (parent module, attribute name)."""
    n = model.config.num_hidden_layers
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == n and name.split(".")[-1] in ("layer", "layers")]
    if len(found) != 1:
        raise StrategyError(f"cannot find the {n} encoder layers of {type(model).__name__} "
                            f"(candidates: {[f[0] for f in found] or 'none'}); choose `layers: all` to keep them all")
    path = found[0][0].split(".")
    parent = model.get_submodule(".".join(path[:-1])) if len(path) > 1 else model
    return parent, path[-1]


def default_layers(total: int, keep: int) -> list[int]:
    """``keep`` of ``total`` layers, evenly spaced with the first and last kept (12 -> 6: 0,2,4,7,9,11)."""
    if keep >= total:
        return list(range(total))
    if keep == 1:
        return [total - 1]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def choose_layers(model: nn.Module, layers, num_layers: int | None) -> list[int]:
    total = int(model.config.num_hidden_layers)
    if layers == "all":
        return list(range(total))
    if layers is not None:
        bad = [i for i in layers if i >= total]
        if bad:
            raise StrategyError(f"layers: index {bad[0]} does not exist; the input model has {total} layers "
                                f"(0..{total - 1})")
        return list(layers)
    if num_layers is not None and num_layers > total:
        raise StrategyError(f"num_layers: {num_layers} is more than the input model's {total} layers")
    return default_layers(total, num_layers or max(1, total // 2))


def build_student(model: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of ``model`` that keeps only ``layers`` (embeddings and MLM head copied whole)."""
    student = copy.deepcopy(model)
    if layers == list(range(model.config.num_hidden_layers)):
        return student
    if getattr(model.config, "model_type", "") == "albert":
        raise StrategyError("ALBERT shares one layer across depth; layer selection does not apply "
                            "(use `layers: all`)")
    parent, attr = layer_list(student)
    old = getattr(parent, attr)
    kept = nn.ModuleList([old[i] for i in layers])
    for new_index, layer in enumerate(kept):
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_index  # cache bookkeeping in recent transformers
    setattr(parent, attr, kept)
    student.config.num_hidden_layers = len(layers)
    if hasattr(student.config, "layer_types") and isinstance(student.config.layer_types, list):
        student.config.layer_types = [student.config.layer_types[i] for i in layers]
    return student


def check_teacher(name: str, model: nn.Module, tokenizer, rows: int) -> None:
    """A teacher must be a masked-LM with a fast tokenizer and room for ``rows``-token rows."""
    if not is_masked_lm(model):
        raise StrategyError(f"teacher {name!r} is a {type(model).__name__}, not a masked-LM "
                            f"(...ForMaskedLM): distillation needs its MLM head for soft targets; "
                            f"point the recipe at the pretrained masked-LM checkpoint")
    check_positions(f"teacher {name!r}", model, rows)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise StrategyError(f"teacher {name!r}: its tokenizer is not a fast tokenizer")
    if tokenizer.mask_token_id is None:
        raise StrategyError(f"teacher {name!r}: its tokenizer has no mask token")
    vocab = model.get_output_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise StrategyError(f"teacher {name!r}: tokenizer has {len(tokenizer)} tokens but the model's "
                            f"output layer only {vocab}")


def check_positions(what: str, model: nn.Module, rows: int) -> None:
    usable = usable_positions(model.config)
    if usable is not None and rows > usable:
        raise StrategyError(f"{what} accepts at most {usable} positions (max_position_embeddings), but rows "
                            f"are {rows} tokens long: lower seq_len / teacher_seq_len to {usable} or less")


class StudentModule(nn.Module):
    """The trained parameters: the student and, per teacher, optional hidden-state projections.

    This is the module DDP wraps, so its ``forward`` does all of the student's work: encoder
    once, MLM head at masked positions only.
    """

    def __init__(self, model: nn.Module, projections: dict[str, nn.Module]):
        super().__init__()
        self.model = model
        self.projections = nn.ModuleDict(projections)
        self.lm = MaskedLM(model)

    def forward(self, ids, attention, logit_pos, all_hidden: bool = False, head: bool = True):
        """Encoder once; vocabulary logits only at the flat positions ``logit_pos`` (``head=False``:
        the last hidden states at those positions instead, for a loss that applies the head itself)."""
        last, hidden, full_logits = self.lm.encode(ids, attention, all_hidden)
        if not head:
            return last, hidden, last.reshape(-1, last.shape[-1]).index_select(0, logit_pos)
        logits = self.lm.logits_at(last, logit_pos, full_logits)
        return last, hidden, logits


def make_projection(student_width: int, teacher_width: int) -> nn.Linear:
    """Student -> teacher width, linear without bias (a bias, under weight decay, could learn the
    teacher's mean direction and absorb the cosine loss); identity when square, so training starts
    from the plain loss."""
    proj = nn.Linear(student_width, teacher_width, bias=False)
    with torch.no_grad():
        if student_width == teacher_width:
            proj.weight.copy_(torch.eye(teacher_width))
        else:
            nn.init.normal_(proj.weight, std=student_width ** -0.5)
    return proj


def default_layer_map(kept: list[int], input_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student hidden state i (output of student layer i, 1-based) -> teacher hidden state.

    Student layer i is a copy of input layer ``kept[i-1]``; for a teacher as deep as the input,
    its output is matched to the output of that same layer, teacher hidden state kept[i-1] + 1
    ([0, 2, 4, 7, 9, 11] -> 1, 3, 5, 8, 10, 12). For a teacher of another depth, evenly spaced:
    round(i * teacher_layers / student_layers)."""
    n = len(kept)
    if teacher_layers == input_layers:
        return {i: kept[i - 1] + 1 for i in range(1, n + 1)}
    return {i: round(i * teacher_layers / n) for i in range(1, n + 1)}
