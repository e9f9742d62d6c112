r"""The sLSTM cell (Beck et al. 2024, xLSTM): exponential input gate, a normaliser state n and a
stabiliser state m, with a recurrent matrix block-diagonal over heads.

Per unit, with pre-activations :math:`\tilde\imath, \tilde f, \tilde z, \tilde o = W x_t + R h_{t-1} + b`:

.. math::
    \begin{array}{ll}
    \log f_t = \operatorname{logsigmoid}(\tilde f_t) \text{ (or } \tilde f_t \text{ for the exp gate)} \\
    m_t = \tilde\imath_t \text{ where } n_{t-1} = 0, \text{ else } \max(\log f_t + m_{t-1}, \tilde\imath_t) \\
    i'_t = \min(e^{\tilde\imath_t - m_t}, 1), \quad f'_t = \min(e^{\log f_t + m_{t-1} - m_t}, 1) \\
    c_t = f'_t \odot c_{t-1} + i'_t \odot \tanh(\tilde z_t), \quad n_t = f'_t \odot n_{t-1} + i'_t \\
    h_t = \sigma(\tilde o_t) \odot c_t / n_t
    \end{array}

One of :math:`i'_t, f'_t` is 1 at every step, so :math:`n_t \ge 1` after the first step and the
division is safe. m is computed and carried in float32 whatever the parameters' dtype (float64
for float64; the final m_n has that dtype); the other states keep the parameters' dtype.

Parameters per layer: ``weight_ih`` (4H, I) in gate order i, f, z, o; ``weight_hh``
(num_heads, 4D, D) with D = H / num_heads, head k mapping h[kD:(k+1)D] to its units' four gates
(gate g in rows gD:(g+1)D); ``bias_ih``, ``bias_hh`` (4H,). This is the xlstm package's layout
(``sLSTMCell_vanilla``'s internal recurrent kernel and gate-major bias).

The cpu backend runs the layer with a fused forward and backward through time
(:mod:`gatedrnn.backends.cpu.slstm`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .family import CellFamily, LayerWeights, register_family

FORGET_GATES = ("sigmoid", "exp")


def stabiliser_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of m and of the gate arithmetic: float32, or float64 for float64 parameters."""
    return torch.promote_types(dtype, torch.float32)


