"""The Triton backend against the reference loop.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before the
backend is imported) at small awkward sizes in float64, where they must agree to rounding.
``gpu``-marked tests run the compiled kernels at real sizes in every dtype against a float64
reference (``benchmarks/gpu_check.sh`` runs them on a lent GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

import catalogue  # noqa: E402
import gatedrnn  # noqa: E402
from gatedrnn.backends import choose, reference  # noqa: E402
from gatedrnn.backends import triton as triton_backend  # noqa: E402
from gatedrnn.backends.triton import launch, measured, offline, op  # noqa: E402
from gatedrnn.config import LSTM_VARIANTS, CellConfig, Noise  # noqa: E402
from helpers import assert_close_results, rel_err, run_and_grad  # noqa: E402

interpreter = pytest.mark.skipif(not launch.interpreting(), reason="needs TRITON_INTERPRET=1 (CPU run)")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or launch.interpreting(), reason="needs a CUDA GPU, without the interpreter"
)


def _config_label(family: str, options: dict) -> str:
    """A readable key for a configuration: ``lstm_peephole_proj_ln``, ``gru_reset_before``, ``rnn_relu``."""
    parts = [family]
    for key, value in options.items():
        if key in ("variant", "nonlinearity") and value != "vanilla":
            parts.append(value)
        elif key == "reset_after" and not value:
            parts.append("reset_before")
        elif key == "proj_size" and value:
            parts.append("proj")
        elif key == "layer_norm" and value:
            parts.append("ln")
        elif key == "bias" and not value:
            parts.append("nobias")
        elif key not in ("variant", "nonlinearity", "reset_after", "proj_size", "layer_norm", "bias"):
            parts.append(f"{key}-{value}")
    return "_".join(parts)


def _configs(cases: list[tuple[str, dict]]) -> dict[str, CellConfig]:
    return {_config_label(family, options): CellConfig(family, 5, **options) for family, options in cases}


# every configuration the families name a Triton kernel for, and the combinations beside them
CONFIGS = _configs(catalogue.family_configurations("triton")) | _configs(
    [
        ("lstm", dict(variant="peephole", proj_size=2, bias=False)),
        ("lstm", dict(variant="cifg", layer_norm=True, bias=False)),
        ("lstm", dict(proj_size=3, layer_norm=True)),
        ("lstm", dict(variant="fgr", proj_size=3, layer_norm=True)),
        ("gru", dict(bias=False)),
        ("gru", dict(layer_norm=True, bias=False)),
    ]
)
LN_NAMES = ["lstm_ln", "lstm_proj_ln", "gru_ln", "gru_reset_before_ln"]


@pytest.fixture(autouse=True)
def _poison_and_reset(monkeypatch):
    """Every buffer the kernels must fill starts as NaN; launch overrides are undone after a test."""

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(launch, "_new_buffer", poisoned)
    monkeypatch.setattr(launch, "tuning", launch.Tuning())
    monkeypatch.setenv("GATEDRNN_TRITON_CUDA", "1")


def layer_weights(cfg: CellConfig, input_size: int, dtype=torch.float64, device="cpu") -> dict[str, torch.Tensor]:
    shapes = cfg.parameter_shapes(input_size)
    scale = 1.5 / cfg.hidden_size**0.5
    weights = {k: (torch.rand(s, dtype=dtype, device=device) * 2 - 1) * scale for k, s in shapes.items()}
    for k in weights:
        if k.startswith("ln_weight"):  # gains around 1, all different, so that a wrong gain index shows
            weights[k] = 1.0 + weights[k]
    return weights


def layer_run(backend, cfg, x, state, weights, reverse, lengths, noise=None, reset=None):
    """Outputs and every gradient of a fixed random projection of (output, final state)."""
    x = x.detach().clone().requires_grad_(True)
    state = tuple(s.detach().clone().requires_grad_(True) for s in state)
    weights = {k: v.detach().clone().requires_grad_(True) for k, v in weights.items()}
    options = {} if reset is None else {"reset": reset}
    out, final, _ = backend.run_layer(cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise, **options)
    gen = torch.Generator(device=x.device).manual_seed(7)
    results = [out, *final]
    loss = sum(
        (r.double() * torch.randn(r.shape, generator=gen, dtype=torch.float64, device=x.device)).sum() for r in results
    )
    loss.backward()
    grads = {
        "x": x.grad,
        **{f"state{k}": s.grad for k, s in enumerate(state)},
        **{k: v.grad for k, v in weights.items()},
    }
    return [r.detach() for r in results], grads


def sample_noise(cfg, T, B, mode, device="cpu") -> Noise | None:
    """A call's regularisation: ``"train"`` sampled zoneout masks (p = 0.4) and a recurrent dropout
    mask (p = 0.3), ``"eval"`` zoneout's expectation, ``"dropout"`` the dropout mask alone."""
    if mode is None:
        return None

    def bernoulli(shape, p):  # noqa: E306
        return torch.bernoulli(torch.full(shape, p, dtype=torch.float64, device=device))

    noise = Noise(zoneout=0.0 if mode == "dropout" else 0.4)
    if mode in ("train", "dropout"):
        noise.recurrent_mask = bernoulli((B, cfg.output_size), 0.7) / 0.7
    if mode == "train":
        noise.zoneout_h = bernoulli((T, B, cfg.output_size), 0.4)
        if len(cfg.states) > 1:
            noise.zoneout_c = bernoulli((T, B, cfg.hidden_size), 0.4)
    return noise


def compare_layer(
    cfg,
    T,
    B,
    I,
    reverse,
    lengths,
    dtype=torch.float64,
    device="cpu",
    tol=1e-12,
    noise=None,
    zero_states=(),
    reset=None,
):
    """Triton in ``dtype`` against the float64 reference on the same (``dtype``-rounded) inputs and
    weights (and regularisation ``noise``, and restarts ``reset`` (T, B) in walk order): every
    output, final state and gradient within relative error ``tol``. Initial states random, but zero
    for the state names in ``zero_states``."""
    cast = lambda t: t.to(dtype)  # noqa: E731
    x = cast(torch.randn(T, B, I, dtype=torch.float64, device=device))
    state = tuple(
        cast(torch.randn(B, s, dtype=torch.float64, device=device) * (0.0 if k in zero_states else 0.5))
        for k, s in zip(cfg.states, cfg.state_sizes)
    )
    weights = {k: cast(v) for k, v in layer_weights(cfg, I, device=device).items()}
    expected = layer_run(
        reference,
        cfg,
        x.double(),
        tuple(s.double() for s in state),
        {k: v.double() for k, v in weights.items()},
        reverse,
        lengths,
        noise,
        reset,
    )
    got = layer_run(
        triton_backend, cfg, x, state, weights, reverse, lengths, None if noise is None else noise.to(dtype), reset
    )
    for k, (a, b) in enumerate(zip(got[0], expected[0])):
        assert rel_err(a.double(), b) <= tol, f"output {k}: rel err {rel_err(a.double(), b):.2e}"
    for name in expected[1]:
        err = rel_err(got[1][name].double(), expected[1][name])
        assert err <= tol, f"gradient {name}: rel err {err:.2e}"


# ----- interpreter: the kernels' logic at small sizes ----------------------------------------


@interpreter
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_layer_matches_reference(name, reverse):
    """Outputs, final states and all gradients, with padded sequences of mixed lengths."""
    compare_layer(CONFIGS[name], T=5, B=3, I=3, reverse=reverse, lengths=torch.tensor([5, 2, 4]))


@interpreter
@pytest.mark.parametrize("cls", [gatedrnn.LSTM, gatedrnn.GRU])
def test_a_second_derivative_says_which_backends_give_one(cls):
    """The backward kernel is first order: gradients taken with create_graph=True have the fused
    backward's values, and differentiating them again names the backends that can, instead of
    torch's generic "no autograd formula" error."""
    torch.manual_seed(0)
    fast = cls(3, 4, backend="triton", dtype=torch.float64)
    ref = cls(3, 4, backend="reference", dtype=torch.float64)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = [torch.autograd.grad(m(x)[0].pow(2).sum(), list(m.parameters()), create_graph=True) for m in (fast, ref)]
    assert all(rel_err(a, b) < 1e-10 for a, b in zip(*grads))
    with pytest.raises(RuntimeError, match="not implemented by backend='triton'.*backend='reference'"):
        sum(g.pow(2).sum() for g in grads[0]).backward()


@interpreter
@pytest.mark.parametrize("name", ["lstm_fgr", "gru"])
def test_lengths_beyond_the_sequence_mean_every_step(name):
    """A length above T (run_layer called directly) means all T steps are real, as in the
    reference loop (the backend clamps it to T, so that a reversed fgr row's first step does not
    look for a previous step T that does not exist)."""
    compare_layer(CONFIGS[name], T=3, B=3, I=2, reverse=True, lengths=torch.tensor([5, 3, 1]))


