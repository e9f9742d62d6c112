"""Host side of the recurrence kernels: buffers, block sizes, and how the steps are launched.

:func:`forward` and :func:`backward` run :mod:`.kernels.recurrence` over a whole sequence and
return the raw buffers the kernels fill (see that module's docstring for their layout).

Two independent choices per kernel (:func:`_plan`):

- *how the steps are driven*: persistent (one launch for all T steps, a grid barrier between
  phases) on CUDA when every program gets its own SM (grid <= SM count, one program per SM);
  otherwise, and always under ``TRITON_INTERPRET=1`` (which runs programs one after another, so
  a spin barrier would never open), one launch per step and phase.
- *where the weights live*: resident (each program loads its weight slices once; Triton keeps
  them in shared memory as the dot operand) when the slices and the staged exchange vector fit
  the device's shared memory per block, else streamed: each phase re-reads its slice in chunks
  of ``KA`` / ``KB`` columns every step (from L2 on a GPU), which works at any size. A resident
  launch that the device still refuses (``OutOfResources``) is retried streamed.

:data:`tuning` lets tests and benchmarks force either choice and the block sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from triton.runtime.errors import OutOfResources

from ...cells import LSTM_VARIANTS, CellFamily
from .. import active_steps
from .kernels.recurrence import recurrence_bwd_kernel, recurrence_fwd_kernel

_LSTM_GATE_FLAGS = ("i", "f", "g", "o")

LSTM, GRU, RNN = 0, 1, 2
"""The kernels' cell kinds, the ``CELL`` constexpr of :mod:`.kernels.recurrence`."""

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
"""The kernel kinds by the names families give them (``cfg.kernel("triton")``)."""


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass
class Tuning:
    """Launch overrides, None = choose. ``mode``: ``"auto"``, ``"persistent"`` or ``"stepwise"``;
    ``resident``: keep weight slices on chip (True) or stream them (False); ``block_h`` (units per
    program), ``block_b`` (batch rows per block) and ``block_k`` (streamed chunk width): powers of two;
    ``num_warps``: warps per program; ``stages``: software-pipeline depth of the streamed chunk
    loops (default: none in the persistent kernel, whose step loop is never pipelined, and 3 in
    per-step launches; see :func:`_stages`)."""

    mode: str = "auto"
    resident: bool | None = None
    block_h: int | None = None
    block_b: int | None = None
    block_k: int | None = None
    num_warps: int | None = None
    stages: int | None = None


#: the last plan each kernel ran with, by kernel name (what the benchmark reports)
last_plans: dict[str, _Launch] = {}

# shared memory Triton needs beside the operands (layout conversions of the gate tiles)
_SMEM_MARGIN = 8192
# streamed chunk width on the GPU
_STREAM_K = 64


tuning = Tuning()


