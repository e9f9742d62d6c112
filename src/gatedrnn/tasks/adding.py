"""Adding and multiplication problems: remember two marked real values over a long lag.

Three tasks share the (value, marker) input coding, shape (B, T, 2):

- ``adding``: Hochreiter & Schmidhuber 1997, section 5.4 (experiment 4);
- ``multiplication``: the same paper, section 5.5 (experiment 5);
- ``adding-modern``: the form used since Le et al. 2015 and in Bai et al. 2018's benchmark
  (values in U[0, 1], exactly two markers, target their plain sum, MSE).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from . import register
from .base import Batch, LastStepRegression, check_number, check_positive, randint, uniform


def _marked_sequences(
    batch_size: int, seq_len: int, low: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 1997 marking scheme (section 5.4).

    Each sequence has a random length L in {T, ..., T + T // 10} (padded to the longest). Values
    are U[low, 1]. One of the first 10 steps is marked (its value X1), then one of the first
    T/2 - 1 still unmarked steps (X2). Markers are 1.0 at the two marked steps, -1.0 at the first
    and at the last real step (unless the first step is marked), 0.0 elsewhere.

    Returns:
        inputs (B, L_max, 2), lengths (B,), positions (B, 2) of the marks (first, second), and
        values (B, 2) of X1, X2 as drawn.
    """
    lengths = randint(seq_len, seq_len + seq_len // 10 + 1, (batch_size,), generator)
    steps = int(lengths.max())
    values = uniform((batch_size, steps), low, 1.0, generator)
    first = randint(0, 10, (batch_size,), generator)
    # The second mark is one of the first T/2 - 1 still unmarked steps, i.e. one of the steps
    # {0, ..., T/2 - 1} other than `first`: draw a slot and skip over the first mark.
    second = randint(0, seq_len // 2 - 1, (batch_size,), generator)
    second = second + (second >= first).long()
    rows = torch.arange(batch_size)
    marker = torch.zeros(batch_size, steps)
    marker[:, 0] = -1.0
    marker[rows, lengths - 1] = -1.0
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    pad = torch.arange(steps) >= lengths.view(-1, 1)
    values = values.masked_fill(pad, 0.0)
    positions = torch.stack([first, second], 1)  # (B, 2)
    marked = values.gather(1, positions)  # (B, 2)
    return torch.stack([values, marker], -1), lengths, positions, marked


class _Marked1997(LastStepRegression):
    """Shared by the 1997 adding and multiplication problems."""

    low: float  # values are drawn from U[low, 1]
    neutral: float  # what a value marked at the very first step counts as

    def __init__(self, *, seq_len: int = 100, tolerance: float = 0.04) -> None:
        check_positive(self.name, seq_len=seq_len)
        if seq_len < 22:
            raise ValueError(
                f"task {self.name!r}: seq_len must be at least 22 (the first mark is one of "
                f"the first 10 steps, inside the first T/2 - 1), got {seq_len}"
            )
        self.seq_len = seq_len
        self.tolerance = check_number(self.name, "tolerance", tolerance)
        self.input_size, self.output_size = 2, 1
        self.baseline = self._constant_predictor_loss()

    @abstractmethod
    def target(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The value to output at the last step, from the two marked values (B,) -> (B,)."""

    @abstractmethod
    def target_moments(self, drawn: int) -> tuple[float, float]:
        """(E[y], E[y^2]) of the target when ``drawn`` of the two marked values (1 or 2) are drawn
        and the others are the neutral element."""

    def _constant_predictor_loss(self) -> float:
        """Var(y): the MSE of the best constant output. The first mark is at step 0 with
        probability 1/10, the second (one of T/2 - 1 slots) with probability (9/10) / (T/2 - 1)."""
        at_start = 0.1 + 0.9 / (self.seq_len // 2 - 1)
        one, two = self.target_moments(1), self.target_moments(2)
        mean = at_start * one[0] + (1 - at_start) * two[0]
        return at_start * one[1] + (1 - at_start) * two[1] - mean**2

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        inputs, lengths, positions, marked = _marked_sequences(batch_size, self.seq_len, self.low, generator)
        # "X1 is set to zero in the rare case where the first pair of the sequence got marked":
        # the value there counts as the operation's neutral element, in the input and the target.
        at_start = positions == 0  # (B, 2)
        marked = marked.masked_fill(at_start, self.neutral)
        inputs[:, 0, 0] = torch.where(at_start.any(1), torch.tensor(self.neutral), inputs[:, 0, 0])
        targets = self.target(marked[:, 0], marked[:, 1]).unsqueeze(1)  # (B, 1)
        return Batch(inputs, targets, lengths)


@register
class Adding1997(_Marked1997):
    """The adding problem of Hochreiter & Schmidhuber 1997, section 5.4 (experiment 4).

    Input (B, L, 2): at each step a value in U[-1, 1] and a marker in {-1, 0, 1}; L is random in
    [T, T + T/10]; exactly two steps are marked 1.0 (one of the first 10, one of the first T/2 - 1);
    the first and last steps carry marker -1.0. The target at the last step is

    .. math:: y = 0.5 + \\frac{X_1 + X_2}{4}

    (the sum scaled into [0, 1]). The best constant output, 0.5, scores an MSE of about 1/24
    (``baseline``, computed exactly). A sequence is processed correctly when the absolute error at its
    end is below 0.04; the paper tests on 2560 sequences. Reported: T = 100 solved after 74,000
    training sequences (2 memory blocks of size 2).
    """

    name = "adding"
    reference = "Hochreiter & Schmidhuber 1997, sec. 5.4 (exp. 4)"
    low, neutral = -1.0, 0.0

    def target(self, x1: Tensor, x2: Tensor) -> Tensor:
        return 0.5 + (x1 + x2) / 4.0

    def target_moments(self, drawn: int) -> tuple[float, float]:
        return 0.5, 0.25 + drawn / 48.0  # Var(X / 4) = (1/3) / 16 for X ~ U[-1, 1]


@register
class Multiplication1997(_Marked1997):
    """The multiplication problem of Hochreiter & Schmidhuber 1997, section 5.5 (experiment 5).

    As :class:`Adding1997`, but values are U[0, 1] and the target is the product
    :math:`y = X_1 X_2`. A value marked at the very first step counts as 1 (the neutral element,
    as the paper says: "we set X1 to 1.0"). A sequence is correct when the absolute error is
    below 0.04. The paper stopped training "as soon as less than n_seq of the 2000 most recent
    training sequences lead to absolute errors exceeding 0.04", with n_seq = 140 (its Table 8:
    139 of 2560 test sequences wrong) or 13; "solved" here is: fewer than ``wrong_fraction``
    (default 140/2000 = 0.07; 13/2000 = 0.0065 for the stricter row) of the test sequences wrong.
    """

    name = "multiplication"
    reference = "Hochreiter & Schmidhuber 1997, sec. 5.5 (exp. 5)"
    low, neutral = 0.0, 1.0

    def __init__(self, *, seq_len: int = 100, tolerance: float = 0.04, wrong_fraction: float = 140 / 2000) -> None:
        super().__init__(seq_len=seq_len, tolerance=tolerance)
        self.wrong_fraction = check_number(self.name, "wrong_fraction", wrong_fraction, high=1.0)

    def target(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1 * x2

    def target_moments(self, drawn: int) -> tuple[float, float]:
        return 0.5**drawn, (1.0 / 3.0) ** drawn  # E[X] = 1/2, E[X^2] = 1/3 for X ~ U[0, 1]

    def solved(self, loss: float, accuracy: float, **measures: float) -> bool:
        return 1.0 - accuracy < self.wrong_fraction


@register
class AddingModern(LastStepRegression):
    """The adding problem as used by Le et al. 2015, Arjovsky et al. 2016 and Bai et al. 2018.

    Input (B, T, 2): channel 0 values in U[0, 1], channel 1 a marker with exactly two 1s at two
    distinct uniformly random steps (Bai et al.'s generator), zeros elsewhere. Target: the sum of
    the two marked values, read at the last step, loss MSE. Always predicting 1 scores
    Var(X1 + X2) = 1/6 = 0.167. Solved: test MSE below ``solved_mse`` (default 0.001); a sequence
    is counted correct when its absolute error is below ``tolerance`` (default 0.04). Bai et al.
    2018, Table 1, T = 600: LSTM 0.164, GRU 5.3e-5, RNN 0.177.
    """

    name = "adding-modern"
    reference = "Le et al. 2015; Bai et al. 2018, sec. 5 and Table 1"
    test_size = 1000

    def __init__(self, *, seq_len: int = 600, tolerance: float = 0.04, solved_mse: float = 0.001) -> None:
        check_positive(self.name, seq_len=seq_len)
        if seq_len < 2:
            raise ValueError(f"task {self.name!r}: seq_len must be at least 2 (two markers), got {seq_len}")
        self.seq_len = seq_len
        self.tolerance = check_number(self.name, "tolerance", tolerance)
        self.solved_mse = check_number(self.name, "solved_mse", solved_mse)
        self.input_size, self.output_size = 2, 1
        self.baseline = 1.0 / 6.0

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        values = torch.rand(batch_size, self.seq_len, generator=generator)
        # Two distinct positions per row: the two smallest of T random keys.
        positions = torch.rand(batch_size, self.seq_len, generator=generator).argsort(1)[:, :2]
        marker = torch.zeros(batch_size, self.seq_len).scatter_(1, positions, 1.0)
        targets = (values * marker).sum(1, keepdim=True)  # (B, 1)
        return Batch(torch.stack([values, marker], -1), targets)

    def solved(self, loss: float, accuracy: float, **measures: float) -> bool:
        return loss < self.solved_mse
