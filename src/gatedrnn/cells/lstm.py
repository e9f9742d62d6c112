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
  ``weight_gg`` (3H, 3H) times the previous step's (i, f, o) activations. Those activations are a
  third state, ``gates`` (B, 3H) in the order i, f, o (zeros unless given, as h and c): the
  layer takes and returns (h, c, gates), so that a sequence continues exactly across calls.

With ``layer_norm`` the gate blocks are normalised (see :mod:`gatedrnn.cells.common`) and
:math:`h_t = o_t \\odot \\tanh(\\mathrm{LN}(c_t; \\gamma_c, \\beta_c))`; the carried c is not normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import AffineGatesFamily, gatewise_layer_norm
from .family import LayerWeights, register_family

LSTM_VARIANTS: dict[str, tuple[str, ...]] = {
    # variant name -> gates that have their own weights, in the row order of weight_ih / weight_hh
    "vanilla": ("i", "f", "g", "o"),
    "peephole": ("i", "f", "g", "o"),
    "cifg": ("f", "g", "o"),
    "nig": ("f", "g", "o"),
    "nfg": ("i", "g", "o"),
    "nog": ("i", "f", "g"),
    "niaf": ("i", "f", "g", "o"),
    "noaf": ("i", "f", "g", "o"),
    "fgr": ("i", "f", "g", "o"),
}
"""LSTM variants: torch.nn's cell, Gers & Schmidhuber's peepholes, the coupled input-forget gate,
and the ablations of Greff et al. 2017 (no input / forget / output gate, no input / output
activation, full gate recurrence)."""

FGR_GATES = ("i", "f", "o")


