"""The generic backend: any family's step, on any device, without the reference loop's costs.

It computes exactly what :func:`gatedrnn.backends.reference.run_layer` computes (the contract is
that module's docstring) for every family, built-in or the user's, from the family's own
:meth:`~gatedrnn.CellFamily.input_projection`, :meth:`~gatedrnn.CellFamily.initial_carry` and
:meth:`~gatedrnn.CellFamily.step` in device-generic torch ops. The input projection of the whole
sequence is one product before the loop (and its gradient one product after it). Two loops run
the steps:

- **the graph loop** (the default): the steps under autograd, reading the projection through
  views from one ``unbind`` and writing the outputs with one ``stack``, so that the backward pass
  is linear in T. (Indexing ``x_proj[t]``, as the reference loop does, gives each step's gradient
  a zero-filled (T, B, G*H) tensor of its own: a backward quadratic in T.) Lengths mask the carry
  with one ``where`` per state and step; no gate values are kept. It runs under ``torch.func``
  transforms, ``create_graph``, ``torch.compile`` and ``torch.export`` as any autograd code does.

- **the compiled loop**: backpropagation through time by hand, a ``torch.autograd.Function``
  whose forward loop runs under no_grad and keeps only the carries, and whose backward loop
  recomputes each step and takes its vector-Jacobian product (``torch.func.vjp``) with respect
  to the step's input projection, the carry and the recurrent weights, summing the weights' over
  the steps; that per-step product is compiled by ``torch.compile`` (inductor, ``fullgraph``) once
  per configuration, batch, dtype and device. Per step, with a carry gradient
  :math:`\\delta_t` at the carry :math:`s_t = f(a_t, s_{t-1}; U)`:

  .. math::
      \\delta_{t-1} = \\delta^{out}_{t-1} + \\Big(\\frac{\\partial f}{\\partial s_{t-1}}\\Big)^{\\!\\top} \\delta_t,
      \\qquad \\bar a_t = \\Big(\\frac{\\partial f}{\\partial a_t}\\Big)^{\\!\\top} \\delta_t,
      \\qquad \\bar U \\mathrel{+}= \\Big(\\frac{\\partial f}{\\partial U}\\Big)^{\\!\\top} \\delta_t

  (lengths, zoneout and recurrent dropout are part of f). Where a gradient must be differentiable
  again (``create_graph``), its backward replays the graph loop from the saved inputs and
  differentiates that.

Which loop runs (:func:`loop_for`): the compiled loop where grad mode is on and something requires
grad, on the CPU, for a small step (B * G*H at most :data:`COMPILE_MAX_WIDTH`, where a step's cost
is its per-op overhead rather than its arithmetic, which the compiled product cuts), outside
``torch.func`` transforms and tracing, once the same configuration has run
:data:`COMPILE_AFTER_STEPS` steps on the graph loop (so that a short script never waits for a
compile, and a long run stops paying the graph loop's overhead: the rent-or-buy rule). A
configuration whose compile fails runs the graph loop from then on (the call that found the
failure finishes with the uncompiled product). ``GATEDRNN_GENERIC_LOOP`` set to ``graph``,
``bptt`` (the hand-written backward, uncompiled) or ``compiled`` runs that loop for every call it
can run (benchmarks and tests).
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells.family import CellFamily, LayerWeights
from ..config import Noise
from . import reference

name = "generic"
RUNS_ANY_FAMILY = True

ENV = "GATEDRNN_GENERIC_LOOP"
LOOPS = ("graph", "bptt", "compiled")
COMPILE_AFTER_STEPS = 20_000
"""Steps a configuration runs on the graph loop in training before its step is compiled."""
COMPILE_MAX_WIDTH = 4096
"""The largest B * G*H (elements of one step's input projection) whose step is compiled on the CPU."""
COMPILE_BACKEND = "inductor"


def supports(cfg: CellFamily, x: Tensor) -> str | None:
    """Every family on every device, under transforms and tracing too: returns None."""
    return None


@dataclass(frozen=True)
class Walk:
    """One call's loop: the cell, the direction and the masks that act on each step.

    Attributes:
        cfg: the cell.
        reverse: walk t = T-1 .. 0.
        active: (T, B, 1) bool, t < length; None when every sequence is T long.
        noise: zoneout and recurrent dropout (the reference's :func:`~.reference.layer_step` applies it).
    """

    cfg: CellFamily
    reverse: bool
    active: Tensor | None
    noise: Noise | None

    def steps(self, T: int) -> range:
        """The time indices in the order the forward pass visits them."""
        return range(T - 1, -1, -1) if self.reverse else range(T)

    def advance(self, x_proj_t: Tensor, carry: tuple[Tensor, ...], weights: LayerWeights, t: int
                ) -> tuple[Tensor, ...]:
        """The carry after step t: the family's step with the noise, kept where t is past a sequence's end."""
        new, _ = reference.layer_step(self.cfg, x_proj_t, carry, weights, self.noise, t)
        if self.active is None:
            return new
        return tuple(torch.where(self.active[t], n, o) for n, o in zip(new, carry))

    def at(self, t: int) -> Walk:
        """This walk's masks of step t alone, as step 0 of a one-step walk (what the compiled product takes)."""
        noise = self.noise
        if noise is not None and noise.zoneout_h is not None:
            noise = Noise(noise.recurrent_mask, noise.zoneout, _cut(noise.zoneout_h, t), _cut(noise.zoneout_c, t),
                          tuple(_cut(m, t) for m in noise.zoneout_rest))
        return Walk(self.cfg, self.reverse, None if self.active is None else self.active[t:t + 1], noise)

    def run(self, x_proj: Tensor, carry: tuple[Tensor, ...], weights: LayerWeights, keep: bool = False
            ) -> tuple[Tensor, tuple[Tensor, ...], list[tuple[Tensor, ...]]]:
        """The loop over x_proj (T, B, G*H) from ``carry``: (output (T, B, R), the last carry, and with
        ``keep`` the carry before each step t at index t (else an empty list))."""
        T = x_proj.shape[0]
        inputs = x_proj.unbind(0)
        outputs: list[Tensor] = [x_proj] * T
        before: list[tuple[Tensor, ...]] = [()] * T if keep else []
        for t in self.steps(T):
            if keep:
                before[t] = carry
            carry = self.advance(inputs[t], carry, weights, t)
            outputs[t] = carry[0]
        out = torch.stack(outputs)
        if self.active is not None:
            out = torch.where(self.active, out, 0.0)
        return out, carry, before


def _cut(mask: Tensor | None, t: int) -> Tensor | None:
    """Step t of a (T, ...) mask as a (1, ...) one."""
    return None if mask is None else mask[t:t + 1]


def step_vjp(walk: Walk, x_proj_t: Tensor, carry: tuple[Tensor, ...], weights: LayerWeights,
             grad: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...], LayerWeights]:
    """The vector-Jacobian product of one step (``walk`` cut to it by :meth:`Walk.at`) at ``grad``
    (the gradient at the carry after it): the gradients at x_proj_t, the carry before it and the
    weights, by rerunning the step under autograd (zeros where the step does not use an input)."""
    with torch.enable_grad():
        leaves = [x_proj_t.detach().requires_grad_(), *(c.detach().requires_grad_() for c in carry),
                  *(w.detach().requires_grad_() for w in weights.values())]
        new = walk.advance(leaves[0], tuple(leaves[1:1 + len(carry)]), dict(zip(weights, leaves[1 + len(carry):])), 0)
        live = [(o, g) for o, g in zip(new, grad) if o.requires_grad]
        found = torch.autograd.grad([o for o, _ in live], leaves, [g for _, g in live], allow_unused=True)
    found = [torch.zeros_like(v) if d is None else d for v, d in zip(leaves, found)]
    return found[0], tuple(found[1:1 + len(carry)]), dict(zip(weights, found[1 + len(carry):]))


