"""
What the gates keep: RNN, LSTM and GRU on one sentence
======================================================

A popular LSTM tutorial explains the gates with one sentence read character by character: *"John
wanted to visit his friend's house, but he couldn't find the address. He spent hours searching for
it."* It says that a plain RNN has forgotten "John" by the time it reads "hours", that the LSTM's
forget gate keeps it in the cell state, its input gate writes "his friend's house" and its output
gate reads "John" back out at "hours"; and that the GRU's update gate balances old and new.

This page follows that walk-through on the character-level models shipped with gatedrnn (trained
on two Jane Austen novels, no training here) and measures each claim. Every figure and number
below is computed by the code beside it when the page is built: where the measurements disagree
with the tutorial, the page says so.
"""

# %%
# The sentence and the shipped models
# -----------------------------------
#
# Each shipped model embeds a character into 32 numbers, runs one recurrent layer of 128 units and
# predicts the next character. :func:`gatedrnn.inspect_gates` runs a layer and records every gate
# at every step.

import inspect

import matplotlib.pyplot as plt
import numpy as np
import torch

import gatedrnn
from gatedrnn.cells.gru import GRUFamily
from gatedrnn.cells.lstm import LSTMFamily
from gatedrnn.cells.rnn import RNNFamily
from gatedrnn.viz.loading import SHIPPED, load_shipped, shipped_path
from gatedrnn.viz.span import probe_positions, summary_lines, word_positions

torch.set_num_threads(2)
SENTENCE = "John wanted to visit his friend's house, but he couldn't find the address. He spent hours searching for it."
models = {cell: load_shipped(cell) for cell in SHIPPED if shipped_path(cell).exists()}
for model in models.values():
    print(f"{model.name}: {model.rnn.num_layers} layer x {model.rnn.hidden_size} units, {model.cell} family")


def record(model):
    """Every gate of the model's first layer on the sentence, (T, H) arrays, from inspect_gates."""
    ids, _ = model.encode(SENTENCE)
    with torch.no_grad():
        # a batch of one: (1, T, 32) or (T, 1, 32)
        x = model.embedding(ids).unsqueeze(0 if model.rnn.batch_first else 1)
        trace = gatedrnn.inspect_gates(model.rnn.eval(), x)
    return {name: values[:, 0].numpy() for name, values in trace.gates[(0, 0)].items()}  # (T, B, H) -> (T, H)


traces = {cell: record(model) for cell, model in models.items()}
print({cell: sorted(trace) for cell, trace in traces.items()})

# %%
# The memory span
# ---------------
#
# How much does the state at one character still depend on an earlier character? The influence
# of the input :math:`x_s` on the state :math:`h_t` is the Jacobian norm
#
# .. math::
#     J[t, s] = \left\lVert \frac{\partial h_t}{\partial x_s} \right\rVert_F ,
#
# computed exactly in float64 through the cells' reference step functions (for the LSTM also for
# its cell state :math:`c_t`). The **memory span** is the distance :math:`t - s` beyond which the
# mean influence stays below 1% of its peak; the last column is the influence of "John" on the
# state at the end of "hours", relative to that state's strongest input.

spans = {cell: model.span(SENTENCE)[0] for cell, model in models.items()}
results = [result for cell_results in spans.values() for result in cell_results]
print("\n".join(summary_lines(results, ("John", "hours"))))

john, hours = probe_positions(SENTENCE, "John", "hours")
john_at_hours = {r.label: r.relative(hours, john) for r in results}

fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
for r in results:
    ax.semilogy(r.curve / r.curve.max(), ls="--" if r.quantity == "c" else "-", label=r.label)
ax.axhline(0.01, color="grey", lw=0.8)
ax.axvline(hours - john.start, color="grey", ls=":", lw=0.8)
ax.text(hours - john.start, 0.02, ' "John" \u2192 "hours"', color="grey", fontsize=8)
ax.set(xlabel="distance t - s (characters)", ylabel="mean influence / peak", ylim=(1e-8, 2))
ax.legend(ncols=2, fontsize=8)
ax.set_title("How far back each state depends on its input")

# %%
# The RNN, and why it forgets
# ---------------------------
#
# The plain (Elman) RNN has one state and no gate:
#
# .. math::
#     h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}).
#
# Every step multiplies what the state knew by :math:`W_{hh}` and squashes it through
# :math:`\tanh`; the Jacobian :math:`\partial h_t / \partial h_{t-1}` is applied once per character,
# and its product over many characters shrinks geometrically. The tutorial's first claim, "by the
# time you reach *hours*, the information about *John* may have completely vanished", can be read
# off the RNN's row of the table above; here is the influence of each character on the state at
# the end of "hours", for every model:


def influence_on(result, t):
    """The relative influence of every input character on the state at t (0 after t)."""
    return np.array([result.relative(t, s) or 0.0 for s in range(len(SENTENCE))])


fig, ax = plt.subplots(figsize=(10, 3.2), layout="constrained")
for r in results:
    ax.semilogy(np.maximum(influence_on(r, hours), 1e-16), label=r.label, lw=1)
ax.set_xticks(range(len(SENTENCE)), list(SENTENCE), fontsize=5, family="monospace")
ax.set(ylabel="influence on the state at 'hours'", ylim=(1e-16, 2), xlim=(-1, hours + 1))
ax.legend(fontsize=8, ncols=4)
print(f"RNN: the state at 'hours' holds {john_at_hours['RNN']:.1e} of 'John' (relative to its strongest input)")

# %%
# The LSTM
# --------
#
# The LSTM adds a cell state :math:`c_t` that is not squashed from step to step, and three gates
# (sigmoids, between 0 and 1) that decide what it keeps, what it writes and what it shows. Below,
# each equation stands beside the line of gatedrnn's reference step
# (:meth:`gatedrnn.cells.lstm.LSTMFamily.step`, the executable specification every backend is
# tested against) that computes it, found in the source when the page is built.


class Beside:
    """A table of equations (LaTeX) beside the source lines of a family's step that compute them."""

    def __init__(self, family, rows):
        self.lines, self.first = inspect.getsourcelines(family.step)
        self.where = f"{family.__module__}.{family.__qualname__}.step"
        self.rows = [(latex, self.find(needle)) for latex, needle in rows]

    def find(self, needle):
        """(line number, source line) of the first line of the step containing ``needle``."""
        for k, line in enumerate(self.lines):
            if needle in line:
                return self.first + k, line.strip()
        raise LookupError(f"{self.where} has no line with {needle!r}")

    def _repr_html_(self):
        escape = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        cells = "".join(
            f'<tr><td><span class="math notranslate nohighlight">\\({escape(latex)}\\)</span></td>'
            f"<td><code>{number}</code></td><td><code>{escape(line)}</code></td></tr>"
            for latex, (number, line) in self.rows
        )
        return (
            f'<table class="docutils"><thead><tr><th>equation</th><th colspan="2">line of '
            f"<code>{self.where}</code></th></tr></thead><tbody>{cells}</tbody></table>"
        )

    def __repr__(self):
        return "\n".join(f"{latex:<50} {number:>4}: {line}" for latex, (number, line) in self.rows)


lstm, lstm_trace = models["lstm"], traces["lstm"]
H = lstm.rnn.hidden_size
c_span = next(r for r in spans["lstm"] if r.quantity == "c")
unit = int(np.argmax(c_span.unit_mean_distance))  # the unit whose cell state holds information longest
print(f"the LSTM unit whose cell state has the longest memory: {unit}")


def char_axis(ax):
    ax.set_xticks(range(len(SENTENCE)), list(SENTENCE), fontsize=5, family="monospace")


def gate_figure(trace, name, title, unit, cmap="Blues", limits=(0, 1)):
    """Heatmap of gate ``name`` for the 24 units whose h (where recorded, else the gate) varies
    most, and one unit's line."""
    units = np.argsort(-trace.get("h", trace[name]).std(axis=0), kind="stable")[:24]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.2), height_ratios=[1.6, 1], layout="constrained")
    image = top.imshow(trace[name][:, units].T, aspect="auto", cmap=cmap, vmin=limits[0], vmax=limits[1])
    top.set(ylabel="unit (most active first)", yticks=[], title=title)
    fig.colorbar(image, ax=top, pad=0.01)
    bottom.plot(trace[name][:, unit], color="C0", lw=1)
    bottom.set(ylabel=f"{name}, unit {unit}", xlim=(-0.5, len(SENTENCE) - 0.5))
    char_axis(top)
    char_axis(bottom)
    return fig


def mean_over(trace, name, word, occurrence=0):
    """The gate's mean over all units and the characters of ``word``."""
    return float(trace[name][word_positions(SENTENCE, word, occurrence)].mean())


# %%
# The forget gate
# ~~~~~~~~~~~~~~~
#
# .. math::
#     f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf})
#
# :math:`f_t` multiplies the previous cell state: near 1 a unit keeps what it held, near 0 it
# forgets. The tutorial's example: at "but", the forget gate decides whether "John wanted to
# visit" is kept.

Beside(LSTMFamily, [(r"f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf})", "f = torch.sigmoid")])