@dataclass(frozen=True)
class KernelSpec:
    """The compile-time shape of a recurrence, from a cell family (:meth:`from_config`; the ops':
    from their settings and operands, :meth:`.op.Settings.spec`) and the call's regularisation:
    ``cell`` the kernel's name (a key of :data:`CELLS`), ``zoneout`` 0 (none), 1 (sampled masks)
    or 2 (their expectation), ``dropout`` a recurrent dropout mask (see ``kernels/noise.py``),
    ``restart`` a (T, B) mask of restarts inside the sequence (the call's ``reset``, see
    ``kernels/restart.py``)."""

    cell: str
    variant: str = "vanilla"
    reset_after: bool = True
    relu: bool = False
    proj: bool = False
    layer_norm: bool = False
    zoneout: int = 0
    dropout: bool = False
    restart: bool = False

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"no recurrence kernel named {self.cell!r}; expected one of {', '.join(CELLS)}")

    @classmethod
    def from_config(cls, cfg: CellFamily) -> KernelSpec:
        """The kernels' shape for ``cfg``, before a call's regularisation: the kernel it names
        (``cfg.kernel("triton")``) and the options that kernel reads, each at this class's default
        where the family has no such option."""
        return cls(
            cfg.kernel("triton"),
            getattr(cfg, "variant", "vanilla"),
            getattr(cfg, "reset_after", True),
            getattr(cfg, "nonlinearity", "tanh") == "relu",
            getattr(cfg, "proj_size", 0) > 0,
            getattr(cfg, "layer_norm", False),
        )

    @property
    def kind(self) -> int:
        """The cell's kernel kind: :data:`LSTM`, :data:`GRU` or :data:`RNN`."""
        return CELLS[self.cell]

    @property
    def has_cell_state(self) -> bool:
        """Whether the recurrence carries a second state, the LSTM's cell c."""
        return self.kind == LSTM

    @property
    def gates(self) -> tuple[str, ...]:
        if self.kind == LSTM:
            return LSTM_VARIANTS[self.variant]
        return ("r", "z", "n") if self.kind == GRU else ("h",)

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def gru_before(self) -> bool:
        """GRU with the reset applied before the matmul (two phases per step)."""
        return self.kind == GRU and not self.reset_after

    @property
    def split_recurrent_grad(self) -> bool:
        """GRU with the reset after the matmul: the n rows' recurrent gradient is r * da_n."""
        return self.kind == GRU and self.reset_after

    @property
    def matmul_gates(self) -> int:
        """GA: gate blocks whose recurrent matmul takes h_{t-1} directly."""
        return 2 if self.gru_before else self.num_gates

    @property
    def saved_gates(self) -> int:
        """GS: activation blocks saved per step (the GRU adds U_n h + b_hn when reset after; the
        RNN saves its h before zoneout, when zoneout makes it differ from the carried one)."""
        if self.kind == LSTM:
            return self.num_gates
        if self.kind == GRU:
            return 4 if self.reset_after else 3
        return 1 if self.zoneout else 0

    @property
    def fgr(self) -> bool:
        """The LSTM's full gate recurrence: (i, f, o) also take weight_gg times the previous step's."""
        return self.kind == LSTM and self.variant == "fgr"

    @property
    def two_phase(self) -> bool:
        return self.proj or self.gru_before

    @property
    def stat_slots(self) -> int:
        """NS: layer-norm statistics per batch row and step, one per gate block and one for the cell."""
        return self.num_gates + 1

    def phase_slots(self, backward: bool) -> dict[str, int]:
        """Each phase's 1-based place in a step (0 where absent) and NPH, the phases per step.

        Forward: SA (LN: raw product and partial moments), A (gates), SB (LN, GRU reset before:
        the n block's product), C (LN LSTM: h from the normalised cell), B (projection, or the
        GRU's n block). Backward: A (gather and pointwise), DN (LN, GRU reset before: the n block's
        layer-norm backward), B (projection, or the GRU's n block), C (LN LSTM: the cell and gate
        gradients), D (LN: the gate blocks' layer-norm backward). See ``kernels/recurrence.py``.
        """
        ln, lstm = self.layer_norm, self.has_cell_state
        if backward:
            present = {"A": True, "DN": ln and self.gru_before, "B": self.two_phase, "C": ln and lstm, "D": ln}
        else:
            present = {"SA": ln, "A": True, "SB": ln and self.gru_before, "C": ln and lstm, "B": self.two_phase}
        order = [name for name, here in present.items() if here]
        slots = {f"PH_{name}": (order.index(name) + 1 if name in order else 0) for name in present}
        slots["NPH"] = len(order)
        if not backward:
            slots["PH_UA"] = slots["PH_SA"] if ln else slots["PH_A"]
            slots["PH_WB"] = slots["PH_SB"] if ln and self.gru_before else slots["PH_B"]
        return slots

    def constexprs(self) -> dict[str, object]:
        index = {name: (self.gates.index(name) if name in self.gates else -1) for name in _LSTM_GATE_FLAGS}
        return dict(
            CELL=self.kind,
            G=self.num_gates,
            GA=self.matmul_gates,
            GS=self.saved_gates,
            IDX_I=index["i"],
            IDX_F=index["f"],
            IDX_G=index["g"],
            IDX_O=index["o"],
            CIFG=self.variant == "cifg",
            PEEP=self.variant == "peephole",
            G_ACT=self.variant != "niaf",
            O_ACT=self.variant != "noaf",
            PROJ=self.proj,
            RESET_AFTER=self.reset_after,
            RELU=self.relu,
            TWO_PHASE=self.two_phase,
            LN=self.layer_norm,
            NS=self.stat_slots,
            ZO=self.zoneout,
            DROP=self.dropout,
            FGR=self.fgr,
            RESTART=self.restart,
        )


