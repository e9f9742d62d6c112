"""The recurrence as torch.library custom ops (with fake implementations, so modules trace under
``torch.compile``) and their autograd formula.

``gatedrnn::triton_recurrence`` runs the forward kernel; ``gatedrnn::triton_recurrence_backward``
the backward kernel. The weight gradients are large matmuls over all steps at once, after the
backward recurrence (no atomics, so the result is deterministic):

.. math::
    \\frac{\\partial L}{\\partial U} = \\sum_t \\delta^{rec}_t{}^\\top h_{t-1}, \\quad
    \\frac{\\partial L}{\\partial W_{hr}} = \\sum_t \\delta^{r}_t{}^\\top h^{pre}_t, \\quad
    \\frac{\\partial L}{\\partial p_{i,f}} = \\sum_{t,b} \\delta^{i,f}_t c_{t-1}, \\quad
    \\frac{\\partial L}{\\partial p_o} = \\sum_{t,b} \\delta^{o}_t c_t, \\quad
    \\frac{\\partial L}{\\partial W_{gg}} = \\sum_t \\delta_t^\\top a_{t-1}

and for the GRU with the reset before the matmul the n rows of U take :math:`r_t \\odot h_{t-1}`; with
recurrent dropout :math:`h_{t-1}` is the masked :math:`m \\odot h_{t-1}` that entered the product,
and with zoneout :math:`c_t` of the output peephole is the cell's own :math:`f c_{t-1} + i g`; for fgr,
:math:`a_{t-1}` are the previous step's saved activations (zero where it did not run) and
:math:`W_{gg}` the padded (4H, 4H) weight (:func:`.launch.padded_gate_weight`). With
layer norm, :math:`\\delta^{rec}` is the gradient of the raw product before its normalisation,
and the gains take :math:`\\sum_{t,b} \\delta_t \\odot \\hat a_t` (products) and
:math:`\\sum_{t,b} \\delta^{\\hat c}_t \\odot \\hat c_t` (cell), the cell's shift :math:`\\sum \\delta^{\\hat c}_t`.
The gradient of the input projection xw is :math:`\\delta_t` itself; the module's own matmul
``x @ W_ih^T`` carries it on to x and W_ih.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import launch
from .launch import KernelSpec


def _spec(family: str, variant: str, reset_after: bool, relu: bool, weight_hr: Tensor | None,
          ln_weight_hh: Tensor | None, zoneout: int, rmask: Tensor | None) -> KernelSpec:
    return KernelSpec(family, variant, reset_after, relu, weight_hr is not None, ln_weight_hh is not None, zoneout,
                      rmask is not None)


@torch.library.custom_op("gatedrnn::triton_recurrence", mutates_args=())
def recurrence(
    xw: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor | None, weight_hh: Tensor, weight_hr: Tensor | None,
    weight_ch: Tensor | None, weight_gg: Tensor | None, bias_hn: Tensor | None, ln_weight_hh: Tensor | None,
    ln_weight_c: Tensor | None, ln_bias_c: Tensor | None, keep_h: Tensor | None, keep_c: Tensor | None,
    rmask: Tensor | None, family: str, variant: str, reset_after: bool, relu: bool, eps: float, zoneout: int,
    reverse: bool, allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Forward recurrence: returns (hs (T+1, B, R), c_final (B, H) or empty, cs, gates, aux, hat,
    hatc, rstd), see :func:`.launch.forward` (``weight_gg``: fgr's, padded). ``ln_weight_hh`` given
    means layer norm; ``zoneout`` 0, 1 or 2 (none, the sampled keeps ``keep_h`` / ``keep_c``, their
    expectation, held in ``keep_h``); ``rmask`` the recurrent dropout mask (see :class:`.launch.NoiseBuffers`)."""
    spec = _spec(family, variant, reset_after, relu, weight_hr, ln_weight_hh, zoneout, rmask)
    ln = launch.LayerNormWeights(ln_weight_hh, ln_weight_c, ln_bias_c, eps)
    noise = launch.NoiseBuffers(keep_h, keep_c, rmask)
    hs, cs, gates, aux, hat, hatc, rstd = launch.forward(spec, xw, lengths, h0, c0, weight_hh, weight_hr, weight_ch,
                                                         weight_gg, bias_hn, ln, noise, reverse, allow_tf32)
    c_final = cs[0 if reverse else -1].clone() if cs.numel() else cs.new_empty(0)
    return hs, c_final, cs, gates, aux, hat, hatc, rstd


