"""Gate inspection: every layer's and direction's gate activations at every time step.

The normal forward pass never records anything; :func:`inspect_gates` runs the module once more
on the reference backend with recording on, so it costs one reference-speed pass when asked for
and nothing otherwise. Gradients flow through the trace: a loss on any gate or state at step t
differentiates back to the inputs and weights (the viewer's memory-span analysis, which needs the
states alone, takes per-step Jacobians of the step functions instead, ``gatedrnn.viz.span``).

Example::

    >>> import torch, gatedrnn
    >>> lstm = gatedrnn.LSTM(8, 16, num_layers=2)
    >>> trace = gatedrnn.inspect_gates(lstm, torch.randn(12, 1, 8))
    >>> sorted(trace.gates[(1, 0)]), trace.gates[(1, 0)]["f"].shape
    (['c', 'f', 'g', 'h', 'i', 'o'], torch.Size([12, 1, 16]))
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .nn import Recurrent


@dataclass
class GateTrace:
    """The result of :func:`inspect_gates`.

    Attributes:
        output: exactly what ``module(input, hx, reset=reset)`` returns as output (for the same random
            masks).
        final_state: what it returns as the final state.
        gates: ``gates[(layer, direction)][name]`` is a (T, B, H) tensor, time-major whatever the
            input layout (padded positions of shorter sequences are zero); the names are the family's
            :attr:`~gatedrnn.CellFamily.trace_names`: LSTM i, f, g, o, c, h (h before any projection);
            GRU r, z, n, h; RNN h; a user family its gates, then its states. A gate a variant removes is
            recorded as its constant (i = 1 for ``nig``, i = 1 - f for ``cifg``).
        names: those names, in display order.

    Example::

        >>> import torch, gatedrnn
        >>> trace = gatedrnn.inspect_gates(gatedrnn.GRU(3, 4, num_layers=2), torch.randn(6, 2, 3))
        >>> trace.names
        ('r', 'z', 'n', 'h')
        >>> sorted(trace.gates), trace.gates[(1, 0)]["z"].shape  # (layer, direction) -> name -> (T, B, H)
        ([(0, 0), (1, 0)], torch.Size([6, 2, 4]))
    """

    output: object
    final_state: object
    gates: dict[tuple[int, int], dict[str, Tensor]]
    names: tuple[str, ...]


def inspect_gates(module: Recurrent, input, hx=None, *, reset=None) -> GateTrace:
    """Run ``module`` on ``input`` (any layout its forward accepts) and record its gates.

    Args:
        module: a :class:`gatedrnn.Recurrent` layer: :class:`gatedrnn.LSTM`, :class:`gatedrnn.GRU`,
            :class:`gatedrnn.RNN` or a layer of any registered family.
        input, hx, reset: as for ``module(input, hx, reset=reset)`` (``reset`` marks the steps where a
            sequence restarts from zero states).

    Returns:
        A :class:`GateTrace`.

    Example::

        >>> import torch, gatedrnn
        >>> lstm = gatedrnn.LSTM(3, 4)
        >>> x = torch.randn(6, 2, 3)
        >>> trace = gatedrnn.inspect_gates(lstm, x)
        >>> trace.gates[(0, 0)]["f"].shape  # the forget gate, (T, B, H)
        torch.Size([6, 2, 4])
        >>> torch.allclose(trace.output, lstm(x)[0], atol=1e-6)  # the module's usual output
        True
    """
    if not isinstance(module, Recurrent):
        raise TypeError(
            f"inspect_gates: expected a gatedrnn.LSTM, GRU or RNN module or another gatedrnn.Recurrent layer, got "
            f"{type(module).__name__}; load torch.nn weights into the gatedrnn module of the same configuration "
            "with load_state_dict"
        )
    output, final_state, traces = module.forward_with_gates(input, hx, reset=reset)
    return GateTrace(output, final_state, traces, module.cell_config.trace_names)
