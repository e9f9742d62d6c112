"""minGRU and minLSTM (gatedrnn.MinGRU, gatedrnn.MinLSTM): mingru-pytorch's modules, the scan against
the step loop, gradients, padded and packed sequences."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.backends import cpu as cpu_backend
from gatedrnn.backends import reference, reset_in_walk_order
from gatedrnn.cells.mingru import linear_scan
from helpers import assert_close_lists, layer_run_and_grad

mingru_pytorch = pytest.importorskip("minGRU_pytorch")

F64 = torch.float64
LAYERS = {"mingru": gatedrnn.MinGRU, "minlstm": gatedrnn.MinLSTM}


def pair(name, *args, **kwargs):
    """The same layer stepped and scanned (equal weights; ``backend`` among ``kwargs``)."""
    torch.manual_seed(0)
    sequential = LAYERS[name](*args, mode="sequential", dtype=F64, **kwargs)
    parallel = LAYERS[name](*args, mode="parallel", dtype=F64, **kwargs)
    parallel.load_state_dict(sequential.state_dict())
    return sequential, parallel


def test_mingru_matches_mingru_pytorch_with_and_without_a_positive_initial_state():
    torch.manual_seed(1)
    B, T, H = 3, 50, 6
    theirs = mingru_pytorch.minGRU(H).double()
    ours = gatedrnn.MinGRU(H, H, bias=False, batch_first=True, dtype=F64)
    hidden, gate = theirs.to_hidden_and_gate.weight.detach().chunk(2)
    with torch.no_grad():
        ours.weight_ih_l0.copy_(torch.cat([gate, hidden]))  # theirs: h, z; ours: z, h
    x = torch.randn(B, T, H, dtype=F64)
    h0 = torch.rand(B, 1, H, dtype=F64) + 0.1
    for prev in (None, h0):
        want, want_h = theirs(x, prev, return_next_prev_hidden=True)
        out, h_n = ours(x, None if prev is None else prev.transpose(0, 1))
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(h_n, want_h.transpose(0, 1))


def test_minlstm_matches_mingru_pytorch_from_a_zero_state():
    torch.manual_seed(2)
    B, T, H = 3, 50, 6
    theirs = pytest.importorskip("minGRU_pytorch.minLSTM").minLSTM(H).double()
    ours = gatedrnn.MinLSTM(H, H, bias=False, batch_first=True, dtype=F64)
    hidden, f, i = theirs.to_hidden_and_f_i_gate.weight.detach().chunk(3)
    with torch.no_grad():
        ours.weight_ih_l0.copy_(torch.cat([f, i, hidden]))  # theirs: h, f, i; ours: f, i, h
    x = torch.randn(B, T, H, dtype=F64)
    want, want_h = theirs(x, return_next_prev_hidden=True)
    out, h_n = ours(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h.transpose(0, 1))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("activation", ["g", "identity"])
@pytest.mark.parametrize("T", [1, 63, 4096])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_the_scan_equals_the_step_loop(name, activation, T, backend):
    sequential, parallel = pair(name, 3, 5, activation=activation, backend=backend)
    x = 3 * torch.randn(T, 2, 3, dtype=F64)
    h0 = 4 * torch.randn(1, 2, 5, dtype=F64)  # any sign
    out_s, h_s = sequential(x, h0)
    out_p, h_p = parallel(x, h0)
    torch.testing.assert_close(out_p, out_s, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_p, h_s, rtol=0, atol=1e-10)


def test_linear_scan_keeps_signs_and_tiny_decays():
    torch.manual_seed(3)
    T = 200
    log_a = torch.cat([torch.full((T // 2, 1, 2), -50.0, dtype=F64), -torch.rand(T - T // 2, 1, 2, dtype=F64) * 1e-3])
    b = torch.randn(T, 1, 2, dtype=F64)
    h0 = torch.tensor([[-3.0, 2.0]], dtype=F64)
    h, want = h0, []
    for t in range(T):
        h = log_a[t].exp() * h + b[t]
        want.append(h)
    torch.testing.assert_close(linear_scan(log_a, b, h0), torch.stack(want), rtol=0, atol=1e-10)


@pytest.mark.parametrize("T", [1, 16, 17, 300], ids=["T1", "T16-one-chunk", "T17", "T300-two-levels"])
@pytest.mark.parametrize("where", ["random", "every-step", "first-step"])
def test_linear_scan_restarts_exactly(T, where):
    """``restart`` zeroes the state before its step (a = 0 exactly, no NaN), within a chunk, at a
    chunk's first step and across the recursion's levels, against the step loop; a (T, B, 1) mask
    and a (T, B, H) one give the same."""
    g = torch.Generator().manual_seed(T)
    log_a = -2 * torch.rand(T, 3, 4, generator=g, dtype=F64)
    b, h0 = torch.randn(T, 3, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    restart = {
        "random": torch.rand(T, 3, 1, generator=g) < 0.2,
        "every-step": torch.ones(T, 3, 1, dtype=torch.bool),
        "first-step": (torch.arange(T) == 0)[:, None, None].expand(T, 3, 1),
    }[where]
    h, want = h0, []
    for t in range(T):
        h = log_a[t].exp() * torch.where(restart[t], 0.0, h) + b[t]
        want.append(h)
    got = linear_scan(log_a, b, h0, restart=restart)
    torch.testing.assert_close(got, torch.stack(want), rtol=0, atol=1e-12)
    torch.testing.assert_close(linear_scan(log_a, b, h0, restart=restart.expand(T, 3, 4)), got, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_gradients_pass_gradcheck(name, mode):
    torch.manual_seed(4)
    layer = LAYERS[name](2, 3, mode=mode, dtype=F64)
    names = [n for n, _ in layer.named_parameters()]
    T = 40 if mode == "parallel" else 6  # the scan: more than one chunk
    x = torch.randn(T, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=F64, requires_grad=True)

    def run(x, h0, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x, h0))

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(run, (x, h0, *params))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_packed_sequences_equal_each_sequence_alone(name, mode):
    torch.manual_seed(5)
    layer = LAYERS[name](3, 4, num_layers=2, bidirectional=True, mode=mode, dtype=F64)
    lengths = torch.tensor([70, 3, 41])
    x = torch.randn(70, 3, 3, dtype=F64)
    h0 = torch.randn(4, 3, 4, dtype=F64)
    packed_out, h_n = layer(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
    out, _ = pad_packed_sequence(packed_out)
    for b, n in enumerate(lengths.tolist()):
        alone, h_alone = layer(x[:n, b : b + 1], h0[:, b : b + 1])
        torch.testing.assert_close(out[:n, b : b + 1], alone)
        torch.testing.assert_close(out[n:, b], torch.zeros_like(out[n:, b]))
        torch.testing.assert_close(h_n[:, b : b + 1], h_alone)


@pytest.mark.parametrize("name, names", [("mingru", ("z",)), ("minlstm", ("f", "i"))])
def test_inspection_records_the_gates(name, names):
    layer = LAYERS[name](3, 4)
    trace = gatedrnn.inspect_gates(layer, torch.randn(30, 2, 3))
    assert tuple(trace.names) == names


def test_minimal_layers_have_no_recurrent_weights():
    names = [n for n, _ in gatedrnn.MinLSTM(3, 4).named_parameters()]
    assert names == ["weight_ih_l0", "bias_ih_l0"]
    assert gatedrnn.MinGRU(3, 4).weight_ih_l0.shape == (8, 3)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="mode"):
        gatedrnn.MinGRU(3, 4, mode="scan")
    with pytest.raises(ValueError, match="activation"):
        gatedrnn.MinLSTM(3, 4, activation="relu")


# ----- the cpu backend's kernel (gatedrnn.backends.cpu.minimal) ------------------------------------


PATHS = {"compiled": "sequential", "scan": "sequential", "parallel": "parallel"}
"""The cpu kernel's recurrences: the compiled pass (``mode="sequential"``), the scan it falls back
to where the compiled ops are switched off, and the scan of ``mode="parallel"``."""


@pytest.fixture(params=list(PATHS))
def cpu_path(request, monkeypatch):
    """(the mode that takes this path, a count of the compiled passes run, the passes expected per
    layer and direction)."""
    from gatedrnn.backends.cpu import compiled, minimal

    if request.param == "scan":
        monkeypatch.setenv(compiled.ENV, "0")
    else:
        monkeypatch.delenv(compiled.ENV, raising=False)
        if compiled.unavailable_reason() is not None:
            pytest.skip(f"the compiled ops are unavailable: {compiled.unavailable_reason()}")
    runs = {"compiled": 0}
    original = minimal.compiled_pass

    def counting(cfg, dtype):
        fused = original(cfg, dtype)
        runs["compiled"] += fused
        return fused

    monkeypatch.setattr(minimal, "compiled_pass", counting)
    return PATHS[request.param], runs, int(request.param == "compiled")


def cpu_and_reference(name, *args, mode="sequential", **kwargs):
    """The same layer on the cpu backend and on the reference loop stepping (equal weights)."""
    torch.manual_seed(0)
    ref = LAYERS[name](*args, backend="reference", mode="sequential", dtype=F64, **kwargs)
    with torch.no_grad():  # pre-activations of both signs and several scales
        for p in ref.parameters():
            p.mul_(3.0)
    fast = LAYERS[name](*args, backend="cpu", mode=mode, dtype=F64, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def forward_and_grads(layer, x, h0, lengths=None):
    """Outputs (zero-padded), h_n and the gradients of input, h0 and every parameter of a random loss."""
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = layer(inp, h0)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    torch.manual_seed(9)
    loss = (out * torch.randn_like(out)).sum() + (h_n * torch.randn_like(h_n)).sum()
    grads = torch.autograd.grad(loss, [x, h0, *layer.parameters()])
    return [out.detach(), h_n.detach(), *grads]


def assert_all_close(got, want, atol=1e-10):
    for k, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=0, atol=atol * max(1.0, w.abs().max().item()), msg=f"tensor {k}")


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("activation", ["g", "identity"])
def test_the_cpu_kernel_equals_the_step_loop_packed_both_ways(name, activation, cpu_path):
    mode, runs, passes = cpu_path
    fast, ref = cpu_and_reference(name, 3, 4, mode=mode, activation=activation, bidirectional=True, num_layers=2)
    torch.manual_seed(1)
    x = 2 * torch.randn(63, 5, 3, dtype=F64)
    h0 = 4 * torch.randn(4, 5, 4, dtype=F64)  # any sign
    lengths = torch.tensor([63, 1, 40, 17, 62])
    assert_all_close(forward_and_grads(fast, x, h0, lengths), forward_and_grads(ref, x, h0, lengths))
    assert runs["compiled"] == 4 * passes


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_every_path_equals_the_reference_over_4096_steps(name, cpu_path):
    """The cpu kernel's paths against the reference loop's scan under autograd (which equals its
    step loop: test_the_scan_equals_the_step_loop), in every gradient."""
    torch.manual_seed(2)
    x = 3 * torch.randn(4096, 2, 3, dtype=F64)
    h0 = 4 * torch.randn(1, 2, 3, dtype=F64)
    mode, runs, passes = cpu_path
    fast, ref = cpu_and_reference(name, 3, 3, mode=mode)
    ref.cell_config.mode = "parallel"  # the reference loop's scan: the step loop under autograd is slow here
    assert_all_close(forward_and_grads(fast, x, h0), forward_and_grads(ref, x, h0))
    assert runs["compiled"] == passes


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_the_cpu_kernel_passes_gradcheck_reversed_and_packed(name, cpu_path):
    torch.manual_seed(4)
    layer = LAYERS[name](2, 2, mode=cpu_path[0], bidirectional=True, backend="cpu", dtype=F64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(18, 2, 2, dtype=F64, requires_grad=True)  # the scan: more than one chunk
    h0 = torch.randn(2, 2, 2, dtype=F64, requires_grad=True)
    lengths = torch.tensor([18, 5])

    def run(x, h0, *params):
        out, h_n = torch.func.functional_call(
            layer, dict(zip(names, params)), (pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
        )
        return out.data, h_n

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(run, (x, h0, *params))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_second_derivatives_replay_the_reference_loop(name, cpu_path):
    torch.manual_seed(5)
    layer = LAYERS[name](2, 2, mode=cpu_path[0], backend="cpu", dtype=F64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(5, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(1, 2, 2, dtype=F64, requires_grad=True)

    def run(x, h0, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x, h0))

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradgradcheck(run, (x, h0, *params))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_zoneout_and_recurrent_dropout_run_on_the_reference_loop(name):
    torch.manual_seed(0)
    ref = LAYERS[name](3, 4, zoneout=0.3, recurrent_dropout=0.2, backend="reference", dtype=F64)
    fast = LAYERS[name](3, 4, zoneout=0.3, recurrent_dropout=0.2, backend="cpu", dtype=F64)
    fast.load_state_dict(ref.state_dict())
    x, h0 = torch.randn(9, 2, 3, dtype=F64), torch.randn(1, 2, 4, dtype=F64)
    results = []
    for layer in (fast, ref):
        torch.manual_seed(6)  # the same masks
        results.append(forward_and_grads(layer, x, h0))
    assert_all_close(*results)


def _graph_size(tensor):
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_the_cpu_kernels_graph_does_not_grow_with_time(name, mode):
    layer = LAYERS[name](3, 4, mode=mode, backend="cpu")
    sizes = [_graph_size(layer(torch.randn(steps, 2, 3, requires_grad=True))[0]) for steps in (3, 100)]
    assert sizes[0] == sizes[1] < 10


def _restarts(steps, batch, lengths, reverse, seed=7):
    """A restart mask in walk order: a fifth of the steps, row 0's first and two in a row in row 1."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(steps, batch, generator=g) < 0.2
    raw[0, 0] = raw[3, 1] = raw[4, 1] = True
    return reset_in_walk_order(raw, lengths, reverse)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("activation", ["g", "identity"])
