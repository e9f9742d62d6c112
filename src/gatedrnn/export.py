"""Deployment: ONNX export of every family and variant, and int8 inference on the CPU.

:func:`export_onnx` writes a model holding gatedrnn layers (a layer itself, or any module around
them) to an ONNX file with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), the batch
and the length dynamic (initial states included: their L*D is fixed, their batch the input's), and
checks the file in onnxruntime on other batch sizes and lengths when onnxruntime is installed. Each
:class:`~gatedrnn.Recurrent` layer is exported in one of two forms, chosen per layer by its family's
``kernels()["onnx"]``:

- ONNX's own operator where one computes the cell (onnxruntime runs these fast, and has int8 kernels
  for LSTM): ``LSTM`` (the plain cell, ONNX gate order i, o, f, c), ``LSTM`` with its peephole input
  P (the peephole variant), ``GRU`` with ``linear_before_reset`` 1 (torch's form) or 0
  (``reset_after=False``), ``RNN`` (tanh or relu); without layer norm or projection;
- everything else (layer norm, the projection, the other LSTM variants, sLSTM, minGRU, minLSTM, user
  families) as a loop over time, one ONNX ``Scan`` per layer and direction whose body is the family's
  own :meth:`~gatedrnn.CellFamily.step` (``torch.ops.higher_order.scan``, which the dynamo exporter
  writes as ``Scan``). The time dimension stays symbolic: the layer never branches on T.

:func:`exportable` is the model the exporter sees: a copy whose gatedrnn layers take these paths.
Export it yourself with ``torch.onnx.export(exportable(model), args, path, dynamo=True,
custom_translation_table=ONNX_TRANSLATIONS, dynamic_shapes=...)``; with ``native=False`` every layer
is a loop and no translation table is needed. ``torch.onnx.export(model, ..., dynamo=True)`` of the
model as it is also keeps T symbolic: each layer sees the export and runs as a loop (a layer-norm
layer then fixes the batch size, which :func:`export_onnx` keeps dynamic). The TorchScript exporter
(``dynamo=False``) unrolls loops over time and is not used. Refused, with an error saying why: a
``PackedSequence`` input (export the padded batch; an ONNX graph takes tensors) and zoneout or
recurrent dropout in training mode (random masks; export the model in ``eval()`` mode, where
zoneout is its expectation), and a ``reset=`` (the graph has no input for it: start a new sequence
with zero states in a call of its own). The LSTM ``fgr`` variant's loop carries and returns its
third state, the previous step's gates, as any other state.

A layer's graph names its inputs and outputs as torch.nn does (``"input"``, ``"h_0"``, ``"c_0"`` ->
``"output"``, ``"h_n"``, ``"c_n"``; :func:`default_names`), so that a serving program feeds and fetches
them by name; another module's graph keeps the exporter's names unless ``input_names`` and
``output_names`` are given.

The export needs onnx and onnxscript, the check and int8 onnxruntime too: ``pip install
"gatedrnn[onnx]"`` installs the three (:func:`require_onnx` says which is missing).

int8: :func:`quantize_int8` applies onnxruntime's dynamic quantization to an exported file: weights
of matrix products (``MatMul``, ``Gemm``) and of the ``LSTM`` operator stored as int8, activations
quantized per call. onnxruntime has int8 kernels for its LSTM operator only: a ``GRU`` or ``RNN``
operator stays float32, as do the recurrent products inside a loop's ``Scan`` body; the input
projections (one product over the whole sequence, outside the loop) and the layers around the
recurrence are quantized.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch._higher_order_ops.scan import scan
from torch.nn.utils.rnn import PackedSequence
from torch.utils import _pytree as pytree

from .backends.reference import layer_step, recurrent_weights
from .backends.reference import run_layer as reference_run_layer
from .cells.family import CellFamily, family_class
from .config import Noise
from .nn import Recurrent

__all__ = [
    "ONNX_OPERATORS",
    "ONNX_TRANSLATIONS",
    "ExportCheckError",
    "OnnxOperator",
    "default_names",
    "export_onnx",
    "exportable",
    "has_onnxruntime",
    "quantize_int8",
    "require_onnx",
    "session",
]


class ExportCheckError(RuntimeError):
    """The exported graph's results differ from PyTorch's on the check inputs."""


@dataclass(frozen=True)
class OnnxOperator:
    """How one of ONNX's recurrent operators computes a family's cell.

    ``op_type`` is the operator (``"LSTM"``, ``"GRU"``, ``"RNN"``); ``gate_order`` the family's
    row blocks of ``weight_ih``/``weight_hh``/biases in the order the operator takes them;
    ``peephole_order`` the blocks of ``weight_ch`` in the order of the operator's P input (None: no
    peepholes); ``attributes`` the operator's attributes besides ``hidden_size`` and ``direction``.
    """

    op_type: str
    gate_order: tuple[int, ...]
    peephole_order: tuple[int, ...] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        """Y and Y_h, and Y_c for the LSTM."""
        return 3 if self.op_type == "LSTM" else 2


ONNX_OPERATORS: dict[str, OnnxOperator] = {
    "LSTM": OnnxOperator("LSTM", (0, 3, 1, 2)),
    "LSTM_PEEPHOLE": OnnxOperator("LSTM", (0, 3, 1, 2), peephole_order=(0, 2, 1)),
    "GRU": OnnxOperator("GRU", (1, 0, 2), attributes={"linear_before_reset": 1}),
    "GRU_RESET_BEFORE": OnnxOperator("GRU", (1, 0, 2), attributes={"linear_before_reset": 0}),
    "RNN_TANH": OnnxOperator("RNN", (0,), attributes={"activations": ["Tanh"]}),
    "RNN_RELU": OnnxOperator("RNN", (0,), attributes={"activations": ["Relu"]}),
}
"""The names a family gives as its ``kernels()["onnx"]`` -> the ONNX operator that computes it.
torch's rows are i, f, g, o (LSTM; peepholes i, f, o), r, z, n (GRU); ONNX's i, o, f, c (peepholes
i, o, f) and z, r, h."""


# ----- the native operators: a custom op that the exporter writes as ONNX's LSTM / GRU / RNN ----------


def _onnx_operator(cfg: CellFamily) -> OnnxOperator | None:
    """The ONNX operator that computes ``cfg``, or None (it is exported as a loop)."""
    kernel = cfg.kernel("onnx")
    return None if kernel is None else ONNX_OPERATORS[kernel]


def _blocks(value: Tensor, order: tuple[int, ...]) -> Tensor:
    """``value``'s row blocks (len(order) of equal size) in the order ``order``."""
    return torch.cat([value.chunk(len(order))[k] for k in order])


