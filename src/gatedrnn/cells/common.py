"""What the built-in families share: torch.nn's affine gate pre-activations, optionally layer-normalised.

For a cell with G gates of H units each, the input part is ``W x + b_ih`` and the recurrent part
``U h + b_hh``, both of shape (B, G*H). With layer norm (Ba et al. 2016) each gate's block of
``W x`` and of ``U h`` is normalised over its H units before its gain and shift are applied:

.. math::
    \\mathrm{LN}(a; \\gamma, \\beta) = \\gamma \\odot \\frac{a - \\mu(a)}{\\sqrt{\\sigma^2(a) + \\epsilon}} + \\beta
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .family import CellFamily, LayerWeights


def gatewise_layer_norm(a: Tensor, gain: Tensor, shift: Tensor, hidden_size: int, eps: float) -> Tensor:
    """Layer-normalise each gate block of ``a`` (..., G*H) over its H units; gain, shift: (G*H,)."""
    blocks = a.unflatten(-1, (-1, hidden_size))  # (..., G, H)
    normed = F.layer_norm(blocks, (hidden_size,), eps=eps)
    return (normed * gain.view(-1, hidden_size) + shift.view(-1, hidden_size)).flatten(-2)


class AffineGatesFamily(CellFamily):
    """A family whose gates are torch.nn's affine maps ``W x + b_ih + U h + b_hh``, with optional
    gate-wise layer norm (``layer_norm``, ``eps``) and projection (``proj_size``; LSTM only)."""

    layer_norm: bool = False
    eps: float = 1e-5
    proj_size: int = 0

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """(R, H, ...): h has ``proj_size`` features when projected, every other state H."""
        return (self.proj_size or self.hidden_size,) + (self.hidden_size,) * (len(self.states) - 1)

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Layer norm's gains and shifts of the input and recurrent parts, ``ln_*`` (G*H,)."""
        if not self.layer_norm:
            return {}
        rows = (self.num_gates * self.hidden_size,)
        return dict(ln_weight_ih=rows, ln_bias_ih=rows, ln_weight_hh=rows, ln_bias_hh=rows)

    def input_projection(self, x: Tensor, weights: LayerWeights) -> Tensor:
        """``[LN](W_ih x) + b_ih``: (..., I) -> (..., G*H)."""
        a = x.matmul(weights["weight_ih"].t())
        if self.layer_norm:
            a = gatewise_layer_norm(a, weights["ln_weight_ih"], weights["ln_bias_ih"], self.hidden_size, self.eps)
        return a + weights["bias_ih"] if self.bias else a

    def recurrent_part(self, h: Tensor, weights: LayerWeights, rows: slice = slice(None)) -> Tensor:
        """``[LN](U h) + b_hh`` for the gate rows ``rows`` of weight_hh: (B, R) -> (B, rows)."""
        a = h.matmul(weights["weight_hh"][rows].t())
        if self.layer_norm:
            a = gatewise_layer_norm(
                a, weights["ln_weight_hh"][rows], weights["ln_bias_hh"][rows], self.hidden_size, self.eps
            )
        return a + weights["bias_hh"][rows] if self.bias else a

    def step_with_recurrent_input(self, x_proj, states, weights, h_in):
        """The step with ``h_in`` (recurrent dropout's masked h) in the recurrent products only."""
        return self.step(x_proj, states, weights, h_in)
