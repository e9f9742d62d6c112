"""Restarting sequences inside a call (``reset=``), and streaming a sequence in chunks.

``reset[t, b]`` restarts sequence b at step t from zero states: a call with resets computes, in every
layer and direction, what separate calls on the pieces between the marks compute. Checked on the
reference loop for every configuration of the shared catalogue; every layer backend against it
(outputs, final states and gradients); chunks carried across calls against one call; where gradients
stop; the layouts and errors. Everything runs in float64 at small sizes.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import catalogue
import gatedrnn
from gatedrnn.backends import choose, load_layer_backend
from gatedrnn.nn import pack_states
from helpers import random_projection, rel_err

DT = torch.float64
I, H = 3, 5  # H = 5: the catalogue's sLSTM configurations have 5 heads
LENGTHS = [8, 6, 4]
T, B = max(LENGTHS), len(LENGTHS)
MARKS = {0: [3, 6], 1: [0, 5], 2: [2, 6]}
"""The steps where each sequence restarts: sequence 1 at step 0 too (its forward hx is dropped),
sequence 2 at step 6, past its packed length 4 (ignored there)."""

SHAPES = {"1": {}, "2-bi": dict(num_layers=2, bidirectional=True)}
FUSED = [name for name in ("cpu", "triton") if load_layer_backend(name) is not None]
TRITON_CONFIGS = {
    "lstm-variant=fgr-layer_norm=False": "1",
    "gru-reset_after=False-layer_norm=False": "1",
    "slstm-num_heads=5-forget_gate=exp": "1",
    "mingru-activation=g-mode=parallel": "1",
    "rnn-nonlinearity=tanh": "2-bi",
}
"""The few configurations the Triton cases run, each in one layer shape (a call takes seconds in
Triton's interpreter)."""


def reset_mask(marks: dict[int, list[int]] = MARKS, steps: int = T) -> torch.Tensor:
    """(steps, B) bool, True at each sequence's marks."""
    mask = torch.zeros(steps, len(marks), dtype=torch.bool)
    for b, ts in marks.items():
        mask[[t for t in ts if t < steps], b] = True
    return mask


def build(family: str, options: dict, backend: str = "reference", **shape) -> gatedrnn.Recurrent:
    """A float64 layer in eval mode with its parameters moved off their initialisation (the sLSTM's
    recurrent weights start at zero)."""
    torch.manual_seed(0)
    module = gatedrnn.Recurrent(family, I, H, dtype=DT, backend=backend, **shape, **options)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.eval()


def random_states(module: gatedrnn.Recurrent, batch: int = B) -> tuple[torch.Tensor, ...]:
    """Initial states in [0, 1) (the sLSTM's normaliser positive), each (L*D, batch, size)."""
    LD = module.num_layers * module.num_directions
    return tuple(torch.rand(LD, batch, size, dtype=DT) for size in module.cell_config.state_sizes)


def as_tuple(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def run(module, x, hx, reset=None, lengths=None):
    """``module(x, hx, reset=reset)``, x (T, B, I) packed with ``lengths`` when given; returns the
    padded output (T, B, F) and the final states as a tuple."""
    inputs = x if lengths is None else pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    out, final = module(inputs, pack_states(hx), reset=reset)
    if lengths is not None:
        out = pad_packed_sequence(out, total_length=x.shape[0])[0]
    return out, as_tuple(final)


def reverse_rows(module: gatedrnn.Recurrent) -> torch.Tensor:
    """(L*D, 1) bool: which rows of a state belong to a reverse direction."""
    rows = torch.arange(module.num_layers * module.num_directions)
    return (rows % module.num_directions == 1)[:, None]


def separate_calls(module, x, hx, marks):
    """One sequence x (n, I) with states hx (each (L*D, size)) run as one unbatched call per piece
    between ``marks``: forward directions start the first piece from hx (from zeros where marked at
    step 0) and end after the last; reverse directions start the last piece from hx and end after
    the first. Returns (output (n, D*R), final states)."""
    n = x.shape[0]
    bounds = [0, *sorted(t for t in marks if 0 < t < n), n]
    spans = list(zip(bounds[:-1], bounds[1:]))
    reverse = reverse_rows(module)
    outputs, finals = [], []
    for k, (start, end) in enumerate(spans):
        keep = reverse if k == len(spans) - 1 else torch.zeros_like(reverse)
        if k == 0 and 0 not in marks:
            keep = keep | ~reverse
        out, final = module(x[start:end], pack_states(tuple(torch.where(keep, s, torch.zeros_like(s)) for s in hx)))
        outputs.append(out)
        finals.append(as_tuple(final))
    return torch.cat(outputs), tuple(torch.where(reverse, a, z) for a, z in zip(finals[0], finals[-1]))


# ----- the defining property, on the reference loop ------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("family,options", catalogue.configurations("reference", H))
def test_a_call_with_resets_computes_each_piece_as_a_call_of_its_own(family, options, shape, packed):
    module = build(family, options, **SHAPES[shape])
    x = torch.randn(T, B, I, dtype=DT)
    hx = random_states(module)
    lengths = LENGTHS if packed else [T] * B
    out, final = run(module, x, hx, reset_mask(), lengths if packed else None)
    for b, n in enumerate(lengths):
        alone_out, alone_final = separate_calls(module, x[:n, b], tuple(s[:, b] for s in hx), MARKS[b])
        assert rel_err(out[:n, b], alone_out) < 1e-12, f"sequence {b}: output"
        assert (out[n:, b] == 0).all()
        for k, (got, expected) in enumerate(zip(final, alone_final)):
            assert rel_err(got[:, b], expected) < 1e-12, f"sequence {b}: final state {k}"
    unmarked = run(module, x, hx, None, lengths if packed else None)
    assert rel_err(out, unmarked[0]) > 1e-3, "the marks must change the result"


def test_reset_takes_the_input_layout_batch_first_unbatched_and_packed_in_any_order():
    module = build("lstm", dict(variant="peephole"), **SHAPES["2-bi"])
    x, hx, reset = torch.randn(T, B, I, dtype=DT), random_states(module), reset_mask()
    out, final = run(module, x, hx, reset)
    module.batch_first = True
    first_out, first_final = module(x.transpose(0, 1), hx, reset=reset.t())
    assert rel_err(first_out.transpose(0, 1), out) < 1e-14
    assert all(rel_err(a, e) < 1e-14 for a, e in zip(first_final, final))
    packed = pack_padded_sequence(x.transpose(0, 1), torch.tensor([T] * B), batch_first=True, enforce_sorted=False)
    packed_out, _ = module(packed, hx, reset=reset.t())
    assert rel_err(pad_packed_sequence(packed_out, batch_first=True)[0].transpose(0, 1), out) < 1e-14
    module.batch_first = False
    b = 1
    one_out, one_final = module(x[:, b], tuple(s[:, b] for s in hx), reset=reset[:, b])
    assert rel_err(one_out, out[:, b]) < 1e-14
    assert all(rel_err(a, e[:, b]) < 1e-14 for a, e in zip(one_final, final))


@pytest.mark.parametrize("size", [(0, B), (T, 0)], ids=["T=0", "B=0"])
def test_an_empty_call_with_reset_returns_the_initial_states(size):
    module = build("gru", {})
    x = torch.randn(*size, I, dtype=DT)
    hx = random_states(module, size[1])
    out, final = run(module, x, hx, torch.ones(size, dtype=torch.bool))
    assert out.shape == (*size, H)
    assert torch.equal(final[0], hx[0])


def test_inspect_gates_with_reset_returns_what_forward_returns():
    module = build("lstm", dict(variant="fgr", layer_norm=True), **SHAPES["2-bi"])
    x, hx, reset = torch.randn(T, B, I, dtype=DT), random_states(module), reset_mask()
    trace = gatedrnn.inspect_gates(module, x, hx, reset=reset)
    out, final = module(x, hx, reset=reset)
    assert rel_err(trace.output, out) < 1e-14
    assert all(rel_err(a, e) < 1e-14 for a, e in zip(trace.final_state, final))
    gates = trace.gates[(1, 0)]
    b, t = 0, MARKS[0][0]  # the step after a reset reads the zero state: c_t = i_t g_t
    assert rel_err(gates["c"][t, b], (gates["i"] * gates["g"])[t, b]) < 1e-14
    assert rel_err(gates["c"][t - 1, b], (gates["i"] * gates["g"])[t - 1, b]) > 1e-3


# ----- every layer backend against the reference ---------------------------------------------------


def outputs_and_gradients(module, x, hx, reset, lengths=None):
    """The results of :func:`run` and the gradients of a fixed random projection of them with
    respect to the input, hx and every parameter."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    hx = tuple(s.detach().clone().requires_grad_(True) for s in hx)
    out, final = run(module, x, hx, reset, lengths)
    results = [out, *final]
    random_projection(results, seed=7).backward()
    grads = {"input": x.grad, **{f"hx{k}": s.grad for k, s in enumerate(hx)}}
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return [r.detach() for r in results], grads


def assert_same(got, expected, tol: float) -> None:
    (outs, grads), (outs_ref, grads_ref) = got, expected
    for k, (a, e) in enumerate(zip(outs, outs_ref)):
        assert rel_err(a, e) < tol, f"result {k}: rel err {rel_err(a, e)}"
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        if g is None or grads_ref[name] is None:
            assert g is None and grads_ref[name] is None, f"gradient {name}: one side missing"
        else:
            assert rel_err(g, grads_ref[name]) < tol, f"gradient {name}: rel err {rel_err(g, grads_ref[name])}"


def require(backend: str, module: gatedrnn.Recurrent, x: torch.Tensor) -> None:
    """Skip unless ``backend`` runs the module's configuration on ``x``."""
    reason = load_layer_backend(backend).supports(module.cell_config, x)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def _backend_cases() -> list:
    """(backend, family, options, shape) for each fused backend: the cpu backend every catalogue
    configuration in both layer shapes, the Triton backend (slow: its interpreter) a few."""
    cases = []
    for backend in FUSED:
        for config in catalogue.configurations(backend, H):
            if backend == "triton" and config.id not in TRITON_CONFIGS:
                continue
            for shape in [TRITON_CONFIGS[config.id]] if backend == "triton" else SHAPES:
                marks = [pytest.mark.slow] if backend == "triton" else []
                cases.append(
                    pytest.param(backend, *config.values, shape, id=f"{backend}-{config.id}-{shape}", marks=marks)
                )
    return cases


@pytest.mark.parametrize("backend,family,options,shape", _backend_cases())
def test_each_layer_backend_restarts_as_the_reference_loop_does(backend, family, options, shape):
    """Padded input in one layer, packed sequences of unequal lengths in two bidirectional ones."""
    module = build(family, options, **SHAPES[shape])
    x, hx, reset = torch.randn(T, B, I, dtype=DT), random_states(module), reset_mask()
    require(backend, module, x)
    lengths = LENGTHS if shape == "2-bi" else None
    expected = outputs_and_gradients(module, x, hx, reset, lengths)
    module.backend = backend
    assert_same(outputs_and_gradients(module, x, hx, reset, lengths), expected, 1e-10)


STOP_CONFIGS = [
    pytest.param("rnn", dict(nonlinearity="relu"), id="rnn-relu"),
    pytest.param("lstm", dict(variant="fgr", layer_norm=True), id="lstm-fgr-ln"),
    pytest.param("gru", dict(reset_after=False), id="gru-reset-before"),
    pytest.param("slstm", dict(num_heads=5, forget_gate="exp"), id="slstm-exp"),
    pytest.param("minlstm", dict(mode="parallel"), id="minlstm-parallel"),
]


def _stop_cases() -> list:
    """Every backend with :data:`STOP_CONFIGS` in two bidirectional layers; the Triton backend
    (slow: its interpreter) with the first in one."""
    cases = []
    for backend in ["reference", *FUSED]:
        triton = backend == "triton"
        for config in STOP_CONFIGS[:1] if triton else STOP_CONFIGS:
            marks = [pytest.mark.slow] if triton else []
            layers = 1 if triton else 2
            cases.append(pytest.param(backend, *config.values, layers, id=f"{backend}-{config.id}", marks=marks))
    return cases


@pytest.mark.parametrize("backend,family,options,num_layers", _stop_cases())
def test_no_gradient_crosses_a_reset(backend, family, options, num_layers):
    """Bidirectional layers, sequence 1 restarted at step 4: the outputs from step 4 on get exactly
    no gradient from the inputs before it nor from the forward directions' hx, and the outputs
    before it none from the inputs from step 4 on; without the reset they do."""
    module = build(family, options, backend=backend, num_layers=num_layers, bidirectional=True)
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    hx = tuple(s.requires_grad_(True) for s in random_states(module))
    require(backend, module, x)
    b, t = 1, 4
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[t, b] = True
    forward_rows = ~reverse_rows(module)[:, 0]
    for marked in (reset, None):
        out, _ = run(module, x, hx, marked)
        after = torch.autograd.grad(random_projection([out[t:, b]], seed=1), [x, *hx], retain_graph=True)
        (before,) = torch.autograd.grad(random_projection([out[:t, b]], seed=2), [x])
        crossing = [after[0][:t, b], before[t:, b], *(g[forward_rows, b] for g in after[1:])]
        if marked is None:
            assert all(g.abs().sum() > 0 for g in crossing), "without the reset every gradient crosses step 4"
        else:
            assert all((g == 0).all() for g in crossing)
            assert after[0][t:, b].abs().sum() > 0 and before[:t, b].abs().sum() > 0
            assert all((g[:, [0, 2]] == 0).all() for g in (after[0], before)), "other sequences are not involved"


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_a_reset_zeroes_an_infinite_or_nan_state(backend):
    """A reset selects zeros: a carried inf or NaN does not survive it, nor reach the gradients."""
    module = build("lstm", dict(variant="peephole"), backend=backend)
    x = torch.randn(T, B, I, dtype=DT)
    require(backend, module, x)
    hx = random_states(module)
    poisoned = tuple(s.clone() for s in hx)
    poisoned[0][:, 1], poisoned[1][:, 1] = float("inf"), float("nan")
    poisoned = tuple(s.requires_grad_(True) for s in poisoned)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0, 1] = True
    out, final = run(module, x, poisoned, reset)
    clean = tuple(s.clone() for s in hx)
    clean[0][:, 1], clean[1][:, 1] = 0.0, 0.0
    expected, expected_final = run(module, x, clean)
    assert torch.isfinite(out).all() and rel_err(out, expected) < 1e-12
    assert all(rel_err(a, e) < 1e-12 for a, e in zip(final, expected_final))
    grads = torch.autograd.grad(random_projection([out, *final], seed=3), poisoned)
    assert all(torch.isfinite(g).all() and (g[:, 1] == 0).all() for g in grads)


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_slstm_exponential_forget_gate_at_plus_minus_80_stays_finite_across_resets(backend):
    """Input and forget pre-activations of +-80 (the stabiliser m climbs by 80 a step where f~ = 80):
    after a reset the normaliser is zero again and m restarts at i~ (-80 there), on every backend."""
    torch.manual_seed(0)
    module = gatedrnn.SLSTM(I, H, num_heads=1, forget_gate="exp", dtype=DT, backend=backend)
    x = torch.randn(T, B, I, dtype=DT)
    require(backend, module, x)
    with torch.no_grad():
        module.weight_ih_l0.mul_(0.1)
        module.weight_hh_l0.normal_(0, 0.3)
        signs = torch.tensor([1.0, -1.0], dtype=DT).repeat(H)[:H]
        module.bias_ih_l0[: 2 * H] = 80 * torch.cat([signs, -signs])  # i~ and f~ rows
    hx, reset = random_states(module), reset_mask({0: [5], 1: [0], 2: []})
    expected = outputs_and_gradients(module, x, hx, reset)
    outs, grads = expected
    assert all(torch.isfinite(r).all() for r in outs)
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    climbing = signs < 0  # the units with f~ = 80
    m = outs[-1][0]
    assert (m[2, climbing] > 400).all(), "m climbs by 80 a step: 8 steps without a reset"
    assert (m[0, climbing] < 200).all(), "m restarts at the reset at step 5"
    if backend != "reference":
        module.backend = "reference"
        assert_same(expected, outputs_and_gradients(module, x, hx, reset), 1e-10)


# ----- chunked streaming ---------------------------------------------------------------------------

STREAMED = catalogue.configurations("reference", H) + [
    pytest.param("lstm", dict(variant="fgr", zoneout=0.3), id="lstm-fgr-zoneout-eval")
]


@pytest.mark.parametrize("with_resets", [False, True], ids=["no-resets", "resets"])
@pytest.mark.parametrize("family,options", STREAMED)
def test_a_sequence_streamed_in_chunks_equals_one_call(family, options, with_resets):
    """Two layers in eval mode; the input cut into chunks of random sizes, the final states of each
    chunk the next one's hx, the resets cut with the input."""
    steps = 9
    module = build(family, options, num_layers=2)
    x, hx = torch.randn(steps, B, I, dtype=DT), random_states(module)
    reset = reset_mask({0: [3, 4, 8], 1: [0, 5], 2: [7]}, steps) if with_resets else None
    with torch.no_grad():
        whole, whole_final = run(module, x, hx, reset)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            start, state, outputs = 0, hx, []
            while start < steps:
                end = min(steps, start + int(torch.randint(1, steps + 1, (1,), generator=generator)))
                out, state = run(module, x[start:end], state, None if reset is None else reset[start:end])
                outputs.append(out)
                start = end
            torch.testing.assert_close(torch.cat(outputs), whole, rtol=0, atol=1e-12)
            for got, expected in zip(state, whole_final):
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# ----- errors and the choice of backend ------------------------------------------------------------


@pytest.mark.parametrize(
    "reset,error,message",
    [
        (torch.zeros(T, B), TypeError, r"expected reset to be a bool tensor .* got dtype torch.float32"),
        (torch.zeros(T, B, dtype=torch.int64), TypeError, "got dtype torch.int64"),
        ([[False] * B] * T, TypeError, "expected reset to be a bool Tensor or None, got list"),
        (torch.zeros(B, T, dtype=torch.bool), ValueError, r"expected reset of shape \(T, B\) = \(8, 3\), got \(3, 8\)"),
        (torch.zeros(T, dtype=torch.bool), ValueError, r"expected reset of shape \(T, B\) = \(8, 3\), got \(8,\)"),
        (torch.zeros(T, B, dtype=torch.bool, device="meta"), ValueError, "reset is on meta but the input is on cpu"),
    ],
    ids=["float", "int", "list", "transposed", "one-dim", "device"],
)
def test_a_malformed_reset_is_refused_saying_what_was_expected(reset, error, message):
    module = build("gru", {})
    with pytest.raises(error, match=message):
        module(torch.randn(T, B, I, dtype=DT), reset=reset)


def test_reset_shape_follows_batch_first_unbatched_and_packed_input():
    module = build("rnn", {})
    reset = torch.zeros(T, B, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"expected reset of shape \(T,\) for unbatched input = \(8,\), got \(8, 3\)"):
        module(torch.randn(T, I, dtype=DT), reset=reset)
    packed = pack_padded_sequence(torch.randn(T, B, I, dtype=DT), torch.tensor(LENGTHS), enforce_sorted=False)
    with pytest.raises(ValueError, match=r"\(T, B\) as pad_packed_sequence pads the PackedSequence = \(8, 3\)"):
        module(packed, reset=reset[:-1])
    module.batch_first = True
    with pytest.raises(ValueError, match=r"expected reset of shape \(B, T\) with batch_first = \(3, 8\), got \(8, 3\)"):
        module(torch.randn(B, T, I, dtype=DT), reset=reset)


def test_backend_torch_refuses_a_reset_and_names_the_backends_that_restart():
    module = gatedrnn.LSTM(I, H, backend="torch")
    x = torch.randn(T, B, I)
    expected = (
        "backend='torch' runs torch's kernels, which cannot restart sequences inside a call, got a reset mask "
        "(reset=...); the layer backends 'reference', 'cpu', 'triton' can (backend='auto' picks one)"
    )
    with pytest.raises(ValueError) as refused:
        module(x, reset=reset_mask())
    assert str(refused.value) == expected
    with pytest.raises(ValueError, match="cannot restart sequences"):
        choose("torch", module.cell_config, x, regularised=False, reset=True)


def test_auto_runs_no_torch_kernel_for_a_call_with_reset(monkeypatch):
    module = gatedrnn.LSTM(I, H)
    x = torch.randn(T, B, I)
    assert choose("auto", module.cell_config, x, regularised=False) == "torch"
    assert choose("auto", module.cell_config, x, regularised=False, reset=True) in ("cpu", "reference")
    calls = []
    original = gatedrnn.Recurrent._forward_torch
    monkeypatch.setattr(gatedrnn.Recurrent, "_forward_torch", lambda *a: calls.append(1) or original(*a))
    module(x)
    assert calls == [1], "without a reset, auto runs torch's kernel here"
    out, _ = module(x, reset=reset_mask())
    assert calls == [1]
    module.backend = "reference"
    assert rel_err(out, module(x, reset=reset_mask())[0]) < 1e-5


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_restarts_at_step_0_only_keep_auto_on_torchs_kernel(monkeypatch, name, shape):
    """A stream restarting only at the start of a call (reset[0]) restarts the initial states of every
    layer's forward direction, so ``auto`` folds it into them and keeps the backend it takes without
    a reset, torch's kernel included: outputs, final states and the initial states' gradients equal
    the reference loop with the same reset."""
    torch.manual_seed(0)
    module = getattr(gatedrnn, name)(I, H, dtype=DT, **SHAPES[shape])
    D = 2 if module.bidirectional else 1
    x = torch.randn(T, B, I, dtype=DT)
    states = tuple(torch.randn(module.num_layers * D, B, s, dtype=DT) for s in module.cell_config.state_sizes)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0, 1] = True
    calls = []
    original = gatedrnn.Recurrent._forward_torch
    monkeypatch.setattr(gatedrnn.Recurrent, "_forward_torch", lambda *a: calls.append(1) or original(*a))

    def run(backend):
        module.backend = backend
        hx = tuple(s.clone().requires_grad_() for s in states)
        out, finals = module(x, pack_states(hx), reset=reset)
        finals = finals if isinstance(finals, tuple) else (finals,)
        grads = torch.autograd.grad(random_projection([out, *finals], seed=1), hx)
        return [out, *finals, *grads]

    fast, spec = run("auto"), run("reference")
    # the backend auto takes without a reset (torch's kernel, or the cpu one for the GRU in training)
    assert calls == ([1] if choose("auto", module.cell_config, x, regularised=False) == "torch" else [])
    for a, b in zip(fast, spec, strict=True):
        assert rel_err(a, b) < 1e-12
    first_grad = fast[len(fast) - len(states)]
    assert (first_grad[0::D, 1] == 0).all() and (first_grad[:, 0] != 0).all()
    if D == 2:
        assert (first_grad[1::D, 1] != 0).all()  # the reverse direction meets step 0 last
