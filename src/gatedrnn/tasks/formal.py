"""Length generalisation on regular languages: the parity check and modular arithmetic (simple)
of Delétang et al. 2023, "Neural Networks and the Chomsky Hierarchy" (ICLR 2023), as their
reference code (``tasks/regular/``) generates them.

The protocol is theirs: train on strings whose length L is drawn uniformly from {1, ..., 40},
one length per batch; test on longer strings, every length from 41 to 500, and report the
*score*, the accuracy averaged over the test lengths. A network that learnt the automaton keeps
its accuracy at every length; one that learnt something length-specific drops to chance (1/2 for
parity, 1/5 for arithmetic mod 5) beyond the lengths it saw.

Input coding (theirs, ``make_model_with_empty_targets``): the string one-hot over the task's
symbols, then one *query* step, a one-hot symbol of its own, at which the network answers; so
an input has L + 1 steps and ``input_size`` is the number of symbols plus one. Padding after a
shorter sequence is zero. The answer is a class read at the query step (the last real step):
cross-entropy loss, a sequence is correct when the arg-max is its class.

Test set (ours, sized for a CPU): ``per_length`` fresh strings of every length 1, ...,
``test_max``, in order of length. Their accuracies are reported by length band (a
:meth:`Task.measures` entry each): ``acc_1_40`` (the training lengths), then bands ending at
each multiple of 100 (``acc_41_100``, ``acc_101_200``, ..., ``acc_401_500``), and ``score``, the
mean accuracy over the lengths 41 to ``test_max`` (each length holds the same number of strings,
so that is the paper's mean over lengths). Their example script tests 512 strings per length
(``range_test_total_batch_size``); their Table 2 gives the best score of 10 seeds and 3 learning
rates.
Solved: ``score >= solved_accuracy`` (default 0.9, our threshold).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import Batch, Task, check_number, check_positive, last_step, step_mask

PLUS, MINUS, TIMES = 0, 1, 2
"""Operator codes of modular arithmetic, in the order of the reference code's symbols + - *."""


def length_bands(train_max: int, test_max: int) -> list[tuple[int, int]]:
    """The bands the test accuracy is reported in, as (first, last) lengths: the training
    lengths (1, train_max), then from train_max + 1 up to each multiple of 100 and on to
    test_max: (1, 40), (41, 100), (101, 200), ..., (401, 500) for the paper's sizes."""
    ends = [e for e in range(100, test_max, 100) if e > train_max] + [test_max]
    bands, first = [(1, train_max)], train_max + 1
    for end in ends:
        bands.append((first, end))
        first = end + 1
    return bands


def band_name(band: tuple[int, int]) -> str:
    """The measure name of a band: ``acc_41_100``."""
    return f"acc_{band[0]}_{band[1]}"


