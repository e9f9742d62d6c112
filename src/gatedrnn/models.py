"""The network the experiments train: an optional embedding, a gatedrnn recurrent layer and a
linear head applied at every step.

Shape legend: B batch, T steps, I input features, V vocabulary size, E embedding size,
H hidden units, O outputs per step.

    tokens (B, T) --Embedding(V, E)--> (B, T, E) --+
    features (B, T, I) ----------------------------+--> LSTM/GRU/RNN --> (B, T, H) --Linear--> (B, T, O)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .nn import GRU, LSTM, RNN

CELLS: dict[str, type[nn.Module]] = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`SequenceModel` (stored in checkpoints as JSON).

    Attributes:
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
        input_size: I for float inputs; ignored (the embedding's width is used) with ``vocab_size``.
        output_size: O, outputs per step.
        hidden_size: H.
        num_layers: stacked recurrent layers.
        variant: LSTM variant (``gatedrnn.LSTM_VARIANTS``); must be ``"vanilla"`` for GRU and RNN.
        forget_bias: LSTM forget-gate bias at initialisation (None: the layer's default).
        input_bias: LSTM input-gate bias at initialisation (None: the layer's default); like
            ``forget_bias`` it is put in ``bias_ih`` with the ``bias_hh`` rows zeroed. A negative
            value keeps the cells from absorbing every input at first, the 1997 paper's remedy for
            "internal state drift" (Hochreiter & Schmidhuber 1997, sec. 4).
        vocab_size: V when the inputs are token ids; the model then embeds them.
        embedding_dim: E, the embedding width (used only with ``vocab_size``).
    """

    cell: str
    input_size: int
    output_size: int
    hidden_size: int = 64
    num_layers: int = 1
    variant: str = "vanilla"
    forget_bias: float | None = None
    input_bias: float | None = None
    vocab_size: int | None = None
    embedding_dim: int = 64

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SequenceModel(nn.Module):
    """Recurrent layer + linear head, batch first; see the module docstring for the shapes.

    ``forward(inputs, hx=None)`` returns ``(output, state)``: the head's output at every step,
    (B, T, O), and the recurrent layer's final state (``(h, c)`` for LSTM, ``h`` otherwise), which
    can be fed back as ``hx`` to continue a sequence (sampling, the gate viewer).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.cell not in CELLS:
            raise ValueError(f"unknown cell {config.cell!r}; expected one of {', '.join(CELLS)}")
        self.config = config
        options: dict[str, object] = {}
        if config.cell == "lstm":
            options = {"variant": config.variant, "forget_bias": config.forget_bias}
        elif config.variant != "vanilla" or config.forget_bias is not None or config.input_bias is not None:
            raise ValueError(f"variant, forget_bias and input_bias apply to the LSTM only; got cell={config.cell!r}, "
                             f"variant={config.variant!r}, forget_bias={config.forget_bias!r}, "
                             f"input_bias={config.input_bias!r}")
        if config.vocab_size is not None:
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
            features = config.embedding_dim
        else:
            self.embedding = None
            features = config.input_size
        self.rnn = CELLS[config.cell](features, config.hidden_size, config.num_layers,
                                      batch_first=True, **options)
        self.head = nn.Linear(config.hidden_size, config.output_size)
        if config.input_bias is not None:
            _set_gate_bias(self.rnn, "i", config.input_bias)

    def forward(self, inputs: Tensor, hx=None):
        x = self.embedding(inputs) if self.embedding is not None else inputs  # (B, T, I or E)
        hidden, state = self.rnn(x, hx)  # (B, T, H)
        return self.head(hidden), state  # (B, T, O)


def _set_gate_bias(rnn: nn.Module, gate: str, value: float) -> None:
    """Set gate ``gate``'s rows of every ``bias_ih_*`` to ``value`` and of every ``bias_hh_*`` to 0."""
    gates = rnn.cell_config.gates  # the gates with their own rows, in row order
    if gate not in gates:
        raise ValueError(f"LSTM variant {rnn.cell_config.variant!r} has no {gate!r} gate to set the bias of")
    rows = slice(gates.index(gate) * rnn.hidden_size, (gates.index(gate) + 1) * rnn.hidden_size)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith(("bias_ih", "bias_hh")):
                param[rows] = value if name.startswith("bias_ih") else 0.0


def model_for_task(task, cell: str, hidden_size: int = 64, num_layers: int = 1, variant: str = "vanilla",
                   forget_bias: float | None = None, embedding_dim: int = 64,
                   input_bias: float | None = None) -> SequenceModel:
    """The model for ``task`` (a :class:`gatedrnn.tasks.Task`): its input, output and vocabulary sizes."""
    return SequenceModel(ModelConfig(cell=cell, input_size=task.input_size, output_size=task.output_size,
                                     hidden_size=hidden_size, num_layers=num_layers, variant=variant,
                                     forget_bias=forget_bias, input_bias=input_bias, vocab_size=task.vocab_size,
                                     embedding_dim=embedding_dim))