# %%

gate_figure(lstm_trace, "f", "LSTM forget gate f on the sentence (white 0, blue 1)", unit)
f = lstm_trace["f"]
print(f"mean f over all units and characters: {f.mean():.3f}")
print(
    f"mean f on 'but': {mean_over(lstm_trace, 'f', 'but'):.3f}; units with f > 0.9 there: "
    f"{(f[word_positions(SENTENCE, 'but')] > 0.9).all(axis=0).sum()} of {H}"
)
print(
    f"unit {unit}: mean f {f[:, unit].mean():.3f}, lowest {f[:, unit].min():.3f} at {SENTENCE[f[:, unit].argmin()]!r} "
    f"(character {f[:, unit].argmin()})"
)

# %%
# The input gate and the candidate
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# .. math::
#     i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}), \qquad
#     g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg})
#
# :math:`g_t` is the candidate (the tutorial's :math:`\tilde C_t`), the input gate :math:`i_t`
# how much of it each unit writes. The tutorial's example: "his friend's house" is written in.

Beside(
    LSTMFamily,
    [
        (r"i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi})", 'i = torch.sigmoid(pre["i"])'),
        (r"g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg})", 'torch.tanh(pre["g"])'),
    ],
)

# %%

gate_figure(lstm_trace, "i", "LSTM input gate i", unit)
gate_figure(lstm_trace, "g", "LSTM candidate g (red -1, blue 1)", unit, cmap="RdBu", limits=(-1, 1))
print(
    f"mean i on 'his friend's house': {mean_over(lstm_trace, 'i', 'house'):.3f} at 'house', "
    f"{lstm_trace['i'][word_positions(SENTENCE, 'his')].mean():.3f} at 'his'; over the sentence "
    f"{lstm_trace['i'].mean():.3f}"
)

# %%
# The cell state
# ~~~~~~~~~~~~~~
#
# .. math::
#     c_t = f_t \odot c_{t-1} + i_t \odot g_t
#
# The old cell state, scaled by the forget gate, plus the candidate, scaled by the input gate.

Beside(LSTMFamily, [(r"c_t = f_t \odot c_{t-1} + i_t \odot g_t", "c_new = f * c + i * g")])

# %%

c = lstm_trace["c"]
scale = float(np.abs(c).max())
gate_figure(lstm_trace, "c", "LSTM cell state c (scaled by its largest magnitude)", unit, "RdBu", (-scale, scale))
low = int(f[:, unit].argmin())
print(
    f"unit {unit}: c = {c[hours, unit]:.2f} at the end of 'hours'; its forget gate drops to "
    f"{f[low, unit]:.2f} at {SENTENCE[low]!r} (character {low}), where c goes from {c[low - 1, unit]:.2f} "
    f"to {c[low, unit]:.2f}"
)

# %%
# The output gate
# ~~~~~~~~~~~~~~~
#
# .. math::
#     o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}), \qquad h_t = o_t \odot \tanh(c_t)
#
# The hidden state, the layer's output, is a gated view of the squashed cell state. The tutorial's
# claim: at "hours", the output gate lets the continued reference to "John" through.

Beside(
    LSTMFamily,
    [
        (r"o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho})", 'o = torch.sigmoid(pre["o"])'),
        (r"h_t = o_t \odot \tanh(c_t)", "h_new = o *"),
    ],
)

# %%

gate_figure(lstm_trace, "o", "LSTM output gate o", unit)
print(f"mean o at 'hours': {mean_over(lstm_trace, 'o', 'hours'):.3f}")
for label in ("LSTM c", "LSTM"):
    value = john_at_hours[label]
    verdict = "a trace" if value >= 1e-3 else "next to nothing"
    print(f"{label:>6}: 'John' -> end of 'hours' {value:.1e} of the strongest input: {verdict} of 'John'")

# %%
# What the measurements say
# ~~~~~~~~~~~~~~~~~~~~~~~~~
#
# The printed lines above are the honest answer to the tutorial. The mechanism is real: the
# LSTM's cell state carries a trace of an input much further than the RNN's state (compare their
# spans and the dashed ``LSTM c`` curve), because its forget gate sits near 1 for many units.
# Whether "John" itself is still there at "hours" is a number, printed above for the cell state
# and for the output h; for these models on this sentence it is far below the strongest inputs,
# and at the output h it is negligible: the output gate does not "read John back". The
# longest-memory unit's forget gate drops to near zero at one character and its cell state starts
# again from there, more like a counter of characters since a mark than a record of a name. A
# small character model has no reason to remember a name across a sentence; the tutorial's
# account is a story about what the gates *can* do.
#
# The GRU
# -------
#
# The GRU (Cho et al. 2014) merges the cell and hidden states and has two gates, in torch.nn's
# form:
#
# .. math::
#     r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
#     z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
#     n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
#     h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}
#
# The **update gate** :math:`z_t` is the tutorial's balance between old and new: near 1 a unit
# keeps its state, near 0 it takes the candidate :math:`n_t`. The **reset gate** :math:`r_t`
# decides how much of the previous state the candidate sees.

