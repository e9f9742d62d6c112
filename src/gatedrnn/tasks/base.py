"""The task protocol: what every experiment in :mod:`gatedrnn.tasks` provides to the training loop.

A *task* is a seeded, on-the-fly generator of batches together with its own loss and its own
success criterion. :func:`gatedrnn.train.train` knows nothing else about a task; a new task family
is one file in ``gatedrnn/tasks/`` with a subclass of :class:`Task` decorated with
:func:`gatedrnn.tasks.register` (every module of the package is imported when the registry is
first read, so nothing else needs editing).

Shape legend: B batch, T time steps (the longest sequence in the batch), I input features,
O network outputs (``task.output_size``), V vocabulary size.

How the pieces meet::

    batch = task.sample(B, generator)          # Batch(inputs, targets, lengths)
    output = model(batch.inputs)                # (B, T, O): the linear head at *every* step
    loss = task.loss(output, batch)             # scalar tensor, the training objective
    ok = task.correct(output, batch)            # (B,) bool, the per-sequence criterion
    task.solved(loss, accuracy, **measures)     # means over the test set: the success criterion

The model always returns outputs at every time step, batch first; the task picks the steps it
scores (the last real step with :func:`last_step`, or all of them). Sequences in one batch may
differ in length: they are padded at the end and ``Batch.lengths`` gives the real lengths. A
unidirectional network's output at step ``lengths[b] - 1`` never sees the padding, so no packing
is needed.

Inputs are either float features ``(B, T, I)`` (``task.vocab_size is None``) or integer token ids
``(B, T)`` (``task.vocab_size = V``), in which case :class:`gatedrnn.models.SequenceModel` puts an
``nn.Embedding(V, embedding_dim)`` in front of the recurrent layer. ``task.input_size`` is I for
float inputs and V for token inputs.

Randomness: every draw goes through the ``torch.Generator`` passed in (CPU generator; tensors are
created on the CPU and moved by the training loop), never through global RNG state, so that a
seed fixes the data stream exactly, resuming from a checkpoint reproduces it, and each DDP rank
can draw its own stream.

Writing a task (checklist):

1. subclass :class:`Task`, set the class attributes ``name`` (the CLI's ``--task``) and
   ``reference`` (paper and section the definition follows; cite it in the docstring too);
2. take every size as a keyword-only argument of ``__init__`` with the published value as
   default, one of them ``seq_len`` (``def __init__(self, *, seq_len=100, ...)``; the CLI passes
   ``--seq-len`` there and ``--task-opt KEY=VALUE`` for the others, converted to the default's
   type); validate sizes with :func:`check_positive` and real-valued options (tolerances,
   thresholds) with :func:`check_number`; set ``seq_len``, ``input_size``,
   ``output_size``, ``vocab_size``;
3. implement :meth:`Task.sample`, :meth:`Task.loss` and :meth:`Task.correct` (or inherit them
   from :class:`LastStepRegression` / :class:`LastStepClassification`); override
   :meth:`Task.solved` when the criterion is not "every test sequence correct",
   :meth:`Task.measures` to report more per-sequence numbers (a language model: bits per
   character), and :meth:`Task.test_batches` when the test set is a fixed split rather than
   fresh draws;
4. decorate the class with ``@register`` (``from . import register``); ``tests/test_tasks.py``
   checks shapes and the published definition.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """One batch of sequences, batch first.

    Attributes:
        inputs: (B, T, I) float32 features, or (B, T) int64 token ids when the task has a vocabulary.
        targets: whatever the task's :meth:`Task.loss` reads, e.g. (B, O) float for a value read at
            the last step, (B,) int64 class ids, (B, T) int64 next-symbol ids.
        lengths: (B,) int64 real length of each sequence (padding follows), or None when every
            sequence has length T.
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Batch(self.inputs.to(device), self.targets.to(device), lengths)

    def __len__(self) -> int:
        return self.inputs.shape[0]


