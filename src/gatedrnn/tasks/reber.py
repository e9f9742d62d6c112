"""The embedded Reber grammar: Hochreiter & Schmidhuber 1997, section 5.1 (experiment 1).

The Reber grammar (Reber 1967; Cleeremans, Servan-Schreiber & McClelland 1989) is a small
automaton over the 7 symbols B, T, P, S, X, V, E; each transition is taken with equal
probability. The *embedded* grammar wraps a Reber string as

    B  (T | P)  <Reber string>  (T | P, the same as the second symbol)  E

so the second-to-last symbol must repeat the second one across the whole inner string.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import Batch, Task, check_positive, one_hot, step_mask

SYMBOLS = "BTPSXVE"
_ID = {c: k for k, c in enumerate(SYMBOLS)}

# Reber automaton: state -> [(symbol, next state)]; state 6 emits the final E.
_REBER = {
    0: [("T", 1), ("P", 2)],
    1: [("S", 1), ("X", 3)],
    2: [("T", 2), ("V", 4)],
    3: [("X", 2), ("S", 5)],
    4: [("P", 3), ("V", 5)],
}


def _choice(options: list, generator: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def embedded_reber(generator: torch.Generator) -> tuple[str, list[str]]:
    """One embedded Reber string and, for each position t < len - 1, the set of symbols the
    grammar allows at position t + 1 (what a perfect predictor may predict)."""
    outer = _choice(["T", "P"], generator)
    string, legal = ["B", outer, "B"], ["TP", "B"]
    state = 0
    while state != 5:
        options = _REBER[state]
        legal.append("".join(sym for sym, _ in options))
        symbol, state = _choice(options, generator)
        string.append(symbol)
    legal += ["E", outer, "E"]  # after the inner string's last symbol: E; then the outer letter; then E
    string += ["E", outer, "E"]
    return "".join(string), legal


@register
class EmbeddedReber(Task):
    """Next-symbol prediction on embedded Reber strings (Hochreiter & Schmidhuber 1997, sec. 5.1).

    Input (B, L, 7): the one-hot symbols of each string but the last (L = longest string - 1).
    Targets (B, L, 1 + 7) int64: ``[..., 0]`` the next symbol's id (-100 at padding), ``[..., 1:]``
    the mask of the symbols the grammar allows next. Loss: cross-entropy of the next symbol. A
    string is correct when at every step the outputs of the allowed symbols are the most active
    ones (the paper: "the output unit(s) corresponding to the possible next symbol(s) is (are)
    always the most active ones"). Test set: 256 fresh strings.
    Reported: 100% of LSTM trials solved, after 8,440 training strings on average (best row of
    the paper's Table 1). ``seq_len`` is not a length but an upper bound: strings longer than it
    are redrawn (the default, 1000, never binds).
    """

    name = "reber"
    reference = "Hochreiter & Schmidhuber 1997, sec. 5.1 (exp. 1)"
    test_size = 256

    def __init__(self, *, seq_len: int = 1000) -> None:
        check_positive(self.name, seq_len=seq_len)
        if seq_len < 9:
            raise ValueError(
                f"task 'reber': seq_len must be at least 9 (the shortest embedded Reber "
                f"string, BTBTXSETE), got {seq_len}"
            )
        self.seq_len = seq_len
        self.input_size = self.output_size = len(SYMBOLS)

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        strings = []
        while len(strings) < batch_size:
            string, legal = embedded_reber(generator)
            if len(string) <= self.seq_len:
                strings.append((string, legal))
        steps = max(len(s) for s, _ in strings) - 1
        ids = torch.full((batch_size, steps + 1), -100, dtype=torch.int64)
        mask = torch.zeros(batch_size, steps, len(SYMBOLS), dtype=torch.bool)  # legal next symbols
        for b, (string, legal) in enumerate(strings):
            ids[b, : len(string)] = torch.tensor([_ID[c] for c in string])
            for t, allowed in enumerate(legal):
                mask[b, t, [_ID[c] for c in allowed]] = True
        lengths = torch.tensor([len(s) - 1 for s, _ in strings])
        inputs = one_hot(ids[:, :-1].clamp(min=0), len(SYMBOLS), step_mask(lengths, batch_size, steps))
        # targets: (B, L, 1 + 7): the next symbol's id, then the legal-next-symbol mask.
        targets = torch.cat([ids[:, 1:].unsqueeze(-1), mask.long()], -1)
        return Batch(inputs, targets, lengths)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.targets[..., 0].flatten(), ignore_index=-100)

    def correct(self, output: Tensor, batch: Batch) -> Tensor:
        legal = batch.targets[..., 1:].bool()  # (B, L, 7)
        lowest_legal = output.masked_fill(~legal, float("inf")).amin(-1)  # (B, L)
        highest_illegal = output.masked_fill(legal, float("-inf")).amax(-1)
        ok = lowest_legal > highest_illegal
        ok |= ~step_mask(batch.lengths, *ok.shape).to(ok.device)
        return ok.all(1)
