"""The pieces every kernel's loop shares, and the one ``torch.autograd.Function`` that runs a
layer and direction.

Time bookkeeping (:class:`Plan`): the carried states live in (T+1, B, ·) buffers; step t reads
slot ``prev(t)`` and writes slot ``new(t)`` (t and t+1 forward, t+1 and t in reverse), so the
outputs and the previous states of all steps are each one contiguous slice, ready for the weight
gradients' single matmul over all steps.

A restart (``reset``, see :mod:`gatedrnn.backends.reference`) zeroes the carry of some rows just
before a step: the buffers keep what each step wrote (the outputs), and a step that restarts rows
reads its carry through :meth:`Plan.entering`, zero on those rows; the weight gradients read the
same values (:meth:`Plan.carried`). Backward, the gradient reaching the carry before such a step is
zeroed on the restarted rows (:meth:`Plan.zero_restarted`). Steps that restart no row cost nothing extra.

Zoneout and sequence lengths act the same way on a carried state s: the new state is
:math:`s_t = k_t s_{t-1} + (1 - k_t) \\tilde s_t` with a keep weight :math:`k_t` that is the
zoneout mask (or its expectation p in evaluation) on active steps and 1 on inactive ones,
:math:`k = 1 - a (1 - k_{zoneout})` for the activity a. Its backward splits the incoming gradient
into :math:`k\\,\\delta` (straight to :math:`s_{t-1}`) and :math:`(1-k)\\,\\delta` (into the step).

Layer norm of each H-unit gate block (:func:`block_norm`) keeps the normalised blocks
:math:`\\hat a` and their reciprocal standard deviations; its backward is aten's fused
``native_layer_norm_backward`` (see :func:`block_norm_backward`) with the gain folded into the
incoming gradient. The gain's own gradient :math:`\\sum_{t,b} \\delta \\odot \\hat a` is summed
step by step for the recurrent blocks and in chunks of steps for the input blocks, so that no
whole-sequence temporary raises the backward pass's memory peak (the layer-norm LSTM already keeps
two more (T, B, 4H) tensors than the plain cell, the normalised input and recurrent blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ...cells.family import CellFamily

_CHUNK = 32  # steps per piece where a whole-sequence temporary would raise the memory peak


@dataclass(frozen=True)
class Plan:
    """One call's shape, direction and fixed masks (no gradients flow into these).

    Attributes:
        cfg: the cell.
        T, B: steps and batch.
        reverse: walk t = T-1 .. 0.
        active: (T, B, 1) 1.0 where t < length, else 0.0; None when every step is active.
        keep_h: weight of h_{t-1} in the carried h_t, broadcastable to (T, B, R); None for none.
        keep_c: the same for the second state (the LSTM's cell state), to (T, B, H); None for a
            kernel of one state.
        recurrent_mask: (B, R) recurrent-dropout mask multiplied into h_{t-1} before the matmul.
        replay: the same layer as a differentiable function of the Function's tensor inputs,
            ``replay(x, weight_ih, in_gain, bias, initial, params) -> (output, *finals)`` with
            ``initial`` the initial states (h0[, c0[, gates0]]) and ``params`` the dict of the
            named weights (the reference loop with the same masks, or torch's kernel for the plain
            GRU: :func:`gatedrnn.backends.cpu.replay_for`), which the backward pass differentiates
            where its own gradients must be differentiable again.
        reset: (T, B, 1) bool, True where the carry of sequence b is zeroed just before step t
            (the walk order's mask, :mod:`gatedrnn.backends.reference`); None for no restart.
        restarted_steps: the steps t at which ``reset`` restarts at least one row.
    """

    cfg: CellFamily
    T: int
    B: int
    reverse: bool
    active: Tensor | None
    keep_h: Tensor | None
    keep_c: Tensor | None
    recurrent_mask: Tensor | None
    replay: Callable[..., tuple[Tensor, ...]]
    reset: Tensor | None = None
    restarted_steps: frozenset[int] = frozenset()

    def steps(self) -> range:
        """The time indices in the order the forward pass visits them."""
        return range(self.T - 1, -1, -1) if self.reverse else range(self.T)

    def backward_steps(self) -> range:
        return range(self.T) if self.reverse else range(self.T - 1, -1, -1)

    def prev(self, t: int) -> int:
        """Slot of the state before step t in a (T+1)-long state buffer."""
        return t + 1 if self.reverse else t

    def new(self, t: int) -> int:
        """Slot of the state after step t."""
        return t if self.reverse else t + 1

    @property
    def initial(self) -> int:
        return self.T if self.reverse else 0

    @property
    def final(self) -> int:
        return 0 if self.reverse else self.T

    @property
    def prev_slice(self) -> slice:
        """The states before every step, in time order: buffer[prev_slice][t] = buffer[prev(t)]."""
        return slice(1, self.T + 1) if self.reverse else slice(0, self.T)

    @property
    def new_slice(self) -> slice:
        return slice(0, self.T) if self.reverse else slice(1, self.T + 1)

    def state_buffer(self, initial: Tensor) -> Tensor:
        """A (T+1, B, size) buffer holding ``initial`` in its initial slot."""
        buf = initial.new_empty((self.T + 1,) + tuple(initial.shape))
        buf[self.initial] = initial
        return buf

    def matmul_input(self, h: Tensor, out: Tensor | None) -> Tensor:
        """h as it enters the recurrent matmul: times the recurrent-dropout mask when there is one."""
        if self.recurrent_mask is None:
            return h
        return torch.mul(h, self.recurrent_mask, out=out)

    def matmul_inputs(self, states: Tensor) -> Tensor:
        """The same for the (T, B, R) states before every step (zero on restarted rows)."""
        before = self.carried(states)
        return before if self.recurrent_mask is None else before * self.recurrent_mask

    def restart(self, t: int) -> Tensor | None:
        """(B, 1) bool: the rows whose carry is zeroed just before step t; None where step t
        restarts no row."""
        return self.reset[t] if t in self.restarted_steps else None

    def entering(self, t: int, buffer: Tensor) -> Tensor:
        """The carried state before step t as the step reads it, from a (T+1, B, size) buffer:
        the slot ``prev(t)``, or a copy of it zeroed on the rows step t restarts (a select: an
        infinite or NaN state becomes 0)."""
        return self.zero_restarted(t, buffer[self.prev(t)])

    def carried(self, buffer: Tensor) -> Tensor:
        """(T, B, size): the carried state before every step, in time order, as the steps read it
        (:meth:`entering` for all of them at once)."""
        before = buffer[self.prev_slice]
        return before if self.reset is None else before.masked_fill(self.reset, 0.0)

    def zero_restarted(self, t: int, value: Tensor) -> Tensor:
        """``value`` (B, ·), a carried value before step t or its gradient, with the rows step t
        restarts set to zero (a new tensor where it restarts any, else ``value`` itself): the
        carry the step reads forward, and backward the cut through which nothing flows back."""
        restart = self.restart(t)
        return value if restart is None else value.masked_fill(restart, 0.0)

    def outputs(self, states: Tensor) -> Tensor:
        """(T, B, R) output: the states after each step, zero where the step is inactive."""
        out = states[self.new_slice]
        return out if self.active is None else out * self.active


def restarts(reset: Tensor | None) -> tuple[Tensor | None, frozenset[int]]:
    """A plan's ``reset`` (T, B, 1) and ``restarted_steps`` from the (T, B) bool mask in walk order
    (``(None, frozenset())`` for None)."""
    if reset is None:
        return None, frozenset()
    return reset.unsqueeze(-1), frozenset(torch.nonzero(reset.any(1)).flatten().tolist())


def blend(keep: Tensor | None, t: int, new: Tensor, old: Tensor, out: Tensor) -> None:
    """``out = keep[t] * old + (1 - keep[t]) * new`` (zoneout and length masking)."""
    torch.lerp(new, old, keep[t], out=out)


def split_grad(keep: Tensor | None, t: int, grad: Tensor) -> tuple[Tensor, Tensor | None]:
    """Backward of :func:`blend`: (gradient into the step's new value, gradient straight to the old)."""
    if keep is None:
        return grad, None
    to_old = grad * keep[t]
    return grad - to_old, to_old


def block_norm(raw: Tensor, hidden_size: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Normalise each H-unit block of ``raw`` (..., G*H): returns (normed (..., G, H), mean, rstd (..., G, 1))."""
    return torch.native_layer_norm(raw.unflatten(-1, (-1, hidden_size)), (hidden_size,), None, None, eps)


def block_norm_backward(
    grad: Tensor, normed: Tensor, rstd: Tensor, hidden_size: int, out: Tensor | None = None
) -> Tensor:
    r"""Gradient into the raw blocks (..., G*H) from ``grad`` (..., G, H) at the normalised ones
    ``normed`` (..., G, H): :math:`\sigma^{-1}(\delta - \overline{\delta} - \hat a\, \overline{\delta \hat a})`.

    aten's fused kernel computes the bracket when handed the normalised blocks with zero mean and
    unit scale; the true 1/sigma multiplies after (into ``out`` where given).
    """
    zero, one, mask = torch.zeros_like(rstd), torch.ones_like(rstd), [True, False, False]
    bracket = torch.ops.aten.native_layer_norm_backward(grad, normed, [hidden_size], zero, one, None, None, mask)[0]
    if out is None:
        return bracket.mul_(rstd).flatten(-2)
    torch.mul(bracket, rstd, out=out.unflatten(-1, (-1, hidden_size)))
    return out


def chunks(T: int) -> list[slice]:
    """Slices of a few steps each, for whole-sequence reductions whose temporaries would otherwise
    raise the memory peak."""
    return [slice(i, i + _CHUNK) for i in range(0, T, _CHUNK)]


def gain_grad(grad: Tensor, normed: Tensor) -> Tensor:
    r""":math:`\sum \delta \odot \hat a` over the two leading dims (T, B): the gains' gradient (G*H,)
    from ``grad`` (T, B, G*H) and ``normed`` (T, B, G, H), a few steps at a time."""
    normed = normed.flatten(-2)
    return sum((grad[c] * normed[c]).sum((0, 1)) for c in chunks(grad.shape[0]))


class RecurrentProduct:
    """The recurrent part of some gate rows, step by step: ``u_t = [LN](h U^T) * gain``.

    Without layer norm ``gain`` is None and u_t is the plain product; with it, the normalised blocks
    and their reciprocal standard deviations are kept in (T, B, ·) buffers for the backward pass.
    """

    def __init__(
        self,
        weight: Tensor,
        gain: Tensor | None,
        cfg: CellFamily,
        saved: dict[str, Tensor] | None = None,
        T: int = 0,
        B: int = 0,
    ) -> None:
        self.weight, self.weight_t = weight, weight.t()
        self.H, self.eps = cfg.hidden_size, cfg.eps
        self.gain = gain
        self.buffers: dict[str, Tensor] = {}
        self.d_gain: Tensor | None = None  # (1, rows), accumulated by backward with layer norm
        self.raw_grads: Tensor | None = None  # (T, B, rows), filled by backward with layer norm
        if gain is not None:
            G = weight.shape[0] // self.H
            if saved is None:
                # normalised blocks copied into one buffer (per-step tensors would leave their
                # freed memory in the heap, raising the resident peak); the small rstd as a list
                saved = {"normed": weight.new_empty(T, B, G, self.H), "rstd": [None] * T}
                self.raw = weight.new_empty(B, weight.shape[0])  # one step's product
            self.buffers = saved

    def saved(self, prefix: str) -> dict[str, Tensor]:
        """The buffers to save for the backward pass, keyed ``prefix.name`` (per-step lists are
        stacked by :class:`Recurrence`)."""
        return {f"{prefix}.{k}": v for k, v in self.buffers.items()}

    @classmethod
    def restore(
        cls, weight: Tensor, gain: Tensor | None, cfg: CellFamily, saved: dict[str, Tensor], prefix: str
    ) -> RecurrentProduct:
        """The product of a forward pass, from what :meth:`saved` stored."""
        mine = {k[len(prefix) + 1 :]: v for k, v in saved.items() if k.startswith(prefix + ".")}
        return cls(weight, gain, cfg, mine)

    def forward(self, t: int, h: Tensor, base: Tensor | None, out: Tensor) -> None:
        """``out = base + u_t`` (or ``u_t`` when ``base`` is None) for h = h_{t-1} (B, R)."""
        if self.gain is None:
            if base is None:
                torch.mm(h, self.weight_t, out=out)
            else:
                torch.addmm(base, h, self.weight_t, out=out)
            return
        b = self.buffers
        raw = torch.mm(h, self.weight_t, out=self.raw)
        normed, _, b["rstd"][t] = block_norm(raw, self.H, self.eps)
        b["normed"][t] = normed
        gain, blocks = self.gain.view(-1, self.H), out.unflatten(-1, (-1, self.H))
        if base is None:
            torch.mul(normed, gain, out=blocks)
        else:
            torch.addcmul(base.unflatten(-1, (-1, self.H)), normed, gain, out=blocks)

    def backward(self, t: int, grad: Tensor, mask: Tensor | None = None) -> Tensor:
        """Gradient of h at step t from ``grad`` (B, rows) at u_t, times ``mask`` (recurrent dropout)
        where given.

        With layer norm this step's share of the gain gradient is added up here (no whole-sequence
        temporary after the loop), and the raw product's gradient is kept for :meth:`grads`. The
        saved buffers are only read, so a graph kept with ``retain_graph`` can be run again.
        """
        if self.gain is not None:
            normed = self.buffers["normed"][t]  # (B, G, H)
            B = normed.shape[0]
            blocks = grad.unflatten(-1, (-1, self.H))
            if self.d_gain is None:
                self.d_gain = grad.new_zeros(1, grad.shape[-1])
            self.d_gain.addmm_(grad.new_ones(1, B), (blocks * normed).view(B, -1))
            scaled = blocks * self.gain.view(-1, self.H)
            if self.raw_grads is None:
                self.raw_grads = grad.new_empty((self.buffers["normed"].shape[0],) + tuple(grad.shape))
            grad = block_norm_backward(scaled, normed, self.buffers["rstd"][t], self.H, out=self.raw_grads[t])
        dh = grad.mm(self.weight)
        return dh if mask is None else dh.mul_(mask)

    def grads(self, grad_seq: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """(dU, dgain) from all steps at once, after :meth:`backward` ran for each: grad_seq
        (T, B, rows) the gradients at u, inputs (T, B, R) the h_{t-1} that entered the product."""
        raw_grad = grad_seq if self.gain is None else self.raw_grads
        d_weight = raw_grad.flatten(0, 1).t().mm(inputs.flatten(0, 1))
        return d_weight, None if self.d_gain is None else self.d_gain.view(-1)


def input_pre_activations(
    cfg: CellFamily, x: Tensor, weight: Tensor, gain: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The input part of every step at once, ``[LN](x W^T) * gain + bias``: one matmul over all
    steps, (T, B, I) -> (T, B, G*H); returns it and what its backward needs."""
    x2d = x.flatten(0, 1)
    if gain is None:
        xa = x2d.mm(weight.t()) if bias is None else torch.addmm(bias, x2d, weight.t())
        return xa.unflatten(0, x.shape[:2]), {}
    H = cfg.hidden_size
    normed, _, rstd = block_norm(x2d.mm(weight.t()).unflatten(0, x.shape[:2]), H, cfg.eps)
    xw = normed * gain.view(-1, H) if bias is None else torch.addcmul(bias.view(-1, H), normed, gain.view(-1, H))
    return xw.flatten(-2), {"in.normed": normed, "in.rstd": rstd}


def input_grads(
    cfg: CellFamily,
    d_xw: Tensor,
    x: Tensor,
    weight: Tensor,
    gain: Tensor | None,
    bias: Tensor | None,
    saved: dict[str, Tensor],
    need_x: bool,
) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor | None]:
    """Backward of :func:`input_pre_activations`: (dx, dW, d gain, d bias), dW as one matmul."""
    d_bias = None if bias is None else d_xw.flatten(0, 1).sum(0)
    d_gain = None
    if gain is not None:
        H = cfg.hidden_size
        normed, rstd = saved["in.normed"], saved["in.rstd"]
        d_gain = gain_grad(d_xw, normed)
        # d_xw is the backward's own buffer: scale it and overwrite it chunk by chunk with the
        # gradient of x W^T, so that no second (T, B, G*H) tensor exists at the memory peak
        scaled = d_xw.unflatten(-1, (-1, H)).mul_(gain.view(-1, H))
        for c in chunks(d_xw.shape[0]):
            block_norm_backward(scaled[c], normed[c], rstd[c], H, out=d_xw[c])
    d_xa = d_xw.flatten(0, 1)
    d_weight = d_xa.t().mm(x.flatten(0, 1))
    d_x = d_xa.mm(weight).unflatten(0, x.shape[:2]) if need_x else None
    return d_x, d_weight, d_gain, d_bias


def _stacked(saved: dict[str, Tensor | list[Tensor]]) -> dict[str, Tensor]:
    """Per-step lists (kept by the loops to avoid a copy per step) as (T, ...) tensors."""
    return {k: torch.stack(v) if isinstance(v, list) else v for k, v in saved.items()}


class Recurrence(torch.autograd.Function):
    """One layer and direction: forward and backward through time on one kernel.

    ``apply(plan, kernel, names, x, weight_ih, in_gain, bias, h0, c0, gates0, *params)`` with
    ``kernel`` a module or class offering ``forward(plan, xw, initial, w) -> (outputs, saved)``
    and ``backward(plan, w, saved, grads) -> dict``; returns (output, h_n[, c_n[, gates_n]]).
    ``c0`` is None for a kernel of one state, ``gates0`` None for all but the LSTM's ``fgr`` (for
    it, (B, 3H): its previous step's (i, f, o) activations); ``initial`` is the tuple of the given ones, and
    the backward pass's dict has their gradients as ``h0``, ``c0``, ``gates0``.

    A kernel whose ``normalises_input`` is True (the compiled loops) takes the input's layer
    norm over: with layer norm it receives the plain product ``x W^T`` as ``xw``, the input gain
    and the summed bias in ``w`` (``in_gain``, ``in_bias``), and returns the gradient at ``x W^T``
    as ``grads["xw"]`` with those of the gain and bias.
    """

    @staticmethod
    def forward(
        ctx,
        plan: Plan,
        kernel,
        names: tuple[str, ...],
        x: Tensor,
        weight_ih: Tensor,
        in_gain: Tensor | None,
        bias: Tensor | None,
        h0: Tensor,
        c0: Tensor | None,
        gates0: Tensor | None,
        *params: Tensor,
    ):
        w = dict(zip(names, params))
        fused = in_gain is not None and getattr(kernel, "normalises_input", False)
        if fused:
            xw, saved = input_pre_activations(plan.cfg, x, weight_ih, None, None)
            w.update(in_gain=in_gain, in_bias=bias if bias is not None else torch.zeros_like(in_gain))
        else:
            xw, saved = input_pre_activations(plan.cfg, x, weight_ih, in_gain, bias)
        initial = tuple(s for s in (h0, c0, gates0) if s is not None)
        outputs, loop_saved = kernel.forward(plan, xw, initial, w)
        del xw  # before stacking the per-step lists: the two would otherwise meet at the peak
        saved.update(_stacked(loop_saved))
        ctx.plan, ctx.kernel, ctx.names, ctx.saved_names, ctx.fused = plan, kernel, names, tuple(saved), fused
        ctx.save_for_backward(x, weight_ih, in_gain, bias, *params, *saved.values())
        # the initial states only for the replay: outside the saved set's version check, so that a
        # first-order backward still runs after a stateful loop overwrote them in place
        ctx.initial = (h0, c0, gates0)
        return outputs

    @staticmethod
    def backward(ctx, *grads: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            return Recurrence._backward_by_replay(ctx, *grads)
        with torch.no_grad():
            return Recurrence._backward(ctx, *grads)

    @staticmethod
    def _backward_by_replay(ctx, *grads: Tensor):
        """The gradients as a graph (second derivatives, gradient penalties, gradgradcheck): the
        plan's replay of the layer on the saved inputs run again under autograd and differentiated
        with ``create_graph``. The fused backward pass is first order; this path costs the replay's
        forward and backward and is taken only when asked for."""
        x, weight_ih, in_gain, bias, *rest = ctx.saved_tensors
        params = rest[: len(ctx.names)]
        inputs = (x, weight_ih, in_gain, bias, *ctx.initial, *params)
        wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[3 + i]]
        result: list[Tensor | None] = [None] * len(inputs)
        initial = tuple(s for s in ctx.initial if s is not None)
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            outputs = ctx.plan.replay(x, weight_ih, in_gain, bias, initial, dict(zip(ctx.names, params)))
            # an output may depend on nothing that requires grad (c_n of one step with only the
            # projection trainable): autograd refuses those
            live = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
            if live and wanted:
                found = torch.autograd.grad(
                    [o for o, _ in live],
                    [inputs[i] for i in wanted],
                    [g for _, g in live],
                    create_graph=True,
                    allow_unused=True,
                )
                for i, g in zip(wanted, found):
                    result[i] = g
        return (None, None, None, *result)

    @staticmethod
    def _backward(ctx, *grads: Tensor):
        x, weight_ih, in_gain, bias, *rest = ctx.saved_tensors
        k = len(ctx.names)
        w = dict(zip(ctx.names, rest[:k]))
        saved = dict(zip(ctx.saved_names, rest[k:]))
        need_x = ctx.needs_input_grad[3]
        if ctx.fused:
            w.update(in_gain=in_gain, in_bias=bias if bias is not None else torch.zeros_like(in_gain))
            d = ctx.kernel.backward(ctx.plan, w, saved, grads)
            d_x, d_w, _, _ = input_grads(ctx.plan.cfg, d["xw"], x, weight_ih, None, None, saved, need_x)
            d_gain, d_bias = d["in_gain"], (d["in_bias"] if bias is not None else None)
        else:
            d = ctx.kernel.backward(ctx.plan, w, saved, grads)
            d_x, d_w, d_gain, d_bias = input_grads(ctx.plan.cfg, d["xw"], x, weight_ih, in_gain, bias, saved, need_x)
        d_initial = (d["h0"], d.get("c0"), d.get("gates0"))
        return (None, None, None, d_x, d_w, d_gain, d_bias, *d_initial, *(d.get(n) for n in ctx.names))
