"""The CPU backend: fused forward and backward through time, one layer and direction per call
(the ``run_layer`` contract of :mod:`gatedrnn.backends.reference`).

Per layer and direction:

:class:`.function.Recurrence`, a ``torch.autograd.Function``, whose forward

1. computes the input part of all steps as one matmul, ``x W_ih^T`` (T, B, G*H) (layer-normalised
   per gate block if configured), with every bias that only adds to a pre-activation folded in
   (``b_ih + b_hh`` and the layer-norm shifts; the GRU's n-block recurrent shift stays apart when
   the reset multiplies it);
2. loops over time doing only the recurrent matmul (into preallocated buffers) and the pointwise
   gate math, saving the gate activations, the carried states and the layer-norm statistics;

and whose backward loop applies the hand-derived step gradients (see :mod:`.lstm`, :mod:`.gru`,
:mod:`.rnn`), then forms every weight gradient as one matmul or reduction over all steps. That
backward is first order; where its gradients must be differentiable again (``create_graph=True``:
second derivatives, gradient penalties), it replays the layer on the reference loop from the same
inputs (:func:`module_weights` undoes :func:`prepare`; the plain GRU over full lengths on torch's
kernel, :func:`replay_for`) and differentiates that instead.

Restarts (``reset``: the carry of a sequence zeroed before a step) run inside every kernel's
loop, forward and backward (see :mod:`.function`, :mod:`.slstm`, :mod:`.minimal`); a call whose
mask restarts nothing runs the plain path.

The LSTM's gate rows are reordered inside the backend so that the sigmoid gates (those of i, f, o
that the variant has) come first and g last: one sigmoid and one tanh per step cover all gates,
and ``fgr``'s (i, f, o) block is contiguous, in the order of the family's ``gates`` state. Runs
every configuration of a family that names one of its kernels (:data:`_KERNELS`; the LSTM, GRU
and RNN name theirs) on CPU tensors; gate recording (:func:`gatedrnn.inspect_gates`) runs on the
reference loop.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from types import ModuleType

import torch
from torch import _VF, Tensor

from ...cells.family import CellFamily, LayerWeights
from ...config import Noise
from .. import active_steps, no_kernel, recurrent_shifts, reference, require_support, sum_present
from . import compiled, gru, lstm, minimal, rnn, slstm
from .function import Plan, Recurrence, restarts

name = "cpu"

_KERNELS = {"lstm": lstm, "gru": gru, "rnn": rnn, "mingru": minimal, "minlstm": minimal, "slstm": slstm}
"""This backend's kernels by the names families give them (``cfg.kernel("cpu")``), of two kinds:

