"""Character-level language modelling on public-domain English prose.

The network reads a window of characters and predicts, at every step, the next one; the score is
bits per character (bpc), the mean of -log2 p(next character) over the predicted characters:

.. math::
    \\mathrm{bpc} = -\\frac{1}{N} \\sum_{t} \\log_2 p(c_{t+1} \\mid c_1, \\dots, c_t)
    = \\frac{\\mathcal{L}_{CE}}{\\ln 2}.

This is the setting of Karpathy, Johnson & Fei-Fei 2015 ("Visualizing and Understanding
Recurrent Networks", sec. 4), whose cell-level plots the gate viewer (:mod:`gatedrnn.viz`)
follows. The corpus is Jane Austen's *Pride and Prejudice* and *Persuasion* (public domain,
shipped in ``gatedrnn/data/``; source and licence in ``gatedrnn/data/SOURCES.md``). Each novel's
last ``valid_fraction`` is the validation split, so the two splits never share text.

Vocabulary: id 0 is the unknown symbol (any character the corpus lacks), then the corpus
characters in code-point order. :func:`encode` reports where unknown characters were, so callers
can show them rather than drop them.

Shapes: B batch, T = ``seq_len`` characters per window, V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import Batch, Task, check_number, check_positive

CORPUS_FILES = ("prideprejudice.txt", "persuasion.txt")
UNKNOWN = "\ufffd"
"""How the unknown symbol (id 0) is written when ids are decoded."""


@lru_cache(maxsize=1)
def corpus_texts() -> tuple[str, ...]:
    """The shipped novels, one string each (read once per process)."""
    data = resources.files("gatedrnn") / "data"
    return tuple(data.joinpath(name).read_text(encoding="ascii") for name in CORPUS_FILES)


def corpus_vocab() -> str:
    """The corpus characters in code-point order (ids 1..V-1; id 0 is the unknown symbol)."""
    return "".join(sorted(set("".join(corpus_texts()))))


def encode(text: str, vocab: str) -> tuple[Tensor, list[int]]:
    """Character ids (T,) int64 of ``text`` under ``vocab`` and the positions mapped to unknown (0)."""
    index = {c: k + 1 for k, c in enumerate(vocab)}
    ids = [index.get(c, 0) for c in text]
    return torch.tensor(ids, dtype=torch.int64), [t for t, k in enumerate(ids) if k == 0]


def decode(ids: Tensor | list[int], vocab: str) -> str:
    """The text of ids (any shape flattened); id 0 becomes :data:`UNKNOWN`."""
    alphabet = UNKNOWN + vocab
    return "".join(alphabet[int(k)] for k in torch.as_tensor(ids).flatten())


def unigram_loss(train: Tensor, test: Tensor, vocab_size: int) -> float:
    """Cross-entropy in nats per character of ``test`` ids under the character frequencies of
    ``train`` (add-one smoothed): the best a model without memory can do, the task's baseline."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return float(-log_p[test].mean())


def bits_per_char(nats: float) -> float:
    """Cross-entropy in nats per character -> bits per character."""
    return nats / math.log(2.0)


@register
class CharLM(Task):
    """Next-character prediction on the shipped Austen corpus (see the module docstring).

    Args:
        seq_len: characters per training window (the network predicts each one's successor).
        valid_fraction: the last fraction of each novel held out for validation.
        target_bpc: validation bits per character counted as solved; a sequence is
            :meth:`correct` when its own bpc is at most this. The default, 1.5, is about what a
            one-layer LSTM of a few hundred units reaches after an hour of CPU training, so a run of
            a few minutes trains for all its ``--steps``.

    ``baseline`` is the unigram cross-entropy (about 4.4 bits per character here), the loss of a
    predictor without memory.
    """

    name: ClassVar[str] = "charlm"
    reference: ClassVar[str] = (
        "Karpathy, Johnson & Fei-Fei 2015, Visualizing and Understanding Recurrent Networks, sec. 4"
    )
    test_size: ClassVar[int] = 512

    def __init__(self, *, seq_len: int = 128, valid_fraction: float = 0.1, target_bpc: float = 1.5):
        check_positive(self.name, seq_len=seq_len)
        self.seq_len = seq_len
        self.valid_fraction = check_number(self.name, "valid_fraction", valid_fraction, high=0.5, high_included=False)
        self.target_bpc = check_number(self.name, "target_bpc", target_bpc)
        self.vocab = corpus_vocab()
        self.vocab_size = self.input_size = self.output_size = len(self.vocab) + 1
        cuts = [int(len(t) * (1.0 - valid_fraction)) for t in corpus_texts()]
        self.splits = {
            "train": encode("\n\n".join(t[:c] for t, c in zip(corpus_texts(), cuts)), self.vocab)[0],
            "test": encode("\n\n".join(t[c:] for t, c in zip(corpus_texts(), cuts)), self.vocab)[0],
        }
        self.baseline = unigram_loss(self.splits["train"], self.splits["test"], self.vocab_size)
        if len(self.splits["test"]) <= seq_len + 1:
            raise ValueError(
                f"task 'charlm': seq_len={seq_len} is longer than the validation text "
                f"({len(self.splits['test'])} characters)"
            )

    def _windows(self, split: str, starts: Tensor) -> Batch:
        ids = self.splits[split]
        idx = starts.view(-1, 1) + torch.arange(self.seq_len + 1).view(1, -1)  # (B, T+1)
        chunk = ids[idx]
        return Batch(inputs=chunk[:, :-1], targets=chunk[:, 1:])

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        """Windows at uniformly random offsets of ``split``: inputs and targets (B, T) int64,
        targets[:, t] = inputs[:, t + 1] within the text."""
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        high = len(self.splits[split]) - self.seq_len - 1
        return self._windows(split, torch.randint(0, high + 1, (batch_size,), generator=generator))

    def test_batches(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        """The fixed validation set: ``test_size`` windows evenly spaced over the held-out text
        (the same every time; ``generator`` is not used)."""
        high = len(self.splits["test"]) - self.seq_len - 1
        starts = torch.linspace(0, high, self.test_size).round().to(torch.int64)
        for chunk in starts.split(batch_size):
            yield self._windows("test", chunk)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Mean cross-entropy in nats per character over every step; ``output`` (B, T, V) logits."""
        return F.cross_entropy(output.flatten(0, 1), batch.targets.flatten())

    def measures(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        """``bpc``: (B,) each sequence's bits per character."""
        nats = F.cross_entropy(output.transpose(1, 2), batch.targets, reduction="none").mean(1)  # (B,)
        return {"bpc": nats / math.log(2.0)}

    def correct(self, output: Tensor, batch: Batch) -> Tensor:
        """(B,) bool: the sequence's own bits per character is at most ``target_bpc``."""
        return self.measures(output, batch)["bpc"] <= self.target_bpc

    def solved(self, loss: float, accuracy: float, **measures: float) -> bool:
        """Validation bits per character (``loss`` is in nats) at most ``target_bpc``."""
        return bits_per_char(loss) <= self.target_bpc

    def describe(self) -> dict[str, object]:
        """The base summary plus the vocabulary, so a saved model can encode text without the task."""
        return {
            **super().describe(),
            "vocab": self.vocab,
            "valid_fraction": self.valid_fraction,
            "target_bpc": self.target_bpc,
            "corpus": list(CORPUS_FILES),
        }
