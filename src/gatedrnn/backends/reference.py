"""The reference backend: a plain time loop over a family's step, the specification every fast path
is tested against (exact in float64). It runs every family on every device, under torch.func
transforms, ``create_graph``, ``torch.compile`` and ``torch.export`` as any autograd code does, and its
backward is linear in T; a family no fused backend has a kernel for runs here.

One call runs one layer in one direction over a padded, time-major batch:

- ``x``: (T, B, I); ``state``: the family's states, e.g. (h0, c0) for LSTM with shapes (B, R), (B, H),
  or (h0,) with (B, H).
- The input projection (:meth:`~gatedrnn.CellFamily.input_projection`) depends on x alone and is
  computed for the whole sequence at once; the loop runs :meth:`~gatedrnn.CellFamily.step`.
- Sequence b is active at time t iff ``t < lengths[b]`` (all T when ``lengths`` is None).
  An inactive step leaves the state unchanged and outputs zeros, so the final state is the one
  after each sequence's last real step. ``reverse=True`` walks t = T-1 .. 0, which for padded
  sequences starts each one at its own last element.
- A family that can run a whole layer at once (:meth:`~gatedrnn.CellFamily.run_sequence`, a scan)
  does so when nothing asks for steps (no regularisation noise, no recording).
- Zoneout mixes the new and old states after the step; recurrent dropout multiplies the mask into
  h_{t-1} where it enters the recurrence (see :class:`gatedrnn.config.Noise`).
- ``reset`` (T, B) bool, or None: where ``reset[t, b]``, everything the loop carries for sequence b
  (:meth:`~gatedrnn.CellFamily.initial_carry`: the states and whatever else the family carries) is
  replaced by zeros just before step t is computed, in the order the loop walks (the caller shifts
  the mask of a reverse direction, see :func:`gatedrnn.backends.reset_in_walk_order`). Nothing flows
  back through a reset: the carry before it gets no gradient from the steps after it. A family
  with a rule for its first step (sLSTM's stabiliser, keyed on its normaliser n = 0) applies it there
  as at t = 0. The caller leaves ``reset`` False at inactive steps (``t >= lengths[b]``), where the
  state is held.

Returns ``(output (T, B, R), final_state, gates)`` where ``gates`` maps each name of the family's
:attr:`~gatedrnn.CellFamily.trace_names` to (T, B, H) when ``record`` is set, else None.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells.family import INPUT_KEYS, CellFamily, LayerWeights
from ..config import Noise, zoneout_mix

name = "reference"


def supports(cfg: CellFamily, x: Tensor) -> str | None:
    """Every configuration on every device: returns None (no reason to refuse)."""
    return None


def recurrent_weights(weights: LayerWeights) -> LayerWeights:
    """The weights a family's step receives: all but the input projection's."""
    return {k: v for k, v in weights.items() if k not in INPUT_KEYS}


def _apply_zoneout(
    cfg: CellFamily, old: tuple[Tensor, ...], new: tuple[Tensor, ...], noise: Noise, t: int
) -> tuple[Tensor, ...]:
    """Zone out the states zoneout acts on (:attr:`~gatedrnn.CellFamily.zoneout_states`) at time t;
    the other states and carried values (the LSTM fgr's previous gates) are taken as new."""
    n = cfg.zoneout_states
    keeps = noise.zoneout_keeps + (None,) * n
    mixed = [
        zoneout_mix(o, v, noise.zoneout, None if keep is None else keep[t])
        for o, v, keep in zip(old[:n], new[:n], keeps)
    ]
    return tuple(mixed) + tuple(new[n:])


def zero_where(restart: Tensor, carry: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``carry`` with the rows where ``restart`` (B, 1) bool (or any shape that broadcasts to each
    tensor's) is set replaced by zeros (a select, not a product: an infinite state is zeroed too, and
    no gradient reaches the replaced rows)."""
    return tuple(torch.where(restart, torch.zeros((), dtype=c.dtype, device=c.device), c) for c in carry)


def layer_step(
    cfg: CellFamily,
    x_proj_t: Tensor,
    carry: tuple[Tensor, ...],
    weights: LayerWeights,
    noise: Noise | None = None,
    t: int = 0,
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """One step of :func:`run_layer`'s loop before the lengths mask: the family's step on the input
    projection x_proj_t (B, G*H) from ``carry`` (``weights``: the step's, :func:`recurrent_weights`),
    with recurrent dropout's mask on h_{t-1} and zoneout (its masks at time t) applied. Returns
    (the new carry, the step's gate values)."""
    if noise is None or noise.recurrent_mask is None:
        new, gates = cfg.step(x_proj_t, carry, weights)
    else:
        new, gates = cfg.step_with_recurrent_input(x_proj_t, carry, weights, carry[0] * noise.recurrent_mask)
    if noise is not None and noise.zoneout > 0:
        new = _apply_zoneout(cfg, carry, new, noise, t)
    return tuple(new), gates


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
    """Run one layer and direction with the plain time loop (see the module docstring)."""
    T = x.shape[0]
    # (T, B, G*H) as T views from one unbind: its backward stacks the steps' gradients once, where
    # indexing x_proj[t] would give each step's gradient a zero-filled (T, B, G*H) tensor of its own
    x_proj_all = cfg.input_projection(x, weights)
    step_weights = recurrent_weights(weights)
    if not record and noise is None and reset is None and T > 0:
        whole = cfg.run_sequence(x_proj_all, tuple(state), step_weights, lengths, reverse)
        if whole is not None:
            return whole[0], tuple(whole[1]), None
    x_proj = x_proj_all.unbind(0)
    carry = cfg.initial_carry(state)
    outputs: list[Tensor] = [x.new_empty(0)] * T
    trace: dict[str, list[Tensor]] = {k: [x.new_empty(0)] * T for k in cfg.trace_names} if record else {}
    times = range(T - 1, -1, -1) if reverse else range(T)
    restarts = None if reset is None else reset.unsqueeze(-1).unbind(0)  # T views (B, 1)
    for t in times:
        if restarts is not None:
            carry = zero_where(restarts[t], carry)
        new, gates = layer_step(cfg, x_proj[t], carry, step_weights, noise, t)
        if lengths is not None:
            active = (t < lengths).unsqueeze(-1)  # (B, 1)
            new = tuple(torch.where(active, n, o) for n, o in zip(new, carry))
            if record:
                gates = {k: torch.where(active, v, torch.zeros_like(v)) for k, v in gates.items()}
            outputs[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
        else:
            outputs[t] = new[0]
        carry = new
        if record:
            for k, v in cfg.record(gates, carry).items():
                trace[k][t] = v
    out = torch.stack(outputs) if T > 0 else x.new_zeros((0, x.shape[1], cfg.output_size))
    final = carry[: len(cfg.states)]
    stacked = {k: torch.stack(v) for k, v in trace.items()} if record and T > 0 else None
    return out, final, stacked
