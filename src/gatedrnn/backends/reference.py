"""The reference backend: a plain time loop over the cell step functions, the specification
every fast path is tested against (exact in float64).

One call runs one layer in one direction over a padded, time-major batch:

- ``x``: (T, B, I); ``state``: (h0, c0) for LSTM with shapes (B, R), (B, H), or (h0,) with (B, H).
- Sequence b is active at time t iff ``t < lengths[b]`` (all T when ``lengths`` is None).
  An inactive step leaves the state unchanged and outputs zeros, so the final state is the one
  after each sequence's last real step. ``reverse=True`` walks t = T-1 .. 0, which for padded
  sequences starts each one at its own last element.
- Zoneout mixes the new and old state after the step; recurrent dropout multiplies the mask into
  h_{t-1} where it enters the recurrent matmul (see :class:`gatedrnn.config.Noise`).

Returns ``(output (T, B, R), final_state, gates)`` where ``gates`` maps each name of
:data:`gatedrnn.config.TRACE_NAMES` to (T, B, H) when ``record`` is set, else None.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import STEPS, initial_carry
from ..config import TRACE_NAMES, CellConfig, LayerWeights, Noise, zoneout_mix

name = "reference"


def supports(cfg: CellConfig, x: Tensor) -> str | None:
    """Every configuration on every device: returns None (no reason to refuse)."""
    return None


def _apply_zoneout(old: tuple[Tensor, ...], new: tuple[Tensor, ...], noise: Noise, t: int) -> tuple[Tensor, ...]:
    """Zone out h (and c) at time t; other carried values (fgr's gates) are taken as new."""
    keeps = (noise.zoneout_h, noise.zoneout_c)
    mixed = [
        zoneout_mix(o, n, noise.zoneout, None if keep is None else keep[t])
        for o, n, keep in zip(old, new, keeps)
    ]
    return tuple(mixed) + tuple(new[len(mixed):])


def layer_step(cfg: CellConfig, x_t: Tensor, carry: tuple[Tensor, ...], weights: LayerWeights,
               noise: Noise | None = None, t: int = 0) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """One step of :func:`run_layer`'s loop before the lengths mask: the cell's step on x_t (B, I)
    from ``carry`` with recurrent dropout's mask on h_{t-1} and zoneout (its masks at time t)
    applied. Returns (the new carry, the step's gates)."""
    h_in = carry[0] if noise is None or noise.recurrent_mask is None else carry[0] * noise.recurrent_mask
    new, gates = STEPS[cfg.family](x_t, carry, weights, cfg, h_in)
    if noise is not None and noise.zoneout > 0:
        new = _apply_zoneout(carry, new, noise, t)
    return new, gates


def run_layer(
    cfg: CellConfig,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: LayerWeights,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
    noise: Noise | None = None,
    record: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """Run one layer and direction with the plain time loop (see the module docstring)."""
    T = x.shape[0]
    carry = initial_carry(state, cfg)
    outputs: list[Tensor] = [x.new_empty(0)] * T
    trace: dict[str, list[Tensor]] = {k: [x.new_empty(0)] * T for k in TRACE_NAMES[cfg.family]} if record else {}
    times = range(T - 1, -1, -1) if reverse else range(T)
    for t in times:
        new, gates = layer_step(cfg, x[t], carry, weights, noise, t)
        if lengths is not None:
            active = (t < lengths).unsqueeze(-1)  # (B, 1)
            new = tuple(torch.where(active, n, o) for n, o in zip(new, carry))
            gates = {k: torch.where(active, v, torch.zeros_like(v)) for k, v in gates.items()}
            outputs[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
        else:
            outputs[t] = new[0]
        carry = new
        if record:
            gates = dict(gates, h=carry[0] if cfg.proj_size == 0 else gates["h"])
            if cfg.family == "lstm":
                gates["c"] = carry[1]
            for k in trace:
                trace[k][t] = gates[k]
    out = torch.stack(outputs) if T > 0 else x.new_zeros((0, x.shape[1], cfg.output_size))
    final = carry[: len(cfg.state_sizes)]
    stacked = {k: torch.stack(v) for k, v in trace.items()} if record and T > 0 else None
    return out, final, stacked
