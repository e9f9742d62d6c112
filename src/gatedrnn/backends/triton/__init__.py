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

Runs: LSTM (vanilla, peephole, cifg, nig, nfg, nog, niaf, noaf; with projection and layer norm),
GRU (both reset forms, layer norm), RNN (tanh, relu), in float16, bfloat16, float32 (tf32 per
``torch.backends.cuda.matmul.allow_tf32``) with float32 accumulation and cell state; under the
interpreter float16, float32 and float64 (its ``tl.dot`` is wrong for bfloat16). Calls with
zoneout, recurrent dropout or gate recording run on the reference loop (same numbers, same
autograd). Layer norm normalises each gate block over all H units, which the column split spreads
over every program: its statistics are exchanged between programs with one more barrier per
normalisation (:mod:`.kernels.layer_norm`). Refused, with the reason: ``fgr`` (its gate-to-gate
matmul needs a third exchange per step).

On CUDA the kernels have so far been checked only under the interpreter and by compiling them for
sm_90 without a GPU, so they are used only when ``GATEDRNN_TRITON_CUDA=1`` is set
(``benchmarks/gpu_check.sh`` sets it to verify them); ``"auto"`` therefore never picks them.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ...cells.common import gatewise_layer_norm
from ...config import CellConfig, LayerWeights, Noise
from .. import recurrent_shifts, reference, require_support, sum_present
from .launch import interpreting
from .op import recurrence

name = "triton"

_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def cuda_enabled() -> bool:
    """Whether the not-yet-GPU-verified kernels may run on CUDA (``GATEDRNN_TRITON_CUDA=1``)."""
    return os.environ.get("GATEDRNN_TRITON_CUDA", "0") == "1"


def supports(cfg: CellConfig, x: Tensor) -> str | None:
    """None when the kernels run ``cfg`` on ``x``'s device and dtype, else the reason they do not."""
    if x.device.type == "cpu":
        if not interpreting():
            return "CPU tensors run only under the Triton interpreter (TRITON_INTERPRET=1)"
        dtypes = _CUDA_DTYPES + (torch.float64,)
    elif x.device.type == "cuda":
        if not cuda_enabled():
            return ("the Triton kernels are not yet verified on a GPU; set GATEDRNN_TRITON_CUDA=1 to use them "
                    "(benchmarks/gpu_check.sh does)")
        dtypes = _CUDA_DTYPES
    else:
        return f"expected a CUDA tensor, got one on {x.device.type}"
    if x.dtype not in dtypes:
        return f"expected dtype in {', '.join(str(d) for d in dtypes)}, got {x.dtype}"
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        return ("torch.bfloat16 does not run under the Triton interpreter: its tl.dot gives wrong results for "
                "bfloat16 operands (seen in Triton 3.9); use float16, float32 or float64 there")
    if cfg.family == "lstm" and cfg.variant == "fgr":
        return "variant='fgr' is not implemented (its gate-to-gate matmul needs a third exchange per step)"
    return None


def input_projection(cfg: CellConfig, x: Tensor, w: LayerWeights) -> tuple[Tensor, Tensor | None]:
    """``[LN](x W_ih^T) + b_ih`` plus every shift added after the recurrent product (``b_hh``, and
    ``ln_bias_hh`` with layer norm) for all steps: (T, B, I) -> (T, B, G*H); and the GRU's n-block
    recurrent shift when it must stay inside the recurrence (reset after the matmul: r multiplies
    it), else None."""
    xw = x.matmul(w["weight_ih"].t())
    if cfg.layer_norm:
        xw = gatewise_layer_norm(xw, w["ln_weight_ih"], w["ln_bias_ih"], cfg.hidden_size, cfg.eps)
    recurrent, bias_hn = recurrent_shifts(cfg, w)
    bias = sum_present(w.get("bias_ih"), recurrent)
    return (xw if bias is None else xw + bias), bias_hn


def run_layer(
    cfg: CellConfig,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: LayerWeights,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
    noise: Noise | None = None,
    record: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor] | None]:
    """Run one layer and direction on the kernels (contract: :mod:`gatedrnn.backends.reference`)."""
    require_support(name, supports(cfg, x))
    if record or (noise is not None and noise.active):
        return reference.run_layer(cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise,
                                   record=record)
    T, B = x.shape[:2]
    xw, bias_hn = input_projection(cfg, x, weights)
    lens = torch.full((B,), T, dtype=torch.int32, device=x.device) if lengths is None else lengths.to(torch.int32)
    lstm = cfg.family == "lstm"

    def given(key: str, present: bool = True) -> Tensor | None:
        return weights[key].contiguous() if present else None

    hs, c_final, *_ = recurrence(
        xw.contiguous(), lens, state[0].contiguous(), state[1].contiguous() if lstm else None,
        given("weight_hh"), given("weight_hr", cfg.proj_size > 0), given("weight_ch", cfg.variant == "peephole"),
        bias_hn, given("ln_weight_hh", cfg.layer_norm), given("ln_weight_c", cfg.layer_norm and lstm),
        given("ln_bias_c", cfg.layer_norm and lstm), cfg.family, cfg.variant, cfg.reset_after,
        cfg.nonlinearity == "relu", float(cfg.eps), reverse, bool(torch.backends.cuda.matmul.allow_tf32),
    )
    out = hs[:-1] if reverse else hs[1:]  # (T, B, R): h_t of every step
    if lengths is not None:
        active = (torch.arange(T, device=x.device)[:, None] < lengths[None, :]).unsqueeze(-1)  # (T, B, 1)
        out = torch.where(active, out, torch.zeros_like(out))
    h_final = hs[0] if reverse else hs[-1]
    final = (h_final, c_final.to(x.dtype)) if lstm else (h_final,)
    return out, final, None
