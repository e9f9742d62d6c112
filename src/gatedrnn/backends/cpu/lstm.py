"""The LSTM's loop, every variant (see :mod:`gatedrnn.cells.lstm` for the equations).

Gate blocks are stored in the backend's order: the sigmoid gates the variant has among (i, f, o),
then g. One step, with :math:`\\tilde h = h_{t-1} \\odot m` (recurrent dropout):

.. math::
    z = xw_t + [LN](\\tilde h U^T)\\gamma \\;[+\\, q_{t-1} W_{gg}^T \\text{ on } i,f,o]
        \\;[+\\, p_{i,f} \\odot c_{t-1}], \\quad
    c_t = f c_{t-1} + i g, \\quad z_o \\mathrel{+}= p_o c_t, \\quad
    y = \\tanh([LN](c_t)), \\quad h_t = [W_{hr}](o\\, y)

(i = 1 - f for cifg; a removed gate is 1; niaf drops g's tanh, noaf y's.) Backward, from
:math:`\\delta h, \\delta c` after zoneout/length splitting and the projection
(:math:`\\delta \\hat h = \\delta h W_{hr}`, :math:`\\delta W_{hr} = \\sum \\delta h^\\top \\hat h`):

.. math::
    \\delta o = \\delta \\hat h\\, y [+\\, \\delta q_o], \\quad
    \\delta c_{tot} = \\delta c + LN'(\\delta \\hat h\\, o\\, (1 - y^2)) [+\\, \\delta z_o p_o], \\\\
    \\delta i = \\delta c_{tot}\\, g, \\quad \\delta f = \\delta c_{tot}\\, c_{t-1}
    \\;(\\text{cifg: } \\delta c_{tot} (c_{t-1} - g)), \\quad \\delta g = \\delta c_{tot}\\, i, \\\\
    \\delta z = \\delta\\{i,f,o\\} \\odot \\sigma' ,\\; \\delta g \\odot (1 - g^2), \\quad
    \\delta c_{t-1} = \\delta c_{tot} f [+\\, \\delta z_{i,f} p_{i,f}], \\quad
    \\delta q_{t-1} = \\delta z_{i,f,o} W_{gg}, \\quad \\delta h_{t-1} = (\\delta u\\, U) \\odot m

where :math:`\\delta u` is :math:`\\delta z` through the recurrent layer norm. After the loop:
:math:`\\delta U = \\sum_t \\delta u_t^\\top \\tilde h_{t-1}`, :math:`\\delta W_{gg} = \\sum_t
\\delta z_{i,f,o}^\\top q_{t-1}`, :math:`\\delta p_{i,f} = \\sum \\delta z_{i,f} c_{t-1}`,
:math:`\\delta p_o = \\sum \\delta z_o c_t`, and the cell layer norm's gain and shift.

fgr carries q, its (i, f, o) activations, as a third state: q_{t-1} is the initial ``gates0``
before the first step, held (with h and c) over inactive steps, and q_t the final ``gates_n``.
A restart zeroes h, c and q before its step (:class:`.function.Plan`), and backward the gradients
:math:`\\delta h_{t-1}, \\delta c_{t-1}, \\delta q_{t-1}` on its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...cells.family import CellFamily
from .function import Plan, RecurrentProduct, blend, chunks, split_grad

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def internal_order(cfg: CellFamily) -> tuple[str, ...]:
    """The backend's gate order: the variant's sigmoid gates among (i, f, o), then g."""
    return tuple(g for g in ("i", "f", "o") if g in cfg.gates) + ("g",)


@dataclass(frozen=True)
class Layout:
    """Column slices of the gate blocks in a (B, G*H) row; None for a gate the variant lacks."""

    i: slice | None
    f: slice | None
    o: slice | None
    g: slice
    sigmoid_first: slice  # the sigmoid gates computed before c_t (all but a peephole o)
    variant: str

    @classmethod
    def of(cls, cfg: CellFamily) -> Layout:
        H, order = cfg.hidden_size, internal_order(cfg)
        blocks = {name: slice(k * H, (k + 1) * H) for k, name in enumerate(order)}
        sig = len(order) - 1 - (cfg.variant == "peephole")
        return cls(blocks.get("i"), blocks.get("f"), blocks.get("o"), blocks["g"], slice(0, sig * H), cfg.variant)


def _cell_update(lay: Layout, a: Tensor, c_prev: Tensor, out: Tensor) -> None:
    """c_t = f c_{t-1} + i g, with cifg's i = 1 - f and removed gates 1."""
    g = a[:, lay.g]
    if lay.variant == "cifg":
        torch.lerp(g, c_prev, a[:, lay.f], out=out)
    elif lay.f is None:
        torch.addcmul(c_prev, a[:, lay.i], g, out=out)
    else:
        torch.mul(a[:, lay.f], c_prev, out=out)
        out.add_(g) if lay.i is None else out.addcmul_(a[:, lay.i], g)