class Task(ABC):
    """A long-lag experiment: batch generator, loss and success criterion.

    Class attributes:
        name: registry key and CLI name (``--task NAME``).
        reference: where the definition comes from, e.g. ``"Hochreiter & Schmidhuber 1997, sec. 5.4"``.
        test_size: how many test sequences :meth:`solved` is judged on (the paper's test-set size
            where it gives one).

    Instance attributes (set by ``__init__``):
        seq_len: the sequence-length parameter T (its exact meaning is the task's, e.g. the minimum
            length for the 1997 adding problem).
        input_size: I, features per step (V for a token task).
        output_size: O, outputs per step of the network's linear head.
        vocab_size: V for token inputs (the model then embeds them), None for float inputs.
        baseline: the test loss of the best predictor without memory (e.g. 0.167 for the modern
            adding problem), None when not meaningful; printed beside results.
    """

    name: ClassVar[str]
    reference: ClassVar[str]
    test_size: ClassVar[int] = 2560

    seq_len: int
    input_size: int
    output_size: int
    vocab_size: int | None = None
    baseline: float | None = None

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        """Draw ``batch_size`` sequences using only ``generator``. ``split`` is ``"train"`` or
        ``"test"``; generated tasks draw both from the same distribution, data-set tasks draw
        from disjoint parts."""

    @abstractmethod
    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """The training objective: a scalar, the mean over the batch. ``output`` is (B, T, O)."""

    @abstractmethod
    def correct(self, output: Tensor, batch: Batch) -> Tensor:
        """(B,) bool: whether each sequence meets the task's per-sequence criterion."""

    def measures(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Extra per-sequence values, name -> (B,) float, averaged over the test set and passed to
        :meth:`solved` as keyword arguments (e.g. ``abs_error``). None by default."""
        return {}

    def solved(self, loss: float, accuracy: float, **measures: float) -> bool:
        """The task's success criterion, from the mean test ``loss``, the fraction of test
        sequences that are :meth:`correct` (``accuracy``) and the test means of :meth:`measures`.
        Default: every test sequence correct (the 1997 paper's rule)."""
        return accuracy == 1.0

    def test_batches(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        """The test set: ``test_size`` fresh sequences in batches of at most ``batch_size``."""
        remaining = self.test_size
        while remaining > 0:
            n = min(batch_size, remaining)
            yield self.sample(n, generator, split="test")
            remaining -= n

    def describe(self) -> dict[str, object]:
        """JSON-safe summary of the task and its sizes (written into the run's config)."""
        return {
            "name": self.name,
            "reference": self.reference,
            "seq_len": self.seq_len,
            "input_size": self.input_size,
            "output_size": self.output_size,
            "vocab_size": self.vocab_size,
            "test_size": self.test_size,
            "baseline": self.baseline,
        }


class LastStepRegression(Task):
    """A real-valued target read at each sequence's last real step: squared-error loss, and a
    sequence is correct when every output is within ``tolerance`` of its target (the 1997 rule).

    ``Batch.targets`` is (B, O) float32.
    """

    tolerance: float

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(last_step(output, batch.lengths), batch.targets)

    def correct(self, output: Tensor, batch: Batch) -> Tensor:
        return self._abs_error(output, batch).amax(-1) < self.tolerance

    def measures(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"abs_error": self._abs_error(output, batch).mean(-1)}

    @staticmethod
    def _abs_error(output: Tensor, batch: Batch) -> Tensor:
        return (last_step(output, batch.lengths) - batch.targets).abs()  # (B, O)


class LastStepClassification(Task):
    """A class read at each sequence's last real step: softmax cross-entropy. With ``tolerance``
    set, a sequence is correct when every softmax output is within ``tolerance`` of the one-hot
    target (the 1997 paper's "absolute error of all output units below ..."); with
    ``tolerance = None`` when the arg-max is the target class.

    ``Batch.targets`` is (B,) int64.
    """

    tolerance: float | None = None

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(last_step(output, batch.lengths), batch.targets)

    def correct(self, output: Tensor, batch: Batch) -> Tensor:
        logits = last_step(output, batch.lengths)  # (B, O)
        if self.tolerance is None:
            return logits.argmax(-1) == batch.targets
        return softmax_within(logits, batch.targets, self.tolerance)


def step_mask(lengths: Tensor | None, batch_size: int, steps: int) -> Tensor:
    """(B, T) bool, True at the real (non-padding) steps."""
    if lengths is None:
        return torch.ones(batch_size, steps, dtype=torch.bool)
    return torch.arange(steps, device=lengths.device) < lengths.view(-1, 1)


def check_positive(task: str, **sizes: int) -> None:
    """Raise ValueError naming the task and the size when a size is not a positive int."""
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"task {task!r}: {key} must be a positive integer, got {value!r}")


def check_number(
    task: str, key: str, value: object, *, high: float = math.inf, high_included: bool = True, zero_ok: bool = False
) -> float:
    """``value`` as a float when it is a finite real number in (0, high] ((0, high) when not
    ``high_included``; from 0 included with ``zero_ok``); otherwise ValueError naming the task,
    the option, the range and the value.

    For the real-valued options: a tolerance, a noise variance or a solved threshold that is
    negative, nan or infinite would train a task that can never (or always) count as solved.
    """
    if high == math.inf:
        expected = "a finite number >= 0" if zero_ok else "a positive finite number"
    else:
        expected = f"in {'[' if zero_ok else '('}0, {high:g}{']' if high_included else ')'}"
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    below_high = is_number and (value <= high if high_included else value < high)
    above_low = is_number and (value >= 0 if zero_ok else value > 0)
    if not (is_number and math.isfinite(value) and above_low and below_high):
        raise ValueError(f"task {task!r}: {key} must be {expected}, got {value!r}")
    return float(value)


def last_step(output: Tensor, lengths: Tensor | None) -> Tensor:
    """The output at each sequence's last real step: (B, T, O) -> (B, O)."""
    if lengths is None:
        return output[:, -1]
    index = (lengths - 1).to(output.device).view(-1, 1, 1).expand(-1, 1, output.shape[-1])
    return output.gather(1, index).squeeze(1)  # (B, O)


def softmax_within(logits: Tensor, targets: Tensor, tolerance: float) -> Tensor:
    """The 1997 rule for class outputs: whether every softmax output of ``logits`` (..., O) is
    within ``tolerance`` of the one-hot ``targets`` (...) ids; a bool tensor (...)."""
    target = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return (logits.softmax(-1) - target).abs().amax(-1) < tolerance


def one_hot(ids: Tensor, n: int, active: Tensor | None = None) -> Tensor:
    """Local (one-hot) float32 coding of integer ids: (...) -> (..., n); where ``active`` (bool or
    0/1, shaped as ``ids``) is 0, a row of zeros (padding). Written in one pass: a 1000-symbol
    alphabet over 1000 steps is a tensor of a million floats per sequence."""
    value = torch.ones((), dtype=torch.float32) if active is None else active.to(torch.float32).unsqueeze(-1)
    coded = torch.zeros(*ids.shape, n, dtype=torch.float32)
    return coded.scatter_(-1, ids.unsqueeze(-1), value.expand(*ids.shape, 1))


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    """float32 samples from U[low, high) drawn from ``generator``."""
    return torch.rand(shape, generator=generator) * (high - low) + low


def randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """int64 samples from {low, ..., high - 1} drawn from ``generator``."""
    return torch.randint(low, high, shape, generator=generator)
