"""Backends: the implementations a module can run on, chosen by its ``backend=`` keyword.

- ``"torch"``: torch's own fused kernels (cuDNN on GPU, native on CPU) for the configurations
  torch.nn computes (plain LSTM, GRU with reset after, RNN, without zoneout or recurrent dropout).
  It runs the whole stack in one call.
- Layer backends, which run one layer and direction at a time through ``run_layer`` (see
  :mod:`gatedrnn.backends.reference` for the contract): ``"reference"`` (the plain time loop over any
  family's step, the specification, on any device), ``"cpu"`` (fused forward and backward through
  time on the CPU) and ``"triton"`` (fused GPU kernels), each where it is installed and supports the
  configuration.

A fused backend (``cpu``, ``triton``) runs a family only where the family names one of its
kernels (:meth:`gatedrnn.CellFamily.kernels`); it refuses every other family by name, and those
run on the reference loop.

- ``"auto"``, per call:

  1. ``"torch"`` where it applies, unless the call restarts sequences inside it (``reset=``,
     which torch's kernels cannot do; a module whose only restarts are at step 0 folds them into
     the initial states first, so a stream restarting at the start of a chunk keeps this rule)
     (on CUDA ``"triton"`` instead where a recorded measurement on this GPU says the kernels beat
     cuDNN at this size: see :mod:`gatedrnn.backends.triton.measured`; on the CPU ``"cpu"`` for the plain GRU where its
     measurements say it is faster: :func:`gatedrnn.backends.cpu.beats_torch`);
  2. else the device's fused backend (``"cpu"`` on the CPU, ``"triton"`` on CUDA) where the
     family has a kernel there and the backend supports the call (not under ``torch.func``
     transforms, for instance);
  3. else ``"reference"``, which runs every family on every device, under transforms and tracing
     too.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

from .._checks import autocast_on as _autocast_on
from ..cells.family import CellFamily, LayerWeights

BACKENDS = ("auto", "torch", "reference", "cpu", "triton")
LAYER_BACKENDS = ("reference", "cpu", "triton")
_MODULES = {"reference": ".reference", "cpu": ".cpu", "triton": ".triton"}
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("triton",)}
"""``auto``'s fused layer backends per device type, tried before the reference loop."""


def check_backend_name(backend: object) -> str:
    """Return ``backend`` if it names a known backend, else raise ValueError listing them."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(map(repr, BACKENDS))}")
    return backend


_LOADED: dict[str, ModuleType | None] = {}  # a plain dict, not functools.cache: dynamo warns on that


def load_layer_backend(name: str) -> ModuleType | None:
    """The module of layer backend ``name``, or None where it cannot be imported here (looked up
    once: every forward call asks)."""
    if name not in _LOADED:
        try:
            _LOADED[name] = importlib.import_module(_MODULES[name], __name__)
        except ImportError:
            _LOADED[name] = None
    return _LOADED[name]


def choose(
    backend: str,
    cfg: CellFamily,
    x: Tensor,
    regularised: bool,
    single_layer: bool = True,
    ragged: bool = False,
    reset: bool = False,
) -> str:
    """Resolve ``backend`` (a name from :data:`BACKENDS`) for this configuration and input.

    ``regularised`` is True when zoneout or recurrent dropout act on this call, which torch's
    kernels cannot do; ``single_layer`` when the module has one layer and one direction (the shape
    the GPU measurements cover); ``ragged`` when some sequences of a packed batch are shorter
    than T; ``reset`` when the call restarts sequences inside it, which torch's kernels cannot do
    either. Raises ValueError when an explicitly named backend cannot run it.
    """
    torch_ok = cfg.torch_mode is not None and not regularised
    if backend == "auto":
        if torch_ok and not reset:
            if single_layer and _triton_measured_faster(cfg, x):
                return "triton"
            return "cpu" if _cpu_measured_faster(cfg, x, ragged) else "torch"
        for candidate in _AUTO_ORDER.get(x.device.type, ()):
            module = load_layer_backend(candidate)
            if module is not None and module.supports(cfg, x) is None:
                return candidate
        return "reference"
    if backend == "torch":
        if not torch_ok:
            raise ValueError(
                "backend='torch' runs only what torch.nn computes (plain LSTM, GRU with reset_after=True, "
                f"RNN; no layer norm, zoneout or recurrent dropout), got {describe(cfg, regularised)}"
            )
        if reset:
            raise ValueError(
                "backend='torch' runs torch's kernels, which cannot restart sequences inside a call, got "
                f"a reset mask (reset=...); the layer backends {', '.join(map(repr, LAYER_BACKENDS))} can "
                "(backend='auto' picks one)"
            )
        return "torch"
    module = load_layer_backend(backend)
    if module is None:
        raise ValueError(f"backend {backend!r} is not available in this installation")
    require_support(backend, module.supports(cfg, x))
    return backend


def no_kernel(cfg: CellFamily) -> str:
    """A fused backend's ``supports`` reason for a family that names none of its kernels."""
    return f"it has no kernel for the {cfg.name!r} family ({cfg.describe()})"


