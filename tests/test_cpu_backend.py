"""The CPU backend against the reference loop: outputs, final states and every gradient in float64.

Every buffer the backend allocates with ``torch.empty`` (in Python or in the compiled loop) starts
as NaN here (torch's ``fill_uninitialized_memory`` under deterministic mode), so an element it
forgets to write fails. Every test runs twice: with the compiled loops (LSTM and GRU) and with the
Python ones that replace them where they cannot be built.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import catalogue
import gatedrnn
from gatedrnn.backends import choose, reference, reset_in_walk_order
from gatedrnn.backends import cpu as cpu_backend
from gatedrnn.backends.cpu import compiled, function
from gatedrnn.config import LSTM_VARIANTS, CellConfig, Noise
from helpers import (
    assert_close_lists,
    assert_close_results,
    layer_run_and_grad,
    random_projection,
    rel_err,
    run_and_grad,
)

I, H, T, B = 3, 5, 7, 4
LENGTHS = [7, 3, 1, 5]


@pytest.fixture(autouse=True)
def _poison_empty_one_thread():
    """Uninitialised memory reads as NaN for the duration of a test. One intra-op thread: these
    tensors are tiny, and on a shared machine a second thread's wake-ups cost milliseconds per op."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.get_num_threads(),
    )
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(previous[0])
    torch.utils.deterministic.fill_uninitialized_memory = previous[1]
    torch.set_num_threads(previous[2])


@pytest.fixture(autouse=True, params=["compiled", "python"])
def loop(request, monkeypatch):
    """Which loops the CPU backend runs: the compiled ones, or the Python ones (switched to with the
    environment variable users have)."""
    if request.param == "python":
        monkeypatch.setenv(compiled.ENV, "0")
        return request.param
    monkeypatch.delenv(compiled.ENV, raising=False)
    reason = compiled.unavailable_reason()
    if reason is not None:
        if not compiled._compiler_found(os.environ.get("CXX", "c++")):
            pytest.skip(f"no C++ compiler here: {reason}")
        pytest.fail(f"this machine has a C++ compiler, yet the compiled loops are unavailable: {reason}")
    return request.param


_RUNS: dict[str, int] = {}  # compiled-loop passes in the running test (see ``_compiled_runs``)


@pytest.fixture(autouse=True)
def _compiled_runs(loop, monkeypatch):
    """Count the compiled loops' forward and backward passes, so that a comparison can tell that
    they ran (a silent fall-back to the Python loop would compare the Python loop twice)."""
    _RUNS.clear()
    _RUNS.update(forward=0, backward=0)
    for loop_class in (compiled.LSTMLoop, compiled.GRULoop):
        for kind in ("forward", "backward"):

            def counting(*args, _original=getattr(loop_class, kind), _kind=kind):  # noqa: B008 -- binds the original now
                _RUNS[_kind] += 1
                return _original(*args)

            monkeypatch.setattr(loop_class, kind, staticmethod(counting))
    _RUNS["loop"] = loop


def _compiled_expected(cfg: CellConfig) -> bool:
    """Whether the compiled loops run this layer (in float32 and float64) when they are built."""
    return cfg.kernel("cpu") in ("lstm", "gru")


def _cells():
    """The shared catalogue's configurations the cpu backend has kernels for, plus projections and
    bias-free layers across the families."""
    cells = [
        pytest.param(functools.partial(gatedrnn.Recurrent, name), kw, id=param.id)
        for param in catalogue.configurations("cpu")
        for name, kw in [param.values]
    ]
    cells += [
        pytest.param(
            gatedrnn.LSTM,
            dict(variant=v, proj_size=2, layer_norm=ln, bias=bias),
            id=f"lstm-{v}-proj{'-ln' if ln else ''}{'' if bias else '-nobias'}",
        )
        for v, ln, bias in [
            ("vanilla", False, True),
            ("peephole", True, False),
            ("fgr", True, True),
            ("cifg", False, False),
            ("noaf", True, True),
        ]
    ]
    cells += [pytest.param(gatedrnn.LSTM, dict(variant=v, bias=False), id=f"lstm-{v}-nobias") for v in ("fgr", "nfg")]
    cells += [
        pytest.param(
            gatedrnn.GRU,
            dict(reset_after=ra, layer_norm=ln, bias=False),
            id=f"gru-ra{int(ra)}{'-ln' if ln else ''}-nobias",
        )
        for ra in (True, False)
        for ln in (False, True)
    ]
    cells += [
        pytest.param(gatedrnn.RNN, dict(nonlinearity=nl, bias=False), id=f"rnn-{nl}-nobias") for nl in ("tanh", "relu")
    ]
    return cells


LAYOUTS = {
    "stacked-packed": dict(num_layers=2, lengths=True, hx=False),
    "stacked-hx": dict(num_layers=2, lengths=False, hx=True),
    "bidir-packed-hx": dict(num_layers=1, bidirectional=True, lengths=True, hx=True),
    "bidir-stacked": dict(num_layers=2, bidirectional=True, lengths=False, hx=False),
}