@recurrence.register_fake
def _(xw, lengths, h0, c0, weight_hh, weight_hr, weight_ch, weight_gg, bias_hn, ln_weight_hh, ln_weight_c, ln_bias_c,
      keep_h, keep_c, rmask, family, variant, reset_after, relu, eps, zoneout, reverse, allow_tf32):
    spec = _spec(family, variant, reset_after, relu, weight_hr, ln_weight_hh, zoneout, rmask)
    T, B, _ = xw.shape
    H, R = weight_hh.shape[0] // spec.num_gates, weight_hh.shape[1]
    acc = launch.accumulation_dtype(xw.dtype)
    lstm = family == "lstm"
    ln = spec.layer_norm
    return (
        xw.new_empty((T + 1, B, R)),
        xw.new_empty((B, H) if lstm else (0,), dtype=acc),
        xw.new_empty((T + 1, B, H) if lstm else (0,), dtype=acc),
        xw.new_empty((T, B, spec.saved_gates * H), dtype=acc),
        xw.new_empty((T, B, H) if spec.two_phase else (0,)),
        xw.new_empty((T, B, spec.num_gates * H) if ln else (0,), dtype=acc),
        xw.new_empty((T, B, H) if ln and lstm else (0,), dtype=acc),
        xw.new_empty((T, B, spec.stat_slots) if ln else (0,), dtype=acc),
    )


