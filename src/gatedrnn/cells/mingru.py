r"""The minimal recurrent cells minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

Their gates depend on the input alone, so each is a linear recurrence :math:`h_t = a_t \odot h_{t-1} + b_t`
whose coefficients come from x_t; a layer can run it as a scan over time (:func:`linear_scan`)
instead of step by step. With :math:`g(v) = v + 1/2` for :math:`v \ge 0`, :math:`\sigma(v)` otherwise
(``activation="g"``; ``"identity"`` leaves :math:`\tilde h` plain):

.. math::
    \begin{array}{ll}
    \text{minGRU:} & z_t = \sigma(W_z x_t + b_z), \quad \tilde h_t = g(W_h x_t + b_h), \quad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t \\
    \text{minLSTM:} & f_t = \sigma(W_f x_t + b_f), \quad i_t = \sigma(W_i x_t + b_i), \quad
        \tilde h_t = g(W_h x_t + b_h), \\
        & f'_t = f_t / (f_t + i_t), \quad i'_t = i_t / (f_t + i_t), \quad
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t
    \end{array}

Parameters per layer: ``weight_ih`` ((G*H, I), row blocks z, h for minGRU and f, i, h for minLSTM)
and ``bias_ih`` (G*H,) with bias; no recurrent weights.

The scan. Within a chunk of C steps, with :math:`L_t = \sum_{s \le t} \log a_s` (a cumulative sum in
log space, from a stable :math:`\log a` of the pre-activations),

.. math::
    h_t = e^{L_t} h_{\text{start}} + \sum_{s \le t} e^{L_t - L_s} b_s,

every exponent :math:`\le 0`, so it neither overflows nor loses the sign of h or b (the log-space
scan of Heinsen 2023 needs h, b > 0). The chunks' ends obey the same recurrence over T/C steps,
which the scan solves recursively. Memory and work are O(T·B·H·C) for a fixed C, in
log_C(T) levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .family import CellFamily, LayerWeights, register_family

ACTIVATIONS = ("g", "identity")
MODES = ("auto", "parallel", "sequential")
SCAN_CHUNK = 16
"""C, the steps of one chunk of :func:`linear_scan`."""
PARALLEL_FROM_T = 64
"""Where the layer runs through :meth:`MinimalFamily.run_sequence` (the reference loop, and a backend
that asks it), ``mode="auto"`` scans sequences of at least this many steps on an accelerator; on
the CPU, where the scan under autograd was measured slower than the step loop at every length tried
(T = 8 .. 1024), it steps. The cpu backend's kernel (:mod:`gatedrnn.backends.cpu.minimal`) does not
ask: its ``auto`` is its compiled sequential pass, measured faster than its own scan at every length
(BENCHMARKS.md, "Minimal cells on the CPU")."""


def scan_pays(x_proj: Tensor) -> bool:
    """Whether ``mode="auto"`` scans this (T, B, G*H) input projection on the reference loop (see
    :data:`PARALLEL_FROM_T`)."""
    return x_proj.device.type != "cpu" and x_proj.shape[0] >= PARALLEL_FROM_T


def g(v: Tensor) -> Tensor:
    """The minimal cells' candidate activation: v + 1/2 for v >= 0, σ(v) otherwise (continuous, > 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def linear_scan(log_a: Tensor, b: Tensor, h0: Tensor, chunk: int = SCAN_CHUNK, restart: Tensor | None = None) -> Tensor:
    """All h_t of h_t = a_t h_{t-1} + b_t for t = 0 .. T-1 (see the module docstring).

    Args:
        log_a: (T, B, H) log of the decays a_t in (0, 1] (one of them -inf, a_t = 0, makes the
            chunk's later exponents NaN: ``restart`` is the exact form of a_t = 0).
        b: (T, B, H) the inputs b_t, any sign.
        h0: (B, H) the state before t = 0, any sign.
        restart: (T, B, H) or (T, B, 1) bool, or None: a_t = 0 where set (h_t = b_t; ``log_a`` is
            not read there). Within a chunk, with k_t the number of restarts at steps <= t, b_s
            keeps its weight e^{L_t - L_s} only where k_t = k_s and the chunk's start state
            only where k_t = 0; one level up, a chunk with a restart restarts the chunks' recurrence.
    Returns:
        (T, B, H) the states h_0' .. h_{T-1}' after each step.
    """
    T, B, H = b.shape
    pad = (-T) % chunk
    if pad:  # identity steps (a = 1, b = 0) fill the last chunk
        log_a = torch.cat([log_a, log_a.new_zeros(pad, B, H)])
        b = torch.cat([b, b.new_zeros(pad, B, H)])
        if restart is not None:
            restart = torch.cat([restart, restart.new_zeros((pad,) + restart.shape[1:])])
    n = (T + pad) // chunk
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=b.device).tril()  # [t, s]: s <= t
    linked = causal[None, :, :, None, None]  # where b_s reaches h_t within the chunk
    if restart is not None:
        log_a = log_a.masked_fill(restart, 0.0)
        count = restart.view((n, chunk) + restart.shape[1:]).cumsum(1)  # (n, C, B, 1 or H)
        linked = linked & (count.unsqueeze(2) == count.unsqueeze(1))
    L = log_a.view(n, chunk, B, H).cumsum(1)  # (n, C, B, H)
    exponent = L.unsqueeze(2) - L.unsqueeze(1)  # (n, C_t, C_s, B, H)
    weights = torch.exp(torch.where(linked, exponent, float("-inf")))
    local = (weights * b.view(n, 1, chunk, B, H)).sum(2)  # (n, C, B, H): each chunk from a zero start
    decay = L.exp()  # (n, C, B, H): the factor each chunk's start state gets
    if restart is not None:
        decay = decay.masked_fill(count > 0, 0.0)
    starts = h0.unsqueeze(0)  # (n, B, H): the state before each chunk
    if n > 1:  # the chunks' ends form the same recurrence, one level up
        ends = linear_scan(L[:, -1], local[:, -1], h0, chunk, None if restart is None else count[:, -1] > 0)
        starts = torch.cat([starts, ends[:-1]])
    h = local + decay * starts.unsqueeze(1)
    return h.reshape(n * chunk, B, H)[:T]


