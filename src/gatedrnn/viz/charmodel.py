"""A character-level model as the viewer sees it: embedding -> gatedrnn recurrent stack -> linear
head, plus the vocabulary that maps text to ids.

:class:`CharModel` holds the three parts of a trained :class:`gatedrnn.models.SequenceModel`
(found by type, so the viewer follows the model whatever its attribute names) and offers what the
viewer and ``gatedrnn sample`` need:

- :meth:`CharModel.record`: the gates of every layer on a text (a :class:`GateRecord`);
- :meth:`CharModel.span`: the memory-span measurement on a text (a :class:`SpanResult`);
- :meth:`CharModel.sample`: text generated after a prompt, one character at a time, carrying the
  recurrent state (so each new character costs one step, not a rerun of the prefix).

Shapes: T characters, D embedding size, H units, V vocabulary size (id 0 = unknown character).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..backends.reference import layer_step, recurrent_weights
from ..config import Noise
from ..inspect import inspect_gates
from ..nn import Recurrent
from ..tasks.charlm import decode, encode
from .page import GateRecord
from .span import WINDOW, SpanResult, influence, mean_distance, span_result


def check_sample_options(length: int, temperature: float, prefix: str = "") -> None:
    """ValueError unless ``length`` >= 0 and ``temperature`` is a finite number >= 0 (nan or inf
    would make the softmax nan); ``prefix`` ("--") names them as command-line options."""
    if length < 0:
        raise ValueError(f"{prefix}length must be >= 0, got {length}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(
            f"{prefix}temperature must be a finite number >= 0 (0 takes the most likely character), got {temperature}"
        )


def _only(model: nn.Module, kind: type, what: str) -> nn.Module:
    found = [m for m in model.modules() if isinstance(m, kind)]
    if len(found) != 1:
        raise ValueError(
            f"expected a character model with exactly one {what}, found {len(found)} in {type(model).__name__}"
        )
    return found[0]


def recurrent_step(rnn: Recurrent) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor, dict[tuple[str, int], slice]]:
    """The stack's one-step map on one flat state vector, z_t = step(x_t, z_{t-1}), for
    :func:`gatedrnn.viz.span.influence`, in evaluation mode (no dropout; zoneout as its
    expectation, as the module's forward in ``eval()``), for any cell family.

    z is the concatenation over layers of what the time loop carries (the family's
    :meth:`~gatedrnn.CellFamily.initial_carry`: LSTM h (R), c (H), for ``fgr`` also the previous i,
    f, o (3H); sLSTM h, c, n, m (H each); GRU, RNN, minGRU and minLSTM h (H)) and, for a family
    whose carried h is not H wide (an LSTM with a projection), the layer's recorded h (H): an output
    of the step that it does not read back, so that h means what :func:`gatedrnn.inspect_gates`
    records as ``"h"``.

    Returns ``step`` ((D,), (S,) -> (S,)), the initial state z_0 (zeros, S) and the rows of each
    layer's states: ``groups[(name, layer)]`` for each name of the family's ``states`` (LSTM h, c;
    sLSTM h, c, n, m; GRU, RNN and the minimal cells h).
    """
    if rnn.bidirectional or rnn.training:
        raise ValueError("recurrent_step: expected a unidirectional module in eval() mode")
    cfg = rnn.cell_config
    weights = [rnn.layer_weights(k, 0) for k in range(rnn.num_layers)]
    noise = Noise(zoneout=rnn.zoneout) if rnn.zoneout > 0 else None
    carry_sizes, sizes, groups = _state_layout(rnn)
    output = cfg.states[0]

    def step(x_t: Tensor, z: Tensor) -> Tensor:
        parts, out, layer_input = z.unsqueeze(0).split(sizes * rnn.num_layers, dim=-1), [], x_t.unsqueeze(0)
        for k, w in enumerate(weights):
            carry = parts[k * len(sizes) : k * len(sizes) + len(carry_sizes)]
            new, gates = layer_step(cfg, cfg.input_projection(layer_input, w), carry, recurrent_weights(w), noise)
            out += list(new) + ([cfg.record(gates, new)[output]] if len(sizes) > len(carry_sizes) else [])
            layer_input = new[0]
        return torch.cat(out, dim=-1).squeeze(0)

    return step, next(rnn.parameters()).new_zeros(rnn.num_layers * sum(sizes)), groups


def _state_layout(rnn: Recurrent) -> tuple[list[int], list[int], dict[tuple[str, int], slice]]:
    """The layout of :func:`recurrent_step`'s flat state: the sizes of what one layer's loop
    carries, of one layer's part of z (the carry, then the recorded h when the carried h is not H
    wide), and the rows ``groups[(name, layer)]`` of each layer's states (the family's ``states``)."""
    cfg = rnn.cell_config
    carry_sizes = [t.shape[-1] for t in cfg.initial_carry(tuple(torch.zeros(1, n) for n in cfg.state_sizes))]
    projected = cfg.state_sizes[0] != cfg.hidden_size
    sizes = carry_sizes + ([cfg.hidden_size] if projected else [])
    starts = np.cumsum([0] + sizes)  # where each part begins in a layer's part of z
    groups = {}
    for k in range(rnn.num_layers):
        base = k * sum(sizes)
        for i, name in enumerate(cfg.states):
            at = len(carry_sizes) if i == 0 and projected else i  # the recorded h, not the projected one
            groups[(name, k)] = slice(base + int(starts[at]), base + int(starts[at]) + sizes[at])
    return carry_sizes, sizes, groups


@dataclass
class CharModel:
    """The parts of a character-level model (see the module docstring).

    Attributes:
        embedding: ``nn.Embedding(V, D)``.
        rnn: the :class:`gatedrnn.Recurrent` stack of any cell family (unidirectional).
        head: ``nn.Linear(H, V)`` from the top layer's output to next-character logits.
        vocab: the characters of ids 1..V-1.
        name: shown in titles and tables, e.g. ``"LSTM"`` (default: the family's
            :meth:`~gatedrnn.CellFamily.title`, ``"sLSTM"``, ``"minGRU"``, ...).
    """

    embedding: nn.Embedding
    rnn: Recurrent
    head: nn.Linear
    vocab: str
    name: str

    @classmethod
    def from_module(cls, model: nn.Module, vocab: str, name: str | None = None) -> CharModel:
        """Take the embedding, recurrent stack and head out of ``model`` (e.g. a SequenceModel)."""
        parts = cls(
            _only(model, nn.Embedding, "nn.Embedding"),
            _only(model, Recurrent, "gatedrnn recurrent stack (LSTM, GRU, RNN or Recurrent)"),
            _only(model, nn.Linear, "nn.Linear head"),
            vocab,
            "",
        )
        if parts.rnn.bidirectional:
            raise ValueError(
                "a character model predicts the next character: expected a unidirectional stack, got bidirectional=True"
            )
        if parts.embedding.num_embeddings != len(vocab) + 1:
            raise ValueError(
                f"the embedding has {parts.embedding.num_embeddings} rows but the vocabulary "
                f"has {len(vocab)} characters + 1 unknown"
            )
        parts.name = name or parts.rnn.cell_config.title()
        return parts

    @property
    def cell(self) -> str:
        """The name of the stack's cell family (``"lstm"``, ``"slstm"``, ``"mingru"``, ... or a user's)."""
        return self.rnn.cell_config.name

    def encode(self, text: str) -> tuple[Tensor, list[int]]:
        """Ids (T,) and the positions of characters outside the vocabulary (read as unknown)."""
        if not text:
            raise ValueError("the text is empty: give at least one character")
        return encode(text, self.vocab)

    def _time_major(self, x: Tensor) -> Tensor:
        """(T, D) -> the (T, 1, D) or (1, T, D) layout the stack expects."""
        return x.unsqueeze(0) if self.rnn.batch_first else x.unsqueeze(1)

    @torch.no_grad()
    def record(self, text: str) -> GateRecord:
        """Every layer's gates on ``text`` (batch of one), as the page and gates.png need them."""
        ids, unknown = self.encode(text)
        trace = inspect_gates(self.rnn.eval(), self._time_major(self.embedding(ids)))
        layers = [
            {k: v[:, 0].float().numpy() for k, v in trace.gates[(layer, 0)].items()}
            for layer in range(self.rnn.num_layers)
        ]
        return GateRecord(
            text=text,
            cell=self.cell,
            layers=layers,
            unknown=unknown,
            title=f"{self.name}: gates on {len(text)} characters",
            names=trace.names,
            cell_config=self.rnn.cell_config,
        )

    @property
    def memory(self) -> tuple[str, ...]:
        """The states whose memory span is measured: the output h and the family's
        ``memory_state`` where it declares one (LSTM and sLSTM ``("h", "c")``: not the sLSTM's
        normaliser n and stabiliser m, which only scale c), else every state (GRU, RNN, minGRU and
        minLSTM ``("h",)``; a user's family all of its own)."""
        family = self.rnn.cell_config
        if family.memory_state is None:
            return tuple(family.states)
        return tuple(dict.fromkeys((family.states[0], family.memory_state)))

    def span(self, text: str, window: int = WINDOW) -> tuple[list[SpanResult], dict[str, list[np.ndarray]]]:
        """The memory span on ``text`` (see :mod:`gatedrnn.viz.span`): the influence of each
        character's embedding x_s on the states h_t (and the family's memory state, the LSTM's and
        sLSTM's cell states c_t; :attr:`memory`) for the distances t - s < ``window``, exactly, in
        float64, through the cells' step functions (the reference backend's math;
        :func:`recurrent_step`). The Jacobians run through every state the cell carries (the sLSTM's
        n and m too), so what a unit keeps is what the family's retention says it keeps per step
        (:meth:`gatedrnn.CellFamily.retention`: the LSTM's f, the GRU's z, the sLSTM's effective
        f' after stabilisation, the minGRU's 1 - z, the minLSTM's normalised f'), compounded over
        the steps, plus what flows through the recurrent weights.

        Returns the top layer's :class:`SpanResult` per state in :attr:`memory` (label ``"LSTM"``
        for h, ``"LSTM c"`` for c) and, per state name, every layer's per-unit influence-weighted
        mean distance (H,) (the page's "memory span" orders).
        """
        ids, _ = self.encode(text)
        rnn = copy.deepcopy(self.rnn).eval().to(torch.float64)
        step, z0, groups = recurrent_step(rnn)
        with torch.no_grad():
            x = self.embedding(ids).to(torch.float64)
        top = rnn.num_layers - 1
        measured = influence(
            step,
            x,
            z0,
            {g: rows for g, rows in groups.items() if g[0] in self.memory},
            window,
            totals=[(name, top) for name in self.memory],
            progress=f"memory span ({self.name})",
        )
        results = [
            span_result(
                self.name if name == self.memory[0] else f"{self.name} {name}",
                text,
                measured.band[(name, top)],
                measured.unit_sum[(name, top)],
                quantity=name,
            )
            for name in self.memory
        ]
        distances = {
            name: [mean_distance(measured.unit_curve((name, k))) for k in range(rnn.num_layers)] for name in self.memory
        }
        return results, distances

    def span_work(self, length: int, window: int = WINDOW) -> int:
        """Multiply-adds of the memory span's matrix products (its main cost) on a text of
        ``length`` characters: D S^2 sum_t min(t, W - 1), S the numbers of the stack's state."""
        S = self.rnn.num_layers * sum(_state_layout(self.rnn)[1])
        steps = int(np.minimum(np.arange(length), window - 1).sum())  # earlier inputs carried per step
        return self.embedding.embedding_dim * S * S * steps

    @torch.no_grad()
    def sample(self, prompt: str, length: int, temperature: float, generator: torch.Generator) -> str:
        """``length`` characters drawn after ``prompt`` from softmax(logits / temperature);
        temperature 0 takes the most likely character each time."""
        check_sample_options(length, temperature)
        ids, _ = self.encode(prompt)
        self.rnn.eval()
        out, state = self.rnn(self._time_major(self.embedding(ids)))
        logits = self.head(out[0, -1] if self.rnn.batch_first else out[-1, 0])  # (V,)
        drawn = []
        for _ in range(length):
            if temperature == 0:
                nxt = int(logits[1:].argmax()) + 1
            else:
                # never draw the unknown symbol: it stands for characters the corpus lacks. In
                # float64, less the maximum, a tiny temperature scales the others to -inf, not nan
                known = logits[1:].double()
                probs = torch.softmax((known - known.max()) / temperature, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=generator)) + 1
            drawn.append(nxt)
            out, state = self.rnn(self._time_major(self.embedding(torch.tensor([nxt]))), state)
            logits = self.head(out.reshape(-1, out.shape[-1])[-1])
        return decode(drawn, self.vocab)

    @torch.no_grad()
    def bits_per_char(self, text: str) -> float:
        """Bits per character of ``text`` under the model (each character predicted from those
        before it; the first is not scored)."""
        ids, _ = self.encode(text)
        if len(ids) < 2:
            raise ValueError("need at least two characters to score a prediction")
        out = self.rnn.eval()(self._time_major(self.embedding(ids[:-1])))[0]
        logits = self.head(out.reshape(-1, out.shape[-1]))  # (T-1, V)
        nats = torch.nn.functional.cross_entropy(logits, ids[1:])
        return float(nats) / float(np.log(2.0))
