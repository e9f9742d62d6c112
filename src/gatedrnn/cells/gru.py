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

from ..config import CellConfig, LayerWeights
from .common import input_part, recurrent_part


def gru_step(
    x: Tensor,
    state: tuple[Tensor, ...],
    w: LayerWeights,
    cfg: CellConfig,
    h_for_matmul: Tensor | None = None,
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """One GRU step: x (B, I), state (h,) with h (B, H) -> ((h_new,), {r, z, n, h}), each (B, H).

    ``h_for_matmul`` is h_{t-1} as it enters the recurrent matmuls (after recurrent dropout); the
    carry term z * h_{t-1} always uses the undropped h.
    """
    (h,) = state
    hm = h if h_for_matmul is None else h_for_matmul
    H = cfg.hidden_size
    a_r, a_z, a_n = input_part(x, w, cfg).split(H, dim=-1)
    if cfg.reset_after:
        u_r, u_z, u_n = recurrent_part(hm, w, cfg).split(H, dim=-1)
        r = torch.sigmoid(a_r + u_r)
        z = torch.sigmoid(a_z + u_z)
        n = torch.tanh(a_n + r * u_n)
    else:
        u_r, u_z = recurrent_part(hm, w, cfg, slice(0, 2 * H)).split(H, dim=-1)
        r = torch.sigmoid(a_r + u_r)
        z = torch.sigmoid(a_z + u_z)
        n = torch.tanh(a_n + recurrent_part(r * hm, w, cfg, slice(2 * H, 3 * H)))
    h_new = (1.0 - z) * n + z * h
    return (h_new,), {"r": r, "z": z, "n": n, "h": h_new}
