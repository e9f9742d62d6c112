"""gatedrnn: gated recurrent networks (LSTM, GRU, RNN, the classic LSTM variants and your own cells).

Public API at a glance:

- layers and cells, drop-in for torch.nn: :class:`LSTM`, :class:`GRU`, :class:`RNN`,
  :class:`LSTMCell`, :class:`GRUCell`, :class:`RNNCell`;
- the xLSTM and minimal recurrent layers: :class:`SLSTM`, :class:`MinGRU`, :class:`MinLSTM`;
- any cell family on the same layer machinery: :class:`Recurrent`, the base class
  :class:`CellFamily`, :func:`register_family`, :func:`unregister_family`, :func:`registered_families`;
- gate inspection: :func:`inspect_gates` -> :class:`GateTrace`;
- what a layer computes: :func:`CellConfig`, :data:`LSTM_VARIANTS`; the backends: :data:`BACKENDS`;
- deployment: :func:`export_onnx` (ONNX files for onnxruntime; int8 in :mod:`gatedrnn.export`).
"""

from .backends import BACKENDS
from .cells import LSTM_VARIANTS, CellFamily, register_family, registered_families, unregister_family
from .config import CellConfig
from .export import export_onnx
from .inspect import GateTrace, inspect_gates
from .nn import GRU, LSTM, RNN, SLSTM, GRUCell, LSTMCell, MinGRU, MinLSTM, Recurrent, RNNCell

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CellConfig",
    "CellFamily",
    "GRU",
    "GRUCell",
    "GateTrace",
    "LSTM",
    "LSTMCell",
    "LSTM_VARIANTS",
    "MinGRU",
    "MinLSTM",
    "RNN",
    "RNNCell",
    "Recurrent",
    "SLSTM",
    "export_onnx",
    "inspect_gates",
    "register_family",
    "registered_families",
    "unregister_family",
]