@interpreter
@pytest.mark.parametrize("name, noise", [("lstm_proj", None), ("gru", "train"), ("rnn_relu", None)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_empty_sequence_passes_the_state_through(name, noise, reverse):
    """T = 0 returns the initial state, and its gradient, as the reference loop does (the modules
    return before any backend there; a direct caller of the layer does not)."""
    cfg = CONFIGS[name]
    x = torch.randn(0, 3, 2, dtype=torch.float64)
    state = tuple(torch.randn(3, s, dtype=torch.float64) for s in cfg.state_sizes)
    weights = layer_weights(cfg, 2)
    (out, *final), grads = layer_run(
        triton_backend, cfg, x, state, weights, reverse, None, sample_noise(cfg, 0, 3, noise)
    )
    (ref_out, *ref_final), ref_grads = layer_run(
        reference, cfg, x, state, weights, reverse, None, sample_noise(cfg, 0, 3, noise)
    )
    assert out.shape == ref_out.shape == (0, 3, cfg.output_size)
    for got, initial in zip(final, state):
        assert torch.equal(got, initial)
    for k in ref_grads:
        assert (grads[k] is None) == (ref_grads[k] is None), k
        if ref_grads[k] is not None:
            assert torch.equal(grads[k], ref_grads[k]), k
    assert grads["state0"] is not None


@interpreter
@pytest.mark.parametrize(
    "name", ["lstm_peephole_proj_nobias", "gru_reset_before", "rnn_relu", "gru", "lstm_fgr", *LN_NAMES]
)
def test_persistent_kernel_path(name):
    """The single-launch path with grid barriers (one program: the interpreter runs programs in turn)."""
    launch.tuning.mode = "persistent"
    compare_layer(CONFIGS[name], T=4, B=3, I=2, reverse=True, lengths=torch.tensor([1, 4, 3]))


@interpreter
@pytest.mark.parametrize("name", ["lstm_proj", "gru_reset_before", "lstm_peephole", "lstm_fgr_proj_ln", *LN_NAMES])
def test_many_programs_and_batch_blocks(name):
    """One unit per program and one batch row per block: every slice boundary is exercised (and
    with layer norm, statistics merged from five programs)."""
    launch.tuning.block_h, launch.tuning.block_b = 1, 1
    compare_layer(CONFIGS[name], T=3, B=3, I=2, reverse=False, lengths=None)


@interpreter
@pytest.mark.parametrize("mode", ["persistent", "stepwise"])
@pytest.mark.parametrize(
    "name",
    [
        "lstm_peephole_proj_nobias",
        "gru",
        "gru_reset_before",
        "rnn_tanh",
        "lstm_cifg",
        "lstm_proj_ln",
        "gru_reset_before_ln",
        "lstm_fgr",
        "lstm_fgr_proj_ln",
    ],
)
def test_streamed_weights(name, mode):
    """The weights-don't-fit path: every phase re-reads its weight slice in chunks of 2 columns
    (R = 5 or 2: a ragged last chunk; fgr's gate weight too), in batch blocks of 2 rows, with a
    zero-length sequence; the persistent path with its chunk loops marked for 3-stage pipelining
    (the interpreter runs them plainly: what it checks is that the marked loops compute the same)."""
    stages = 3 if mode == "persistent" else 1
    launch.tuning = launch.Tuning(mode=mode, resident=False, block_k=2, block_b=2, stages=stages)
    compare_layer(CONFIGS[name], T=4, B=3, I=2, reverse=mode == "stepwise", lengths=torch.tensor([4, 0, 3]))
    assert not launch.last_plans["forward"].consts["RESIDENT"]
    assert launch.last_plans["forward"].consts["STAGES"] == stages
    assert launch.last_plans["backward"].persistent == (mode == "persistent")


@interpreter
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "name",
    [
        "lstm_proj",
        "lstm_nog",
        "gru",
        "gru_reset_before",
        "rnn_relu",
        "lstm_ln",
        "gru_ln",
        "lstm_fgr",
        "slstm_num_heads-5",
        "minlstm_activation-g_mode-parallel",
    ],
)
def test_low_precision_matches_float64_reference(name, dtype, tol):
    """fp32 / fp16 storage with fp32 accumulation against float64 on the same rounded inputs
    (bfloat16 runs on the GPU only: the interpreter's tl.dot is wrong for it)."""
    compare_layer(CONFIGS[name], T=6, B=2, I=3, reverse=False, lengths=torch.tensor([6, 3]), dtype=dtype, tol=tol)


@interpreter
def test_cell_state_is_carried_in_float32():
    """c_0 = 256 and c_t = c_{t-1} + 0.1 (f = i = 1 in float16, g = tanh(0.1)): a cell state rounded
    to float16 (spacing 0.25 at 256) each step never moves, the float32 carry reaches
    256 + 10 tanh(0.1) = 257.0 after 10 steps (bfloat16 does not run under the interpreter)."""
    cfg, H, T, dtype = CellConfig("lstm", 2), 2, 10, torch.float16
    weights = {
        "weight_ih": torch.zeros(4 * H, 1),
        "weight_hh": torch.zeros(4 * H, H),
        "bias_ih": torch.zeros(4 * H),
        "bias_hh": torch.zeros(4 * H),
    }
    weights["bias_ih"][: 2 * H] = 20.0  # i = f = sigmoid(20) = 1 in half precision
    weights["bias_ih"][2 * H : 3 * H] = 0.1
    weights = {k: v.to(dtype) for k, v in weights.items()}
    state = (torch.zeros(1, H, dtype=dtype), torch.full((1, H), 256.0, dtype=dtype))
    with torch.no_grad():
        _, (_, c), _ = triton_backend.run_layer(cfg, torch.zeros(T, 1, 1, dtype=dtype), state, weights)
    expected = 256.0 + T * torch.tanh(weights["bias_ih"][2 * H].double()).item()
    assert c.dtype == dtype
    torch.testing.assert_close(c.double(), torch.full((1, H), expected, dtype=torch.float64).to(dtype).double())


@interpreter
@pytest.mark.parametrize(
    "dtype, allow, precision",
    [
        (torch.float32, False, "ieee"),
        (torch.float32, True, "tf32"),
        (torch.float16, True, "ieee"),
        (torch.float64, True, "ieee"),
    ],
    ids=["fp32", "fp32_tf32", "fp16", "fp64"],
)
def test_dot_precision_follows_the_tf32_switch(dtype, allow, precision):
    """Float32 runs tf32 dots only where torch's matmul switch allows it (the GPU's fp32 bound,
    1e-5, needs ieee); other dtypes always ieee. Checked on both kernels' plans, since the
    interpreter ignores ``input_precision`` and computes the same either way."""
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
@pytest.mark.parametrize("name", ["lstm", "lstm_peephole_proj_nobias", "gru_nobias", "gru_ln", "rnn_tanh"])
def test_under_autocast_every_operand_runs_in_autocast_dtype(name):
    """Under autocast (float16 here: the interpreter's bfloat16 dot is wrong) a float32 layer runs
    as cuDNN's does: x, states and weights in autocast's dtype, outputs and final states returned in
    it, gradients back in float32, bitwise what the float16 layer gives without autocast. Without
    the casts the bias sum made the LSTM's projection float32 again and a bias-free GRU mixed
    float16 steps with float32 weights."""
    cfg = CONFIGS[name]
    x = torch.randn(5, 3, 2)
    state = tuple(torch.randn(3, s) for s in cfg.state_sizes)
    weights = {k: v.float() for k, v in layer_weights(cfg, 2).items()}
    lengths = torch.tensor([5, 2, 4])
    with torch.autocast("cpu", dtype=torch.float16):
        assert triton_backend.supports(cfg, x) is None
        got = layer_run(triton_backend, cfg, x, state, weights, False, lengths)
    half = layer_run(
        triton_backend,
        cfg,
        x.half(),
        tuple(s.half() for s in state),
        {k: v.half() for k, v in weights.items()},
        False,
        lengths,
    )
    for a, b in zip(got[0], half[0]):
        assert a.dtype == torch.float16 and torch.equal(a, b)
    for key, grad in got[1].items():
        assert grad.dtype == torch.float32, key
        assert torch.equal(grad, half[1][key].float()), key
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "bfloat16 does not run under the Triton interpreter" in triton_backend.supports(cfg, x)
    noise = sample_noise(cfg, 5, 3, "train")  # float32 masks: a recording call meets them on the reference loop
    with torch.autocast("cpu", dtype=torch.float16):
        recorded = triton_backend.run_layer(cfg, x, state, weights, lengths=lengths, noise=noise, record=True)
        fused = triton_backend.run_layer(cfg, x, state, weights, lengths=lengths, noise=noise)
        wide = triton_backend.run_layer(
            cfg,
            x.double(),
            tuple(s.double() for s in state),
            {k: v.double() for k, v in weights.items()},
            lengths=lengths,
        )
    assert recorded[0].dtype == fused[0].dtype == torch.float16 and rel_err(recorded[0], fused[0]) < 1e-2
    assert wide[0].dtype == torch.float64  # autocast leaves float64 alone, as torch's own ops do


@interpreter
@pytest.mark.parametrize(
    "name", ["lstm_peephole_proj_nobias", "gru_reset_before", "lstm_proj_ln", "gru_ln", "lstm_fgr_ln"]
)
def test_bitwise_deterministic(name):
    """Two runs on the same inputs give bitwise equal outputs, final states and gradients."""
    cfg = CONFIGS[name]
    x = torch.randn(4, 3, 2, dtype=torch.float32)
    state = tuple(torch.randn(3, s) for s in cfg.state_sizes)
    weights = {k: v.float() for k, v in layer_weights(cfg, 2).items()}
    lengths = torch.tensor([4, 2, 3])
    first = layer_run(triton_backend, cfg, x, state, weights, False, lengths)
    second = layer_run(triton_backend, cfg, x, state, weights, False, lengths)
    assert all(torch.equal(a, b) for a, b in zip(first[0], second[0]))
    assert all(torch.equal(first[1][k], second[1][k]) for k in first[1])


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
@pytest.mark.parametrize(
    "name, tuning, noise, restart",
    [
        ("lstm_peephole_proj_nobias", {}, None, False),
        ("gru_reset_before", {}, "train", False),
        ("gru", {"resident": False, "block_k": 2, "block_b": 2}, None, False),
        ("lstm_fgr_proj_ln", {}, "eval", False),
        ("lstm_fgr_proj_ln", {}, None, True),
        ("gru_reset_before", {"resident": False, "block_k": 2, "block_b": 2}, "train", True),
    ],
    ids=[
        "lstm_peephole_proj",
        "gru_before_train",
        "gru_streamed",
        "lstm_fgr_proj_ln_eval",
        "lstm_fgr_proj_ln_restart",
        "gru_before_streamed_train_restart",
    ],
)
def test_no_read_past_the_end_of_any_tensor(name, tuning, noise, restart, reads_past_the_end_are_nan):
    """Every kernel read stays inside its tensor: each input and buffer is followed in memory by
    NaN, so a load whose mask lets one element past the end (an off-by-one ``<=`` against a tile
    boundary, multiplied by an operand that is zero there) turns the result NaN instead of passing
    by luck of what lies beyond. H = 5 (R = 5 or 3 or 2): the tiles (8 wide) run past every gate
    block and weight row, and the last rows of each tensor end just before the poison. A mask
    that lets column R or row H through reads the next row's first element inside a tensor
    (harmless, as the other operand is zero there) and NaN after its last row; the result must
    still match the reference. The restart mask's tail is True: a read past it restarts a row."""
    launch.tuning = launch.Tuning(**tuning)
    cfg, lengths = CONFIGS[name], torch.tensor([4, 1, 3])
    compare_layer(
        cfg,
        T=4,
        B=3,
        I=2,
        reverse=True,
        lengths=lengths,
        noise=sample_noise(cfg, 4, 3, noise),
        reset=walk_restarts(4, 3, lengths, True) if restart else None,
    )


# every code path of the regularisation once: sampled masks with dropout in every phase layout,
# the expectation in each family, dropout alone (zoneout's code off) where it meets r * h
REGULARISED = [
    (name, "train")
    for name in (
        "lstm",
        "lstm_peephole",
        "lstm_cifg_ln_nobias",
        "lstm_proj",
        "lstm_proj_ln",
        "gru",
        "gru_reset_before",
        "gru_reset_before_ln",
        "rnn_tanh",
        "rnn_relu",
    )
]
REGULARISED += [
    (name, "eval")
    for name in ("lstm", "lstm_peephole", "lstm_proj", "lstm_ln", "gru", "gru_reset_before", "gru_ln", "rnn_tanh")
]
REGULARISED += [
    ("lstm", "dropout"),
    ("gru_reset_before", "dropout"),
    ("lstm_cifg", "train"),
    ("lstm_nfg", "train"),
    ("lstm_niaf", "eval"),
    ("lstm_fgr", "train"),
    ("lstm_fgr_ln", "eval"),
    ("lstm_fgr_ln", "train"),
]


@interpreter
@pytest.mark.parametrize("name, mode", REGULARISED)
def test_regularised_layer_matches_reference(name, mode):
    """Zoneout (sampled masks in training, the expectation in evaluation; on h and the LSTM's
    cell) and recurrent dropout run inside the kernels, with padded sequences of mixed lengths:
    outputs, final states and every gradient. The regularisation visibly changes the result, so
    kernels that ignored it would fail."""
    cfg, T, B = CONFIGS[name], 5, 3
    lengths = torch.tensor([5, 2, 4])
    noise = sample_noise(cfg, T, B, mode)
    # reverse (odd T: the dropout copy's first slot is T % 2 = 1) for every other case
    compare_layer(cfg, T, B, 3, reverse=REGULARISED.index((name, mode)) % 2 == 1, lengths=lengths, noise=noise)
    x = torch.randn(T, B, 3, dtype=torch.float64)
    state = tuple(torch.randn(B, s, dtype=torch.float64) for s in cfg.state_sizes)
    weights = layer_weights(cfg, 3)
    noisy = layer_run(reference, cfg, x, state, weights, False, lengths, noise)[0]
    plain = layer_run(reference, cfg, x, state, weights, False, lengths)[0]
    assert min(rel_err(a, b) for a, b in zip(noisy, plain)) > 1e-3


@interpreter
@pytest.mark.parametrize(
    "name, how",
    [
        ("lstm_peephole", "persistent_streamed"),
        ("lstm_proj_ln", "persistent_streamed"),
        ("gru_reset_before_ln", "persistent_streamed"),
        ("rnn_relu", "persistent_streamed"),
        ("lstm_fgr_proj_ln", "persistent_streamed"),
        ("gru_reset_before", "stepwise_one_unit_per_program"),
        ("rnn_relu", "stepwise_one_unit_per_program"),
    ],
)
def test_regularised_persistent_streamed_and_split(name, how):
    """Zoneout and recurrent dropout on the persistent path with streamed weights in chunks of
    2, and with one unit per program and one batch row per block (the masks' slices at every
    boundary)."""
    if how == "persistent_streamed":
        launch.tuning = launch.Tuning(mode="persistent", resident=False, block_k=2, block_b=2)
    else:
        launch.tuning = launch.Tuning(mode="stepwise", block_h=1, block_b=1)
    cfg = CONFIGS[name]
    compare_layer(
        cfg, T=4, B=3, I=2, reverse=True, lengths=torch.tensor([4, 0, 3]), noise=sample_noise(cfg, 4, 3, "train")
    )


@interpreter
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", ["lstm_proj", "gru_reset_before"])
def test_regularised_low_precision(name, dtype, tol):
    """Zoneout masks and the dropout mask in the storage dtype, against float64."""
    cfg = CONFIGS[name]
    compare_layer(
        cfg,
        T=6,
        B=2,
        I=3,
        reverse=False,
        lengths=torch.tensor([6, 3]),
        dtype=dtype,
        tol=tol,
        noise=sample_noise(cfg, 6, 2, "train"),
    )


def _module_pair(factory, **kwargs):
    ref = factory(backend="reference", dtype=torch.float64, **kwargs)
    with torch.no_grad():  # parameters initialised to zero (the sLSTM's recurrent ones) made random
        for p in ref.parameters():
            if not p.any():
                p.uniform_(-0.5, 0.5)
    fast = factory(backend="triton", dtype=torch.float64, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


MODULES = {
    "lstm_2layer_bidir": (gatedrnn.LSTM, dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)),
    "lstm_proj_bidir_peephole": (
        gatedrnn.LSTM,
        dict(input_size=3, hidden_size=5, proj_size=3, bidirectional=True, variant="peephole"),
    ),
    "gru_2layer_bidir_before": (
        gatedrnn.GRU,
        dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, reset_after=False),
    ),
    "rnn_relu_2layer": (gatedrnn.RNN, dict(input_size=3, hidden_size=4, num_layers=2, nonlinearity="relu")),
    "lstm_ln_2layer_bidir_peephole": (
        gatedrnn.LSTM,
        dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, variant="peephole", layer_norm=True),
    ),
    "gru_ln_bidir_before": (
        gatedrnn.GRU,
        dict(input_size=3, hidden_size=4, bidirectional=True, reset_after=False, layer_norm=True),
    ),
    "lstm_fgr_2layer_bidir_proj": (
        gatedrnn.LSTM,
        dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=3, variant="fgr"),
    ),
    "slstm_2layer_bidir": (
        gatedrnn.SLSTM,
        dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, num_heads=2),
    ),
    "mingru_2layer_bidir": (gatedrnn.MinGRU, dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)),
    "minlstm_bidir": (gatedrnn.MinLSTM, dict(input_size=3, hidden_size=4, bidirectional=True)),
}


