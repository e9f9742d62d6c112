"""Build the recurrence kernels for a GPU that is not here, and read what the build says.

Triton's compiled path runs ahead of time for any target it knows (``triton.compile`` with a
``GPUTarget``, and the ptxas Triton bundles), so without a GPU one can still check, for the
launch plan a given device would get (:func:`plan_for`):

- that each kernel compiles for the target (sm_90 for the H100 and H200);
- the shared memory Triton allocated, against the planner's estimate (:func:`.launch.resident_bytes`)
  and the device's limit;
- the registers per thread and the bytes spilled to local memory, from the ``ptxas -v`` log of
  Triton's own ptxas call (its ptxas and options for the target), and how many of the spill instructions sit
  inside the step loop
  (from the SASS): a persistent kernel that spills there re-reads part of its state from local
  memory in every step, a speed defect even where the numbers are right, while a spill in the
  prologue (loading the resident weights) costs once per launch.

What it cannot tell: time. Timings need the GPU (``benchmarks/gpu.py``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton

from . import launch
from .launch import KernelSpec

#: kernel arguments that are always float32 (accumulation-precision buffers) in a float16 /
#: bfloat16 / float32 build; the others take the compute dtype, ``len_ptr`` and ``bar_ptr`` int32,
#: ``restart_ptr`` bytes
FLOAT32_BUFFERS = (
    "cs_ptr",
    "gates_ptr",
    "dg_ptr",
    "carry_h_ptr",
    "carry_c_ptr",
    "hat_ptr",
    "hatc_ptr",
    "rstd_ptr",
    "part_ptr",
    "dchat_ptr",
    # the layer kernels' (sLSTM, scan) carried states and gradients
    "ns_ptr",
    "ms_ptr",
    "pre_ptr",
    "dpre_ptr",
    "gh_ptr",
    "gc_ptr",
    "gn_ptr",
    "gm_ptr",
    "dh0_ptr",
)
#: zoneout's keeps: the sampled masks take the compute dtype, the expectation p (``ZO == 2``) float32
ZONEOUT_KEEPS = ("keep_h_ptr", "keep_c_ptr")
_POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


@dataclass(frozen=True)
class Device:
    """What the planner and the compiler need of a GPU: compute capability (90 = sm_90), SM count
    and the opt-in shared memory per block in bytes."""

    name: str
    capability: int
    sm_count: int
    shared_per_block: int


#: the H100 SXM and the H200 have the same SM count and shared memory, so the same plans
H100 = Device("H100 / H200 (sm_90)", 90, 132, 232448)


@dataclass(frozen=True)
class Build:
    """One kernel built for ``device``: its plan, and what the compiler allocated."""

    kernel: str  # "forward" or "backward"
    plan: launch._Launch
    shared_bytes: int  # shared memory Triton allocated per program
    estimate_bytes: int  # the planner's estimate of the resident operands, plus its margin
    registers: int  # per thread
    spill_stores: int  # bytes per thread ptxas spills to local memory (0: no spill)
    spill_loads: int
    loop_spills: int  # local-memory loads and stores (LDL / STL) inside the step loop

    @property
    def spills(self) -> bool:
        """Whether ptxas spilled anything, in the prologue (once per launch) or in the step loop."""
        return self.spill_stores > 0 or self.spill_loads > 0


def plan_for(
    device: Device,
    spec: KernelSpec,
    backward: bool,
    dtype: torch.dtype,
    B: int,
    H: int,
    R: int,
    resident: bool | None = None,
) -> launch._Launch:
    """The plan :func:`.launch._plan` gives a layer on ``device`` (forward direction, no tf32)."""
    return launch._plan(
        spec,
        backward,
        B,
        H,
        R,
        dtype,
        torch.device("cuda"),
        False,
        False,
        resident=resident,
        limits=(device.sm_count, device.shared_per_block),
    )


_DIVISIBLE_BY_16 = [["tt.divisibility", 16]]


def _pointer_type(name: str, consts: dict[str, object], dtype: torch.dtype) -> str:
    """The Triton pointer type of kernel argument ``name`` in a ``dtype`` build: int32 lengths and
    barrier, the restart mask's bytes, float32 for :data:`FLOAT32_BUFFERS` (and zoneout's
    expectation), else ``dtype``."""
    if name in ("len_ptr", "bar_ptr"):
        return "*i32"
    if name == "restart_ptr":
        return "*u8"
    if name in FLOAT32_BUFFERS or (name in ZONEOUT_KEEPS and consts.get("ZO") == 2):
        return "*fp32"
    return _POINTER_TYPES[dtype]


def _specialise(
    kernel, consts: dict[str, object], dtype: torch.dtype, ints: dict[str, int]
) -> tuple[dict[str, str], dict[str, object], dict[tuple[int], list]]:
    """Signature, constexprs and attributes as Triton's launcher would specialise a call with the
    integer arguments ``ints`` (by name) and torch's 16-byte aligned buffers: every pointer and
    every integer divisible by 16 gets ``tt.divisibility = 16``, an integer equal to 1 becomes a
    constant (Triton 3.x's rule, both 3.6 and 3.9). Without these the compiler cannot vectorise
    loads or pipeline loops, and its reports would not be the GPU's."""
    signature: dict[str, str] = {}
    constexprs = dict(consts)
    attrs: dict[tuple[int], list] = {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name == "eps":
            signature[name] = "fp32"
        elif name.endswith("_ptr"):
            signature[name] = _pointer_type(name, consts, dtype)
            attrs[(i,)] = _DIVISIBLE_BY_16
        elif ints[name] == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = _DIVISIBLE_BY_16
    return signature, constexprs, attrs


def compile_for(
    device: Device,
    spec: KernelSpec,
    backward: bool,
    dtype: torch.dtype,
    B: int,
    H: int,
    R: int,
    resident: bool | None = None,
    T: int = 512,
) -> Build:
    """Compile the persistent forward or backward kernel for ``device`` with the plan it would get
    there (weights resident or streamed as the planner decides, unless ``resident`` says) and the
    specialisation a call with these sizes gets, and read its resources. Needs Triton's NVIDIA
    backend and its compiled path: call it in a process without ``TRITON_INTERPRET=1``.
    A GRU with the reset after the matmul is built with its n-block shift (a layer with biases)."""
    if launch.interpreting():
        raise RuntimeError("compile_for needs Triton's compiled path: unset TRITON_INTERPRET (it is set here)")
    if dtype not in _POINTER_TYPES:
        raise ValueError(f"expected dtype in {', '.join(map(str, _POINTER_TYPES))}, got {dtype}")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    plan = plan_for(device, spec, backward, dtype, B, H, R, resident)
    kernel = launch.recurrence_bwd_kernel if backward else launch.recurrence_fwd_kernel
    consts = dict(plan.consts, PHASE=0)
    if not backward:
        consts["HAS_BN"] = spec.split_recurrent_grad
    ints = {"T": T, "B": B, "H": H, "R": R, "s_first": 0, "n_steps": T}  # the persistent launch's
    signature, constexprs, attrs = _specialise(kernel, consts, dtype, ints)
    compiled, log = _compile_with_ptxas_log(
        ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
        GPUTarget("cuda", device.capability, 32),
        plan.num_warps,
    )
    usage = ptxas_report(log)
    c = plan.consts
    estimate = (
        launch.resident_bytes(
            spec, backward, c["BB"], c["BH"], c["KA"], c["KB"], c["KG"], torch.empty(0, dtype=dtype).element_size()
        )
        + launch._SMEM_MARGIN
    )
    return Build(
        "backward" if backward else "forward",
        plan,
        compiled.metadata.shared,
        estimate,
        usage["registers"],
        usage["spill_stores"],
        usage["spill_loads"],
        step_loop_spills(sass(compiled.asm["cubin"])),
    )


def _compile_with_ptxas_log(source, target, num_warps: int):
    """``triton.compile`` without its cache (so that ptxas runs) and with the ptxas log printed,
    captured: the compiled kernel and what Triton's own ptxas call (its options, e.g. Triton
    3.9's ``--regAllocOptLevel=2``) reported with ``-v``."""
    from triton import knobs

    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, True
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            compiled = triton.compile(source, target=target, options={"num_warps": num_warps, "num_stages": 1})
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
    return compiled, out.getvalue()


def ptxas_report(log: str) -> dict[str, int]:
    """Registers per thread and spilled bytes from a ``ptxas -v`` log (``Used 168 registers``;
    ``0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads``)."""
    fields = {
        "registers": r"Used (\d+) registers",
        "spill_stores": r"(\d+) bytes spill stores",
        "spill_loads": r"(\d+) bytes spill loads",
    }
    found = {key: re.search(pattern, log) for key, pattern in fields.items()}
    missing = [key for key, match in found.items() if match is None]
    if missing:
        raise RuntimeError(f"the ptxas log has no {', '.join(missing)}: {log.strip()[-500:]}")
    return {key: int(match.group(1)) for key, match in found.items()}


def sass(cubin: bytes) -> str:
    """The SASS listing of ``cubin`` (``cuobjdump -sass``, the cuobjdump Triton uses)."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        run = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", path], capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed ({run.returncode}): {run.stderr.strip()[-500:]}")
    return run.stdout


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def step_loop_spills(listing: str) -> int:
    """Local-memory instructions (``LDL`` / ``STL``) inside the widest backward branch of a SASS
    listing: the persistent kernel's step loop, which encloses every other loop."""
    instructions = [(int(addr, 16), text) for addr, text in _SASS_LINE.findall(listing)]
    loops = [
        (int(m.group(1), 16), addr)
        for addr, text in instructions
        if (m := re.search(r"\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)", text)) and int(m.group(1), 16) < addr
    ]
    if not loops:
        return 0
    start, end = max(loops, key=lambda r: r[1] - r[0])
    return sum(1 for addr, text in instructions if start <= addr <= end and re.search(r"\b(LDL|STL)\b", text))


def compile_layer_kernels(
    device: Device, dtype: torch.dtype, B: int, H: int, num_heads: int, T: int = 512, restart: bool = False
) -> dict[str, dict[str, int]]:
    """Compile the layer kernels (:mod:`.kernels.slstm` with ``num_heads`` heads, saving its
    pre-activations, and :mod:`.kernels.scan`; forward and backward; with ``restart``, taking a
    restart mask) for ``device`` with the blocks
    and warps their launchers choose and the specialisation a call with these sizes gets, and read
    their resources: ``{kernel: {"shared", "registers", "spill_stores", "spill_loads"}}``. Needs
    the compiled path, as :func:`compile_for`."""
    if launch.interpreting():
        raise RuntimeError("compile_layer_kernels needs Triton's compiled path: unset TRITON_INTERPRET")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import scan, slstm
    from .kernels.scan import linear_scan_bwd_kernel, linear_scan_fwd_kernel
    from .kernels.slstm import slstm_bwd_kernel, slstm_fwd_kernel

    D = H // num_heads
    BD, BK = slstm.tile_sizes(D, dtype)
    acc = launch.accumulation_type(dtype)
    precision = launch.dot_precision(dtype, False)
    recurrence = dict(
        EXP_FORGET=False, REVERSE=False, RESTART=restart, BB=slstm.BLOCK_B, BD=BD, BK=BK, ACC=acc, PREC=precision
    )
    scanning = dict(REVERSE=False, RESTART=restart, BLOCK=scan.BLOCK, ACC=acc)
    builds = {
        "slstm forward": (slstm_fwd_kernel, dict(recurrence, STORE_PRE=True), {"T": T, "B": B, "H": H, "D": D}),
        "slstm backward": (slstm_bwd_kernel, recurrence, {"T": T, "B": B, "H": H, "D": D}),
        "scan forward": (linear_scan_fwd_kernel, scanning, {"T": T, "BH": B * H, "H": H}),
        "scan backward": (linear_scan_bwd_kernel, scanning, {"T": T, "BH": B * H, "H": H}),
    }
    reports = {}
    for name, (kernel, consts, ints) in builds.items():
        signature, constexprs, attrs = _specialise(kernel, consts, dtype, ints)
        compiled, log = _compile_with_ptxas_log(
            ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
            GPUTarget("cuda", device.capability, 32),
            slstm.NUM_WARPS if name.startswith("slstm") else scan.NUM_WARPS,
        )
        reports[name] = {"shared": compiled.metadata.shared, **ptxas_report(log)}
    return reports
