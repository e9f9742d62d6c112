"""The recurrence as torch.library custom ops (with fake implementations, so modules trace under
``torch.compile``) and their autograd formula.

``gatedrnn::triton_recurrence`` runs the forward kernel; ``gatedrnn::triton_recurrence_backward``
the backward kernel. Their schemas take tensors, lists and scalars only: the optional tensors go
as one list (:meth:`Operands.pack`), the settings as two strings, an int of flags and a float
(:meth:`Settings.arguments`); :func:`recurrence` takes them all by name.

The weight gradients are large matmuls over all steps at once, after the backward recurrence
(no atomics, so the result is deterministic):

.. math::
    \\frac{\\partial L}{\\partial U} = \\sum_t \\delta^{rec}_t{}^\\top h_{t-1}, \\quad
    \\frac{\\partial L}{\\partial W_{hr}} = \\sum_t \\delta^{r}_t{}^\\top h^{pre}_t, \\quad
    \\frac{\\partial L}{\\partial p_{i,f}} = \\sum_{t,b} \\delta^{i,f}_t c_{t-1}, \\quad
    \\frac{\\partial L}{\\partial p_o} = \\sum_{t,b} \\delta^{o}_t c_t, \\quad
    \\frac{\\partial L}{\\partial W_{gg}} = \\sum_t \\delta_t^\\top a_{t-1}

where :math:`h_{t-1}`, :math:`c_{t-1}` and :math:`a_{t-1}` are the states step t saw: zero on the
rows the call's ``reset`` restarted at t. For the GRU with the reset before the matmul the n rows
of U take :math:`r_t \\odot h_{t-1}`; with recurrent dropout :math:`h_{t-1}` is the masked
:math:`m \\odot h_{t-1}` that entered the product, and with zoneout :math:`c_t` of the output
peephole is the cell's own :math:`f c_{t-1} + i g`; for fgr, :math:`a_{t-1}` are the previous
step's saved activations (zero where it did not run: the initial gates state's share is
autograd's, see :func:`gatedrnn.backends.triton.with_initial_gates`) and :math:`W_{gg}` the padded
(4H, 4H) weight (:func:`.launch.padded_gate_weight`). With
layer norm, :math:`\\delta^{rec}` is the gradient of the raw product before its normalisation,
and the gains take :math:`\\sum_{t,b} \\delta_t \\odot \\hat a_t` (products) and
:math:`\\sum_{t,b} \\delta^{\\hat c}_t \\odot \\hat c_t` (cell), the cell's shift :math:`\\sum \\delta^{\\hat c}_t`.
The gradient of the input projection xw is :math:`\\delta_t` itself; the module's own matmul
``x @ W_ih^T`` carries it on to x and W_ih.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from . import launch
from .launch import KernelSpec


class Operands(NamedTuple):
    """The ops' optional tensors, by name: the LSTM's initial cell ``c0`` (B, H); the weights
    beyond ``weight_hh``: ``weight_hr`` (R, H), the peepholes ``weight_ch`` (3H,), fgr's
    ``weight_gg`` padded to (4H, 4H), the GRU's ``bias_hn`` (H,) when it stays inside the
    recurrence, the layer norms' gains and cell shift (see :class:`.launch.LayerNormWeights`);
    the call's regularisation ``keep_h``, ``keep_c``, ``rmask`` (see :class:`.launch.NoiseBuffers`);
    and its restarts ``restart`` (T, B) bool in walk order (the layer's ``reset``: row b starts
    again from the zero state before step t where set). None where absent.

    The ops take them as one ``list[Tensor]`` in this order (:meth:`pack`), an absent one as an
    empty tensor: torch.library's autograd reaches the tensors of a list only when the list
    holds nothing but tensors."""

    c0: Tensor | None = None
    weight_hr: Tensor | None = None
    weight_ch: Tensor | None = None
    weight_gg: Tensor | None = None
    bias_hn: Tensor | None = None
    ln_weight_hh: Tensor | None = None
    ln_weight_c: Tensor | None = None
    ln_bias_c: Tensor | None = None
    keep_h: Tensor | None = None
    keep_c: Tensor | None = None
    rmask: Tensor | None = None
    restart: Tensor | None = None

    def pack(self, like: Tensor) -> list[Tensor]:
        """The ops' ``operands`` argument: each tensor, or an empty one of ``like``'s device and dtype."""
        return [like.new_empty(0) if t is None else t for t in self]

    @classmethod
    def unpack(cls, operands: list[Tensor]) -> Operands:
        """The inverse of :meth:`pack`: empty tensors are absent operands."""
        return cls(*(t if t.numel() else None for t in operands))

    def layer_norm(self, eps: float) -> launch.LayerNormWeights:
        return launch.LayerNormWeights(self.ln_weight_hh, self.ln_weight_c, self.ln_bias_c, eps)

    def noise(self) -> launch.NoiseBuffers:
        return launch.NoiseBuffers(self.keep_h, self.keep_c, self.rmask)


_SWITCHES = ("reset_after", "relu", "reverse", "allow_tf32")
"""The settings held in the low bits of the ops' ``flags`` word, bit 0 first; ``zoneout`` is the
number above them."""


@dataclass(frozen=True)
class Settings:
    """Everything of a recurrence that is not a tensor, as the ops take it (:meth:`arguments`):
    ``cell`` (the kernel's name, a key of :data:`.launch.CELLS`) and ``variant`` as strings,
    ``eps`` (the layer norms' epsilon) as a float, and the rest in one int, ``flags``: bit 0
    ``reset_after`` (GRU), 1 ``relu`` (RNN), 2 ``reverse`` (run the steps from T - 1 down to 0),
    3 ``allow_tf32``, and ``zoneout`` (0 none, 1 the sampled keeps, 2 their expectation) as
    ``flags >> 4``."""

    cell: str
    variant: str = "vanilla"
    reset_after: bool = True
    relu: bool = False
    zoneout: int = 0
    reverse: bool = False
    allow_tf32: bool = False
    eps: float = 1e-5

    def arguments(self) -> tuple[str, str, int, float]:
        """(cell, variant, flags, eps), the ops' last four arguments."""
        if self.zoneout not in (0, 1, 2):
            raise ValueError(f"zoneout mode must be 0, 1 or 2, got {self.zoneout!r}")
        flags = sum(1 << bit for bit, name in enumerate(_SWITCHES) if getattr(self, name))
        return self.cell, self.variant, flags | self.zoneout << len(_SWITCHES), float(self.eps)

    @classmethod
    def from_arguments(cls, cell: str, variant: str, flags: int, eps: float) -> Settings:
        """The inverse of :meth:`arguments`."""
        switches = {name: bool(flags >> bit & 1) for bit, name in enumerate(_SWITCHES)}
        return cls(cell, variant, zoneout=flags >> len(_SWITCHES), eps=eps, **switches)

    def spec(self, operands: Operands) -> KernelSpec:
        """The kernels' compile-time shape: these settings and which operands are present."""
        return KernelSpec(
            self.cell,
            self.variant,
            self.reset_after,
            self.relu,
            operands.weight_hr is not None,
            operands.ln_weight_hh is not None,
            self.zoneout,
            operands.rmask is not None,
            operands.restart is not None,
        )


@torch.library.custom_op("gatedrnn::triton_recurrence", mutates_args=())
def triton_recurrence(
    xw: Tensor,
    lengths: Tensor,
    h0: Tensor,
    weight_hh: Tensor,
    operands: list[Tensor],
    cell: str,
    variant: str,
    flags: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Forward recurrence over xw (T, B, G*H) from h0 (B, R): returns (hs (T+1, B, R), c_final (B, H)
    or empty, g_final or empty, cs, gates, aux, hat, hatc, rstd), see :func:`.launch.forward`;
    g_final (B, 4H) is fgr's: the saved activations of each row's last real step (a row without
    one has no final gates of its own: the caller keeps its initial state). ``operands``: the
    optional tensors (:meth:`Operands.pack`); ``cell, variant, flags, eps``: :class:`Settings`."""
    given, settings = Operands.unpack(operands), Settings.from_arguments(cell, variant, flags, eps)
    reverse = settings.reverse
    hs, cs, gates, aux, hat, hatc, rstd = launch.forward(
        settings.spec(given),
        xw,
        lengths,
        h0,
        given.c0,
        weight_hh,
        given.weight_hr,
        given.weight_ch,
        given.weight_gg,
        given.bias_hn,
        given.layer_norm(eps),
        given.noise(),
        reverse,
        settings.allow_tf32,
        given.restart,
    )
    c_final = cs[0 if reverse else -1].clone() if cs.numel() else cs.new_empty(0)
    g_final = _last_step_values(gates, lengths, reverse) if given.weight_gg is not None else gates.new_empty(0)
    return hs, c_final, g_final, cs, gates, aux, hat, hatc, rstd


def _last_step_values(values: Tensor, lengths: Tensor, reverse: bool) -> Tensor:
    """(B, N): each row's values (T, B, N) at its last real step: t = lengths[b] - 1, or 0 in reverse
    (step 0 for a row of length 0)."""
    B = values.shape[1]
    last = torch.zeros_like(lengths) if reverse else (lengths.long() - 1).clamp(min=0)
    return values[last, torch.arange(B, device=values.device)]


@triton_recurrence.register_fake
def _(xw, lengths, h0, weight_hh, operands, cell, variant, flags, eps):
    spec = Settings.from_arguments(cell, variant, flags, eps).spec(Operands.unpack(operands))
    T, B, _ = xw.shape
    H, R = weight_hh.shape[0] // spec.num_gates, weight_hh.shape[1]
    acc = launch.accumulation_dtype(xw.dtype)
    lstm = spec.has_cell_state
    ln = spec.layer_norm
    return (
        xw.new_empty((T + 1, B, R)),
        xw.new_empty((B, H) if lstm else (0,), dtype=acc),
        xw.new_empty((B, 4 * H) if spec.fgr else (0,), dtype=acc),
        xw.new_empty((T + 1, B, H) if lstm else (0,), dtype=acc),
        xw.new_empty((T, B, spec.saved_gates * H), dtype=acc),
        xw.new_empty((T, B, H) if spec.two_phase else (0,)),
        xw.new_empty((T, B, spec.num_gates * H) if ln else (0,), dtype=acc),
        xw.new_empty((T, B, H) if ln and lstm else (0,), dtype=acc),
        xw.new_empty((T, B, spec.stat_slots) if ln else (0,), dtype=acc),
    )


def recurrence(
    xw: Tensor,
    lengths: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    weight_ch: Tensor | None,
    weight_gg: Tensor | None,
    bias_hn: Tensor | None,
    ln_weight_hh: Tensor | None,
    ln_weight_c: Tensor | None,
    ln_bias_c: Tensor | None,
    keep_h: Tensor | None,
    keep_c: Tensor | None,
    rmask: Tensor | None,
    cell: str,
    variant: str,
    reset_after: bool,
    relu: bool,
    eps: float,
    zoneout: int,
    reverse: bool,
    allow_tf32: bool,
    restart: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """:func:`triton_recurrence` with every operand and setting named: the optional tensors are
    gathered into :class:`Operands`, the settings into :class:`Settings`."""
    operands = Operands(
        c0,
        weight_hr,
        weight_ch,
        weight_gg,
        bias_hn,
        ln_weight_hh,
        ln_weight_c,
        ln_bias_c,
        keep_h,
        keep_c,
        rmask,
        restart,
    )
    settings = Settings(cell, variant, reset_after, relu, zoneout, reverse, allow_tf32, eps)
    return triton_recurrence(xw, lengths, h0, weight_hh, operands.pack(xw), *settings.arguments())


class Saved(NamedTuple):
    """What the backward recurrence reads of the forward's outputs (see :func:`.launch.forward`)."""

    hs: Tensor
    cs: Tensor
    gates: Tensor
    hat: Tensor
    hatc: Tensor
    rstd: Tensor


@torch.library.custom_op("gatedrnn::triton_recurrence_backward", mutates_args=())
def triton_recurrence_backward(
    dhs: Tensor,
    dc: Tensor | None,
    dg: Tensor | None,
    lengths: Tensor,
    weight_hh: Tensor,
    saved: list[Tensor],
    operands: list[Tensor],
    cell: str,
    variant: str,
    flags: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward recurrence: (d, drec, dprod, ghr, dchat, carry_h, carry_c), see :func:`.launch.backward`
    (``dc``, ``dg``: the gradients of the final cell and gates). ``saved``: :class:`Saved`; the rest
    as :func:`triton_recurrence` (``c0`` and ``bias_hn`` unused)."""
    given, settings = Operands.unpack(operands), Settings.from_arguments(cell, variant, flags, eps)
    hs, cs, gates, hat, hatc, rstd = saved
    return launch.backward(
        settings.spec(given),
        dhs,
        dc,
        dg,
        lengths,
        hs,
        cs,
        gates,
        hat,
        hatc,
        rstd,
        weight_hh,
        given.weight_hr,
        given.weight_ch,
        given.weight_gg,
        given.layer_norm(eps),
        given.noise(),
        settings.reverse,
        settings.allow_tf32,
        given.restart,
    )


@triton_recurrence_backward.register_fake
def _(dhs, dc, dg, lengths, weight_hh, saved, operands, cell, variant, flags, eps):
    spec = Settings.from_arguments(cell, variant, flags, eps).spec(Operands.unpack(operands))
    T1, B, R = dhs.shape
    GH = weight_hh.shape[0]
    H = GH // spec.num_gates
    hs = Saved(*saved).hs
    acc = launch.accumulation_dtype(hs.dtype)
    ln, lstm = spec.layer_norm, spec.has_cell_state
    return (
        hs.new_empty((T1 - 1, B, GH)),
        hs.new_empty((T1 - 1, B, GH) if spec.split_recurrent_grad else (0,)),
        hs.new_empty((T1 - 1, B, GH) if ln else (0,)),
        hs.new_empty((T1 - 1, B, R) if spec.proj else (0,)),
        hs.new_empty((T1 - 1, B, H) if ln and lstm else (0,), dtype=acc),
        hs.new_empty((B, R), dtype=acc),
        hs.new_empty((B, H) if lstm else (0,), dtype=acc),
    )


def _setup_context(ctx, inputs, output) -> None:
    xw, lengths, h0, weight_hh, operands, *settings = inputs
    hs, _, _, cs, gates, aux, hat, hatc, rstd = output
    ctx.settings = settings  # (cell, variant, flags, eps)
    ctx.mark_non_differentiable(cs, gates, aux, hat, hatc, rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(lengths, weight_hh, aux, *Saved(hs, cs, gates, hat, hatc, rstd), *operands)


def _backward(ctx, dhs, dc, dg, *_non_differentiable):
    lengths, weight_hh, aux, *rest = ctx.saved_tensors
    saved, operands = Saved(*rest[: len(Saved._fields)]), rest[len(Saved._fields) :]
    given = Operands.unpack(operands)
    settings = Settings.from_arguments(*ctx.settings)
    spec, reverse = settings.spec(given), settings.reverse
    hs, cs, gates = saved.hs, saved.cs, saved.gates
    dhs = torch.zeros_like(hs) if dhs is None else dhs.contiguous()
    d, drec, dprod, ghr, dchat, carry_h, carry_c = triton_recurrence_backward(
        dhs, dc, dg, lengths, weight_hh, list(saved), operands, *ctx.settings
    )
    T, B = d.shape[:2]
    H = weight_hh.shape[0] // spec.num_gates
    added = drec if spec.split_recurrent_grad else d  # dL/d(recurrent term as added to the pre-activation)
    prod = dprod if spec.layer_norm else added  # dL/d(h_{t-1} U^T)
    first, start = (T - 1, T) if reverse else (0, 0)
    restart = given.restart
    h_prev = carried_values(hs[1:] if reverse else hs[:-1], restart)  # (T, B, R): h_{t-1} of every step t
    if given.rmask is not None:
        h_prev = h_prev * given.rmask  # as it entered the recurrent product
    rows = spec.matmul_gates * H
    # the last gather of the recurrence: dL/dh_{-1} through the first step's recurrent matmul (none
    # on the rows that step restarted)
    gather = carried_values(prod[first, :, :rows].matmul(weight_hh[:rows]), None if restart is None else restart[first])
    dh0 = carry_h + dhs[start] + (gather if given.rmask is None else gather * given.rmask).to(carry_h.dtype)
    flat = prod.reshape(T * B, -1)
    if spec.gru_before:
        d_weight_hh = torch.cat(
            [flat[:, :rows].t().matmul(h_prev.reshape(T * B, -1)), flat[:, rows:].t().matmul(aux.reshape(T * B, -1))]
        )
    else:
        d_weight_hh = flat.t().matmul(h_prev.reshape(T * B, -1))
    grads = {}
    if given.c0 is not None:
        grads["c0"] = carry_c.to(hs.dtype)
    if given.weight_hr is not None:
        grads["weight_hr"] = ghr.reshape(T * B, -1).t().matmul(aux.reshape(T * B, -1))
    if given.weight_ch is not None:
        c_prev, c_new = (cs[1:], cs[:-1]) if reverse else (cs[:-1], cs[1:])
        c_prev = carried_values(c_prev, restart)
        if spec.zoneout:  # the carried cell is zoned out: p_o saw the cell's own f c_{t-1} + i g
            i, f, g, _ = gates.split(H, dim=-1)
            c_new = f * c_prev + i * g
        gi, gf, _, go = d.to(cs.dtype).split(H, dim=-1)
        d_weight_ch = torch.cat([(gi * c_prev).sum((0, 1)), (gf * c_prev).sum((0, 1)), (go * c_new).sum((0, 1))])
        grads["weight_ch"] = d_weight_ch.to(given.weight_ch.dtype)
    if given.weight_gg is not None:
        grads["weight_gg"] = _gate_weight_grad(d, gates, lengths, reverse, restart).to(given.weight_gg.dtype)
    if given.bias_hn is not None:
        grads["bias_hn"] = added[..., 2 * H :].sum((0, 1))
    if spec.layer_norm:
        grads["ln_weight_hh"] = (added.to(saved.hat.dtype) * saved.hat).sum((0, 1)).to(given.ln_weight_hh.dtype)
        if spec.has_cell_state:
            grads["ln_weight_c"] = (dchat * saved.hatc).sum((0, 1)).to(given.ln_weight_c.dtype)
            grads["ln_bias_c"] = dchat.sum((0, 1)).to(given.ln_bias_c.dtype)
    # one gradient per input of triton_recurrence, a list for the operands; none for the settings
    return d, None, dh0.to(hs.dtype), d_weight_hh.to(weight_hh.dtype), list(Operands(**grads)), None, None, None, None


def carried_values(values: Tensor, restart: Tensor | None) -> Tensor:
    """``values`` (..., B, N), each step's state before it (or what flows back to it), as the step
    saw it: zero on the rows ``restart`` (..., B) restarted there (a select), or unchanged without
    restarts."""
    if restart is None:
        return values
    return torch.where(restart.unsqueeze(-1), torch.zeros((), dtype=values.dtype, device=values.device), values)


def _gate_weight_grad(
    d: Tensor, gates: Tensor, lengths: Tensor, reverse: bool, restart: Tensor | None = None
) -> Tensor:
    """fgr: dL/d(padded weight_gg) = sum_t d_t^T a_{t'}, d (T, B, 4H) the pre-activation gradients,
    a_{t'} (T, B, 4H) the saved activations of the step before t in processing order (t - 1, or
    t + 1 in reverse), zero where that step did not run (before the first, and the padded steps a
    reversed row starts with) and where step t restarted the row (``restart``). The initial gates
    state's share is not here: it enters the input projection (see
    :func:`gatedrnn.backends.triton.with_initial_gates`)."""
    T, B, _ = gates.shape
    previous = torch.zeros_like(gates)
    if reverse:
        previous[:-1] = gates[1:]
    else:
        previous[1:] = gates[:-1]
    t_prev = torch.arange(T, device=gates.device) + (1 if reverse else -1)
    ran = (t_prev[:, None] < lengths[None, :]).unsqueeze(-1)  # (T, B, 1); t_prev = -1 is already zero
    previous.masked_fill_(~ran, 0)
    previous = carried_values(previous, restart)
    return d.reshape(T * B, -1).t().to(gates.dtype).matmul(previous.reshape(T * B, -1))


def _no_second_derivative(ctx, *grads):
    """The backward kernel is first order, as cuDNN's is; differentiating it again says what does."""
    raise RuntimeError(
        "second derivatives (a backward through gradients computed with create_graph=True: gradient "
        "penalties, gradgradcheck) are not implemented by backend='triton', whose backward kernel is first "
        "order; expected a module with backend='reference' (any device) or 'cpu' (CPU tensors) for them"
    )


triton_recurrence.register_autograd(_backward, setup_context=_setup_context)
triton_recurrence_backward.register_autograd(_no_second_derivative, setup_context=lambda ctx, inputs, output: None)