def _pair(cls, kw, seed=1, hidden=H, **module_kw):
    """The same module (perturbed parameters, so layer-norm gains are not all 1) on both backends."""
    torch.manual_seed(seed)
    ref = cls(I, hidden, dtype=torch.float64, backend="reference", **kw, **module_kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.2 * torch.randn_like(p))
    fast = cls(I, hidden, dtype=torch.float64, backend="cpu", **kw, **module_kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _compare(
    ref,
    fast,
    *,
    lengths: bool,
    hx: bool,
    batch_first=False,
    seed=5,
    steps=T,
    step_counts=LENGTHS,
    batch=B,
    compiled_expected: bool | None = None,
):
    """Forward, final states and every gradient of ``fast`` against ``ref`` (1e-10 relative), and
    that ``fast`` ran the compiled loops for each layer and direction, forward and backward, where
    this test's ``loop`` is the compiled one and they take the cell (else that it did not)."""
    x = torch.randn(steps, batch, I, dtype=torch.float64)

    def make_input():
        leaf = x.clone().requires_grad_(True)
        if lengths:
            return leaf, pack_padded_sequence(leaf, step_counts, enforce_sorted=False)
        return leaf, leaf

    states = None
    if hx:
        LD = ref.num_layers * ref.num_directions
        states = tuple(torch.randn(LD, batch, s, dtype=torch.float64) for s in ref.cell_config.state_sizes)
    results = []
    for module in (fast, ref):
        torch.manual_seed(seed)  # the same zoneout / dropout masks for both
        before = dict(_RUNS)
        results.append(run_and_grad(module, make_input, states))
        if module is fast:
            ran = (_RUNS["forward"] - before["forward"], _RUNS["backward"] - before["backward"])
    assert_close_results(*results)
    if compiled_expected is None:
        compiled_expected = _RUNS["loop"] == "compiled" and _compiled_expected(fast.cell_config)
    passes = fast.num_layers * fast.num_directions if compiled_expected else 0
    assert ran == (passes, passes), f"compiled loop passes (forward, backward): {ran}, expected {passes} each"
    return results


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cls,kw", _cells())
def test_matches_reference(cls, kw, layout):
    spec = dict(LAYOUTS[layout])
    lengths, hx = spec.pop("lengths"), spec.pop("hx")
    ref, fast = _pair(cls, kw, **spec)
    _compare(ref, fast, lengths=lengths, hx=hx)


NEARLY_FULL = [
    pytest.param(gatedrnn.LSTM, dict(), id="lstm"),
    pytest.param(gatedrnn.LSTM, dict(variant="fgr", layer_norm=True, proj_size=2), id="lstm-fgr-ln-proj"),
    pytest.param(gatedrnn.GRU, dict(reset_after=True), id="gru-ra1"),
    pytest.param(gatedrnn.GRU, dict(reset_after=False, layer_norm=True), id="gru-ra0-ln"),
    pytest.param(gatedrnn.RNN, dict(nonlinearity="relu"), id="rnn-relu"),
]


@pytest.mark.parametrize("cls,kw", NEARLY_FULL)
def test_a_packed_batch_whose_shortest_sequence_is_one_step_short(cls, kw):
    """Lengths T and T - 1 only: the sequences one step short must stop there (final state, and
    the reverse direction starts at their own last step), though no sequence is shorter, so the
    length mask must still act. The other packed batches here all have a sequence at most T - 2
    long."""
    ref, fast = _pair(cls, kw, bidirectional=True, num_layers=2)
    _compare(ref, fast, lengths=True, hx=True, step_counts=[T, T - 1, T - 1, T])


REGULARISED = [
    pytest.param(gatedrnn.LSTM, dict(variant="vanilla"), id="lstm"),
    pytest.param(gatedrnn.LSTM, dict(variant="peephole", proj_size=2), id="lstm-peephole-proj"),
    pytest.param(gatedrnn.LSTM, dict(variant="fgr", layer_norm=True), id="lstm-fgr-ln"),
    pytest.param(gatedrnn.LSTM, dict(variant="cifg"), id="lstm-cifg"),
    pytest.param(gatedrnn.GRU, dict(reset_after=True, layer_norm=True), id="gru-ra1-ln"),
    pytest.param(gatedrnn.GRU, dict(reset_after=False), id="gru-ra0"),
    pytest.param(gatedrnn.RNN, dict(nonlinearity="relu"), id="rnn-relu"),
]


@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cls,kw", REGULARISED)
def test_zoneout_and_recurrent_dropout_in_training(cls, kw, lengths):
    ref, fast = _pair(cls, kw, num_layers=2, bidirectional=True, dropout=0.3, zoneout=0.3, recurrent_dropout=0.25)
    _compare(ref.train(), fast.train(), lengths=lengths, hx=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    draws = []
    for seed in (5, 6):
        torch.manual_seed(seed)
        draws.append(fast(x)[0])
    assert not torch.allclose(*draws), "the masks made no difference: the comparison would not catch them"


@pytest.mark.parametrize("cls,kw", REGULARISED)
def test_zoneout_in_evaluation(cls, kw):
    ref, fast = _pair(cls, kw, bidirectional=True, zoneout=0.4, recurrent_dropout=0.3)
    _compare(ref.eval(), fast.eval(), lengths=True, hx=True)


def test_batch_first_unbatched_and_long_sequence():
    ref, fast = _pair(gatedrnn.LSTM, dict(variant="peephole", batch_first=True, layer_norm=True))
    x = torch.randn(B, 63, I, dtype=torch.float64)
    for module_input in (x, x[0]):
        a, b = fast(module_input), ref(module_input)
        assert torch.allclose(a[0], b[0], rtol=1e-10, atol=1e-12)
        assert all(torch.allclose(s, t, rtol=1e-10, atol=1e-12) for s, t in zip(a[1], b[1]))


@pytest.mark.parametrize(
    "cls,kw",
    [
        (gatedrnn.LSTM, dict(layer_norm=True, variant="peephole", proj_size=2, zoneout=0.2)),
        (gatedrnn.LSTM, dict(layer_norm=True, variant="cifg", recurrent_dropout=0.3)),
        (gatedrnn.LSTM, dict(layer_norm=True, variant="fgr", zoneout=0.2)),
        (gatedrnn.GRU, dict(layer_norm=True, reset_after=True, zoneout=0.2)),
        (gatedrnn.GRU, dict(reset_after=False, recurrent_dropout=0.3)),
    ],
    ids=["lstm-peephole", "lstm-cifg", "lstm-fgr-ln", "gru-ra1-ln", "gru-ra0"],
)
def test_long_sequences_match_in_every_gradient(cls, kw):
    """Long enough (37 steps, lengths down to 20) for the compiled loop's chunked weight gradient
    (16 steps a chunk) to cover several chunks and a partial one, in both directions."""
    ref, fast = _pair(cls, kw, bidirectional=True, num_layers=2)
    _compare(ref.train(), fast.train(), lengths=True, hx=True, steps=37, step_counts=[37, 20, 33, 29])


GRADCHECK = [  # the big parameter sets run one direction only, to keep gradcheck's cost down
    pytest.param(gatedrnn.LSTM, dict(variant="fgr", layer_norm=True, proj_size=2), id="lstm-fgr-ln-proj"),
    pytest.param(
        gatedrnn.LSTM, dict(variant="peephole", zoneout=0.3, bidirectional=True), id="lstm-peephole-zoneout-eval"
    ),
    pytest.param(gatedrnn.GRU, dict(layer_norm=True, reset_after=True), id="gru-ra1-ln"),
    pytest.param(gatedrnn.GRU, dict(layer_norm=True, reset_after=False, bidirectional=True), id="gru-ra0-ln"),
    pytest.param(gatedrnn.RNN, dict(nonlinearity="relu", bidirectional=True), id="rnn-relu"),
]


@pytest.mark.parametrize("cls,kw", GRADCHECK)
def test_gradcheck(cls, kw):
    module = cls(2, 3, dtype=torch.float64, backend="cpu", **kw).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    D = module.num_directions
    h0 = tuple(torch.randn(D, 2, s, dtype=torch.float64, requires_grad=True) for s in module.cell_config.state_sizes)
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())
    n_states = len(h0)

    def f(x, *rest):
        states, ps = rest[:n_states], rest[n_states:]
        hx = states if n_states > 1 else states[0]
        out, state = functional_call(module, dict(zip(names, ps)), (x, hx))
        return (out,) + (state if isinstance(state, tuple) else (state,))

    assert gradcheck(f, (x,) + h0 + params, eps=1e-6, atol=1e-7, rtol=1e-5)


def _count_recurrence_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = function.Recurrence.forward

    def counting(ctx, *args):
        calls.append(1)
        return original(ctx, *args)

    monkeypatch.setattr(function.Recurrence, "forward", staticmethod(counting))
    return calls


@pytest.mark.parametrize(
    "kw",
    [dict(variant="peephole"), dict(layer_norm=True), dict(zoneout=0.1)],
    ids=["peephole", "layer_norm", "zoneout"],
)
def test_auto_picks_cpu_for_what_torch_lacks(monkeypatch, kw):
    calls = _count_recurrence_calls(monkeypatch)
    module = gatedrnn.LSTM(I, H, num_layers=2, bidirectional=True, **kw)
    assert choose("auto", module.cell_config, torch.zeros(1), module._regularised()) == "cpu"
    module(torch.randn(T, B, I))
    assert len(calls) == 4  # one Function per layer and direction
    assert choose("auto", CellConfig("lstm", H), torch.zeros(1), False) == "torch"


@pytest.mark.parametrize(
    "cls,T,B,hidden,dtype,grad,ragged,expected",
    [
        (gatedrnn.GRU, 8, 2, H, torch.float32, True, False, "cpu"),
        (gatedrnn.GRU, 7, 2, H, torch.float32, True, False, "torch"),
        (gatedrnn.GRU, 1, 32, 256, torch.float64, True, False, "torch"),
        (gatedrnn.GRU, 8, 2, H, torch.float32, True, True, "cpu"),
        (gatedrnn.GRU, 64, 32, 256, torch.float32, False, False, "cpu"),
        (gatedrnn.GRU, 63, 32, 256, torch.float32, False, False, "torch"),
        (gatedrnn.GRU, 64, 1, 257, torch.float32, False, False, "torch"),
        (gatedrnn.GRU, 64, 33, 256, torch.float32, False, False, "torch"),
        (gatedrnn.GRU, 64, 32, 256, torch.float32, False, True, "torch"),
        (gatedrnn.GRU, 64, 2, H, torch.bfloat16, True, False, "torch"),
        (gatedrnn.LSTM, 64, 2, H, torch.float32, True, False, "torch"),
        (gatedrnn.RNN, 64, 2, H, torch.float32, True, False, "torch"),
    ],
    ids=[
        "gru-train-T8",
        "gru-train-T7",
        "gru-train-T1",
        "gru-train-T8-unequal",
        "gru-infer-T64",
        "gru-infer-T63",
        "gru-infer-H257",
        "gru-infer-BH8448",
        "gru-infer-T64-unequal",
        "gru-bf16",
        "lstm",
        "rnn",
    ],
)
def test_auto_runs_the_plain_gru_on_the_cpu_backend_where_measured_faster(
    loop, cls, T, B, hidden, dtype, grad, ragged, expected
):
    """The sizes of cpu.beats_torch's bounds, on either side, and packed batches of unequal
    lengths; without the compiled loops torch's kernel."""
    cfg = cls(I, hidden).cell_config
    with torch.set_grad_enabled(grad):
        chosen = choose("auto", cfg, torch.zeros(T, B, I, dtype=dtype), False, ragged=ragged)
    assert chosen == (expected if loop == "compiled" else "torch")


def test_packed_inference_of_unequal_lengths_keeps_torchs_kernel(loop, monkeypatch):
    """The module passes a packed batch's lengths to the choice: without grad, unequal lengths run
    torch's kernel and equal ones the cpu backend (where it is built)."""
    calls = _count_recurrence_calls(monkeypatch)
    module = gatedrnn.GRU(I, H)
    x = torch.randn(64, B, I)
    with torch.no_grad():
        module(pack_padded_sequence(x, [64, 64, 63, 64], enforce_sorted=False))
        assert calls == []
        module(pack_padded_sequence(x, [64] * B))
    assert len(calls) == (1 if loop == "compiled" else 0)


def test_the_plain_gru_on_the_cpu_backend_gives_torch_nns_numbers(loop, monkeypatch):
    calls = _count_recurrence_calls(monkeypatch)
    torch.manual_seed(2)
    theirs = torch.nn.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = gatedrnn.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())

    def make():
        x = torch.randn(12, B, I, dtype=torch.float64, requires_grad=True)
        return x, pack_padded_sequence(x, [12, 9, 3, 8], enforce_sorted=False)

    hx = (torch.randn(4, B, H, dtype=torch.float64),)
    torch.manual_seed(3)
    expected = run_and_grad(theirs, make, hx)
    torch.manual_seed(3)
    assert_close_results(run_and_grad(ours, make, hx), expected)
    assert len(calls) == (4 if loop == "compiled" else 0), "auto should have run the cpu backend (compiled) here"


