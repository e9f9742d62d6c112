"""The network the experiments train: an optional embedding, a gatedrnn recurrent layer of any
registered cell family and a linear head applied at every step; and how a saved run finds its
family again.

Shape legend: B batch, T steps, I input features, V vocabulary size, E embedding size,
H hidden units, R the recurrent layer's output size (H unless the family projects h), O outputs
per step.

    tokens (B, T) --Embedding(V, E)--> (B, T, E) --+
    features (B, T, I) ----------------------------+--> Recurrent(cell) --> (B, T, R) --Linear--> (B, T, O)

A user's cell family is a :class:`gatedrnn.CellFamily` registered with :func:`gatedrnn.register_family`
in a module of the user's own (``gatedrnn train --family-module my_cells.py --cell mgu``). A run records
where its family came from (:func:`family_record`); :func:`require_family` imports that module again
when a later process rebuilds the run and the family is not registered there. That import runs the
module's Python code, as ``--family-module`` does: the run names the code, the weights stay
safetensors and JSON.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from .cells import CellFamily, family_class, family_origin, registered_families
from .nn import Recurrent


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`SequenceModel` (stored in checkpoints as JSON).

    Attributes:
        cell: a registered cell family (``"lstm"``, ``"gru"``, ``"rnn"`` or a user's, see
            :func:`gatedrnn.registered_families`).
        input_size: I for float inputs; ignored (the embedding's width is used) with ``vocab_size``.
        output_size: O, outputs per step.
        hidden_size: H.
        num_layers: stacked recurrent layers.
        variant: the family's ``variant`` option (``gatedrnn.LSTM_VARIANTS`` for the LSTM);
            ``"vanilla"`` leaves it at the family's default, and is the only value for a family
            without that option.
        forget_bias: initial bias of the forget gate ``"f"`` (None: the layer's default), for a
            family with that gate.
        input_bias: initial bias of the input gate ``"i"`` (None: the layer's default), for a family
            with that gate; like ``forget_bias`` it is put in ``bias_ih`` with the ``bias_hh`` rows
            zeroed. A negative value keeps the cells from absorbing every input at first, the 1997
            paper's remedy for "internal state drift" (Hochreiter & Schmidhuber 1997, sec. 4).
        vocab_size: V when the inputs are token ids; the model then embeds them.
        embedding_dim: E, the embedding width (used only with ``vocab_size``).
        family_options: the family's other options (names of its ``option_defaults``), e.g.
            ``{"layer_norm": True}``.
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
    family_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def cell_config(self) -> CellFamily:
        """The configured family (H = ``hidden_size``) with ``variant`` and ``family_options``;
        ValueError or TypeError naming what the family does not take."""
        return configured_family(self.cell, self.variant, self.family_options, self.hidden_size)


def configured_family(
    cell: str, variant: str = "vanilla", options: dict[str, Any] | None = None, hidden_size: int = 1
) -> CellFamily:
    """The family registered as ``cell``, configured with ``options`` and, unless it is
    ``"vanilla"``, ``variant`` (which needs a family with a ``variant`` option): what decides which
    gates it has (an LSTM variant may lack i or f) and which flags apply to it."""
    cls = family_class(cell)
    options = dict(options or {})
    if variant != "vanilla":
        if "variant" not in cls.option_defaults:
            raise ValueError(
                f"variant applies to {option_takers('variant')} only, got cell={cell!r} (variant={variant!r})"
            )
        options["variant"] = variant
    return cls(hidden_size, **options)


def option_takers(option: str) -> str:
    """The registered families whose ``option_defaults`` name ``option``, as ``lstm or x`` for a
    message."""
    return " or ".join(n for n in registered_families() if option in family_class(n).option_defaults) or "none"


class SequenceModel(nn.Module):
    """Recurrent layer + linear head, batch first; see the module docstring for the shapes.

    ``forward(inputs, hx=None, *, reset=None)`` returns ``(output, state)``: the head's output at
    every step, (B, T, O), and the recurrent layer's final state (a tuple for a family of several
    states, such as the LSTM's ``(h, c)``, else ``h``), which can be fed back as ``hx`` to continue a
    sequence (sampling, the gate viewer); ``reset`` (B, T) bool restarts sequence b from the zero
    state before step t, as the layer's (:class:`gatedrnn.Recurrent`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        family = config.cell_config()
        if config.input_bias is not None and "i" not in family.gates:
            raise ValueError(
                f"input_bias needs an input gate 'i', but {family.describe()} has gates {', '.join(family.gates)}"
            )
        self.config = config
        if config.vocab_size is not None:
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
            features = config.embedding_dim
        else:
            self.embedding = None
            features = config.input_size
        self.rnn = Recurrent(
            config.cell,
            features,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            forget_bias=config.forget_bias,
            **family.options,
        )
        self.head = nn.Linear(self.rnn.cell_config.output_size, config.output_size)
        if config.input_bias is not None:
            _set_gate_bias(self.rnn, "i", config.input_bias)

    def forward(self, inputs: Tensor, hx=None, *, reset: Tensor | None = None):
        x = self.embedding(inputs) if self.embedding is not None else inputs  # (B, T, I or E)
        hidden, state = self.rnn(x, hx, reset=reset)  # (B, T, R)
        return self.head(hidden), state  # (B, T, O)


