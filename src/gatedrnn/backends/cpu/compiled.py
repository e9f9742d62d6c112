"""The CPU backend's compiled LSTM loop (``csrc/lstm_loop.cpp``): built on first use, then cached.

The Python loop of :mod:`.lstm` drives each step with a dozen small aten calls, whose per-call
cost (a few microseconds each, serial, in Python) is what keeps a layer-norm or peephole LSTM
behind torch.nn's native loop at training sizes. The compiled loop runs the same steps in C++:
the matrix products through ATen, the gate math one vectorised pass per batch row, the rows split
over the intra-op threads. It computes what :mod:`.lstm`'s loop computes (the same equations, the
same saved state), and is tested against the reference loop in float64 like it.

It covers every LSTM variant but ``fgr`` (whose gate recurrence stays in :mod:`.lstm`), in float32
and float64, with layer norm, projection, zoneout, packed lengths and recurrent dropout.

Building needs a C++ compiler and ninja (a dependency of gatedrnn); it takes about 20 s once per
machine, torch version and source, in torch's extension cache (``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``). Where it cannot be built the backend says why once (a
``RuntimeWarning``) and runs the Python loop, which gives the same results more slowly. Set
``GATEDRNN_CPU_COMPILED=0`` to skip the build and always run the Python loop.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ...config import CellConfig
from .function import Plan
from .lstm import Layout

ENV = "GATEDRNN_CPU_COMPILED"
_SOURCE = Path(__file__).with_name("csrc") / "lstm_loop.cpp"
_DTYPES = (torch.float32, torch.float64)

# compiler flags for the vector instruction set torch itself dispatches to on this CPU, so that
# ATen's Vectorized<T> (and Sleef's exp and tanh behind it) use the same width as torch's kernels
_ISA_FLAGS = {
    "AVX512": (["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"], "CPU_CAPABILITY_AVX512"),
    "AVX2": (["-mavx2", "-mfma", "-mf16c"], "CPU_CAPABILITY_AVX2"),
}


def disabled() -> bool:
    """Whether the user switched the compiled loop off (:data:`ENV` set to 0, false, no or off)."""
    return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


def _build_flags() -> tuple[str, list[str]]:
    """(a name for this build, compiler flags)."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags, macro = _ISA_FLAGS.get(capability, ([], None))
    version = "".join(ch if ch.isalnum() else "_" for ch in torch.__version__)
    name = f"gatedrnn_cpu_{version}_{capability.lower()}"
    return name, ["-O3", *flags, *([f"-D{macro}"] if macro else [])]


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ninja wheel's binary may not be on it (a venv
    used without activating it)."""
    try:
        import ninja
    except ImportError:
        return
    if shutil.which("ninja") is None:
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def unavailable_reason() -> str | None:
    """None once the compiled ops are loaded in this process (building them on first call), else
    why they cannot be (no compiler, no ninja, a failed build). Ignores :data:`ENV`."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler found (looked for {compiler!r}; set CXX to use another)"
    _ninja_on_path()
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    name, flags = _build_flags()
    # loading a cached build takes well under a second: say something only when it is compiling
    notice = threading.Timer(1.0, print, [f"gatedrnn: building the CPU backend's compiled LSTM loop ({name}; once "
                                          "per machine and torch version, about 20 s)"], {"file": sys.stderr})
    notice.start()
    try:
        cpp_extension.load(name, [str(_SOURCE)], extra_cflags=flags, is_python_module=False, verbose=False)
    except Exception as exc:  # a compiler error, a missing header: the Python loop still works
        return f"the build failed: {_first_error(str(exc)) or type(exc).__name__}"
    finally:
        notice.cancel()
    return None


def _first_error(log: str) -> str:
    """The compiler's first error line in a build log (``file:line:col: error: ...``), else the
    log's first line."""
    lines = [line.strip() for line in log.strip().splitlines()]
    errors = [line for line in lines if ": error:" in line or ": fatal error:" in line]
    return (errors or lines or [""])[0]


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(f"gatedrnn: the CPU backend's compiled LSTM loop is unavailable ({reason}); running its "
                  f"Python loop instead, which gives the same results more slowly. Set {ENV}=0 to silence this.",
                  RuntimeWarning, stacklevel=4)


