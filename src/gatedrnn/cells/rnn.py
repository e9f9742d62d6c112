"""The Elman RNN cell, one time step: the baseline whose gradients vanish over long lags.

.. math::
    h_t = \\phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \\quad \\phi \\in \\{\\tanh, \\mathrm{relu}\\}
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import CellConfig, LayerWeights
from .common import input_part, recurrent_part


def rnn_step(
    x: Tensor,
    state: tuple[Tensor, ...],
    w: LayerWeights,
    cfg: CellConfig,
    h_for_matmul: Tensor | None = None,
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """One RNN step: x (B, I), state (h,) with h (B, H) -> ((h_new,), {"h": h_new})."""
    (h,) = state
    a = input_part(x, w, cfg) + recurrent_part(h if h_for_matmul is None else h_for_matmul, w, cfg)
    h_new = torch.tanh(a) if cfg.nonlinearity == "tanh" else torch.relu(a)
    return (h_new,), {"h": h_new}
