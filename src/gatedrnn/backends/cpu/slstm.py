r"""The sLSTM's layer kernel for the cpu backend (see :mod:`gatedrnn.cells.slstm` for the equations):
a fused forward and a hand-derived backward through time, one layer and direction per call.

Layout. The gate rows are reordered head-major inside the kernel: row ``k 4D + g D + j`` is gate g
of unit ``k D + j`` (the module's ``g H + k D + j``), so that head k's four gate blocks are one
contiguous 4D-wide slice of a (B, 4H) row and the block-diagonal recurrent product of a step is
one batched product (K, B, D) x (K, D, 4D) with the module's ``weight_hh`` (K, 4D, D) as it is.

Forward: the input part of every step, :math:`x W_{ih}^T + b_{ih} + b_{hh}`, as one matmul into a
(T, B, 4H) buffer; each step adds its recurrent product there (which then holds the step's
pre-activations, saved for the backward pass) and runs the gate math, writing h, c, n, m into
(T+1, B, H) buffers (step t reads slot t and writes t+1; t+1 and t in reverse). Nothing else is
saved: the backward pass recomputes the gates from the pre-activations and the states.

Backward, per step, with :math:`a = \log f_t + m_{t-1}`, :math:`\bar\imath = e^{\tilde\imath - m_t}`,
:math:`\bar f = e^{a - m_t}` (before the clamps), :math:`u = \tanh\tilde z`, and δh (the output's
and the next step's), δc, δn, δm arriving:

.. math::
    \begin{array}{ll}
    \delta o = \delta h\, c_t / n_t, \quad \delta c \mathrel{+}= \delta h\, o / n_t, \quad
        \delta n \mathrel{-}= \delta h\, o c_t / n_t^2 \\
    \delta f' = \delta c\, c_{t-1} + \delta n\, n_{t-1}, \quad \delta i' = \delta c\, u + \delta n,
        \quad \delta\tilde z = \delta c\, i' (1 - u^2), \quad \delta\tilde o = \delta o\, o (1 - o) \\
    g_i = \delta i' [\bar\imath \le 1] \bar\imath, \quad g_f = \delta f' [\bar f \le 1] \bar f, \quad
        \delta m_t = \delta m - g_i - g_f \\
    \delta\tilde\imath = g_i + w_i \delta m_t, \quad \delta a = g_f + w_a \delta m_t, \quad
        \delta\tilde f = \delta a \, \tfrac{d \log f}{d\tilde f}, \quad \delta m_{t-1} = \delta a \\
    \delta c_{t-1} = \delta c\, f', \quad \delta n_{t-1} = \delta n\, f', \quad
        \delta h_{t-1} = R^T \delta(\tilde\imath, \tilde f, \tilde z, \tilde o)
    \end{array}

where the max's weights are autograd's subgradient on the reference loop: :math:`(w_a, w_i) =
(1, 0)` for :math:`a > \tilde\imath`, (0, 1) below, (½, ½) on a tie, and (0, 1) on a first step
(:math:`n_{t-1} = 0`); the clamps pass the gradient where the value is at most 1; logsigmoid's
derivative is softplus's (exactly 1 where :math:`\tilde f < -20`). Then
:math:`\delta W_{hh}` is one batched product over all steps and :math:`\delta W_{ih}`,
:math:`\delta x` and the bias's gradient one matmul or sum each (:func:`.function.input_grads`).

Sequence lengths: an inactive step keeps every state and outputs zero; its gradients pass
straight to the states before it. Restarts (``reset``): a step that restarts a row reads h, c, n,
m = 0 there (:meth:`.function.Plan.entering`), so n_{t-1} = 0 makes it take the first-step rule
m_t = ĩ (keyed on n per element, not on t), and the gradients at those states before it are zero
(:meth:`.function.Plan.zero_restarted`). Zoneout and recurrent dropout are not in the kernel: a call
with either active runs on the reference loop (the backend sends it there), as does gate
recording. A gradient asked with ``create_graph=True`` replays the layer on the reference loop
and differentiates that, as :class:`.function.Recurrence` does. float32 and float64 only
(:func:`supports`); m is kept in the parameters' dtype, which is the family's stabiliser dtype
for both.

The steps run in the compiled loop of ``csrc/slstm_loop.cpp`` where the compiled ops are built
(:mod:`.compiled`), else in this module's Python loop, which computes the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from ...cells.family import CellFamily, LayerWeights
from .. import active_steps, reference, sum_present
from . import compiled
from .function import Plan, input_grads, input_pre_activations, restarts

DTYPES = (torch.float32, torch.float64)
"""The dtypes the kernel computes in (m's stabiliser dtype is then the parameters' own)."""

SOFTPLUS_THRESHOLD = 20.0
"""Where torch's softplus turns linear (:math:`\\operatorname{softplus}(x) = x` for x above it)."""


