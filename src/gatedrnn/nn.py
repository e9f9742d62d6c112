"""Recurrent layers and cells: torch.nn's API, parameters and numbers, for every cell family.

:class:`Recurrent` runs any registered :class:`~gatedrnn.CellFamily`; :class:`LSTM`, :class:`GRU` and
:class:`RNN` are the built-in families behind the same machinery, drop-in for torch.nn's.

Shape legend: T sequence length, B batch, I ``input_size``, H ``hidden_size``, R the size of h
(``proj_size`` if > 0, else H), L ``num_layers``, D 2 if ``bidirectional`` else 1.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cached_property, partial

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _checks as check
from .backends import check_backend_name, choose, load_layer_backend, reset_in_walk_order
from .backends.reference import recurrent_weights, zero_where
from .cells.family import TORCH_KEYS, CellFamily, LayerWeights, family_class
from .config import Noise

_TORCH_LAYER_FNS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}
_TORCH_CELL_FNS = {
    "LSTM": _VF.lstm_cell,
    "GRU": _VF.gru_cell,
    "RNN_TANH": _VF.rnn_tanh_cell,
    "RNN_RELU": _VF.rnn_relu_cell,
}
_SUFFIX = re.compile(r"_l\d+(_reverse)?$")
_COUNTS = {2: "two", 3: "three", 4: "four"}


def init_parameters(module: nn.Module, family: CellFamily, forget_bias: float | None) -> None:
    """Initialise ``module``'s own parameters with the family's rule (:meth:`CellFamily.init_parameter`,
    torch.nn's for the built-ins), in registration order so that a default module draws exactly
    torch.nn's numbers from the same seed; then the forget-gate bias set to ``forget_bias``
    (split as b_ih = value, b_hh = 0) when given."""
    with torch.no_grad():
        for name, weight in module.named_parameters(recurse=False):
            family.init_parameter(_SUFFIX.sub("", name), weight)
        if forget_bias is not None:
            k = family.gates.index("f")
            rows = slice(k * family.hidden_size, (k + 1) * family.hidden_size)
            for name, weight in module.named_parameters(recurse=False):
                if name.startswith("bias_ih"):
                    weight[rows] = forget_bias
                elif name.startswith("bias_hh"):
                    weight[rows] = 0.0


def check_forget_bias(owner: str, value: object, family: CellFamily) -> float | None:
    """``forget_bias`` checked: a number, with biases, for a family with a gate named ``"f"``."""
    value = check.forget_bias(owner, value, bias=family.bias, has_forget_gate=True)
    if value is not None and "f" not in family.gates:
        raise ValueError(
            f"{owner}: forget_bias={value} needs a forget gate 'f', but {family.describe()} "
            f"has gates {', '.join(family.gates)}"
        )
    return value


def unpack_states(owner: str, hx: object, names: tuple[str, ...]) -> tuple:
    """A user's state argument as a tuple: a tensor for one state, a tuple (or list) of one per name
    for several; a TypeError that names the expected form otherwise."""
    if len(names) == 1:
        if isinstance(hx, (tuple, list)):
            name = "" if names[0] == "hx" else f" {names[0]}"
            raise TypeError(f"{owner}: expected hx to be a Tensor{name}, got a {check.type_name(hx)}")
        return (hx,)
    if not isinstance(hx, (tuple, list)) or len(hx) != len(names):
        got = f"a {check.type_name(hx)} of length {len(hx)}" if isinstance(hx, (tuple, list)) else check.type_name(hx)
        count = _COUNTS.get(len(names), str(len(names)))
        raise TypeError(f"{owner}: expected hx to be a tuple ({', '.join(names)}) of {count} tensors, got {got}")
    return tuple(hx)


def pack_states(states: tuple[Tensor, ...]):
    """What forward returns for the states: the tensor of a one-state family, else the tuple."""
    return states[0] if len(states) == 1 else tuple(states)


def _onnx_dynamo_exporting() -> bool:
    """Whether ``torch.onnx.export(..., dynamo=True)`` is capturing the model (the TorchScript
    exporter, which traces, keeps the layers' own paths)."""
    return torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


def _capturing() -> bool:
    """Whether torch.compile or a tracer is capturing the call, where reading a tensor's values to
    choose a path would break or freeze the graph."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _under_cpu_autocast(input) -> bool:
    """Whether CPU autocast is on and ``input`` (a tensor or PackedSequence) is on the CPU."""
    data = input.data if isinstance(input, PackedSequence) else input
    return check.autocast_on("cpu") and isinstance(data, Tensor) and data.device.type == "cpu"


def _cast(value, dtype: torch.dtype):
    """``value`` (a tensor, PackedSequence, a tuple of them, or anything else) with its
    floating-point tensors in ``dtype``; everything else as it is."""
    if isinstance(value, PackedSequence):
        return value._replace(data=_cast(value.data, dtype))
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _outside_cpu_autocast(forward, input, hx, dtype: torch.dtype):
    """``forward(input, hx)`` with CPU autocast off, on the input and states in the parameters'
    ``dtype``, its results back in the input's dtype.

    Every backend then computes under CPU autocast as without it and returns the input's dtype: the
    loops would otherwise meet autocast's bfloat16 matrix products midway (the compiled ones run
    float32 and float64 only), torch.nn.LSTM's oneDNN kernel fails under it, and torch.nn.RNN would
    return autocast's dtype where GRU returns float32. The recurrence keeps its full precision, as
    autocast does for the reductions it lists. CUDA autocast is left to the backends.
    """
    given = (input.data if isinstance(input, PackedSequence) else input).dtype
    with torch.autocast("cpu", enabled=False):
        result = forward(_cast(input, dtype), _cast(hx, dtype))
    return _cast(result, given)


@dataclass
class _Prepared:
    """A forward call's input, normalised to time-major padded form. A packed input is padded only
    when :attr:`x` is first read: torch's own kernels take it packed."""

    like: Tensor  # (T, B, I): the input, or a zero-stride view with a packed input's shape, dtype and device
    packed: PackedSequence | None
    batched: bool
    ragged: bool = False  # some sequences of a packed batch are shorter than T (its batch sizes shrink)

    @cached_property
    def _padded(self) -> tuple[Tensor, Tensor]:
        """A packed input padded, and its lengths on the data's device (one call for both)."""
        padded, lengths = pad_packed_sequence(self.packed)
        return padded, lengths.to(padded.device)

    @property
    def x(self) -> Tensor:
        """(T, B, I) the time-major padded input."""
        return self.like if self.packed is None else self._padded[0]

    @property
    def lengths(self) -> Tensor | None:
        """(B,) int64 on x's device for a packed input; None for a padded one (every sequence T long)."""
        return None if self.packed is None else self._padded[1]


class Recurrent(nn.Module):
    r"""A multi-layer recurrent network of any cell family, with torch.nn's layer behaviour.

    Each layer runs the family's step (:meth:`CellFamily.step`) over time: stacked layers, both
    directions, dropout between layers, padded, packed (``PackedSequence``) and unbatched input, initial
    states as a tensor (a one-state family) or a tuple (several), final states returned the same way.

    Args:
        family: a registered family name (``"lstm"``, ``"gru"``, ``"rnn"`` or one of
            :func:`register_family`'s) or a :class:`CellFamily` subclass.
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype:
            as for :class:`torch.nn.LSTM`.

    Keyword args:
        backend: ``"auto"``, ``"torch"``, ``"reference"``, ``"cpu"`` or ``"triton"``
            (see :mod:`gatedrnn.backends`); a backend without a kernel for the family refuses it.
        zoneout: probability that each unit of each state keeps its previous value at each step
            (Krueger et al. 2016); random in training, its expectation in evaluation.
        recurrent_dropout: variational dropout of h_{t-1} where it enters the recurrence, one mask per
            sequence and layer (Gal & Ghahramani 2016); training only.
        forget_bias: initial bias of the family's forget gate ``"f"`` (b_ih's f rows; b_hh's f rows
            are zeroed); None leaves the family's initialisation.
        \*\*family_options: the family's own options (its ``option_defaults``).

    Parameters per layer k and direction: the family's (:meth:`CellFamily.parameter_shapes`), named
    ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (``..._reverse`` for the
    backward direction) and so on.

    Inputs: input, hx, reset
        - input: (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a PackedSequence.
        - hx: each state (L*D, B, size) or (L*D, size) unbatched: a tensor for one state, a tuple for
          several. Zeros if omitted.
        - reset (keyword-only, optional): a bool tensor on the input's device, (T, B), (B, T) with
          ``batch_first``, (T,) unbatched; for a PackedSequence (T, B) or (B, T) as
          ``pad_packed_sequence`` pads it (the original batch order). ``reset[t, b]`` restarts
          sequence b at step t from zero states (an episode boundary in a streamed batch): each
          sequence is cut before every marked step, and every layer and direction computes each
          piece as a sequence of its own, with no gradient across a cut. hx starts the first piece
          (a reverse direction: the last; a reset at step 0 replaces the forward direction's hx by
          zeros), and the final states are those after the last piece (a reverse direction: the
          first). Marks past a packed sequence's length are ignored. torch's kernels cannot restart
          sequences inside a call: ``backend="auto"`` then runs a layer backend, except where the
          only restarts are at step 0, which it turns into zero initial states.

    Outputs: output, h_n
        - output: (T, B, D*R) (batch first if set; a PackedSequence for packed input).
        - h_n: the final states, shaped as hx, after each sequence's last element.

    Example::

        >>> import torch, gatedrnn
        >>> gru = gatedrnn.Recurrent("gru", 10, 20, num_layers=2, reset_after=False)
        >>> output, h_n = gru(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    _family: str | None = None  # the built-in modules' fixed family

    def __init__(
        self,
        family: str | type[CellFamily],
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
        forget_bias: float | None = None,
        **family_options,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check.positive_int(owner, "input_size", input_size)
        self.hidden_size = check.positive_int(owner, "hidden_size", hidden_size)
        self.num_layers = check.positive_int(owner, "num_layers", num_layers)
        self.bias = check.layer_flag(owner, "bias", bias)
        self.batch_first = check.layer_flag(owner, "batch_first", batch_first)
        self.dropout = check.probability(owner, "dropout", dropout, allow_one=True)  # as torch.nn: 1 drops all
        self.bidirectional = check.layer_flag(owner, "bidirectional", bidirectional)
        self.zoneout = check.probability(owner, "zoneout", zoneout, allow_one=True)
        self.recurrent_dropout = check.probability(owner, "recurrent_dropout", recurrent_dropout, allow_one=False)
        self.backend = backend
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3 if self._family is not None else 2,
            )
        self.cell_config: CellFamily = family_class(family)(self.hidden_size, bias=self.bias, **family_options)
        self.proj_size = getattr(self.cell_config, "proj_size", 0)
        self.mode = self.cell_config.torch_mode or self.cell_config.name.upper()
        self.forget_bias = check_forget_bias(owner, forget_bias, self.cell_config)
        self._register_parameters(torch.device(device) if device is not None else None, dtype)
        self.reset_parameters()

    # ----- parameters -------------------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}{'_reverse' if direction == 1 else ''}"

    def _register_parameters(self, device, dtype) -> None:
        cfg = self.cell_config
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                layer_input = self.input_size if layer == 0 else cfg.output_size * self.num_directions
                names = []
                for key, shape in cfg.parameter_shapes(layer_input).items():
                    name = key + self._suffix(layer, direction)
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
                    names.append(name)
                    if key in TORCH_KEYS:
                        self._flat_weights_names.append(name)
                self._all_weights.append(names)

    def reset_parameters(self) -> None:
        """Re-draw every parameter with the family's initialisation (torch.nn's for the built-ins;
        see :func:`init_parameters`)."""
        init_parameters(self, self.cell_config, self.forget_bias)

    @property
    def _flat_weights(self) -> list[Tensor]:
        """torch.nn's weights for the fused kernels, in their order (per layer and direction:
        w_ih, w_hh, [b_ih, b_hh], [w_hr]). Read from the parameter table (every forward call asks;
        ``getattr`` goes through ``Module.__getattr__``), except a name it no longer holds, such as
        one a parametrization replaced."""
        table = self._parameters
        return [table[name] if name in table else getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per layer and direction, as torch.nn's ``all_weights``."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def layer_weights(self, layer: int, direction: int) -> LayerWeights:
        """The weights of one layer and direction keyed by their names without the suffix."""
        suffix = self._suffix(layer, direction)
        return {
            name[: -len(suffix)]: getattr(self, name)
            for name in self._all_weights[layer * self.num_directions + direction]
        }

    def flatten_parameters(self) -> None:
        """Make torch's weights one contiguous cuDNN buffer (as torch.nn does); a no-op off CUDA
        or for configurations cuDNN does not run."""
        weights = self._flat_weights
        if self.cell_config.torch_mode is None or not weights:
            return
        first = weights[0]
        if any(not w.is_cuda or w.dtype != first.dtype or not torch.backends.cudnn.is_acceptable(w) for w in weights):
            return
        if len({w.data_ptr() for w in weights}) != len(weights):
            return
        from torch.backends.cudnn import rnn as cudnn_rnn

        with torch.cuda.device_of(first), torch.no_grad():
            if torch._use_cudnn_rnn_flatten_weight():
                torch._cudnn_rnn_flatten_weight(
                    weights,
                    (4 if self.bias else 2) + (1 if self.proj_size > 0 else 0),
                    self.input_size,
                    cudnn_rnn.get_cudnn_mode(self.mode),
                    self.hidden_size,
                    self.proj_size,
                    self.num_layers,
                    self.batch_first,
                    bool(self.bidirectional),
                )

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self.flatten_parameters()
        return result

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend_name(value)

    # ----- forward ----------------------------------------------------------------------------

    @property
    def _param(self) -> Tensor:
        return self.weight_ih_l0

    def _prepare(self, input) -> _Prepared:
        owner = type(self).__name__
        p = self._param
        if isinstance(input, PackedSequence):
            check.float_tensor(owner, "input", input.data, p.dtype, p.device)
            if input.data.dim() != 2 or input.data.shape[-1] != self.input_size:
                raise check.InputError(
                    f"{owner}: expected PackedSequence data of shape (sum of lengths, input_size={self.input_size}), "
                    f"got {tuple(input.data.shape)}"
                )
            sizes = input.batch_sizes
            B = int(sizes[0])
            like = input.data[0].expand(len(sizes), B, self.input_size)
            return _Prepared(like, input, True, ragged=int(sizes[-1]) < B)
        check.float_tensor(owner, "input", input, p.dtype, p.device)
        if input.dim() not in (2, 3):
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise check.InputError(
                f"{owner}: expected input to be 3-D {layout} (batched) or 2-D (T, input_size) (unbatched), "
                f"got {input.dim()}-D input of shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise check.InputError(
                f"{owner}: expected input.size(-1) == input_size = {self.input_size}, "
                f"got {input.shape[-1]} (input shape {tuple(input.shape)})"
            )
        batched = input.dim() == 3
        x = input.unsqueeze(1) if not batched else (input.transpose(0, 1) if self.batch_first else input)
        return _Prepared(x, None, batched)

    def _state_legends(self) -> tuple[str, ...]:
        legends = self.__dict__.get("_legends")
        if legends is None:  # once per module: every call with hx asks
            legends = self.__dict__["_legends"] = tuple(f"{name}_0" for name in self.cell_config.states)
        return legends

    def _initial_states(self, hx, prep: _Prepared) -> tuple[Tensor, ...]:
        """Check the user's initial states and return them as a tuple of (L*D, B, size) tensors."""
        owner = type(self).__name__
        p = self._param
        B = prep.like.shape[1]
        LD = self.num_layers * self.num_directions
        sizes = self.cell_config.state_sizes
        if hx is None:
            return tuple(prep.like.new_zeros(LD, B, s) for s in sizes)
        legends = self._state_legends()
        states = unpack_states(owner, hx, legends)
        out = []
        for name, value, size in zip(legends, states, sizes):
            check.float_tensor(owner, name, value, p.dtype, p.device)
            expected = (LD, B, size) if prep.batched else (LD, size)
            if value.shape != expected:  # the message is built only for the error
                check.shape(owner, name, value, expected, self._state_shape_legend(size, prep.batched))
            out.append(value if prep.batched else value.unsqueeze(1))
        return tuple(out)

    def _state_shape_legend(self, size: int, batched: bool) -> str:
        """How an error message names the shape a state must have."""
        if batched:
            return f"(num_layers * num_directions, batch, {self._size_legend(size)})"
        return f"(num_layers * num_directions, {self._size_legend(size)}) for unbatched input"

    def _size_legend(self, size: int) -> str:
        """How an error message names a state's size: hidden_size, proj_size, or k * hidden_size."""
        if size == self.hidden_size:
            return "hidden_size"
        if size == self.proj_size:
            return "proj_size"
        return f"{size // self.hidden_size} * hidden_size" if size % self.hidden_size == 0 else str(size)

    def _regularised(self) -> bool:
        return self.zoneout > 0 or (self.training and self.recurrent_dropout > 0)

    def forward(self, input, hx=None, *, reset=None):
        if _under_cpu_autocast(input):
            return _outside_cpu_autocast(partial(self._forward, reset=reset), input, hx, self._param.dtype)
        return self._forward(input, hx, reset)

    def _forward(self, input, hx, reset=None):
        if _onnx_dynamo_exporting():
            return self._forward_for_onnx(input, hx, reset)
        prep = self._prepare(input)
        states = self._initial_states(hx, prep)
        restarts = self._restarts(reset, prep)
        if restarts is not None and self.backend == "auto" and not _capturing():
            if not bool(restarts.any()):  # nothing restarts in this call: a call without reset
                restarts = None
            elif not bool(restarts[1:].any()):
                states, restarts = self._restart_initial_states(states, restarts[0]), None
        T, B = prep.like.shape[:2]
        if T == 0 or B == 0:
            out = prep.like.new_zeros(T, B, self.num_directions * self.cell_config.output_size)
            finals = tuple(s.clone() for s in states)
        else:
            backend = choose(
                self.backend,
                self.cell_config,
                prep.like,
                self._regularised(),
                single_layer=self.num_layers == 1 and self.num_directions == 1,
                ragged=prep.ragged,
                reset=restarts is not None,
            )
            if backend == "torch":
                return self._forward_torch(input, states, prep)
            out, finals, _ = self.run_layers(prep.x, states, prep.lengths, backend, reset=restarts)
        return self._finish(out, tuple(finals), prep)

    def _restart_initial_states(self, states: tuple[Tensor, ...], first: Tensor) -> tuple[Tensor, ...]:
        """The initial states with the rows that restart at step 0 (``first`` (B,) bool) zeroed in every
        layer's forward direction: what those restarts do, so that a call whose only restarts are
        there (a stream restarting at the start of a chunk) runs as one without any, on every backend
        ``auto`` may choose, torch's kernels included (as does a call whose mask restarts nothing).
        A reverse direction meets step 0 last, after which nothing is restarted."""
        forward = torch.arange(self.num_layers * self.num_directions, device=first.device) % self.num_directions == 0
        return zero_where((forward[:, None] & first[None, :]).unsqueeze(-1), states)  # rows (L*D, B, 1)

    def _restarts(self, reset, prep: _Prepared) -> Tensor | None:
        """The caller's ``reset`` checked (a bool tensor of the input's layout and device, see the
        class docstring) and made time-major (T, B); None without one or with nothing to run (T or
        B zero)."""
        if reset is None:
            return None
        owner = type(self).__name__
        if not isinstance(reset, Tensor):
            raise TypeError(f"{owner}: expected reset to be a bool Tensor or None, got {check.type_name(reset)}")
        if reset.dtype != torch.bool:
            raise check.InputTypeError(
                f"{owner}: expected reset to be a bool tensor (True where a sequence restarts), got dtype {reset.dtype}"
            )
        T, B = prep.like.shape[:2]
        if not prep.batched:
            expected, legend = (T,), "(T,) for unbatched input"
        elif self.batch_first:
            expected, legend = (B, T), "(B, T) with batch_first"
        else:
            expected, legend = (T, B), "(T, B)"
        if prep.packed is not None:
            legend += " as pad_packed_sequence pads the PackedSequence"
        check.shape(owner, "reset", reset, expected, legend)
        if reset.device != prep.like.device:
            raise check.InputError(f"{owner}: reset is on {reset.device} but the input is on {prep.like.device}")
        if T == 0 or B == 0:
            return None
        if not prep.batched:
            return reset.unsqueeze(1)
        return reset.transpose(0, 1) if self.batch_first else reset

    def _finish(self, out: Tensor, finals: tuple[Tensor, ...], prep: _Prepared):
        """Turn time-major results back into the caller's layout (packed, batch_first, unbatched)."""
        if prep.packed is not None:
            output = _repack(out, prep.lengths, prep.packed)
        elif not prep.batched:
            output = out.squeeze(1)
            finals = tuple(f.squeeze(1) for f in finals)
        else:
            output = out.transpose(0, 1) if self.batch_first else out
        return output, pack_states(finals)

    def _forward_for_onnx(self, input, hx, reset=None):
        """Under ``torch.onnx.export(..., dynamo=True)`` of a model as it is: every layer a loop over
        time (:class:`gatedrnn.export.ExportableLayer` without ONNX's own operators), whose graph
        keeps T symbolic where the backends' choice would depend on it. :func:`gatedrnn.export_onnx`
        also maps the cells ONNX computes to its operators and checks the file. A ``reset`` is
        refused there: the exported graph has no input for it."""
        from .export import ExportableLayer  # export builds on this module

        return ExportableLayer(self, native=False)(input, hx, reset=reset)

    def forward_with_gates(self, input, hx=None, *, reset=None):
        """``forward(input, hx, reset=reset)`` on the reference loop, recording every layer's gates:
        returns (output, final states, gates) with ``gates[(layer, direction)][name]`` (T, B, H) for
        the family's :attr:`~CellFamily.trace_names`. The hook :func:`gatedrnn.inspect_gates` calls."""

        def record(input, hx):
            prep = self._prepare(input)
            states = self._initial_states(hx, prep)
            restarts = self._restarts(reset, prep)
            out, finals, traces = self.run_layers(
                prep.x, states, prep.lengths, backend="reference", record=True, reset=restarts
            )
            return (*self._finish(out, finals, prep), traces)

        if _under_cpu_autocast(input):  # as forward runs: the gates in the parameters' dtype
            return _outside_cpu_autocast(record, input, hx, self._param.dtype)
        return record(input, hx)

    def _forward_torch(self, input, states: tuple[Tensor, ...], prep: _Prepared):
        """Run torch's own fused kernels over the whole stack, exactly as torch.nn does; under
        torch.compile outside the compiled graph (:meth:`_forward_torch_eagerly`)."""
        if torch.compiler.is_compiling():
            return self._forward_torch_eagerly(input, states, prep)
        return self._run_torch_kernels(input, states, prep)

    # torch.compile does not trace torch's fused RNN kernels (dynamo leaves torch.nn.LSTM/GRU/RNN
    # to run eagerly); we do the same so compiled modules stay correct. (Eager calls skip the
    # wrapper, which costs a one-step call several microseconds.)
    @torch.compiler.disable
    def _forward_torch_eagerly(self, input, states: tuple[Tensor, ...], prep: _Prepared):
        return self._run_torch_kernels(input, states, prep)

    def _run_torch_kernels(self, input, states: tuple[Tensor, ...], prep: _Prepared):
        fn = _TORCH_LAYER_FNS[self.cell_config.torch_mode]
        hx = pack_states(states)
        args = (self._flat_weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if prep.packed is not None:
            permute = prep.packed.sorted_indices
            if permute is not None:
                hx = _map_state(hx, lambda s: s.index_select(1, permute))
            result = fn(prep.packed.data, prep.packed.batch_sizes, hx, *args)
            output = PackedSequence(result[0], prep.packed.batch_sizes, permute, prep.packed.unsorted_indices)
            hidden = result[1:] if len(result) > 2 else result[1]
            if prep.packed.unsorted_indices is not None:
                hidden = _map_state(hidden, lambda s: s.index_select(1, prep.packed.unsorted_indices))
            return output, hidden
        x = prep.x.transpose(0, 1) if (self.batch_first and prep.batched) else prep.x
        result = fn(x, hx, *args, self.batch_first and prep.batched)
        output, hidden = result[0], (result[1:] if len(result) > 2 else result[1])
        if not prep.batched:
            output = output.squeeze(1)
            hidden = _map_state(hidden, lambda s: s.squeeze(1))
        return output, hidden

    def _noise(self, x: Tensor) -> Noise | None:
        """Draw this call's regularisation masks for one layer and direction (None if none act)."""
        cfg = self.cell_config
        if not self._regularised():
            return None
        T, B = x.shape[:2]
        noise = Noise(zoneout=self.zoneout)
        if self.training and self.recurrent_dropout > 0:
            keep = 1.0 - self.recurrent_dropout
            noise.recurrent_mask = torch.bernoulli(x.new_full((B, cfg.output_size), keep)) / keep
        if self.training and self.zoneout > 0:
            sizes = cfg.state_sizes[: cfg.zoneout_states]
            masks = [torch.bernoulli(x.new_full((T, B, size), self.zoneout)) for size in sizes]
            noise.zoneout_h = masks[0]
            noise.zoneout_c = masks[1] if len(masks) > 1 else None
            noise.zoneout_rest = tuple(masks[2:])
        return noise

    def run_layers(
        self,
        x: Tensor,
        states: tuple[Tensor, ...],
        lengths: Tensor | None = None,
        backend: str = "reference",
        record: bool = False,
        reset: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, ...], dict[tuple[int, int], dict[str, Tensor]]]:
        """Run the stack one layer and direction at a time on a layer backend.

        Args:
            x: (T, B, I) time-major padded input.
            states: initial states, each (L*D, B, size).
            lengths: (B,) sequence lengths, or None when all are T.
            backend: a layer backend name (``"reference"``, ``"cpu"``, ``"triton"``).
            record: also return each layer's and direction's gate activations.
            reset: (T, B) bool, True where a sequence restarts from zero states, or None; each
                direction gets it in its walk order (:func:`gatedrnn.backends.reset_in_walk_order`).

        Returns:
            output (T, B, D*R), final states (each (L*D, B, size)) and the gate traces keyed by
            (layer, direction) (empty unless ``record``).
        """
        module = load_layer_backend(backend)
        D = self.num_directions
        resets = [None if reset is None else reset_in_walk_order(reset, lengths, d == 1) for d in range(D)]
        finals: list[tuple[Tensor, ...]] = []
        traces: dict[tuple[int, int], dict[str, Tensor]] = {}
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                k = layer * D + direction
                out, final, gates = module.run_layer(
                    self.cell_config,
                    layer_input,
                    tuple(s[k] for s in states),
                    self.layer_weights(layer, direction),
                    reverse=direction == 1,
                    lengths=lengths,
                    noise=self._noise(layer_input),
                    record=record,
                    reset=resets[direction],
                )
                outputs.append(out)
                finals.append(final)
                if record and gates is not None:
                    traces[(layer, direction)] = gates
            layer_input = torch.cat(outputs, dim=-1) if D == 2 else outputs[0]
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        stacked = tuple(torch.stack([f[i] for f in finals]) for i in range(len(states)))
        return layer_input, stacked, traces

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self._family is None:
            s = f"{self.cell_config.name!r}, " + s
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s + _variant_repr(self.cell_config, self)


