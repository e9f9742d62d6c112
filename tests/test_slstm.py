"""sLSTM (gatedrnn.SLSTM): the xlstm package's vanilla sLSTM recurrence, the exp forget gate against
the reference loop's equations, gradients, and the stabiliser keeping states finite."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn.backends import choose, reference, reset_in_walk_order
from gatedrnn.backends import cpu as cpu_backend
from gatedrnn.backends.cpu import compiled
from gatedrnn.backends.cpu import slstm as slstm_kernel
from gatedrnn.cells import SLSTMFamily
from helpers import (
    assert_close_lists,
    assert_close_results,
    layer_run_and_grad,
    random_projection,
    rel_err,
    run_and_grad,
)

xlstm_cell = pytest.importorskip("xlstm.blocks.slstm.cell")


def xlstm_vanilla(hidden_size: int, num_heads: int) -> torch.nn.Module:
    """The xlstm package's sLSTM cell on its pure-PyTorch (vanilla) backend, float32, time-major."""
    config = xlstm_cell.sLSTMCellConfig(
        hidden_size=hidden_size,
        num_heads=num_heads,
        backend="vanilla",
        dtype="float32",
        input_shape="SBGNH",
        output_shape="SBH",
    )
    return xlstm_cell.sLSTMCell_vanilla(config)


def randomised(layer: gatedrnn.SLSTM) -> gatedrnn.SLSTM:
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.5, 0.5)
    return layer