@interpreter
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", list(MODULES))
def test_modules_match_reference(name, packed):
    """Stacked and bidirectional modules with backend='triton', initial states given, packed
    sequences of mixed lengths: outputs, final states and every parameter's gradient."""
    factory, kwargs = MODULES[name]
    ref, fast = _module_pair(factory, **kwargs)
    T, B, lengths = 4, 3, [4, 1, 3]
    x = torch.randn(T, B, 3, dtype=torch.float64)
    D, L = 1 + kwargs.get("bidirectional", False), kwargs.get("num_layers", 1)
    hx = tuple(torch.randn(L * D, B, s, dtype=torch.float64) for s in ref.cell_config.state_sizes)

    def make_input():
        leaf = x.clone().requires_grad_(True)
        if packed:
            return leaf, torch.nn.utils.rnn.pack_padded_sequence(leaf, lengths, enforce_sorted=False)
        return leaf, leaf

    assert_close_results(run_and_grad(fast, make_input, hx), run_and_grad(ref, make_input, hx), tol=1e-12)


@interpreter
@pytest.mark.parametrize(
    "factory, kwargs, training",
    [
        (gatedrnn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=3), True),
        (gatedrnn.GRU, dict(reset_after=False, layer_norm=True), False),
    ],
    ids=["lstm_2layer_bidir_proj_train", "gru_ln_before_eval"],
)
def test_regularised_modules_match_reference(factory, kwargs, training):
    """Modules with zoneout and recurrent dropout on backend='triton': the masks the module draws
    (the same for both backends under the same seed) go into the kernels; in evaluation zoneout's
    expectation. Outputs, final states and every parameter's gradient."""
    ref, fast = _module_pair(factory, input_size=3, hidden_size=5, zoneout=0.3, recurrent_dropout=0.25, **kwargs)
    ref.train(training)
    fast.train(training)
    x = torch.randn(4, 3, 3, dtype=torch.float64)

    def make_input():
        leaf = x.clone().requires_grad_(True)
        return leaf, leaf

    torch.manual_seed(5)
    got = run_and_grad(fast, make_input)
    torch.manual_seed(5)
    assert_close_results(got, run_and_grad(ref, make_input), tol=1e-12)


@interpreter
def test_mixed_zoneout_modes_run_on_the_reference_loop():
    """An LSTM zoneout with a sampled mask for h but the expectation for c (a hand-made Noise;
    the kernels take one mode for both states) runs on the reference loop, same numbers."""
    cfg = CONFIGS["lstm"]
    noise = sample_noise(cfg, 4, 3, "train")
    noise.zoneout_c = None
    assert triton_backend.kernel_noise(cfg, noise, torch.zeros(4, 3, 3)) is None
    compare_layer(cfg, T=4, B=3, I=3, reverse=False, lengths=None, noise=noise)


@interpreter
def test_recorded_calls_run_on_the_reference_loop():
    """Gate recording runs on the reference loop (the kernels keep no per-step trace)."""
    ref, fast = _module_pair(gatedrnn.GRU, input_size=3, hidden_size=4, zoneout=0.3)
    ref.eval()
    fast.eval()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    trace = gatedrnn.inspect_gates(fast, x)
    assert set(trace.gates[(0, 0)]) == {"r", "z", "n", "h"}
    assert rel_err(trace.output, gatedrnn.inspect_gates(ref, x).output) <= 1e-12


@interpreter
def test_compiles_with_torch_compile():
    """A module with backend='triton' runs forward and backward under torch.compile."""
    ref, fast = _module_pair(gatedrnn.LSTM, input_size=3, hidden_size=4, proj_size=2)
    compiled = torch.compile(fast, backend="aot_eager")
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    out, (h, c) = compiled(x)
    (out.sum() + h.sum() + c.sum()).backward()
    expected, (h_ref, c_ref) = ref(x.detach())
    assert rel_err(out, expected) < 1e-12 and rel_err(c, c_ref) < 1e-12
    assert x.grad is not None and fast.weight_hh_l0.grad is not None


@interpreter
@pytest.mark.parametrize(
    "name, mode, restart",
    [
        ("lstm_peephole_proj_nobias", None, False),
        ("gru", None, False),
        ("gru_reset_before", None, False),
        ("lstm_proj_ln", None, False),
        ("gru_ln", None, False),
        ("lstm_peephole", "train", False),
        ("rnn_tanh", "train", False),
        ("gru_reset_before", "eval", False),
        ("lstm_fgr", None, False),
        ("lstm_fgr_proj_ln", "train", False),
        ("lstm_fgr", None, True),
        ("gru_reset_before_ln", "train", True),
    ],
)
def test_custom_op_registration(name, mode, restart):
    """torch.library's own check of the ops: schema, fake implementation (shapes under
    FakeTensor, i.e. torch.compile tracing) and the registered autograd formula; also with
    zoneout and recurrent dropout, and with restarts."""
    cfg = CONFIGS[name]
    T, B, H, R = 3, 2, cfg.hidden_size, cfg.output_size
    w = layer_weights(cfg, 2)
    xw = torch.randn(T, B, cfg.num_gates * H, dtype=torch.float64, requires_grad=True)
    lstm = len(cfg.states) > 1
    spec = launch.KernelSpec.from_config(cfg)
    zoneout, keep_h, keep_c, rmask = triton_backend.kernel_noise(cfg, sample_noise(cfg, T, B, mode), xw)
    operands = op.Operands(
        c0=torch.randn(B, H, dtype=torch.float64) if lstm else None,
        weight_hr=w.get("weight_hr"),
        weight_ch=w.get("weight_ch"),
        weight_gg=launch.padded_gate_weight(w["weight_gg"]).requires_grad_(True) if spec.fgr else None,
        bias_hn=torch.randn(H, dtype=torch.float64) if spec.split_recurrent_grad else None,
        ln_weight_hh=w.get("ln_weight_hh"),
        ln_weight_c=w.get("ln_weight_c"),
        ln_bias_c=w.get("ln_bias_c"),
        keep_h=keep_h,
        keep_c=keep_c,
        rmask=rmask,
        restart=torch.tensor([[True, False], [False, True], [True, False]]) if restart else None,
    )
    settings = op.Settings(cfg.kernel("triton"), spec.variant, spec.reset_after, zoneout=zoneout, eps=cfg.eps)
    args = (
        xw,
        torch.tensor([3, 2], dtype=torch.int32),
        torch.randn(B, R, dtype=torch.float64),
        w["weight_hh"].requires_grad_(True),
        operands.pack(xw),
        *settings.arguments(),
    )
    torch.library.opcheck(
        op.triton_recurrence, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration")
    )


@pytest.mark.parametrize("zoneout", [0, 1, 2])
def test_op_settings_survive_their_encoding(zoneout):
    """The ops' settings go as (cell, variant, flags, eps): every combination of the switches
    and zoneout mode decodes to itself, and an unknown zoneout mode is refused."""
    for bits in range(16):
        switches = dict(
            reset_after=bool(bits & 1), relu=bool(bits & 2), reverse=bool(bits & 4), allow_tf32=bool(bits & 8)
        )
        settings = op.Settings("gru", "vanilla", zoneout=zoneout, eps=1e-3, **switches)
        assert op.Settings.from_arguments(*settings.arguments()) == settings
    with pytest.raises(ValueError, match="zoneout mode must be 0, 1 or 2, got 3"):
        op.Settings("lstm", zoneout=3).arguments()


