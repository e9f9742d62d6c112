"""Checks of the Triton backend that a mutation test of ``test_triton_backend.py`` showed missing.

- Every kernel read stays inside its tensor: each input and buffer the kernels get is followed
  in memory by NaN, so a load whose mask lets one element past the end (an off-by-one ``<=``
  against a tile boundary, multiplied by an operand that is zero there) turns the result NaN
  instead of passing by luck of what lies beyond.
- ``tl.dot``'s precision follows ``torch.backends.cuda.matmul.allow_tf32`` (the interpreter
  ignores ``input_precision``, so only the plan can show it off the GPU).
- An empty sequence (T = 0) passes its initial state through, with its gradient, as the reference
  loop does (the modules return before any backend there, a direct caller of the layer did not).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from gatedrnn.backends import reference  # noqa: E402
from gatedrnn.backends import triton as triton_backend
from gatedrnn.backends.triton import launch  # noqa: E402
from gatedrnn.config import CellConfig  # noqa: E402
from test_triton_backend import (  # noqa: E402  # noqa: F401  (_poison_and_reset: the NaN buffers and tuning reset, autouse)
    CONFIGS,
    _poison_and_reset,
    _tf32,
    compare_layer,
    interpreter,
    layer_run,
    layer_weights,
    sample_noise,
)

# elements of poison after every tensor: more than any tile reaches past a boundary
_TAIL = 64


def nan_tailed(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` whose storage goes on past its end with poison: NaN for
    floating tensors, a huge value for integer ones (lengths)."""
    poison = float("nan") if t.is_floating_point() else 2**30
    flat = torch.full((t.numel() + _TAIL,), poison, dtype=t.dtype, device=t.device)
    flat[: t.numel()] = t.reshape(-1)
    return flat[: t.numel()].view(t.shape)


def _tailed_args(args: tuple) -> tuple:
    """Every tensor of a launcher's arguments (also inside its dataclasses) replaced by a NaN-tailed copy."""
    def tail(a):
        if isinstance(a, torch.Tensor) and a.numel():
            return nan_tailed(a)
        if dataclasses.is_dataclass(a) and not isinstance(a, type):
            return dataclasses.replace(a, **{f.name: tail(getattr(a, f.name)) for f in dataclasses.fields(a)})
        return a
    return tuple(tail(a) for a in args)


@pytest.fixture
def reads_past_the_end_are_nan(monkeypatch):
    """The kernels' inputs (weights, the padded fgr weight, xw, states, masks, saved buffers,
    gradients) and every buffer they fill sit in front of NaN. The launchers write results into
    the buffers they are given, so the copies stand in for them only on the way in."""
    poisoned = launch._new_buffer  # already NaN inside (the autouse fixture)
    monkeypatch.setattr(launch, "_new_buffer", lambda shape, dtype, device: nan_tailed(poisoned(shape, dtype, device)))
    for name in ("forward", "backward"):
        original = getattr(launch, name)
        monkeypatch.setattr(launch, name, lambda *args, _f=original: _f(*_tailed_args(args)))


@interpreter
@pytest.mark.parametrize("name, tuning, noise", [
    ("lstm_peephole_proj_nobias", {}, None),
    ("gru_reset_before", {}, "train"),
    ("gru", {"resident": False, "block_k": 2, "block_b": 2}, None),
    ("lstm_fgr_proj_ln", {}, "eval"),
], ids=["lstm_peephole_proj", "gru_before_train", "gru_streamed", "lstm_fgr_proj_ln_eval"])
def test_no_read_past_the_end_of_any_tensor(name, tuning, noise, reads_past_the_end_are_nan):
    """H = 5 (R = 5 or 3 or 2): the tiles (8 wide) run past every gate block and weight row, and
    the last rows of each tensor end just before the poison. A mask that lets column R or row H
    through reads the next row's first element inside a tensor (harmless, as the other operand
    is zero there) and NaN after its last row; the result must still match the reference."""
    launch.tuning = launch.Tuning(**tuning)
    cfg = CONFIGS[name]
    compare_layer(cfg, T=4, B=3, I=2, reverse=True, lengths=torch.tensor([4, 1, 3]),
                  noise=sample_noise(cfg, 4, 3, noise))


