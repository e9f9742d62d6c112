"""Cell families: what one recurrent cell computes, and the registry that names them.

A family is a subclass of :class:`CellFamily` that declares its gates and states and implements one
time step. The layer machinery (:class:`gatedrnn.Recurrent` and the built-in :class:`gatedrnn.LSTM`,
:class:`gatedrnn.GRU`, :class:`gatedrnn.RNN`), the backends, gate inspection, training and the viewer
ask the family for everything particular to it; nothing else compares family names.

An instance is one configured cell (a family, its hidden size and its options): a hashable value that
every backend reads. The minimal contract, for a family of G gates and H units::

    x_proj = family.input_projection(x, weights)          # (..., G*H), default x W_ih^T + b_ih
    carry = family.initial_carry(states)                  # default: the states themselves
    new_carry, gate_values = family.step(x_proj_t, carry, recurrent_weights)

A family has a fused kernel in a fast backend only where it says so (:meth:`CellFamily.kernels`);
elsewhere the backends refuse it and ``backend="auto"`` runs it on the reference loop, never on
another family's kernel.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

LayerWeights = dict[str, Tensor]
"""One layer's and direction's parameters keyed by their names without the ``_l{k}[_reverse]`` suffix."""

INPUT_KEYS = ("weight_ih", "bias_ih")
"""The parameters of the input projection, which :meth:`CellFamily.step` does not receive."""

TORCH_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
"""The parameters torch's fused kernels take, in their order (per layer and direction)."""

# Hooks whose override by a subclass makes the kernels of the class above it compute other math.
_MATH_HOOKS = (
    "step",
    "step_with_recurrent_input",
    "run_sequence",
    "input_projection",
    "initial_carry",
    "parameter_shapes",
    "extra_parameter_shapes",
    "state_sizes",
    "gates",
    # the parts of the step that the built-in families factor out (a missing name never matches)
    "recurrent_part",
    "coefficients",
    "candidate",
)


