"""The GRU's loop, both reset forms (gates r, z, n; see :mod:`gatedrnn.cells.gru`).

With :math:`\\tilde h = h_{t-1} \\odot m` (recurrent dropout) and u the recurrent products:

- reset after: :math:`r, z = \\sigma(xw_{r,z} + u_{r,z})`, :math:`v = u_n + s_n`,
  :math:`n = \\tanh(xw_n + r \\odot v)`;
- reset before: :math:`n = \\tanh(xw_n + [LN]((r \\odot \\tilde h) U_n^T) \\gamma_n)`;
- :math:`h_t = n + z \\odot (h_{t-1} - n)`.

Backward, from :math:`\\delta h` (after zoneout/length splitting):
:math:`\\delta n = \\delta h (1 - z)`, :math:`\\delta z_{pre} = \\delta h (h_{t-1} - n) z (1 - z)`,
:math:`\\delta n_{pre} = \\delta n (1 - n^2)`, :math:`\\delta h_{t-1} \\mathrel{+}= \\delta h\\, z`;
reset after: :math:`\\delta r_{pre} = \\delta n_{pre} v\\, r (1 - r)` and the n block's product
receives :math:`\\delta n_{pre} r` (also the gradient of :math:`s_n`); reset before: the n product
receives :math:`\\delta n_{pre}`, :math:`\\delta(r \\odot \\tilde h) = \\delta u_n U_n`, so
:math:`\\delta r = \\delta(r\\tilde h) \\tilde h` and :math:`\\delta \\tilde h \\mathrel{+}= \\delta(r\\tilde h) r`;
U_n's gradient is then :math:`\\sum_t \\delta u_n^\\top (r \\odot \\tilde h)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells.family import CellFamily
from .function import Plan, RecurrentProduct, blend, split_grad

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def kept_shift_rows(cfg: CellFamily) -> int:
    """The last rows of the recurrent product whose shift stays inside the recurrence: the n block
    (H) when the reset multiplies it after the product, :math:`r \\odot (U_n h + s_n)`, else none."""
    return cfg.hidden_size if cfg.reset_after else 0


def _products(
    plan: Plan, w: dict[str, Tensor], saved: dict[str, Tensor] | None = None
) -> tuple[list[RecurrentProduct], list[str]]:
    """One product over all rows (reset after), or the r,z rows and the n rows (reset before)."""
    cfg, H = plan.cfg, plan.cfg.hidden_size
    weight, gain = w["weight_hh"], w.get("rec_gain")
    if cfg.reset_after:
        parts = [("rec", slice(None))]
    else:
        parts = [("rec_rz", slice(0, 2 * H)), ("rec_n", slice(2 * H, 3 * H))]
    return [
        RecurrentProduct(weight[rows], None if gain is None else gain[rows], cfg, T=plan.T, B=plan.B)
        if saved is None
        else RecurrentProduct.restore(weight[rows], None if gain is None else gain[rows], cfg, saved, prefix)
        for prefix, rows in parts
    ], [prefix for prefix, _ in parts]


def forward(plan: Plan, xw: Tensor, initial: tuple[Tensor], w: dict[str, Tensor]):
    """Run the steps from ``initial`` (h0,); returns ((output, h_n), saved). Saves r, z, n (and v
    for reset after)."""
    cfg, T, B, H = plan.cfg, plan.T, plan.B, plan.cfg.hidden_size
    states = plan.state_buffer(initial[0])
    products, prefixes = _products(plan, w)
    acts = xw.new_empty(T, B, (4 if cfg.reset_after else 3) * H)  # r, z, n[, v]
    u = xw.new_empty(B, 3 * H) if cfg.reset_after else None
    rh = xw.new_empty(B, H) if not cfg.reset_after else None
    hm = xw.new_empty(B, H) if plan.recurrent_mask is not None else None
    h_new = xw.new_empty(B, H) if plan.keep_h is not None else None
    shift = w.get("rec_shift")
    for t in plan.steps():
        h_prev, target = plan.entering(t, states), states[plan.new(t)]
        a, x_t = acts[t], xw[t]
        r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H]
        h_in = plan.matmul_input(h_prev, hm)
        if cfg.reset_after:
            products[0].forward(t, h_in, None, u)
            torch.add(x_t[:, : 2 * H], u[:, : 2 * H], out=a[:, : 2 * H]).sigmoid_()
            v = a[:, 3 * H :]
            torch.add(u[:, 2 * H :], shift, out=v) if shift is not None else v.copy_(u[:, 2 * H :])
            torch.addcmul(x_t[:, 2 * H :], r, v, out=n).tanh_()
        else:
            products[0].forward(t, h_in, x_t[:, : 2 * H], a[:, : 2 * H])
            a[:, : 2 * H].sigmoid_()
            products[1].forward(t, torch.mul(r, h_in, out=rh), x_t[:, 2 * H :], n)
            n.tanh_()
        if h_new is None:
            torch.lerp(n, h_prev, z, out=target)
        else:
            torch.lerp(n, h_prev, z, out=h_new)
            blend(plan.keep_h, t, h_new, h_prev, target)
    saved = {"states": states, "acts": acts}
    for product, prefix in zip(products, prefixes):
        saved.update(product.saved(prefix))
    return (plan.outputs(states), states[plan.final].clone()), saved


def backward(
    plan: Plan, w: dict[str, Tensor], saved: dict[str, Tensor], grads: tuple[Tensor, ...]
) -> dict[str, Tensor]:
    d_out, d_hn = grads
    cfg, H = plan.cfg, plan.cfg.hidden_size
    states, acts = saved["states"], saved["acts"]
    products, _ = _products(plan, w, saved)
    layer_norm = w.get("rec_gain") is not None
    d_out = d_out if plan.active is None else d_out * plan.active
    d_pre = acts.new_empty(plan.T, plan.B, 3 * H)  # gradient of the pre-activations = of xw
    # gradient at the products' outputs where it differs from d_pre (n block of reset-after)
    d_prod = acts.new_empty(d_pre.shape) if cfg.reset_after else d_pre
    hm = acts.new_empty(plan.B, H) if plan.recurrent_mask is not None else None
    dh = d_hn
    for t in plan.backward_steps():
        d_new, d_old = split_grad(plan.keep_h, t, dh + d_out[t])
        a, d = acts[t], d_pre[t]
        r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H]
        dr, dz, dn = d[:, :H], d[:, H : 2 * H], d[:, 2 * H :]
        h_prev = plan.entering(t, states)
        h_in = plan.matmul_input(h_prev, hm)
        dh_carry = d_new * z
        torch.sub(d_new, dh_carry, out=dn)
        _tanh_backward(dn, n, grad_input=dn)
        torch.sub(h_prev, n, out=dz).mul_(d_new)
        _sigmoid_backward(dz, z, grad_input=dz)
        if cfg.reset_after:
            torch.mul(dn, a[:, 3 * H :], out=dr)
            _sigmoid_backward(dr, r, grad_input=dr)
            dp = d_prod[t]
            dp[:, : 2 * H] = d[:, : 2 * H]
            torch.mul(dn, r, out=dp[:, 2 * H :])
            dh = products[0].backward(t, dp, plan.recurrent_mask)
        else:
            d_rh = products[1].backward(t, dn)
            torch.mul(d_rh, h_in, out=dr)
            _sigmoid_backward(dr, r, grad_input=dr)
            dh = products[0].backward(t, d[:, : 2 * H]).addcmul_(d_rh, r)
            if plan.recurrent_mask is not None:
                dh.mul_(plan.recurrent_mask)
        dh.add_(dh_carry)
        if d_old is not None:
            dh += d_old
        dh = plan.zero_restarted(t, dh)
    inputs = plan.matmul_inputs(states)
    if cfg.reset_after:
        d_weight, d_gain = products[0].grads(d_prod, inputs)
        d_shift = d_prod[..., 2 * H :].flatten(0, 1).sum(0) if w.get("rec_shift") is not None else None
        return {"xw": d_pre, "h0": dh, "weight_hh": d_weight, "rec_gain": d_gain, "rec_shift": d_shift}
    rz = products[0].grads(d_pre[..., : 2 * H], inputs)
    n = products[1].grads(d_pre[..., 2 * H :], acts[..., :H] * inputs)
    d_gain = torch.cat([rz[1], n[1]]) if layer_norm else None
    return {"xw": d_pre, "h0": dh, "weight_hh": torch.cat([rz[0], n[0]]), "rec_gain": d_gain}