- step kernels, modules with ``forward`` and ``backward`` for :class:`.function.Recurrence` (one
  or two carried states, a dense recurrent matrix), and optionally ``internal_order(cfg)`` (the
  kernel's own order of the gate blocks; default the family's), ``kept_shift_rows(cfg)`` (how
  many last rows' recurrent shift stays inside the recurrence; default none, see
  :func:`gatedrnn.backends.recurrent_shifts`) and ``gate_state_size(cfg)`` (the width of the
  previous step's gate activations the kernel carries as a third state; default none);
- layer kernels, modules with their own ``run_layer(cfg, x, state, weights, *, reverse, lengths,
  reset)``
  (this module's contract, without regularisation: calls with zoneout or recurrent dropout acting
  run on the reference loop, as recording ones do) for families whose layer does not fit that
  loop, and optionally ``supports(cfg, x)`` (a reason to refuse a call this module's
  :func:`supports` accepts, or None)."""
_PARAMS = ("weight_hh", "rec_gain", "rec_shift", "weight_ch", "weight_gg", "ln_weight_c", "ln_bias_c", "weight_hr")


def _kernel(cfg: CellFamily) -> ModuleType:
    """The kernel that computes ``cfg`` (:data:`_KERNELS`); :func:`supports` refuses any other family."""
    return _KERNELS[cfg.kernel(name)]


def supports(cfg: CellFamily, x: Tensor) -> str | None:
    """None for every configuration of a family that names one of :data:`_KERNELS` on CPU
    floating-point tensors outside torch.func transforms (its Function has no functorch rule:
    ``auto`` then runs another backend), else the reason not."""
    if cfg.kernel(name) not in _KERNELS:
        return no_kernel(cfg)
    if x.device.type != "cpu":
        return f"expected a CPU tensor, got one on {x.device.type}"
    if not x.dtype.is_floating_point:
        return f"expected a floating-point input, got {x.dtype}"
    if _transformed():
        return (
            "expected a call outside torch.func transforms (grad, vmap, jacrev, ...), which its fused "
            "autograd Function does not support; backend='reference' or 'auto' runs under them"
        )
    kernel_supports = getattr(_kernel(cfg), "supports", None)
    return None if kernel_supports is None else kernel_supports(cfg, x)


FASTER_THAN_TORCH = ("gru",)
"""The kernels that beat torch's own for the cells both compute, where :func:`beats_torch` says."""

TRAIN_FROM_STEPS = 8
"""Training: the kernels of :data:`FASTER_THAN_TORCH` are faster than torch's from this many steps."""

INFER_FROM_STEPS, INFER_MAX_HIDDEN, INFER_MAX_BATCH_HIDDEN = 64, 256, 8192
"""Inference (no grad): faster from this many steps, up to this hidden size and batch x hidden."""


def beats_torch(cfg: CellFamily, x: Tensor, training: bool, ragged: bool = False) -> bool:
    """Whether this backend runs a cell torch.nn also computes faster than torch's own CPU kernel,
    for x (T, B, I); ``ragged`` when some sequences of a packed batch are shorter than T.

    The rule, drawn from the ``auto``, ``packed`` and ``stack`` rows of ``benchmarks/cpu.py``
    (their numbers and machines are in BENCHMARKS.md):

    - only for a kernel of :data:`FASTER_THAN_TORCH`, the plain GRU's (torch's GRU backward is a
      graph of per-step ops; this one is one compiled loop), never the LSTM's (torch's oneDNN
      kernel) or the RNN's (a Python loop here);
    - training: from :data:`TRAIN_FROM_STEPS` steps, on packed batches of unequal lengths too;
    - inference: from :data:`INFER_FROM_STEPS` steps, up to :data:`INFER_MAX_HIDDEN` units and
      :data:`INFER_MAX_BATCH_HIDDEN` batch x units, and not on batches of unequal lengths, whose
      finished sequences torch's kernel drops step by step while this one masks them.

    The thresholds were measured on one layer and one direction and checked on stacks of two
    layers and both directions. Needs the compiled loops (float32 or float64, built or
    buildable); without them torch's kernel is kept, with no warning."""
    if (
        cfg.kernel(name) not in FASTER_THAN_TORCH
        or cfg.torch_mode is None
        or x.dtype not in compiled.DTYPES
        or x.dim() != 3
    ):
        return False
    if _tracing_or_transformed(x):
        return False
    T, B = x.shape[:2]
    H = cfg.hidden_size
    if training:
        faster = T >= TRAIN_FROM_STEPS
    else:
        faster = T >= INFER_FROM_STEPS and H <= INFER_MAX_HIDDEN and B * H <= INFER_MAX_BATCH_HIDDEN and not ragged
    return faster and compiled.ready()


def _tracing_or_transformed(x: Tensor) -> bool:
    """Keep torch's kernel where the cpu backend would change what works: under torch.func
    transforms (its Function has no vmap or forward-mode rule; aten.gru does) and while exporting
    or with a symbolic T (the graph would then depend on the example's length)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()  # torch >= 2.5
    return _transformed() or exporting or not isinstance(x.shape[0], int)


def _transformed() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) is active."""
    return torch._C._are_functorch_transforms_active()


def _internal_rows(cfg: CellFamily, device: torch.device) -> Tensor | None:
    """Row indices taking the family's gate order (torch's) to its kernel's (None when they agree)."""
    internal_order = getattr(_kernel(cfg), "internal_order", None)
    order = cfg.gates if internal_order is None else internal_order(cfg)
    if order == cfg.gates:
        return None
    H = cfg.hidden_size
    return torch.cat([torch.arange(k * H, (k + 1) * H, device=device) for k in map(cfg.gates.index, order)])


def prepare(
    cfg: CellFamily, w: LayerWeights, device: torch.device
) -> tuple[Tensor, Tensor | None, Tensor | None, dict[str, Tensor]]:
    """The Function's weights from the module's, in the backend's row order (differentiable with
    autograd): ``(weight_ih, in_gain, bias, params)`` with every foldable bias summed in ``bias``."""
    rows = _internal_rows(cfg, device)

    def reorder(t: Tensor | None) -> Tensor | None:
        return t if t is None or rows is None else t.index_select(0, rows)

    kept_shift_rows = getattr(_kernel(cfg), "kept_shift_rows", None)
    recurrent_bias, rec_shift = recurrent_shifts(w, 0 if kept_shift_rows is None else kept_shift_rows(cfg))
    params = {"weight_hh": reorder(w["weight_hh"]), "rec_gain": reorder(w.get("ln_weight_hh"))}
    if rec_shift is not None:
        params["rec_shift"] = rec_shift
    bias = reorder(sum_present(w.get("bias_ih"), w.get("ln_bias_ih"), recurrent_bias))
    for key in ("weight_ch", "weight_gg", "ln_weight_c", "ln_bias_c", "weight_hr"):
        params[key] = w.get(key)
    return reorder(w["weight_ih"]), reorder(w.get("ln_weight_ih")), bias, params


def module_weights(
    cfg: CellFamily, weight_ih: Tensor, in_gain: Tensor | None, bias: Tensor | None, params: dict[str, Tensor | None]
) -> LayerWeights:
    """The inverse of :func:`prepare` (differentiable with autograd): weights in the module's layout
    and gate order with which the reference loop computes the same layer. The summed bias becomes
    the input shift (``bias_ih``, or ``ln_bias_ih`` with layer norm) and the GRU's n-block
    recurrent shift the recurrent one; the other shifts are zero."""
    rows = _internal_rows(cfg, weight_ih.device)
    back = None if rows is None else torch.argsort(rows)

    def restore(t: Tensor | None) -> Tensor | None:
        return t if t is None or back is None else t.index_select(0, back)

    w: LayerWeights = {"weight_ih": restore(weight_ih), "weight_hh": restore(params["weight_hh"])}
    w.update(
        {
            k: params[k]
            for k in ("weight_ch", "weight_gg", "ln_weight_c", "ln_bias_c", "weight_hr")
            if params.get(k) is not None
        }
    )
    zeros = weight_ih.new_zeros(weight_ih.shape[0])
    input_shift = zeros if bias is None else restore(bias)
    rec_shift = params.get("rec_shift")
    recurrent = zeros if rec_shift is None else torch.cat([zeros[: -rec_shift.shape[0]], rec_shift])
    if cfg.layer_norm:
        w.update(
            ln_weight_ih=restore(in_gain),
            ln_weight_hh=restore(params["rec_gain"]),
            ln_bias_ih=input_shift,
            ln_bias_hh=recurrent,
        )
        if cfg.bias:
            w.update(bias_ih=zeros, bias_hh=zeros)
    elif cfg.bias:
        w.update(bias_ih=input_shift, bias_hh=recurrent)
    return w


def _replay(
    cfg: CellFamily,
    reverse: bool,
    lengths: Tensor | None,
    reset: Tensor | None,
    noise: Noise | None,
    x: Tensor,
    weight_ih: Tensor,
    in_gain: Tensor | None,
    bias: Tensor | None,
    initial: tuple[Tensor, ...],
    params: dict[str, Tensor | None],
) -> tuple[Tensor, ...]:
    """The layer :class:`.function.Recurrence` ran, as the reference loop on its inputs:
    (output, *final states) (the plan's ``replay``)."""
    out, final, _ = reference.run_layer(
        cfg,
        x,
        initial[: len(cfg.states)],
        module_weights(cfg, weight_ih, in_gain, bias, params),
        reverse=reverse,
        lengths=lengths,
        noise=noise,
        reset=reset,
    )
    return (out, *final)


def _torch_gru_replay(
    cfg: CellFamily,
    reverse: bool,
    x: Tensor,
    weight_ih: Tensor,
    in_gain: None,
    bias: Tensor | None,
    initial: tuple[Tensor],
    params: dict[str, Tensor | None],
) -> tuple[Tensor, Tensor]:
    """The plain GRU's replay over full-length sequences on torch's own kernel (``aten.gru``),
    whose graph differentiates faster than the reference loop's: (output (T, B, H), h_n (B, H));
    in reverse on the time-flipped input. (Its packed form differentiates slower than the padded
    one, so batches of unequal lengths replay on the reference loop.)"""
    w = module_weights(cfg, weight_ih, in_gain, bias, params)
    flat = [w["weight_ih"], w["weight_hh"]] + ([w["bias_ih"], w["bias_hh"]] if cfg.bias else [])
    h0 = initial[0].unsqueeze(0)
    out, h_n = _VF.gru(x.flip(0) if reverse else x, h0, flat, cfg.bias, 1, 0.0, False, False, False)
    return (out.flip(0) if reverse else out), h_n[0]


def replay_for(
    cfg: CellFamily,
    reverse: bool,
    lengths: Tensor | None,
    noise: Noise | None,
    full: bool,
    reset: Tensor | None = None,
):
    """The plan's ``replay``: torch's kernel for the plain GRU without masks or restarts over
    sequences all T long (``full``; what ``auto`` runs here), else the reference loop (with the
    restarts ``reset`` (T, B) in walk order, which torch's kernel cannot take)."""
    if cfg.torch_mode == "GRU" and (noise is None or not noise.active) and full and reset is None:
        return partial(_torch_gru_replay, cfg, reverse)
    return partial(_replay, cfg, reverse, lengths, reset, noise)


def _keep(noise: Noise | None, mask: Tensor | None, active: Tensor | None, T: int, x: Tensor) -> Tensor | None:
    """The weight of the old state in the carried one per step (see :mod:`.function`), or None."""
    keep = None
    if noise is not None and noise.zoneout > 0:
        keep = mask if mask is not None else x.new_full((T, 1, 1), noise.zoneout)
    if active is None:
        return keep
    if keep is None:
        return 1.0 - active
    return 1.0 - (1.0 - keep) * active


def make_plan(
    cfg: CellFamily,
    x: Tensor,
    lengths: Tensor | None,
    noise: Noise | None,
    reverse: bool,
    reset: Tensor | None = None,
) -> Plan:
    """The :class:`.function.Plan` of one call: its masks from ``lengths``, ``noise`` and the
    restarts ``reset`` (T, B) bool in walk order (:func:`.function.restarts`), and its replay."""
    T, B = x.shape[:2]
    active = None
    if lengths is not None and bool((lengths < T).any()):
        active = active_steps(lengths, T).to(x.dtype)
    zoneout_h = zoneout_c = recurrent_mask = None
    if noise is not None:
        zoneout_h, zoneout_c, recurrent_mask = noise.zoneout_h, noise.zoneout_c, noise.recurrent_mask
    keep_h = _keep(noise, zoneout_h, active, T, x)
    keep_c = _keep(noise, zoneout_c, active, T, x) if len(cfg.states) > 1 else None
    return Plan(
        cfg,
        T,
        B,
        reverse,
        active,
        keep_h,
        keep_c,
        recurrent_mask,
        replay_for(cfg, reverse, lengths, _replay_noise(noise, keep_h, keep_c), active is None, reset),
        *restarts(reset),
    )


def _replay_noise(noise: Noise | None, keep_h: Tensor | None, keep_c: Tensor | None) -> Noise | None:
    """The masks the replay reruns the layer with: sampled zoneout masks give way to the plan's
    keeps, which equal them on every step that ran (and are 1, keep the state, on the padded ones,
    where the reference loop keeps it anyway), so the replay holds no second copy of them until
    backward. Evaluation's zoneout (no masks: the expectation) and recurrent dropout as drawn."""
    if noise is None or noise.zoneout_h is None:
        return noise
    return replace(noise, zoneout_h=keep_h, zoneout_c=keep_c if noise.zoneout_c is not None else None)


def run_layer(
    cfg: CellFamily,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: LayerWeights,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
    noise: Noise | None = None,
    record: bool = False,
    reset: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """Run one layer and direction (contract: :mod:`gatedrnn.backends.reference`); the restarts
    ``reset`` run inside every kernel's loop."""
    require_support(name, supports(cfg, x))
    if reset is not None and not bool(reset.any()):
        reset = None  # nothing restarts: the plain path, which costs nothing extra
    if record or x.shape[0] == 0 or x.shape[1] == 0:  # no steps or no sequences: nothing to fuse
        return reference.run_layer(
            cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise, record=record, reset=reset
        )
    layer_kernel = getattr(_kernel(cfg), "run_layer", None)
    if layer_kernel is not None:
        if noise is not None and noise.active:
            return reference.run_layer(
                cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise, reset=reset
            )
        return layer_kernel(cfg, x, state, weights, reverse=reverse, lengths=lengths, reset=reset)
    weight_ih, in_gain, bias, params = prepare(cfg, weights, x.device)
    plan = make_plan(cfg, x, lengths, noise, reverse, reset)
    c0 = state[1].contiguous() if len(cfg.states) > 1 else None
    kernel = compiled.loop_for(cfg, x.dtype) or _kernel(cfg)
    out, *final = Recurrence.apply(
        plan,
        kernel,
        _PARAMS,
        x.contiguous(),
        weight_ih,
        in_gain,
        bias,
        state[0].contiguous(),
        c0,
        _initial_gates(cfg, state, x),
        *(params.get(k) for k in _PARAMS),
    )
    return out, tuple(final[: len(cfg.states)]), None


def _initial_gates(cfg: CellFamily, state: tuple[Tensor, ...], x: Tensor) -> Tensor | None:
    """The previous step's gate activations a step kernel carries besides h and c (the LSTM
    ``fgr``'s (i, f, o), ``gate_state_size(cfg)`` wide): the family's third state, zeros where it
    carries none; None for a kernel that carries no gates."""
    size = getattr(_kernel(cfg), "gate_state_size", lambda cfg: 0)(cfg)
    if not size:
        return None
    return state[2].contiguous() if len(state) > 2 else x.new_zeros(x.shape[1], size)
