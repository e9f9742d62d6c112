"""The math of each cell family, one time step per function: the executable specification.

``STEPS[family](x, state, weights, config, h_for_matmul=None) -> (new_state, gates)``.
"""

from .gru import gru_step
from .lstm import lstm_initial_carry, lstm_step
from .rnn import rnn_step

STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step}


def initial_carry(state, cfg):
    """The tuple the time loop carries for ``cfg``, from the user-visible state."""
    if cfg.family == "lstm":
        return lstm_initial_carry(state, cfg)
    return tuple(state)


__all__ = ["STEPS", "initial_carry", "gru_step", "lstm_step", "rnn_step"]