@torch.library.custom_op("gatedrnn::triton_recurrence_backward", mutates_args=())
def recurrence_backward(
    dhs: Tensor, dc: Tensor | None, lengths: Tensor, hs: Tensor, cs: Tensor, gates: Tensor, hat: Tensor,
    hatc: Tensor, rstd: Tensor, weight_hh: Tensor, weight_hr: Tensor | None, weight_ch: Tensor | None,
    weight_gg: Tensor | None, ln_weight_hh: Tensor | None, ln_weight_c: Tensor | None, ln_bias_c: Tensor | None,
    keep_h: Tensor | None, keep_c: Tensor | None, rmask: Tensor | None, family: str, variant: str, reset_after: bool,
    relu: bool, eps: float, zoneout: int, reverse: bool, allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward recurrence: (d, drec, dprod, ghr, dchat, carry_h, carry_c), see :func:`.launch.backward`."""
    spec = _spec(family, variant, reset_after, relu, weight_hr, ln_weight_hh, zoneout, rmask)
    ln = launch.LayerNormWeights(ln_weight_hh, ln_weight_c, ln_bias_c, eps)
    return launch.backward(spec, dhs, dc, lengths, hs, cs, gates, hat, hatc, rstd, weight_hh, weight_hr, weight_ch,
                           weight_gg, ln, launch.NoiseBuffers(keep_h, keep_c, rmask), reverse, allow_tf32)


@recurrence_backward.register_fake
def _(dhs, dc, lengths, hs, cs, gates, hat, hatc, rstd, weight_hh, weight_hr, weight_ch, weight_gg, ln_weight_hh,
      ln_weight_c, ln_bias_c, keep_h, keep_c, rmask, family, variant, reset_after, relu, eps, zoneout, reverse,
      allow_tf32):
    spec = _spec(family, variant, reset_after, relu, weight_hr, ln_weight_hh, zoneout, rmask)
    T1, B, R = dhs.shape
    GH = weight_hh.shape[0]
    H = GH // spec.num_gates
    acc = launch.accumulation_dtype(hs.dtype)
    ln, lstm = spec.layer_norm, family == "lstm"
    return (
        hs.new_empty((T1 - 1, B, GH)),
        hs.new_empty((T1 - 1, B, GH) if spec.split_recurrent_grad else (0,)),
        hs.new_empty((T1 - 1, B, GH) if ln else (0,)),
        hs.new_empty((T1 - 1, B, R) if spec.proj else (0,)),
        hs.new_empty((T1 - 1, B, H) if ln and lstm else (0,), dtype=acc),
        hs.new_empty((B, R), dtype=acc),
        hs.new_empty((B, H) if lstm else (0,), dtype=acc),
    )


_CONFIG_ARGS = ("family", "variant", "reset_after", "relu", "eps", "zoneout", "reverse", "allow_tf32")


def _setup_context(ctx, inputs, output) -> None:
    (xw, lengths, h0, c0, weight_hh, weight_hr, weight_ch, weight_gg, bias_hn, ln_weight_hh, ln_weight_c, ln_bias_c,
     keep_h, keep_c, rmask, *config) = inputs
    hs, _, cs, gates, aux, hat, hatc, rstd = output
    ctx.config = dict(zip(_CONFIG_ARGS, config))
    ctx.has = (c0 is not None, weight_hr is not None, weight_ch is not None, bias_hn is not None)
    ctx.mark_non_differentiable(cs, gates, aux, hat, hatc, rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(lengths, hs, cs, gates, aux, hat, hatc, rstd, weight_hh, weight_hr, weight_ch, weight_gg,
                          ln_weight_hh, ln_weight_c, ln_bias_c, keep_h, keep_c, rmask)


def _backward(ctx, dhs, dc, *_non_differentiable):
    (lengths, hs, cs, gates, aux, hat, hatc, rstd, weight_hh, weight_hr, weight_ch, weight_gg, ln_weight_hh,
     ln_weight_c, ln_bias_c, keep_h, keep_c, rmask) = ctx.saved_tensors
    cfg = ctx.config
    spec = _spec(cfg["family"], cfg["variant"], cfg["reset_after"], cfg["relu"], weight_hr, ln_weight_hh,
                 cfg["zoneout"], rmask)
    reverse = cfg["reverse"]
    dhs = torch.zeros_like(hs) if dhs is None else dhs.contiguous()
    d, drec, dprod, ghr, dchat, carry_h, carry_c = recurrence_backward(
        dhs, dc, lengths, hs, cs, gates, hat, hatc, rstd, weight_hh, weight_hr, weight_ch, weight_gg, ln_weight_hh,
        ln_weight_c, ln_bias_c, keep_h, keep_c, rmask, **cfg)
    T, B = d.shape[:2]
    H = weight_hh.shape[0] // spec.num_gates
    added = drec if spec.split_recurrent_grad else d  # dL/d(recurrent term as added to the pre-activation)
    prod = dprod if spec.layer_norm else added  # dL/d(h_{t-1} U^T)
    first, start = (T - 1, T) if reverse else (0, 0)
    h_prev = hs[1:] if reverse else hs[:-1]  # (T, B, R): h_{t-1} of every step t
    if rmask is not None:
        h_prev = h_prev * rmask  # as it entered the recurrent product
    rows = spec.matmul_gates * H
    # the last gather of the recurrence: dL/dh_{-1} through the first step's recurrent matmul
    gather = prod[first, :, :rows].matmul(weight_hh[:rows])
    dh0 = carry_h + dhs[start] + (gather if rmask is None else gather * rmask).to(carry_h.dtype)
    flat = prod.reshape(T * B, -1)
    if spec.gru_before:
        d_weight_hh = torch.cat([flat[:, :rows].t().matmul(h_prev.reshape(T * B, -1)),
                                 flat[:, rows:].t().matmul(aux.reshape(T * B, -1))])
    else:
        d_weight_hh = flat.t().matmul(h_prev.reshape(T * B, -1))
    has_c0, has_hr, has_ch, has_bn = ctx.has
    d_weight_hr = ghr.reshape(T * B, -1).t().matmul(aux.reshape(T * B, -1)) if has_hr else None
    d_weight_ch = None
    if has_ch:
        c_prev, c_new = (cs[1:], cs[:-1]) if reverse else (cs[:-1], cs[1:])
        if spec.zoneout:  # the carried cell is zoned out: p_o saw the cell's own f c_{t-1} + i g
            i, f, g, _ = gates.split(H, dim=-1)
            c_new = f * c_prev + i * g
        gi, gf, _, go = d.to(cs.dtype).split(H, dim=-1)
        d_weight_ch = torch.cat([(gi * c_prev).sum((0, 1)), (gf * c_prev).sum((0, 1)), (go * c_new).sum((0, 1))])
        d_weight_ch = d_weight_ch.to(weight_ch.dtype)
    d_weight_gg = None
    if weight_gg is not None:
        d_weight_gg = _gate_weight_grad(d, gates, lengths, reverse).to(weight_gg.dtype)
    d_bias_hn = added[..., 2 * H:].sum((0, 1)) if has_bn else None
    d_ln = [None, None, None]
    if spec.layer_norm:
        d_ln[0] = (added.to(hat.dtype) * hat).sum((0, 1)).to(ln_weight_hh.dtype)
        if spec.family == "lstm":
            d_ln[1] = (dchat * hatc).sum((0, 1)).to(ln_weight_c.dtype)
            d_ln[2] = dchat.sum((0, 1)).to(ln_bias_c.dtype)
    dc0 = carry_c.to(hs.dtype) if has_c0 else None
    return (d, None, dh0.to(hs.dtype), dc0, d_weight_hh.to(weight_hh.dtype), d_weight_hr, d_weight_ch, d_weight_gg,
            d_bias_hn, *d_ln, None, None, None) + (None,) * len(_CONFIG_ARGS)


def _gate_weight_grad(d: Tensor, gates: Tensor, lengths: Tensor, reverse: bool) -> Tensor:
    """fgr: dL/d(padded weight_gg) = sum_t d_t^T a_{t'}, d (T, B, 4H) the pre-activation gradients,
    a_{t'} (T, B, 4H) the saved activations of the step before t in processing order (t - 1, or
    t + 1 in reverse), zero where that step did not run (before the first, and the padded steps a
    reversed row starts with)."""
    T, B, _ = gates.shape
    previous = torch.zeros_like(gates)
    if reverse:
        previous[:-1] = gates[1:]
    else:
        previous[1:] = gates[:-1]
    t_prev = torch.arange(T, device=gates.device) + (1 if reverse else -1)
    ran = (t_prev[:, None] < lengths[None, :]).unsqueeze(-1)  # (T, B, 1); t_prev = -1 is already zero
    previous.masked_fill_(~ran, 0)
    return d.reshape(T * B, -1).t().to(gates.dtype).matmul(previous.reshape(T * B, -1))


def _no_second_derivative(ctx, *grads):
    """The backward kernel is first order, as cuDNN's is; differentiating it again says what does."""
    raise RuntimeError(
        "second derivatives (a backward through gradients computed with create_graph=True: gradient "
        "penalties, gradgradcheck) are not implemented by backend='triton', whose backward kernel is first "
        "order; expected a module with backend='reference' (any device) or 'cpu' (CPU tensors) for them")


recurrence.register_autograd(_backward, setup_context=_setup_context)
recurrence_backward.register_autograd(_no_second_derivative, setup_context=lambda ctx, inputs, output: None)