@dataclass(frozen=True)
class LayerNormWeights:
    """What the kernels need of a layer norm: the recurrent products' gain ``ln_weight_hh``
    (G*H,), the LSTM cell's gain and shift (H,) (None where absent: no layer norm, or the GRU)
    and epsilon. The shifts of the products fold into the input projection."""

    gain: Tensor | None = None
    cell_gain: Tensor | None = None
    cell_shift: Tensor | None = None
    eps: float = 1e-5


@dataclass(frozen=True)
class NoiseBuffers:
    """What the kernels take of a call's regularisation (the modes are in :class:`KernelSpec`):
    zoneout's keep of h (T, B, R) and of the LSTM cell (T, B, H) where sampled, or a (1,)
    tensor of the accumulation dtype holding p for its expectation; the recurrent dropout mask
    (B, R), already scaled. None where absent."""

    keep_h: Tensor | None = None
    keep_c: Tensor | None = None
    rmask: Tensor | None = None


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@dataclass(frozen=True)
class _Launch:
    """Grid and block sizes for one kernel; ``persistent`` selects the single-launch path."""

    programs: int
    persistent: bool
    consts: dict[str, object]
    num_warps: int

    def describe(self) -> str:
        c = self.consts
        how = "persistent" if self.persistent else "stepwise"
        where = "resident" if c["RESIDENT"] else f"streamed (KA={c['KA']}, KB={c['KB']})"
        return f"{how}, {where} weights, {self.programs} programs x {c['BH']} units, BB={c['BB']}"


def _device_limits(device: torch.device) -> tuple[int, int]:
    """(SM count, shared memory per block in bytes) of a CUDA device; the interpreter's stand-in is
    one SM (only one-program grids run persistent there) and no shared memory limit."""
    if device.type != "cuda":
        return 1, 1 << 40
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 232448
    return props.multi_processor_count, smem


def resident_bytes(spec: KernelSpec, backward: bool, BB: int, BH: int, KA: int, KB: int, KG: int, itemsize: int) -> int:
    """Shared memory of the resident operands: each phase's weight tile plus its staged
    exchange vector (BB rows), e.g. (R, G*BH) + (BB, R) for the forward matmul of h_{t-1}; for
    fgr also the always streamed chunk of its gate weight and gates, (KG, 4*BH) + (BB, KG) forward,
    (4*KG, BH) + (BB, 4*KG) backward, both within 4*KG*(BH + BB)."""
    GAP = _pow2(spec.matmul_gates)
    if backward:
        a = GAP * KA * BH + BB * GAP * KA
    else:
        a = KA * GAP * BH + BB * KA
    b = KB * BH + BB * KB if spec.two_phase else 0
    g = 4 * KG * (BH + BB) if spec.fgr else 0
    return (a + b + g) * itemsize


# layer norm merges its (BB, PP) tiles of partials at most this many elements at a time on the GPU
_MERGE_TILE = 1024


