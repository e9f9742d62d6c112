"""The gate viewer page: one self-contained ``gates.html`` per text and model.

The page shows the text with each character coloured by one quantity (a gate, the cell state or
the hidden state) of one unit in one layer; hovering a character lists every quantity of that unit
there; units can be ordered by how long they hold information. Everything it needs (the data as
JSON, the script and the styles of ``gates.html`` beside this file) is inlined, so it opens from the
file system with no network.

Shapes: T characters, H units per layer; ``layers[k][name]`` is a (T, H) array of layer k's
``name``, one per name of the cell family's :attr:`~gatedrnn.CellFamily.trace_names` (LSTM
``i f g o c h``, GRU ``r z n h``, RNN ``h``, sLSTM ``i f z o c n m``, minGRU ``z``, minLSTM ``f i``, a
user's family its gates and states), as :func:`gatedrnn.inspect_gates` records for a batch of one.
What the page opens on, what it says of each name and how it orders units come from the family too
(its ``memory_state``, ``descriptions`` and :meth:`~gatedrnn.CellFamily.retention`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..cells import CellFamily, family_class, registered_families

BOUNDED = {
    "i": (0.0, 1.0),
    "f": (0.0, 1.0),
    "o": (0.0, 1.0),
    "r": (0.0, 1.0),
    "z": (0.0, 1.0),
    "g": (-1.0, 1.0),
    "n": (-1.0, 1.0),
}
"""Range of the built-in families' gate activations by name (sigmoid gates in [0, 1], tanh
candidates in [-1, 1]), used where the recorded values lie within it; anything else (states, a
user's gate outside these) is scaled per unit by its largest magnitude on the text."""

DESCRIPTIONS = {  # the LSTM's, GRU's and RNN's; a family's own descriptions come first
    "i": "input gate: how much of the candidate g enters the cell",
    "f": "forget gate: how much of the previous cell state is kept",
    "g": "candidate cell update",
    "o": "output gate: how much of tanh(c) is shown as h",
    "c": "cell state",
    "h": "hidden state (the layer's output)",
    "r": "reset gate: how much of the previous state the candidate n sees",
    "z": "update gate: how much of the previous state is kept (h = (1-z) n + z h_prev)",
    "n": "candidate state",
}

DIGITS = 4


def family_of(cell: str) -> type[CellFamily]:
    """The registered family ``cell`` (ValueError naming the registered ones otherwise)."""
    if cell not in registered_families():
        raise ValueError(
            f"cell must be one of the registered cell families {', '.join(registered_families())}, got {cell!r}"
        )
    return family_class(cell)


def initial_quantity(family: CellFamily, names: Sequence[str]) -> str:
    """The quantity the page colours by when it opens: of the recorded ``names``, the state that
    carries the memory (the family's ``memory_state``), else the output h, else the first name (the
    minGRU records z alone)."""
    return next((n for n in (family.memory_state, family.states[0]) if n in names), names[0])


def activity_quantity(family: CellFamily, names: Sequence[str]) -> str:
    """The recorded quantity whose spread over the text says how much a unit reacts to it: the
    output h, else the memory state (the sLSTM's c), else the first name (minGRU z, minLSTM f)."""
    return next((n for n in (family.states[0], family.memory_state) if n in names), names[0])


BUILT_IN = CellFamily.__module__.rpartition(".")[0]
"""The package of the built-in families, whose names :data:`DESCRIPTIONS` describes."""


def describe(family: CellFamily, name: str) -> str:
    """The hover text of ``name``: the family's own ``descriptions``, else what it means in the
    built-in LSTM, GRU and RNN (:data:`DESCRIPTIONS`); else its role as the family declares it (gate
    or state, the output, the memory, the retention gate)."""
    if name in family.descriptions:
        return family.descriptions[name]
    if type(family).__module__.startswith(f"{BUILT_IN}.") and name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    role = "state" if name in family.states else "gate"
    if name == family.states[0]:
        return f"{role} {name}: the layer's output"
    if name == family.memory_state:
        return f"{role} {name}: the memory the cell carries"
    if name == family.retention_gate:
        return f"{role} {name}: near 1 keeps the memory"
    return f"{role} {name}"


def value_range(name: str, values: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """The fixed colour range of ``name`` on the page and in gates.png: :data:`BOUNDED`'s when
    every recorded value (each layer's (T, H) array) lies within it, else None (scaled per unit)."""
    bounds = BOUNDED.get(name)
    if bounds is None or not all(bounds[0] <= np.min(v) and np.max(v) <= bounds[1] for v in values):
        return None
    return bounds


@dataclass
class GateRecord:
    """What the page shows: the text and, per layer, the recorded quantities.

    Attributes:
        text: the input characters, length T.
        cell: a registered cell family (``"lstm"``, ``"slstm"``, ``"mingru"``, ... or a user's).
        layers: per layer, name -> (T, H) array.
        unknown: positions of characters outside the model's vocabulary (shown marked).
        unit_scores: extra ways to order units: label -> per layer a (H,) array (larger first),
            e.g. the memory span of each unit from :mod:`gatedrnn.viz.span`.
        title: shown at the top of the page.
        names: the recorded names in display order (:attr:`gatedrnn.GateTrace.names`); default
            the family's :attr:`~gatedrnn.CellFamily.trace_names` in its default configuration.
        cell_config: the configured family that recorded them (a model's ``rnn.cell_config``),
            which the page asks for its names, states, memory state and retention; default the
            family ``cell`` in its default configuration at the layers' width H.
    """

    text: str
    cell: str
    layers: Sequence[Mapping[str, np.ndarray]]
    unknown: Sequence[int] = ()
    unit_scores: Mapping[str, Sequence[np.ndarray]] = field(default_factory=dict)
    title: str = ""
    names: Sequence[str] = ()
    cell_config: CellFamily | None = None

    def __post_init__(self):
        if not self.text:
            raise ValueError("text is empty: the gate viewer needs at least one character")
        if not self.layers:
            raise ValueError("layers is empty: expected one dict of (T, H) arrays per layer")
        if self.cell_config is None:
            width = np.shape(next(iter(self.layers[0].values()), np.zeros((0, 1))))[-1]
            self.cell_config = family_of(self.cell)(width)  # its default configuration: names and roles
        self.names = tuple(self.names) or self.cell_config.trace_names
        for k, layer in enumerate(self.layers):
            missing = [n for n in self.names if n not in layer]
            if missing:
                raise ValueError(f"layer {k} of a {self.cell} lacks {missing}; has {sorted(layer)}")
            for name, values in layer.items():
                if np.ndim(values) != 2 or np.shape(values)[0] != len(self.text):
                    raise ValueError(
                        f"layer {k} {name!r}: expected shape (T={len(self.text)}, H), got {np.shape(values)}"
                    )
        for label, per_layer in self.unit_scores.items():
            if len(per_layer) != len(self.layers):
                raise ValueError(f"unit score {label!r}: expected {len(self.layers)} layers, got {len(per_layer)}")
        bad = [t for t in self.unknown if not 0 <= t < len(self.text)]
        if bad:
            raise ValueError(f"unknown positions {bad} outside the text (length {len(self.text)})")


def default_unit_scores(record: GateRecord) -> dict[str, list[np.ndarray]]:
    """Per-unit orderings every page offers, before any given in ``record.unit_scores``.

    ``mean <a> (retention)`` for a family with a retention (:meth:`gatedrnn.CellFamily.retention`:
    LSTM f, GRU z, sLSTM its stabilised f', minGRU 1 - z, minLSTM its normalised f'): the average
    fraction of its memory a unit keeps per step; a unit that keeps a fraction a holds an input for
    about 1 / (1 - a) steps. ``activity``: the standard deviation over the text of the output h (or
    of :func:`activity_quantity`'s stand-in where h is not recorded): how much the unit reacts to it.
    """
    scores = {}
    family = record.cell_config
    kept = [family.retention({n: np.asarray(v) for n, v in layer.items()}) for layer in record.layers]
    if kept[0] is not None:
        scores[f"mean {kept[0][0]} (retention)"] = [values.mean(axis=0) for _, values in kept]
    out = activity_quantity(family, record.names)
    scores[f"activity (std of {out})"] = [np.asarray(layer[out]).std(axis=0) for layer in record.layers]
    return scores


def _rounded(values: np.ndarray) -> list:
    return np.round(np.asarray(values, dtype=np.float64), DIGITS).tolist()


def page_data(record: GateRecord) -> dict:
    """The JSON the page script reads: text, names, per layer the (H, T) values, the unit orders."""
    names = list(record.names)
    # the caller's orders (e.g. the measured memory span) come first: the page opens with the first
    scores = {**record.unit_scores, **default_unit_scores(record)}
    return {
        "title": record.title or f"gate viewer: {record.cell_config.title()}",
        "cell": record.cell,
        "text": list(record.text),
        "unknown": sorted(set(int(t) for t in record.unknown)),
        "names": names,
        "initial": initial_quantity(record.cell_config, names),
        "descriptions": {n: describe(record.cell_config, n) for n in names},
        "ranges": {n: value_range(n, [layer[n] for layer in record.layers]) for n in names},
        # per layer: name -> (H, T) so one unit's row is contiguous
        "layers": [{n: _rounded(np.asarray(layer[n]).T) for n in names} for layer in record.layers],
        "scores": {label: [_rounded(s) for s in per_layer] for label, per_layer in scores.items()},
    }


def _template() -> str:
    return resources.files(__package__).joinpath("gates.html").read_text(encoding="utf-8")


def render_page(record: GateRecord) -> str:
    """The complete HTML of the page for ``record`` (a string; see :func:`write_gates_html`)."""
    # no "<" in the data block: "</script" would close it early, and "<!--" followed by "<script"
    # (a model or file name in the title) keeps the parser from ever closing it; in JSON strings,
    # the only place a "<" can be, \u003c is the same character
    data = json.dumps(page_data(record), separators=(",", ":")).replace("<", "\\u003c")
    title = html.escape(record.title or f"gatedrnn gate viewer ({record.cell_config.title()})")
    head, tail = _template().split("__DATA__")
    return head.replace("__TITLE__", title) + data + tail


def write_gates_html(record: GateRecord, path: str | Path) -> Path:
    """Write the page for ``record`` to ``path`` (a file, parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(record), encoding="utf-8")
    return path
