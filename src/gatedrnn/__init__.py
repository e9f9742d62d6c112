"""gatedrnn: gated recurrent networks (LSTM, GRU, RNN and the classic LSTM variants).

Public API at a glance:

- layers and cells, drop-in for torch.nn: :class:`LSTM`, :class:`GRU`, :class:`RNN`,
  :class:`LSTMCell`, :class:`GRUCell`, :class:`RNNCell`;
- gate inspection: :func:`inspect_gates` -> :class:`GateTrace`;
- what a layer computes: :class:`CellConfig`, :data:`LSTM_VARIANTS`; the backends: :data:`BACKENDS`.
"""

from .backends import BACKENDS
from .config import LSTM_VARIANTS, CellConfig
from .inspect import GateTrace, inspect_gates
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CellConfig",
    "GRU",
    "GRUCell",
    "GateTrace",
    "LSTM",
    "LSTMCell",
    "LSTM_VARIANTS",
    "RNN",
    "RNNCell",
    "inspect_gates",
]