Beside(
    GRUFamily,
    [
        (r"r_t = \sigma(\dots)", "r = torch.sigmoid"),
        (r"z_t = \sigma(\dots)", "z = torch.sigmoid"),
        (r"n_t = \tanh(\dots + r_t \odot (W_{hn} h_{t-1} + b_{hn}))", "n = torch.tanh(a_n + r * u_n)"),
        (r"h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}", "h_new ="),
    ],
)

# %%

gru_trace = traces["gru"]
gru_span = spans["gru"][0]
gru_unit = int(np.argmax(gru_span.unit_mean_distance))
gate_figure(gru_trace, "z", "GRU update gate z (1: keep the old state)", gru_unit)
gate_figure(gru_trace, "r", "GRU reset gate r", gru_unit)
print(
    f"GRU: mean z {gru_trace['z'].mean():.3f}, on 'but' {mean_over(gru_trace, 'z', 'but'):.3f}; "
    f"longest-memory unit {gru_unit}, mean z {gru_trace['z'][:, gru_unit].mean():.3f}"
)
print(f"GRU: 'John' -> end of 'hours' {john_at_hours['GRU']:.1e} of the strongest input")

# %%
# The plain RNN's step, for comparison: one line, no gate.

Beside(RNNFamily, [(r"h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})", "h_new = torch.tanh")])

# %%
# The variants
# ------------
#
# Greff et al. 2017 ("LSTM: A Search Space Odyssey") took the LSTM apart one piece at a time;
# ``gatedrnn.LSTM(variant=...)`` has each of their variants. A variant without a gate has no
# weight rows for it, and :func:`~gatedrnn.inspect_gates` records the missing gate as its constant.
# On an untrained layer of the shipped LSTM's size, the gates each variant keeps and the recorded
# value of the ones it drops:

x = lstm.embedding(lstm.encode(SENTENCE)[0]).detach().unsqueeze(1)  # (T, 1, 32)
torch.manual_seed(0)
for variant, gates in gatedrnn.LSTM_VARIANTS.items():
    layer = gatedrnn.LSTM(x.shape[-1], H, variant=variant)  # time-major, as torch.nn
    trace = gatedrnn.inspect_gates(layer, x).gates[(0, 0)]
    dropped = {
        g: ("1 - f" if torch.allclose(trace[g], 1 - trace["f"]) else f"{trace[g].mean():.2f}")
        for g in "ifo"
        if g not in gates
    }
    parameters = sum(p.numel() for p in layer.parameters())
    print(f"{variant:>8}: gates with weights {' '.join(gates):<8} dropped {dropped or '-'}; {parameters} parameters")

# %%
# sLSTM and the minimal cells
# ---------------------------
#
# :class:`gatedrnn.SLSTM` (xLSTM's sLSTM, Beck et al. 2024) gives the LSTM an exponential input
# gate with a normaliser and a stabiliser; :class:`gatedrnn.MinGRU` and :class:`gatedrnn.MinLSTM`
# (Feng et al. 2024) drop the hidden state from the gates so that a layer becomes a scan over
# time. Each is a registered cell family; the ones with a shipped character model are run on the
# sentence here, the others listed with their gates and states.

from gatedrnn.cells import family_class  # noqa: E402

classic = {"rnn", "lstm", "gru"}
for name in gatedrnn.registered_families():
    if name in classic:
        continue
    family = family_class(name)
    shipped = "shipped model: yes" if name in models else "no shipped model yet"
    print(f"{name:>8}: gates {' '.join(family.gates)}, states {' '.join(family.states)}; {shipped}")

for name in [cell for cell in models if cell not in classic]:
    trace, result = traces[name], spans[name][0]
    figure_unit = int(np.argmax(result.unit_mean_distance))
    for gate in [g for g in trace if g != "h"][:2]:
        values = trace[gate]
        gate_figure(trace, gate, f"{models[name].name} {gate}", figure_unit, "RdBu", (values.min(), values.max()))
    print(f"{models[name].name}: span {result.span_text()}, 'John' -> 'hours' {john_at_hours[result.label]:.1e}")
