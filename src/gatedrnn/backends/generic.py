"""The generic backend: any family's step, on any device, in device-generic torch ops.

It computes exactly what :func:`gatedrnn.backends.reference.run_layer` computes (the contract is
that module's docstring) for every family, built-in or the user's, from the family's own
:meth:`~gatedrnn.CellFamily.input_projection`, :meth:`~gatedrnn.CellFamily.initial_carry` and
:meth:`~gatedrnn.CellFamily.step`, and it is what ``backend="auto"`` runs a family on where no
fused backend has a kernel for it. Per layer and direction:

1. the input projection of all steps as one product, (T, B, I) -> (T, B, G*H), whose gradient is
   then one product too;
2. the steps under autograd, each reading its slice of the projection as one of the views of a
   single ``unbind`` and writing its output into one ``stack`` at the end, so that the backward
   pass stacks the steps' gradients once (linear in T); the lengths mask the carry with one
   ``where`` per state and step and the outputs with one ``where`` over the whole sequence; no
   gate values are kept.

Being plain autograd code, it runs under ``torch.func`` transforms (grad, vmap, jacrev, ...),
``create_graph`` (second derivatives), ``torch.compile`` and ``torch.export``. Gate recording
runs on the reference loop.

Why not backpropagation through time by hand (a ``torch.autograd.Function`` whose backward reruns
each step and takes its vector-Jacobian product, keeping only the carries), compiled or not: its
backward reruns each step's forward, one more recurrent product per step, where a step's cost is
its products (the graph loop's time at B=32, H=256 is mostly ``mm``), and where it is not (small
cells on the CPU) the compiled product's call overhead was about what its fused kernels saved;
it saved little memory (the projection, which both keep, dominates). BENCHMARKS.md, "Cell
families", run 1, has the measurements.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells.family import CellFamily, LayerWeights
from ..config import Noise
from . import reference

name = "generic"
RUNS_ANY_FAMILY = True


def supports(cfg: CellFamily, x: Tensor) -> str | None:
    """Every family on every device, under transforms and tracing too: returns None."""
    return None


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
    """Run one layer and direction (contract: :mod:`gatedrnn.backends.reference`)."""
    T, B = x.shape[:2]
    if record or T == 0 or B == 0:
        return reference.run_layer(cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise,
                                   record=record)
    inputs = cfg.input_projection(x, weights).unbind(0)  # T views (B, G*H) of one product
    step_weights = reference.recurrent_weights(weights)
    active = None if lengths is None else (torch.arange(T, device=x.device)[:, None] < lengths).unsqueeze(-1)
    carry = cfg.initial_carry(state)
    outputs: list[Tensor] = list(inputs)  # placeholders, each overwritten by its step's h
    for t in range(T - 1, -1, -1) if reverse else range(T):
        new, _ = reference.layer_step(cfg, inputs[t], carry, step_weights, noise, t)
        carry = new if active is None else tuple(torch.where(active[t], n, c) for n, c in zip(new, carry))
        outputs[t] = carry[0]
    out = torch.stack(outputs)  # (T, B, R)
    if active is not None:
        out = torch.where(active, out, 0.0)
    return out, carry[: len(cfg.states)], None