def operator_weights(operator: OnnxOperator, directions: list[dict[str, Tensor]]) -> list[Tensor]:
    """The operator's weight inputs from one layer's parameters (one dict per direction), each
    stacked over the D directions: W (D, G*H, I), R (D, G*H, H), with biases B (D, 2*G*H), with
    peepholes P (D, 3*H); the gate blocks in the operator's order."""
    order = operator.gate_order
    stacks = [
        [_blocks(w["weight_ih"], order) for w in directions],
        [_blocks(w["weight_hh"], order) for w in directions],
    ]
    if "bias_ih" in directions[0]:
        stacks.append([torch.cat([_blocks(w["bias_ih"], order), _blocks(w["bias_hh"], order)]) for w in directions])
    if operator.peephole_order is not None:
        stacks.append([_blocks(w["weight_ch"], operator.peephole_order) for w in directions])
    return [torch.stack(s).detach().clone() for s in stacks]


@torch.library.custom_op("gatedrnn::onnx_native_layer", mutates_args=())
def native_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: list[Tensor],
    onnx_weights: list[Tensor],
    family: str,
    options: str,
    bias: bool,
    kernel: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, both directions, of a cell an ONNX operator computes (:data:`ONNX_OPERATORS`).

    Args:
        x: (T, B, I) the layer's input.
        h0, c0: (D, B, H) the initial h and c (c0 unused for a one-state family).
        weights: the layer's parameters, the family's names in registration order, for each
            direction in turn: what PyTorch computes with.
        onnx_weights: the same in the operator's layout (:func:`operator_weights`): what the
            ONNX graph computes with.
        family, options, bias: the registered family's name, its options as JSON, and ``bias``.
        kernel: the family's ``kernels()["onnx"]``.

    Returns:
        y (T, B, D*H), h_n (D, B, H), c_n (D, B, H) (c0 for a one-state family). In PyTorch it runs
        the reference loop; the exporter writes the ONNX operator (:func:`_native_layer_onnx`).
    """
    cfg = family_class(family)(h0.shape[-1], bias=bias, **json.loads(options))
    keys = list(cfg.parameter_shapes(x.shape[-1]))
    outputs, finals = [], []
    for d in range(h0.shape[0]):
        layer_weights = dict(zip(keys, weights[d * len(keys) : (d + 1) * len(keys)]))
        states = (h0[d], c0[d])[: len(cfg.states)]
        out, final, _ = reference_run_layer(cfg, x, states, layer_weights, reverse=d == 1)
        outputs.append(out)
        finals.append(final)
    c_n = torch.stack([f[1] for f in finals]) if len(cfg.states) == 2 else c0.clone()
    return torch.cat(outputs, dim=-1), torch.stack([f[0] for f in finals]), c_n


@native_layer.register_fake
def _(x, h0, c0, weights, onnx_weights, family, options, bias, kernel):
    T, B = x.shape[:2]
    D, H = h0.shape[0], h0.shape[-1]
    return x.new_empty(T, B, D * H), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


def _native_layer_onnx(x, h0, c0, weights, onnx_weights, family: str, options: str, bias: bool, kernel: str):
    """The ONNX graph of :func:`native_layer`: the operator on ``onnx_weights`` (initializers), its
    Y (T, D, B, H) laid out as (T, B, D*H)."""
    from onnxscript import opset18 as op

    operator = ONNX_OPERATORS[kernel]
    W, R, *rest = onnx_weights
    B = rest.pop(0) if bias else None
    inputs = [x, W, R, B, None, h0]
    if operator.op_type == "LSTM":
        inputs += [c0, rest.pop(0) if operator.peephole_order is not None else None]
    D = W.shape[0]
    # activations are listed per direction
    attributes = {k: v * D if k == "activations" else v for k, v in operator.attributes.items()}
    results = getattr(op, operator.op_type)(
        *inputs, hidden_size=R.shape[-1], direction="bidirectional" if D == 2 else "forward", **attributes
    )
    y = op.Reshape(op.Transpose(results[0], perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
    c_n = results[2] if operator.num_outputs == 3 else op.Identity(c0)
    return y, results[1], c_n


ONNX_TRANSLATIONS = {torch.ops.gatedrnn.onnx_native_layer.default: _native_layer_onnx}
"""``custom_translation_table`` for ``torch.onnx.export`` of an :func:`exportable` model with native
operators."""


# ----- the layer the exporter sees ---------------------------------------------------------------------


def scan_layer(
    cfg: CellFamily,
    x: Tensor,
    states: tuple[Tensor, ...],
    weights: dict[str, Tensor],
    noise: Noise | None,
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer and direction as a scan over time of the family's step (``reverse``: t = T-1 .. 0).

    x (T, B, I), states each (B, size) -> (output (T, B, R), final states): what the reference loop
    computes for full-length sequences (``noise``: zoneout's expectation, evaluation only).
    """
    x_proj = cfg.input_projection(x, weights)  # (T, B, G*H)
    step_weights = recurrent_weights(weights)

    def combine(carry, x_proj_t):
        new, _ = layer_step(cfg, x_proj_t, carry, step_weights, noise)
        return new, new[0].clone()

    # the carry starts from copies: a state that is a view of a graph input (a static L*D of 1 makes
    # the layer's slice of it the input itself) would alias the scan's input, which it refuses
    initial = tuple(c.clone() for c in cfg.initial_carry(states))
    carry, output = scan(combine, initial, x_proj, reverse=reverse)
    return output, tuple(carry[: len(cfg.states)])