def supports(cfg: CellFamily, x: Tensor) -> str | None:
    """None for float32 and float64 inputs, else the reason to refuse (``auto`` then runs the
    reference loop)."""
    if x.dtype not in DTYPES:
        return f"expected a float32 or float64 input, got {x.dtype}"
    return None


def head_major_rows(cfg: CellFamily, device: torch.device) -> Tensor:
    """Indices taking the module's gate-major rows (g H + k D + j) to the kernel's head-major order
    (k 4D + g D + j): ``kernel_rows = module_rows[index]``."""
    K, D, H = cfg.num_heads, cfg.head_size, cfg.hidden_size
    gate, head, unit = torch.meshgrid(
        torch.arange(4, device=device), torch.arange(K, device=device), torch.arange(D, device=device), indexing="ij"
    )
    return (gate * H + head * D + unit).permute(1, 0, 2).reshape(-1)


def kernel_weights(cfg: CellFamily, w: LayerWeights, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """(weight_ih, bias) in the kernel's row order, with ``bias_ih + bias_hh`` summed (differentiable)."""
    rows = head_major_rows(cfg, device)
    bias = sum_present(w.get("bias_ih"), w.get("bias_hh"))
    return w["weight_ih"].index_select(0, rows), None if bias is None else bias.index_select(0, rows)


def module_weights(cfg: CellFamily, weight_ih: Tensor, bias: Tensor | None, weight_hh: Tensor) -> LayerWeights:
    """The inverse of :func:`kernel_weights` (differentiable): weights with which the reference loop
    computes the same layer, the summed bias as ``bias_ih`` and a zero ``bias_hh``."""
    back = torch.argsort(head_major_rows(cfg, weight_ih.device))
    w: LayerWeights = {"weight_ih": weight_ih.index_select(0, back), "weight_hh": weight_hh}
    if bias is not None:
        w.update(bias_ih=bias.index_select(0, back), bias_hh=torch.zeros_like(bias))
    return w


def run_layer(
    cfg: CellFamily,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: LayerWeights,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
    reset: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, ...], None]:
    """Run one layer and direction (contract: :mod:`gatedrnn.backends.reference`; zoneout and
    recurrent dropout never reach it: the backend runs them on the reference loop)."""
    T, B = x.shape[:2]
    active = None
    if lengths is not None and bool((lengths < T).any()):
        active = active_steps(lengths, T).to(x.dtype)
    weight_ih, bias = kernel_weights(cfg, weights, x.device)
    replay = partial(_replay, cfg, reverse, lengths, reset)
    plan = Plan(cfg, T, B, reverse, active, None, None, None, replay, *restarts(reset))
    states = tuple(s.to(x.dtype).contiguous() for s in state)
    out, *final = SLSTMRecurrence.apply(plan, x.contiguous(), weight_ih, bias, *states, weights["weight_hh"])
    return out, tuple(final), None


def _replay(
    cfg: CellFamily,
    reverse: bool,
    lengths: Tensor | None,
    reset: Tensor | None,
    x: Tensor,
    weight_ih: Tensor,
    bias: Tensor | None,
    initial: tuple[Tensor, ...],
    weight_hh: Tensor,
) -> tuple[Tensor, ...]:
    """The layer :class:`SLSTMRecurrence` ran, on the reference loop from its inputs (the plan's
    ``replay``): (output, h_n, c_n, n_n, m_n)."""
    w = module_weights(cfg, weight_ih, bias, weight_hh)
    out, finals, _ = reference.run_layer(cfg, x, initial, w, reverse=reverse, lengths=lengths, reset=reset)
    return (out, *finals)


