"""minGRU and minLSTM (gatedrnn.MinGRU, gatedrnn.MinLSTM): mingru-pytorch's modules, the scan against
the step loop, gradients, padded and packed sequences."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.cells.mingru import linear_scan

mingru_pytorch = pytest.importorskip("minGRU_pytorch")

F64 = torch.float64
LAYERS = {"mingru": gatedrnn.MinGRU, "minlstm": gatedrnn.MinLSTM}


def pair(name, *args, **kwargs):
    """The same layer stepped and scanned (equal weights)."""
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
def test_the_scan_equals_the_step_loop(name, activation, T):
    sequential, parallel = pair(name, 3, 5, activation=activation)
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