class MinimalFamily(CellFamily):
    """What minGRU and minLSTM share: input-only gates, one state h, a linear recurrence
    h_t = a_t h_{t-1} + b_t that :meth:`run_sequence` scans. A subclass gives :meth:`coefficients`."""

    states = ("h",)
    option_defaults = {"activation": "g", "mode": "auto"}
    retention_gate: str | None = None

    def check_options(self) -> None:
        for key, allowed in (("activation", ACTIVATIONS), ("mode", MODES)):
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(
                    f"{self.title()}: expected {key} to be one of {', '.join(map(repr, allowed))}, got {value!r}"
                )

    @classmethod
    def configurations(cls) -> tuple[dict, ...]:
        """Both activations, each stepped and scanned."""
        return tuple({"activation": a, "mode": m} for a in ACTIVATIONS for m in ("sequential", "parallel"))

    def parameter_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """``weight_ih`` (G*H, I) and ``bias_ih`` (G*H,) with bias: the gates see x only."""
        rows = self.num_gates * self.hidden_size
        return {"weight_ih": (rows, input_size), **({"bias_ih": (rows,)} if self.bias else {})}

    def candidate(self, v: Tensor) -> Tensor:
        """h̃ from its pre-activation: g(v), or v for ``activation="identity"``."""
        return g(v) if self.activation == "g" else v

    def coefficients(self, x_proj: Tensor) -> tuple[Tensor, Tensor]:
        """(log a, b), each (..., H), of h_t = a h_{t-1} + b from the input projection (..., G*H)."""
        raise NotImplementedError

    def run_sequence(
        self, x_proj: Tensor, states: tuple[Tensor, ...], weights: LayerWeights, lengths: Tensor | None, reverse: bool
    ) -> tuple[Tensor, tuple[Tensor, ...]] | None:
        """The layer as one :func:`linear_scan` (``mode="parallel"``, or ``"auto"`` where
        :func:`scan_pays`); None (step by step) otherwise."""
        T = x_proj.shape[0]
        if self.mode == "sequential" or (self.mode == "auto" and not scan_pays(x_proj)):
            return None
        log_a, b = self.coefficients(x_proj)  # (T, B, H) each
        active = None
        if lengths is not None:  # padding steps keep the state: a = 1, b = 0
            active = (torch.arange(T, device=lengths.device)[:, None] < lengths)[..., None].to(b.device)
            log_a, b = log_a.masked_fill(~active, 0.0), b.masked_fill(~active, 0.0)
        if reverse:
            log_a, b = log_a.flip(0), b.flip(0)
        h = linear_scan(log_a, b, states[0])
        final = h[-1]
        if reverse:
            h = h.flip(0)
        if active is not None:
            h = h.masked_fill(~active, 0.0)
        return h, (final,)


