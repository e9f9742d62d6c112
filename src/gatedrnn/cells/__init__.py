"""Cell families, one file each: the math of one time step (the executable specification), names,
parameters and backend hooks. :mod:`gatedrnn.cells.family` holds the base class and the registry.
"""

from .family import (
    CellFamily,
    LayerWeights,
    family_class,
    family_origin,
    register_family,
    registered_families,
    unregister_family,
)

# isort: off
# registration order, which the CLI and the viewer list: LSTM, GRU, RNN, then sLSTM, minGRU, minLSTM
from .lstm import LSTM_VARIANTS, LSTMFamily
from .gru import GRUFamily
from .rnn import RNNFamily
from .slstm import SLSTMFamily
from .mingru import MinGRUFamily, MinLSTMFamily
# isort: on

__all__ = [
    "CellFamily",
    "GRUFamily",
    "LSTMFamily",
    "LSTM_VARIANTS",
    "LayerWeights",
    "MinGRUFamily",
    "MinLSTMFamily",
    "RNNFamily",
    "SLSTMFamily",
    "family_class",
    "family_origin",
    "register_family",
    "registered_families",
    "unregister_family",
]
