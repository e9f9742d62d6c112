"""The LSTM cell and its classic variants: one time step, written as the equations read.

torch.nn's cell (``variant="vanilla"``), with gates in torch's row order i, f, g, o:

.. math::
    \\begin{array}{ll}
    i_t = \\sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\\\
    f_t = \\sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\\\
    g_t = \\tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\\\
    o_t = \\sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\\\
    c_t = f_t \\odot c_{t-1} + i_t \\odot g_t \\\\
    h_t = o_t \\odot \\tanh(c_t) \\quad (\\text{then } h_t = W_{hr} h_t \\text{ with a projection})
    \\end{array}

Variants (Greff et al. 2017, "LSTM: A Search Space Odyssey", and their sources):

- ``peephole`` (Gers & Schmidhuber 2000): i and f also see :math:`p_i \\odot c_{t-1}`,
  :math:`p_f \\odot c_{t-1}`, and o sees :math:`p_o \\odot c_t`; ``weight_ch`` holds
  :math:`(p_i, p_f, p_o)`, shape (3H,).
- ``cifg``: coupled input and forget gate, :math:`i_t = 1 - f_t` (no i rows: gates f, g, o).
- ``nig`` / ``nfg`` / ``nog``: no input / forget / output gate (that gate is 1; its rows are
  absent). ``nfg`` is the 1997 LSTM, which had no forget gate.
- ``niaf``: no input activation, :math:`g_t` is the raw pre-activation.
- ``noaf``: no output activation, :math:`h_t = o_t \\odot c_t`.
- ``fgr``: full gate recurrence: the pre-activations of (i, f, o) also receive
  ``weight_gg`` (3H, 3H) times the previous step's (i, f, o) activations (zero at the start).

With ``layer_norm`` the gate blocks are normalised (see :mod:`gatedrnn.cells.common`) and
:math:`h_t = o_t \\odot \\tanh(\\mathrm{LN}(c_t; \\gamma_c, \\beta_c))`; the carried c is not normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import CellConfig, LayerWeights
from .common import gatewise_layer_norm, input_part, recurrent_part

FGR_GATES = ("i", "f", "o")


def lstm_pre_activations(x: Tensor, h: Tensor, w: LayerWeights, cfg: CellConfig) -> dict[str, Tensor]:
    """Gate pre-activations ``W x + b_ih + U h + b_hh`` (with layer norm if configured), by gate name."""
    a = input_part(x, w, cfg) + recurrent_part(h, w, cfg)
    return dict(zip(cfg.gates, a.split(cfg.hidden_size, dim=-1)))


def lstm_step(
    x: Tensor,
    state: tuple[Tensor, ...],
    w: LayerWeights,
    cfg: CellConfig,
    h_for_matmul: Tensor | None = None,
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """One LSTM step.

    Args:
        x: (B, I) input at this step.
        state: (h, c) of shapes (B, R) and (B, H); for ``fgr`` a third element (B, 3H) carries
            the previous step's (i, f, o).
        w: the layer's weights (see :data:`gatedrnn.config.WEIGHT_KEYS`).
        cfg: the cell configuration.
        h_for_matmul: h_{t-1} as it enters the recurrent matmul (after recurrent dropout);
            defaults to ``state[0]``.

    Returns:
        The new state (same structure) and the step's gate activations i, f, g, o, c, h, each (B, H)
        (h before the projection).
    """
    h, c = state[0], state[1]
    pre = lstm_pre_activations(x, h if h_for_matmul is None else h_for_matmul, w, cfg)
    H = cfg.hidden_size
    if cfg.variant == "fgr":
        recurrence = state[2].matmul(w["weight_gg"].t()).split(H, dim=-1)
        for name, extra in zip(FGR_GATES, recurrence):
            pre[name] = pre[name] + extra
    if cfg.variant == "peephole":
        p_i, p_f, p_o = w["weight_ch"].split(H)
        pre["i"] = pre["i"] + p_i * c
        pre["f"] = pre["f"] + p_f * c

    one = torch.ones_like(c)
    f = torch.sigmoid(pre["f"]) if "f" in pre else one
    if cfg.variant == "cifg":
        i = 1.0 - f
    else:
        i = torch.sigmoid(pre["i"]) if "i" in pre else one
    g = pre["g"] if cfg.variant == "niaf" else torch.tanh(pre["g"])
    c_new = f * c + i * g
    if cfg.variant == "peephole":
        pre["o"] = pre["o"] + p_o * c_new
    o = torch.sigmoid(pre["o"]) if "o" in pre else one

    c_out = c_new
    if cfg.layer_norm:
        c_out = gatewise_layer_norm(c_new, w["ln_weight_c"], w["ln_bias_c"], H, cfg.eps)
    h_new = o * (c_out if cfg.variant == "noaf" else torch.tanh(c_out))
    h_carried = F.linear(h_new, w["weight_hr"]) if cfg.proj_size > 0 else h_new

    new_state: tuple[Tensor, ...] = (h_carried, c_new)
    if cfg.variant == "fgr":
        new_state = new_state + (torch.cat([i, f, o], dim=-1),)
    return new_state, {"i": i, "f": f, "g": g, "o": o, "c": c_new, "h": h_new}


def lstm_initial_carry(state: tuple[Tensor, Tensor], cfg: CellConfig) -> tuple[Tensor, ...]:
    """The state the time loop carries: (h, c), plus zero previous gates for ``fgr``."""
    if cfg.variant == "fgr":
        h, c = state
        return (h, c, c.new_zeros(c.shape[:-1] + (3 * cfg.hidden_size,)))
    return tuple(state)