class _LengthGeneralisation(Task):
    """Shared by the formal-language tasks: the length protocol, query-step coding, test set by
    length and the per-band measures (see the module docstring).

    ``Batch.targets`` is (B, 2) int64: column 0 the class, column 1 the length L the string was
    drawn with (its band).
    """

    symbols: int  # string symbols; the query symbol is id ``symbols``
    chance: float  # accuracy of guessing, for tables

    def __init__(
        self, *, seq_len: int = 40, test_max: int = 500, per_length: int = 4, solved_accuracy: float = 0.9
    ) -> None:
        check_positive(self.name, seq_len=seq_len, test_max=test_max, per_length=per_length)
        if test_max <= seq_len:
            raise ValueError(
                f"task {self.name!r}: test_max must exceed seq_len (the test lengths are the longer "
                f"ones), got test_max={test_max}, seq_len={seq_len}"
            )
        self.seq_len, self.test_max, self.per_length = seq_len, test_max, per_length
        self.solved_accuracy = check_number(self.name, "solved_accuracy", solved_accuracy, high=1.0)
        self.input_size, self.output_size = self.symbols + 1, self.classes
        self.test_size = per_length * test_max
        self.bands = length_bands(seq_len, test_max)

    @property
    @abstractmethod
    def classes(self) -> int:
        """The number of answers (output classes)."""

    @abstractmethod
    def strings(self, lengths: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Random strings of the drawn ``lengths`` (B,): symbol ids (B, S) int64 padded with -1,
        their real lengths (B,) (the drawn ones, or fewer where the task needs it), classes (B,)."""

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        """Train: one length for the whole batch, uniform in {1, ..., seq_len} (the reference's
        curriculum). Test: each string's length uniform in {seq_len + 1, ..., test_max}."""
        if split == "train":
            lengths = torch.randint(1, self.seq_len + 1, (1,), generator=generator).repeat(batch_size)
        else:
            lengths = torch.randint(self.seq_len + 1, self.test_max + 1, (batch_size,), generator=generator)
        return self._batch(lengths, generator)

    def test_batches(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        """``per_length`` strings of each length 1, ..., test_max, shortest first, in batches of at
        most ``batch_size``."""
        lengths = torch.arange(1, self.test_max + 1).repeat_interleave(self.per_length)
        for chunk in lengths.split(batch_size):
            yield self._batch(chunk, generator)

    def _batch(self, lengths: Tensor, generator: torch.Generator) -> Batch:
        ids, real, classes = self.strings(lengths, generator)
        steps = int(real.max()) + 1
        rows = torch.arange(len(lengths))
        tokens = torch.full((len(lengths), steps), -1, dtype=torch.int64)
        tokens[:, : ids.shape[1]] = ids
        tokens[rows, real] = self.symbols  # the query step
        inputs = F.one_hot(tokens.clamp(min=0), self.input_size).float()
        inputs = inputs * step_mask(real + 1, len(lengths), steps).unsqueeze(-1)  # (B, S, I)
        uniform = bool((real == real[0]).all())
        return Batch(inputs, torch.stack([classes, lengths], 1), None if uniform else real + 1)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(last_step(output, batch.lengths), batch.targets[:, 0])

    def correct(self, output: Tensor, batch: Batch) -> Tensor:
        return last_step(output, batch.lengths).argmax(-1) == batch.targets[:, 0]

    def measures(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Per band, ``correct`` on the band's strings weighted by (test set) / (band's share of
        it), 0 elsewhere; ``score`` likewise over the lengths above ``seq_len``. Their means over
        the test set of :meth:`test_batches` are the band accuracies and the paper's score."""
        ok = self.correct(output, batch).float()
        length = batch.targets[:, 1]

        def weighted(first: int, last: int) -> Tensor:
            share = (last - first + 1) / self.test_max  # of the test set
            return ok * ((length >= first) & (length <= last)).float() / share

        found = {band_name(band): weighted(*band) for band in self.bands}
        found["score"] = weighted(self.seq_len + 1, self.test_max)
        return found

    def solved(self, loss: float, accuracy: float, **measures: float) -> bool:
        return measures["score"] >= self.solved_accuracy

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "test_max": self.test_max, "per_length": self.per_length}


@register
class ParityCheck(_LengthGeneralisation):
    """Delétang et al. 2023's "Parity Check" (regular): is the number of 1s in a binary string even?

    String: L bits drawn uniformly from {0, 1}. Class 0 when the count of 1s is even, 1 when odd.
    Inputs (B, L + 1, 3): one-hot bits, then the query symbol. A network without memory scores
    chance, accuracy 1/2 and loss ln 2 (``baseline``). Delétang et al. (their Table 2, best score
    over seeds and learning rates): RNN 100.0, LSTM 100.0 (percent).
    """

    name = "parity"
    reference = "Delétang et al. 2023, Table 2 (Parity Check)"
    symbols, chance = 2, 0.5
    baseline = math.log(2)

    @property
    def classes(self) -> int:
        return 2

    def strings(self, lengths: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        longest = int(lengths.max())
        bits = torch.randint(0, 2, (len(lengths), longest), generator=generator)
        bits = bits.masked_fill(~step_mask(lengths, len(lengths), longest), -1)
        return bits, lengths, bits.clamp(min=0).sum(1) % 2


@register
class ModularArithmetic(_LengthGeneralisation):
    """Delétang et al. 2023's "Modular Arithmetic (Simple)" (regular): the value of an expression
    over {0, ..., m - 1} with the operators + - * (m = ``modulus``, 5 in the paper), mod m.

    String: a number, then alternately an operator and a number, each drawn uniformly; its length
    is odd: a drawn L that is even is shortened to L - 1 (the reference code's rule), so L = 2
    gives one number. Evaluation as the reference code's: ``*`` binds tighter than ``+`` and
    ``-``, which act left to right (``-`` adds the negated next term), the result taken mod m:
    1 - 2 * 3 = -5 = 0 (mod 5). Symbols (ids): the numbers 0..m-1, then + - * and the reference's
    blank ``_`` (never drawn), so inputs are (B, L + 1, m + 5) with the query symbol. Classes: the
    m residues. Delétang et al. (Table 2, best score): RNN 100.0, LSTM 100.0.
    """

    name = "modular-arithmetic"
    reference = "Delétang et al. 2023, Table 2 (Modular Arithmetic (Simple))"

    def __init__(
        self,
        *,
        seq_len: int = 40,
        test_max: int = 500,
        per_length: int = 4,
        solved_accuracy: float = 0.9,
        modulus: int = 5,
    ) -> None:
        check_positive(self.name, modulus=modulus)
        if modulus < 2:
            raise ValueError(f"task {self.name!r}: modulus must be at least 2, got {modulus}")
        self.modulus, self.symbols, self.chance = modulus, modulus + 4, 1 / modulus
        super().__init__(seq_len=seq_len, test_max=test_max, per_length=per_length, solved_accuracy=solved_accuracy)

    @property
    def classes(self) -> int:
        return self.modulus

    def strings(self, lengths: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        real = lengths - (lengths % 2 == 0).long()  # odd: number (operator number)*
        terms = int(real.max()) // 2 + 1
        numbers = torch.randint(0, self.modulus, (len(lengths), terms), generator=generator)
        operators = torch.randint(0, 3, (len(lengths), terms - 1), generator=generator)
        # past a string's end: "+ 0", which leaves its value as it is
        numbers = numbers.masked_fill(~step_mask(real // 2 + 1, len(lengths), terms), 0)
        operators = operators.masked_fill(~step_mask(real // 2, len(lengths), terms - 1), PLUS)
        ids = torch.empty(len(lengths), 2 * terms - 1, dtype=torch.int64)
        ids[:, 0::2], ids[:, 1::2] = numbers, self.modulus + operators
        ids = ids.masked_fill(~step_mask(real, len(lengths), ids.shape[1]), -1)
        return ids, real, evaluate_expression(numbers, operators, self.modulus)


def evaluate_expression(numbers: Tensor, operators: Tensor, modulus: int) -> Tensor:
    """The value mod ``modulus`` of ``n_0 o_1 n_1 ... o_K n_K`` with ``*`` before ``+``/``-``:
    numbers (B, K + 1), operators (B, K) of :data:`PLUS`, :data:`MINUS`, :data:`TIMES` -> (B,)."""
    total = torch.zeros_like(numbers[:, 0])
    term = numbers[:, 0]  # the product being built, signed
    for k in range(operators.shape[1]):
        op, x = operators[:, k], numbers[:, k + 1]
        total = torch.where(op == TIMES, total, (total + term) % modulus)
        term = torch.where(op == TIMES, term * x, torch.where(op == MINUS, -x, x)) % modulus
    return (total + term) % modulus