class SLSTMRecurrence(torch.autograd.Function):
    """``apply(plan, x, weight_ih, bias, h0, c0, n0, m0, weight_hh)`` -> (output, h_n, c_n, n_n, m_n)
    with weight_ih (4H, I) and bias (4H,) in the kernel's row order (:func:`kernel_weights`). The
    plan (:class:`.function.Plan`) has no zoneout or dropout masks; its ``replay`` takes
    ``(x, weight_ih, bias, (h0, c0, n0, m0), weight_hh)``."""

    @staticmethod
    def forward(ctx, plan: Plan, x, weight_ih, bias, h0, c0, n0, m0, weight_hh):
        pre, _ = input_pre_activations(plan.cfg, x, weight_ih, None, bias)
        states = _loop(x.dtype).forward(plan, pre, (h0, c0, n0, m0), weight_hh)  # pre: the pre-activations now
        ctx.plan, ctx.initial = plan, (h0, c0, n0, m0)
        ctx.save_for_backward(x, weight_ih, bias, weight_hh, pre, *states)
        return (plan.outputs(states[0]), *(s[plan.final].clone() for s in states))

    @staticmethod
    def backward(ctx, d_out, *d_finals):
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            return SLSTMRecurrence._backward_by_replay(ctx, d_out, *d_finals)
        with torch.no_grad():
            x, weight_ih, bias, weight_hh, pre, *states = ctx.saved_tensors
            plan = ctx.plan
            if plan.active is not None:
                d_out = d_out * plan.active
            d_pre, d_initial = _loop(x.dtype).backward(plan, pre, states, weight_hh, d_out, d_finals)
            d_weight_hh = recurrent_weight_grad(plan, d_pre, states[0])
            d_x, d_weight_ih, _, d_bias = input_grads(
                plan.cfg, d_pre, x, weight_ih, None, bias, {}, ctx.needs_input_grad[1]
            )
        return (None, d_x, d_weight_ih, d_bias, *d_initial, d_weight_hh)

    @staticmethod
    def _backward_by_replay(ctx, d_out, *d_finals):
        """The gradients as a graph: the layer rerun on the reference loop from the saved inputs and
        differentiated with ``create_graph``."""
        x, weight_ih, bias, weight_hh = ctx.saved_tensors[:4]
        inputs = (x, weight_ih, bias, *ctx.initial, weight_hh)
        wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[1 + i]]
        result: list[Tensor | None] = [None] * len(inputs)
        with torch.enable_grad():
            outputs = ctx.plan.replay(x, weight_ih, bias, ctx.initial, weight_hh)
            live = [(o, g) for o, g in zip(outputs, (d_out, *d_finals)) if o.requires_grad]
            if live and wanted:
                found = torch.autograd.grad(
                    [o for o, _ in live], [inputs[i] for i in wanted], [g for _, g in live],
                    create_graph=True, allow_unused=True,
                )  # fmt: skip
                for i, g in zip(wanted, found):
                    result[i] = g
        return (None, *result)


def recurrent_weight_grad(plan: Plan, d_pre: Tensor, h_states: Tensor) -> Tensor:
    """:math:`\\delta R_k = \\sum_{t,b} \\delta z_{t,b,k}^\\top h_{t-1,b,k}` (K, 4D, D) as one batched
    product over all steps, from d_pre (T, B, 4H) head-major and the (T+1, B, H) h buffer."""
    cfg, T, B = plan.cfg, plan.T, plan.B
    K, D = cfg.num_heads, cfg.head_size
    grads = d_pre.view(T * B, K, 4 * D).permute(1, 2, 0)
    inputs = plan.carried(h_states).reshape(T * B, K, D).transpose(0, 1)
    return torch.bmm(grads, inputs)


def _loop(dtype: torch.dtype):
    """The compiled loop where the compiled ops run ``dtype``, else the Python one."""
    return CompiledLoop if compiled.ops_run(dtype) else PythonLoop


def _log_forget(cfg: CellFamily, f_raw: Tensor) -> Tensor:
    """log f: logsigmoid as -softplus(-f) (the reference loop's form), or f itself for the exp gate."""
    return -F.softplus(-f_raw) if cfg.forget_gate == "sigmoid" else f_raw