def test_kernel_spec_takes_only_its_own_cells():
    """A spec names one of the backend's kernels (``launch.CELLS``), the ``CELL`` constexpr its
    kind; any other name is refused rather than run on another cell's kernel."""
    assert [launch.KernelSpec(name).constexprs()["CELL"] for name in launch.CELLS] == [
        launch.LSTM,
        launch.GRU,
        launch.RNN,
    ]
    assert launch.KernelSpec.from_config(CONFIGS["gru_reset_before_ln"]) == launch.KernelSpec(
        "gru", reset_after=False, layer_norm=True
    )
    with pytest.raises(ValueError, match="no recurrence kernel named 'mingru'"):
        launch.KernelSpec("mingru")


def test_supports_every_variant(monkeypatch):
    """Every LSTM variant (fgr included), with and without layer norm and projection, every GRU
    and RNN form: the kernels take them all, and backend='triton' is chosen for them."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(1, dtype=torch.float32)
    cfgs = [
        CellConfig("lstm", 4, variant=v, layer_norm=ln, proj_size=p)
        for v in LSTM_VARIANTS
        for ln in (False, True)
        for p in (0, 2)
    ]
    cfgs += [CellConfig("gru", 4, reset_after=ra, layer_norm=ln) for ra in (False, True) for ln in (False, True)]
    cfgs += [CellConfig("rnn", 4, nonlinearity=n) for n in ("tanh", "relu")]
    for cfg in cfgs:
        assert triton_backend.supports(cfg, x) is None, cfg
    assert choose("triton", CellConfig("lstm", 4, variant="fgr"), x, regularised=False) == "triton"


def test_padded_gate_weight_places_the_three_gates_and_keeps_the_gradient():
    """fgr's (3H, 3H) weight in (i, f, o) order becomes (4H, 4H) in (i, f, g, o) order with zero g
    blocks: the padded product of (i, f, g, o) is the original product of (i, f, o) with zero
    in g's place, whatever g holds, and the gradient reaches the original weight."""
    H, B = 3, 2
    w = torch.randn(3 * H, 3 * H, dtype=torch.float64, requires_grad=True)
    i, f, g, o = torch.randn(4, B, H, dtype=torch.float64)
    padded = launch.padded_gate_weight(w)
    assert padded.shape == (4 * H, 4 * H)
    got = torch.cat([i, f, g, o], -1).matmul(padded.t()).unflatten(-1, (4, H))
    want = torch.cat([i, f, o], -1).matmul(w.t()).unflatten(-1, (3, H))
    assert torch.allclose(got[:, [0, 1, 3]], want, atol=1e-12)
    assert got[:, 2].abs().max() == 0
    upstream = torch.randn(4 * H, 4 * H, dtype=torch.float64)
    (padded * upstream).sum().backward()
    keep = [k * H + u for k in (0, 1, 3) for u in range(H)]
    assert torch.equal(w.grad, upstream[keep][:, keep])


@interpreter
@pytest.mark.parametrize("name", LN_NAMES)
def test_layer_norm_phases_and_saved_statistics(name):
    """The layer-norm plans add the exchange phases the design says (forward SA/A/SB/C/B, backward
    A/DN/B/C/D), and the saved statistics are the reference's: x̂ of every gate block's recurrent
    product has zero mean and unit variance over its H units, r = 1 / sqrt(var + eps)."""
    cfg = CONFIGS[name]
    spec = launch.KernelSpec.from_config(cfg)
    expected = {"lstm_ln": (3, 3), "lstm_proj_ln": (4, 4), "gru_ln": (2, 2), "gru_reset_before_ln": (4, 4)}[name]
    assert (spec.phase_slots(False)["NPH"], spec.phase_slots(True)["NPH"]) == expected
    launch.tuning.block_h = 2
    T, B, I, H = 3, 2, 3, cfg.hidden_size
    w = layer_weights(cfg, I)
    h0 = torch.randn(B, cfg.output_size, dtype=torch.float64)
    xw, bias_hn = triton_backend.input_projection(cfg, torch.randn(T, B, I, dtype=torch.float64), w)
    ln = launch.LayerNormWeights(w["ln_weight_hh"], w.get("ln_weight_c"), w.get("ln_bias_c"), cfg.eps)
    c0 = torch.randn(B, H, dtype=torch.float64) if len(cfg.states) > 1 else None
    hs, cs, _, aux, hat, hatc, rstd = launch.forward(
        spec,
        xw,
        torch.full((B,), T, dtype=torch.int32),
        h0,
        c0,
        w["weight_hh"],
        w.get("weight_hr"),
        None,
        None,
        bias_hn,
        ln,
        launch.NoiseBuffers(),
        False,
        False,
    )
    blocks = hat.unflatten(-1, (cfg.num_gates, H))  # (T, B, G, H)
    assert blocks.mean(-1).abs().max() < 1e-12
    # var(x̂) = var / (var + eps) = 1 - eps r^2
    assert (blocks.var(-1, unbiased=False) - (1 - cfg.eps * rstd[..., : cfg.num_gates] ** 2)).abs().max() < 1e-12
    raw = hs[:-1].matmul(w["weight_hh"].t()).unflatten(-1, (cfg.num_gates, H))  # (T, B, G, H)
    rz = slice(0, 2) if spec.gru_before else slice(None)  # the n block of the reset-before GRU multiplies r * h
    ref_rstd = torch.rsqrt(raw[..., rz, :].var(-1, unbiased=False) + cfg.eps)
    assert torch.allclose(rstd[..., : cfg.num_gates][..., rz], ref_rstd, rtol=1e-12)
    if spec.gru_before:
        n_raw = aux.matmul(w["weight_hh"][2 * H :].t())
        assert torch.allclose(rstd[..., 2], torch.rsqrt(n_raw.var(-1, unbiased=False) + cfg.eps), rtol=1e-12)
    if len(cfg.states) > 1:
        assert torch.allclose(hatc, torch.nn.functional.layer_norm(cs[1:], (H,), eps=cfg.eps), atol=1e-12)


def test_supports_devices_and_dtypes(monkeypatch):
    cfg = CellConfig("lstm", 4, variant="peephole")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in triton_backend.supports(cfg, torch.zeros(1))
    assert choose("auto", cfg, torch.zeros(1), regularised=False) != "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_backend.supports(cfg, torch.zeros(1, dtype=torch.float64)) is None
    assert "int64" in triton_backend.supports(cfg, torch.zeros(1, dtype=torch.int64))
    assert "interpreter" in triton_backend.supports(cfg, torch.zeros(1, dtype=torch.bfloat16))
    assert choose("auto", cfg, torch.zeros(1), regularised=False) != "triton"
    assert "meta" in triton_backend.supports(cfg, torch.zeros(1, device="meta"))


def test_plan_keeps_resident_weights_only_where_they_fit():
    """On an H100-sized device (132 SMs, 227 KiB shared memory per block) the benchmark's target
    size keeps the forward's weights resident and streams the backward's and fp32's; every plan
    is persistent with at most one program per SM."""
    spec = launch.KernelSpec("lstm")
    plan = functools.partial(_h100_plan, spec, B=16, H=1024, R=1024)
    assert plan(False, torch.bfloat16).consts["RESIDENT"]
    assert not plan(True, torch.bfloat16).consts["RESIDENT"]
    assert not plan(False, torch.float32).consts["RESIDENT"]
    for backward in (False, True):
        for dtype in (torch.bfloat16, torch.float32):
            p = plan(backward, dtype)
            assert p.persistent and p.programs <= 132 and p.programs * p.consts["BH"] >= 1024
            assert min(p.consts["BB"], p.consts["BH"], p.consts["KA"], p.consts["KB"]) >= 16
            need = launch.resident_bytes(
                spec,
                backward,
                p.consts["BB"],
                p.consts["BH"],
                p.consts["KA"],
                p.consts["KB"],
                p.consts["KG"],
                torch.empty(0, dtype=dtype).element_size(),
            )
            assert need <= 232448


def test_step_loop_spills_counts_only_inside_the_widest_backward_branch():
    listing = """
        /*0010*/                   STL [R1], R2 ;          /* prologue: once per launch */
        /*0020*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0030*/                   LDL R3, [R1] ;          /* step loop from here */
        /*0040*/                   STL.64 [R1+0x8], R6 ;
        /*0050*/              @P1 BRA 0x40 ;                /* an inner loop */
        /*0060*/                   LDL.LU R5, [R1+0x4] ;
        /*0070*/              @P0 BRA 0x30 ;
        /*0080*/                   STL [R1], R2 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0;
    """
    assert offline.step_loop_spills(listing) == 3
    assert offline.step_loop_spills("/*0010*/ STL [R1], R2 ;") == 0


def test_plan_pipelines_only_streamed_loops_and_bounds_units_by_the_dot(monkeypatch):
    """``stages`` reaches the streamed chunk loops only (a resident loop runs once, and pipelining
    it would only multiply its shared memory), by default none in the persistent kernel and
    Triton's default depth in per-step launches; ``block_h`` may go below 16 only where every
    tl.dot keeps N >= 16 (the one-phase forward multiplies into all gate blocks at once)."""
    monkeypatch.setattr(launch, "tuning", launch.Tuning(stages=3))
    plan = functools.partial(_h100_plan, launch.KernelSpec("lstm"), B=16, H=1024, R=1024)
    assert plan(False, torch.bfloat16).consts["RESIDENT"] and plan(False, torch.bfloat16).consts["STAGES"] == 1
    assert not plan(True, torch.bfloat16).consts["RESIDENT"] and plan(True, torch.bfloat16).consts["STAGES"] == 3
    monkeypatch.setattr(launch, "tuning", launch.Tuning())  # defaults: none in the persistent kernel,
    assert plan(True, torch.bfloat16).consts["STAGES"] == 1  # Triton's 3 in per-step launches
    monkeypatch.setattr(launch, "tuning", launch.Tuning(mode="stepwise"))
    assert not plan(True, torch.bfloat16).persistent and plan(True, torch.bfloat16).consts["STAGES"] == 3
    monkeypatch.setattr(launch, "tuning", launch.Tuning(block_h=1))
    cases = {
        (launch.KernelSpec("lstm"), False): 4,
        (launch.KernelSpec("lstm"), True): 16,
        (launch.KernelSpec("gru", reset_after=False), False): 16,
        (launch.KernelSpec("rnn"), False): 16,
        (launch.KernelSpec("lstm", "cifg"), False): 4,
        (launch.KernelSpec("lstm", proj=True), False): 16,
    }
    for (spec, backward), block_h in cases.items():
        p = _h100_plan(spec, backward, torch.bfloat16, B=16, H=1024, R=512 if spec.proj else 1024)
        assert p.consts["BH"] == block_h and p.programs == 1024 // block_h, (spec, backward)


def _h100_plan(spec, backward, dtype, *, B, H, R):
    return offline.plan_for(offline.H100, spec, backward, dtype, B, H, R)


