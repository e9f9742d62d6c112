"""Gate inspection returns the same output as forward plus every gate at every step."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from helpers import rel_err


@pytest.mark.parametrize(
    "cls,kw,names",
    [
        (gatedrnn.LSTM, {}, ("i", "f", "g", "o", "c", "h")),
        (gatedrnn.LSTM, {"proj_size": 2, "variant": "peephole"}, ("i", "f", "g", "o", "c", "h")),
        (gatedrnn.GRU, {"reset_after": False}, ("r", "z", "n", "h")),
        (gatedrnn.RNN, {}, ("h",)),
    ],
)
def test_trace_matches_forward_for_every_layer_and_direction(cls, kw, names):
    m = cls(3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64, **kw)
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    trace = gatedrnn.inspect_gates(m, x)
    out, state = m(x)
    assert rel_err(trace.output, out) < 1e-12
    assert trace.names == names
    assert set(trace.gates) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for gates in trace.gates.values():
        assert set(gates) == set(names)
        assert all(g.shape == (7, 2, 5) for g in gates.values())
    if cls is gatedrnn.LSTM:
        g = trace.gates[(1, 1)]
        assert torch.allclose(g["h"], g["o"] * torch.tanh(g["c"]))
        assert torch.allclose(state[1][3], g["c"][0]), "reverse direction ends at t = 0"
        assert torch.allclose(state[1][2], trace.gates[(1, 0)]["c"][-1])
    else:
        last = state[2]
        assert torch.allclose(last, trace.gates[(1, 0)]["h"][-1])


def test_trace_with_packed_lengths_zeroes_padding_and_keeps_final_states():
    m = gatedrnn.LSTM(3, 4, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    trace = gatedrnn.inspect_gates(m, packed)
    f = trace.gates[(0, 0)]["f"]
    assert torch.equal(f[2:, 1], torch.zeros(4, 4)) and (f[:2, 1] > 0).all()
    _, (h, c) = m(packed)
    assert torch.allclose(trace.final_state[1], c)
    assert torch.allclose(c[0, 2], trace.gates[(0, 0)]["c"][3, 2])


def test_trace_is_differentiable_for_memory_span():
    m = gatedrnn.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(5, 1, 3, dtype=torch.float64, requires_grad=True)
    h = gatedrnn.inspect_gates(m, x).gates[(0, 0)]["h"]
    (grad,) = torch.autograd.grad(h[4].sum(), x)
    assert grad[0].abs().sum() > 0 and grad.shape == x.shape


def test_inspect_rejects_torch_modules():
    with pytest.raises(
        TypeError, match="expected a gatedrnn.LSTM, GRU or RNN module or another gatedrnn.Recurrent layer, got LSTM"
    ):
        gatedrnn.inspect_gates(torch.nn.LSTM(3, 4), torch.randn(2, 1, 3))


def test_under_cpu_autocast_the_trace_is_what_forward_computes():
    """Under CPU autocast the module's forward runs the recurrence in the parameters' dtype; the
    trace does too: its output is forward's (in the input's dtype), its gates those without autocast."""
    torch.manual_seed(0)
    module = gatedrnn.LSTM(3, 4, num_layers=2)
    x = torch.randn(6, 2, 3).bfloat16()
    exact = gatedrnn.inspect_gates(module, x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = module(x)[0]
        trace = gatedrnn.inspect_gates(module, x)
    assert trace.output.dtype == torch.bfloat16 and torch.equal(trace.output, expected)
    for key, gates in exact.gates.items():
        for name, values in gates.items():
            assert trace.gates[key][name].dtype == torch.float32 and torch.equal(trace.gates[key][name], values)


def test_trace_starts_from_the_given_state():
    m = gatedrnn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    hx = (torch.randn(4, 2, 4, dtype=torch.float64), torch.randn(4, 2, 4, dtype=torch.float64))
    trace = gatedrnn.inspect_gates(m, x, hx)
    out, (h, c) = m(x, hx)
    assert rel_err(trace.output, out) < 1e-12
    assert rel_err(trace.final_state[0], h) < 1e-12 and rel_err(trace.final_state[1], c) < 1e-12
    assert rel_err(trace.output, m(x)[0]) > 1e-3, "the given state must matter here"