@interpreter
@pytest.mark.parametrize("dtype, allow, precision", [
    (torch.float32, False, "ieee"), (torch.float32, True, "tf32"), (torch.float16, True, "ieee"),
    (torch.float64, True, "ieee"),
], ids=["fp32", "fp32_tf32", "fp16", "fp64"])
def test_dot_precision_follows_the_tf32_switch(dtype, allow, precision):
    """Float32 runs tf32 dots only where torch's matmul switch allows it (the GPU's fp32 bound,
    1e-5, needs ieee); other dtypes always ieee. Checked on both kernels' plans, since the
    interpreter computes the same either way."""
    cfg = CellConfig("lstm", 4)
    weights = {k: v.to(dtype).requires_grad_(True) for k, v in layer_weights(cfg, 2).items()}
    x = torch.randn(3, 2, 2, dtype=dtype)
    state = tuple(torch.randn(2, s, dtype=dtype) for s in cfg.state_sizes)
    with _tf32(allow):
        out, _, _ = triton_backend.run_layer(cfg, x, state, weights)
        out.sum().backward()
    assert launch.last_plans["forward"].consts["PREC"] == precision
    assert launch.last_plans["backward"].consts["PREC"] == precision


@interpreter
@pytest.mark.parametrize("name, noise", [("lstm_proj", None), ("gru", "train"), ("rnn_relu", None)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_empty_sequence_passes_the_state_through(name, noise, reverse):
    cfg = CONFIGS[name]
    x = torch.randn(0, 3, 2, dtype=torch.float64)
    state = tuple(torch.randn(3, s, dtype=torch.float64) for s in cfg.state_sizes)
    weights = layer_weights(cfg, 2)
    (out, *final), grads = layer_run(triton_backend, cfg, x, state, weights, reverse, None, sample_noise(cfg, 0, 3, noise))
    (ref_out, *ref_final), ref_grads = layer_run(reference, cfg, x, state, weights, reverse, None,
                                                sample_noise(cfg, 0, 3, noise))
    assert out.shape == ref_out.shape == (0, 3, cfg.output_size)
    for got, initial in zip(final, state):
        assert torch.equal(got, initial)
    for k in ref_grads:
        assert (grads[k] is None) == (ref_grads[k] is None), k
        if ref_grads[k] is not None:
            assert torch.equal(grads[k], ref_grads[k]), k
    assert grads["state0"] is not None


@interpreter
def test_cell_state_is_carried_in_float32():
    """c_0 = 256 and c_t = c_{t-1} + 0.1 (f = i = 1 in float16, g = tanh(0.1)): a cell state rounded
    to float16 (spacing 0.25 at 256) each step never moves, the float32 carry reaches
    256 + 10 tanh(0.1) = 257.0 after 10 steps (bfloat16 does not run under the interpreter)."""
    cfg, H, T, dtype = CellConfig("lstm", 2), 2, 10, torch.float16
    weights = {"weight_ih": torch.zeros(4 * H, 1), "weight_hh": torch.zeros(4 * H, H),
               "bias_ih": torch.zeros(4 * H), "bias_hh": torch.zeros(4 * H)}
    weights["bias_ih"][: 2 * H] = 20.0  # i = f = sigmoid(20) = 1 in half precision
    weights["bias_ih"][2 * H: 3 * H] = 0.1
    weights = {k: v.to(dtype) for k, v in weights.items()}
    state = (torch.zeros(1, H, dtype=dtype), torch.full((1, H), 256.0, dtype=dtype))
    with torch.no_grad():
        _, (_, c), _ = triton_backend.run_layer(cfg, torch.zeros(T, 1, 1, dtype=dtype), state, weights)
    expected = 256.0 + T * torch.tanh(weights["bias_ih"][2 * H].double()).item()
    assert c.dtype == dtype
    torch.testing.assert_close(c.double(), torch.full((1, H), expected, dtype=torch.float64).to(dtype).double())