@pytest.mark.parametrize("num_heads", [1, 4])
def test_matches_the_xlstm_vanilla_slstm(num_heads):
    torch.manual_seed(0)
    T, B, I, H = 37, 3, 6, 8
    layer = randomised(gatedrnn.SLSTM(I, H, num_heads=num_heads))
    ref = xlstm_vanilla(H, num_heads)
    with torch.no_grad():
        # the same layout: R (heads, 4D, D) and a gate-major bias (4H,)
        ref._recurrent_kernel_.copy_(layer.weight_hh_l0)
        ref._bias_.copy_(layer.bias_ih_l0 + layer.bias_hh_l0)
    x = torch.randn(T, B, I)
    with torch.no_grad():
        output, (h_n, c_n, n_n, m_n) = layer(x)
        ref_out, ref_state = ref(x @ layer.weight_ih_l0.T)
    torch.testing.assert_close(output, ref_out, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip((h_n, c_n, n_n, m_n), ref_state.unbind(0)):
        torch.testing.assert_close(mine[0], theirs, rtol=1e-5, atol=1e-5)


def slstm_loop(x, states, w_ih, w_hh, b, num_heads, exp_gate):
    """The equations, written out per step with a dense block-diagonal R (float64)."""
    h, c, n, m = states
    H = h.shape[-1]
    R = torch.zeros(4 * H, H, dtype=x.dtype)
    D = H // num_heads
    for k in range(num_heads):
        for g in range(4):
            R[g * H + k * D : g * H + (k + 1) * D, k * D : (k + 1) * D] = w_hh[k, g * D : (g + 1) * D]
    out = []
    for x_t in x:
        i, f, z, o = (x_t @ w_ih.T + h @ R.T + b).split(H, dim=-1)
        log_f = f if exp_gate else torch.nn.functional.logsigmoid(f)
        m_new = torch.where(n == 0, i, torch.maximum(log_f + m, i))
        ig, fg = torch.exp(i - m_new).clamp(max=1), torch.exp(log_f + m - m_new).clamp(max=1)
        c, n = fg * c + ig * torch.tanh(z), fg * n + ig
        h, m = torch.sigmoid(o) * c / n, m_new
        out.append(h)
    return torch.stack(out), (h, c, n, m)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_matches_its_equations_with_initial_states(forget_gate):
    torch.manual_seed(1)
    T, B, I, H, K = 20, 2, 3, 6, 3
    layer = randomised(gatedrnn.SLSTM(I, H, num_heads=K, forget_gate=forget_gate, dtype=torch.float64))
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = (
        torch.randn(1, B, H, dtype=torch.float64),
        torch.randn(1, B, H, dtype=torch.float64),
        torch.rand(1, B, H, dtype=torch.float64) + 1,
        torch.randn(1, B, H, dtype=torch.float64),
    )
    output, finals = layer(x, hx)
    want, want_finals = slstm_loop(
        x,
        tuple(s[0] for s in hx),
        layer.weight_ih_l0,
        layer.weight_hh_l0,
        layer.bias_ih_l0 + layer.bias_hh_l0,
        K,
        forget_gate == "exp",
    )
    torch.testing.assert_close(output, want)
    for mine, theirs in zip(finals, want_finals):
        torch.testing.assert_close(mine[0], theirs)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_gradients_pass_gradcheck(forget_gate):
    torch.manual_seed(2)
    layer = randomised(gatedrnn.SLSTM(2, 4, num_heads=2, forget_gate=forget_gate, dtype=torch.float64))
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)

    def run(x, c0, *params):
        out, (h, c, n, m) = torch.func.functional_call(
            layer, dict(zip(names, params)), (x, (torch.zeros_like(c0), c0, torch.zeros_like(c0), torch.zeros_like(c0)))
        )
        return out, c, n

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(run, (x, c0, *params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_large_pre_activations_over_long_sequences_stay_finite(dtype, forget_gate):
    T, B, H = 10_000, 1, 4
    cfg = SLSTMFamily(H, num_heads=2, forget_gate=forget_gate)
    g = torch.Generator().manual_seed(3)
    # pre-activations of +-80 in every gate, signs random over time and units
    x_proj = 80.0 * torch.where(torch.rand(T, B, 4 * H, generator=g) < 0.5, 1.0, -1.0).to(dtype)
    weights = {
        "weight_ih": torch.eye(4 * H, dtype=dtype),
        "weight_hh": torch.zeros(2, 8, 2, dtype=dtype),
        "bias_ih": torch.zeros(4 * H, dtype=dtype),
        "bias_hh": torch.zeros(4 * H, dtype=dtype),
    }
    states = tuple(torch.zeros(B, H, dtype=dtype) for _ in range(4))
    with torch.no_grad():
        out, finals, _ = reference.run_layer(cfg, x_proj, states, weights)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(s).all() for s in finals)
    assert finals[3].dtype == torch.float32
    assert (finals[2] >= 1).all()
    # and the gradients, through the first steps where an exp forget gate's e^(a - m) would overflow
    steps = x_proj[:200].clone().requires_grad_()
    leaves = {k: w.clone().requires_grad_() for k, w in weights.items()}
    out, finals, _ = reference.run_layer(cfg, steps, states, leaves)
    grads = torch.autograd.grad(random_projection([out, *finals[:3]], seed=5), [steps, *leaves.values()])
    assert all(torch.isfinite(g).all() for g in grads)


def test_inspection_records_the_gates_then_c_n_m():
    layer = gatedrnn.SLSTM(3, 4, num_heads=2)
    trace = gatedrnn.inspect_gates(layer, torch.randn(5, 2, 3))
    assert tuple(trace.names) == ("i", "f", "z", "o", "c", "n", "m")


def test_default_initialisation_follows_xlstm():
    torch.manual_seed(4)
    layer = gatedrnn.SLSTM(16, 8, num_heads=2)
    ref = xlstm_vanilla(8, 2)
    torch.testing.assert_close(layer.bias_ih_l0, ref._bias_.detach())
    assert (layer.weight_hh_l0 == 0).all() and (layer.bias_hh_l0 == 0).all()


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        gatedrnn.SLSTM(3, 6, num_heads=4)
    with pytest.raises(ValueError, match="forget_gate"):
        gatedrnn.SLSTM(3, 8, forget_gate="tanh")


# The cpu backend's fused kernel (gatedrnn.backends.cpu.slstm) against the reference loop. The shared
# catalogue runs the family's configurations there too; these add what it does not vary.


@pytest.fixture(params=["compiled", "python"])
def kernel_loop(request, monkeypatch):
    """Which of the kernel's loops runs (the compiled one where it builds, else skipped; or the Python
    one, switched to as users do), and a record of the loops that ran."""
    if request.param == "python":
        monkeypatch.setenv(compiled.ENV, "0")
    else:
        monkeypatch.delenv(compiled.ENV, raising=False)
        if compiled.unavailable_reason() is not None:
            pytest.skip(f"the compiled loops are unavailable: {compiled.unavailable_reason()}")
    ran: list[str] = []
    choose = slstm_kernel._loop

    def recording(dtype):
        loop = choose(dtype)
        ran.append("compiled" if loop is slstm_kernel.CompiledLoop else "python")
        return loop

    monkeypatch.setattr(slstm_kernel, "_loop", recording)
    return request.param, ran


def _pair(seed=0, dtype=torch.float64, I=3, H=6, **kw):
    """The same perturbed layer on the reference loop and on the cpu backend."""
    torch.manual_seed(seed)
    ref = randomised(gatedrnn.SLSTM(I, H, dtype=dtype, backend="reference", **kw))
    fast = gatedrnn.SLSTM(I, H, dtype=dtype, backend="cpu", **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _initial_states(layers, B, H, dtype=torch.float64):
    """Random h, c, m; n positive but 0 in batch row 0 (its first step takes m = i~) and row 2."""
    h, c, m = (torch.randn(layers, B, H, dtype=dtype) for _ in range(3))
    n = torch.rand(layers, B, H, dtype=dtype) + 0.5
    n[:, 0] = 0
    n[:, 2] = 0
    return h, c, n, m


def _run_both(ref, fast, x, lengths=None, hx=None):
    def make():
        leaf = x.clone().requires_grad_(True)
        return leaf, (leaf if lengths is None else pack_padded_sequence(leaf, lengths, enforce_sorted=False))

    return run_and_grad(fast, make, hx), run_and_grad(ref, make, hx)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("reverse_first", [False, True], ids=["packed", "packed-one-step-short"])
def test_the_kernel_matches_the_reference_stacked_bidirectional_packed(kernel_loop, forget_gate, reverse_first):
    """Two layers both ways over a packed batch, from initial states with n = 0 rows, in float64:
    outputs, final states and every gradient (initial states' included)."""
    loop, ran = kernel_loop
    ref, fast = _pair(num_heads=3, forget_gate=forget_gate, num_layers=2, bidirectional=True)
    lengths = [9, 8, 8, 9] if reverse_first else [9, 4, 1, 6]
    x = torch.randn(9, 4, 3, dtype=torch.float64)
    mine, theirs = _run_both(ref, fast, x, lengths, _initial_states(4, 4, 6))
    assert_close_results(mine, theirs)
    assert ran == [loop] * 8  # forward and backward of 2 layers x 2 directions


def test_the_kernel_matches_the_reference_with_many_heads_and_rows(kernel_loop):
    """Heads wider than a vector register and a batch split between two threads, padded input."""
    loop, ran = kernel_loop
    ref, fast = _pair(H=40, num_heads=2)
    x = torch.randn(5, 33, 3, dtype=torch.float64)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        mine, theirs = _run_both(ref, fast, x, hx=_initial_states(1, 33, 40))
    finally:
        torch.set_num_threads(previous)
    assert_close_results(mine, theirs)
    assert set(ran) == {loop}


def test_the_kernel_in_float32_is_as_accurate_as_the_reference(kernel_loop):
    """float32 on both, against a float64 run: the kernel's error is of the reference's order."""
    ref, fast = _pair(dtype=torch.float32, I=4, H=16, num_heads=4, num_layers=2)
    exact = gatedrnn.SLSTM(4, 16, num_heads=4, num_layers=2, dtype=torch.float64, backend="reference")
    exact.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(30, 3, 4)
    with torch.no_grad():
        want = exact(x.double())[0]
        errors = [rel_err(m(x)[0].double(), want) for m in (fast, ref)]
    assert errors[0] < max(10 * errors[1], 1e-6), errors


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_the_kernel_passes_gradcheck(kernel_loop, forget_gate):
    layer = randomised(gatedrnn.SLSTM(2, 4, num_heads=2, forget_gate=forget_gate, dtype=torch.float64))
    layer.backend = "cpu"
    names = [n for n, _ in layer.named_parameters()]
    # n > 0: n = 0 switches the first-step rule, which a finite difference of n would cross
    h, c, n, m = (torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(4))
    n.data.abs_().add_(0.5)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)

    def run(x, h, c, n, m, *params):
        out, finals = torch.func.functional_call(layer, dict(zip(names, params)), (x, (h, c, n, m)))
        return out, *finals

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(run, (x, h, c, n, m, *params))
    assert kernel_loop[1]


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_large_pre_activations_stay_finite_on_the_kernel(kernel_loop, forget_gate):
    """Pre-activations of +-80 (random signs) over 1000 steps, float32: finite outputs, states and
    gradients, n >= 1; over the first 100 steps the reference's output and gradients (on an exp-gate
    first step, where e^(a - m) would overflow, both pass the clamp's zero)."""
    T, B, H = 1000, 2, 4
    cfg = SLSTMFamily(H, num_heads=2, forget_gate=forget_gate)
    g = torch.Generator().manual_seed(3)
    x = 80.0 * torch.where(torch.rand(T, B, 4 * H, generator=g) < 0.5, 1.0, -1.0)
    weights = {
        "weight_ih": torch.eye(4 * H),
        "weight_hh": 0.1 * torch.randn(2, 8, 2, generator=g),
        "bias_ih": torch.zeros(4 * H),
        "bias_hh": torch.zeros(4 * H),
    }
    states = tuple(torch.zeros(B, H) for _ in range(4))

    def run(backend, steps):
        leaves = [x[:steps].clone().requires_grad_(), *(w.clone().requires_grad_() for w in weights.values())]
        out, finals, _ = backend.run_layer(cfg, leaves[0], states, dict(zip(weights, leaves[1:])))
        grads = torch.autograd.grad(random_projection([out, *finals[:3]], seed=4), leaves)
        return [out, *finals, *grads]

    long = run(cpu_backend, T)
    assert all(torch.isfinite(t).all() for t in long)
    assert (long[3] >= 1).all()
    mine, theirs = run(cpu_backend, 100), run(reference, 100)
    assert rel_err(mine[0], theirs[0]) < 1e-5
    for a, b in zip(mine[5:], theirs[5:], strict=True):
        assert torch.isfinite(b).all() and rel_err(a, b) < 1e-5
    assert kernel_loop[1]


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["padded", "packed"])
def test_second_derivatives_replay_the_reference_loop(kernel_loop, lengths):
    """A gradient penalty (create_graph=True) through the kernel: its gradients equal the reference's."""
    ref, fast = _pair(num_heads=2, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    results = []
    for module in (fast, ref):
        leaf = x.clone().requires_grad_(True)
        inp = leaf if lengths is None else pack_padded_sequence(leaf, lengths, enforce_sorted=False)
        out, finals = module(inp)
        out = out if lengths is None else out.data
        (g,) = torch.autograd.grad(random_projection([out, *finals], seed=2), leaf, create_graph=True)
        penalty = g.square().sum()
        results.append([g, *torch.autograd.grad(penalty, [leaf, *module.parameters()])])
    for a, b in zip(*results):
        assert rel_err(a, b) < 1e-10


def _restarts(steps, batch, lengths, reverse):
    """A restart mask in walk order: a quarter of the steps, row 1's first and two in a row in
    the last row, and the last step of row 0 (forward; after the shift, the next to last in
    reverse)."""
    g = torch.Generator().manual_seed(5)
    raw = torch.rand(steps, batch, generator=g) < 0.25
    raw[0, 1] = raw[3, batch - 1] = raw[4, batch - 1] = raw[steps - 1, 0] = True
    return reset_in_walk_order(raw, lengths, reverse)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_the_kernel_restarts_like_the_reference(kernel_loop, forget_gate):
    """Restarts at random steps, in both directions over padded and packed batches, from initial
    states with n = 0 in some rows: outputs, final states and every gradient equal the reference
    loop's in float64. A restarted step takes the first-step rule from its zeroed n: where row 0
    restarts at the last step, m_n is that step's input-gate pre-activation (the recurrent part
    of h = 0 adds nothing), which a rule keyed on t = 0 would miss."""
    loop, ran = kernel_loop
    ref, _ = _pair(num_heads=3, forget_gate=forget_gate)
    cfg, w = ref.cell_config, ref.layer_weights(0, 0)
    T, B, H = 9, 4, 6
    x = torch.randn(T, B, 3, dtype=torch.float64)
    state = tuple(s[0] for s in _initial_states(1, B, H))
    for reverse in (False, True):
        for lengths in (None, torch.tensor([9, 4, 1, 6])):
            kwargs = dict(reverse=reverse, lengths=lengths, reset=_restarts(T, B, lengths, reverse))
            mine = layer_run_and_grad(cpu_backend, cfg, x, state, w, **kwargs)
            theirs = layer_run_and_grad(reference, cfg, x, state, w, **kwargs)
            assert_close_lists(mine[0] + mine[1], theirs[0] + theirs[1])
            if not reverse:
                pre_i = (x[T - 1, 0] @ w["weight_ih"].T + w["bias_ih"] + w["bias_hh"])[:H]
                assert rel_err(mine[0][4][0], pre_i) < 1e-12
    assert ran == [loop] * 8  # forward and backward of four calls


def test_the_kernel_passes_gradcheck_with_restarts(kernel_loop):
    layer = randomised(gatedrnn.SLSTM(2, 4, num_heads=2, dtype=torch.float64))
    cfg, w = layer.cell_config, layer.layer_weights(0, 0)
    # n > 0: n = 0 switches the first-step rule, which a finite difference of n would cross
    h, c, n, m = (torch.randn(3, 4, dtype=torch.float64) for _ in range(4))
    n.abs_().add_(0.5)
    lengths = torch.tensor([5, 3, 4])
    reset = _restarts(5, 3, lengths, reverse=False)

    def run(x, h, c, n, m, *params):
        out, finals, _ = cpu_backend.run_layer(cfg, x, (h, c, n, m), dict(zip(w, params)), lengths=lengths, reset=reset)
        return out, *finals

    inputs = (torch.randn(5, 3, 2, dtype=torch.float64), h, c, n, m, *w.values())
    assert torch.autograd.gradcheck(run, tuple(t.detach().clone().requires_grad_() for t in inputs))
    assert kernel_loop[1]


def test_a_retained_graph_gives_the_same_gradients_twice(kernel_loop):
    _, fast = _pair(num_heads=2)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = fast(x)
    first = torch.autograd.grad(out.square().sum(), [x, *fast.parameters()], retain_graph=True)
    second = torch.autograd.grad(out.square().sum(), [x, *fast.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_zoneout_and_recurrent_dropout_run_on_the_reference_loop():
    """The kernel delegates a call with regularisation noise to the reference loop: same numbers."""
    ref, fast = _pair(num_heads=2, zoneout=0.3, recurrent_dropout=0.25, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    results = []
    for module in (fast.train(), ref.train()):
        torch.manual_seed(5)
        results.append(run_and_grad(module, lambda: (lambda leaf: (leaf, leaf))(x.clone().requires_grad_())))
    assert_close_results(*results)


def test_the_kernel_refuses_other_dtypes_and_auto_runs_the_reference():
    layer = gatedrnn.SLSTM(3, 4, num_heads=2, dtype=torch.bfloat16)
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    assert "float32 or float64" in cpu_backend.supports(layer.cell_config, x)
    assert choose("auto", layer.cell_config, x, False) == "reference"
    assert choose("auto", layer.cell_config, x.float(), False) == "cpu"
