"""What a recurrent layer computes, independent of how: the :class:`CellConfig` every backend reads.

A layer's recurrence is fixed by its cell family (``"lstm"``, ``"gru"``, ``"rnn"``), its sizes and
the variant switches below. Weights travel separately, as a dict keyed by the names in
:data:`WEIGHT_KEYS` (the module's parameter names without the ``_l{k}[_reverse]`` suffix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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

FAMILY_GATES: dict[str, tuple[str, ...]] = {"gru": ("r", "z", "n"), "rnn": ("h",)}

TRACE_NAMES: dict[str, tuple[str, ...]] = {
    "lstm": ("i", "f", "g", "o", "c", "h"),
    "gru": ("r", "z", "n", "h"),
    "rnn": ("h",),
}
"""What gate inspection records per time step, per family (a removed gate is recorded as its
constant, e.g. ``i = 1`` for ``nig``, ``i = 1 - f`` for ``cifg``)."""

WEIGHT_KEYS = (
    "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr",
    "weight_ch", "weight_gg",
    "ln_weight_ih", "ln_bias_ih", "ln_weight_hh", "ln_bias_hh", "ln_weight_c", "ln_bias_c",
)

LayerWeights = dict[str, Tensor]


@dataclass(frozen=True)
class CellConfig:
    """The recurrence of one layer and direction.

    Attributes:
        family: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        hidden_size: H, the number of units.
        proj_size: P > 0 projects the LSTM's h to P features (torch.nn's ``proj_size``); 0 for none.
        variant: an LSTM variant from :data:`LSTM_VARIANTS`.
        layer_norm: normalise each gate's input and recurrent pre-activations (and the LSTM cell
            before its output activation), Ba et al. 2016.
        reset_after: GRU only; True is torch.nn's form r * (U_n h + b_hn), False Cho et al.'s
            U_n (r * h) + b_hn.
        nonlinearity: RNN only, ``"tanh"`` or ``"relu"``.
        bias: whether bias_ih / bias_hh exist.
        eps: the layer-norm epsilon.
    """

    family: str
    hidden_size: int
    proj_size: int = 0
    variant: str = "vanilla"
    layer_norm: bool = False
    reset_after: bool = True
    nonlinearity: str = "tanh"
    bias: bool = True
    eps: float = 1e-5

    @property
    def gates(self) -> tuple[str, ...]:
        """Names of the weight row blocks, in order (torch.nn's i,f,g,o and r,z,n)."""
        if self.family == "lstm":
            return LSTM_VARIANTS[self.variant]
        return FAMILY_GATES[self.family]

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def output_size(self) -> int:
        """R, the size of h as it leaves the cell (and enters the recurrent matmul)."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Sizes of the carried state: (R, H) for LSTM's (h, c), (H,) otherwise."""
        if self.family == "lstm":
            return (self.output_size, self.hidden_size)
        return (self.hidden_size,)

    @property
    def torch_mode(self) -> str | None:
        """torch's own mode name when torch.nn computes exactly this cell, else None."""
        if self.layer_norm:
            return None
        if self.family == "lstm":
            return "LSTM" if self.variant == "vanilla" else None
        if self.family == "gru":
            return "GRU" if self.reset_after else None
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"


@dataclass
class Noise:
    """Random regularisation for one layer and direction, drawn by the module so that every
    backend sees the same masks.

    Attributes:
        recurrent_mask: (B, R) inverted-dropout mask, already scaled by 1 / (1 - p), multiplied
            into h_{t-1} where it enters the recurrent matmul (one mask per sequence: Gal &
            Ghahramani 2016). None for no recurrent dropout.
        zoneout: probability p that a unit keeps its previous value (Krueger et al. 2016).
        zoneout_h: (T, B, R) 1 where h keeps its previous value at step t, else 0; None with
            p > 0 means evaluation: the deterministic expectation p * old + (1 - p) * new.
        zoneout_c: (T, B, H) the same for the LSTM cell state.
    """

    recurrent_mask: Tensor | None = None
    zoneout: float = 0.0
    zoneout_h: Tensor | None = None
    zoneout_c: Tensor | None = None

    @property
    def active(self) -> bool:
        return self.recurrent_mask is not None or self.zoneout > 0

    def to(self, dtype: torch.dtype) -> Noise:
        """The same regularisation with its masks in ``dtype``."""
        cast = lambda mask: None if mask is None else mask.to(dtype)  # noqa: E731
        return Noise(cast(self.recurrent_mask), self.zoneout, cast(self.zoneout_h), cast(self.zoneout_c))


def zoneout_mix(old: Tensor, new: Tensor, p: float, keep: Tensor | None) -> Tensor:
    """Zoneout: ``keep * old + (1 - keep) * new`` with a sampled keep mask in training, and the
    expectation ``p * old + (1 - p) * new`` when ``keep`` is None (evaluation)."""
    if keep is None:
        return p * old + (1.0 - p) * new
    return torch.where(keep.bool(), old, new)
