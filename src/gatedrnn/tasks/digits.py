"""Sequential digits: classify an 8x8 handwritten digit read one pixel per step.

The small-scale analogue of sequential and permuted MNIST (Le, Jaitly & Hinton 2015, sec. 4.2),
on the 1797 images scikit-learn ships (UCI optical digits; file and licence in
``gatedrnn/data/DIGITS.md``). The permuted form reads the pixels in a fixed random order, which
spreads strokes over the whole sequence and lengthens the dependencies.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources

import torch
from torch import Tensor

from . import register
from .base import Batch, LastStepClassification, check_number, check_positive

PIXELS = 64
TEST_IMAGES = 297
"""The last 297 images (about one sixth) are the test split; the first 1500 are for training."""


@lru_cache(maxsize=1)
def load_digits() -> tuple[Tensor, Tensor]:
    """The shipped digits: images (1797, 64) float32 scaled to [0, 1] and labels (1797,) int64."""
    raw = (resources.files("gatedrnn") / "data" / "digits.csv.gz").read_bytes()
    rows = [list(map(int, line.split(","))) for line in gzip.decompress(raw).decode().split()]
    table = torch.tensor(rows)
    return table[:, :PIXELS].float() / 16.0, table[:, PIXELS]


@register
class SequentialDigits(LastStepClassification):
    """8x8 digits read pixel by pixel in row-major order: (B, 64, 1) inputs, 10 classes at the last
    step (B,), cross-entropy; correct when the arg-max is the label. Test set: the fixed last 297
    images. Solved: test accuracy at least ``solved_accuracy`` (default 0.9). ``seq_len`` must be
    64 (it is fixed by the images; accepted so that every task takes it)."""

    name = "digits"
    reference = "Le, Jaitly & Hinton 2015, sec. 4.2 (pixel MNIST), on UCI 8x8 digits"
    test_size = TEST_IMAGES
    permutation_seed: int | None = None

    def __init__(self, *, seq_len: int = PIXELS, solved_accuracy: float = 0.9) -> None:
        check_positive(self.name, seq_len=seq_len)
        if seq_len != PIXELS:
            raise ValueError(f"task {self.name!r}: seq_len is fixed at {PIXELS} pixels, got {seq_len}")
        self.seq_len = seq_len
        self.solved_accuracy = check_number(self.name, "solved_accuracy", solved_accuracy, high=1.0)
        self.input_size, self.output_size = 1, 10
        images, labels = load_digits()
        if self.permutation_seed is not None:
            order = torch.randperm(PIXELS, generator=torch.Generator().manual_seed(self.permutation_seed))
            images = images[:, order]
        self.splits = {
            "train": (images[:-TEST_IMAGES], labels[:-TEST_IMAGES]),
            "test": (images[-TEST_IMAGES:], labels[-TEST_IMAGES:]),
        }

    def _batch(self, split: str, index: Tensor) -> Batch:
        images, labels = self.splits[split]
        return Batch(images[index].unsqueeze(-1), labels[index])

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self._batch(split, torch.randint(len(self.splits[split][1]), (batch_size,), generator=generator))

    def test_batches(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        """Every test image once, in order (``generator`` is not used)."""
        for index in torch.arange(TEST_IMAGES).split(batch_size):
            yield self._batch("test", index)

    def solved(self, loss: float, accuracy: float, **measures: float) -> bool:
        return accuracy >= self.solved_accuracy


@register
class PermutedDigits(SequentialDigits):
    """:class:`SequentialDigits` with the 64 pixels in one fixed random order (seed 0 of
    ``torch.randperm``), the same for every image and every run."""

    name = "digits-permuted"
    reference = "Le, Jaitly & Hinton 2015, sec. 4.2 (permuted pixel MNIST), on UCI 8x8 digits"
    permutation_seed = 0