def accepts(cfg: CellConfig, dtype: torch.dtype) -> bool:
    """Whether the compiled loop runs this LSTM layer (building it on first use)."""
    if cfg.family != "lstm" or cfg.variant == "fgr" or dtype not in _DTYPES or disabled():
        return False
    reason = unavailable_reason()
    if reason is not None:
        _warn_once(reason)
    return reason is None


def _layout(cfg: CellConfig) -> list[int]:
    """:class:`.lstm.Layout` as the C++ side reads it: block offsets (-1 for none), then switches."""
    lay = Layout.of(cfg)
    offset = [-1 if s is None else s.start for s in (lay.i, lay.f, lay.o)]
    switches = [cfg.variant == "cifg", cfg.variant == "peephole", cfg.variant != "niaf", cfg.variant != "noaf"]
    return [*offset, lay.g.start, lay.sigmoid_first.stop, *map(int, switches)]


def _weights(w: dict[str, Tensor | None]) -> list[Tensor | None]:
    return [w["weight_hh"], w.get("in_gain"), w.get("in_bias"), w["rec_gain"], w["weight_ch"], w["ln_weight_c"],
            w["ln_bias_c"], w["weight_hr"]]


def _masks(plan: Plan) -> list[Tensor | None]:
    return [plan.keep_h, plan.keep_c, plan.recurrent_mask]


_SAVED = ("states", "cells", "acts", "c_new", "h_hat", "normed", "rstd", "in_stats", "c_stats")


class LSTMLoop:
    """The cell-family interface of :mod:`.lstm` (``forward`` and ``backward`` for
    :class:`.function.Recurrence`), run by the compiled ops, which also normalise the input
    product step by step (saving it, ``xa``, and its statistics instead of its normalised copy)."""

    normalises_input = True

    @staticmethod
    def forward(plan: Plan, xw: Tensor, h0: Tensor, c0: Tensor, w: dict[str, Tensor | None]):
        cfg = plan.cfg
        results = torch.ops.gatedrnn_cpu.lstm_forward(xw, h0, c0, *_weights(w), *_masks(plan), _layout(cfg),
                                                      plan.reverse, cfg.eps)
        saved = {k: (v if v.numel() else None) for k, v in zip(_SAVED, results)}
        if w.get("in_gain") is not None:
            saved["xa"] = xw  # x W^T, normalised again in the backward pass
        states, cells = saved["states"], saved["cells"]
        outputs = (plan.outputs(states), states[plan.final].clone(), cells[plan.final].clone())
        return outputs, saved

    @staticmethod
    def backward(plan: Plan, w: dict[str, Tensor | None], saved: dict[str, Tensor | None], grads: tuple[Tensor, ...]
                 ) -> dict[str, Tensor | None]:
        d_out, d_hn, d_cn = grads
        d_out = d_out if plan.active is None else d_out * plan.active
        s = [saved[k] for k in _SAVED]
        d_z, dh, dc, d_hh, d_gain, d_peep, d_ln_w, d_ln_b, d_hr, d_in_gain, d_in_bias = (
            torch.ops.gatedrnn_cpu.lstm_backward(d_out, d_hn, d_cn, saved.get("xa"), *s, *_weights(w), *_masks(plan),
                                                 _layout(plan.cfg), plan.reverse))
        present = {"rec_gain": d_gain, "weight_ch": d_peep, "ln_weight_c": d_ln_w, "ln_bias_c": d_ln_b,
                   "weight_hr": d_hr, "in_gain": d_in_gain, "in_bias": d_in_bias}
        return {"xw": d_z, "h0": dh, "c0": dc, "weight_hh": d_hh,
                **{k: (g if w.get(k) is not None else None) for k, g in present.items()}}