def _triton_measured_faster(cfg: CellFamily, x: Tensor) -> bool:
    """On CUDA: whether the Triton kernels run here and a recorded measurement on this GPU says
    they beat cuDNN for this size (:mod:`gatedrnn.backends.triton.measured`); training counts
    the backward pass when grad mode is on."""
    if x.device.type != "cuda":
        return False
    module = load_layer_backend("triton")
    return (
        module is not None
        and module.beats_cudnn(cfg, x, training=torch.is_grad_enabled())
        and module.supports(cfg, x) is None
    )


def _cpu_measured_faster(cfg: CellFamily, x: Tensor, ragged: bool) -> bool:
    """On the CPU: whether the cpu backend's measurements say it beats torch's kernel for this cell
    torch.nn computes (:func:`gatedrnn.backends.cpu.beats_torch`; training when grad mode is on)."""
    if x.device.type != "cpu":
        return False
    module = load_layer_backend("cpu")
    return module is not None and module.beats_torch(cfg, x, training=torch.is_grad_enabled(), ragged=ragged)


def require_support(backend: str, reason: str | None) -> None:
    """Raise the ValueError that names ``backend`` and why it refuses a layer (``reason`` from its
    ``supports``); nothing when ``reason`` is None."""
    if reason is not None:
        raise ValueError(f"backend {backend!r} cannot run this layer: {reason}")


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a fused backend runs ``x`` in: autocast's lower precision where autocast is on for
    ``x``'s device (as cuDNN runs under it), except for float64, which autocast leaves alone; else
    ``x``'s own dtype."""
    if x.dtype != torch.float64 and _autocast_on(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def active_steps(lengths: Tensor, T: int) -> Tensor:
    """(T, B, 1) bool: whether sequence b is active at step t (``t < lengths[b]``), for a fused
    backend's masks; ``lengths`` (B,) on the input's device."""
    return (torch.arange(T, device=lengths.device)[:, None] < lengths[None, :]).unsqueeze(-1)


def sum_present(*parts: Tensor | None) -> Tensor | None:
    """The sum of the given tensors that are not None, or None if all are."""
    present = [p for p in parts if p is not None]
    return sum(present[1:], present[0]) if present else None


def recurrent_shifts(w: LayerWeights, kept_rows: int = 0) -> tuple[Tensor | None, Tensor | None]:
    """The shifts added after the recurrent product (``bias_hh``, plus ``ln_bias_hh`` with layer
    norm), for a fused backend to fold into the input projection: ``(folded, kept)``, where the
    last ``kept_rows`` rows' shift stays inside the recurrence, as the kernel says (the GRU's n
    block when the reset multiplies it after the product): ``kept`` (kept_rows,) is that block and
    ``folded`` (G*H,) has it zeroed; with ``kept_rows`` 0, ``(all of them, None)``. ``(None, None)``
    without any shift."""
    recurrent = sum_present(w.get("bias_hh"), w.get("ln_bias_hh"))
    if kept_rows and recurrent is not None:
        split = recurrent.shape[0] - kept_rows
        return torch.cat([recurrent[:split], recurrent.new_zeros(kept_rows)]), recurrent[split:]
    return recurrent, None


def describe(cfg: CellFamily, regularised: bool = False) -> str:
    """A short human description of a configuration, for error messages."""
    return cfg.describe() + (" zoneout/recurrent dropout" if regularised else "")


def reset_in_walk_order(reset: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """The (T, B) bool mask a layer backend's ``reset`` takes, from the caller's (T, B) ``reset`` (step t
    of sequence b starts a new sequence: the state is restarted from zeros before it).

    Forward, a backend zeros the carry before step t where ``reset[t]``. A reverse direction walks
    t = T-1 .. 0 and meets the boundary after step t, so it zeros the carry before step t - 1: its
    mask is ``reset`` shifted one step earlier. Both keep the state held at inactive steps
    (``t >= lengths[b]``): a reset there, or at a reverse walk's first step, has nothing to act on."""
    T = reset.shape[0]
    if reverse:
        reset = torch.cat([reset[1:], reset.new_zeros((1,) + reset.shape[1:])])
        active = None if lengths is None else active_steps(lengths, T + 1)[1:, :, 0]
    else:
        active = None if lengths is None else active_steps(lengths, T)[:, :, 0]
    return reset if active is None else reset & active
