"""The Triton backend: fused recurrence kernels for one layer and direction (the ``run_layer``
contract of :mod:`gatedrnn.backends.reference`).

Per layer and direction:

1. the input projection of all steps as one matmul, ``xw = x W_ih^T + b_ih + b_hh`` (T, B, G*H)
   (the GRU's ``b_hn`` stays apart when the reset acts after the matmul, since r multiplies it);
2. the recurrence in Triton (:mod:`.kernels.recurrence`): a persistent kernel (one launch for all
   T steps, a grid barrier between phases, at most one program per SM) whose programs keep their
   slice of ``weight_hh`` on chip where it fits in shared memory and stream it from L2 each step
   where it does not; one launch per step where a persistent grid cannot run (the interpreter);
   see :mod:`.launch`;
3. in the backward pass, the recurrence backwards in Triton, then the weight gradients as large
   matmuls over all steps (:mod:`.op`), so the result is deterministic (no float atomics).

Runs the families that name one of its kernels (``cfg.kernel("triton")``, :data:`KERNELS`) and
refuses every other: LSTM (every variant: vanilla, peephole, cifg, nig, nfg, nog, niaf, noaf, fgr;
with projection and layer norm), GRU (both reset forms, layer norm), RNN (tanh, relu), and through
layer kernels of their own (:data:`LAYER_KERNELS`) the sLSTM and minGRU/minLSTM, in float16,
bfloat16, float32 (tf32 per ``torch.backends.cuda.matmul.allow_tf32``) with float32 accumulation
and cell state; under the interpreter float16, float32 and float64 (its ``tl.dot`` is wrong for
bfloat16). Zoneout (its sampled masks in training, its expectation in evaluation) and recurrent
dropout run inside the kernels (:mod:`.kernels.noise`); calls that record the gates (or bring an
LSTM zoneout mask for one state but not the other) run on the reference loop (same numbers, same
autograd). Layer norm normalises each gate block over all H units, which the column split spreads
over every program: its statistics are exchanged between programs with one more barrier per
normalisation (:mod:`.kernels.layer_norm`). ``fgr``'s gate-to-gate recurrence, the previous step's
saved (i, f, o) times ``weight_gg``, is a second product in the cell's phase, always streamed (its
weight, padded to (4H, 4H), is four times ``weight_hh`` at R = H), and its gradient a second
gather in the backward pass; its third state, the previous step's (i, f, o), enters through the
input projection at each row's first real step (:func:`with_initial_gates`) and comes back as the
activations of its last (:func:`final_gates`). A call's ``reset`` (sequences restarted inside the
call) runs inside every kernel, the layer kernels' too (:mod:`.kernels.restart`).

On CUDA the kernels run on a GPU where the GPU tests passed, as recorded in :mod:`.measured`
(``benchmarks/gpu_check.sh`` records it), or with ``GATEDRNN_TRITON_CUDA=1``; ``"auto"`` picks
them over cuDNN only where a recorded measurement on that GPU says they are faster. The table
ships empty until a GPU run fills it, so until then ``"auto"`` keeps cuDNN everywhere.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..._checks import autocast_on
from ...cells.common import gatewise_layer_norm
from ...cells.family import CellFamily, LayerWeights
from ...config import Noise
from .. import compute_dtype, no_kernel, recurrent_shifts, reference, require_support, sum_present
from ..reference import zero_where
from . import measured, scan, slstm
from .launch import (
    CELLS,
    KernelSpec,
    accumulation_dtype,
    interpreting,
    kernel_lengths,
    layer_outputs,
    padded_gate_weight,
)
from .measured import beats_cudnn  # noqa: F401  (what ``auto`` asks, see gatedrnn.backends.choose)
from .op import recurrence

name = "triton"

LAYER_KERNELS = {"slstm": slstm, "linear_scan": scan}
"""Layer kernels by the names families give them: modules with their own ``run_layer(cfg, x,
state, weights, *, reverse, lengths, reset)`` for families whose layer does not fit the recurrence op
(:mod:`.slstm`: the sLSTM's head-blocked recurrence; :mod:`.scan`: the minimal cells' linear
scan). They take no regularisation: those calls, like recording ones, run on the reference loop."""

KERNELS = tuple(CELLS) + tuple(LAYER_KERNELS)
"""Every kernel by the name families give it (``cfg.kernel("triton")``): the cells
:class:`.launch.KernelSpec` compiles (:data:`.launch.CELLS`) and the :data:`LAYER_KERNELS`."""

_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def cuda_enabled(device: torch.device | None = None) -> bool:
    """Whether the kernels may run on CUDA: on a GPU where the GPU tests passed (recorded in
    :mod:`.measured`), or anywhere with the opt-in ``GATEDRNN_TRITON_CUDA=1``."""
    if os.environ.get("GATEDRNN_TRITON_CUDA", "0") == "1":
        return True
    return device is not None and measured.verified_on(device)


def supports(cfg: CellFamily, x: Tensor) -> str | None:
    """None when the kernels run ``cfg`` (a family that names one of :data:`KERNELS`) on ``x``'s
    device and dtype, else the reason they do not."""
    if cfg.kernel(name) not in KERNELS:
        return no_kernel(cfg)
    if x.device.type == "cpu":
        if not interpreting():
            return "CPU tensors run only under the Triton interpreter (TRITON_INTERPRET=1)"
        dtypes = _CUDA_DTYPES + (torch.float64,)
    elif x.device.type == "cuda":
        if not cuda_enabled(x.device):
            return (
                f"the Triton kernels have not been verified on this GPU ({torch.cuda.get_device_name(x.device)}); "
                "set GATEDRNN_TRITON_CUDA=1 to use them (benchmarks/gpu_check.sh does)"
            )
        dtypes = _CUDA_DTYPES
    else:
        return f"expected a CUDA tensor, got one on {x.device.type}"
    dtype = compute_dtype(x)
    if dtype not in dtypes:
        return f"expected dtype in {', '.join(str(d) for d in dtypes)}, got {dtype}"
    if dtype == torch.bfloat16 and x.device.type == "cpu":
        return (
            "torch.bfloat16 does not run under the Triton interpreter: its tl.dot gives wrong results for "
            "bfloat16 operands (seen in Triton 3.9); use float16, float32 or float64 there"
        )
    return None


def _in_autocast_dtype(
    cfg: CellFamily, x: Tensor, state: tuple[Tensor, ...], weights: LayerWeights, **options
) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """:func:`run_layer` under autocast: ``x``, the states and the weights cast to autocast's dtype
    and the layer run with autocast off, so that the kernels get one dtype (autocast would make
    the input projection bfloat16 and the bias sum float32 again). The casts are differentiable:
    the gradients reach the parameters in their own dtype. Outputs and final states come back in
    autocast's dtype, as torch.nn's under autocast."""
    dtype = compute_dtype(x)
    noise = options.pop("noise")
    if noise is not None:  # the masks too: the reference loop of a recording call multiplies by them
        noise = noise.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return run_layer(
            cfg,
            x.to(dtype),
            tuple(s.to(dtype) for s in state),
            {key: w.to(dtype) for key, w in weights.items()},
            noise=noise,
            **options,
        )


def input_projection(cfg: CellFamily, x: Tensor, w: LayerWeights) -> tuple[Tensor, Tensor | None]:
    """``[LN](x W_ih^T) + b_ih`` plus every shift added after the recurrent product (``b_hh``, and
    ``ln_bias_hh`` with layer norm) for all steps: (T, B, I) -> (T, B, G*H); and the GRU's n-block
    recurrent shift when it must stay inside the recurrence (reset after the matmul: r multiplies
    it), else None."""
    spec = KernelSpec.from_config(cfg)
    xw = x.matmul(w["weight_ih"].t())
    if spec.layer_norm:
        xw = gatewise_layer_norm(xw, w["ln_weight_ih"], w["ln_bias_ih"], cfg.hidden_size, cfg.eps)
    recurrent, bias_hn = recurrent_shifts(w, cfg.hidden_size if spec.split_recurrent_grad else 0)
    bias = sum_present(w.get("bias_ih"), recurrent)
    return (xw if bias is None else xw + bias), bias_hn


def kernel_noise(
    cfg: CellFamily, noise: Noise | None, x: Tensor
) -> tuple[int, Tensor | None, Tensor | None, Tensor | None] | None:
    """A call's regularisation as the kernels take it: (zoneout mode, keep of h, keep of the
    second state (the LSTM's cell), recurrent dropout mask). Mode 1 passes the sampled (T, B, .)
    keep masks, mode 2 (evaluation) the expectation p in a (1,) tensor of the accumulation dtype,
    0 none. None when h and c would need different modes (a hand-made :class:`Noise` with one
    state's mask sampled and the other's not; the modules draw both), which the kernels do not take."""
    if noise is None:
        return 0, None, None, None
    rmask = None if noise.recurrent_mask is None else noise.recurrent_mask.to(x.dtype).contiguous()
    if noise.zoneout <= 0:
        return 0, None, None, rmask
    cell = len(cfg.states) > 1  # a second state, the LSTM's cell c
    if noise.zoneout_h is None and (not cell or noise.zoneout_c is None):
        p = torch.full((1,), noise.zoneout, dtype=accumulation_dtype(x.dtype), device=x.device)
        return 2, p, (p if cell else None), rmask
    keep_h, keep_c = noise.zoneout_h, noise.zoneout_c if cell else None
    if keep_h is None or (cell and keep_c is None):
        return None
    return 1, keep_h.to(x.dtype).contiguous(), (keep_c.to(x.dtype).contiguous() if cell else None), rmask


def run_layer(
    cfg: CellFamily,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: LayerWeights,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
    noise: Noise | None = None,
    record: bool = False,
    reset: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """Run one layer and direction on the kernels (contract: :mod:`gatedrnn.backends.reference`,
    ``reset`` included: the kernels restart the rows it marks, see :mod:`.kernels.restart`).

    Under autocast every operand runs in autocast's dtype, as cuDNN's do (float32 accumulation and
    cell state as always): see :func:`_in_autocast_dtype`."""
    require_support(name, supports(cfg, x))
    if autocast_on(x.device.type):
        return _in_autocast_dtype(
            cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise, record=record, reset=reset
        )
    fused = not record and x.shape[0] > 0 and x.shape[1] > 0  # T or B = 0: the state passes through
    layer_kernel = LAYER_KERNELS.get(cfg.kernel(name))
    if layer_kernel is not None and fused and noise is None:
        return layer_kernel.run_layer(cfg, x, state, weights, reverse=reverse, lengths=lengths, reset=reset)
    regularisation = None if layer_kernel is not None else kernel_noise(cfg, noise, x)
    if not fused or regularisation is None:
        return reference.run_layer(
            cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise, record=record, reset=reset
        )
    T, B = x.shape[:2]
    xw, bias_hn = input_projection(cfg, x, weights)
    lens = kernel_lengths(lengths, T, B, x.device)
    spec = KernelSpec.from_config(cfg)
    cell = spec.has_cell_state  # a second state, the LSTM's cell c
    if spec.fgr:
        xw = with_initial_gates(xw, state[2], weights["weight_gg"], lens, reverse, reset)

    def given(key: str, present: bool = True) -> Tensor | None:
        return weights[key].contiguous() if present else None

    zoneout, keep_h, keep_c, rmask = regularisation
    hs, c_final, g_final, *_ = recurrence(
        xw.contiguous(),
        lens,
        state[0].contiguous(),
        state[1].contiguous() if cell else None,
        given("weight_hh"),
        given("weight_hr", spec.proj),
        given("weight_ch", spec.variant == "peephole"),
        padded_gate_weight(weights["weight_gg"]) if spec.fgr else None,
        bias_hn,
        given("ln_weight_hh", spec.layer_norm),
        given("ln_weight_c", spec.layer_norm and cell),
        given("ln_bias_c", spec.layer_norm and cell),
        keep_h,
        keep_c,
        rmask,
        spec.cell,
        spec.variant,
        spec.reset_after,
        spec.relu,
        float(cfg.eps),
        zoneout,
        reverse,
        bool(torch.backends.cuda.matmul.allow_tf32),
        reset,
    )
    out, h_final = layer_outputs(hs, lengths, reverse)
    final = (h_final, c_final.to(x.dtype)) if cell else (h_final,)
    if spec.fgr:
        final += (final_gates(g_final, state[2], lens),)
    return out, final, None


def with_initial_gates(
    xw: Tensor, gates0: Tensor, weight_gg: Tensor, lengths: Tensor, reverse: bool, reset: Tensor | None
) -> Tensor:
    """fgr: the input projection xw (T, B, 4H) with the initial gates state's share of the gate
    recurrence added at each row's first real step (t = 0, or lengths[b] - 1 in reverse), where the
    kernels find no previous step of their own: ``gates0 @ weight_gg^T`` (gates0 (B, 3H) and the
    product's rows in the order i, f, o) into the i, f and o blocks; nothing on a row that ``reset``
    restarts at that step. Differentiable: autograd carries its gradient to gates0 and weight_gg."""
    T, B, _ = xw.shape
    H = gates0.shape[-1] // 3
    rows = torch.arange(B, device=xw.device)
    first = (lengths.long() - 1).clamp(min=0) if reverse else torch.zeros_like(rows)
    if reset is not None:  # a select before the product, as the reference loop zeros its carry
        (gates0,) = zero_where(reset[first, rows].unsqueeze(-1), (gates0,))
    i_f, o = gates0.matmul(weight_gg.t()).split([2 * H, H], dim=-1)
    term = torch.cat([i_f, i_f.new_zeros(B, H), o], dim=-1)  # (B, 4H) in the gate order i, f, g, o
    return xw.index_put((first, rows), term.to(xw.dtype), accumulate=True)


def final_gates(g_final: Tensor, gates0: Tensor, lengths: Tensor) -> Tensor:
    """fgr's final gates state (B, 3H): the (i, f, o) blocks of the kernels' last activations
    ``g_final`` (B, 4H), and the initial state ``gates0`` on rows without a real step."""
    H = gates0.shape[-1] // 3
    i_f, _, o = g_final.split([2 * H, H, H], dim=-1)
    return torch.where((lengths > 0).unsqueeze(-1), torch.cat([i_f, o], dim=-1).to(gates0.dtype), gates0)
