"""Temporal order: Hochreiter & Schmidhuber 1997, section 5.6 (experiment 6).

Classify a sequence by the order in which widely separated symbols X and Y occur, among
random distractors a, b, c, d. Symbols are coded locally (I = 8: a, b, c, d, X, Y, the start
symbol and the trigger symbol that ends each sequence); the class is read at the last step.
"""

from __future__ import annotations

import torch

from . import register
from .base import Batch, LastStepClassification, check_number, check_positive, randint, step_mask

SYMBOLS = ("a", "b", "c", "d", "X", "Y", "start", "trigger")
_X, _START, _TRIGGER = 4, 6, 7


class _TemporalOrder(LastStepClassification):
    """Shared by tasks 6a and 6b: ``windows`` are the paper's ranges for the relevant positions
    at T = 100 ((10, 20) means t in {10, ..., 20}); other lengths scale them by T / 100."""

    windows: tuple[tuple[int, int], ...]
    test_size = 2560

    def __init__(self, *, seq_len: int = 100, tolerance: float = 0.3) -> None:
        check_positive(self.name, seq_len=seq_len)
        if seq_len < 20:
            raise ValueError(f"task {self.name!r}: seq_len must be at least 20, got {seq_len}")
        self.seq_len = seq_len
        # the criterion compares softmax outputs with a one-hot target: errors lie in [0, 1]
        self.tolerance = check_number(self.name, "tolerance", tolerance, high=1.0)
        self.input_size, self.output_size = len(SYMBOLS), 2 ** len(self.windows)

    def positions(self) -> list[tuple[int, int]]:
        """The ranges of the relevant positions at this ``seq_len``."""
        scale = self.seq_len / 100
        return [(round(lo * scale), round(hi * scale)) for lo, hi in self.windows]

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        lengths = randint(self.seq_len, self.seq_len + self.seq_len // 10 + 1, (batch_size,), generator)
        steps = int(lengths.max())
        ids = torch.randint(4, (batch_size, steps), generator=generator)
        ids[:, 0] = _START
        ids[torch.arange(batch_size), lengths - 1] = _TRIGGER
        target = torch.zeros(batch_size, dtype=torch.int64)
        for lo, hi in self.positions():
            where = randint(lo, hi + 1, (batch_size,), generator)
            is_y = torch.randint(2, (batch_size,), generator=generator)
            ids[torch.arange(batch_size), where] = _X + is_y
            target = 2 * target + is_y  # X X -> 0 (Q), X Y -> 1 (R), Y X -> 2 (S), Y Y -> 3 (U)
        inputs = torch.nn.functional.one_hot(ids, len(SYMBOLS)).float()
        inputs = inputs * step_mask(lengths, batch_size, steps).unsqueeze(-1)
        return Batch(inputs, target, lengths)


@register
class TemporalOrder6a(_TemporalOrder):
    """Task 6a of Hochreiter & Schmidhuber 1997, section 5.6: two relevant symbols.

    Length random in [100, 110]; the first symbol is the start symbol, the last the trigger;
    positions t1 in [10, 20] and t2 in [50, 60] hold X or Y, all others a random one of a, b, c, d.
    Four classes by the order: XX -> Q, XY -> R, YX -> S, YY -> U (ids 0..3). Inputs (B, L, 8),
    targets (B,) class ids; loss cross-entropy at the last step; a sequence is correct when every
    softmax output is within 0.3 of the one-hot target ("final absolute error of all output units
    below 0.3"). Reported (Table 9): 31,390 training sequences on average, 1 of 2560 test sequences wrong.
    """

    name = "order-6a"
    reference = "Hochreiter & Schmidhuber 1997, sec. 5.6 (exp. 6, task 6a)"
    windows = ((10, 20), (50, 60))


@register
class TemporalOrder6b(_TemporalOrder):
    """Task 6b of Hochreiter & Schmidhuber 1997, section 5.6: three relevant symbols.

    As :class:`TemporalOrder6a` with X or Y at t1 in [10, 20], t2 in [33, 43], t3 in [66, 76];
    eight classes XXX -> Q, XXY -> R, XYX -> S, XYY -> U, YXX -> V, YXY -> A, YYX -> B, YYY -> C
    (ids 0..7). Reported (Table 9): 571,100 training sequences on average, 2 of 2560 test sequences wrong.
    """

    name = "order-6b"
    reference = "Hochreiter & Schmidhuber 1997, sec. 5.6 (exp. 6, task 6b)"
    windows = ((10, 20), (33, 43), (66, 76))