def _graph_size(tensor: torch.Tensor) -> int:
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("kw", [dict(variant="fgr", layer_norm=True, proj_size=2), dict(variant="cifg")])
def test_autograd_graph_does_not_grow_with_time(kw):
    module = gatedrnn.LSTM(I, H, backend="cpu", **kw)
    sizes = [_graph_size(module(torch.randn(steps, B, I, requires_grad=True))[0]) for steps in (3, 40)]
    assert sizes[0] == sizes[1] < 30


def test_refuses_other_devices_with_a_reason():
    x = torch.empty(T, B, I, device="meta")
    reason = cpu_backend.supports(CellConfig("lstm", H), x)
    assert reason is not None and "meta" in reason
    with pytest.raises(ValueError, match="backend 'cpu' cannot run this layer: expected a CPU tensor"):
        choose("cpu", CellConfig("lstm", H), x, False)


def test_gate_recording_runs_on_the_reference():
    module = gatedrnn.LSTM(I, H, variant="peephole", backend="cpu", dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    trace = gatedrnn.inspect_gates(module, x)
    assert torch.allclose(trace.output, module(x)[0], rtol=1e-10, atol=1e-12)
    assert trace.gates[(0, 0)]["o"].shape == (T, B, H)


@pytest.mark.parametrize(
    "kw", [dict(layer_norm=True, variant="fgr"), dict(variant="peephole", proj_size=2)], ids=["fgr-ln", "peephole-proj"]
)
def test_retained_graph_gives_the_same_gradients_twice(kw):
    module = gatedrnn.LSTM(I, H, backend="cpu", dtype=torch.float64, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out, _ = module(x)
    first = torch.autograd.grad(out.square().sum(), [x, *module.parameters()], retain_graph=True)
    second = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def _count_compiled_calls(monkeypatch) -> list[str]:
    """Records the family of every compiled-loop forward pass."""
    calls: list[str] = []
    for loop_class in (compiled.LSTMLoop, compiled.GRULoop):
        original = loop_class.forward

        def counting(*args, _original=original, _name=loop_class.__name__):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(loop_class, "forward", staticmethod(counting))
    return calls


@pytest.mark.parametrize(
    "cls,kw,expected",
    [
        (gatedrnn.LSTM, dict(variant="peephole", layer_norm=True), "LSTMLoop"),
        (gatedrnn.LSTM, dict(variant="cifg", proj_size=2, zoneout=0.2), "LSTMLoop"),
        (gatedrnn.GRU, dict(reset_after=False, layer_norm=True), "GRULoop"),
        (gatedrnn.LSTM, dict(variant="fgr", layer_norm=True), "LSTMLoop"),
        (gatedrnn.RNN, dict(nonlinearity="relu"), None),
    ],
    ids=["lstm-peephole-ln", "lstm-cifg", "gru-ra0-ln", "lstm-fgr-ln", "rnn"],
)
def test_the_compiled_loops_run_every_lstm_and_every_gru(loop, monkeypatch, cls, kw, expected):
    calls = _count_compiled_calls(monkeypatch)
    cls(I, H, bidirectional=True, backend="cpu", **kw)(torch.randn(T, B, I))
    assert calls == ([expected] * 2 if expected and loop == "compiled" else [])
    cls(I, H, backend="cpu", dtype=torch.bfloat16, **kw)(torch.randn(T, B, I, dtype=torch.bfloat16))
    assert len(calls) == (2 if expected and loop == "compiled" else 0), "bfloat16 runs the Python loop"


@pytest.mark.parametrize("hidden", [H, 21], ids=["H5", "H21"])
@pytest.mark.parametrize(
    "cls,kw",
    [
        (gatedrnn.LSTM, dict(variant="peephole", layer_norm=True, proj_size=3)),
        (gatedrnn.LSTM, dict(variant="fgr", layer_norm=True)),
        (gatedrnn.GRU, dict(reset_after=False, layer_norm=True)),
    ],
    ids=["lstm", "lstm-fgr", "gru"],
)
def test_float32_loops_are_as_accurate_as_each_other(loop, cls, kw, hidden):
    """In float32 the compiled loops and the Python ones both stay close to the float64 reference
    (H = 21: rows longer than one float vector, with a partial one after it; two threads)."""
    torch.set_num_threads(2)
    torch.manual_seed(3)
    module = cls(I, hidden, backend="cpu", num_layers=2, **kw)
    exact = cls(I, hidden, backend="reference", dtype=torch.float64, num_layers=2, **kw)
    exact.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    x, weights = torch.randn(T, B, I), torch.randn(T, B, module.cell_config.output_size)

    def output_and_grads(m, dtype):
        leaf = x.to(dtype).requires_grad_(True)
        out, _ = m(leaf)
        grads = torch.autograd.grad((out * weights.to(dtype)).sum(), [leaf, *m.parameters()])
        return [out.double(), *(g.double() for g in grads)]

    before = dict(_RUNS)
    error = max(map(rel_err, output_and_grads(module, torch.float32), output_and_grads(exact, torch.float64)))
    bound = 2e-5 if hidden == H else 5e-5  # float32 rounding grows with the row length (both loops alike)
    if kw.get("variant") == "fgr":  # its layer-norm gains' gradients cancel more (up to 5e-5 in either loop)
        bound = 1e-4
    assert error < bound, f"{loop} loop in float32: rel err {error:.1e} against float64"
    passes = 2 if loop == "compiled" else 0
    assert (_RUNS["forward"] - before["forward"], _RUNS["backward"] - before["backward"]) == (passes, passes)


def test_without_the_compiled_loop_the_python_one_runs_and_says_why(loop, monkeypatch):
    if loop == "python":
        pytest.skip("switches the compiled loop off itself")
    monkeypatch.setattr(compiled, "unavailable_reason", lambda: "no C++ compiler found (looked for 'c++')")
    compiled._warn_once.cache_clear()
    calls = _count_compiled_calls(monkeypatch)
    ref, fast = _pair(gatedrnn.LSTM, dict(variant="peephole", layer_norm=True))
    with pytest.warns(RuntimeWarning, match=r"compiled loops are unavailable \(no C\+\+ compiler found.*Python loops"):
        _compare(ref, fast, lengths=True, hx=True, compiled_expected=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per reason, not at every call
        _compare(ref, fast, lengths=False, hx=False, compiled_expected=False)
    assert calls == []
    compiled._warn_once.cache_clear()


def test_a_failed_build_reports_the_compilers_first_error():
    log = (
        "Error building extension 'x': [1/2] c++ -c lstm_loop.cpp -o lstm_loop.o\n"
        "lstm_loop.cpp:12:5: error: 'foo' was not declared in this scope\n"
        "lstm_loop.cpp:30:1: error: expected ';'\nninja: build stopped: subcommand failed."
    )
    assert compiled._first_error(log) == "lstm_loop.cpp:12:5: error: 'foo' was not declared in this scope"
    assert compiled._first_error("linker said no") == "linker said no"


def _row_tasks(batch: int, row_size: int, threads: int) -> int:
    """How many tasks a compiled step's parallel region splits ``batch`` rows of ``row_size``
    values into (csrc/common.h's ``row_grain`` and at::parallel_for's split)."""
    grain = max(1, 8192 // row_size)
    return 1 if batch <= grain or threads < 2 else min(threads, -(-batch // grain))


SPLIT = [pytest.param(gatedrnn.LSTM, dict(variant=v, layer_norm=True), id=f"lstm-{v}-ln") for v in LSTM_VARIANTS]
SPLIT += [
    pytest.param(gatedrnn.LSTM, dict(variant=v, proj_size=7, bias=False), id=f"lstm-{v}-proj-nobias")
    for v in LSTM_VARIANTS
]
SPLIT += [
    pytest.param(gatedrnn.GRU, dict(reset_after=ra, layer_norm=ln), id=f"gru-ra{int(ra)}{'-ln' if ln else ''}")
    for ra in (True, False)
    for ln in (False, True)
]


@pytest.mark.parametrize("hidden,batch", [(21, 1), (64, 45)], ids=["H21-B1", "H64-B45-two-tasks"])
@pytest.mark.parametrize("cls,kw", SPLIT)
def test_two_threads_odd_sizes_and_a_batch_split_between_them(cls, kw, hidden, batch):
    """Two intra-op threads: with B = 45 and H = 64 every step's rows are split into two uneven
    tasks (each with its own product, gate math and parameter-gradient sums); with H = 21 each
    row is longer than one vector with a partial one after it, and B = 1. In training (zoneout,
    recurrent dropout), packed, both directions, forward and every gradient in float64."""
    torch.set_num_threads(2)
    ref, fast = _pair(cls, kw, hidden=hidden, bidirectional=True, zoneout=0.3, recurrent_dropout=0.25)
    cfg = fast.cell_config
    row_size = (4 * hidden if cfg.reset_after else 3 * hidden) if cfg.kernel("cpu") == "gru" else cfg.num_gates * hidden
    assert _row_tasks(batch, row_size, torch.get_num_threads()) == (2 if batch > 1 else 1)
    step_counts = [max(1, T - b % T) for b in range(batch)]
    _compare(ref.train(), fast.train(), lengths=True, hx=True, batch=batch, step_counts=step_counts)


THREADED = [
    pytest.param(gatedrnn.LSTM, dict(variant="peephole", layer_norm=True), id="lstm-peephole-ln"),
    pytest.param(gatedrnn.GRU, dict(reset_after=True, layer_norm=True), id="gru-ra1-ln"),
]


@pytest.mark.parametrize("cls,kw", THREADED)
def test_four_threads_each_with_its_own_rows(cls, kw):
    """Four intra-op threads, every step's rows split into four tasks (B = 100, H = 64): the
    compiled loops keep the layer-norm gains', shifts' and peepholes' gradients per thread and add
    them up after the loop; a sum that missed a thread past the second would pass every test run
    with two threads."""
    torch.set_num_threads(4)
    ref, fast = _pair(cls, kw, hidden=64, bidirectional=True)
    cfg = fast.cell_config
    row_size = 4 * 64 if cfg.kernel("cpu") == "lstm" or cfg.reset_after else 3 * 64
    assert _row_tasks(100, row_size, torch.get_num_threads()) == 4
    _compare(ref, fast, lengths=False, hx=True, batch=100)


def test_no_compiler_is_found_before_any_build(monkeypatch):
    """Without a compiler the loader says so (the backend then warns once and runs the Python loop)."""
    monkeypatch.setenv("CXX", os.path.join(os.sep, "nonexistent", "g++"))
    assert compiled.unavailable_reason.__wrapped__().startswith("no C++ compiler found")
    assert not compiled._compiler_found("")
    if shutil.which("c++") is not None:  # a launcher or flags in CXX, as make and ninja take it
        assert compiled._compiler_found("c++ -std=c++17")


@pytest.mark.parametrize("word", ["0", "false", "No", " off "])
def test_every_documented_word_switches_the_compiled_loops_off(monkeypatch, word):
    """GATEDRNN_CPU_COMPILED set to 0, false, no or off (any case, spaces around) runs the Python
    loops; other values keep the compiled ones where they are built."""
    cfg = CellConfig("lstm", 5)
    monkeypatch.setenv(compiled.ENV, word)
    assert compiled.disabled() and compiled.loop_for(cfg, torch.float64) is None
    monkeypatch.setenv(compiled.ENV, "1")
    assert not compiled.disabled()


def test_the_ninja_wheel_comes_first_on_path(monkeypatch, tmp_path):
    """Every process builds with the wheel's ninja, even where another ninja comes first on PATH:
    two ninja versions read each other's build log as stale and rebuilt the loops on each switch."""
    ninja = pytest.importorskip("ninja")
    wheel = shutil.which("ninja", path=ninja.BIN_DIR)
    if wheel is None:
        pytest.skip("the ninja package has no binary in its BIN_DIR")
    other = tmp_path / "ninja"
    other.write_text("#!/bin/sh\nexit 1\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shutil.which("ninja") == str(other)
    compiled._ninja_on_path()
    assert shutil.which("ninja") == wheel
    path = os.environ["PATH"]
    compiled._ninja_on_path()
    assert os.environ["PATH"] == path, "already first: PATH is left as it is"


def test_a_build_lock_left_by_a_killed_build_does_not_hang_the_next(loop, tmp_path):
    """torch's builder waits forever on the ``lock`` file of a build that was killed (a timeout,
    a cancelled job); the loader clears it under its own lock, which dies with its holder. Run in
    a copy of this machine's build, so that nothing is rebuilt."""
    if loop == "python":
        pytest.skip("about the build")
    pytest.importorskip("fcntl")
    from torch.utils import cpp_extension

    name = compiled._build_flags(os.environ.get("CXX", "c++"))[0]
    built = compiled._build_directory(cpp_extension, name)
    shutil.copytree(built, tmp_path / name, ignore=shutil.ignore_patterns("lock", "gatedrnn.lock"))
    (tmp_path / name / "lock").touch()
    probe = "from gatedrnn.backends.cpu import compiled; print(compiled.unavailable_reason())"
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "None", done.stderr
    assert not (tmp_path / name / "lock").exists()


@pytest.mark.parametrize(
    "cls,kw",
    [
        (gatedrnn.LSTM, dict(variant="peephole", layer_norm=True, proj_size=2)),
        (gatedrnn.GRU, dict(reset_after=False, layer_norm=True)),
    ],
    ids=["lstm", "gru"],
)
def test_an_empty_batch_runs_as_the_reference_does(cls, kw):
    """The backend's run_layer with B = 0 (the module itself returns early) gives the reference's result."""
    module = cls(I, H, dtype=torch.float64, **kw)
    w = {k[: -len("_l0")]: p for k, p in module.named_parameters()}
    x = torch.randn(T, 0, I, dtype=torch.float64)
    state = tuple(torch.zeros(0, s, dtype=torch.float64) for s in module.cell_config.state_sizes)
    out, final, _ = cpu_backend.run_layer(module.cell_config, x, state, w)
    assert out.shape == (T, 0, module.cell_config.output_size)
    assert [f.shape for f in final] == [s.shape for s in state]


PADDED = [
    pytest.param(gatedrnn.LSTM, dict(variant="peephole", proj_size=2), id="lstm-peephole-proj"),
    pytest.param(gatedrnn.GRU, dict(reset_after=False), id="gru-ra0"),
    pytest.param(gatedrnn.RNN, dict(), id="rnn"),
]


@pytest.mark.parametrize("cls,kw", PADDED)
def test_a_layer_outputs_zeros_on_padded_steps_and_takes_no_gradient_there(cls, kw):
    """``run_layers`` with lengths, a loss weighting every step of the (T, B, D*R) output, padded
    ones included: the cpu backend's output, final states and gradients equal the reference's
    (whose padded outputs are constant zeros, and a gradient arriving there reaches nothing). A
    packed module output drops those steps, so the module tests cannot see them."""
    ref, fast = _pair(cls, kw, bidirectional=True)
    x, lengths = torch.randn(T, B, I, dtype=torch.float64), torch.tensor(LENGTHS)
    states = tuple(torch.randn(2, B, s, dtype=torch.float64) for s in ref.cell_config.state_sizes)
    results = []
    for module, backend in ((fast, "cpu"), (ref, "reference")):
        leaf = x.clone().requires_grad_(True)
        out, finals, _ = module.run_layers(leaf, states, lengths, backend)
        loss = random_projection([out, *finals], seed=3)
        results.append([out, *finals, *torch.autograd.grad(loss, [leaf, *module.parameters()])])
    padded = torch.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    assert results[0][0][padded].abs().max() == 0, "padded steps should output zeros"
    for k, (a, b) in enumerate(zip(*results)):
        assert rel_err(a, b) < 1e-10, f"result {k}: rel err {rel_err(a, b)}"


@pytest.mark.parametrize(
    "cls,kw",
    [
        (gatedrnn.GRU, dict(layer_norm=True)),
        (gatedrnn.LSTM, dict(variant="peephole", bidirectional=True)),
        (gatedrnn.LSTM, dict(variant="fgr", backend="reference")),
        (gatedrnn.LSTM, dict()),  # torch's kernel: torch.nn.LSTM's fails under CPU autocast
        (gatedrnn.RNN, dict(num_layers=2)),  # torch's kernel: torch.nn.RNN would return bfloat16
        (gatedrnn.RNN, dict(backend="cpu")),
        (gatedrnn.GRU, dict()),
        (gatedrnn.LSTMCell, dict(layer_norm=True)),
        (gatedrnn.GRUCell, dict(backend="reference")),
        (gatedrnn.RNNCell, dict()),  # torch's step: torch.nn.RNNCell would return bfloat16
    ],
    ids=[
        "gru-ln",
        "lstm-peephole",
        "lstm-fgr-reference",
        "lstm",
        "rnn-2-layers",
        "rnn-cpu",
        "gru",
        "lstmcell-ln",
        "grucell",
        "rnncell",
    ],
)
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_cpu_autocast_runs_the_recurrence_in_the_parameters_dtype(cls, kw, layout):
    """Under CPU autocast (bfloat16) every module and backend computes as without it, in float32,
    and returns the input's dtype (for a packed input too); the gradients reach the float32
    weights. (torch.nn differs by class here: its LSTM fails, its RNN returns bfloat16.)"""
    cell = "Cell" in cls.__name__
    if cell and layout == "packed":
        pytest.skip("a cell takes no packed sequence")
    torch.manual_seed(0)
    module = cls(I, H, **kw)
    x = torch.randn(B, I) if cell else torch.randn(T, B, I)

    def call(given):
        if layout == "packed":
            given = pack_padded_sequence(given, LENGTHS, enforce_sorted=False)
        out = module(given)
        out = out[0] if isinstance(out, tuple) else out
        return out.data if layout == "packed" else out

    expected = call(x)
    for given in (x, x.bfloat16()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = call(given)
        assert out.dtype == given.dtype
        want = expected if given.dtype == torch.float32 else call(given.float()).bfloat16()
        assert torch.equal(out, want)
        module.zero_grad()
        out.float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())


SECOND_ORDER = [
    pytest.param(
        gatedrnn.LSTM,
        dict(variant="peephole", proj_size=2, layer_norm=True, zoneout=0.3),
        id="lstm-peephole-proj-ln-zoneout",
    ),
    pytest.param(
        gatedrnn.LSTM,
        dict(variant="fgr", layer_norm=True, bias=False, recurrent_dropout=0.3),
        id="lstm-fgr-ln-nobias-dropout",
    ),
    pytest.param(gatedrnn.LSTM, dict(variant="cifg"), id="lstm-cifg"),
    pytest.param(gatedrnn.GRU, dict(reset_after=True, layer_norm=True, zoneout=0.3), id="gru-ra1-ln-zoneout"),
    pytest.param(gatedrnn.GRU, dict(reset_after=False), id="gru-ra0"),
    pytest.param(gatedrnn.GRU, dict(), id="gru-plain"),  # replayed on torch's kernel
    pytest.param(gatedrnn.GRU, dict(bias=False), id="gru-plain-nobias"),
    pytest.param(gatedrnn.RNN, dict(nonlinearity="relu"), id="rnn-relu"),
]


def _gradient_penalty(module, x, states, lengths, second_order=True):
    """First-order gradients of a loss over every output (with ``create_graph``), then the
    gradients of their squared norm: (first, second), each a dict over the input, the initial
    states and the parameters; (first, None) computed without a graph when not ``second_order``."""
    leaves = {"x": x.clone().requires_grad_(True)}
    leaves.update({f"hx{k}": s.clone().requires_grad_(True) for k, s in enumerate(states)})
    leaves.update(module.named_parameters())
    packed = pack_padded_sequence(leaves["x"], lengths, enforce_sorted=False)
    hx = tuple(leaves[f"hx{k}"] for k in range(len(states)))
    out, state = module(packed, hx if len(hx) > 1 else hx[0])
    outs = [out.data, *(state if isinstance(state, tuple) else (state,))]
    loss = random_projection(outs, seed=7)
    first = torch.autograd.grad(loss, list(leaves.values()), create_graph=second_order)
    if not second_order:
        return dict(zip(leaves, first)), None
    penalty = sum(g.pow(2).sum() for g in first)
    second = torch.autograd.grad(penalty, list(leaves.values()))
    return dict(zip(leaves, first)), dict(zip(leaves, second))


@pytest.mark.parametrize("cls,kw", SECOND_ORDER)
def test_second_derivatives_through_the_recurrence_match_the_reference(cls, kw, monkeypatch):
    """A gradient penalty through the recurrence (training masks, bidirectional, packed, initial
    states): the create_graph backward replays each layer and direction on the reference loop (the
    plain GRU over full lengths on torch's kernel), so the gradients and the penalty's gradients equal the reference
    backend's, and the first-order values equal the fused backward's."""
    replays = []
    for kind in ("_torch_gru_replay", "_replay"):
        monkeypatch.setattr(
            cpu_backend,
            kind,
            lambda *a, _f=getattr(cpu_backend, kind), _k=kind, **k: replays.append(_k) or _f(*a, **k),  # noqa: B008
        )
    ref, fast = _pair(cls, kw, bidirectional=True, num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    LD = ref.num_layers * ref.num_directions
    states = [torch.randn(LD, B, s, dtype=torch.float64) for s in ref.cell_config.state_sizes]
    results = []
    for module in (fast.train(), ref.train()):
        torch.manual_seed(3)  # the same masks for both
        results.append(_gradient_penalty(module, x, states, LENGTHS))
    assert replays == ["_replay"] * LD, replays  # unequal lengths: the reference loop for every cell
    if cls is gatedrnn.GRU and "reset_after" not in kw:  # the plain GRU over full lengths: torch's kernel
        replays.clear()
        full = _gradient_penalty(fast, x, states, [T] * B)[1]
        assert replays == ["_torch_gru_replay"] * LD, replays
        exact = _gradient_penalty(ref, x, states, [T] * B)[1]
        for (name, a), b in zip(full.items(), exact.values()):
            assert rel_err(a, b) < 1e-10, f"second-order gradient {name} (full lengths): rel err {rel_err(a, b)}"
    for (name, a), b in zip(results[0][1].items(), results[1][1].values()):
        assert rel_err(a, b) < 1e-10, f"second-order gradient {name}: rel err {rel_err(a, b)}"
    torch.manual_seed(3)
    fused, _ = _gradient_penalty(fast, x, states, LENGTHS, second_order=False)
    for (name, a), b in zip(results[0][0].items(), fused.values()):
        assert rel_err(a, b) < 1e-10, f"first-order gradient {name}: rel err {rel_err(a, b)}"


@pytest.mark.parametrize("kw,trained", [(dict(proj_size=2), "weight_hr"), (dict(layer_norm=True), "ln_weight_c")])
def test_second_derivatives_when_an_output_depends_on_no_trained_parameter(kw, trained):
    """One step with only the projection (or the cell's layer-norm gain) trained: c_n depends on
    nothing that requires grad, and the create_graph backward still gives the reference's numbers."""
    results = []
    for backend in ("cpu", "reference"):
        torch.manual_seed(0)
        module = gatedrnn.LSTM(I, H, backend=backend, dtype=torch.float64, **kw)
        for name, p in module.named_parameters():
            p.requires_grad_(name.startswith(trained))
        out, _ = module(torch.randn(1, B, I, dtype=torch.float64))
        trainable = [p for p in module.parameters() if p.requires_grad]
        first = torch.autograd.grad(out.pow(2).sum(), trainable, create_graph=True)
        results.append(torch.autograd.grad(sum(g.pow(2).sum() for g in first), trainable))
    assert all(rel_err(a, b) < 1e-10 for a, b in zip(*results))


@pytest.mark.parametrize("lengths", [LENGTHS, None], ids=["unequal", "full"])
def test_the_replay_holds_no_second_copy_of_the_zoneout_masks(lengths):
    """With sampled zoneout masks, the replay reruns the layer with the plan's keeps (the masks
    themselves over full lengths, 1 on padded steps otherwise), not with the raw masks beside
    them; the keeps differ from the masks only on steps that did not run."""
    cfg = CellConfig("lstm", H)
    x = torch.randn(T, B, I)
    noise = Noise(
        zoneout=0.3,
        zoneout_h=torch.rand(T, B, H).lt(0.3).float(),
        zoneout_c=torch.rand(T, B, H).lt(0.3).float(),
        recurrent_mask=torch.rand(B, H),
    )
    lens = None if lengths is None else torch.tensor(lengths)
    plan = cpu_backend.make_plan(cfg, x, lens, noise, reverse=False)
    replayed = plan.replay.args[-1]
    assert replayed.zoneout_h is plan.keep_h and replayed.zoneout_c is plan.keep_c
    assert replayed.recurrent_mask is noise.recurrent_mask and replayed.zoneout == noise.zoneout
    ran = torch.ones(T, B, 1) if lens is None else (torch.arange(T)[:, None] < lens).float().unsqueeze(-1)
    for keep, mask in ((plan.keep_h, noise.zoneout_h), (plan.keep_c, noise.zoneout_c)):
        assert torch.equal(keep * ran, mask * ran) and torch.equal(keep * (1 - ran), (1 - ran).expand_as(keep))
    evaluation = Noise(zoneout=0.3)  # no masks: the expectation, replayed as given
    assert cpu_backend.make_plan(cfg, x, lens, evaluation, reverse=False).replay.args[-1] is evaluation


def test_a_first_order_backward_runs_after_the_initial_state_is_overwritten():
    """A stateful loop copies the final state into its carry before backward: the fused backward
    does not read the initial state, so that works (the replay for second derivatives would)."""
    module = gatedrnn.LSTM(I, H, variant="peephole", backend="cpu")
    h, c = torch.zeros(1, B, H), torch.zeros(1, B, H)
    out, (hn, cn) = module(torch.randn(T, B, I), (h, c))
    with torch.no_grad():
        h.copy_(hn)
        c.copy_(cn)
    out.sum().backward()
    assert module.weight_ch_l0.grad is not None


@pytest.mark.parametrize(
    "cls,kw",
    [
        pytest.param(gatedrnn.LSTM, dict(variant="peephole", layer_norm=True, proj_size=2), id="lstm-peephole-ln-proj"),
        pytest.param(gatedrnn.GRU, dict(reset_after=True), id="gru"),
    ],
)
def test_gradgradcheck(cls, kw):
    """torch's own second-order check (analytic against numerical) on the cpu backend."""
    module = cls(2, 3, dtype=torch.float64, backend="cpu", **kw)
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def f(x, *ps):
        out, state = functional_call(module, dict(zip(names, ps)), (x,))
        return (out,) + (state if isinstance(state, tuple) else (state,))

    assert torch.autograd.gradgradcheck(f, (x,) + params, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_a_gradient_penalty_on_the_plain_gru_under_auto_runs_the_cpu_backend(loop, monkeypatch):
    """The plain GRU in training from 8 steps takes the cpu backend under ``auto``; a gradient
    penalty through it (which used to raise) gives torch.nn.GRU's numbers."""
    monkeypatch.setattr(compiled, "ready", lambda: True)  # the Python loop stands in where none is built
    torch.manual_seed(0)
    ours = gatedrnn.GRU(I, H, dtype=torch.float64)
    theirs = torch.nn.GRU(I, H, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x, h0 = torch.randn(12, B, I, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)
    assert choose("auto", ours.cell_config, x, regularised=False) == "cpu"
    calls = _count_recurrence_calls(monkeypatch)
    got, want = (_gradient_penalty(m, x, [h0], [12, 9, 4, 1]) for m in (ours, theirs))
    assert calls, "the cpu backend did not run"
    for name in want[1]:
        assert rel_err(got[0][name], want[0][name]) < 1e-10, name
        assert rel_err(got[1][name], want[1][name]) < 1e-10, name


_TRACED = [
    (gatedrnn.LSTM, dict(variant="peephole", layer_norm=True, proj_size=2, zoneout=0.3)),
    (gatedrnn.LSTM, dict(variant="fgr", layer_norm=True, recurrent_dropout=0.3)),
    (gatedrnn.LSTM, dict(variant="cifg")),
    (gatedrnn.GRU, dict()),
    (gatedrnn.GRU, dict(reset_after=False, layer_norm=True, zoneout=0.2)),
]
_TRACED_IDS = ["lstm-peephole-ln-proj-zoneout", "lstm-fgr-ln-dropout", "lstm-cifg", "gru", "gru-ra0-ln-zoneout"]


@pytest.mark.parametrize("cls,kw", _TRACED, ids=_TRACED_IDS)
def test_the_compiled_ops_fake_implementations_match_them(loop, monkeypatch, cls, kw):
    """torch.library.opcheck on the arguments of a real call (bidirectional, packed, training):
    the fakes' shapes and dtypes against the ops' results, the schema, and tracing by AOT autograd."""
    if loop != "compiled":
        pytest.skip("the compiled ops' own test")
    ops, captured = torch.ops.gatedrnn_cpu, {}
    for name in ("lstm_forward", "lstm_backward", "gru_forward", "gru_backward"):

        def recording(*args, _op=getattr(ops, name), _name=name):  # noqa: B008 -- binds the original now
            captured[_name] = args
            return _op(*args)

        monkeypatch.setattr(ops, name, recording)
    module = cls(I, H, bidirectional=True, backend="cpu", dtype=torch.float64, **kw)
    x = pack_padded_sequence(torch.randn(T, B, I, dtype=torch.float64), LENGTHS, enforce_sorted=False)
    out, _ = module(x)
    out.data.sum().backward()
    monkeypatch.undo()
    family = "lstm" if cls is gatedrnn.LSTM else "gru"
    assert sorted(captured) == [f"{family}_backward", f"{family}_forward"]
    for name, args in captured.items():
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(getattr(torch.ops.gatedrnn_cpu, name).default, plain)


@pytest.mark.parametrize(
    "cls,kw",
    [
        (gatedrnn.LSTM, dict(variant="peephole", layer_norm=True, proj_size=2, num_layers=2, bidirectional=True)),
        (gatedrnn.GRU, dict(reset_after=False, zoneout=0.2)),
        (gatedrnn.GRU, dict()),
    ],
    ids=["lstm-peephole-ln-proj-stacked", "gru-ra0-zoneout", "gru"],
)
def test_torch_export_runs_the_cpu_backend(loop, cls, kw):
    module = cls(I, H, backend="cpu", **kw).eval()
    program = torch.export.export(module, (torch.randn(T, B, I),))
    # the Python loops' products write into out= buffers, which autograd refuses for parameters
    # that require grad: their exported programs run under no_grad (README, "Quick start")
    with contextlib.nullcontext() if loop == "compiled" else torch.no_grad():
        for _ in range(2):  # a new input: nothing of the traced one is baked in
            x = torch.randn(T, B, I)
            for ours, eager in zip(_flat(program.module()(x)), _flat(module(x))):
                assert rel_err(ours, eager) < 1e-6
    if loop == "compiled":
        assert "gatedrnn_cpu" in str(program.graph), "the exported graph should call the compiled loop"


def _flat(result) -> list[torch.Tensor]:
    output, state = result
    return [output, *(state if isinstance(state, tuple) else (state,))]


def test_the_plain_gru_keeps_torchs_kernel_under_torch_func_and_export(loop):
    """auto's cpu choice for the plain GRU would lose what aten.gru has: torch.func transforms
    (no vmap or forward-mode rule in the Function) and a graph that does not depend on T."""
    module = gatedrnn.GRU(I, H, dtype=torch.float64)
    x = torch.randn(9, B, I, dtype=torch.float64)
    (expected,) = torch.autograd.grad(module(x.requires_grad_(True))[0].sum(), x)
    given = torch.func.grad(lambda inp: module(inp)[0].sum())(x.detach())
    assert rel_err(given, expected) < 1e-12
    program = torch.export.export(module.eval(), (x.detach(),))
    assert "gatedrnn_cpu" not in str(program.graph) and "gru" in str(program.graph)


@pytest.mark.parametrize(
    "cls,kw",
    [(gatedrnn.LSTM, dict(variant="peephole")), (gatedrnn.GRU, dict(layer_norm=True))],
    ids=["lstm-peephole", "gru-ln"],
)
def test_a_variant_under_torch_func_runs_on_the_reference_loop(cls, kw):
    """torch.func.grad and vmap over a variant: ``auto`` (the cpu backend outside transforms)
    runs the reference loop under them, since the fused Function has no functorch rule; naming
    the cpu backend there says so."""
    torch.manual_seed(0)
    module = cls(I, H, dtype=torch.float64, **kw)
    params = {n: p.detach() for n, p in module.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert choose("auto", module.cell_config, x, regularised=False) == "cpu"

    def loss(p, inp):
        return functional_call(module, p, (inp,))[0].pow(2).sum()

    given = torch.func.grad(loss)(params, x)
    expected = dict(zip(params, torch.autograd.grad(loss(dict(module.named_parameters()), x), module.parameters())))
    assert all(rel_err(given[n], expected[n]) < 1e-12 for n in params)
    batched = torch.func.vmap(lambda inp: module(inp)[0], in_dims=1, out_dims=1)(x)
    assert rel_err(batched, module(x)[0]) < 1e-12
    module.backend = "cpu"
    with pytest.raises(ValueError, match="backend 'cpu'.*outside torch.func transforms.*'reference' or 'auto'"):
        torch.func.grad(loss)(params, x)


def test_the_compiled_ops_refuse_masks_of_the_wrong_length(loop):
    if loop != "compiled":
        pytest.skip("the compiled ops' own test")
    xw, h0, w = torch.randn(T, B, 3 * H), torch.randn(B, H), torch.randn(3 * H, H)
    with pytest.raises(RuntimeError, match=r"keep_h must be \(T=7, B=4 or 1"):
        torch.ops.gatedrnn_cpu.gru_forward(
            xw, h0, w, None, None, None, None, torch.rand(T - 1, B, H), None, None, True, False, 1e-5
        )
    with pytest.raises(RuntimeError, match=r"recurrent_mask must be \(B=4 or 1"):
        torch.ops.gatedrnn_cpu.gru_forward(
            xw, h0, w, None, None, None, None, None, torch.rand(B + 1, H), None, True, False, 1e-5
        )
    with pytest.raises(RuntimeError, match=r"restart must be a \(T=7, B=4\) bool tensor"):
        torch.ops.gatedrnn_cpu.gru_forward(
            xw, h0, w, None, None, None, None, None, None, torch.ones(T, B + 1, dtype=torch.bool), True, False, 1e-5
        )


# ----- restarts (reset=) and fgr's carried gates -------------------------------------------------------


def _layer(name: str, kw: dict, hidden: int = H):
    """(cell config, perturbed float64 weights of layer 0) of a family's layer."""
    torch.manual_seed(1)
    module = gatedrnn.Recurrent(name, I, hidden, dtype=torch.float64, backend="reference", **kw)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module.cell_config, module.layer_weights(0, 0)


def _initial_state(cfg, batch: int = B) -> tuple[torch.Tensor, ...]:
    """Random initial states (fgr's carried gates included); the sLSTM's normaliser n positive but 0
    in batch row 0, where its first step takes m = i~."""
    states = [torch.randn(batch, size, dtype=torch.float64) for size in cfg.state_sizes]
    if "n" in cfg.states:
        n = states[cfg.states.index("n")]
        n.abs_().add_(0.5)[0] = 0.0
    return tuple(states)


def _restarts(steps: int = T, batch: int = B, seed: int = 3) -> torch.Tensor:
    """A (T, B) restart mask: about a third of the steps, the first step of row 0 (a restart of the
    initial state), two restarts in a row (row 1, steps 1 and 2) and the last step of row 2."""
    g = torch.Generator().manual_seed(seed)
    reset = torch.rand(steps, batch, generator=g) < 0.3
    reset[0, 0] = reset[1, 1] = reset[2, 1] = reset[steps - 1, 2] = True
    return reset


def _restart_cases():
    """(reverse, lengths): both directions, over padded and packed batches."""
    return [(reverse, lengths) for reverse in (False, True) for lengths in (None, torch.tensor(LENGTHS))]


@pytest.mark.parametrize("name,kw", [p.values for p in catalogue.configurations("cpu")],
                         ids=[p.id for p in catalogue.configurations("cpu")])  # fmt: skip
def test_restarts_match_the_reference(loop, name, kw):
    """Every catalogue configuration the cpu backend runs, restarted at random steps (the initial
    state's first step and consecutive ones included), in both directions over padded and packed
    batches from random initial states: output, final states and the gradients of the input, the
    initial states and every weight equal the reference loop's in float64; the compiled loops
    ran where they take the cell; and the restarts changed the output."""
    cfg, w = _layer(name, kw)
    x, state = torch.randn(T, B, I, dtype=torch.float64), _initial_state(cfg)
    for reverse, lengths in _restart_cases():
        reset = reset_in_walk_order(_restarts(), lengths, reverse)
        runs = dict(_RUNS)
        fast = layer_run_and_grad(cpu_backend, cfg, x, state, w, reverse=reverse, lengths=lengths, reset=reset)
        passes = int(_RUNS["loop"] == "compiled" and _compiled_expected(cfg))
        assert (_RUNS["forward"] - runs["forward"], _RUNS["backward"] - runs["backward"]) == (passes, passes)
        want = layer_run_and_grad(reference, cfg, x, state, w, reverse=reverse, lengths=lengths, reset=reset)
        assert_close_lists(fast[0], want[0], what="output or final state")
        assert_close_lists(fast[1], want[1], what="gradient")
    plain = cpu_backend.run_layer(cfg, x, state, w)[0]
    assert not torch.allclose(plain, fast[0][0]), "the restarts made no difference"


def test_restarts_run_inside_the_fused_kernels(loop, monkeypatch):
    """With the reference loop unavailable, a restarted call of every kernel still runs, forward
    and backward (the create_graph replay aside, nothing of it is the reference loop's)."""

    def refused(*args, **kwargs):
        raise AssertionError("the reference loop ran")

    layers = [_layer(name, kw) for name, kw in catalogue.family_configurations("cpu")]
    for reverse, lengths in _restart_cases():
        kwargs = dict(reverse=reverse, lengths=lengths, reset=reset_in_walk_order(_restarts(), lengths, reverse))
        for cfg, w in layers:
            x, state = torch.randn(T, B, I, dtype=torch.float64), _initial_state(cfg)
            want = layer_run_and_grad(reference, cfg, x, state, w, **kwargs)
            with monkeypatch.context() as patch:
                patch.setattr(reference, "run_layer", refused)
                fast = layer_run_and_grad(cpu_backend, cfg, x, state, w, **kwargs)
            assert_close_lists(fast[0] + fast[1], want[0] + want[1])


def test_a_mask_that_restarts_nothing_runs_the_plain_path(loop):
    """An all-False reset gives the call without one, to the last bit (the plain path runs)."""
    cfg, w = _layer("lstm", dict(variant="fgr", layer_norm=True))
    x, state = torch.randn(T, B, I, dtype=torch.float64), _initial_state(cfg)
    none = layer_run_and_grad(cpu_backend, cfg, x, state, w, lengths=torch.tensor(LENGTHS))
    quiet = torch.zeros(T, B, dtype=torch.bool)
    given = layer_run_and_grad(cpu_backend, cfg, x, state, w, lengths=torch.tensor(LENGTHS), reset=quiet)
    assert all(torch.equal(a, b) for a, b in zip(none[0] + none[1], given[0] + given[1]))


RESTARTED_NOISE = [
    pytest.param("lstm", dict(variant="peephole", proj_size=2), id="lstm-peephole-proj"),
    pytest.param("lstm", dict(variant="fgr", layer_norm=True), id="lstm-fgr-ln"),
    pytest.param("gru", dict(reset_after=True, layer_norm=True), id="gru-ra1-ln"),
    pytest.param("gru", dict(reset_after=False), id="gru-ra0"),
    pytest.param("rnn", dict(nonlinearity="tanh"), id="rnn"),
]


@pytest.mark.parametrize("sampled", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("name,kw", RESTARTED_NOISE)
def test_restarts_with_zoneout_and_recurrent_dropout(loop, name, kw, sampled):
    """Zoneout (sampled masks in training, the expectation in evaluation) and recurrent dropout on
    restarted rows: a restarted step mixes its new state with the zeroed old one, as the reference."""
    cfg, w = _layer(name, kw)
    x, state = torch.randn(T, B, I, dtype=torch.float64), _initial_state(cfg)
    sizes = cfg.state_sizes[: cfg.zoneout_states]
    masks = [torch.rand(T, B, s, dtype=torch.float64).lt(0.3).double() if sampled else None for s in sizes]
    noise = Noise(
        recurrent_mask=torch.rand(B, cfg.output_size, dtype=torch.float64).lt(0.75).double() / 0.75,
        zoneout=0.3,
        zoneout_h=masks[0],
        zoneout_c=masks[1] if len(masks) > 1 else None,
    )
    for reverse, lengths in _restart_cases():
        reset = reset_in_walk_order(_restarts(), lengths, reverse)
        kwargs = dict(reverse=reverse, lengths=lengths, noise=noise, reset=reset)
        fast = layer_run_and_grad(cpu_backend, cfg, x, state, w, **kwargs)
        want = layer_run_and_grad(reference, cfg, x, state, w, **kwargs)
        assert_close_lists(fast[0] + fast[1], want[0] + want[1])


@pytest.mark.parametrize("name,kw", [("lstm", dict(variant="fgr", layer_norm=True, proj_size=2)), ("gru", dict())],
                         ids=["lstm-fgr-ln-proj", "gru"])  # fmt: skip
def test_gradcheck_with_restarts(loop, name, kw):
    """torch's gradcheck of a restarted layer (packed, reverse) in every input: x, the initial
    states (fgr's gates too) and the weights."""
    torch.manual_seed(0)
    module = gatedrnn.Recurrent(name, 2, 3, dtype=torch.float64, backend="reference", **kw)
    cfg, w = module.cell_config, module.layer_weights(0, 0)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    state = _initial_state(cfg, batch=3)
    lengths = torch.tensor([5, 3, 4])
    reset = reset_in_walk_order(_restarts(5, 3, seed=4), lengths, reverse=True)
    n = len(state)

    def f(x, *rest):
        states, weights = rest[:n], dict(zip(w, rest[n:]))
        out, final, _ = cpu_backend.run_layer(cfg, x, states, weights, reverse=True, lengths=lengths, reset=reset)
        return (out, *final)

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in (x, *state, *w.values()))
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(
    "name,kw",
    [("gru", dict()), ("lstm", dict(variant="fgr")), ("gru", dict(reset_after=False, layer_norm=True))],
    ids=["gru-plain", "lstm-fgr", "gru-ra0-ln"],
)
def test_second_derivatives_with_restarts_replay_the_reference_loop(loop, monkeypatch, name, kw):
    """A gradient penalty through a restarted layer: the create_graph backward replays it on the
    reference loop with the restarts (the plain GRU too, whose replay on torch's kernel cannot take
    them), and its gradients equal the reference backend's."""
    replays = []
    for kind in ("_torch_gru_replay", "_replay"):
        monkeypatch.setattr(
            cpu_backend,
            kind,
            lambda *a, _f=getattr(cpu_backend, kind), _k=kind, **k: replays.append(_k) or _f(*a, **k),  # noqa: B008
        )
    cfg, w = _layer(name, kw)
    x, state = torch.randn(T, B, I, dtype=torch.float64), _initial_state(cfg)
    reset = reset_in_walk_order(_restarts(), None, reverse=False)
    results = []
    for backend in (cpu_backend, reference):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, *state, *w.values())]
        states, weights = tuple(leaves[1 : 1 + len(state)]), dict(zip(w, leaves[1 + len(state) :]))
        out, final, _ = backend.run_layer(cfg, leaves[0], states, weights, reset=reset)
        first = torch.autograd.grad(random_projection([out, *final], seed=7), leaves, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), leaves)
        results.append([*first, *second])
    assert replays == ["_replay"], replays
    assert_close_lists(results[0], results[1])


def test_fgr_continues_across_calls_from_its_carried_gates(loop):
    """fgr's third state is the gates its next step reads: a sequence run in two calls, the second
    from the first's final (h, c, gates), equals it run in one, in both directions."""
    cfg, w = _layer("lstm", dict(variant="fgr", layer_norm=True))
    assert cfg.states == ("h", "c", "gates") and cfg.state_sizes[2] == 3 * H
    x, state = torch.randn(T, B, I, dtype=torch.float64), _initial_state(cfg)
    with torch.no_grad():
        whole, final, _ = cpu_backend.run_layer(cfg, x, state, w)
        head, middle, _ = cpu_backend.run_layer(cfg, x[:3], state, w)
        tail, split_final, _ = cpu_backend.run_layer(cfg, x[3:], middle, w)
        assert_close_lists([torch.cat([head, tail]), *split_final], [whole, *final])
        whole, final, _ = cpu_backend.run_layer(cfg, x, state, w, reverse=True)
        tail, middle, _ = cpu_backend.run_layer(cfg, x[3:], state, w, reverse=True)
        head, split_final, _ = cpu_backend.run_layer(cfg, x[:3], middle, w, reverse=True)
        assert_close_lists([torch.cat([head, tail]), *split_final], [whole, *final])
    assert not torch.allclose(final[2], state[2])


def _captured_op_args(monkeypatch, names, run) -> dict:
    """The arguments of the last call of each compiled op in ``names`` during ``run()``."""
    ops, captured = torch.ops.gatedrnn_cpu, {}
    for name in names:

        def recording(*args, _op=getattr(ops, name), _name=name):  # noqa: B008 -- binds the original now
            captured[_name] = args
            return _op(*args)

        monkeypatch.setattr(ops, name, recording)
    run()
    monkeypatch.undo()
    return captured


MUTATING_OPS = ("slstm_forward",)
"""Ops that write an argument in place (the sLSTM's pre-activations), which AOT autograd's
functionalisation cannot trace: opcheck runs its other checks on them."""


def _opcheck(captured: dict) -> None:
    for name, args in captured.items():
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        checks = ("test_schema", "test_autograd_registration", "test_faketensor")
        kwargs = dict(test_utils=checks) if name in MUTATING_OPS else {}
        torch.library.opcheck(getattr(torch.ops.gatedrnn_cpu, name).default, plain, **kwargs)


@pytest.mark.parametrize(
    "name,kw,ops",
    [
        ("lstm", dict(variant="fgr", layer_norm=True), "lstm"),
        ("gru", dict(reset_after=False), "gru"),
        ("slstm", dict(num_heads=1), "slstm"),
        ("minlstm", dict(mode="sequential"), "min_scan"),
    ],
    ids=["lstm-fgr-ln", "gru-ra0", "slstm", "minlstm"],
)
def test_the_compiled_ops_fakes_match_them_with_restarts(loop, monkeypatch, name, kw, ops):
    """torch.library.opcheck on the arguments of a restarted call (reverse, packed; fgr's initial
    gates given): the restart mask and the carried gates in the schemas and the fakes."""
    if loop != "compiled":
        pytest.skip("the compiled ops' own test")
    cfg, w = _layer(name, kw)
    x, state = torch.randn(T, B, I, dtype=torch.float64), _initial_state(cfg)
    lengths = torch.tensor(LENGTHS)
    reset = reset_in_walk_order(_restarts(), lengths, reverse=True)

    def run():
        layer_run_and_grad(cpu_backend, cfg, x, state, w, reverse=True, lengths=lengths, reset=reset)

    captured = _captured_op_args(monkeypatch, (f"{ops}_forward", f"{ops}_backward"), run)
    assert sorted(captured) == [f"{ops}_backward", f"{ops}_forward"]
    _opcheck(captured)
