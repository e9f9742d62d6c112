"""The Elman RNN cell, one time step: the baseline whose gradients vanish over long lags.

.. math::
    h_t = \\phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \\quad \\phi \\in \\{\\tanh, \\mathrm{relu}\\}
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import AffineGatesFamily
from .family import LayerWeights, register_family


@register_family
class RNNFamily(AffineGatesFamily):
    """The Elman RNN family: state h, one block of rows (named h). Option ``nonlinearity``
    (``"tanh"`` or ``"relu"``). Inspection records h."""

    name = "rnn"
    gates = ("h",)
    states = ("h",)
    option_defaults = {"nonlinearity": "tanh"}

    def check_options(self) -> None:
        from .. import _checks as check

        check.choice("RNN", "nonlinearity", self.nonlinearity, ("tanh", "relu"))

    @classmethod
    def configurations(cls) -> tuple[dict, ...]:
        """Both nonlinearities."""
        return ({"nonlinearity": "tanh"}, {"nonlinearity": "relu"})

    def step(
        self, x_proj: Tensor, states: tuple[Tensor, ...], weights: LayerWeights, h_in: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """One RNN step: x_proj (B, H), states (h,) with h (B, H) -> ((h_new,), {"h": h_new})."""
        (h,) = states
        a = x_proj + self.recurrent_part(h if h_in is None else h_in, weights)
        h_new = torch.tanh(a) if self.nonlinearity == "tanh" else torch.relu(a)
        return (h_new,), {"h": h_new}

    def kernels(self) -> dict[str, str]:
        """torch's ``"RNN_TANH"``/``"RNN_RELU"``, which ONNX's RNN operator computes too
        (:data:`gatedrnn.export.ONNX_OPERATORS`); the ``rnn`` kernels of the cpu and triton backends."""
        mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        return {"torch": mode, "onnx": mode, "cpu": "rnn", "triton": "rnn"}