# what the planner's estimate must cover, and did in Triton 3.6 and 3.9 for sm_90 (shared bytes),
# and what the table of benchmarks/sm90_build.py showed spill-free with both
SM90_CASES = {
    "lstm_bf16_H1024_fwd_resident": (launch.KernelSpec("lstm"), False, torch.bfloat16, 1024, 1024),
    "gru_bf16_H1024_bwd_streamed": (launch.KernelSpec("gru"), True, torch.bfloat16, 1024, 1024),
    "lstm_proj_fp32_fwd_streamed": (launch.KernelSpec("lstm", proj=True), False, torch.float32, 1024, 512),
    "gru_before_bf16_H512_bwd_resident": (launch.KernelSpec("gru", reset_after=False), True, torch.bfloat16, 512, 512),
    "lstm_ln_bf16_H1024_fwd_resident": (launch.KernelSpec("lstm", layer_norm=True), False, torch.bfloat16, 1024, 1024),
    "lstm_proj_ln_bf16_H1024_bwd_streamed": (
        launch.KernelSpec("lstm", proj=True, layer_norm=True),
        True,
        torch.bfloat16,
        1024,
        512,
    ),
    "gru_before_ln_bf16_H512_fwd_resident": (
        launch.KernelSpec("gru", reset_after=False, layer_norm=True),
        False,
        torch.bfloat16,
        512,
        512,
    ),
    "gru_ln_bf16_H512_bwd_resident": (launch.KernelSpec("gru", layer_norm=True), True, torch.bfloat16, 512, 512),
    # zoneout's sampled masks and recurrent dropout; the expectation (its p in a float32 buffer)
    "lstm_zoneout_dropout_bf16_H1024_bwd_streamed": (
        launch.KernelSpec("lstm", zoneout=1, dropout=True),
        True,
        torch.bfloat16,
        1024,
        1024,
    ),
    "gru_before_ln_zoneout_dropout_bf16_H512_fwd_resident": (
        launch.KernelSpec("gru", reset_after=False, layer_norm=True, zoneout=1, dropout=True),
        False,
        torch.bfloat16,
        512,
        512,
    ),
    "lstm_proj_ln_zoneout_eval_fp16_H1024_fwd_resident": (
        launch.KernelSpec("lstm", proj=True, layer_norm=True, zoneout=2),
        False,
        torch.float16,
        1024,
        512,
    ),
    # fgr: the streamed gate-to-gate product beside resident or streamed weight_hh
    "lstm_fgr_bf16_H1024_fwd_resident": (launch.KernelSpec("lstm", "fgr"), False, torch.bfloat16, 1024, 1024),
    # restarts: the mask's reads beside every state read (forward) and carried gradient (backward)
    "lstm_fgr_restart_bf16_H1024_bwd_streamed": (
        launch.KernelSpec("lstm", "fgr", restart=True),
        True,
        torch.bfloat16,
        1024,
        1024,
    ),
    "gru_before_ln_restart_bf16_H512_fwd_resident": (
        launch.KernelSpec("gru", reset_after=False, layer_norm=True, restart=True),
        False,
        torch.bfloat16,
        512,
        512,
    ),
    "lstm_fgr_ln_bf16_H1024_bwd_streamed": (
        launch.KernelSpec("lstm", "fgr", layer_norm=True),
        True,
        torch.bfloat16,
        1024,
        1024,
    ),
}


def sm90_build(case: str) -> dict[str, int]:
    """Build SM90_CASES[case] for sm_90 (compiler only, no GPU) with the plan an H100 gets: what
    Triton and ptxas allocated, and the planner's estimate. Needs the compiled path (no interpreter)."""
    spec, backward, dtype, H, R = SM90_CASES[case]
    b = offline.compile_for(offline.H100, spec, backward, dtype, 16, H, R)
    return {
        "shared": b.shared_bytes,
        "estimate": b.estimate_bytes,
        "registers": b.registers,
        "resident": int(b.plan.consts["RESIDENT"]),
    }


