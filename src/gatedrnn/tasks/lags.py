"""Noise-free long time lags: Hochreiter & Schmidhuber 1997, section 5.2 (experiment 2).

Symbols are coded locally (one-hot). Two tasks:

- ``lag-2a`` (task 2a): only two training sequences, (y, a_1, ..., a_{p-1}, y) and
  (x, a_1, ..., a_{p-1}, x); the net predicts the next symbol at every step, and the last
  prediction needs the first symbol, p steps back.
- ``lag-2c`` (task 2c): minimal lag q + 1 with p distractor symbols and no local regularities;
  only the last symbol is predicted.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import Batch, LastStepClassification, Task, check_number, check_positive, one_hot, softmax_within, step_mask


@register
class NoiseFreeLag2a(Task):
    """Task 2a of Hochreiter & Schmidhuber 1997, section 5.2.

    Symbols a_1..a_{p-1}, x = a_p, y = a_{p+1} (ids 0..p), so I = O = p + 1. Each sequence is
    (y, a_1, ..., a_{p-1}, y) or (x, a_1, ..., a_{p-1}, x) with probability 1/2; the network reads
    its first p symbols, (B, p, p + 1), and predicts the next symbol at every step (targets (B, p)
    ids; loss cross-entropy). A sequence is correct, as in the paper ("the maximal absolute error of
    all output units is always below 0.25"), when at every step every softmax output is within
    ``tolerance`` (default 0.25) of the one-hot next symbol; the test set is the two sequences.
    ``seq_len`` is p (default 100, the paper's longest); reported for p = 100 (Table 2): LSTM
    solved 100% of trials after 5,040 training sequences on average, where BPTT and RTRL never did.

    The loss (our choice; the sequences, targets and success criterion are the paper's): a weighted
    mean of the per-step cross-entropies in which the p - 1 deterministic predictions weigh 1 each
    and the last one, the only one that needs the first symbol, weighs ``last_weight`` (default
    None: p - 1, so the long-lag prediction counts as much as all the others together;
    ``last_weight=1`` gives the plain mean over the p steps). With the plain mean the
    deterministic steps carry (p - 1) / p of the error signal, and in the first 20 or 30 Adam
    updates they drive almost every cell state far into tanh's flat region ("internal state
    drift", Hochreiter & Schmidhuber 1997, sec. 4; at p = 100, hidden 32, lr 0.01: 97% of the
    cells at |c| > 3 after 30 updates, up to |c| = 31). The first symbol is still held in the cell
    states, but tanh(c) hides it from h, and the last step's gradient with respect to the first
    symbol's input weights falls to 1e-5 or less (about 1e-6 from update 200 on), so the last
    prediction stays at chance. With ``last_weight = p - 1`` the long-lag signal keeps some cells
    out of saturation (that gradient stayed between 8e-5 and 2e-2) and p = 100 is solved
    (REPRODUCTION.md, section 3; the quick table's row uses Adam lr 0.003, with which the forget-gate
    LSTM solved 10 of 10 seeds, against 4 of 6 at lr 0.01).
    """

    name = "lag-2a"
    reference = "Hochreiter & Schmidhuber 1997, sec. 5.2 (exp. 2, task 2a)"
    test_size = 2

    def __init__(self, *, seq_len: int = 100, last_weight: float | None = None, tolerance: float = 0.25) -> None:
        check_positive(self.name, seq_len=seq_len)
        if seq_len < 2:
            raise ValueError(f"task 'lag-2a': seq_len (p) must be at least 2, got {seq_len}")
        self.seq_len = seq_len
        self.tolerance = check_number(self.name, "tolerance", tolerance, high=1.0)
        self.last_weight = check_number(self.name, "last_weight", seq_len - 1 if last_weight is None else last_weight)
        self.input_size = self.output_size = seq_len + 1

    def _sequences(self, keys: Tensor) -> Batch:
        """keys (B,) in {p - 1 (x), p (y)} -> the batch of the corresponding sequences."""
        p = self.seq_len
        middle = torch.arange(p - 1).expand(len(keys), -1)  # a_1 .. a_{p-1} have ids 0 .. p-2
        ids = torch.cat([keys.view(-1, 1), middle, keys.view(-1, 1)], 1)  # (B, p + 1)
        return Batch(one_hot(ids[:, :-1], p + 1), ids[:, 1:])

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        keys = torch.randint(2, (batch_size,), generator=generator) + self.seq_len - 1
        return self._sequences(keys)

    def test_batches(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        yield self._sequences(torch.tensor([self.seq_len - 1, self.seq_len]))

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        steps = batch.targets.shape[1]
        per_step = F.cross_entropy(output.flatten(0, 1), batch.targets.flatten(), reduction="none")
        weights = torch.ones(steps, dtype=per_step.dtype, device=per_step.device)
        weights[-1] = self.last_weight
        return (per_step.view(-1, steps) * weights).sum(1).mean() / weights.sum()

    def correct(self, output: Tensor, batch: Batch) -> Tensor:
        return softmax_within(output, batch.targets, self.tolerance).all(1)  # (B,): at every step


@register
class NoiseFreeLag2c(LastStepClassification):
    """Task 2c of Hochreiter & Schmidhuber 1997, section 5.2: very long lags, no local regularities.

    Symbols: distractors a_1..a_p (ids 0..p-1), then e, b, x, y (ids p..p+3); I = p + 4, O = 2.
    A sequence is b, then x or y (the key), then q distractors, then further distractors each
    followed by another with probability 9/10 or by the trigger e with probability 1/10, then the
    key again: (b, key, a_{i_1}, ..., a_{i_{q+k}}, e, key), distractors uniform; the number k of
    extra distractors has P(k) = (1/10)(9/10)^k. Minimal length q + 4, mean q + 13 (the paper
    prints q + 14, though its own sum gives q + 13). The network reads everything up to and
    including e and must output the key (class 0 for x, 1 for y) there; only that step has an error signal.
    Correct: both outputs
    within 0.2 of the target ("prediction error of both output units always below 0.2"); the paper
    demands this for 10,000 successive sequences, which is the test set here. ``seq_len`` is q;
    ``distractors`` is p (default q). Reported: q = p = 100 after 31,000 training sequences,
    q = p = 1000 after 49,000.
    """

    name = "lag-2c"
    reference = "Hochreiter & Schmidhuber 1997, sec. 5.2 (exp. 2, task 2c)"
    test_size = 10_000

    def __init__(self, *, seq_len: int = 100, distractors: int | None = None, tolerance: float = 0.2) -> None:
        distractors = seq_len if distractors is None else distractors
        check_positive(self.name, seq_len=seq_len, distractors=distractors)
        self.seq_len, self.distractors = seq_len, distractors
        # the criterion compares softmax outputs with a one-hot target: errors lie in [0, 1]
        self.tolerance = check_number(self.name, "tolerance", tolerance, high=1.0)
        self.input_size, self.output_size = distractors + 4, 2

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        p, q = self.distractors, self.seq_len
        e, b, x = p, p + 1, p + 2
        # k extra distractors: P(k) = (1/10)(9/10)^k, drawn by inversion from our generator.
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        k = torch.floor(torch.log1p(-u) / torch.log1p(torch.tensor(-0.1, dtype=torch.float64))).long()
        lengths = q + k + 3  # b, key, q + k distractors, e
        steps = int(lengths.max())
        keys = torch.randint(2, (batch_size,), generator=generator)
        ids = torch.randint(p, (batch_size, steps), generator=generator)
        ids[:, 0] = b
        ids[:, 1] = x + keys
        ids[torch.arange(batch_size), lengths - 1] = e
        inputs = one_hot(ids, p + 4, step_mask(lengths, batch_size, steps))
        return Batch(inputs, keys, lengths)