def _merge_chunk(programs: int, block_b: int, on_gpu: bool) -> int:
    """PP, the programs whose layer-norm partials are merged at once: all of them where the
    (BB, PP) tiles stay within :data:`_MERGE_TILE` elements (at H=2048 and 64-row batch blocks,
    128 programs at once spilled hundreds of registers per thread in the step loop), and 4 under
    the interpreter, so that its tests with 5 programs run the chunk loop, ragged last chunk
    included."""
    if not on_gpu:
        return min(_pow2(programs), 4)
    return min(_pow2(programs), max(1, _MERGE_TILE // block_b))


def _stages(resident: bool, persistent: bool) -> int:
    """Pipeline depth of the streamed chunk loops: 1 when resident (the loop runs once: pipelining
    it would only multiply its shared memory); else ``tuning.stages``, by default 1 in the
    persistent kernel (until a GPU run measures 2 or 3) and Triton's default 3 in the per-step
    launches (where nothing crosses a barrier inside a launch)."""
    if resident:
        return 1
    return tuning.stages or (1 if persistent else 3)


def _min_block_h(spec: KernelSpec, backward: bool) -> int:
    """The fewest units per program the GPU's ``tl.dot`` (every dimension >= 16) allows: the
    single-phase forward multiplies into all GA gate blocks at once (N = GAP * BH), every other
    product has N = BH. The planner's own choice stays at >= 16; tuning may go lower."""
    if backward or spec.two_phase:
        return 16
    return max(1, 16 // _pow2(spec.matmul_gates))


def _plan(
    spec: KernelSpec,
    backward: bool,
    B: int,
    H: int,
    R: int,
    dtype: torch.dtype,
    device: torch.device,
    reverse: bool,
    allow_tf32: bool,
    resident: bool | None = None,
    limits: tuple[int, int] | None = None,
) -> _Launch:
    """Grid, blocks and path for the forward (``backward=False``) or backward kernel; ``limits``
    (SM count, shared memory per block) stands in for the device's own (building for a GPU that
    is not here, :mod:`.offline`)."""
    on_gpu = device.type == "cuda"
    # tl.dot needs every dimension >= 16 on the GPU; the interpreter takes any size
    low = 16 if on_gpu else 1
    n_sm, smem = limits or _device_limits(device)
    GAP = _pow2(spec.matmul_gates)
    if tuning.mode == "persistent" and not on_gpu:
        block_h = _pow2(H)  # the interpreter runs programs in turn: only one program can pass a barrier
    elif tuning.block_h is not None:
        block_h = max(_min_block_h(spec, backward) if on_gpu else 1, tuning.block_h)
    elif on_gpu:
        block_h = max(low, _pow2(triton.cdiv(H, n_sm)))
    else:
        block_h = _pow2(triton.cdiv(H, 2))
    programs = triton.cdiv(H, block_h)
    if tuning.mode == "auto":
        persistent = on_gpu and programs <= n_sm
    else:
        persistent = tuning.mode == "persistent"
    # phase A's K runs over R (forward: h_{t-1}) or each gate's H units (backward: d_{t+1});
    # phase B's over H (forward: h_pre or r * h) or R (backward: dh_r or da_n, R == H for the GRU)
    ka_full, kb_full = (H, R) if backward else (R, H)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    resident_bb = max(low, tuning.block_b or (16 if on_gpu else _pow2(min(B, 4))))
    # fgr's gate recurrence (the previous gates by weight_gg, 16 H^2 padded) is always streamed
    KG = max(low, min(_pow2(H), tuning.block_k or (_STREAM_K if on_gpu else 4)))
    if resident is None:
        resident = tuning.resident
    if resident is None:
        need = resident_bytes(
            spec, backward, resident_bb, block_h, max(low, _pow2(ka_full)), max(low, _pow2(kb_full)), KG, itemsize
        )
        resident = need + _SMEM_MARGIN <= smem
    if resident:
        block_b = resident_bb
        KA, KB = max(low, _pow2(ka_full)), max(low, _pow2(kb_full))
    else:
        # streamed weights are re-read per batch block: larger blocks re-read them less often
        block_b = max(low, tuning.block_b or (min(64, _pow2(B)) if on_gpu else _pow2(min(B, 4))))
        chunk = tuning.block_k or (_STREAM_K if on_gpu else 2)
        KA, KB = max(low, min(_pow2(ka_full), chunk)), max(low, min(_pow2(kb_full), chunk))
    consts = dict(
        spec.constexprs(),
        **spec.phase_slots(backward),
        PP=_merge_chunk(programs, block_b, on_gpu),
        REVERSE=reverse,
        RESIDENT=bool(resident),
        STAGES=_stages(bool(resident), persistent),
        BB=block_b,
        BH=block_h,
        KA=KA,
        KB=KB,
        KG=KG,
        GAP=GAP,
        ACC=accumulation_type(dtype),
        PREC=dot_precision(dtype, allow_tf32),
    )
    tile = max(KA * GAP * block_h, KB * block_h)
    return _Launch(programs, persistent, consts, tuning.num_warps or (8 if tile >= 32768 else 4))


def _launch(kernel, plan: _Launch, args: tuple, sizes: tuple, T: int) -> None:
    """All T steps with one plan: one persistent launch, or a launch per step and phase. Adds the
    layer-norm scratch (P, B, NS, 2) for the plan's P programs."""
    grid = (plan.programs,)
    x = args[0]
    c = plan.consts
    if c["LN"]:
        acc = torch.float64 if c["ACC"] == triton.language.float64 else torch.float32
        part = _new_buffer((plan.programs, sizes[1], c["NS"], 2), acc, x.device)
    else:
        part = x
    if plan.persistent:
        barrier = torch.zeros(1, dtype=torch.int32, device=x.device)
        # num_stages=1: no software pipelining, so no load of a later step is issued before the
        # grid barrier that makes its data visible
        kernel[grid](*args, part, barrier, *sizes, 0, T, PHASE=0, num_warps=plan.num_warps, num_stages=1, **c)
        return
    unused = torch.empty(1, dtype=torch.int32, device=x.device)
    for s in range(T):
        for phase in range(1, c["NPH"] + 1):
            kernel[grid](*args, part, unused, *sizes, s, 1, PHASE=phase, num_warps=plan.num_warps, **c)


def _run(
    kernel, name: str, plan_args: tuple, args: tuple, sizes: tuple, T: int, extra: dict[str, object] | None = None
) -> None:
    """Plan and launch ``kernel``; a resident plan the device refuses for lack of resources is
    retried with streamed weights (shared memory estimates can miss Triton's own scratch)."""
    plan = _plan(*plan_args)
    plan.consts.update(extra or {})
    try:
        _launch(kernel, plan, args, sizes, T)
    except OutOfResources:
        if not plan.consts["RESIDENT"]:
            raise
        plan = _plan(*plan_args, resident=False)
        plan.consts.update(extra or {})
        _launch(kernel, plan, args, sizes, T)
    last_plans[name] = plan


def _new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A buffer the kernels fill completely (tests replace this to fill it with NaN first)."""
    return torch.empty(shape, dtype=dtype, device=device)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def forward(
    spec: KernelSpec,
    xw: Tensor,
    lengths: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    weight_ch: Tensor | None,
    weight_gg: Tensor | None,
    bias_hn: Tensor | None,
    ln: LayerNormWeights,
    noise: NoiseBuffers,
    reverse: bool,
    allow_tf32: bool,
    restart: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Run the forward recurrence over xw (T, B, G*H); returns (hs, cs, gates, aux, hat, hatc, rstd)
    (the last three, the layer norms' saved statistics, empty without layer norm). ``weight_gg``
    is fgr's, padded to (4H, 4H) (:func:`padded_gate_weight`); ``restart`` (T, B) bool, in walk
    order, restarts row b from the zero state before step t where set (``spec.restart`` says
    whether it is given)."""
    T, B, _ = xw.shape
    H = weight_hh.shape[0] // spec.num_gates
    R = weight_hh.shape[1]
    dev, dt, acc = xw.device, xw.dtype, accumulation_dtype(xw.dtype)
    start = T if reverse else 0
    hs = _new_buffer((T + 1, B, R), dt, dev)
    hs[start] = h0
    none = xw  # stands in for absent tensors; the constexpr switches keep the kernel off them
    lstm, normed = spec.has_cell_state, spec.layer_norm
    cs = _buffer_if(lstm, (T + 1, B, H), acc, dev)
    if c0 is not None:
        cs[start] = c0
    gates = _new_buffer((T, B, spec.saved_gates * H), acc, dev)
    aux = _buffer_if(spec.two_phase, (T, B, H), dt, dev)
    hat = _buffer_if(normed, (T, B, spec.num_gates * H), acc, dev)
    hatc = _buffer_if(normed and lstm, (T, B, H), acc, dev)
    rstd = _buffer_if(normed, (T, B, spec.stat_slots), acc, dev)
    hin = none
    if spec.dropout:  # h ⊙ m for the recurrent product, in two slots by hs index (kernels/noise.py)
        hin = _new_buffer((2, B, R), dt, dev)
        hin[start % 2] = h0 * noise.rmask
    args = (
        xw,
        lengths,
        restart_arg(restart, none),
        weight_hh,
        _or(weight_hr, none),
        _or(weight_ch, none),
        _or(weight_gg, none),
        _or(bias_hn, none),
        hs,
        _or(cs, none),
        _or(gates, none),
        _or(aux, none),
        _or(hat, none),
        _or(hatc, none),
        _or(rstd, none),
        _or(ln.gain, none),
        _or(ln.cell_gain, none),
        _or(ln.cell_shift, none),
        *_noise_args(noise, none),
        hin,
    )
    _run(
        recurrence_fwd_kernel,
        "forward",
        (spec, False, B, H, R, dt, dev, reverse, allow_tf32),
        args,
        (T, B, H, R, ln.eps),
        T,
        {"HAS_BN": bias_hn is not None},
    )
    return hs, cs, gates, aux, hat, hatc, rstd


def backward(
    spec: KernelSpec,
    dhs: Tensor,
    dc: Tensor | None,
    dg: Tensor | None,
    lengths: Tensor,
    hs: Tensor,
    cs: Tensor,
    gates: Tensor,
    hat: Tensor,
    hatc: Tensor,
    rstd: Tensor,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    weight_ch: Tensor | None,
    weight_gg: Tensor | None,
    ln: LayerNormWeights,
    noise: NoiseBuffers,
    reverse: bool,
    allow_tf32: bool,
    restart: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Run the backward recurrence from dL/dhs (T+1, B, R), the final cell's dL/dc (B, H) and, for
    fgr, the final gates state's dL/dg (B, 4H) in the saved activations' layout (None: zero), with
    the forward's ``restart``. Returns (d, drec, dprod, ghr, dchat, carry_h, carry_c): d
    (T, B, G*H) the gradients of the input-side pre-activations; drec those of the recurrent terms
    as they are added (empty when equal to d); dprod those of the recurrent products h_{t-1} U^T
    (empty when equal to drec: without layer norm); ghr (T, B, R) dL/dh_r (empty without
    projection); dchat (T, B, H) the gradient of the LSTM's normalised cell γ_c ĉ (empty without
    layer norm); and the carried gradients w.r.t. the initial state before the last gather (see
    :mod:`.op` for how they finish)."""
    T, B, R = dhs.shape[0] - 1, dhs.shape[1], dhs.shape[2]
    H = weight_hh.shape[0] // spec.num_gates
    dev, dt, acc = hs.device, hs.dtype, accumulation_dtype(hs.dtype)
    none = hs
    lstm, normed = spec.has_cell_state, spec.layer_norm
    d = _new_buffer((T, B, spec.num_gates * H), dt, dev)
    drec = _buffer_if(spec.split_recurrent_grad, (T, B, spec.num_gates * H), dt, dev)
    dprod = _buffer_if(normed, (T, B, spec.num_gates * H), dt, dev)
    ghr = _buffer_if(spec.proj, (T, B, R), dt, dev)
    dchat = _buffer_if(normed and lstm, (T, B, H), acc, dev)
    carry_h = torch.zeros((B, R), dtype=acc, device=dev)
    if lstm:
        carry_c = dc.to(acc, copy=True).contiguous() if dc is not None else torch.zeros((B, H), dtype=acc, device=dev)
    else:
        carry_c = hs.new_empty(0, dtype=acc)
    if spec.fgr:
        dg = torch.zeros((B, 4 * H), dtype=acc, device=dev) if dg is None else dg.to(acc).contiguous()
    rec = _or(drec, d)
    args = (
        lengths,
        restart_arg(restart, none),
        weight_hh,
        _or(weight_hr, none),
        _or(weight_ch, none),
        _or(weight_gg, none),
        _or(dg, none),
        hs,
        _or(cs, none),
        _or(gates, none),
        dhs,
        d,
        rec,
        _or(dprod, rec),
        _or(ghr, none),
        _or(dchat, none),
        carry_h,
        _or(carry_c, none),
        _or(hat, none),
        _or(hatc, none),
        _or(rstd, none),
        _or(ln.gain, none),
        _or(ln.cell_gain, none),
        _or(ln.cell_shift, none),
        *_noise_args(noise, none),
    )
    _run(
        recurrence_bwd_kernel,
        "backward",
        (spec, True, B, H, R, dt, dev, reverse, allow_tf32),
        args,
        (T, B, H, R, ln.eps),
        T,
    )
    return d, drec, dprod, ghr, dchat, carry_h, carry_c


def padded_gate_weight(weight_gg: Tensor) -> Tensor:
    """fgr's ``weight_gg`` (3H, 3H), rows and columns in (i, f, o) order, as the kernels take it:
    (4H, 4H) in the gate order (i, f, g, o) of the saved activations, zero in the g row and
    column blocks, so that one product of all four saved blocks gives the three gates' terms.
    Differentiable: the gradient of the padded weight flows back to ``weight_gg``."""
    H = weight_gg.shape[0] // 3
    blocks = weight_gg.reshape(3, H, 3, H)
    rows = torch.cat([blocks[:2], blocks.new_zeros(1, H, 3, H), blocks[2:]])  # (4, H, 3, H)
    return torch.cat([rows[:, :, :2], rows.new_zeros(4, H, 1, H), rows[:, :, 2:]], dim=2).reshape(4 * H, 4 * H)


def _buffer_if(wanted: bool, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A buffer the kernels fill, or a fresh empty tensor where it is not needed (op outputs must
    not alias one another, so every absent one is its own)."""
    return _new_buffer(shape, dtype, device) if wanted else torch.empty(0, dtype=dtype, device=device)


def _noise_args(noise: NoiseBuffers, none: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _or(noise.keep_h, none), _or(noise.keep_c, none), _or(noise.rmask, none)


def _or(tensor: Tensor | None, fallback: Tensor) -> Tensor:
    return fallback if tensor is None or tensor.numel() == 0 else tensor


def restart_arg(restart: Tensor | None, none: Tensor) -> Tensor:
    """The kernels' (T, B) restart mask as bytes (a view of the bool mask), or ``none`` without one."""
    return none if restart is None else restart.contiguous().view(torch.uint8)


def kernel_lengths(lengths: Tensor | None, T: int, B: int, device: torch.device) -> Tensor:
    """(B,) int32 sequence lengths as the kernels read them: T for every row without ``lengths``;
    a length beyond T means every step is real, as in the reference loop, and is clamped to T so
    that no kernel reads past step T - 1."""
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int32, device=device)
    return lengths.clamp(max=T).to(device=device, dtype=torch.int32)


def layer_outputs(hs: Tensor, lengths: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
    """(output (T, B, R), final h (B, R)) from the carried h of a (T+1, B, R) state buffer laid out
    by real time (the state after step t at ``t + 1``, or ``t`` in reverse), the output zero at
    each row's padded steps."""
    out = hs[:-1] if reverse else hs[1:]
    if lengths is not None:
        active = active_steps(lengths, out.shape[0])  # (T, B, 1)
        out = torch.where(active, out, torch.zeros_like(out))
    return out, hs[0] if reverse else hs[-1]


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """``tl.dot``'s input precision: tf32 for float32 where ``allow_tf32`` says, else exact."""
    return "tf32" if (dtype == torch.float32 and allow_tf32) else "ieee"


def accumulation_type(dtype: torch.dtype) -> triton.language.dtype:
    """:func:`accumulation_dtype` as the kernels' ``ACC`` constexpr."""
    return triton.language.float64 if dtype == torch.float64 else triton.language.float32