def traceable_step_vjp(walk: Walk, x_proj_t: Tensor, carry: tuple[Tensor, ...], weights: LayerWeights,
                       grad: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...], LayerWeights]:
    """:func:`step_vjp` by ``torch.func.vjp``, which torch.compile traces (it does not trace
    ``torch.autograd.grad``)."""
    _, pullback = torch.func.vjp(lambda a, s, w: walk.advance(a, s, w, 0), x_proj_t, carry, weights)
    return pullback(grad)


_COMPILED: dict[tuple, Callable | None] = {}  # key -> the compiled product, None once its compile failed
_RENT: dict[tuple, int] = {}  # key -> steps run on the graph loop in training


def _key(walk: Walk, x_proj: Tensor) -> tuple:
    """What one compiled product serves: the cell, the batch and width, dtype, device and mask kinds."""
    noise = walk.noise
    masks = () if noise is None else (noise.recurrent_mask is not None, noise.zoneout,
                                      tuple(m is not None for m in noise.zoneout_keeps))
    return (walk.cfg, tuple(x_proj.shape[1:]), x_proj.dtype, x_proj.device, walk.active is not None, masks)


def _own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: torch.compile keeps its cache (and its recompile limit)
    per code object, so that each configuration's product is compiled and looked up apart."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _product(key: tuple, compiled: bool) -> Callable:
    """The step product for ``key``: compiled (made on first use) or :func:`step_vjp`."""
    if not compiled:
        return step_vjp
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_own_code(traceable_step_vjp), backend=COMPILE_BACKEND, fullgraph=True,
                                       dynamic=False)
    return _COMPILED[key] or step_vjp


