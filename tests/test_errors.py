"""Bad input gets a ValueError/TypeError saying what was expected and what was given."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(hidden_size=0), ValueError, "hidden_size must be a positive integer, got 0"),
    (dict(hidden_size=-3), ValueError, "hidden_size must be a positive integer, got -3"),
    (dict(hidden_size=4.0), TypeError, "hidden_size must be an int, got float"),
    (dict(input_size=0), ValueError, "input_size must be a positive integer, got 0"),
    (dict(num_layers=0), ValueError, "num_layers must be a positive integer, got 0"),
    (dict(dropout=1.5), ValueError, r"dropout must be in \[0, 1\], got 1.5"),
    (dict(dropout=-0.1), ValueError, r"dropout must be in \[0, 1\], got -0.1"),
    (dict(proj_size=8), ValueError, r"proj_size must be 0 \(no projection\) or in \[1, hidden_size=8\), got 8"),
    (dict(proj_size=-1), ValueError, "proj_size must be 0"),
    (dict(zoneout=1.5), ValueError, r"zoneout must be in \[0, 1\], got 1.5"),
    (dict(recurrent_dropout=1.0), ValueError, r"recurrent_dropout must be in \[0, 1\), got 1.0"),
    (dict(bias="yes"), TypeError, "bias must be a bool, got str"),
    (dict(backend="cuda"), ValueError, "unknown backend 'cuda': expected one of 'auto', 'torch', 'reference'"),
    (dict(variant="nfg", forget_bias=1.0), ValueError, "forget_bias=1.0 needs a forget gate"),
    (dict(bias=False, forget_bias=1.0), ValueError, "forget_bias=1.0 needs bias=True"),
])
def test_constructor_rejects(kwargs, error, pattern):
    args = dict(input_size=3, hidden_size=8) | kwargs
    with pytest.raises(error, match=pattern):
        gatedrnn.LSTM(**args)


def test_rnn_nonlinearity_and_gru_options():
    with pytest.raises(ValueError, match="unknown nonlinearity 'sigmoid'; expected one of 'tanh', 'relu'"):
        gatedrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="reset_after must be a bool"):
        gatedrnn.GRU(3, 4, reset_after=1)
    with pytest.raises(ValueError, match="variant 'fgr'.*use gatedrnn.LSTM"):
        gatedrnn.LSTMCell(3, 4, variant="fgr")


@pytest.fixture
def lstm():
    return gatedrnn.LSTM(3, 4, num_layers=2, bidirectional=True)


def test_input_dims(lstm):
    with pytest.raises(ValueError, match=r"expected input to be 3-D \(T, B, input_size\).*got 4-D input of shape \(2, 3, 4, 3\)"):
        lstm(torch.randn(2, 3, 4, 3))
    with pytest.raises(ValueError, match="got 1-D"):
        lstm(torch.randn(3))


def test_input_size(lstm):
    with pytest.raises(ValueError, match=r"input.size\(-1\) == input_size = 3, got 5 \(input shape \(6, 2, 5\)\)"):
        lstm(torch.randn(6, 2, 5))


def test_input_type_and_dtype(lstm):
    with pytest.raises(TypeError, match="expected input to be a Tensor, got list"):
        lstm([[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="floating-point tensor of dtype torch.float32, got dtype torch.int64"):
        lstm(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"input has dtype torch.float64 but the parameters are torch.float32"):
        lstm(torch.randn(5, 2, 3, dtype=torch.float64))


def test_state_shapes_for_each_layer_direction_and_batch(lstm):
    x = torch.randn(5, 2, 3)
    good_h, good_c = torch.zeros(4, 2, 4), torch.zeros(4, 2, 4)
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(num_layers \* num_directions, batch, hidden_size\) = \(4, 2, 4\), got \(2, 2, 4\)"):
        lstm(x, (torch.zeros(2, 2, 4), good_c))
    with pytest.raises(ValueError, match=r"expected c_0 of shape .* = \(4, 2, 4\), got \(4, 3, 4\)"):
        lstm(x, (good_h, torch.zeros(4, 3, 4)))
    with pytest.raises(ValueError, match=r"expected h_0 of shape .* for unbatched input = \(4, 4\), got \(4, 1, 4\)"):
        lstm(torch.randn(5, 3), (torch.zeros(4, 1, 4), torch.zeros(4, 1, 4)))
    proj = gatedrnn.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"batch, proj_size\) = \(1, 2, 2\), got \(1, 2, 4\)"):
        proj(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))


def test_lstm_state_must_be_a_pair(lstm):
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError, match=r"expected hx to be a tuple \(h_0, c_0\) of two tensors, got Tensor"):
        lstm(x, torch.zeros(4, 2, 4))
    with pytest.raises(TypeError, match="got a tuple of length 3"):
        lstm(x, (torch.zeros(4, 2, 4),) * 3)
    with pytest.raises(TypeError, match="expected hx to be a Tensor h_0, got a tuple"):
        gatedrnn.GRU(3, 4)(x, (torch.zeros(1, 2, 4),))


def test_state_dtype_mismatch(lstm):
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError, match="c_0 has dtype torch.float64 but the parameters are torch.float32"):
        lstm(x, (torch.zeros(4, 2, 4), torch.zeros(4, 2, 4, dtype=torch.float64)))


def test_packed_input_checked():
    m = gatedrnn.GRU(3, 4, layer_norm=True)
    packed = pack_padded_sequence(torch.randn(5, 2, 6), torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"PackedSequence data of shape \(sum of lengths, input_size=3\), got \(7, 6\)"):
        m(packed)


def test_cell_errors():
    cell = gatedrnn.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, input_size=3\) or \(input_size,\), got \(2, 5\)"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"expected c of shape \(batch, hidden_size\) = \(2, 4\), got \(2, 5\)"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 5)))
    with pytest.raises(TypeError, match=r"expected hx to be a tuple \(h, c\)"):
        cell(torch.randn(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"expected h of shape \(batch, hidden_size\) = \(2, 4\), got \(3, 4\)"):
        cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(TypeError, match=r"c has dtype torch.float64 but the parameters are torch.float32"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64)))


def test_gru_and_rnn_cell_errors():
    """A cell's state is one tensor: a tuple, a wrong shape or dtype is refused, not passed to torch's kernel."""
    for cell in (gatedrnn.GRUCell(3, 4), gatedrnn.RNNCell(3, 4)):
        with pytest.raises(TypeError, match=r"expected hx to be a Tensor, got a tuple"):
            cell(torch.randn(2, 3), (torch.zeros(2, 4),))
        with pytest.raises(ValueError, match=r"expected hx of shape \(batch, hidden_size\) = \(2, 4\), got \(2, 3\)"):
            cell(torch.randn(2, 3), torch.zeros(2, 3))
        with pytest.raises(TypeError, match=r"input has dtype torch.float64 but the parameters are torch.float32"):
            cell(torch.randn(2, 3, dtype=torch.float64), torch.zeros(2, 4))
        with pytest.raises(TypeError, match=r"expected input to be a floating-point tensor"):
            cell(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 4))


def test_backend_that_cannot_run_the_config():
    with pytest.raises(ValueError, match="backend='torch' runs only what torch.nn computes.*variant='peephole'"):
        gatedrnn.LSTM(3, 4, variant="peephole", backend="torch")(torch.randn(2, 1, 3))
    m = gatedrnn.LSTM(3, 4)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        m.backend = "fast"
    assert m.backend == "auto", "a rejected assignment leaves the backend unchanged"


@pytest.mark.parametrize("cls,kw", [(gatedrnn.LSTM, {}), (gatedrnn.LSTM, {"variant": "cifg"}), (gatedrnn.GRU, {}), (gatedrnn.RNN, {})])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_empty_batch_and_zero_length_sequences(cls, kw, bidirectional):
    m = cls(3, 4, num_layers=2, bidirectional=bidirectional, **kw)
    D = 2 if bidirectional else 1
    out, state = m(torch.randn(0, 2, 3))
    h = state[0] if isinstance(state, tuple) else state
    assert out.shape == (0, 2, 4 * D) and h.shape == (2 * D, 2, 4) and torch.equal(h, torch.zeros_like(h))
    out, state = m(torch.randn(6, 0, 3))
    h = state[0] if isinstance(state, tuple) else state
    assert out.shape == (6, 0, 4 * D) and h.shape == (2 * D, 0, 4)
    h0 = torch.randn(2 * D, 2, 4)
    hx = (h0, torch.randn(2 * D, 2, 4)) if cls is gatedrnn.LSTM else h0
    _, state = m(torch.randn(0, 2, 3), hx)
    assert torch.equal(state[0] if isinstance(state, tuple) else state, h0), "zero steps leave the state as given"


def test_what_torch_nn_accepts_is_accepted_too():
    """torch.nn's constructor takes an int for bidirectional (not for bias or batch_first; its
    forward then fails, ours runs) and dropout=1 (every lower layer's output dropped)."""
    torch.manual_seed(0)
    ours = gatedrnn.LSTM(3, 4, num_layers=2, bidirectional=1, dropout=1.0)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, dropout=1.0)
    theirs.load_state_dict(ours.state_dict())
    assert ours.bidirectional is True and ours.dropout == 1.0
    x = torch.randn(5, 2, 3)
    for mode in (True, False):
        a, b = ours.train(mode)(x), theirs.train(mode)(x)
        assert torch.allclose(a[0], b[0], atol=1e-6) and all(torch.allclose(s, t, atol=1e-6) for s, t in zip(a[1], b[1]))
