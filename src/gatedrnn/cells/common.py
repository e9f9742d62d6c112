"""Pieces shared by the cell families: the affine parts of the gate pre-activations.

For a cell with G gates of H units each, the input part is ``W x + b_ih`` and the recurrent part
``U h + b_hh``, both of shape (B, G*H). With layer norm (Ba et al. 2016) each gate's block of
``W x`` and of ``U h`` is normalised over its H units before its gain and shift are applied:

.. math::
    \\mathrm{LN}(a; \\gamma, \\beta) = \\gamma \\odot \\frac{a - \\mu(a)}{\\sqrt{\\sigma^2(a) + \\epsilon}} + \\beta
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..config import CellConfig, LayerWeights


def gatewise_layer_norm(a: Tensor, gain: Tensor, shift: Tensor, hidden_size: int, eps: float) -> Tensor:
    """Layer-normalise each gate block of ``a`` (B, G*H) over its H units; gain, shift: (G*H,)."""
    blocks = a.unflatten(-1, (-1, hidden_size))  # (B, G, H)
    normed = F.layer_norm(blocks, (hidden_size,), eps=eps)
    return (normed * gain.view(-1, hidden_size) + shift.view(-1, hidden_size)).flatten(-2)


def input_part(x: Tensor, w: LayerWeights, cfg: CellConfig) -> Tensor:
    """``[LN](W_ih x) + b_ih``: (B, I) -> (B, G*H)."""
    a = x.matmul(w["weight_ih"].t())
    if cfg.layer_norm:
        a = gatewise_layer_norm(a, w["ln_weight_ih"], w["ln_bias_ih"], cfg.hidden_size, cfg.eps)
    return a + w["bias_ih"] if cfg.bias else a


def recurrent_part(h: Tensor, w: LayerWeights, cfg: CellConfig, rows: slice = slice(None)) -> Tensor:
    """``[LN](U h) + b_hh`` for the gate rows ``rows`` of weight_hh: (B, R) -> (B, rows)."""
    a = h.matmul(w["weight_hh"][rows].t())
    if cfg.layer_norm:
        a = gatewise_layer_norm(a, w["ln_weight_hh"][rows], w["ln_bias_hh"][rows], cfg.hidden_size, cfg.eps)
    return a + w["bias_hh"][rows] if cfg.bias else a