@register_family
class SLSTMFamily(CellFamily):
    """The sLSTM family: states h, c, n, m; gates i, f, z, o. Options ``num_heads`` (divides H) and
    ``forget_gate`` (``"sigmoid"`` or ``"exp"``). Inspection records i', f', z, o, c, n, m."""

    name = "slstm"
    gates = ("i", "f", "z", "o")
    states = ("h", "c", "n", "m")
    option_defaults = {"num_heads": 4, "forget_gate": "sigmoid"}
    memory_state = "c"
    retention_gate = "f"
    """The effective forget gate f' after stabilisation: the fraction of c and n kept per step."""
    display_name = "sLSTM"
    descriptions = {
        "i": "input gate i' = exp(ĩ - m), stabilised: how much of tanh(z̃) enters c (and n)",
        "f": "forget gate f' after stabilisation: how much of the previous c (and n) is kept",
        "z": "cell input pre-activation z̃: c takes tanh(z̃)",
        "o": "output gate: how much of c / n is shown as h",
        "c": "cell state: the memory (h = o c / n)",
        "n": "normaliser state: the input gates kept, n = f' n_prev + i' (at least 1)",
        "m": "stabiliser state: the running maximum of the log gates that keeps exp() finite",
    }

    def check_options(self) -> None:
        """num_heads a positive divisor of H; forget_gate one of :data:`FORGET_GATES`."""
        if not isinstance(self.num_heads, int) or isinstance(self.num_heads, bool) or self.num_heads <= 0:
            raise ValueError(f"sLSTM: expected num_heads to be a positive int, got {self.num_heads!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"sLSTM: hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.forget_gate not in FORGET_GATES:
            raise ValueError(
                f"sLSTM: expected forget_gate to be one of {', '.join(map(repr, FORGET_GATES))}, "
                f"got {self.forget_gate!r}"
            )

    @classmethod
    def configurations(cls) -> tuple[dict, ...]:
        """Both forget gates; one head (a dense R) and several."""
        return ({"num_heads": 1}, {"num_heads": 5}, {"num_heads": 5, "forget_gate": "exp"})

    def kernels(self) -> dict[str, str]:
        """The fused layer kernels of the cpu backend (:mod:`gatedrnn.backends.cpu.slstm`) and the
        Triton backend (:mod:`gatedrnn.backends.triton.slstm`)."""
        return {"cpu": "slstm", "triton": "slstm"}

    @property
    def head_size(self) -> int:
        """D = H / num_heads."""
        return self.hidden_size // self.num_heads

    @property
    def trace_names(self) -> tuple[str, ...]:
        return ("i", "f", "z", "o", "c", "n", "m")

    def parameter_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """``weight_ih`` (4H, I), ``weight_hh`` (num_heads, 4D, D), ``bias_ih``/``bias_hh`` (4H,) with bias."""
        H, D = self.hidden_size, self.head_size
        shapes = {"weight_ih": (4 * H, input_size), "weight_hh": (self.num_heads, 4 * D, D)}
        if self.bias:
            shapes.update(bias_ih=(4 * H,), bias_hh=(4 * H,))
        return shapes

    def init_parameter(self, key: str, tensor: Tensor) -> None:
        """The xlstm package's defaults: ``weight_ih`` N(0, 2/(5I)) (its small init), ``weight_hh`` zero,
        ``bias_ih`` zero but the f rows, which run in each head from 5 down to -7 over its D units
        (its power-law block-dependent init, one block), ``bias_hh`` zero."""
        if key == "weight_ih":
            tensor.normal_(0.0, math.sqrt(2.0 / (5.0 * tensor.shape[1])))
        elif key == "bias_ih":
            tensor.zero_()
            ramp = torch.linspace(0.0, 1.0, self.head_size) ** 0.3
            H = self.hidden_size
            tensor[H : 2 * H] = (5.0 - 12.0 * ramp).repeat(self.num_heads).to(tensor)
        else:
            tensor.zero_()

    def recurrent_part(self, h: Tensor, weights: LayerWeights) -> Tensor:
        """``R h + b_hh``: (B, H) -> (B, 4H) in gate-major order, R block-diagonal over heads."""
        B, K, D = h.shape[0], self.num_heads, self.head_size
        r = torch.einsum("bkd,ked->bke", h.view(B, K, D), weights["weight_hh"])  # (B, K, 4D)
        r = r.view(B, K, 4, D).transpose(1, 2).reshape(B, 4 * K * D)
        return r + weights["bias_hh"] if self.bias else r

    def initial_carry(self, states: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The states with m in float32 (float64 stays float64)."""
        h, c, n, m = states
        return h, c, n, m.to(stabiliser_dtype(h.dtype))

    def step(
        self, x_proj: Tensor, states: tuple[Tensor, ...], weights: LayerWeights, h_in: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """One sLSTM step: x_proj (B, 4H), states (h, c, n, m) each (B, H) -> the new states and
        {i, f, z, o} (the stabilised i', f', the pre-activation z and σ(õ)). ``h_in`` is h_{t-1} in
        the recurrent product (recurrent dropout)."""
        h, c, n, m = states
        pre = x_proj + self.recurrent_part(h if h_in is None else h_in, weights)
        wide = stabiliser_dtype(x_proj.dtype)
        i_raw, f_raw, z_raw, o_raw = pre.to(wide).split(self.hidden_size, dim=-1)
        # logsigmoid as -softplus(-f): torch's CPU log_sigmoid is orders of magnitude slower far below 0
        log_f = -F.softplus(-f_raw) if self.forget_gate == "sigmoid" else f_raw
        m = m.to(wide)
        m_new = torch.where(n == 0, i_raw, torch.maximum(log_f + m, i_raw))
        # min(e^a, 1) as e^min(a, 0): the same values and subgradients (clamp passes its bound), but an
        # exponent that would overflow (an exp forget gate's first step) is cut before exp, so its zero
        # gradient is not 0 * inf = NaN
        i_gate = torch.exp((i_raw - m_new).clamp(max=0.0))
        f_gate = torch.exp((log_f + m - m_new).clamp(max=0.0))
        c_new = f_gate * c + i_gate * torch.tanh(z_raw)
        n_new = f_gate * n + i_gate
        o_gate = torch.sigmoid(o_raw)
        h_new = o_gate * c_new / n_new
        dtype = x_proj.dtype
        new = (h_new.to(dtype), c_new.to(dtype), n_new.to(dtype), m_new)
        return new, {"i": i_gate.to(dtype), "f": f_gate.to(dtype), "z": z_raw.to(dtype), "o": o_gate.to(dtype)}

    def step_with_recurrent_input(self, x_proj, states, weights, h_in):
        """The step with ``h_in`` (recurrent dropout's masked h) in the recurrent product only."""
        return self.step(x_proj, states, weights, h_in)

    def record(self, gate_values: dict[str, Tensor], states: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """i, f, z, o, then c, n, m (m in the other values' dtype)."""
        h, c, n, m = states
        return {**gate_values, "c": c, "n": n, "m": m.to(c.dtype)}