@register_family
class MinGRUFamily(MinimalFamily):
    """minGRU: gates z (update) and n (the candidate h̃), weight rows in that order; inspection records z."""

    name = "mingru"
    gates = ("z", "n")
    display_name = "minGRU"
    descriptions = {"z": "update gate: how much of the candidate replaces h (h = (1-z) h_prev + z h̃)"}

    def retention(self, values):
        """1 - z: the fraction of h kept per step."""
        return "1 - z", 1 - values["z"]

    @property
    def trace_names(self) -> tuple[str, ...]:
        return ("z",)

    def kernels(self):
        """The fused layer kernels of the cpu backend (:mod:`gatedrnn.backends.cpu.minimal`) and the
        Triton backend (:mod:`gatedrnn.backends.triton.scan`)."""
        return {"cpu": "mingru", "triton": "linear_scan"}

    def step(self, x_proj, states, weights):
        """h_t = (1 - z) h_{t-1} + z h̃: x_proj (B, 2H), states (h,) -> ((h_t,), {z})."""
        (h,) = states
        z_raw, n_raw = x_proj.split(self.hidden_size, dim=-1)
        z = torch.sigmoid(z_raw)
        h_new = (1 - z) * h + z * self.candidate(n_raw)
        return (h_new,), {"z": z}

    def coefficients(self, x_proj):
        """log a = log(1 - z) = -softplus(z̃), b = z h̃."""
        z_raw, n_raw = x_proj.split(self.hidden_size, dim=-1)
        return -F.softplus(z_raw), torch.sigmoid(z_raw) * self.candidate(n_raw)


@register_family
class MinLSTMFamily(MinimalFamily):
    """minLSTM: gates f, i and n (the candidate h̃), weight rows in that order; inspection records
    the normalised f', i'."""

    name = "minlstm"
    gates = ("f", "i", "n")
    display_name = "minLSTM"
    descriptions = {
        "f": "forget gate f' = f / (f + i), normalised: how much of the previous h is kept",
        "i": "input gate i' = i / (f + i) = 1 - f': how much of the candidate enters h",
    }

    def retention(self, values):
        """The normalised forget gate f': the fraction of h kept per step."""
        return "f", values["f"]

    @property
    def trace_names(self) -> tuple[str, ...]:
        return ("f", "i")

    def kernels(self):
        """The fused layer kernels of the cpu backend (:mod:`gatedrnn.backends.cpu.minimal`) and the
        Triton backend (:mod:`gatedrnn.backends.triton.scan`)."""
        return {"cpu": "minlstm", "triton": "linear_scan"}

    def step(self, x_proj, states, weights):
        """h_t = f' h_{t-1} + i' h̃ with f' = f/(f+i), i' = i/(f+i): x_proj (B, 3H) -> ((h_t,), {f, i})."""
        (h,) = states
        f_raw, i_raw, n_raw = x_proj.split(self.hidden_size, dim=-1)
        f, i = torch.sigmoid(f_raw), torch.sigmoid(i_raw)
        f_norm, i_norm = f / (f + i), i / (f + i)
        h_new = f_norm * h + i_norm * self.candidate(n_raw)
        return (h_new,), {"f": f_norm, "i": i_norm}

    def coefficients(self, x_proj):
        """log f' = -softplus(d), i' = σ(d) with d = log σ(ĩ) - log σ(f̃) = softplus(-f̃) - softplus(-ĩ)."""
        f_raw, i_raw, n_raw = x_proj.split(self.hidden_size, dim=-1)
        d = F.softplus(-f_raw) - F.softplus(-i_raw)
        return -F.softplus(d), torch.sigmoid(d) * self.candidate(n_raw)
