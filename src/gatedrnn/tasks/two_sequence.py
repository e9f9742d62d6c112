"""Bengio et al.'s two-sequence problem with noise: Hochreiter & Schmidhuber 1997, section 5.3
(experiment 3, task 3a)."""

from __future__ import annotations

import torch

from . import register
from .base import Batch, LastStepRegression, check_number, check_positive, randint, step_mask


@register
class TwoSequence(LastStepRegression):
    """Task 3a of Hochreiter & Schmidhuber 1997, section 5.3 (after Bengio et al. 1994).

    One real input per step, (B, L, 1), L random in [T, T + T/10]. The first N elements are all
    1.0 (class 1) or all -1.0 (class 2); the rest are Gaussian noise with mean 0 and variance 0.2.
    Target at the last step: 1.0 for class 1, 0.0 for class 2 (B, 1); loss squared error. A
    sequence is correctly classified when the absolute error at its end is below 0.2. Solved is
    the paper's stopping criterion ST2 on 256 test sequences (the paper's test-set size): none
    misclassified and mean absolute error below 0.01. Always outputting 0.5 scores 0.25. Reported
    for T = 100, N = 3 (Table 4): ST1 after 27,380 and ST2 after 39,850 training sequences, a
    fraction 0.000195 misclassified on an additional test set of 2560 sequences. Tasks 3b (noise
    on the first N elements too) and 3c (targets 0.2 / 0.8 with target noise) are not built.
    """

    name = "two-sequence"
    reference = "Hochreiter & Schmidhuber 1997, sec. 5.3 (exp. 3, task 3a)"
    test_size = 256

    def __init__(
        self,
        *,
        seq_len: int = 100,
        info: int = 3,
        variance: float = 0.2,
        tolerance: float = 0.2,
        solved_error: float = 0.01,
    ) -> None:
        check_positive(self.name, seq_len=seq_len, info=info)
        if info > seq_len:
            raise ValueError(f"task 'two-sequence': info (N) must be at most seq_len={seq_len}, got {info}")
        self.seq_len, self.info = seq_len, info
        self.std = check_number(self.name, "variance", variance, zero_ok=True) ** 0.5  # 0: a noise-free control
        self.tolerance = check_number(self.name, "tolerance", tolerance)
        self.solved_error = check_number(self.name, "solved_error", solved_error)
        self.input_size, self.output_size = 1, 1
        self.baseline = 0.25

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        lengths = randint(self.seq_len, self.seq_len + self.seq_len // 10 + 1, (batch_size,), generator)
        steps = int(lengths.max())
        cls = torch.randint(2, (batch_size,), generator=generator).float()  # 1: class 1, 0: class 2
        x = torch.randn(batch_size, steps, generator=generator) * self.std
        x[:, : self.info] = (2.0 * cls - 1.0).view(-1, 1)
        x = x * step_mask(lengths, batch_size, steps)
        return Batch(x.unsqueeze(-1), cls.view(-1, 1), lengths)

    def solved(self, loss: float, accuracy: float, **measures: float) -> bool:
        return accuracy == 1.0 and measures["abs_error"] < self.solved_error