def test_the_cpu_kernel_restarts_like_the_step_loop(name, activation, cpu_path):
    """Restarts on every path of the cpu kernel (the scans over several chunks), both directions,
    padded and packed, from an initial state of any sign: outputs, h_n and the gradients of the
    input, h0 and the weights equal the reference loop's steps in float64 (no NaN from a = 0)."""
    mode, runs, passes = cpu_path
    fast, ref = cpu_and_reference(name, 3, 4, mode=mode, activation=activation)
    w = fast.layer_weights(0, 0)
    torch.manual_seed(1)
    x, h0 = 2 * torch.randn(40, 5, 3, dtype=F64), 4 * torch.randn(5, 4, dtype=F64)
    for reverse in (False, True):
        for lengths in (None, torch.tensor([40, 1, 33, 17, 39])):
            kwargs = dict(reverse=reverse, lengths=lengths, reset=_restarts(40, 5, lengths, reverse))
            got = layer_run_and_grad(cpu_backend, fast.cell_config, x, (h0,), w, **kwargs)
            want = layer_run_and_grad(reference, ref.cell_config, x, (h0,), w, **kwargs)
            assert_close_lists(got[0] + got[1], want[0] + want[1])
    assert runs["compiled"] == 4 * passes


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_the_cpu_kernel_passes_gradcheck_with_restarts(name, cpu_path):
    torch.manual_seed(4)
    layer = LAYERS[name](2, 2, mode=cpu_path[0], backend="cpu", dtype=F64)
    cfg, w = layer.cell_config, layer.layer_weights(0, 0)
    lengths = torch.tensor([18, 5])
    reset = _restarts(18, 2, lengths, reverse=True)

    def run(x, h0, *params):
        out, (h_n,), _ = cpu_backend.run_layer(
            cfg, x, (h0,), dict(zip(w, params)), reverse=True, lengths=lengths, reset=reset
        )
        return out, h_n

    inputs = [torch.randn(18, 2, 2, dtype=F64), torch.randn(2, 2, dtype=F64), *w.values()]
    assert torch.autograd.gradcheck(run, tuple(t.detach().clone().requires_grad_() for t in inputs))