def check_exportable(layer: Recurrent) -> None:
    """Raise a ValueError if ``layer`` draws random masks at each call (zoneout or recurrent dropout
    in training mode), which a graph cannot reproduce."""
    if layer.training and (layer.zoneout > 0 or layer.recurrent_dropout > 0):
        raise ValueError(
            f"{type(layer).__name__}: zoneout and recurrent dropout draw random masks in training mode, "
            f"which an ONNX graph cannot reproduce (zoneout={layer.zoneout}, recurrent_dropout="
            f"{layer.recurrent_dropout}); call model.eval() before exporting"
        )


def _is_packed(value) -> bool:
    return isinstance(value, PackedSequence)


class ExportableLayer(nn.Module):
    """A :class:`~gatedrnn.Recurrent` layer as the ONNX exporter should see it: the same parameters,
    arguments and results, each layer an ONNX operator (``native`` and the family names one) or a
    scan over time (:func:`scan_layer`), never a branch on T."""

    def __init__(self, layer: Recurrent, native: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.training = layer.training
        self.operator = _onnx_operator(layer.cell_config) if native and layer.zoneout == 0 else None
        if self.operator is not None:
            for k in range(layer.num_layers):
                directions = [layer.layer_weights(k, d) for d in range(layer.num_directions)]
                for i, value in enumerate(operator_weights(self.operator, directions)):
                    self.register_buffer(f"onnx_weight_{i}_l{k}", value)

    def forward(self, input, hx=None, *, reset=None):
        layer = self.layer
        owner = type(layer).__name__
        if reset is not None:
            raise ValueError(
                f"{owner}: an exported graph has no reset input and cannot restart sequences inside a call, "
                "got a reset mask (reset=...); export the model without it and start each new sequence from zero "
                "states (hx of zeros) in a call of its own"
            )
        if isinstance(input, PackedSequence):
            raise TypeError(
                f"{owner}: ONNX export takes a padded input tensor, got a PackedSequence (an ONNX graph "
                "has no packed sequences: export the padded batch, batch_first as the layer is built)"
            )
        check_exportable(layer)
        prep = layer._prepare(input)
        states = layer._initial_states(hx, prep)
        out, finals = self.run_layers(prep.x, states)
        return layer._finish(out, finals, prep)

    def run_layers(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x (T, B, I), states each (L*D, B, size) -> output (T, B, D*R), final states (L*D, B, size)."""
        layer = self.layer
        D = layer.num_directions
        finals: list[tuple[Tensor, ...]] = []
        for k in range(layer.num_layers):
            layer_states = tuple(s[k * D : (k + 1) * D] for s in states)
            if self.operator is not None:
                x, *final = self._operator_layer(x, layer_states, k)
                finals.append(tuple(final[: len(states)]))
            else:
                x, final = self._scan_layer(x, layer_states, k)
                finals.append(final)
            if layer.training and layer.dropout > 0 and k < layer.num_layers - 1:
                x = nn.functional.dropout(x, layer.dropout, training=True)
        return x, tuple(torch.cat([f[i] for f in finals]) for i in range(len(states)))

    def _operator_layer(self, x: Tensor, states: tuple[Tensor, ...], k: int) -> tuple[Tensor, Tensor, Tensor]:
        layer, cfg = self.layer, self.layer.cell_config
        weights = [w for d in range(layer.num_directions) for w in layer.layer_weights(k, d).values()]
        h0 = states[0]
        c0 = states[1] if len(states) > 1 else torch.zeros_like(h0)
        options = json.dumps(cfg.options, sort_keys=True)
        onnx_weights = [buffer for name, buffer in self.named_buffers() if name.endswith(f"_l{k}")]
        return torch.ops.gatedrnn.onnx_native_layer(
            x, h0, c0, weights, onnx_weights, cfg.name, options, cfg.bias, cfg.kernel("onnx")
        )

    def _scan_layer(self, x: Tensor, states: tuple[Tensor, ...], k: int) -> tuple[Tensor, tuple[Tensor, ...]]:
        layer = self.layer
        noise = Noise(zoneout=layer.zoneout) if layer.zoneout > 0 else None
        outputs, finals = [], []
        for d in range(layer.num_directions):
            # detached: the exporter fails to lower a scan over parameters that require grad
            weights = {key: w.detach() for key, w in layer.layer_weights(k, d).items()}
            out, final = scan_layer(layer.cell_config, x, tuple(s[d] for s in states), weights, noise, reverse=d == 1)
            outputs.append(out)
            finals.append(final)
        out = torch.cat(outputs, dim=-1) if len(outputs) == 2 else outputs[0]
        return out, tuple(torch.stack([f[i] for f in finals]) for i in range(len(states)))


def exportable(model: nn.Module, native: bool = True) -> nn.Module:
    """A copy of ``model`` for ``torch.onnx.export(..., dynamo=True)``: every
    :class:`~gatedrnn.Recurrent` in it (or ``model`` itself) wrapped in an :class:`ExportableLayer`,
    parameters without gradients (the exporter traces inference). ``native``: map the cells ONNX
    computes to its operators (export with ``custom_translation_table=ONNX_TRANSLATIONS``)."""
    if isinstance(model, Recurrent):
        return ExportableLayer(copy.deepcopy(model), native).requires_grad_(False)
    model = copy.deepcopy(model)
    for child in list(model.modules()):
        for child_name, grandchild in list(child.named_children()):
            if isinstance(grandchild, Recurrent):
                setattr(child, child_name, ExportableLayer(grandchild, native))
    return model.requires_grad_(False)


# ----- export and check ----------------------------------------------------------------------------------


def _as_args(example_input) -> tuple:
    """The positional arguments: ``example_input`` if a tuple of them, else the one input."""
    several = isinstance(example_input, tuple) and not isinstance(example_input, PackedSequence)
    return tuple(example_input) if several else (example_input,)


def _dynamic_shapes(args: tuple) -> tuple:
    """Every dimension of every tensor argument dynamic where the model allows (``Dim.AUTO``), except
    those of size 1, which are static: a size-1 example cannot stand for other sizes (it is the L*D of a
    one-layer, one-direction state; a batch or a length is traced with a size above 1)."""

    def dims(value):
        if not isinstance(value, Tensor):
            return None
        return {i: torch.export.Dim.STATIC if n == 1 else torch.export.Dim.AUTO for i, n in enumerate(value.shape)}

    return tuple(pytree.tree_map(dims, a, is_leaf=lambda v: v is None) for a in args)


def export_onnx(
    model: nn.Module,
    example_input,
    path: str | os.PathLike,
    *,
    native: bool = True,
    check: bool = True,
    opset_version: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> torch.onnx.ONNXProgram:
    """Export ``model`` to the ONNX file ``path``, every input dimension the model allows dynamic (the
    batch and the length; a state's L*D and the feature sizes are fixed numbers in the graph).

    Needs onnx and onnxscript, and onnxruntime for the check: ``pip install "gatedrnn[onnx]"`` (an
    ImportError saying so before any work otherwise). Prints nothing: the file is the result.

    Args:
        model: a gatedrnn layer or any module holding them; put it in ``eval()`` mode first.
        example_input: the input, or a tuple of the arguments (the input and initial states, for
            instance), to trace with. A dimension of size 1 stays fixed (a one-layer, one-direction
            state's L*D); give the batch and the length sizes above 1 and different from one
            another, so that no dimension is mistaken for a fixed one.
        path: where to write the ``.onnx`` file.
        native: export the cells ONNX computes as its ``LSTM``/``GRU``/``RNN`` operators (else every
            layer is a loop; see the module docstring).
        check: with onnxruntime installed, run the file on the example and on inputs whose dynamic
            dimensions are grown (other lengths and batch sizes) and compare with the model's own
            results; :class:`ExportCheckError` if they differ by more than 1e-5 + 1e-4 * ``|value|``.
            Without onnxruntime the check is skipped (``has_onnxruntime()`` tells).
        opset_version: the ONNX opset (default: the exporter's).
        input_names, output_names: the names of the graph's inputs (the tensors of ``example_input``
            in order, nested tuples flattened) and outputs (the tensors the model returns, in
            order), by which a serving program feeds and fetches them: a list of distinct,
            non-empty str, at most one per input (output), naming the first ones; a name may not be
            both an input's and an output's. They are the file's names: any other value of the
            graph that the exporter had given one of them is renamed. None: for a
            :class:`~gatedrnn.Recurrent` layer, :func:`default_names` (``"input"``, ``"h_0"``,
            ``"c_0"``, ... -> ``"output"``, ``"h_n"``, ``"c_n"``, ..., as torch.nn names them); for
            any other module, the exporter's names.

    Returns:
        The ``torch.onnx.ONNXProgram`` written to ``path``.

    Example (two GRU layers, each ONNX's GRU operator; a layer-norm GRU would be a Scan loop)::

        >>> import os, tempfile, onnx, torch, gatedrnn
        >>> gru = gatedrnn.GRU(8, 16, num_layers=2).eval()
        >>> path = os.path.join(tempfile.mkdtemp(), "gru.onnx")
        >>> program = gatedrnn.export_onnx(gru, torch.randn(5, 3, 8), path)  # checked on other sizes
        >>> [node.op_type for node in onnx.load(path).graph.node if node.op_type in ("GRU", "Scan")]
        ['GRU', 'GRU']
        >>> graph = onnx.load(path).graph  # with initial states given, a graph input "h_0" too
        >>> [value.name for value in graph.input], [value.name for value in graph.output]
        (['input'], ['output', 'h_n'])
    """
    require_onnx()
    args = _as_args(example_input)
    if any(isinstance(a, PackedSequence) for a in pytree.tree_leaves(args, is_leaf=_is_packed)):
        raise TypeError("export_onnx: expected padded input tensors, got a PackedSequence (export the padded batch)")
    for layer in model.modules():
        if isinstance(layer, Recurrent):
            check_exportable(layer)
    input_names, output_names = _name_lists(input_names, output_names)
    if isinstance(model, Recurrent):
        default_inputs, default_outputs = default_names(model, given_states=len(_tensors(args)) - 1)
        input_names = default_inputs if input_names is None else input_names
        output_names = default_outputs if output_names is None else output_names
    ready = exportable(model, native)
    with _quiet_exporter():
        program = torch.onnx.export(
            ready,
            args,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(args),
            custom_translation_table=ONNX_TRANSLATIONS if native else None,
            opset_version=opset_version,
            input_names=input_names,
            output_names=output_names,
            verbose=False,
        )
        _check_name_counts(program, input_names, output_names)
        _fix_static_dimensions(program)
        _make_names_unique(program, input_names, output_names)
        program.save(str(path))
    if check and has_onnxruntime():
        check_onnx(model, args, path)
    return program


def default_names(layer: Recurrent, given_states: int) -> tuple[list[str], list[str]]:
    """The graph input and output names :func:`export_onnx` gives a :class:`~gatedrnn.Recurrent`
    layer exported with ``given_states`` initial states (0: the input alone), as torch.nn names them:
    inputs ``"input"`` then the first ``given_states`` of the family's state names
    (``cell_config.states``) with the suffix ``_0``, outputs ``"output"`` then every state's name
    with the suffix ``_n``. An LSTM: ``["input", "h_0", "c_0"]`` -> ``["output", "h_n", "c_n"]``; an
    sLSTM's states are h, c, n, m, the LSTM ``fgr`` variant's h, c, gates.

        >>> import gatedrnn
        >>> gatedrnn.export.default_names(gatedrnn.LSTM(8, 16), given_states=2)
        (['input', 'h_0', 'c_0'], ['output', 'h_n', 'c_n'])
        >>> gatedrnn.export.default_names(gatedrnn.GRU(8, 16), given_states=0)
        (['input'], ['output', 'h_n'])
    """
    states = layer.cell_config.states
    if not 0 <= given_states <= len(states):
        raise ValueError(
            f"default_names: {type(layer).__name__} has {len(states)} states {list(states)}, "
            f"got given_states={given_states}"
        )
    return ["input", *(f"{s}_0" for s in states[:given_states])], ["output", *(f"{s}_n" for s in states)]


def _name_list(names, argument: str) -> list[str] | None:
    """``names`` as a list, checked: None, or a list (tuple) of distinct non-empty str."""
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(f"export_onnx: expected {argument} as a list of str, got {names!r}")
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"export_onnx: expected {argument} as a list of str, got {list(names)!r}")
    if not all(names):
        raise ValueError(f"export_onnx: expected non-empty {argument}, got {list(names)!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"export_onnx: expected distinct {argument}, got {list(names)!r} (repeated: {repeated})")
    return list(names)


def _name_lists(input_names, output_names) -> tuple[list[str] | None, list[str] | None]:
    """The checked ``input_names`` and ``output_names`` (:func:`_name_list`), which share no name."""
    inputs, outputs = _name_list(input_names, "input_names"), _name_list(output_names, "output_names")
    shared = sorted(set(inputs or ()) & set(outputs or ()))
    if shared:
        raise ValueError(
            f"export_onnx: expected input_names and output_names with no name in common, got {shared} in both"
        )
    return inputs, outputs


def _check_name_counts(program, input_names: list[str] | None, output_names: list[str] | None) -> None:
    """Raise a ValueError if more names were given than the graph has inputs or outputs (the exporter
    itself would drop the extra names)."""
    graph = program.model.graph
    for kind, names, values in (("input", input_names, graph.inputs), ("output", output_names, graph.outputs)):
        if names is not None and len(names) > len(values):
            raise ValueError(
                f"export_onnx: expected at most {len(values)} {kind}_names (one per graph {kind}), "
                f"got {len(names)}: {names}"
            )


def _graph_values(graph) -> list:
    """Every value an ONNX IR graph defines: its inputs, initializers and node outputs, and those of
    the graphs inside its nodes (a ``Scan`` body), recursively."""
    from onnx_ir import Attr, AttributeType

    values = [*graph.inputs, *graph.initializers.values()]
    for node in graph:
        values.extend(node.outputs)
        for attribute in node.attributes.values():
            if isinstance(attribute, Attr) and attribute.type == AttributeType.GRAPH:
                values.extend(_graph_values(attribute.value))
            elif isinstance(attribute, Attr) and attribute.type == AttributeType.GRAPHS:
                values.extend(v for subgraph in attribute.value for v in _graph_values(subgraph))
    return values


def _make_names_unique(program, input_names: list[str] | None, output_names: list[str] | None) -> None:
    """Give a fresh name (``name_1``, ...) to every value of the graph, other than the named inputs
    and outputs, that carries one of their names: ONNX names each value once, and the exporter's
    renaming does not look at the rest of the graph."""
    graph = program.model.graph
    named = [*graph.inputs[: len(input_names or ())], *graph.outputs[: len(output_names or ())]]
    taken = {value.name for value in named}
    values = _graph_values(graph)
    used = {value.name for value in values}
    for value in values:
        if value.name in taken and not any(value is n for n in named):
            suffix = 1
            while f"{value.name}_{suffix}" in used:
                suffix += 1
            value.name = f"{value.name}_{suffix}"
            used.add(value.name)


def _fix_static_dimensions(program) -> None:
    """Write the input dimensions the export found fixed (a feature size that meets a weight) as
    numbers in the graph's inputs, where ``Dim.AUTO`` left symbols: only batch and length stay
    symbolic."""
    from onnx_ir import Shape

    fixed = {str(s): int(r.lower) for s, r in program.exported_program.range_constraints.items() if r.lower == r.upper}
    for value in program.model.graph.inputs:
        if value.shape is not None:
            value.shape = Shape([fixed.get(str(d), d) for d in value.shape])


# ----- what an export needs, and the messages that are not the caller's business -------------------------

INSTALL = 'pip install "gatedrnn[onnx]"'
"""The command that installs what an export needs: onnx, onnxscript and onnxruntime."""


def _exporter_packages() -> None:
    """Import what torch's dynamo exporter needs (an ImportError where one is missing)."""
    import onnx  # noqa: F401
    import onnxscript  # noqa: F401


def _onnxruntime():
    """The onnxruntime module (an ImportError where it is not installed)."""
    import onnxruntime

    return onnxruntime


def require_onnx(*, runtime: bool = False) -> None:
    """Raise an ImportError naming :data:`INSTALL` unless the exporter's packages (onnx, onnxscript)
    and, with ``runtime`` (int8 quantization), onnxruntime are importable."""
    if runtime:
        _require("onnx, onnxscript and onnxruntime", _exporter_packages, _onnxruntime)
    else:
        _require("onnx and onnxscript", _exporter_packages)


def _require(needs: str, *loads) -> None:
    """Call each of ``loads``; an ImportError saying ``needs`` must be installed, with :data:`INSTALL`,
    at the first that fails."""
    for load in loads:
        try:
            load()
        except ImportError as e:
            raise ImportError(f"{needs} must be installed ({e}): {INSTALL}") from None


def has_onnxruntime() -> bool:
    """Whether onnxruntime is installed (:func:`export_onnx` checks its file only then)."""
    try:
        _onnxruntime()
    except ImportError:
        return False
    return True


class _DropMessages(logging.Filter):
    """A logging filter that drops the records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def _filtered_logger(name: str, *prefixes: str):
    """Within the block, the logger ``name`` (``""``: the root) drops the messages starting with one of
    ``prefixes``. A root logger without handlers gets a stderr handler meanwhile, so that a module-level
    ``logging.warning`` does not configure it (``basicConfig``) for good."""
    logger = logging.getLogger(name)
    drop = _DropMessages(*prefixes)
    stand_in = logging.StreamHandler() if logger is logging.getLogger() and not logger.handlers else None
    logger.addFilter(drop)
    if stand_in is not None:
        logger.addHandler(stand_in)
    try:
        yield
    finally:
        logger.removeFilter(drop)
        if stand_in is not None:
            logger.removeHandler(stand_in)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx.export without its notes on the torchvision operators it skips (torchvision absent)
    and the deprecation warning that torch's own pytree code raises inside it."""
    with (
        _filtered_logger("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        yield


def session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for the file ``path`` (``threads``: intra-op threads), which logs
    errors only. Needs onnxruntime alone (a serving machine need not have the exporter's packages)."""
    _require("onnxruntime", _onnxruntime)
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors: not onnxruntime's notes on how it optimised the graph
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _tensors(args) -> list[Tensor]:
    """The tensors of ``args`` (nested tuples, lists and dicts flattened), in order: the graph's inputs."""
    return [a for a in pytree.tree_leaves(tuple(args)) if isinstance(a, Tensor)]


def run_onnx(sess, args: Sequence) -> list:
    """Run an onnxruntime session on the tensors of ``args`` (in order, as exported: each fed by the
    name the graph gives its input in that position, whatever the names); numpy results, every output
    in the graph's order. A ValueError if ``args`` holds another number of tensors than the graph has
    inputs."""
    tensors, graph_inputs = _tensors(args), sess.get_inputs()
    if len(tensors) != len(graph_inputs):
        raise ValueError(
            f"run_onnx: expected {len(graph_inputs)} tensors for the graph's inputs "
            f"{[i.name for i in graph_inputs]}, got {len(tensors)}"
        )
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(graph_inputs, tensors)}
    return sess.run(None, feeds)


def grown_inputs(sess, args: tuple) -> tuple:
    """``args`` with each dimension the graph left symbolic (the batch and the length: the graph's
    fixed sizes, a state's L*D among them, are numbers) grown, by 1 for the first symbol, 2 for the
    second and so on (the same for every input that shares it), repeating the input's own values (so
    token ids stay valid)."""
    leaves, spec = pytree.tree_flatten(args)
    tensors = [i for i, v in enumerate(leaves) if isinstance(v, Tensor)]
    symbols: dict[str, int] = {}
    for graph_input, index in zip(sess.get_inputs(), tensors):
        value = leaves[index]
        for axis, dim in enumerate(graph_input.shape):
            if isinstance(dim, str):
                grow = symbols.setdefault(dim, len(symbols) + 1)
                size = value.shape[axis]
                times = -(-(size + grow) // size)
                value = value.repeat(*[times if a == axis else 1 for a in range(value.dim())])
                value = value.narrow(axis, 0, size + grow)
        leaves[index] = value
    return pytree.tree_unflatten(leaves, spec)


def check_onnx(model: nn.Module, args: tuple, path: str | os.PathLike, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Compare the ONNX file at ``path`` with ``model`` on ``args`` and on :func:`grown_inputs`;
    raise :class:`ExportCheckError` naming the largest difference if any exceeds ``atol + rtol * |value|``."""
    sess = session(path)
    for label, inputs in (("the example", args), ("other lengths and batch sizes", grown_inputs(sess, args))):
        with torch.no_grad():
            expected = [t for t in pytree.tree_leaves(model(*inputs)) if isinstance(t, Tensor)]
        got = run_onnx(sess, inputs)
        for k, (e, g) in enumerate(zip(expected, got)):
            e = e.detach().cpu()
            g = torch.from_numpy(g)
            if e.shape != g.shape:
                raise ExportCheckError(
                    f"{path}: on {label}, output {k} has shape {tuple(g.shape)} in onnxruntime, "
                    f"expected {tuple(e.shape)} as PyTorch gives"
                )
            error = (g.to(e.dtype) - e).abs()
            if (error > atol + rtol * e.abs()).any():
                raise ExportCheckError(
                    f"{path}: on {label}, output {k} differs from PyTorch's by up to {error.max().item():.3g} "
                    f"(allowed {atol} + {rtol} * |value|)"
                )


def example_input(model: nn.Module, batch: int = 2, length: int = 7) -> Tensor:
    """An input to trace a :class:`gatedrnn.models.SequenceModel` with (batch first): random token
    ids (B, T) for a model with an embedding, else (B, T, I) values."""
    generator = torch.Generator().manual_seed(0)
    if model.embedding is not None:
        return torch.randint(0, model.embedding.num_embeddings, (batch, length), generator=generator)
    return torch.randn(batch, length, model.rnn.input_size, generator=generator)


# ----- int8 -------------------------------------------------------------------------------------------------


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Write to ``target`` the ONNX file ``source`` with int8 weights (onnxruntime's dynamic
    quantization, signed int8 weights): what it quantizes is in the module docstring. Needs
    onnxruntime (:data:`INSTALL`); prints nothing."""
    require_onnx(runtime=True)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # its advice to pre-process the model (shape inference for static-shape models) does not apply here
    with _filtered_logger("", "Please consider to run pre-processing", "Please consider pre-processing"):
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
