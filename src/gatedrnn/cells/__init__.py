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
from .gru import GRUFamily
from .lstm import LSTM_VARIANTS, LSTMFamily
from .rnn import RNNFamily

__all__ = [
    "CellFamily", "GRUFamily", "LSTMFamily", "LSTM_VARIANTS", "LayerWeights", "RNNFamily", "family_class",
    "family_origin", "register_family", "registered_families", "unregister_family",
]
