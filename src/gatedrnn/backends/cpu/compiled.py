"""The CPU backend's compiled loops (``csrc/``): built on first use, then cached.

The Python loops of :mod:`.lstm` and :mod:`.gru` drive each step with a dozen small aten calls,
whose per-call cost (a few microseconds each, serial, in Python) is what keeps a layer-norm or
peephole LSTM behind torch.nn's native loop at training sizes. The compiled loops run the same
steps in C++: one parallel region per step over blocks of batch rows, in which each thread runs
its rows' matrix products (ATen) and their gate math (one vectorised pass per row, with ATen's
``Vectorized`` and Sleef's exp and tanh). They also normalise the input product step by step
when the layer has layer norm, so that no normalised copy of the whole sequence is made. They
compute what the Python loops compute and are tested against the reference loop in float64
like them.

They cover every LSTM variant (``fgr``'s gate recurrence included) and both GRU forms, in float32
and float64, with layer norm, projection, peepholes, zoneout, packed lengths, recurrent dropout
and restarts (``reset``).

Building needs a C++ compiler and ninja (a dependency of gatedrnn); it takes about 30 s once per
machine, torch version and source, in torch's extension cache (``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``). Where it cannot be built the backend says why once (a
``RuntimeWarning``) and runs the Python loops, which give the same results more slowly. Set
``GATEDRNN_CPU_COMPILED=0`` to skip the build and always run the Python loops. The steps' rows
are split between threads only where the build has OpenMP (GCC on Linux, see
:func:`_openmp_flags`); elsewhere each step runs on one thread. Processes building at once (DDP
ranks) wait for one build, and a build killed midway does not block the next (:func:`_build_lock`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shlex
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from ...cells.family import CellFamily
from . import fake
from .function import Plan
from .lstm import Layout

ENV = "GATEDRNN_CPU_COMPILED"
_SOURCE_DIR = Path(__file__).with_name("csrc")
_SOURCES = sorted(str(p) for p in _SOURCE_DIR.glob("*.cpp"))
DTYPES = (torch.float32, torch.float64)
"""What the compiled loops compute in (other dtypes run the Python loops)."""

# compiler flags for the vector instruction set torch itself dispatches to on this CPU, so that
# ATen's Vectorized<T> (and Sleef's exp and tanh behind it) use the same width as torch's kernels
_ISA_FLAGS = {
    "AVX512": (["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"], "CPU_CAPABILITY_AVX512"),
    "AVX2": (["-mavx2", "-mfma", "-mf16c"], "CPU_CAPABILITY_AVX2"),
}


def disabled() -> bool:
    """Whether the user switched the compiled loops off (:data:`ENV` set to 0, false, no or off)."""
    return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


def _openmp_flags(compiler: str) -> list[str]:
    """``-fopenmp`` where torch's intra-op threads are OpenMP's (GNU libgomp, which torch's Linux
    wheels load) and the compiler is GCC, whose OpenMP runtime is that same libgomp; else none.

    ATen's ``parallel_for`` is a header template: compiled without OpenMP it runs every step's
    rows in one serial call, whatever ``torch.get_num_threads()`` says. Another compiler's runtime
    (clang's libomp) would start threads that libgomp, loaded first, may not number (each would
    take the first block of rows), so there the loops stay serial (correct, one thread a step)."""
    from torch.utils import cpp_extension

    if not sys.platform.startswith("linux") or not torch._C.has_openmp:
        return []
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return []
    try:
        return ["-fopenmp"] if cpp_extension.check_compiler_is_gcc(compiler) else []
    except Exception:  # an unusual CXX: build without
        return []


def _build_flags(compiler: str = "c++") -> tuple[str, list[str], list[str]]:
    """(a name for this build, compiler flags, linker flags)."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags, macro = _ISA_FLAGS.get(capability, ([], None))
    openmp = _openmp_flags(compiler)
    cflags = ["-O3", *flags, *([f"-D{macro}"] if macro else []), *openmp]
    version = "".join(ch if ch.isalnum() else "_" for ch in torch.__version__)
    # torch rebuilds when a listed source changes, not when a header does: name the sources' hash
    # (and the flags', so that builds with and without OpenMP keep apart)
    sources = b"".join(p.read_bytes() for p in sorted(_SOURCE_DIR.iterdir()) if p.is_file())
    digest = hashlib.sha256(sources + " ".join(cflags).encode())
    name = f"gatedrnn_cpu_{version}_{capability.lower()}_{digest.hexdigest()[:10]}"
    return name, cflags, openmp


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; put the ninja wheel's binary first there, so that
    every process builds with the same ninja: the wheel's may be missing from PATH (a venv used
    without activating it), and a system ninja of another version reads the wheel's build log as
    stale, so alternating between the two rebuilt the loops (about 20 s) on every switch."""
    try:
        import ninja
    except ImportError:
        return
    wheel = shutil.which("ninja", path=ninja.BIN_DIR)
    if wheel is not None and shutil.which("ninja") != wheel:
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@contextlib.contextmanager
def _build_lock(build_dir: str | None) -> Iterator[None]:
    """Serialise this extension's builds across processes (DDP ranks, parallel test runs) with a
    lock the kernel releases when its holder dies, and clear torch's own lock file if one is left.

    torch's builder guards a build directory with a plain ``lock`` file that it waits on forever;
    a build killed by a signal (SIGTERM or SIGKILL: a timeout, a cancelled CI job, torchrun ending
    its workers) leaves that file behind, and every later process would hang on it in silence.
    Every process that builds here holds this flock while torch's file exists, so a ``lock`` found
    while holding the flock is such a leftover."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file only
        fcntl = None
    if fcntl is None or build_dir is None:
        yield
        return
    with open(os.path.join(build_dir, "gatedrnn.lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(build_dir, "lock"))
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _build_directory(cpp_extension, name: str) -> str | None:
    """The directory ``cpp_extension.load`` builds ``name`` in (created), from torch's private
    helper; None where this torch lacks it (``load`` then picks the same one itself, unlocked)."""
    find = getattr(cpp_extension, "_get_build_directory", None)
    return None if find is None else find(name, False)


def _compiler_found(compiler: str) -> bool:
    """Whether ``compiler`` (CXX, which may carry a launcher or flags: ``ccache g++``) runs."""
    try:
        words = shlex.split(compiler)
    except ValueError:  # an unbalanced quote: take it as one name
        words = [compiler]
    return bool(words) and shutil.which(words[0]) is not None


@functools.cache
def unavailable_reason() -> str | None:
    """None once the compiled ops are loaded in this process (building them on first call), else
    why they cannot be (no compiler, no ninja, a failed build). Ignores :data:`ENV`."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if not _compiler_found(compiler):
        return f"no C++ compiler found (looked for {compiler!r}; set CXX to use another)"
    _ninja_on_path()
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    name, flags, ldflags = _build_flags(compiler)
    # loading a cached build takes well under a second: say something only when it is compiling
    notice = threading.Timer(
        1.0,
        print,
        [
            f"gatedrnn: building the CPU backend's compiled loops ({name}; once "
            "per machine and torch version, about 30 s)"
        ],
        {"file": sys.stderr},
    )
    notice.start()
    try:
        build_dir = _build_directory(cpp_extension, name)
        with _build_lock(build_dir):
            cpp_extension.load(
                name,
                _SOURCES,
                extra_cflags=flags,
                extra_ldflags=ldflags,
                build_directory=build_dir,
                is_python_module=False,
                verbose=False,
            )
    except Exception as exc:  # a compiler error, a missing header, no writable cache: the Python loop still works
        return f"the build failed: {_first_error(str(exc)) or type(exc).__name__}"
    finally:
        notice.cancel()
    fake.register()  # shapes for torch.export and torch.compile's tracing
    return None


def _first_error(log: str) -> str:
    """The compiler's first error line in a build log (``file:line:col: error: ...``), else the
    log's first line."""
    lines = [line.strip() for line in log.strip().splitlines()]
    errors = [line for line in lines if ": error:" in line or ": fatal error:" in line]
    return (errors or lines or [""])[0]


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"gatedrnn: the CPU backend's compiled loops are unavailable ({reason}); running its "
        f"Python loops instead, which give the same results more slowly. Set {ENV}=0 to silence this.",
        RuntimeWarning,
        stacklevel=4,
    )


@torch.compiler.disable  # a build check and a file-system probe: nothing for dynamo to trace
def ready() -> bool:
    """Whether the compiled loops run here (building them on first call), saying nothing if not:
    for a choice that has another fast path (:func:`gatedrnn.backends.cpu.beats_torch`)."""
    return not disabled() and unavailable_reason() is None


@torch.compiler.disable  # a build check and a file-system probe: nothing for dynamo to trace
def loop_for(cfg: CellFamily, dtype: torch.dtype) -> type | None:
    """The compiled loop that runs this layer (building the loops on first use), or None: the
    ``lstm`` kernel's for every variant, the ``gru`` kernel's for both reset forms (by the kernel
    ``cfg`` names, :meth:`CellFamily.kernel`), in float32 and float64."""
    loop = {"lstm": LSTMLoop, "gru": GRULoop}.get(cfg.kernel("cpu"))
    return loop if loop is not None and ops_run(dtype) else None


@torch.compiler.disable  # a build check and a file-system probe: nothing for dynamo to trace
def ops_run(dtype: torch.dtype) -> bool:
    """Whether the compiled ops run ``dtype`` here (building them on first use; saying once why
    not where they cannot be built): for :func:`loop_for` and the layer kernels that call their
    ops themselves (:mod:`.slstm`)."""
    if dtype not in DTYPES or disabled():
        return False
    reason = unavailable_reason()
    if reason is not None:
        _warn_once(reason)
        return False
    return True


def _layout(cfg: CellFamily) -> list[int]:
    """:class:`.lstm.Layout` as the C++ side reads it: block offsets (-1 for none), then switches."""
    lay = Layout.of(cfg)
    offset = [-1 if s is None else s.start for s in (lay.i, lay.f, lay.o)]
    switches = [cfg.variant == "cifg", cfg.variant == "peephole", cfg.variant != "niaf", cfg.variant != "noaf"]
    return [*offset, lay.g.start, lay.sigmoid_first.stop, *map(int, switches)]


def _weights(w: dict[str, Tensor | None]) -> list[Tensor | None]:
    return [
        w["weight_hh"],
        w.get("in_gain"),
        w.get("in_bias"),
        w["rec_gain"],
        w["weight_ch"],
        w["ln_weight_c"],
        w["ln_bias_c"],
        w["weight_hr"],
        w["weight_gg"],
    ]


def restart_mask(plan: Plan) -> Tensor | None:
    """The ops' ``restart`` (T, B) bool: the plan's restarts in walk order, or None."""
    return None if plan.reset is None else plan.reset[..., 0]


def _masks(plan: Plan) -> list[Tensor | None]:
    return [plan.keep_h, plan.keep_c, plan.recurrent_mask, plan.active, restart_mask(plan)]


def _present(grads: dict[str, Tensor], w: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """The gradients of the weights this layer has (the ops return empty tensors for the others)."""
    return {k: (g if w.get(k) is not None else None) for k, g in grads.items()}


def _saved(
    names: tuple[str, ...], results: list[Tensor], xw: Tensor, w: dict[str, Tensor | None]
) -> dict[str, Tensor | None]:
    """A forward op's results by name (None for the empty ones), with x W^T when layer norm will
    normalise it again in the backward pass."""
    saved = {k: (v if v.numel() else None) for k, v in zip(names, results)}
    if w.get("in_gain") is not None:
        saved["xa"] = xw
    return saved


_SAVED = ("states", "cells", "acts", "c_new", "h_hat", "normed", "rstd", "in_stats", "c_stats")


class LSTMLoop:
    """The kernel interface of :mod:`.lstm` (``forward`` and ``backward`` for
    :class:`.function.Recurrence`), run by the compiled ops, which also normalise the input
    product step by step (saving it, ``xa``, and its statistics instead of its normalised copy)."""

    normalises_input = True

    @staticmethod
    def forward(plan: Plan, xw: Tensor, initial: tuple[Tensor, ...], w: dict[str, Tensor | None]):
        cfg = plan.cfg
        h0, c0, gates0 = (*initial, None)[:3]
        results = torch.ops.gatedrnn_cpu.lstm_forward(
            xw, h0, c0, gates0, *_weights(w), *_masks(plan), _layout(cfg), plan.reverse, cfg.eps
        )
        saved = _saved(_SAVED, results, xw, w)
        states, cells = saved["states"], saved["cells"]
        outputs = (plan.outputs(states), states[plan.final].clone(), cells[plan.final].clone())
        if gates0 is not None:  # fgr: the final carried gates, and the initial ones by value for backward
            outputs += (results[len(_SAVED)],)
            saved["gates0"] = gates0.clone()
        return outputs, saved

    @staticmethod
    def backward(
        plan: Plan, w: dict[str, Tensor | None], saved: dict[str, Tensor | None], grads: tuple[Tensor, ...]
    ) -> dict[str, Tensor | None]:
        d_out, d_hn, d_cn = grads[:3]
        d_gates_n = grads[3] if len(grads) > 3 else None
        d_out = d_out if plan.active is None else d_out * plan.active
        s = [saved[k] for k in _SAVED]
        d_z, dh, dc, d_hh, d_gain, d_peep, d_ln_w, d_ln_b, d_hr, d_in_gain, d_in_bias, d_gg, d_gates0 = (
            torch.ops.gatedrnn_cpu.lstm_backward(
                d_out,
                d_hn,
                d_cn,
                d_gates_n,
                saved.get("xa"),
                *s,
                saved.get("gates0"),
                *_weights(w),
                *_masks(plan),
                _layout(plan.cfg),
                plan.reverse,
            )
        )
        present = {
            "rec_gain": d_gain,
            "weight_ch": d_peep,
            "ln_weight_c": d_ln_w,
            "ln_bias_c": d_ln_b,
            "weight_hr": d_hr,
            "in_gain": d_in_gain,
            "in_bias": d_in_bias,
            "weight_gg": d_gg,
        }
        gates0 = d_gates0 if saved.get("gates0") is not None else None
        return {"xw": d_z, "h0": dh, "c0": dc, "gates0": gates0, "weight_hh": d_hh, **_present(present, w)}


_GRU_SAVED = ("states", "acts", "normed", "rstd", "in_stats")


def _gru_weights(w: dict[str, Tensor | None]) -> list[Tensor | None]:
    return [w["weight_hh"], w.get("in_gain"), w.get("in_bias"), w["rec_gain"], w["rec_shift"]]


class GRULoop:
    """The kernel interface of :mod:`.gru`, run by the compiled ops (which normalise the
    input product themselves, as :class:`LSTMLoop`)."""

    normalises_input = True

    @staticmethod
    def forward(plan: Plan, xw: Tensor, initial: tuple[Tensor], w: dict[str, Tensor | None]):
        cfg = plan.cfg
        results = torch.ops.gatedrnn_cpu.gru_forward(
            xw,
            initial[0],
            *_gru_weights(w),
            plan.keep_h,
            plan.recurrent_mask,
            restart_mask(plan),
            cfg.reset_after,
            plan.reverse,
            cfg.eps,
        )
        saved = _saved(_GRU_SAVED, results, xw, w)
        states = saved["states"]
        return (plan.outputs(states), states[plan.final].clone()), saved

    @staticmethod
    def backward(
        plan: Plan, w: dict[str, Tensor | None], saved: dict[str, Tensor | None], grads: tuple[Tensor, ...]
    ) -> dict[str, Tensor | None]:
        d_out, d_hn = grads
        d_out = d_out if plan.active is None else d_out * plan.active
        d_z, dh, d_hh, d_gain, d_shift, d_in_gain, d_in_bias = torch.ops.gatedrnn_cpu.gru_backward(
            d_out,
            d_hn,
            saved.get("xa"),
            *(saved[k] for k in _GRU_SAVED),
            *_gru_weights(w),
            plan.keep_h,
            plan.recurrent_mask,
            restart_mask(plan),
            plan.cfg.reset_after,
            plan.reverse,
        )
        present = {"rec_gain": d_gain, "rec_shift": d_shift, "in_gain": d_in_gain, "in_bias": d_in_bias}
        return {"xw": d_z, "h0": dh, "weight_hh": d_hh, **_present(present, w)}
