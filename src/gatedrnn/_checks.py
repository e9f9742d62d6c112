"""Argument checks shared by the layers and cells: each error says what was expected and what was given.

The error classes keep torch.nn's: where torch.nn raises a RuntimeError for a mistake (an input of
the wrong size, a state of the wrong shape or dtype, tensors on different devices) or a
ValueError (a dropout that is not a number), the error raised here is also one, so that code
written against torch.nn catches it as before.
"""

from __future__ import annotations

import numbers
import sys

import torch
from torch import Tensor

from .config import LSTM_VARIANTS


class InputError(ValueError, RuntimeError):
    """A forward call's tensor of the wrong shape or device: a ValueError, and a RuntimeError as
    torch.nn raises for the same mistake."""


class InputTypeError(TypeError, ValueError, RuntimeError):
    """A forward call's tensor of the wrong dtype: a TypeError, and the ValueError (input) or
    RuntimeError (states) torch.nn raises for it."""


class ArgumentTypeError(TypeError, ValueError):
    """A constructor argument of the wrong type where torch.nn raises a ValueError for it."""


def _is_integer(value: object) -> bool:
    """A Python or numpy integer (a hyperparameter sweep's ``np.int64``), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_numpy_bool(value: object) -> bool:
    """A numpy bool (not a numbers.Integral, unlike Python's)."""
    numpy = sys.modules.get("numpy")  # no numpy imported: no numpy bool can have been made
    return numpy is not None and isinstance(value, numpy.bool_)


def type_name(value: object) -> str:
    """The name of ``value``'s type for a message: ``int``, ``str``, ``Tensor`` for Python's and
    torch's types, with its module for the others (``numpy.bool``, ``numpy.ndarray``), which may
    share a built-in's name."""
    kind = type(value)
    if kind.__module__.partition(".")[0] in ("builtins", "torch"):
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def positive_int(owner: str, name: str, value: object) -> int:
    if not _is_integer(value):
        raise TypeError(f"{owner}: {name} must be an int, got {type_name(value)} ({value!r})")
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value}")
    return int(value)


def flag(owner: str, name: str, value: object) -> bool:
    """One of gatedrnn's own switches (``layer_norm``, ``reset_after``), which torch.nn does not
    have: a bool, a numpy bool, or the int 0 or 1."""
    if isinstance(value, bool) or _is_numpy_bool(value) or (_is_integer(value) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{owner}: {name} must be a bool (or 0 or 1), got {type_name(value)} ({value!r})")


def layer_flag(owner: str, name: str, value: object) -> bool:
    """``bias``, ``batch_first`` or ``bidirectional`` of a layer (LSTM, GRU, RNN) as torch.nn's
    layers take them: a Python bool, else a TypeError.

    torch.nn's layers refuse any other ``bias`` or ``batch_first`` (0, 1, numpy bools and numpy
    ints included) with a TypeError when built. They take any ``bidirectional`` when built, but
    their forward refuses all but a bool with a TypeError; here it is refused when built."""
    if isinstance(value, bool):
        return value
    raise TypeError(f"{owner}: {name} should be of type bool (True or False), got: {type_name(value)} ({value!r})")


def cell_bias(value: object) -> bool:
    """``bias`` of a cell (LSTMCell, GRUCell, RNNCell) as torch.nn's cells take it: any value, by
    its truth (``if bias:``), so ``bias=0`` or ``""`` builds no biases and ``bias=2`` or ``"no"``
    builds them; a value without one raises what ``bool`` raises (a RuntimeError for a tensor of
    several elements), as in torch.nn."""
    return bool(value)


def probability(owner: str, name: str, value: object, *, allow_one: bool) -> float:
    """A number in [0, 1] (``allow_one``) or [0, 1)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ArgumentTypeError(f"{owner}: {name} must be a number, got {type_name(value)} ({value!r})")
    upper_ok = value <= 1 if allow_one else value < 1
    if not (0 <= value and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{owner}: {name} must be in {interval}, got {value}")
    return float(value)


def choice(owner: str, name: str, value: object, options) -> str:
    if value not in options:
        known = ", ".join(repr(o) for o in options)
        raise ValueError(f"{owner}: unknown {name} {value!r}; expected one of {known}")
    return value  # type: ignore[return-value]


def variant(owner: str, value: object) -> str:
    return choice(owner, "variant", value, tuple(LSTM_VARIANTS))


def proj_size(owner: str, value: object, hidden_size: int) -> int:
    if not _is_integer(value):
        raise TypeError(f"{owner}: proj_size must be an int, got {type_name(value)} ({value!r})")
    if value < 0 or value >= hidden_size:
        raise ValueError(
            f"{owner}: proj_size must be 0 (no projection) or in [1, hidden_size={hidden_size}), got {value}"
        )
    return int(value)


def forget_bias(owner: str, value: object, *, bias: bool, has_forget_gate: bool) -> float | None:
    if value is None:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{owner}: forget_bias must be a number or None, got {type_name(value)} ({value!r})")
    if not bias:
        raise ValueError(f"{owner}: forget_bias={value} needs bias=True, got bias=False")
    if not has_forget_gate:
        raise ValueError(f"{owner}: forget_bias={value} needs a forget gate, but variant 'nfg' has none")
    return float(value)


def autocast_on(device_type: str) -> bool:
    """Whether autocast is enabled for ``device_type`` ("cpu", "cuda", ...); torch before 2.4
    takes no device and answers for CUDA."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return device_type == "cuda" and torch.is_autocast_enabled()


def float_tensor(owner: str, name: str, value: object, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``value`` must be a floating-point tensor of the parameters' dtype and device."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: expected {name} to be a Tensor, got {type_name(value)}")
    if not value.is_floating_point():
        raise InputTypeError(
            f"{owner}: expected {name} to be a floating-point tensor of dtype {dtype}, got dtype {value.dtype}"
        )
    if value.dtype != dtype and not autocast_on(value.device.type):
        raise InputTypeError(
            f"{owner}: {name} has dtype {value.dtype} but the parameters are {dtype}; "
            f"convert the tensor with .to({dtype}) or the module with .to({value.dtype})"
        )
    if value.device != device:
        raise InputError(f"{owner}: {name} is on {value.device} but the parameters are on {device}")
    return value


def shape(owner: str, name: str, value: Tensor, expected: tuple[int, ...], legend: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise InputError(f"{owner}: expected {name} of shape {legend} = {tuple(expected)}, got {tuple(value.shape)}")