def _log_forget_grad(cfg: CellFamily, f_raw: Tensor) -> Tensor | None:
    """d log f / d f (None for the exp gate, where it is 1): softplus's derivative at -f."""
    if cfg.forget_gate != "sigmoid":
        return None
    return torch.where(-f_raw > SOFTPLUS_THRESHOLD, torch.ones_like(f_raw), torch.sigmoid(-f_raw))


@dataclass
class _Gates:
    """One step's gate values, each (B, K, D): the raw pre-activations and what follows from them."""

    i_raw: Tensor
    f_raw: Tensor
    a: Tensor  # log f + m_{t-1}
    m: Tensor
    i_exp: Tensor  # exp(i_raw - m) before the clamp
    f_exp: Tensor  # exp(a - m) before the clamp
    i: Tensor
    f: Tensor
    u: Tensor  # tanh(z_raw)
    o: Tensor
    first: Tensor  # n_{t-1} == 0


def _gates(cfg: CellFamily, pre: Tensor, n_prev: Tensor, m_prev: Tensor) -> _Gates:
    """The gate math of one step from its pre-activations ``pre`` (B, K, 4, D) and n, m before it."""
    i_raw, f_raw, z_raw, o_raw = pre.unbind(2)
    a = _log_forget(cfg, f_raw) + m_prev
    first = n_prev == 0
    m = torch.where(first, i_raw, torch.maximum(a, i_raw))
    i_exp, f_exp = torch.exp(i_raw - m), torch.exp(a - m)
    return _Gates(
        i_raw, f_raw, a, m, i_exp, f_exp, i_exp.clamp(max=1.0), f_exp.clamp(max=1.0), torch.tanh(z_raw),
        torch.sigmoid(o_raw), first,
    )  # fmt: skip


def _heads(cfg: CellFamily, t: Tensor) -> Tensor:
    """A (..., H) tensor as (..., K, D)."""
    return t.unflatten(-1, (cfg.num_heads, cfg.head_size))