def _squash(
    cfg: CellFamily, c: Tensor, w: dict[str, Tensor], out: Tensor
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """y = tanh([LN](c)) (no tanh for noaf), written to ``out`` where a tanh runs: (y, mean, rstd)
    with the cell layer norm's statistics (None without it)."""
    mean = rstd = None
    if cfg.layer_norm:
        c, mean, rstd = torch.native_layer_norm(c, (cfg.hidden_size,), w["ln_weight_c"], w["ln_bias_c"], cfg.eps)
    return (c if cfg.variant == "noaf" else torch.tanh(c, out=out)), mean, rstd


def gate_state_size(cfg: CellFamily) -> int:
    """The width of the gates ``fgr`` carries, its (i, f, o) activations (3H; the first 3H columns
    of the backend's order, in the family's order of its ``gates`` state); 0 for the others."""
    return 3 * cfg.hidden_size if cfg.variant == "fgr" else 0


def _carry_gates(plan: Plan, t: int, gates: Tensor, q_prev: Tensor) -> Tensor:
    """fgr's carried (i, f, o) after step t: the step's ``gates``, or the carry before it held on
    the rows where the step is inactive."""
    return gates if plan.active is None else torch.where(plan.active[t] > 0, gates, q_prev)


def forward(plan: Plan, xw: Tensor, initial: tuple[Tensor, ...], w: dict[str, Tensor]):
    """Run the steps from ``initial`` (h0, c0[, gates0 for fgr]); returns ((output, h_n, c_n[,
    gates_n]), saved)."""
    h0, c0 = initial[:2]
    cfg, T, B, H = plan.cfg, plan.T, plan.B, plan.cfg.hidden_size
    lay = Layout.of(cfg)
    states, cells = plan.state_buffer(h0), plan.state_buffer(c0)
    acts = torch.empty_like(xw)  # the gate activations, step by step
    c_new = xw.new_empty(T, B, H) if plan.keep_c is not None else cells[plan.new_slice]
    h_hat = xw.new_empty(T, B, H) if cfg.proj_size > 0 else None  # h before the projection
    h_new = xw.new_empty(B, cfg.output_size) if plan.keep_h is not None else None
    hm = xw.new_empty(h0.shape) if plan.recurrent_mask is not None else None
    product = RecurrentProduct(w["weight_hh"], w.get("rec_gain"), cfg, T=T, B=B)
    peep = w["weight_ch"].view(3, H) if cfg.variant == "peephole" else None
    gg_t = w["weight_gg"].t() if cfg.variant == "fgr" else None
    q_prev = initial[2] if gg_t is not None else None  # the (i, f, o) carried into the step
    y_buf = xw.new_empty(B, H)
    # the cell layer norm's statistics per step (y itself is recomputed in the backward pass)
    c_stats: dict[str, list] = {"c_mean": [None] * T, "c_rstd": [None] * T}
    for t in plan.steps():
        n = plan.new(t)
        h_prev, c_prev, a = plan.entering(t, states), plan.entering(t, cells), acts[t]
        product.forward(t, plan.matmul_input(h_prev, hm), xw[t], a)
        if gg_t is not None:
            q_prev = plan.zero_restarted(t, q_prev)
            a[:, : 3 * H].addmm_(q_prev, gg_t)
        if peep is not None:
            a[:, : 2 * H].unflatten(-1, (2, H)).addcmul_(peep[:2], c_prev.unsqueeze(1))
        a[:, lay.sigmoid_first].sigmoid_()
        if cfg.variant != "niaf":
            a[:, lay.g].tanh_()
        c = c_new[t]
        _cell_update(lay, a, c_prev, c)
        if peep is not None:
            a[:, lay.o].addcmul_(peep[2], c).sigmoid_()
        y, c_stats["c_mean"][t], c_stats["c_rstd"][t] = _squash(cfg, c, w, y_buf)
        out_h = h_hat[t] if h_hat is not None else (h_new if h_new is not None else states[n])
        torch.mul(a[:, lay.o], y, out=out_h) if lay.o is not None else out_h.copy_(y)
        if h_hat is not None:
            torch.mm(out_h, w["weight_hr"].t(), out=h_new if h_new is not None else states[n])
        if h_new is not None:
            blend(plan.keep_h, t, h_new, h_prev, states[n])
        if plan.keep_c is not None:
            blend(plan.keep_c, t, c, c_prev, cells[n])
        if q_prev is not None:
            q_prev = _carry_gates(plan, t, a[:, : 3 * H], q_prev)
    saved = {"states": states, "cells": cells, "acts": acts, "h_hat": h_hat, **product.saved("rec")}
    if plan.keep_c is not None:
        saved["c_new"] = c_new
    if cfg.layer_norm:
        saved.update(c_stats)
    outputs = (plan.outputs(states), states[plan.final].clone(), cells[plan.final].clone())
    if q_prev is not None:
        # by value: a stateful loop may overwrite the initial state in place before backward
        saved["gates0"] = initial[2].clone()
        outputs += (q_prev.clone(),)
    return outputs, saved


def gate_weight_grad(plan: Plan, d_gates: Tensor, acts: Tensor, gates0: Tensor) -> Tensor:
    """:math:`\\delta W_{gg} = \\sum_t \\delta z_{i,f,o,t}^\\top q_{t-1}` (3H, 3H), from the gradient at the
    (i, f, o) pre-activations ``d_gates`` (T, B, 3H), the activations ``acts`` (T, B, G*H) and the
    initial carry ``gates0`` (B, 3H). q_{t-1}, the (i, f, o) carried into step t, is the
    activations of the step before (t - 1, or t + 1 in reverse) where that one was active, else
    the carry it held: ``gates0`` (an active step follows inactive ones only in reverse, where all
    steps before it are inactive); ``gates0`` before the first step; zero on the rows step t
    restarts. One product of shifted views (no copy unless there are inactive or restarted
    steps) and the first step's."""
    q = acts[..., : 3 * plan.cfg.hidden_size]
    later, earlier = (slice(0, -1), slice(1, None)) if plan.reverse else (slice(1, None), slice(0, -1))
    first = plan.T - 1 if plan.reverse else 0
    q_before = q[earlier]
    if plan.active is not None:
        q_before = torch.where(plan.active[earlier] > 0, q_before, gates0)
    if plan.reset is not None:
        q_before = q_before.masked_fill(plan.reset[later], 0.0)
    grad = d_gates[later].flatten(0, 1).t().mm(q_before.flatten(0, 1))
    return grad.addmm_(d_gates[first].t(), plan.zero_restarted(first, gates0))


def backward(
    plan: Plan, w: dict[str, Tensor], saved: dict[str, Tensor], grads: tuple[Tensor, ...]
) -> dict[str, Tensor]:
    d_out, d_hn, d_cn = grads[:3]
    cfg, T, B, H = plan.cfg, plan.T, plan.B, plan.cfg.hidden_size
    lay = Layout.of(cfg)
    states, cells, acts, h_hat = saved["states"], saved["cells"], saved["acts"], saved["h_hat"]
    c_new = saved.get("c_new", cells[plan.new_slice])
    product = RecurrentProduct.restore(w["weight_hh"], w.get("rec_gain"), cfg, saved, "rec")
    peep = w["weight_ch"].view(3, H) if cfg.variant == "peephole" else None
    fgr = cfg.variant == "fgr"
    d_out = d_out if plan.active is None else d_out * plan.active
    d_z = torch.empty_like(acts)  # gradient of the pre-activations = of xw
    d_h_new = acts.new_empty(T, B, cfg.output_size) if h_hat is not None else None
    d_ln = acts.new_empty(T, B, H) if cfg.layer_norm else None  # gradient at the cell layer norm's output
    sig_if = slice(0, lay.sigmoid_first.stop - (H if lay.o is not None and peep is None else 0))
    y_tmp = acts.new_empty(B, H)
    # dq: the gradient at the (i, f, o) carried after the step (fgr), from the final one's; an
    # inactive row's carry is the one before the step (held: weight 1), so its gradient passes there
    dh, dc, dq = d_hn, d_cn, grads[3] if fgr else None
    held = None if plan.active is None or not fgr else 1.0 - plan.active
    for t in plan.backward_steps():
        a, d, c, c_prev = acts[t], d_z[t], c_new[t], plan.entering(t, cells)
        dh_new, dh_old = split_grad(plan.keep_h, t, dh + d_out[t])
        dc_new, dc_old = split_grad(plan.keep_c, t, dc)
        if d_h_new is not None:
            d_h_new[t] = dh_new
            dh_new = dh_new.mm(w["weight_hr"])
        dq, dq_held = (dq, None) if held is None else split_grad(held, t, dq)
        y, mean, rstd = _squash(cfg, c, w, y_tmp)
        if lay.o is not None:
            o, do = a[:, lay.o], d[:, lay.o]
            torch.mul(dh_new, y, out=do)
            if dq is not None:
                do += dq[:, 2 * H :]
            _sigmoid_backward(do, o, grad_input=do)
            dy = dh_new * o
        else:
            dy = dh_new
        if cfg.variant == "noaf":
            d_c = dy if d_ln is None else d_ln[t].copy_(dy)
        else:
            d_c = _tanh_backward(dy, y, grad_input=d_ln[t] if d_ln is not None else torch.empty_like(y))
        if d_ln is not None:
            mask = [True, False, False]
            d_c = torch.ops.aten.native_layer_norm_backward(d_c, c, [H], mean, rstd, w["ln_weight_c"], None, mask)[0]
        dc_tot = d_c.add_(dc_new)
        if peep is not None:
            dc_tot.addcmul_(d[:, lay.o], peep[2])
        _gate_grads(lay, a, d, dc_tot, c_prev)
        if dq is not None:
            d[:, : 2 * H] += dq[:, : 2 * H]
        _sigmoid_backward(d[:, sig_if], a[:, sig_if], grad_input=d[:, sig_if])
        if cfg.variant != "niaf":
            _tanh_backward(d[:, lay.g], a[:, lay.g], grad_input=d[:, lay.g])
        dc = dc_tot * a[:, lay.f] if lay.f is not None else dc_tot
        if peep is not None:
            dc.addcmul_(d[:, lay.i], peep[0]).addcmul_(d[:, lay.f], peep[1])
        if dc_old is not None:
            dc += dc_old
        dh = product.backward(t, d, plan.recurrent_mask)
        if dh_old is not None:
            dh += dh_old
        if fgr:
            dq = d[:, : 3 * H].mm(w["weight_gg"])
            if dq_held is not None:
                dq += dq_held
            dq = plan.zero_restarted(t, dq)
        dh, dc = plan.zero_restarted(t, dh), plan.zero_restarted(t, dc)
    d_weight, d_gain = product.grads(d_z, plan.matmul_inputs(states))
    grads = {"xw": d_z, "h0": dh, "c0": dc, "gates0": dq, "weight_hh": d_weight, "rec_gain": d_gain}
    if h_hat is not None:
        grads["weight_hr"] = d_h_new.flatten(0, 1).t().mm(h_hat.flatten(0, 1))
    if peep is not None:
        d_if = (d_z[..., : 2 * H].unflatten(-1, (2, H)) * plan.carried(cells).unsqueeze(2)).sum((0, 1))
        grads["weight_ch"] = torch.cat([d_if.flatten(), (d_z[..., lay.o] * c_new).sum((0, 1))])
    if fgr:
        grads["weight_gg"] = gate_weight_grad(plan, d_z[..., : 3 * H], acts, saved["gates0"])
    if d_ln is not None:
        mean, rstd = saved["c_mean"], saved["c_rstd"]
        grads["ln_weight_c"] = sum(((d_ln[c] * (c_new[c] - mean[c])).mul_(rstd[c])).sum((0, 1)) for c in chunks(T))
        grads["ln_bias_c"] = d_ln.sum((0, 1))
    return grads


def _gate_grads(lay: Layout, a: Tensor, d: Tensor, dc_tot: Tensor, c_prev: Tensor) -> None:
    """Write the gradients at the activations of i, f, g into ``d`` (B, G*H) from dc_tot."""
    g = a[:, lay.g]
    if lay.variant == "cifg":
        f = a[:, lay.f]
        torch.sub(c_prev, g, out=d[:, lay.f]).mul_(dc_tot)
        torch.sub(dc_tot, dc_tot * f, out=d[:, lay.g])
        return
    if lay.i is not None:
        torch.mul(dc_tot, g, out=d[:, lay.i])
        torch.mul(dc_tot, a[:, lay.i], out=d[:, lay.g])
    else:
        d[:, lay.g] = dc_tot
    if lay.f is not None:
        torch.mul(dc_tot, c_prev, out=d[:, lay.f])