def _set_gate_bias(rnn: Recurrent, gate: str, value: float) -> None:
    """Set gate ``gate``'s rows of every ``bias_ih_*`` to ``value`` and of every ``bias_hh_*`` to 0."""
    gates = rnn.cell_config.gates  # the gates with their own rows, in row order
    rows = slice(gates.index(gate) * rnn.hidden_size, (gates.index(gate) + 1) * rnn.hidden_size)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith(("bias_ih", "bias_hh")):
                param[rows] = value if name.startswith("bias_ih") else 0.0


def model_for_task(
    task,
    cell: str,
    hidden_size: int = 64,
    num_layers: int = 1,
    variant: str = "vanilla",
    forget_bias: float | None = None,
    embedding_dim: int = 64,
    input_bias: float | None = None,
    family_options: dict[str, Any] | None = None,
) -> SequenceModel:
    """The model for ``task`` (a :class:`gatedrnn.tasks.Task`): its input, output and vocabulary sizes."""
    return SequenceModel(
        ModelConfig(
            cell=cell,
            input_size=task.input_size,
            output_size=task.output_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            variant=variant,
            forget_bias=forget_bias,
            input_bias=input_bias,
            vocab_size=task.vocab_size,
            embedding_dim=embedding_dim,
            family_options=dict(family_options or {}),
        )
    )


# ----- user families: importing their modules, recording and finding them again ---------------------

_FROM_FILES: dict[str, str] = {}
"""Module name -> the file :func:`import_family_module` imported it from."""


class FamilyNotFoundError(ValueError):
    """A cell family that is not registered and that the module a run recorded does not register."""


def import_family_module(spec: str) -> ModuleType:
    """Import ``spec`` for the cell families it registers: a Python file (a path ending in ``.py``,
    or any existing file), imported as a module named after its stem and executed afresh on every
    call, or a module name (``my_package.cells``). ImportError saying why when it cannot be."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        return _import_file(path)
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise ImportError(f"no file or importable module {spec!r} ({e})") from e


def _import_file(path: Path) -> ModuleType:
    """Execute the Python file ``path`` as the module named after its stem."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"no such file {str(path)!r}")
    name = path.stem
    if not name.isidentifier():
        raise ImportError(
            f"{str(path)!r}: the file name must be a Python module name (letters, digits, _), got {name!r}"
        )
    taken = sys.modules.get(name)
    if taken is not None and name not in _FROM_FILES:  # a module of its own, not a file read before
        raise ImportError(
            f"{str(path)!r}: a module named {name!r} is already imported "
            f"({getattr(taken, '__file__', None) or 'built in'}); rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{str(path)!r} is not a Python file Python can import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _FROM_FILES[name] = str(path)
    return module


def family_record(cell: str) -> dict[str, str]:
    """What a run records of its family: :func:`gatedrnn.cells.family.family_origin` (name, module,
    class) and, for a module :func:`import_family_module` read from a file, that ``file``."""
    origin = family_origin(family_class(cell))
    if origin["module"] in _FROM_FILES:
        origin["file"] = _FROM_FILES[origin["module"]]
    return origin


def require_family(cell: str, record: object = None) -> None:
    """Make the family ``cell`` available: nothing when it is registered; else import the installed
    module that ``record`` (a run's :func:`family_record`) names. A family read from a file is not
    imported again from the path the run records: a run directory is data, and executing a file it
    names would run whatever code was put there; the error names the file for ``--family-module``.

    Raises:
        FamilyNotFoundError: one line naming the family, where the run says it came from and why
            it is still not registered.
    """
    if cell in registered_families():
        return
    record = record if isinstance(record, dict) and record.get("name") == cell else {}
    why = _import_recorded(record)
    if cell in registered_families():
        return
    where = ", ".join(f"{key} {record[key]}" for key in ("module", "class") if isinstance(record.get(key), str))
    where += f", from {record['file']}" if isinstance(record.get("file"), str) else ""
    raise FamilyNotFoundError(
        f"the run's cell family {cell!r}{f' ({where})' if where else ''} is not registered ({why}): pass "
        "--family-module PATH_OR_MODULE naming the file or module that registers it (registered: "
        f"{', '.join(registered_families())})"
    )


def _import_recorded(record: dict[str, Any]) -> str:
    """Import the installed module a run's family record names (never its file); returns why that
    may not have registered the family, for :func:`require_family`'s message."""
    module, file = record.get("module"), record.get("file")
    if isinstance(file, str):
        return "a file a run names is executed only when given as --family-module"
    if module == "__main__":
        return "it was defined in the script that trained the run"
    if not isinstance(module, str):
        return "the run does not record where it came from"
    try:
        _reimport(module)
    except Exception as e:  # the user's module failed: its error, on the one line
        return f"importing it failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return "importing its module did not register it"


def _reimport(module: str) -> None:
    """Import ``module``, executing it again if it was imported before (its family unregistered since)."""
    if module in sys.modules:
        importlib.reload(sys.modules[module])
    else:
        importlib.import_module(module)
