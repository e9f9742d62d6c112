"""The copy-memory task (Hochreiter & Schmidhuber 1997, sec. 5.2's idea in the form of
Arjovsky, Shah & Bengio 2016, sec. 4.1, as benchmarked by Bai et al. 2018, sec. 5)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import Batch, Task, check_number, check_positive, one_hot

BLANK, DELIMITER = 0, 9


@register
class CopyMemory(Task):
    """Remember 10 symbols for T steps, then write them out.

    Input ids over 10 symbols (0 blank, 1..8 data, 9 delimiter), one-hot (B, T + 20, 10): ten data
    symbols drawn uniformly from 1..8, then T - 1 blanks, the delimiter, and ten blanks. Targets
    (B, T + 20) ids over 9 classes: blank for the first T + 10 steps, then the ten data symbols.
    Loss: cross-entropy averaged over all T + 20 steps. A network without memory outputs blanks
    and then guesses uniformly, scoring 10 ln 8 / (T + 20) (the ``baseline``). A sequence is
    correct when all ten symbols are recalled (arg-max); solved when at least ``solved_accuracy``
    (default 0.99) of the test sequences are.
    """

    name = "copy"
    reference = "Arjovsky, Shah & Bengio 2016, sec. 4.1; Bai et al. 2018, sec. 5"
    test_size = 1000
    symbols = 10

    def __init__(self, *, seq_len: int = 100, solved_accuracy: float = 0.99) -> None:
        check_positive(self.name, seq_len=seq_len)
        self.seq_len = seq_len
        self.solved_accuracy = check_number(self.name, "solved_accuracy", solved_accuracy, high=1.0)
        self.input_size, self.output_size = 10, 9
        self.baseline = self.symbols * math.log(8) / (seq_len + 2 * self.symbols)

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        n, steps = self.symbols, self.seq_len + 2 * self.symbols
        data = torch.randint(1, 9, (batch_size, n), generator=generator)
        ids = torch.full((batch_size, steps), BLANK, dtype=torch.int64)
        ids[:, :n] = data
        ids[:, self.seq_len + n - 1] = DELIMITER
        targets = torch.full((batch_size, steps), BLANK, dtype=torch.int64)
        targets[:, -n:] = data
        return Batch(one_hot(ids, 10), targets)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.targets.flatten())

    def correct(self, output: Tensor, batch: Batch) -> Tensor:
        n = self.symbols
        return (output[:, -n:].argmax(-1) == batch.targets[:, -n:]).all(1)

    def solved(self, loss: float, accuracy: float, **measures: float) -> bool:
        return accuracy >= self.solved_accuracy