def _variant_repr(cfg: CellFamily, module: nn.Module) -> str:
    """The family's options not at their default (those torch.nn's own repr shows aside), then the
    module's regularisation and backend."""
    shown_by_torch = ("proj_size", "nonlinearity") if getattr(module, "_family", None) else ("proj_size",)
    s = "".join(
        f", {k}={v!r}" for k, v in cfg.options.items() if v != cfg.option_defaults[k] and k not in shown_by_torch
    )
    for name in ("forget_bias", "zoneout", "recurrent_dropout"):
        value = getattr(module, name, None)
        if value:
            s += f", {name}={value}"
    if getattr(module, "backend", "auto") != "auto":
        s += f", backend={module.backend!r}"
    return s


def _map_state(state, fn):
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def _repack(out: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack (T, B, F) output in the original batch order into ``like``'s layout."""
    order = like.sorted_indices
    if order is not None:
        out = out.index_select(1, order)
        lengths = lengths.index_select(0, order)
    data = pack_padded_sequence(out, lengths.cpu(), enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class LSTM(Recurrent):
    r"""A multi-layer long short-term memory (LSTM) network, drop-in for :class:`torch.nn.LSTM`.

    For each element in the input sequence, each layer computes

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)
        \end{array}

    with :math:`h_t = W_{hr} h_t` when ``proj_size > 0``. The arguments, parameter names
    (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}``,
    ``..._reverse``), gate order (i, f, g, o), initialisation, inputs and outputs are torch.nn's.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first: as :class:`torch.nn.LSTM`.
        dropout, bidirectional, proj_size, device, dtype: as :class:`torch.nn.LSTM`.

    The keyword-only args are all off by default, where the module is numerically torch.nn's.

    Keyword args:
        variant: the cell: ``"vanilla"``, ``"peephole"``, ``"cifg"``, ``"nig"``, ``"nfg"``,
            ``"nog"``, ``"niaf"``, ``"noaf"``, ``"fgr"`` (see :mod:`gatedrnn.cells.lstm`).
            Variants without a gate have no rows for it (e.g. cifg's weight_ih is (3H, I), rows f, g, o);
            peephole adds ``weight_ch_l{k}`` (3H,), fgr adds ``weight_gg_l{k}`` (3H, 3H) and a third
            state, ``gates``: the previous step's (i, f, o) activations.
        layer_norm: layer-normalised gates and cell (Ba et al. 2016); adds ``ln_weight_ih_l{k}``,
            ``ln_bias_ih_l{k}``, ``ln_weight_hh_l{k}``, ``ln_bias_hh_l{k}`` (G*H,) and
            ``ln_weight_c_l{k}``, ``ln_bias_c_l{k}`` (H,).
        forget_bias: initial forget-gate bias (b_ih's f rows; b_hh's f rows are zeroed).
            Jozefowicz et al. 2015 recommend 1.0.
        zoneout: probability that each unit of h and c keeps its previous value at each step
            (Krueger et al. 2016); random in training, its expectation in evaluation.
        recurrent_dropout: variational dropout of h_{t-1} where it enters the recurrent matmul,
            one mask per sequence and layer (Gal & Ghahramani 2016); training only.
        backend: ``"auto"``, ``"torch"``, ``"reference"``, ``"cpu"`` or ``"triton"``
            (see :mod:`gatedrnn.backends`).

    Inputs: input, (h_0, c_0), reset
        - input: (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a PackedSequence.
        - h_0: (L*D, B, R) or (L*D, R) unbatched; c_0: (L*D, B, H) or (L*D, H). Zeros if omitted.
          ``fgr`` takes (h_0, c_0, gates_0), gates_0 (L*D, B, 3H) or (L*D, 3H).
        - reset (keyword-only, optional): bool (T, B), True where a sequence restarts from zero
          states (see :class:`Recurrent`).

    Outputs: output, (h_n, c_n)
        - output: (T, B, D*R) (batch first if set; a PackedSequence for packed input).
        - h_n: (L*D, B, R); c_n: (L*D, B, H): the states after each sequence's last element;
          ``fgr`` returns (h_n, c_n, gates_n), gates_n (L*D, B, 3H): the last step's (i, f, o), which
          continue the sequence when given back as hx.

    Example::

        >>> import torch, gatedrnn
        >>> lstm = gatedrnn.LSTM(10, 20, num_layers=2, variant="peephole")
        >>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape, c_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 20]))
    """

    _family = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        variant: str = "vanilla",
        layer_norm: bool = False,
        forget_bias: float | None = None,
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        owner = type(self).__name__
        super().__init__(
            "lstm",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            backend=backend,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            forget_bias=forget_bias,
            proj_size=proj_size,
            variant=variant,
            layer_norm=check.flag(owner, "layer_norm", layer_norm),
        )


class GRU(Recurrent):
    r"""A multi-layer gated recurrent unit (GRU) network, drop-in for :class:`torch.nn.GRU`.

    .. math::
        \begin{array}{ll}
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    Arguments, parameters (gate order r, z, n), inputs and outputs are torch.nn's. Keyword-only:
    ``layer_norm`` (adds ``ln_*`` parameters of shape (3H,)), ``reset_after=False`` for Cho et
    al.'s original :math:`n_t = \tanh(W_{in} x_t + b_{in} + W_{hn}(r_t \odot h_{t-1}) + b_{hn})`,
    ``zoneout`` (on h), ``recurrent_dropout`` and ``backend``, as for :class:`LSTM`.

    Shapes: input (T, B, I) / (B, T, I) / (T, I) / PackedSequence; h_0 and h_n (L*D, B, H);
    output (T, B, D*H).

    Example::

        >>> import torch, gatedrnn
        >>> gru = gatedrnn.GRU(10, 20, reset_after=False)
        >>> output, h_n = gru(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 20]), torch.Size([1, 3, 20]))
    """

    _family = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        layer_norm: bool = False,
        reset_after: bool = True,
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        owner = type(self).__name__
        super().__init__(
            "gru",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            backend=backend,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            layer_norm=check.flag(owner, "layer_norm", layer_norm),
            reset_after=check.flag(owner, "reset_after", reset_after),
        )


class RNN(Recurrent):
    r"""A multi-layer Elman RNN, drop-in for :class:`torch.nn.RNN`:
    :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})` (or ReLU).

    Arguments (``nonlinearity`` is the 4th positional one, as in torch.nn), parameters, inputs
    and outputs are torch.nn's; keyword-only ``zoneout``, ``recurrent_dropout`` and ``backend``
    as for :class:`LSTM`.

    Shapes: input (T, B, I) / (B, T, I) / (T, I) / PackedSequence; h_0 and h_n (L*D, B, H);
    output (T, B, D*H).

    Example::

        >>> import torch, gatedrnn
        >>> rnn = gatedrnn.RNN(10, 20, 2, "relu")
        >>> output, h_n = rnn(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    _family = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        self.nonlinearity = check.choice("RNN", "nonlinearity", nonlinearity, ("tanh", "relu"))
        super().__init__(
            "rnn",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            backend=backend,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            nonlinearity=nonlinearity,
        )


class SLSTM(Recurrent):
    r"""A multi-layer sLSTM network (Beck et al. 2024, xLSTM) with torch.nn's layer behaviour.

    .. math::
        \begin{array}{ll}
        \tilde\imath_t, \tilde f_t, \tilde z_t, \tilde o_t = W x_t + R h_{t-1} + b \\
        m_t = \max(\log f_t + m_{t-1}, \tilde\imath_t), \quad
        i'_t = e^{\tilde\imath_t - m_t}, \quad f'_t = e^{\log f_t + m_{t-1} - m_t} \\
        c_t = f'_t \odot c_{t-1} + i'_t \odot \tanh(\tilde z_t), \quad n_t = f'_t \odot n_{t-1} + i'_t \\
        h_t = \sigma(\tilde o_t) \odot c_t / n_t
        \end{array}

    with :math:`\log f_t = \operatorname{logsigmoid}(\tilde f_t)` (``forget_gate="sigmoid"``) or
    :math:`\tilde f_t` (``"exp"``), :math:`m_t = \tilde\imath_t` where :math:`n_{t-1} = 0`, and R
    block-diagonal over ``num_heads`` heads (see :mod:`gatedrnn.cells.slstm`). m is float32 (float64 in a
    float64 layer).

    Arguments are torch.nn.LSTM's without ``proj_size``; keyword-only ``num_heads`` (divides
    hidden_size), ``forget_gate``, ``backend``, ``zoneout`` (on h, c, n and m) and ``recurrent_dropout`` (on
    h_{t-1} in the recurrent product), as for :class:`Recurrent`. Parameters per layer: ``weight_ih_l{k}`` (4H, I)
    in gate order i, f, z, o, ``weight_hh_l{k}`` (num_heads, 4D, D) with D = H / num_heads,
    ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (4H,); initialised as the xlstm package does (forget-gate
    bias from 5 down to -7 across each head's units, zero recurrent weights).

    Shapes: input (T, B, I) / (B, T, I) / (T, I) / PackedSequence; hx = (h_0, c_0, n_0, m_0) and
    the returned (h_n, c_n, n_n, m_n) each (L*D, B, H), zeros if omitted; output (T, B, D*H).

    Example::

        >>> import torch, gatedrnn
        >>> slstm = gatedrnn.SLSTM(10, 8, num_heads=2)
        >>> output, (h_n, c_n, n_n, m_n) = slstm(torch.randn(5, 3, 10))
        >>> output.shape, m_n.shape, m_n.dtype
        (torch.Size([5, 3, 8]), torch.Size([1, 3, 8]), torch.float32)
    """

    _family = "slstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        num_heads: int = 4,
        forget_gate: str = "sigmoid",
        backend: str = "auto",
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            "slstm",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            backend=backend,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            num_heads=num_heads,
            forget_gate=forget_gate,
        )


class _MinimalRecurrent(Recurrent):
    """The layer arguments minGRU and minLSTM share (see :mod:`gatedrnn.cells.mingru`)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        activation: str = "g",
        mode: str = "auto",
        backend: str = "auto",
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            self._family,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            backend=backend,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            activation=activation,
            mode=mode,
        )


class MinGRU(_MinimalRecurrent):
    r"""A multi-layer minGRU network (Feng et al. 2024) with torch.nn's layer behaviour.

    .. math::
        z_t = \sigma(W_z x_t + b_z), \quad \tilde h_t = g(W_h x_t + b_h), \quad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    with :math:`g(v) = v + 1/2` for :math:`v \ge 0` and :math:`\sigma(v)` otherwise
    (``activation="identity"``: :math:`\tilde h_t` plain). The gates see x only, so a layer runs as a
    scan over time (``mode="parallel"``), step by step (``"sequential"``), or picks by length
    (``"auto"``); both compute the same h (:mod:`gatedrnn.cells.mingru`).

    Arguments are torch.nn.GRU's; keyword-only ``activation``, ``mode``, ``backend``, ``zoneout``
    and ``recurrent_dropout`` (as for :class:`Recurrent`; with no recurrent product, its mask acts
    on h_{t-1} where the step carries it over).
    Parameters per layer: ``weight_ih_l{k}`` (2H, I) in row order z, h and ``bias_ih_l{k}`` (2H,);
    no recurrent weights. Shapes: input (T, B, I) / (B, T, I) / (T, I) / PackedSequence;
    h_0 and h_n (L*D, B, H); output (T, B, D*H).

    Example::

        >>> import torch, gatedrnn
        >>> rnn = gatedrnn.MinGRU(10, 20, num_layers=2)
        >>> output, h_n = rnn(torch.randn(100, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([100, 3, 20]), torch.Size([2, 3, 20]))
    """

    _family = "mingru"


class MinLSTM(_MinimalRecurrent):
    r"""A multi-layer minLSTM network (Feng et al. 2024) with torch.nn's layer behaviour.

    .. math::
        \begin{array}{ll}
        f_t = \sigma(W_f x_t + b_f), \quad i_t = \sigma(W_i x_t + b_i), \quad \tilde h_t = g(W_h x_t + b_h) \\
        h_t = \frac{f_t}{f_t + i_t} \odot h_{t-1} + \frac{i_t}{f_t + i_t} \odot \tilde h_t
        \end{array}

    with g, ``activation``, ``mode``, ``backend``, ``zoneout`` and ``recurrent_dropout`` as for
    :class:`MinGRU`. Parameters per layer:
    ``weight_ih_l{k}`` (3H, I) in row order f, i, h and ``bias_ih_l{k}`` (3H,). Shapes as :class:`MinGRU`.

    Example::

        >>> import torch, gatedrnn
        >>> rnn = gatedrnn.MinLSTM(10, 20, mode="sequential")
        >>> output, h_n = rnn(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 20]), torch.Size([1, 3, 20]))
    """

    _family = "minlstm"


# ----- cells ----------------------------------------------------------------------------------


CELL_BACKENDS = ("auto", "torch", "reference")
"""What a cell's ``backend`` may be: torch's step function (the cells torch.nn computes; ``auto``
uses it there) or the reference step."""


class _CellBase(nn.Module):
    """What the cells share: torch.nn's RNNCellBase parameters plus the variants' extras."""

    _family = ""

    def __init__(self, input_size, hidden_size, bias, device, dtype, *, backend="auto", **options) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check.positive_int(owner, "input_size", input_size)
        self.hidden_size = check.positive_int(owner, "hidden_size", hidden_size)
        self.bias = check.cell_bias(bias)
        self.backend = backend
        self.cell_config: CellFamily = family_class(self._family)(self.hidden_size, bias=self.bias, **options)
        kw = {"device": device, "dtype": dtype}
        for key, shape in self.cell_config.parameter_shapes(self.input_size).items():
            self.register_parameter(key, nn.Parameter(torch.empty(shape, **kw)))
        if not self.bias:  # torch.nn's cells keep the names, as None
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.forget_bias = None

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        """One of :data:`CELL_BACKENDS`: the cpu and triton backends fuse whole sequences, so a
        cell naming one is refused here rather than run on the reference step unasked."""
        name = check_backend_name(value)
        if name not in CELL_BACKENDS:
            owner = type(self).__name__
            raise ValueError(
                f"{owner}: backend {name!r} runs whole sequences, not single steps; a cell takes one of "
                f"{', '.join(map(repr, CELL_BACKENDS))} (gatedrnn.{owner.removesuffix('Cell')}(..., "
                f"backend={name!r}) runs the {name} backend), got {name!r}"
            )
        self._backend = name

    def reset_parameters(self) -> None:
        """torch.nn's initialisation (see :func:`init_parameters`)."""
        init_parameters(self, self.cell_config, self.forget_bias)

    def _weights(self) -> LayerWeights:
        return {name: p for name, p in self.named_parameters(recurse=False) if p is not None}

    def _well_formed_batched_states(self, input, hx, weight: Tensor) -> tuple[Tensor, ...] | None:
        """The state tuple of the common streaming call, a (B, I) input with its state(s) given, each
        (B, size), all of the parameters' dtype and device, checked with a few cheap comparisons so that a
        step costs no more than torch.nn's; None for anything else, which :meth:`_check_step`'s
        explanatory checks then take."""
        if not (isinstance(input, Tensor) and input.dim() == 2 and input.shape[1] == self.input_size):
            return None
        dtype, device, batch = weight.dtype, weight.device, input.shape[0]
        if input.dtype != dtype or input.device != device:
            return None
        sizes = self.cell_config.state_sizes
        states = (hx,) if len(sizes) == 1 else hx
        if len(sizes) > 1 and not (isinstance(hx, tuple) and len(hx) == len(sizes)):
            return None
        for value, size in zip(states, sizes):
            if not (
                isinstance(value, Tensor)
                and value.shape == (batch, size)
                and value.dtype == dtype
                and value.device == device
            ):
                return None
        return states

    def _check_step(self, input, hx) -> tuple[Tensor, tuple[Tensor, ...], bool]:
        p = self._parameters["weight_ih"]
        states = self._well_formed_batched_states(input, hx, p)
        if states is not None:
            return input, states, True
        owner = type(self).__name__
        check.float_tensor(owner, "input", input, p.dtype, p.device)
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise check.InputError(
                f"{owner}: expected input of shape (batch, input_size={self.input_size}) or (input_size,), "
                f"got {tuple(input.shape)}"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        sizes = self.cell_config.state_sizes
        if hx is None:
            return x, tuple(x.new_zeros(x.shape[0], s) for s in sizes), batched
        names = self.cell_config.states if len(sizes) > 1 else ("hx",)
        states = unpack_states(owner, hx, names)
        out = []
        for name, value, size in zip(names, states, sizes):
            check.float_tensor(owner, name, value, p.dtype, p.device)
            expected = (x.shape[0], size) if batched else (size,)
            check.shape(owner, name, value, expected, "(batch, hidden_size)" if batched else "(hidden_size,)")
            out.append(value if batched else value.unsqueeze(0))
        return x, tuple(out), batched

    def forward(self, input: Tensor, hx=None):
        if _under_cpu_autocast(input):
            return _outside_cpu_autocast(self._forward, input, hx, self._parameters["weight_ih"].dtype)
        return self._forward(input, hx)

    def _forward(self, input: Tensor, hx):
        x, states, batched = self._check_step(input, hx)
        cfg = self.cell_config
        use_torch = self.backend in ("auto", "torch") and cfg.torch_mode is not None
        if self.backend == "torch" and cfg.torch_mode is None:
            choose("torch", cfg, x, False)  # raises the explanatory ValueError
        if use_torch:
            fn = _TORCH_CELL_FNS[cfg.torch_mode]
            hx_arg = pack_states(states)
            p = self._parameters  # direct lookups: Module.__getattr__ costs ~0.5 µs each per step
            result = fn(x, hx_arg, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
            new = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        else:
            w = self._weights()
            new = cfg.step(cfg.input_projection(x, w), cfg.initial_carry(states), recurrent_weights(w))[0]
        if not batched:
            new = tuple(s.squeeze(0) for s in new)
        return pack_states(tuple(new[: len(states)]))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":  # as torch.nn's RNNCellBase
            s += f", nonlinearity={self.nonlinearity}"
        return s + _variant_repr(self.cell_config, self)


class LSTMCell(_CellBase):
    r"""An LSTM cell, drop-in for :class:`torch.nn.LSTMCell`: one step of :class:`LSTM`'s equations.

    Keyword-only ``variant`` (all of :class:`LSTM`'s except ``"fgr"``, whose gate recurrence needs
    the previous step's gates: use :class:`LSTM` for it), ``layer_norm``, ``forget_bias`` and
    ``backend`` (``"auto"``, ``"torch"`` or ``"reference"``).

    Inputs: input (B, I) or (I,); hx = (h, c) each (B, H) or (H,), zeros if omitted.
    Outputs: (h', c'), each (B, H) or (H,).

    Example::

        >>> import torch, gatedrnn
        >>> cell = gatedrnn.LSTMCell(10, 20, variant="cifg")
        >>> h, c = cell(torch.randn(3, 10))
        >>> h.shape
        torch.Size([3, 20])
    """

    _family = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        variant: str = "vanilla",
        layer_norm: bool = False,
        forget_bias: float | None = None,
        backend: str = "auto",
    ) -> None:
        variant = check.variant("LSTMCell", variant)
        if variant == "fgr":
            raise ValueError(
                "LSTMCell: variant 'fgr' feeds the previous step's gates back and so needs the whole "
                "sequence; use gatedrnn.LSTM(..., variant='fgr') instead"
            )
        super().__init__(
            input_size,
            hidden_size,
            bias,
            device,
            dtype,
            backend=backend,
            variant=variant,
            layer_norm=check.flag("LSTMCell", "layer_norm", layer_norm),
        )
        self.forget_bias = check.forget_bias(
            "LSTMCell", forget_bias, bias=self.bias, has_forget_gate="f" in self.cell_config.gates
        )
        self.reset_parameters()


class GRUCell(_CellBase):
    r"""A GRU cell, drop-in for :class:`torch.nn.GRUCell`: one step of :class:`GRU`'s equations.

    Keyword-only ``layer_norm``, ``reset_after`` and ``backend``.
    Inputs: input (B, I) or (I,); hx (B, H) or (H,). Output: h' (B, H) or (H,).

    Example::

        >>> import torch, gatedrnn
        >>> gatedrnn.GRUCell(10, 20, reset_after=False)(torch.randn(3, 10)).shape
        torch.Size([3, 20])
    """

    _family = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        layer_norm: bool = False,
        reset_after: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            bias,
            device,
            dtype,
            backend=backend,
            layer_norm=check.flag("GRUCell", "layer_norm", layer_norm),
            reset_after=check.flag("GRUCell", "reset_after", reset_after),
        )
        self.reset_parameters()


class RNNCell(_CellBase):
    r"""An Elman RNN cell, drop-in for :class:`torch.nn.RNNCell`:
    :math:`h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})` (or ReLU).

    Inputs: input (B, I) or (I,); hx (B, H) or (H,). Output: h' (B, H) or (H,).

    Example::

        >>> import torch, gatedrnn
        >>> gatedrnn.RNNCell(10, 20, nonlinearity="relu")(torch.randn(3, 10)).shape
        torch.Size([3, 20])
    """

    _family = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        self.nonlinearity = check.choice("RNNCell", "nonlinearity", nonlinearity, ("tanh", "relu"))
        super().__init__(input_size, hidden_size, bias, device, dtype, backend=backend, nonlinearity=nonlinearity)
        self.reset_parameters()