class PythonLoop:
    """The steps in Python, a few aten calls each."""

    @staticmethod
    def forward(plan: Plan, pre: Tensor, initial: tuple[Tensor, ...], weight_hh: Tensor) -> tuple[Tensor, ...]:
        """Add each step's recurrent product into ``pre`` (T, B, 4H) and run the steps: returns the
        (T+1, B, H) buffers of h, c, n, m."""
        cfg, B = plan.cfg, plan.B
        K, D = cfg.num_heads, cfg.head_size
        states = tuple(plan.state_buffer(s) for s in initial)
        weight_t = weight_hh.transpose(1, 2)  # (K, D, 4D)
        raw = pre.new_empty(K, B, 4 * D)
        for t in plan.steps():
            n = plan.new(t)
            h_p, c_p, n_p, m_p = (_heads(cfg, plan.entering(t, s)) for s in states)
            torch.bmm(h_p.transpose(0, 1), weight_t, out=raw)
            step = pre[t].view(B, K, 4, D)
            step.add_(raw.transpose(0, 1).view(B, K, 4, D))
            g = _gates(cfg, step, n_p, m_p)
            c = g.f * c_p + g.i * g.u
            n_new = g.f * n_p + g.i
            h = g.o * c / n_new
            new = (h, c, n_new, g.m)
            if plan.active is not None:
                keep = plan.active[t].unsqueeze(-1) == 0  # (B, 1, 1)
                new = tuple(torch.where(keep, old, v) for v, old in zip(new, (h_p, c_p, n_p, m_p)))
            for buf, v in zip(states, new):
                _heads(cfg, buf[n]).copy_(v)
        return states

    @staticmethod
    def backward(
        plan: Plan,
        pre: Tensor,
        states: list[Tensor],
        weight_hh: Tensor,
        d_out: Tensor,
        d_finals: tuple[Tensor, ...],
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """(d_pre (T, B, 4H) in the kernel's order, the initial states' gradients (h, c, n, m))."""
        cfg, B = plan.cfg, plan.B
        K, D = cfg.num_heads, cfg.head_size
        d_pre = torch.empty_like(pre)
        dh, dc, dn, dm = (_heads(cfg, g).clone() for g in d_finals)
        for t in plan.backward_steps():
            c_p, n_p, m_p = (_heads(cfg, plan.entering(t, s)) for s in states[1:])
            step = pre[t].view(B, K, 4, D)
            g = _gates(cfg, step, n_p, m_p)
            dh = dh + _heads(cfg, d_out[t])
            carried = (dh, dc, dn, dm)
            if plan.active is not None:
                act = plan.active[t].unsqueeze(-1)  # (B, 1, 1)
                dh, dc, dn, dm = (v * act for v in carried)
            d = d_pre[t].view(B, K, 4, D)
            dc, dn, da = _step_backward(cfg, g, d, dh, dc, dn, dm, c_p, n_p)
            dh = torch.bmm(d.view(B, K, 4 * D).transpose(0, 1), weight_hh).transpose(0, 1)
            news = (dh, dc * g.f, dn * g.f, da)
            if plan.active is not None:  # an inactive row's gradients pass to the states before it
                news = tuple(v + old * (1 - act) for v, old in zip(news, carried))
            dh, dc, dn, dm = (_heads(cfg, plan.zero_restarted(t, v.reshape(B, K * D))) for v in news)
        return d_pre, tuple(v.reshape(B, K * D) for v in (dh, dc, dn, dm))


def _step_backward(
    cfg: CellFamily, g: _Gates, d: Tensor, dh: Tensor, dc: Tensor, dn: Tensor, dm: Tensor, c_p: Tensor, n_p: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One step's backward (the module docstring's equations): writes the gradient at the
    pre-activations into ``d`` (B, K, 4, D) from those at h_t, c_t, n_t, m_t, and returns
    (δc, δn after the step's own terms, δa = δm_{t-1})."""
    c = g.f * c_p + g.i * g.u
    n = g.f * n_p + g.i
    g_oc = dh / n
    dn = dn - dh * (g.o * c) / (n * n)
    dc = dc + g_oc * g.o
    d_f = dc * c_p + dn * n_p
    d_i = dc * g.u + dn
    torch.mul(dc * g.i, 1 - g.u * g.u, out=d[:, :, 2])
    torch.mul(g_oc * c, g.o * (1 - g.o), out=d[:, :, 3])
    zero = torch.zeros_like(d_i)
    g_i = torch.where(g.i_exp <= 1, d_i * g.i_exp, zero)
    g_f = torch.where(g.f_exp <= 1, d_f * g.f_exp, zero)
    dm = dm - g_i - g_f
    half = torch.full_like(dm, 0.5)
    w_a = torch.where(g.first, zero, torch.where(g.a == g.i_raw, half, (g.a > g.i_raw).to(dm.dtype)))
    torch.add(g_i, dm * (1 - w_a), out=d[:, :, 0])
    da = g_f + dm * w_a
    dlog_f = _log_forget_grad(cfg, g.f_raw)
    d[:, :, 1] = da if dlog_f is None else da * dlog_f
    return dc, dn, da


class CompiledLoop:
    """The steps in the compiled loop (``csrc/slstm_loop.cpp``), with :class:`PythonLoop`'s interface."""

    @staticmethod
    def forward(plan: Plan, pre: Tensor, initial: tuple[Tensor, ...], weight_hh: Tensor) -> tuple[Tensor, ...]:
        return tuple(
            torch.ops.gatedrnn_cpu.slstm_forward(
                pre,
                *initial,
                weight_hh,
                plan.active,
                compiled.restart_mask(plan),
                plan.reverse,
                plan.cfg.forget_gate == "exp",
            )
        )

    @staticmethod
    def backward(
        plan: Plan,
        pre: Tensor,
        states: list[Tensor],
        weight_hh: Tensor,
        d_out: Tensor,
        d_finals: tuple[Tensor, ...],
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        d_pre, *d_initial = torch.ops.gatedrnn_cpu.slstm_backward(
            pre,
            *states,
            weight_hh,
            d_out,
            *d_finals,
            plan.active,
            compiled.restart_mask(plan),
            plan.reverse,
            plan.cfg.forget_gate == "exp",
        )
        return d_pre, tuple(d_initial)
