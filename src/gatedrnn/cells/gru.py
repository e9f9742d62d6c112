"""The GRU cell (Cho et al. 2014), one time step, gates in torch.nn's row order r, z, n.

torch.nn's form (``reset_after=True``):

.. math::
    \\begin{array}{ll}
    r_t = \\sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\\\
    z_t = \\sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\\\
    n_t = \\tanh(W_{in} x_t + b_{in} + r_t \\odot (W_{hn} h_{t-1} + b_{hn})) \\\\
    h_t = (1 - z_t) \\odot n_t + z_t \\odot h_{t-1}
    \\end{array}

Cho et al.'s original form (``reset_after=False``) applies the reset before the matmul:
:math:`n_t = \\tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \\odot h_{t-1}) + b_{hn})`.
With ``layer_norm`` each gate's input and recurrent blocks are normalised
(see :mod:`gatedrnn.cells.common`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import AffineGatesFamily
from .family import LayerWeights, register_family


@register_family
class GRUFamily(AffineGatesFamily):
    """The GRU family: state h, gates r, z, n. Options ``reset_after`` (True: torch.nn's form),
    ``layer_norm``, ``eps``. Inspection records r, z, n, h."""

    name = "gru"
    gates = ("r", "z", "n")
    states = ("h",)
    option_defaults = {"layer_norm": False, "reset_after": True, "eps": 1e-5}
    retention_gate = "z"

    @classmethod
    def configurations(cls) -> tuple[dict, ...]:
        """Both reset forms, each with and without layer norm."""
        return tuple({"reset_after": ra, "layer_norm": ln} for ra in (True, False) for ln in (False, True))

    def step(
        self, x_proj: Tensor, states: tuple[Tensor, ...], weights: LayerWeights, h_in: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """One GRU step: x_proj (B, 3H), states (h,) with h (B, H) -> ((h_new,), {r, z, n, h}).

        ``h_in`` is h_{t-1} as it enters the recurrent matmuls (after recurrent dropout); the
        carry term z * h_{t-1} always uses the undropped h.
        """
        (h,) = states
        hm = h if h_in is None else h_in
        H = self.hidden_size
        a_r, a_z, a_n = x_proj.split(H, dim=-1)
        if self.reset_after:
            u_r, u_z, u_n = self.recurrent_part(hm, weights).split(H, dim=-1)
            r = torch.sigmoid(a_r + u_r)
            z = torch.sigmoid(a_z + u_z)
            n = torch.tanh(a_n + r * u_n)
        else:
            u_r, u_z = self.recurrent_part(hm, weights, slice(0, 2 * H)).split(H, dim=-1)
            r = torch.sigmoid(a_r + u_r)
            z = torch.sigmoid(a_z + u_z)
            n = torch.tanh(a_n + self.recurrent_part(r * hm, weights, slice(2 * H, 3 * H)))
        h_new = (1.0 - z) * n + z * h
        return (h_new,), {"r": r, "z": z, "n": n, "h": h_new}

    def kernels(self) -> dict[str, str]:
        """torch's ``"GRU"`` for torch.nn's form without layer norm; the ``gru`` kernels of the cpu
        and triton backends for both forms; ONNX's operator (:data:`gatedrnn.export.ONNX_OPERATORS`)
        for both forms without layer norm."""
        fused = {"cpu": "gru", "triton": "gru"}
        if self.reset_after and not self.layer_norm:
            fused["torch"] = "GRU"
        if not self.layer_norm:
            fused["onnx"] = "GRU" if self.reset_after else "GRU_RESET_BEFORE"
        return fused
