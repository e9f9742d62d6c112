"""The gate viewer: see what an RNN, LSTM, GRU, sLSTM, minGRU or minLSTM (or a cell family of your
own) remembers and forgets, character by character.

- :mod:`~gatedrnn.viz.page`: ``gates.html``, one self-contained page (text coloured by any gate
  of any unit, hover for every value, units ordered by how long they hold information);
- :mod:`~gatedrnn.viz.plots`: ``gates.png`` heatmaps and the ``memory_span.png`` comparison;
- :mod:`~gatedrnn.viz.span`: memory span, ||d h_t / d x_s|| by the chain rule over per-step Jacobians, for
  distances below a window;
- :mod:`~gatedrnn.viz.charmodel`, :mod:`~gatedrnn.viz.loading`: trained char-level models
  (shipped in ``gatedrnn/pretrained/`` or saved by ``gatedrnn train --task charlm``);
- :mod:`~gatedrnn.viz.commands`: ``gatedrnn gates``, ``gatedrnn sample``, ``gatedrnn demo``.
"""

from .page import GateRecord, render_page, write_gates_html
from .plots import plot_gates, plot_memory_span
from .span import SpanResult, influence, measure_span, summary_lines

__all__ = [
    "GateRecord",
    "SpanResult",
    "influence",
    "measure_span",
    "plot_gates",
    "plot_memory_span",
    "render_page",
    "summary_lines",
    "write_gates_html",
]