def _compiled_path_json(script: str):
    """What ``script`` prints as JSON on its last line, run in a subprocess on Triton's compiled
    path (the interpreter is on in this one); skips where Triton cannot build for sm_90 here."""
    pytest.importorskip("triton.backends.nvidia")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(
        os.environ,
        TRITON_INTERPRET="0",
        TRITON_DEFAULT_FP_FUSION="1",
        PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=os.path.dirname(__file__),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0 and "ptxas" in run.stderr.lower():
        pytest.skip("Triton cannot build for sm_90 here: " + run.stderr.strip().splitlines()[-1])
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_kernels_compile_for_hopper():
    """The compiled (not interpreted) path: Triton builds the persistent kernels for sm_90 with
    its bundled ptxas (no GPU needed), and their shared memory stays within the planner's
    estimate and the H100's 227 KiB."""
    script = "import json, test_triton_backend as t; print(json.dumps({c: t.sm90_build(c) for c in t.SM90_CASES}))"
    for case, b in _compiled_path_json(script).items():
        assert b["shared"] <= b["estimate"] <= 232448, f"{case}: {b}"
        assert b["resident"] == ("resident" in case), f"{case}: {b}"
        assert 0 < b["registers"] <= 255, f"{case}: {b}"


# ----- layer kernels: the sLSTM recurrence and the minimal cells' scan ------------------------


@pytest.mark.slow
@pytest.mark.parametrize("restart", [False, True], ids=["plain", "restart"])
def test_layer_kernels_compile_for_hopper(restart):
    """The sLSTM and scan kernels, forward and backward, built for sm_90 with their launchers'
    blocks at the benchmark's largest size (bf16, B=32, H=1024, 4 heads of 256 units), with and
    without restarts: they compile, and none spills to local memory."""
    script = (
        "import json, torch; from gatedrnn.backends.triton import offline; print(json.dumps("
        f"offline.compile_layer_kernels(offline.H100, torch.bfloat16, 32, 1024, 4, restart={restart})))"
    )
    for kernel, b in _compiled_path_json(script).items():
        assert 0 < b["registers"] <= 255 and b["spill_stores"] == b["spill_loads"] == 0, f"{kernel}: {b}"


@interpreter
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", ["slstm_num_heads-5", "slstm_num_heads-5_forget_gate-exp"])
def test_slstm_first_step_rule_from_a_zero_normaliser(name, reverse):
    """n_0 = 0 (the modules' default) with c_0 and m_0 not: m_1 = i~ and the clamped f', as in
    the family's step, forward and every gradient."""
    compare_layer(CONFIGS[name], T=4, B=3, I=3, reverse=reverse, lengths=torch.tensor([4, 1, 3]), zero_states=("n",))


@interpreter
def test_slstm_several_tiles_per_head_and_batch_blocks(monkeypatch):
    """Heads of D = 20 units in tiles of 16 (the last one partial) and B = 18 rows in two blocks."""
    monkeypatch.setattr(triton_backend.slstm, "MAX_BLOCK_D", 16)
    cfg = CellConfig("slstm", 40, num_heads=2, forget_gate="exp")
    compare_layer(cfg, T=3, B=18, I=3, reverse=True, lengths=torch.tensor([3, 1, 2] * 6))


@interpreter
@pytest.mark.parametrize("name", ["mingru_activation-g_mode-parallel", "minlstm_activation-identity_mode-sequential"])
def test_scan_several_programs(monkeypatch, name):
    """The B*H = 15 recurrences over four programs, the last one partial."""
    monkeypatch.setattr(triton_backend.scan, "BLOCK", 4)
    compare_layer(CONFIGS[name], T=5, B=3, I=3, reverse=False, lengths=torch.tensor([5, 2, 4]))


@interpreter
def test_slstm_states_keep_their_dtypes():
    """In float16: h, c, n come back in float16 and m in float32, as the family's step gives them."""
    cfg = CONFIGS["slstm_num_heads-1"]
    w = {k: v.half() for k, v in layer_weights(cfg, 3).items()}
    state = tuple(torch.zeros(2, 5, dtype=torch.float16) for _ in cfg.states)
    _, final, _ = triton_backend.run_layer(cfg, torch.randn(3, 2, 3, dtype=torch.float16), state, w)
    expected = reference.run_layer(cfg, torch.randn(3, 2, 3, dtype=torch.float16), state, w)[1]
    assert [s.dtype for s in final] == [s.dtype for s in expected] == [torch.float16] * 3 + [torch.float32]


@interpreter
@pytest.mark.parametrize("name", ["slstm_num_heads-5", "minlstm_activation-g_mode-parallel"])
def test_layer_kernels_leave_regularised_calls_to_the_reference_loop(monkeypatch, name):
    """Zoneout and recurrent dropout, which the layer kernels do not take, run on the reference loop."""
    cfg = CONFIGS[name]
    monkeypatch.setattr(triton_backend.LAYER_KERNELS[cfg.kernel("triton")], "run_layer", None)
    compare_layer(cfg, T=4, B=3, I=3, reverse=False, lengths=None, noise=sample_noise(cfg, 4, 3, "train"))


@interpreter
@pytest.mark.parametrize("exp_forget, restart", [(False, False), (True, True)], ids=["sigmoid", "exp_restart"])
def test_slstm_op_registration(exp_forget, restart):
    """torch.library's check of the sLSTM op: schema, fake implementation, autograd formula (with
    and without restarts)."""
    T, B, H, heads = 3, 2, 4, 2
    state = [torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    args = (
        torch.randn(T, B, 4 * H, dtype=torch.float64, requires_grad=True),
        torch.tensor([3, 2], dtype=torch.int32),
        *state,
        torch.randn(heads, 4 * H // heads, H // heads, dtype=torch.float64, requires_grad=True),
        exp_forget,
        False,
        False,
        True,
        torch.tensor([[False, True], [True, False], [False, False]]) if restart else None,
    )
    torch.library.opcheck(
        triton_backend.slstm.triton_slstm,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


@interpreter
@pytest.mark.parametrize("reverse, restart", [(False, False), (True, True)], ids=["forward", "reverse_restart"])
def test_scan_op_registration(reverse, restart):
    """torch.library's check of the scan op: schema, fake implementation, autograd formula (with
    and without restarts)."""
    T, B, H = 3, 2, 4
    args = (
        -torch.rand(T, B, H, dtype=torch.float64).requires_grad_(True),
        torch.randn(T, B, H, dtype=torch.float64, requires_grad=True),
        torch.randn(B, H, dtype=torch.float64, requires_grad=True),
        torch.tensor([3, 2], dtype=torch.int32),
        reverse,
        torch.tensor([[False, True], [True, False], [False, False]]) if restart else None,
    )
    torch.library.opcheck(
        triton_backend.scan.triton_linear_scan,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


@interpreter
def test_layer_kernels_compile_with_torch_compile():
    """A module on a layer kernel runs forward and backward under torch.compile (the sLSTM op's
    fake implementation is checked by :func:`test_slstm_op_registration`)."""
    ref, fast = _module_pair(gatedrnn.MinGRU, input_size=3, hidden_size=4)
    compiled = torch.compile(fast, backend="aot_eager")
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = compiled(x)
    out.sum().backward()
    assert rel_err(out, ref(x.detach())[0]) < 1e-12
    assert x.grad is not None and all(p.grad is not None for p in fast.parameters())


# ----- restarts inside a call (reset) ---------------------------------------------------------


def walk_restarts(T: int, B: int, lengths: torch.Tensor, reverse: bool) -> torch.Tensor:
    """A (T, B) restart mask in walk order, as a layer backend takes it: restarts at about a third
    of the active steps, always at row 0's first step in walk order (its initial state then reaches
    nothing) and at two steps in a row of row 2; False at every inactive step."""
    gen = torch.Generator().manual_seed(3)
    restart = torch.rand(T, B, generator=gen) < 0.35
    restart[int(lengths[0]) - 1 if reverse else 0, 0] = True
    restart[1:3, 2] = True
    return (restart & (torch.arange(T)[:, None] < lengths.cpu()[None, :])).to(lengths.device)


@pytest.fixture
def kernels_only(monkeypatch):
    """The backend's way to the reference loop raises: a call that passes ran on the kernels."""

    def refuse(*args, **kwargs):
        raise AssertionError("the call ran on the reference loop instead of the kernels")

    monkeypatch.setattr(triton_backend, "reference", mock.Mock(run_layer=refuse))


# every kernel and the options that read a carried state differently: each cell's forms, the
# LSTM's peepholes, layer norm, projection and gate recurrence, the sLSTM's forget gates, the scan
RESTART_CASES = [
    ("lstm", False),
    ("lstm", True),
    ("lstm_peephole", True),
    ("lstm_cifg_ln", False),
    ("lstm_proj", True),
    ("lstm_fgr", False),
    ("lstm_fgr", True),
    ("gru", False),
    ("gru", True),
    ("gru_reset_before_ln", False),
    ("rnn_relu", True),
    ("slstm_num_heads-5", False),
    ("slstm_num_heads-5_forget_gate-exp", True),
    ("mingru_activation-g_mode-parallel", True),
    ("minlstm_activation-identity_mode-sequential", False),
]


@interpreter
@pytest.mark.parametrize(
    "name, reverse", RESTART_CASES, ids=[f"{n}-{'reverse' if r else 'forward'}" for n, r in RESTART_CASES]
)
def test_restarts_match_reference(name, reverse, kernels_only):
    """``reset`` runs inside the kernels (the reference loop is out of their reach here) and matches
    the reference loop: outputs, every final state (fgr's gates too, from a random initial gates
    state) and the gradients w.r.t. x, every initial state and every weight, with padded sequences
    of mixed lengths, restarts at a row's first step and at consecutive steps."""
    lengths = torch.tensor([5, 2, 4])
    compare_layer(
        CONFIGS[name], T=5, B=3, I=3, reverse=reverse, lengths=lengths, reset=walk_restarts(5, 3, lengths, reverse)
    )


@interpreter
@pytest.mark.parametrize(
    "name, how",
    [("lstm_fgr_proj_ln", "persistent"), ("gru_reset_before", "streamed"), ("lstm_proj", "split")],
)
def test_restarts_on_every_launch_path(name, how, kernels_only):
    """Restarts in the persistent kernel, with streamed weights (chunked products and gathers),
    and with one unit per program and one row per batch block (every slice boundary)."""
    launch.tuning = {
        "persistent": launch.Tuning(mode="persistent"),
        "streamed": launch.Tuning(resident=False, block_k=2, block_b=2),
        "split": launch.Tuning(block_h=1, block_b=1),
    }[how]
    lengths = torch.tensor([4, 1, 3])
    compare_layer(CONFIGS[name], T=4, B=3, I=2, reverse=True, lengths=lengths, reset=walk_restarts(4, 3, lengths, True))


@interpreter
@pytest.mark.parametrize(
    "name, mode", [("lstm_peephole", "train"), ("gru_reset_before", "eval"), ("lstm_fgr", "train")]
)
def test_restarts_with_zoneout_and_dropout(name, mode, kernels_only):
    """Zoneout mixes a restarted step's fresh state with the zero state, and recurrent dropout's
    product reads zeros there, as the reference loop's step does after zeroing its carry."""
    cfg, lengths = CONFIGS[name], torch.tensor([5, 2, 4])
    compare_layer(
        cfg,
        T=5,
        B=3,
        I=3,
        reverse=False,
        lengths=lengths,
        noise=sample_noise(cfg, 5, 3, mode),
        reset=walk_restarts(5, 3, lengths, False),
    )


@interpreter
@pytest.mark.parametrize(
    "name", ["lstm_fgr", "gru_reset_before", "slstm_num_heads-1", "minlstm_activation-g_mode-parallel"]
)
def test_a_restart_replaces_even_an_infinite_state(name, kernels_only):
    """A restart selects zeros (it does not multiply by zero): a row whose initial states are all
    infinite and that restarts at its first step gives finite outputs, final states and gradients,
    those of the reference loop, and its initial states get no gradient."""
    cfg = CONFIGS[name]
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    state = tuple(torch.randn(2, s, dtype=torch.float64) for s in cfg.state_sizes)
    for s in state:
        s[0] = float("inf")
    restart = torch.tensor([[True, False], [False, False], [False, True]])
    weights = layer_weights(cfg, 2)
    got = layer_run(triton_backend, cfg, x, state, weights, False, None, reset=restart)
    expected = layer_run(reference, cfg, x, state, weights, False, None, reset=restart)
    for a, b in zip(got[0], expected[0]):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-12
    for key, grad in expected[1].items():
        assert torch.isfinite(got[1][key]).all() and rel_err(got[1][key], grad) < 1e-12, key
    assert all(got[1][f"state{k}"][0].abs().max() == 0 for k in range(len(state)))


@interpreter
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_fgr_gates_state_carries_over_and_rows_without_steps_keep_it(reverse, kernels_only):
    """fgr's third state: the kernels start from a given gates state (not zeros) and return the
    final one, and a row of length 0 returns its initial gates state, with its gradient."""
    cfg = CONFIGS["lstm_fgr"]
    assert cfg.states == ("h", "c", "gates")
    compare_layer(cfg, T=3, B=3, I=2, reverse=reverse, lengths=torch.tensor([3, 0, 2]))


@interpreter
def test_restarts_under_autocast(kernels_only):
    """Under autocast the restarts reach the kernels with the casts: bitwise the float16 layer's."""
    cfg = CONFIGS["lstm_proj"]
    x = torch.randn(4, 3, 2)
    state = tuple(torch.randn(3, s) for s in cfg.state_sizes)
    weights = {k: v.float() for k, v in layer_weights(cfg, 2).items()}
    restart = walk_restarts(4, 3, torch.tensor([4, 4, 4]), False)
    with torch.autocast("cpu", dtype=torch.float16):
        got = triton_backend.run_layer(cfg, x, state, weights, reset=restart)
    half = triton_backend.run_layer(
        cfg, x.half(), tuple(s.half() for s in state), {k: v.half() for k, v in weights.items()}, reset=restart
    )
    assert all(a.dtype == torch.float16 and torch.equal(a, b) for a, b in zip([got[0], *got[1]], [half[0], *half[1]]))


# ----- auto's measured table (gatedrnn.backends.triton.measured) -------------------------------

FAKE_GPU = "Fake GPU 80GB"


def fake_table(verified: bool = True) -> dict:
    cases = [
        {"cell": "lstm", "dtype": "bf16", "B": 16, "H": 1024, "fwd": 2.0, "train": 4.0},
        {"cell": "lstm", "dtype": "bf16", "B": 256, "H": 1024, "fwd": 0.9, "train": 1.2},
        {"cell": "gru", "dtype": "fp16", "B": 16, "H": 768, "fwd": 1.02, "train": 0.8},
    ]
    return {"devices": [{"name": FAKE_GPU, "verified": verified, "cases": cases}]}


@pytest.fixture
def on_fake_gpu(monkeypatch, tmp_path):
    """A CUDA device named FAKE_GPU whose measured table is ``fake_table()``; returns a function
    that rewrites the table, and the x (T, B, H) stand-in the selection looks at."""
    monkeypatch.delenv("GATEDRNN_TRITON_CUDA")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: FAKE_GPU)
    path = tmp_path / "measured.json"

    def use(table: dict) -> None:
        path.write_text(json.dumps(table))
        measured.load.cache_clear()

    monkeypatch.setattr(
        measured, "load", functools.lru_cache(None)(lambda: measured.parse(json.loads(path.read_text()), str(path)))
    )
    use(fake_table())
    return use


def cuda_input(B: int, H: int, dtype=torch.bfloat16):
    """What backend selection reads of an input: its device, dtype and (T, B, I) shape."""
    return mock.Mock(device=torch.device("cuda", 0), dtype=dtype, shape=(512, B, H))


def test_cuda_needs_the_opt_in_until_verified(monkeypatch, on_fake_gpu):
    gpu = torch.device("cuda", 0)
    assert not triton_backend.cuda_enabled()
    assert triton_backend.cuda_enabled(gpu)  # the fake GPU's record is verified
    on_fake_gpu(fake_table(verified=False))
    assert not triton_backend.cuda_enabled(gpu)
    assert "not been verified on this GPU (Fake GPU 80GB)" in triton_backend.supports(
        CellConfig("lstm", 8), cuda_input(16, 8)
    )
    monkeypatch.setenv("GATEDRNN_TRITON_CUDA", "1")
    assert triton_backend.cuda_enabled()


def test_auto_picks_the_kernels_only_where_measured_faster(on_fake_gpu):
    lstm, gru = CellConfig("lstm", 1024), CellConfig("gru", 768)

    def auto(cfg, x, training=True, single_layer=True):
        with torch.set_grad_enabled(training):
            return choose("auto", cfg, x, regularised=False, single_layer=single_layer)

    assert auto(lstm, cuda_input(16, 1024)) == "triton"  # measured 4x training
    assert auto(lstm, cuda_input(16, 1024), training=False) == "triton"  # and 2x forward
    assert auto(CellConfig("lstm", 2048), cuda_input(32, 2048)) == "triton"  # one octave away in B and H
    assert auto(CellConfig("lstm", 4096), cuda_input(16, 4096)) == "torch"  # two octaves: nothing claimed
    assert auto(lstm, cuda_input(256, 1024), training=False) == "torch"  # 0.9x forward
    assert auto(lstm, cuda_input(256, 1024)) == "triton"  # 1.2x training
    assert auto(lstm, cuda_input(128, 1024)) == "triton"  # nearest point is B=256
    assert auto(lstm, cuda_input(64, 1024)) == "torch"  # two octaves from both: nothing
    assert auto(gru, cuda_input(16, 768, torch.float16), training=False) == "torch"  # 1.02x < MARGIN
    assert auto(lstm, cuda_input(16, 1024, torch.float16)) == "torch"  # fp16 not measured
    assert auto(lstm, cuda_input(16, 1024), single_layer=False) == "torch"  # stacks were not measured
    assert auto(CellConfig("lstm", 1024, proj_size=512), cuda_input(16, 1024)) == "torch"
    assert choose("auto", lstm, cuda_input(16, 1024), regularised=True) == "triton"  # zoneout: not cuDNN
    on_fake_gpu(fake_table(verified=False))
    assert auto(lstm, cuda_input(16, 1024)) == "torch"
    assert auto(CellConfig("lstm", 1024, layer_norm=True), cuda_input(16, 1024)) == "reference"
    on_fake_gpu({"devices": []})
    assert auto(lstm, cuda_input(16, 1024)) == "torch"


def test_auto_reads_equally_near_points_cautiously_and_never_over_a_failure(on_fake_gpu):
    """Of two points one octave either side, the lower speed-up for the pass in question decides;
    a case where the kernels failed (recorded as 0) vetoes its neighbourhood at distance 0."""

    def lstm_point(B, fwd, train):
        return {"cell": "lstm", "dtype": "bf16", "B": B, "H": 1024, "fwd": fwd, "train": train}

    on_fake_gpu(
        {
            "devices": [
                {
                    "name": FAKE_GPU,
                    "verified": True,
                    "cases": [
                        lstm_point(32, 0.9, 3.0),
                        lstm_point(128, 1.5, 1.0),
                        lstm_point(512, 0.0, 0.0),
                        lstm_point(1024, 2.0, 2.0),
                    ],
                }
            ]
        }
    )
    lstm = CellConfig("lstm", 1024)

    def auto(B, training):
        with torch.set_grad_enabled(training):
            return choose("auto", lstm, cuda_input(B, 1024), regularised=False)

    assert auto(64, training=True) == "torch"  # train: 3.0 at B=32 but 1.0 at B=128
    assert auto(64, training=False) == "torch"  # fwd: 0.9 at B=32
    assert auto(128, training=False) == "triton"
    assert auto(512, training=True) == "torch"  # failed there, though B=1024 won at 2x
    assert auto(1024, training=True) == "triton"


def test_measured_table_shipped_and_malformed():
    assert isinstance(measured.load(), dict)  # the shipped table parses (empty until a GPU run)
    with pytest.raises(ValueError, match=r"t\.json: expected .*'cases'.* got a table without 'verified'"):
        measured.parse({"devices": [{"name": "x", "cases": []}]}, "t.json")


def import_gpu_benchmark():
    """benchmarks/gpu.py as a module (it is a script, not part of the package)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.pop(0)
    return gpu


def test_benchmark_writes_the_table_auto_reads(tmp_path, on_fake_gpu):
    """benchmarks/gpu.py --auto-table: a run's rows become a device record that replaces the
    device's earlier one and that the selection rule reads back."""
    gpu = import_gpu_benchmark()
    planned = [gpu.Case("lstm", "bf16", 16, 1024), gpu.Case("lstm-ln", "bf16", 16, 1024)]
    planned.append(gpu.Case("gru", "bf16", 256, 1024))
    rows = [
        {"case": planned[0].label, "provider": "cudnn", "speedup_fwd": 1.0, "speedup_fwdbwd": 1.0},
        {"case": planned[0].label, "provider": "triton", "speedup_fwd": 3.0, "speedup_fwdbwd": 0.5},
        {"case": planned[1].label, "provider": "triton", "speedup_fwd": 9.0, "speedup_fwdbwd": 9.0},
        {"case": planned[2].label, "provider": "triton", "error": "OutOfResources: shared memory"},
    ]
    path = tmp_path / "table.json"
    path.write_text(
        json.dumps(
            {
                "devices": [
                    {"name": "Old GPU", "verified": True, "cases": []},
                    {"name": FAKE_GPU, "verified": True, "cases": [{"bad": 1}]},
                ]
            }
        )
    )
    record = gpu.auto_record(rows, planned, FAKE_GPU, True, [9, 0], "3.6.0", "test")
    gpu.write_auto_table(str(path), record)
    records = measured.parse(json.loads(path.read_text()), str(path))
    assert set(records) == {"Old GPU", FAKE_GPU}
    point, failed = records[FAKE_GPU].points  # the layer-norm row is not a choice against cuDNN
    assert (point.cell, point.B, point.H, point.fwd, point.train) == ("lstm", 16, 1024, 3.0, 0.5)
    assert (failed.cell, failed.B, failed.fwd, failed.train) == ("gru", 256, 0.0, 0.0)
    on_fake_gpu(json.loads(path.read_text()))
    lstm = CellConfig("lstm", 1024)
    with torch.no_grad():
        assert choose("auto", lstm, cuda_input(16, 1024), regularised=False) == "triton"
    assert choose("auto", lstm, cuda_input(16, 1024), regularised=False) == "torch"
    assert "forward in 1 and training in 0 of 2 cases" in gpu.auto_summary(record)


# ----- GPU: compiled kernels at real sizes, every dtype ---------------------------------------

GPU_CONFIGS = {
    "lstm": CellConfig("lstm", 256),
    "lstm_peephole": CellConfig("lstm", 256, variant="peephole"),
    "lstm_cifg": CellConfig("lstm", 256, variant="cifg"),
    "lstm_proj": CellConfig("lstm", 256, proj_size=128),
    "gru": CellConfig("gru", 256),
    "gru_reset_before": CellConfig("gru", 256, reset_after=False),
    "rnn_tanh": CellConfig("rnn", 256),
    "rnn_relu": CellConfig("rnn", 256, nonlinearity="relu"),
    "lstm_ln": CellConfig("lstm", 256, layer_norm=True),
    "lstm_proj_ln": CellConfig("lstm", 256, proj_size=128, layer_norm=True),
    "gru_ln": CellConfig("gru", 256, layer_norm=True),
    "gru_reset_before_ln": CellConfig("gru", 256, reset_after=False, layer_norm=True),
    "lstm_fgr": CellConfig("lstm", 256, variant="fgr"),
    "lstm_fgr_proj_ln": CellConfig("lstm", 256, variant="fgr", proj_size=128, layer_norm=True),
}
GPU_DTYPES = {  # dtype, allow_tf32, tolerance
    "fp32": (torch.float32, False, 1e-5),
    "tf32": (torch.float32, True, 1e-3),
    "bf16": (torch.bfloat16, False, 1e-2),
    "fp16": (torch.float16, False, 1e-2),
}
GPU_PATHS = {  # launch overrides
    "auto": {},
    "streamed": {"resident": False},
    "streamed3": {"resident": False, "stages": 3},  # the chunk loops software-pipelined (cp.async)
    "stepwise": {"mode": "stepwise"},
    "stepwise_streamed": {"mode": "stepwise", "resident": False},
}

# every config in fp32 (the tightest bound) and bf16; fp16 and tf32 where their code differs
# (the dot's input type / precision); streamed weights and per-step launches for the one- and
# two-phase cells; T=128, B=16, H=256 (R=128 with projection)
GPU_CASES = (
    [(name, d, "auto") for name in GPU_CONFIGS for d in ("fp32", "bf16")]
    + [(name, d, "auto") for name in ("lstm", "gru", "lstm_proj") for d in ("fp16", "tf32")]
    + [(name, d, "streamed") for name in ("lstm", "gru", "lstm_proj", "gru_reset_before") for d in ("fp32", "bf16")]
    + [(name, "bf16", "stepwise") for name in ("lstm_proj", "gru_reset_before", "lstm")]
    + [("gru", "bf16", "stepwise_streamed")]
    + [(name, "bf16", "streamed") for name in ("lstm_proj_ln", "gru_reset_before_ln")]
    + [(name, d, "streamed3") for name in ("lstm", "gru_reset_before", "lstm_proj_ln") for d in ("fp32", "bf16")]
    + [("lstm_fgr", "fp16", "auto"), ("lstm_fgr", "bf16", "stepwise"), ("lstm_fgr_proj_ln", "bf16", "streamed3")]
)
# benchmarks/gpu.py's TARGETS, as the planner runs them (T shortened: the float64 reference is slow)
GPU_TARGETS = {
    "lstm_bf16_H1024": (CellConfig("lstm", 1024), "bf16"),
    "gru_bf16_H1024": (CellConfig("gru", 1024), "bf16"),
    "lstm_fp16_H768": (CellConfig("lstm", 768), "fp16"),
    "gru_fp16_H768": (CellConfig("gru", 768), "fp16"),
    "lstm_fp32_H1024": (CellConfig("lstm", 1024), "fp32"),
    "lstm_tf32_H2048": (CellConfig("lstm", 2048), "tf32"),
    "lstm_ln_bf16_H1024": (CellConfig("lstm", 1024, layer_norm=True), "bf16"),
    "gru_ln_bf16_H1024": (CellConfig("gru", 1024, layer_norm=True), "bf16"),
}


@contextlib.contextmanager
def _tf32(allow: bool):
    """Set torch's tf32 switch for matmuls, restoring it after (a property monkeypatch cannot undo)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _gpu_lengths(T: int, B: int) -> torch.Tensor:
    lengths = torch.randint(1, T + 1, (B,), device="cuda")
    lengths[0] = T
    return lengths


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name, dtype_name, path", GPU_CASES, ids=["-".join(c) for c in GPU_CASES])
def test_gpu_layer_matches_float64_reference(name, dtype_name, path):
    """Mixed lengths, against float64: outputs, final states and every gradient within the
    relative error of GPU_DTYPES for their dtype."""
    dtype, tf32, tol = GPU_DTYPES[dtype_name]
    launch.tuning = launch.Tuning(**GPU_PATHS[path])
    with _tf32(tf32):
        compare_layer(
            GPU_CONFIGS[name],
            T=128,
            B=16,
            I=64,
            reverse=name.endswith("proj"),
            lengths=_gpu_lengths(128, 16),
            dtype=dtype,
            device="cuda",
            tol=tol,
        )
    if "resident" in GPU_PATHS[path]:
        assert not launch.last_plans["forward"].consts["RESIDENT"]
        assert launch.last_plans["backward"].consts["STAGES"] == GPU_PATHS[path].get("stages", 1)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(GPU_TARGETS))
def test_gpu_target_sizes_match_float64_reference(name):
    """B=16, T=32 at the benchmark's sizes: the persistent plans the benchmark times."""
    cfg, dtype_name = GPU_TARGETS[name]
    dtype, tf32, tol = GPU_DTYPES[dtype_name]
    with _tf32(tf32):
        compare_layer(
            cfg,
            T=32,
            B=16,
            I=cfg.hidden_size,
            reverse=False,
            lengths=_gpu_lengths(32, 16),
            dtype=dtype,
            device="cuda",
            tol=tol,
        )
    assert launch.last_plans["forward"].persistent and launch.last_plans["backward"].persistent


# the layer kernels: two batch blocks; heads of 64 units and of 256 (four tiles of the product)
GPU_LAYER_KERNEL_CONFIGS = {
    "slstm_H256": CellConfig("slstm", 256, num_heads=4),
    "slstm_exp_H1024": CellConfig("slstm", 1024, num_heads=4, forget_gate="exp"),
    "mingru_H256": CellConfig("mingru", 256),
    "minlstm_H1024": CellConfig("minlstm", 1024),
}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype_name", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", list(GPU_LAYER_KERNEL_CONFIGS))
def test_gpu_layer_kernels_match_float64_reference(name, dtype_name):
    """The sLSTM recurrence and the minimal cells' scan compiled, B=32, T=64, mixed lengths, from
    a zero normaliser (the sLSTM's first-step rule), against float64 within GPU_DTYPES' error."""
    dtype, tf32, tol = GPU_DTYPES[dtype_name]
    with _tf32(tf32):
        compare_layer(
            GPU_LAYER_KERNEL_CONFIGS[name],
            T=64,
            B=32,
            I=64,
            reverse="exp" in name,
            lengths=_gpu_lengths(64, 32),
            dtype=dtype,
            device="cuda",
            tol=tol,
            zero_states=("n",),
        )


# restarts in the compiled kernels: the persistent plan, streamed weights, per-step launches, the
# layer norm's exchanges, fgr's gate recurrence
GPU_RESTART_CASES = [
    ("lstm", "fp32", "auto"),
    ("lstm_fgr", "bf16", "auto"),
    ("gru_reset_before", "bf16", "streamed"),
    ("lstm_proj_ln", "bf16", "stepwise"),
    ("gru_ln", "fp32", "auto"),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name, dtype_name, path", GPU_RESTART_CASES, ids=["-".join(c) for c in GPU_RESTART_CASES])
def test_gpu_restarts_match_float64_reference(name, dtype_name, path):
    """Restarts inside the compiled recurrence kernels, T=128, B=16, mixed lengths: outputs, final
    states and every gradient against float64 within GPU_DTYPES' error."""
    dtype, tf32, tol = GPU_DTYPES[dtype_name]
    launch.tuning = launch.Tuning(**GPU_PATHS[path])
    lengths, reverse = _gpu_lengths(128, 16), name == "lstm_fgr"
    with _tf32(tf32):
        compare_layer(
            GPU_CONFIGS[name],
            T=128,
            B=16,
            I=64,
            reverse=reverse,
            lengths=lengths,
            dtype=dtype,
            device="cuda",
            tol=tol,
            reset=walk_restarts(128, 16, lengths, reverse),
        )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(GPU_LAYER_KERNEL_CONFIGS))
def test_gpu_layer_kernel_restarts_match_float64_reference(name):
    """Restarts inside the compiled sLSTM and scan kernels, bfloat16, B=32, T=64, mixed lengths."""
    dtype, tf32, tol = GPU_DTYPES["bf16"]
    lengths = _gpu_lengths(64, 32)
    compare_layer(
        GPU_LAYER_KERNEL_CONFIGS[name],
        T=64,
        B=32,
        I=64,
        reverse="exp" in name,
        lengths=lengths,
        dtype=dtype,
        device="cuda",
        tol=tol,
        reset=walk_restarts(64, 32, lengths, "exp" in name),
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(
    "name, dtype_name, path",
    [
        ("lstm", "bf16", "auto"),
        ("lstm", "fp32", "streamed"),
        ("gru_reset_before", "bf16", "auto"),
        ("lstm_proj_ln", "bf16", "streamed"),
        ("gru_ln", "fp16", "auto"),
        ("rnn_relu", "fp32", "auto"),
        ("lstm_fgr", "bf16", "auto"),
    ],
)
def test_gpu_regularised_matches_float64_reference(name, dtype_name, path, mode):
    """Zoneout and recurrent dropout in the compiled kernels (resident and streamed plans),
    against float64 with the same masks."""
    dtype, tf32, tol = GPU_DTYPES[dtype_name]
    launch.tuning = launch.Tuning(**GPU_PATHS[path])
    cfg = GPU_CONFIGS[name]
    with _tf32(tf32):
        compare_layer(
            cfg,
            T=64,
            B=16,
            I=64,
            reverse=False,
            lengths=_gpu_lengths(64, 16),
            dtype=dtype,
            device="cuda",
            tol=tol,
            noise=sample_noise(cfg, 64, 16, mode, device="cuda"),
        )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("path", ["auto", "streamed", "streamed3"])
@pytest.mark.parametrize("name", ["lstm", "gru_reset_before", "lstm_proj"])
def test_gpu_is_deterministic(name, path):
    """Bitwise equal outputs and gradients on two runs (no floating-point atomics, fixed order)."""
    launch.tuning = launch.Tuning(**GPU_PATHS[path])
    cfg = GPU_CONFIGS[name]
    x = torch.randn(64, 16, 64, device="cuda", dtype=torch.bfloat16)
    state = tuple(torch.randn(16, s, device="cuda", dtype=torch.bfloat16) for s in cfg.state_sizes)
    weights = {k: v.bfloat16() for k, v in layer_weights(cfg, 64, device="cuda").items()}
    lengths = _gpu_lengths(64, 16)
    first = layer_run(triton_backend, cfg, x, state, weights, False, lengths)
    second = layer_run(triton_backend, cfg, x, state, weights, False, lengths)
    for a, b in zip(first[0], second[0]):
        assert torch.equal(a, b)
    for name_ in first[1]:
        assert torch.equal(first[1][name_], second[1][name_]), name_


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", list(MODULES))
def test_gpu_modules_match_reference(name, packed):
    """The stacked / bidirectional modules in float32 (no tf32) against float64 at the same
    weights, initial states given, mixed lengths: outputs, final states and the input's and every
    parameter's gradient."""
    factory, kwargs = MODULES[name]
    kwargs = dict(kwargs, input_size=32, hidden_size=128, device="cuda")
    if kwargs.get("proj_size"):
        kwargs["proj_size"] = 64
    ref = factory(backend="reference", dtype=torch.float64, **kwargs)
    fast = factory(backend="triton", dtype=torch.float32, **kwargs)
    fast.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    T, B = 48, 8
    lengths = _gpu_lengths(T, B).cpu()
    x = torch.randn(T, B, 32, dtype=torch.float32, device="cuda")
    D, L = 1 + kwargs.get("bidirectional", False), kwargs.get("num_layers", 1)
    hx = tuple(torch.randn(L * D, B, s, device="cuda") for s in ref.cell_config.state_sizes)

    def run(module, dtype):
        leaf = x.to(dtype, copy=True).requires_grad_(True)
        inp = torch.nn.utils.rnn.pack_padded_sequence(leaf, lengths, enforce_sorted=False) if packed else leaf
        states = tuple(h.to(dtype) for h in hx)
        out, final = module(inp, states if len(states) > 1 else states[0])
        outs = [out.data if packed else out, *(final if isinstance(final, tuple) else (final,))]
        gen = torch.Generator(device="cuda").manual_seed(5)
        loss = sum(
            (o.double() * torch.randn(o.shape, generator=gen, device="cuda", dtype=torch.float64)).sum() for o in outs
        )
        loss.backward()
        grads = {"input": leaf.grad, **{n: p.grad for n, p in module.named_parameters()}}
        return [o.detach() for o in outs], grads

    with _tf32(False):
        got, expected = run(fast, torch.float32), run(ref, torch.float64)
    for k, (a, b) in enumerate(zip(got[0], expected[0])):
        assert rel_err(a.double(), b) <= 1e-5, f"output {k}"
    for n in expected[1]:
        assert rel_err(got[1][n].double(), expected[1][n]) <= 1e-5, n


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (gatedrnn.LSTM, {}),
        (gatedrnn.GRU, {}),
        (gatedrnn.LSTM, {"variant": "peephole", "num_layers": 2}),
    ],
    ids=["lstm", "gru", "peephole_2_layers"],
)
def test_gpu_under_autocast_runs_in_bfloat16_as_cudnn_does(factory, kwargs):
    """A float32 module under CUDA autocast (bfloat16): the kernels run in bfloat16, as cuDNN does
    there: outputs and final states in bfloat16 (torch.nn's dtypes under autocast), within the
    bfloat16 bound of the float64 module's, parameter gradients in float32."""
    ref = factory(64, 128, backend="reference", dtype=torch.float64, device="cuda", **kwargs)
    fast = factory(64, 128, backend="triton", dtype=torch.float32, device="cuda", **kwargs)
    fast.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(32, 8, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, final = fast(x)
    finals = final if isinstance(final, tuple) else (final,)
    expected_out, expected_final = ref(x.double())
    expected_finals = expected_final if isinstance(expected_final, tuple) else (expected_final,)
    for got, want in zip((out, *finals), (expected_out, *expected_finals)):
        assert got.dtype == torch.bfloat16
        assert rel_err(got.double(), want) <= 2e-2
    if not kwargs:
        theirs = {gatedrnn.LSTM: torch.nn.LSTM, gatedrnn.GRU: torch.nn.GRU}[factory](64, 128, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            cudnn_out, _ = theirs(x)
        assert out.dtype == cudnn_out.dtype
    out.float().sum().backward()
    for n, p in fast.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n


def test_gpu_benchmark_runs_end_to_end_with_fake_timings(tmp_path, monkeypatch, on_fake_gpu):
    """benchmarks/gpu.py's whole flow (targets, the launch-override sweep, the grid, the tables,
    the auto table) with the timings faked, so that a slip in code only a GPU runs cannot cost a
    GPU run. Each fake timing records the tuning it ran under."""
    gpu = import_gpu_benchmark()
    seen = []

    def fake_measure(case, provider, rep_ms):
        seen.append((case.label, provider, launch.tuning))
        fast = {"cudnn": 1.0, "triton": 0.25, "reference": 20.0}[provider]
        r = {"fwd_ms": fast * case.T / 1000, "fwdbwd_ms": 3 * fast * case.T / 1000, "peak_mib": 10.0}
        return dict(r, path="fake plan") if provider == "triton" else r

    monkeypatch.setattr(gpu, "measure", fake_measure)
    monkeypatch.setattr(gpu, "machine", lambda: "Fake GPU (132 SMs)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    table = tmp_path / "measured.json"
    table.write_text(json.dumps({"devices": []}))
    out = tmp_path / "bench.md"
    assert (
        gpu.main(
            [
                "--batches",
                "16",
                "--hiddens",
                "1024",
                "--dtypes",
                "bf16",
                "--auto-table",
                str(table),
                "--verified",
                "--markdown",
                str(out),
                "--csv",
                str(tmp_path / "bench.csv"),
            ]
        )
        == 0
    )
    swept = [(label, vars(t)) for label, provider, t in seen if t is not launch.tuning]
    assert swept == [
        (case.label, vars(launch.Tuning(**o))) for case, by_name in gpu.SWEEP.items() for o in by_name.values()
    ]
    assert launch.tuning == launch.Tuning()  # restored after the sweep
    text = out.read_text()
    assert "| lstm bf16 B=16 H=1024 T=512 | triton | 0.25 | 4.00x |" in text
    assert "| gru bf16 B=16 H=1024 T=512 | block_h=8 | 0.25 | 0.75 |" in text
    for cell in gpu.LAYER_KERNEL_CELLS:  # timed beside cuDNN, kept out of auto's table
        assert f"| {cell} bf16 B=32 H=1024 T=1024 | triton | 0.25 | 4.00x |" in text
    record = measured.parse(json.loads(table.read_text()), str(table))[FAKE_GPU]
    targets = {(c.cell, c.dtype, c.B, c.H) for c in gpu.TARGETS if c.cell in gpu.CELLS}
    assert record.verified and {(p.cell, p.dtype, p.B, p.H) for p in record.points} == targets
    assert {(p.fwd, p.train) for p in record.points} == {(4.0, 4.0)}


def test_gpu_benchmark_writes_its_tables_when_interrupted(tmp_path, monkeypatch):
    """The device script's timeout sends SIGINT: what was measured is still written."""
    gpu = import_gpu_benchmark()

    def interrupting_after(n):
        calls = []

        def fake_measure(case, provider, rep_ms):
            calls.append(case.label)
            if len(calls) > n:
                raise KeyboardInterrupt
            return {"fwd_ms": 1.0, "fwdbwd_ms": 2.0, "peak_mib": 1.0, "path": "fake plan"}

        return fake_measure

    monkeypatch.setattr(gpu, "machine", lambda: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "bench.md"
    monkeypatch.setattr(gpu, "measure", interrupting_after(3))  # during the second target
    assert gpu.main(["--markdown", str(out)]) == 0
    text = out.read_text()
    assert f"| {gpu.TARGETS[0].label} | triton | 1.95 |" in text  # 1 ms / 512 steps
    assert f"Not run (time budget or interrupt): {gpu.TARGETS[1].label}" in text
    # the targets take 8 cases x 3 providers (all B=16, so the reference runs too), the layer
    # kernels' cases 2 each (B=32: cuDNN and triton); then the sweep
    first = 3 * len(gpu.TARGETS) + 2 * len(gpu.LAYER_KERNEL_CASES)
    monkeypatch.setattr(gpu, "measure", interrupting_after(first + 2))
    assert gpu.main(["--markdown", str(out)]) == 0
    text = out.read_text()
    assert f"| {gpu.TARGETS[0].label} | planner's choice | 1.95 |" in text
    assert f"| {gpu.TARGETS[0].label} | block_h=8 | 1.95 |" in text  # kept though interrupted after it