def _tracing_or_transformed() -> bool:
    """Whether torch.compile or torch.export is tracing, or a torch.func transform is active: the
    hand-written backward has no functorch rule and would be traced as opaque Python."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return torch.compiler.is_compiling() or exporting or torch._C._are_functorch_transforms_active()


def loop_for(walk: Walk, x_proj: Tensor, training: bool) -> str:
    """``"graph"``, ``"bptt"`` or ``"compiled"`` for this call (rules: the module docstring);
    counts the graph loop's training steps towards the compile."""
    if not training or _tracing_or_transformed():
        return "graph"
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in LOOPS:
        return forced
    key = _key(walk, x_proj)
    small = x_proj.device.type == "cpu" and x_proj.shape[1] * x_proj.shape[2] <= COMPILE_MAX_WIDTH
    if not small or _COMPILED.get(key, True) is None:
        return "graph"
    if _RENT.get(key, 0) >= COMPILE_AFTER_STEPS:
        return "compiled"
    _RENT[key] = _RENT.get(key, 0) + x_proj.shape[0]
    return "graph"


class HandBPTT(torch.autograd.Function):
    """The compiled loop: ``apply(walk, compiled, names, x_proj, *states, *weights)`` ->
    (output, *final states), the weights being the step's (``names`` their keys)."""

    @staticmethod
    def forward(ctx, walk: Walk, compiled: bool, names: tuple[str, ...], x_proj: Tensor, *inputs: Tensor):
        n = len(walk.cfg.states)
        states, weights = inputs[:n], dict(zip(names, inputs[n:]))
        out, carry, before = walk.run(x_proj, walk.cfg.initial_carry(states), weights, keep=True)
        ctx.walk, ctx.compiled, ctx.names, ctx.before = walk, compiled, names, before
        ctx.save_for_backward(x_proj, *inputs)
        return (out, *carry[:n])

    @staticmethod
    def backward(ctx, grad_out: Tensor, *grad_final: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            return HandBPTT._backward_by_replay(ctx, grad_out, *grad_final)
        with torch.no_grad():
            return HandBPTT._backward(ctx, grad_out, *grad_final)

    @staticmethod
    def _backward(ctx, grad_out: Tensor, *grad_final: Tensor):
        walk, before = ctx.walk, ctx.before
        x_proj, *inputs = ctx.saved_tensors
        n = len(walk.cfg.states)
        states, weights = inputs[:n], dict(zip(ctx.names, inputs[n:]))
        key = _key(walk, x_proj)
        product = _product(key, ctx.compiled)
        grad = tuple(grad_final) + tuple(torch.zeros_like(c) for c in before[0][n:])
        d_x_proj = torch.empty_like(x_proj)
        d_weights: LayerWeights = {}
        for t in reversed(walk.steps(x_proj.shape[0])):
            g_out = grad_out[t] if walk.active is None else torch.where(walk.active[t], grad_out[t], 0.0)
            grad = (grad[0] + g_out, *grad[1:])
            try:
                d_x_proj[t], grad, d_w = product(walk.at(t), x_proj[t], before[t], weights, grad)
            except Exception:
                if product is step_vjp:
                    raise
                _COMPILED[key], product = None, step_vjp  # its compile failed: uncompiled from here
                d_x_proj[t], grad, d_w = product(walk.at(t), x_proj[t], before[t], weights, grad)
            for k, d in d_w.items():
                d_weights[k] = d if k not in d_weights else d_weights[k].add_(d)
        with torch.enable_grad():  # through the family's initial_carry to the states
            leaves = tuple(s.detach().requires_grad_() for s in states)
            carry = walk.cfg.initial_carry(leaves)
            live = [(c, g) for c, g in zip(carry, grad) if c.requires_grad]
            d_states = torch.autograd.grad([c for c, _ in live], leaves, [g for _, g in live], allow_unused=True)
        needs = ctx.needs_input_grad
        d_w = [d_weights[k] if needs[4 + n + i] else None for i, k in enumerate(ctx.names)]
        return (None, None, None, d_x_proj if needs[3] else None, *d_states, *d_w)

    @staticmethod
    def _backward_by_replay(ctx, grad_out: Tensor, *grad_final: Tensor):
        """The gradients as a graph (second derivatives, gradient penalties): the graph loop run
        again on the saved inputs and differentiated with ``create_graph``."""
        walk = ctx.walk
        x_proj, *inputs = ctx.saved_tensors
        n = len(walk.cfg.states)
        wanted = [i for i, t in enumerate((x_proj, *inputs)) if ctx.needs_input_grad[3 + i]]
        result: list[Tensor | None] = [None] * (1 + len(inputs))
        with torch.enable_grad():
            out, carry, _ = walk.run(x_proj, walk.cfg.initial_carry(inputs[:n]),
                                     dict(zip(ctx.names, inputs[n:])))
            live = [(o, g) for o, g in zip((out, *carry[:n]), (grad_out, *grad_final)) if o.requires_grad]
            if live and wanted:
                found = torch.autograd.grad([o for o, _ in live], [(x_proj, *inputs)[i] for i in wanted],
                                            [g for _, g in live], create_graph=True, allow_unused=True)
                for i, g in zip(wanted, found):
                    result[i] = g
        return (None, None, None, *result)


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
) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """Run one layer and direction (contract: :mod:`gatedrnn.backends.reference`); gate recording
    runs on the reference loop."""
    T, B = x.shape[:2]
    if record or T == 0 or B == 0:
        return reference.run_layer(cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise,
                                   record=record)
    x_proj = cfg.input_projection(x, weights)  # (T, B, G*H): one product for every step
    step_weights = reference.recurrent_weights(weights)
    active = None if lengths is None else (torch.arange(T, device=x.device)[:, None] < lengths).unsqueeze(-1)
    walk = Walk(cfg, reverse, active, noise)
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (x_proj, *state, *step_weights.values()))
    loop = loop_for(walk, x_proj, training)
    if loop == "graph":
        out, carry, _ = walk.run(x_proj, cfg.initial_carry(state), step_weights)
        return out, carry[: len(cfg.states)], None
    out, *final = HandBPTT.apply(walk, loop == "compiled", tuple(step_weights), x_proj, *state,
                                 *step_weights.values())
    return out, tuple(final), None
