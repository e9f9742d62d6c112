"""What a recurrent layer computes, independent of how: a configured cell family (see
:mod:`gatedrnn.cells.family`) that every backend reads, and the random regularisation of one call.

Weights travel separately, as a dict keyed by the module's parameter names without the
``_l{k}[_reverse]`` suffix (:data:`LayerWeights`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cells import LSTM_VARIANTS, CellFamily, LayerWeights, family_class

__all__ = ["LSTM_VARIANTS", "CellConfig", "LayerWeights", "Noise", "zoneout_mix"]


def CellConfig(
    family: str | type[CellFamily], hidden_size: int, proj_size: int = 0, *, bias: bool = True, **options
) -> CellFamily:  # noqa: N802 -- reads as the value type it builds
    """The configured cell of one layer and direction: ``family`` (a registered name or a
    :class:`~gatedrnn.CellFamily` subclass) with H = ``hidden_size`` and the family's options.

    Example::

        >>> import gatedrnn
        >>> gatedrnn.CellConfig("lstm", 8, variant="peephole").gates
        ('i', 'f', 'g', 'o')
    """
    if proj_size:
        options["proj_size"] = proj_size
    return family_class(family)(hidden_size, bias=bias, **options)


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
        zoneout_c: (T, B, H) the same for the second state (the LSTM's cell state).
        zoneout_rest: the same for each further state of a family with more than two.
    """

    recurrent_mask: Tensor | None = None
    zoneout: float = 0.0
    zoneout_h: Tensor | None = None
    zoneout_c: Tensor | None = None
    zoneout_rest: tuple[Tensor | None, ...] = ()

    @property
    def zoneout_keeps(self) -> tuple[Tensor | None, ...]:
        """The keep masks of every state, in the family's state order (None past the given ones)."""
        return (self.zoneout_h, self.zoneout_c, *self.zoneout_rest)

    @property
    def active(self) -> bool:
        return self.recurrent_mask is not None or self.zoneout > 0

    def to(self, dtype: torch.dtype) -> Noise:
        """The same regularisation with its masks in ``dtype``."""
        cast = lambda mask: None if mask is None else mask.to(dtype)  # noqa: E731
        return Noise(
            cast(self.recurrent_mask),
            self.zoneout,
            cast(self.zoneout_h),
            cast(self.zoneout_c),
            tuple(cast(mask) for mask in self.zoneout_rest),
        )


def zoneout_mix(old: Tensor, new: Tensor, p: float, keep: Tensor | None) -> Tensor:
    """Zoneout: ``keep * old + (1 - keep) * new`` with a sampled keep mask in training, and the
    expectation ``p * old + (1 - p) * new`` when ``keep`` is None (evaluation)."""
    if keep is None:
        return p * old + (1.0 - p) * new
    return torch.where(keep.bool(), old, new)