class CellFamily:
    r"""The base class of a cell family: its math, names, parameters and backend hooks.

    A subclass declares:

    - ``name`` (str): the name it is registered under (:func:`register_family`), e.g. ``"mgu"``;
    - ``gates`` (tuple of str): the gate names, the order of the H-row blocks of ``weight_ih``,
      ``weight_hh``, ``bias_ih`` and ``bias_hh`` (each of G*H rows for G gates);
    - ``states`` (tuple of str): the state names; the first is the output h;

    and implements :meth:`step`. ``option_defaults`` declares the family's own keyword options
    with their defaults; each is an attribute of the instance.

    Args:
        hidden_size: H, the number of units.
        bias: whether ``bias_ih`` and ``bias_hh`` exist.
        **options: values for the names in ``option_defaults``.

    Example (the minimal gated unit, Zhou et al. 2016)::

        >>> import torch, gatedrnn
        >>> class MGU(gatedrnn.CellFamily):
        ...     name, gates, states = "mgu-example", ("f", "n"), ("h",)
        ...     def step(self, x_proj, states, weights):
        ...         (h,) = states
        ...         x_f, x_n = x_proj.split(self.hidden_size, dim=-1)
        ...         u_f, u_n = weights["weight_hh"].split(self.hidden_size)
        ...         f = torch.sigmoid(x_f + h @ u_f.T)
        ...         n = torch.tanh(x_n + (f * h) @ u_n.T)
        ...         return ((1 - f) * h + f * n,), {"f": f, "n": n}
        >>> layer = gatedrnn.Recurrent(MGU, 3, 4, bias=False)
        >>> output, h_n = layer(torch.randn(5, 2, 3))
        >>> output.shape, h_n.shape
        (torch.Size([5, 2, 4]), torch.Size([1, 2, 4]))
    """

    name: ClassVar[str] = ""
    gates: ClassVar[tuple[str, ...]] = ()
    states: ClassVar[tuple[str, ...]] = ("h",)
    option_defaults: ClassVar[Mapping[str, Any]] = {}
    memory_state: ClassVar[str | None] = None
    """The state that holds the cell's long-term memory, for the viewer (default: the first state)."""
    retention_gate: ClassVar[str | None] = None
    """The gate whose value near 1 keeps the memory (the LSTM's f, the GRU's z), for the viewer; None if none."""
    display_name: ClassVar[str] = ""
    """How the viewer names the cell in titles, tables and figures (default: ``name`` in capitals)."""
    descriptions: ClassVar[Mapping[str, str]] = {}
    """For the viewer: what each of :attr:`trace_names` means, one line each (default: none; the viewer
    then names the role the family declares for it: the output, the memory state, the retention gate)."""

    def __init__(self, hidden_size: int, *, bias: bool = True, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            known = ", ".join(self.option_defaults) or "none"
            raise TypeError(
                f"{self.title()}: unknown option(s) {', '.join(unknown)}; the family {self.name!r} takes: {known}"
            )
        self.hidden_size = hidden_size
        self.bias = bias
        for key, default in self.option_defaults.items():
            setattr(self, key, options.get(key, default))
        self.check_options()

    # ----- identity -------------------------------------------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        """The family's options with their values (``option_defaults``' names)."""
        return {key: getattr(self, key) for key in self.option_defaults}

    def _key(self) -> tuple:
        return (type(self), self.hidden_size, self.bias, tuple(sorted(self.options.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellFamily) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        args = [str(self.hidden_size)] + ([] if self.bias else ["bias=False"])
        args += [f"{k}={v!r}" for k, v in self.options.items() if v != self.option_defaults[k]]
        return f"{type(self).__name__}({', '.join(args)})"

    def describe(self) -> str:
        """A short human description for messages: the name and the options not at their default."""
        return " ".join([self.name] + [f"{k}={v!r}" for k, v in self.options.items() if v != self.option_defaults[k]])

    def check_options(self) -> None:
        """Hook: raise a clear error for an option value the family cannot take (default: none checked)."""

    @classmethod
    def configurations(cls) -> tuple[dict[str, Any], ...]:
        """Hook: option sets that between them reach every distinct path of the family's math (its
        variants), which the test catalogue and the benchmarks run. Default: the defaults alone."""
        return ({},)

    # ----- the viewer -----------------------------------------------------------------------------

    @classmethod
    def title(cls) -> str:
        """The cell's name in the viewer: :attr:`display_name`, else ``name`` in capitals (``"LSTM"``)."""
        return cls.display_name or cls.name.upper()

    def retention(self, values: Mapping[str, Any]) -> tuple[str, Any] | None:
        """Hook, for the viewer: the fraction a of its memory the cell keeps from one step to the
        next, as (how it is computed, its values), from recorded values (:attr:`trace_names` ->
        arrays or tensors of one shape, e.g. (T, H)). A unit that keeps a fraction a per step holds
        an input for about 1 / (1 - a) steps. Default: the :attr:`retention_gate`'s values (the
        LSTM's f, the GRU's z); None for a family without one (the RNN)."""
        gate = self.retention_gate
        return None if gate is None else (gate, values[gate])

    # ----- sizes and parameters -------------------------------------------------------------------

    @property
    def num_gates(self) -> int:
        """G, the number of gate blocks of ``weight_ih``'s rows."""
        return len(self.gates)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """The size of each state, in ``states`` order (default: H for each)."""
        return (self.hidden_size,) * len(self.states)

    @property
    def zoneout_states(self) -> int:
        """How many of the leading states zoneout acts on (default: all); the others are taken as
        the step computes them (the LSTM ``fgr`` variant's previous gates)."""
        return len(self.states)

    @property
    def output_size(self) -> int:
        """R, the size of h as the layer outputs it (the first state)."""
        return self.state_sizes[0]

    @property
    def trace_names(self) -> tuple[str, ...]:
        """What gate inspection records per step (default: the gates, then the states)."""
        return tuple(dict.fromkeys(self.gates + self.states))

    def parameter_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """The shape of each parameter of one layer and direction, in registration order.

        Default: ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, R), ``bias_ih`` and ``bias_hh`` (G*H,)
        with ``bias``, then :meth:`extra_parameter_shapes`. A family may drop or reshape any of them
        (no ``weight_hh``, or a 3-D one).
        """
        rows = self.num_gates * self.hidden_size
        shapes = {"weight_ih": (rows, input_size), "weight_hh": (rows, self.output_size)}
        if self.bias:
            shapes.update(bias_ih=(rows,), bias_hh=(rows,))
        return {**shapes, **self.extra_parameter_shapes()}

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Hook: the family's own parameters beyond torch.nn's four, by short name (default: none)."""
        return {}

    def init_parameter(self, key: str, tensor: Tensor) -> None:
        """Hook: initialise one parameter in place (called in registration order, under no_grad).

        Default, torch.nn's: U(-1/sqrt(H), 1/sqrt(H)); layer-norm gains (``ln_weight*``) 1 and shifts
        (``ln_bias*``) 0.
        """
        if key.startswith("ln_weight"):
            tensor.fill_(1.0)
        elif key.startswith("ln_bias"):
            tensor.zero_()
        else:
            stdv = 1.0 / math.sqrt(self.hidden_size)
            tensor.uniform_(-stdv, stdv)

    # ----- the math -------------------------------------------------------------------------------

    def input_projection(self, x: Tensor, weights: LayerWeights) -> Tensor:
        """Hook: the input's part of the gate pre-activations, ``x W_ih^T + b_ih``: (..., I) -> (..., G*H).

        It depends on x alone, so a layer computes it for the whole sequence in one product.
        """
        a = x.matmul(weights["weight_ih"].t())
        return a + weights["bias_ih"] if "bias_ih" in weights else a

    def initial_carry(self, states: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Hook: what the time loop carries, from the user-visible states (default: the states).
        A family may carry more (the first ``len(states)`` entries stay the states)."""
        return tuple(states)

    def step(
        self, x_proj: Tensor, states: tuple[Tensor, ...], weights: LayerWeights
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """One time step: the family's math.

        Args:
            x_proj: (B, G*H) this step's input projection (:meth:`input_projection`).
            states: the carried states at t-1, each (B, size) (:meth:`initial_carry`).
            weights: the layer's recurrent parameters by short name (``"weight_hh"``, ``"bias_hh"`` and
                any the family declares; not ``weight_ih``/``bias_ih``).

        Returns:
            The new states (same structure) and the gate values by name, each (B, H), for inspection.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement step(x_proj, states, weights)")

    def step_with_recurrent_input(
        self, x_proj: Tensor, states: tuple[Tensor, ...], weights: LayerWeights, h_in: Tensor
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """Hook: a step where h_{t-1} enters the recurrence as ``h_in`` (recurrent dropout's masked h).

        Default: :meth:`step` with ``h_in`` in place of the first state throughout the step. The
        built-in families use ``h_in`` in their recurrent products only and the undropped h elsewhere.
        """
        return self.step(x_proj, (h_in, *states[1:]), weights)

    def run_sequence(
        self, x_proj: Tensor, states: tuple[Tensor, ...], weights: LayerWeights, lengths: Tensor | None, reverse: bool
    ) -> tuple[Tensor, tuple[Tensor, ...]] | None:
        """Hook: the whole of one layer and direction at once, for a family whose recurrence allows
        it (a scan over time); the reference loop calls it when no regularisation or recording asks
        for steps. It must compute what the step loop does, with the same padding rules (an inactive
        step keeps the state and outputs zeros; ``reverse`` walks t = T-1 .. 0).

        Args:
            x_proj: (T, B, G*H) the input projection of the whole sequence.
            states: the initial states, each (B, size).
            weights: the recurrent parameters, as :meth:`step` receives them.
            lengths: (B,) sequence lengths, or None when all are T.
            reverse: run backwards in time.

        Returns:
            (output (T, B, R), final states), or None to run the step loop (the default).
        """
        return None

    def record(self, gate_values: dict[str, Tensor], states: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """Hook: the values gate inspection records at one step, from the step's gate values and the
        carried states after it (zoneout and the length mask applied): :attr:`trace_names` each (B, H)."""
        values = {**gate_values, **dict(zip(self.states, states))}
        missing = [n for n in self.trace_names if n not in values]
        if missing:
            raise KeyError(
                f"{type(self).__name__}.step returned no value for {', '.join(missing)}: "
                f"expected gate values for {', '.join(self.trace_names)}"
            )
        return {n: values[n] for n in self.trace_names}

    # ----- backend hooks --------------------------------------------------------------------------

    def kernels(self) -> Mapping[str, str]:
        """Hook: backend name -> the name of that backend's fused kernel that computes exactly this
        configured cell (``"torch"`` -> torch's mode such as ``"LSTM"``). Default: none, so the
        family runs on the reference loop."""
        return {}

    def kernel(self, backend: str) -> str | None:
        """The kernel of ``backend`` that computes this cell, or None. A subclass that overrides the
        math (:data:`_MATH_HOOKS`) without declaring kernels of its own gets none of its parent's."""
        names = self.__dict__.get("_kernel_names")
        if names is None:  # looked up once per configured family: every forward call asks
            names = dict(self.kernels()) if _keeps_its_kernels(type(self)) else {}
            self.__dict__["_kernel_names"] = names
        return names.get(backend)

    @property
    def torch_mode(self) -> str | None:
        """torch's own mode name (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``) when torch.nn
        computes exactly this cell, else None."""
        return self.kernel("torch")


_KEEPS_KERNELS: dict[type, bool] = {}  # a plain dict, not functools.cache: dynamo warns on that


def _keeps_its_kernels(cls: type) -> bool:
    """Whether the kernels ``cls`` declares (or inherits) compute its math: False when a class below
    the one that declares :meth:`CellFamily.kernels` overrides a hook of :data:`_MATH_HOOKS`. Looked
    up once per class (every forward call asks)."""
    if cls not in _KEEPS_KERNELS:
        owner = _defining_class(cls, "kernels")
        _KEEPS_KERNELS[cls] = not any(
            _defining_class(cls, hook) is not owner and issubclass(_defining_class(cls, hook), owner)
            for hook in _MATH_HOOKS
        )
    return _KEEPS_KERNELS[cls]


def _defining_class(cls: type, attr: str) -> type:
    """The class of ``cls``'s MRO whose own namespace defines ``attr``."""
    for klass in cls.__mro__:
        if attr in vars(klass):
            return klass
    return object


# ----- the registry ----------------------------------------------------------------------------------

_REGISTRY: dict[str, type[CellFamily]] = {}


def _check_family_class(cls: object) -> type[CellFamily]:
    """Return ``cls`` if it is a well-formed family class, else raise TypeError/ValueError saying why."""
    if not (isinstance(cls, type) and issubclass(cls, CellFamily)) or cls is CellFamily:
        raise TypeError(f"expected a subclass of gatedrnn.CellFamily, got {cls!r}")
    where = cls.__qualname__
    if not isinstance(cls.name, str) or not cls.name or cls.name != cls.name.strip():
        raise ValueError(f"{where}: expected `name` to be a non-empty string, got {cls.name!r}")
    for attr in ("gates", "states"):
        value = getattr(cls, attr)
        if isinstance(value, property):
            continue
        if (
            not isinstance(value, tuple)
            or not value
            or not all(isinstance(v, str) and v for v in value)
            or len(set(value)) != len(value)
        ):
            raise ValueError(f"{where}: expected `{attr}` to be a non-empty tuple of distinct names, got {value!r}")
    if _defining_class(cls, "step") is CellFamily:
        raise TypeError(f"{where}: a family must implement step(self, x_proj, states, weights)")
    return cls


def register_family(cls: type[CellFamily]) -> type[CellFamily]:
    """Register a :class:`CellFamily` subclass under its ``name``; returns it (usable as a decorator).

    Registering another class under a taken name raises ValueError (call :func:`unregister_family`
    first); the same class, or a re-import of the same module's class, replaces itself.

    Example::

        >>> import torch, gatedrnn
        >>> @gatedrnn.register_family
        ... class Leaky(gatedrnn.CellFamily):  # h' = (1 - a) h + a tanh(W x + U h + b), a = 0.5
        ...     name = "leaky"
        ...     gates = ("n",)
        ...     states = ("h",)
        ...
        ...     def step(self, x_proj, states, weights):
        ...         (h,) = states
        ...         n = torch.tanh(x_proj + h @ weights["weight_hh"].T + weights["bias_hh"])
        ...         return (0.5 * h + 0.5 * n,), {"n": n}
        >>> output, h_n = gatedrnn.Recurrent("leaky", 3, 4)(torch.randn(5, 2, 3))
        >>> output.shape
        torch.Size([5, 2, 4])
        >>> gatedrnn.unregister_family("leaky")
    """
    cls = _check_family_class(cls)
    taken = _REGISTRY.get(cls.name)
    if taken is not None and (taken.__module__, taken.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"a cell family named {cls.name!r} is already registered ({_origin(taken)}); "
            "unregister_family it first or choose another name"
        )
    _REGISTRY[cls.name] = cls
    return cls


def unregister_family(name: str) -> None:
    """Remove the family registered as ``name`` (KeyError if none is).

    Example::

        >>> import gatedrnn
        >>> class Plain(gatedrnn.cells.rnn.RNNFamily):
        ...     name = "plain"
        >>> _ = gatedrnn.register_family(Plain)
        >>> gatedrnn.unregister_family("plain")
        >>> "plain" in gatedrnn.registered_families()
        False
    """
    if name not in _REGISTRY:
        raise KeyError(f"no cell family named {name!r} is registered; registered: {', '.join(_REGISTRY)}")
    del _REGISTRY[name]


def registered_families() -> tuple[str, ...]:
    """The names of the registered families, in registration order (the built-ins first).

    Example::

        >>> import gatedrnn
        >>> gatedrnn.registered_families()[:3]
        ('lstm', 'gru', 'rnn')
    """
    return tuple(_REGISTRY)


def family_class(family: str | type[CellFamily]) -> type[CellFamily]:
    """The family class for a registered name or a :class:`CellFamily` subclass (registered or not)."""
    if isinstance(family, str):
        if family not in _REGISTRY:
            raise ValueError(
                f"unknown cell family {family!r}: expected one of {', '.join(map(repr, _REGISTRY))} "
                "or a gatedrnn.CellFamily subclass (register a family with gatedrnn.register_family)"
            )
        return _REGISTRY[family]
    return _check_family_class(family)


def _origin(cls: type) -> str:
    """Where a family class comes from: its module and, for one loaded from a file, the file."""
    source = inspect.getsourcefile(cls) if cls.__module__ not in ("__main__",) else None
    return f"{cls.__module__}.{cls.__qualname__}" + (f" in {source}" if source else "")


def family_origin(cls: type[CellFamily]) -> dict[str, str]:
    """What a saved run records to find a family again: its name, module and class."""
    return {"name": cls.name, "module": cls.__module__, "class": cls.__qualname__}


__all__ = [
    "CellFamily",
    "LayerWeights",
    "family_class",
    "family_origin",
    "register_family",
    "registered_families",
    "unregister_family",
]