@register_family
class LSTMFamily(AffineGatesFamily):
    """The LSTM family: states (h, c), for ``fgr`` (h, c, gates); gates i, f, g, o (fewer for the
    variants without a gate).

    Options: ``variant`` (a name of :data:`LSTM_VARIANTS`), ``layer_norm``, ``eps`` (layer norm's),
    ``proj_size`` (torch.nn's: h projected to P < H features by ``weight_hr`` (P, H)).
    Inspection records i, f, g, o, c, h (h before the projection; a removed gate as its constant).
    """

    name = "lstm"
    option_defaults = {"proj_size": 0, "variant": "vanilla", "layer_norm": False, "eps": 1e-5}
    trace_names = ("i", "f", "g", "o", "c", "h")
    memory_state = "c"
    retention_gate = "f"

    def check_options(self) -> None:
        from .. import _checks as check

        check.variant("LSTM", self.variant)
        self.proj_size = check.proj_size("LSTM", self.proj_size, self.hidden_size)

    @classmethod
    def configurations(cls) -> tuple[dict, ...]:
        """Every variant, each with and without layer norm, and the projection."""
        return tuple({"variant": v, "layer_norm": ln} for v in LSTM_VARIANTS for ln in (False, True)) + (
            {"proj_size": 3},
            {"variant": "peephole", "proj_size": 2},
        )

    @property
    def gates(self) -> tuple[str, ...]:
        """The gates with their own rows: i, f, g, o less the variant's removed gate."""
        return LSTM_VARIANTS[self.variant]

    @property
    def states(self) -> tuple[str, ...]:
        """(h, c); ``fgr`` also carries ``gates``, the previous step's (i, f, o) activations."""
        return ("h", "c", "gates") if self.variant == "fgr" else ("h", "c")

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """(R, H), and 3H for ``fgr``'s gates."""
        sizes = (self.proj_size or self.hidden_size, self.hidden_size)
        return sizes + (len(FGR_GATES) * self.hidden_size,) if self.variant == "fgr" else sizes

    @property
    def zoneout_states(self) -> int:
        """Zoneout acts on h and c; ``fgr``'s gates are always the step's own."""
        return 2

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """``weight_hr`` (P, H) with a projection, ``weight_ch`` (3H,) for peepholes, ``weight_gg``
        (3H, 3H) for fgr, and with layer norm the gate blocks' ``ln_*`` (G*H,) and the cell's
        ``ln_weight_c``, ``ln_bias_c`` (H,)."""
        H = self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        if self.proj_size > 0:
            shapes["weight_hr"] = (self.proj_size, H)
        if self.variant == "peephole":
            shapes["weight_ch"] = (3 * H,)
        if self.variant == "fgr":
            shapes["weight_gg"] = (3 * H, 3 * H)
        shapes.update(super().extra_parameter_shapes())
        if self.layer_norm:
            shapes.update(ln_weight_c=(H,), ln_bias_c=(H,))
        return shapes

    def step(
        self, x_proj: Tensor, states: tuple[Tensor, ...], weights: LayerWeights, h_in: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """One LSTM step.

        Args:
            x_proj: (B, G*H) the input projection.
            states: (h, c) of shapes (B, R) and (B, H); for ``fgr`` a third state ``gates`` (B, 3H),
                the previous step's (i, f, o).
            weights: the layer's weights.
            h_in: h_{t-1} as it enters the recurrent matmul (after recurrent dropout); defaults to
                ``states[0]``.

        Returns:
            The new states (same structure) and the gate activations i, f, g, o, c, h, each (B, H)
            (h before the projection).
        """
        h, c = states[0], states[1]
        a = x_proj + self.recurrent_part(h if h_in is None else h_in, weights)
        pre = dict(zip(self.gates, a.split(self.hidden_size, dim=-1)))
        H = self.hidden_size
        if self.variant == "fgr":
            recurrence = states[2].matmul(weights["weight_gg"].t()).split(H, dim=-1)
            for name, extra in zip(FGR_GATES, recurrence):
                pre[name] = pre[name] + extra
        if self.variant == "peephole":
            p_i, p_f, p_o = weights["weight_ch"].split(H)
            pre["i"] = pre["i"] + p_i * c
            pre["f"] = pre["f"] + p_f * c

        one = torch.ones_like(c)
        f = torch.sigmoid(pre["f"]) if "f" in pre else one
        if self.variant == "cifg":
            i = 1.0 - f
        else:
            i = torch.sigmoid(pre["i"]) if "i" in pre else one
        g = pre["g"] if self.variant == "niaf" else torch.tanh(pre["g"])
        c_new = f * c + i * g
        if self.variant == "peephole":
            pre["o"] = pre["o"] + p_o * c_new
        o = torch.sigmoid(pre["o"]) if "o" in pre else one

        c_out = c_new
        if self.layer_norm:
            c_out = gatewise_layer_norm(c_new, weights["ln_weight_c"], weights["ln_bias_c"], H, self.eps)
        h_new = o * (c_out if self.variant == "noaf" else torch.tanh(c_out))
        h_carried = F.linear(h_new, weights["weight_hr"]) if self.proj_size > 0 else h_new

        new_state: tuple[Tensor, ...] = (h_carried, c_new)
        if self.variant == "fgr":
            new_state = new_state + (torch.cat([i, f, o], dim=-1),)
        return new_state, {"i": i, "f": f, "g": g, "o": o, "c": c_new, "h": h_new}

    def record(self, gate_values: dict[str, Tensor], states: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """The gates, c, and h: the carried h, or the step's h before the projection with one."""
        values = super().record(gate_values, states)
        if self.proj_size > 0:
            values["h"] = gate_values["h"]
        return values

    def kernels(self) -> dict[str, str]:
        """torch's ``"LSTM"`` for the plain cell without layer norm; the ``lstm`` kernels of the
        cpu and triton backends for every variant (each backend's ``supports`` says what it runs);
        ONNX's operator (:data:`gatedrnn.export.ONNX_OPERATORS`) for the plain and peephole cells
        without layer norm or projection."""
        fused = {"cpu": "lstm", "triton": "lstm"}
        if self.variant == "vanilla" and not self.layer_norm:
            fused["torch"] = "LSTM"
        if self.variant in ("vanilla", "peephole") and not self.layer_norm and self.proj_size == 0:
            fused["onnx"] = "LSTM_PEEPHOLE" if self.variant == "peephole" else "LSTM"
        return fused
