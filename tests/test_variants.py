"""The variants: gradients (gradcheck, stacked and bidirectional) and what each one computes."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

import gatedrnn
from gatedrnn.config import LSTM_VARIANTS
from helpers import rel_err

VARIANT_MODULES = (
    [pytest.param(gatedrnn.LSTM, dict(variant=v), id=f"lstm-{v}") for v in LSTM_VARIANTS]
    + [
        pytest.param(gatedrnn.LSTM, dict(variant=v, layer_norm=True), id=f"lstm-{v}-ln")
        for v in ("vanilla", "peephole", "cifg")
    ]
    + [pytest.param(gatedrnn.LSTM, dict(proj_size=2, variant="peephole"), id="lstm-peephole-proj")]
    + [
        pytest.param(gatedrnn.GRU, dict(reset_after=ra, layer_norm=ln), id=f"gru-ra{int(ra)}-ln{int(ln)}")
        for ra in (True, False)
        for ln in (False, True)
    ]
    + [
        pytest.param(gatedrnn.RNN, dict(nonlinearity="tanh"), id="rnn-tanh"),
        pytest.param(gatedrnn.LSTM, dict(zoneout=0.3), id="lstm-zoneout-eval"),
    ]
)


@pytest.mark.parametrize("cls,kw", VARIANT_MODULES)
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_gradcheck_stacked_bidirectional(cls, kw, backend):
    module = cls(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64, backend=backend, **kw).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move layer-norm gains/shifts off their 1/0 start
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def f(x, *ps):
        out, state = functional_call(module, dict(zip(names, ps)), (x,))
        states = state if isinstance(state, tuple) else (state,)
        return (out,) + states

    assert gradcheck(f, (x,) + params, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(
    "cls,kw",
    [
        pytest.param(gatedrnn.LSTM, dict(zoneout=0.4, recurrent_dropout=0.3, variant="peephole"), id="lstm"),
        pytest.param(gatedrnn.GRU, dict(zoneout=0.4, recurrent_dropout=0.3, reset_after=False), id="gru"),
    ],
)
def test_gradcheck_training_regularisers_with_fixed_masks(cls, kw):
    module = cls(2, 3, num_layers=2, bidirectional=True, dropout=0.2, dtype=torch.float64, **kw).train()
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def f(x, *ps):
        torch.manual_seed(11)  # the same zoneout, recurrent and inter-layer masks on every evaluation
        out, state = functional_call(module, dict(zip(names, ps)), (x,))
        return (out,) + (state if isinstance(state, tuple) else (state,))

    assert gradcheck(f, (x,) + params, eps=1e-6, atol=1e-7, rtol=1e-5)


def _trace(module, x):
    return gatedrnn.inspect_gates(module, x).gates[(0, 0)]


@pytest.fixture
def x():
    return torch.randn(7, 3, 4, dtype=torch.float64)


def test_cifg_couples_input_and_forget_gates(x):
    g = _trace(gatedrnn.LSTM(4, 5, variant="cifg", dtype=torch.float64), x)
    assert torch.allclose(g["i"], 1 - g["f"])
    assert gatedrnn.LSTM(4, 5, variant="cifg").weight_ih_l0.shape == (15, 4)


@pytest.mark.parametrize("variant,gate", [("nig", "i"), ("nfg", "f"), ("nog", "o")])
def test_removed_gate_is_one(x, variant, gate):
    module = gatedrnn.LSTM(4, 5, variant=variant, dtype=torch.float64)
    assert module.weight_hh_l0.shape == (15, 5)
    trace = _trace(module, x)
    assert torch.equal(trace[gate], torch.ones_like(trace[gate]))
    others = [k for k in "ifo" if k != gate]
    assert all((trace[k] < 1).all() for k in others)


def test_nfg_cell_accumulates_without_forgetting(x):
    trace = _trace(gatedrnn.LSTM(4, 5, variant="nfg", dtype=torch.float64), x)
    c, i, g = trace["c"], trace["i"], trace["g"]
    assert torch.allclose(c[1:] - c[:-1], (i * g)[1:])


def test_niaf_and_noaf_drop_their_activations(x):
    big = gatedrnn.LSTM(4, 5, variant="niaf", dtype=torch.float64)
    with torch.no_grad():
        big.weight_ih_l0.mul_(20)
    assert _trace(big, x)["g"].abs().max() > 1, "without tanh, g must leave [-1, 1]"
    trace = _trace(gatedrnn.LSTM(4, 5, variant="noaf", dtype=torch.float64), x)
    assert torch.allclose(trace["h"], trace["o"] * trace["c"])


def _copy_shared(dst, src):
    with torch.no_grad():
        for name, p in src.named_parameters():
            getattr(dst, name).copy_(p)


@pytest.mark.parametrize("variant,extra", [("peephole", "weight_ch_l0"), ("fgr", "weight_gg_l0")])
def test_extra_connections_zeroed_give_vanilla_and_matter_otherwise(x, variant, extra):
    vanilla = gatedrnn.LSTM(4, 5, dtype=torch.float64)
    module = gatedrnn.LSTM(4, 5, variant=variant, dtype=torch.float64)
    _copy_shared(module, vanilla)
    assert rel_err(module(x)[0], vanilla(x)[0]) > 1e-3
    with torch.no_grad():
        getattr(module, extra).zero_()
    assert rel_err(module(x)[0], vanilla(x)[0]) < 1e-14


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_fgr_carries_the_previous_gates_as_a_third_state(x, backend):
    """fgr returns (h_n, c_n, gates_n), gates_n the last step's (i, f, o); given back as hx it continues
    the sequence exactly, and other gates_0 give other outputs."""
    module = gatedrnn.LSTM(4, 5, num_layers=2, variant="fgr", dtype=torch.float64, backend=backend)
    out, (h, c, gates) = module(x)
    assert gates.shape == (2, 3, 15)
    last = gatedrnn.inspect_gates(module, x).gates[(1, 0)]
    assert rel_err(gates[1], torch.cat([last[name][-1] for name in ("i", "f", "o")], dim=-1)) < 1e-12
    first, state = module(x[:3])
    rest, final = module(x[3:], state)
    assert rel_err(torch.cat([first, rest]), out) < 1e-12
    assert all(rel_err(a, e) < 1e-12 for a, e in zip(final, (h, c, gates)))
    zeros = (torch.zeros_like(h), torch.zeros_like(c))
    assert rel_err(module(x, (*zeros, torch.zeros_like(gates)))[0], out) < 1e-12, "omitted states are zeros"
    assert rel_err(module(x, (*zeros, torch.rand_like(gates)))[0], out) > 1e-3
    with pytest.raises(TypeError, match=r"expected hx to be a tuple \(h_0, c_0, gates_0\) of three tensors"):
        module(x, zeros)
    with pytest.raises(ValueError, match=r"gates_0 of shape .*3 \* hidden_size\) = \(2, 3, 15\), got \(2, 3, 5\)"):
        module(x, (*zeros, torch.zeros_like(c)))


def test_zoneout_leaves_fgr_gates_state_to_the_step(x):
    """Total zoneout freezes h and c; the carried gates are the last step's all the same."""
    module = gatedrnn.LSTM(4, 5, variant="fgr", zoneout=1.0, dtype=torch.float64).train()
    states = tuple(torch.rand(1, 3, size, dtype=torch.float64) for size in (5, 5, 15))
    _, (h, c, gates) = module(x, states)
    assert torch.equal(h, states[0]) and torch.equal(c, states[1])
    last = gatedrnn.inspect_gates(module, x, states).gates[(0, 0)]
    assert rel_err(gates[0], torch.cat([last[name][-1] for name in ("i", "f", "o")], dim=-1)) < 1e-12
    assert rel_err(gates, states[2]) > 1e-3


def test_peephole_step_matches_hand_computation():
    cell = gatedrnn.LSTMCell(3, 2, variant="peephole", dtype=torch.float64)
    x, h, c = (
        torch.randn(1, 3, dtype=torch.float64),
        torch.randn(1, 2, dtype=torch.float64),
        torch.randn(1, 2, dtype=torch.float64),
    )
    a = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    ai, af, ag, ao = a.split(2, dim=1)
    pi, pf, po = cell.weight_ch.split(2)
    i, f = torch.sigmoid(ai + pi * c), torch.sigmoid(af + pf * c)
    c2 = f * c + i * torch.tanh(ag)
    h2 = torch.sigmoid(ao + po * c2) * torch.tanh(c2)
    h_out, c_out = cell(x, (h, c))
    assert torch.allclose(h_out, h2) and torch.allclose(c_out, c2)


def test_layer_norm_lstm_step_matches_hand_computation():
    cell = gatedrnn.LSTMCell(3, 4, layer_norm=True, dtype=torch.float64)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x, h, c = (torch.randn(2, n, dtype=torch.float64) for n in (3, 4, 4))

    def ln(v, gain, shift):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return gain * (v - mu) / torch.sqrt(var + 1e-5) + shift

    wx, wh = x @ cell.weight_ih.T, h @ cell.weight_hh.T
    gates = []
    for k in range(4):
        rows = slice(4 * k, 4 * k + 4)
        gates.append(
            ln(wx[:, rows], cell.ln_weight_ih[rows], cell.ln_bias_ih[rows])
            + ln(wh[:, rows], cell.ln_weight_hh[rows], cell.ln_bias_hh[rows])
            + cell.bias_ih[rows]
            + cell.bias_hh[rows]
        )
    i, f, g, o = torch.sigmoid(gates[0]), torch.sigmoid(gates[1]), torch.tanh(gates[2]), torch.sigmoid(gates[3])
    c2 = f * c + i * g
    h2 = o * torch.tanh(ln(c2, cell.ln_weight_c, cell.ln_bias_c))
    h_out, c_out = cell(x, (h, c))
    assert torch.allclose(h_out, h2) and torch.allclose(c_out, c2)


def test_gru_reset_before_matches_cho_et_al():
    cell = gatedrnn.GRUCell(3, 4, reset_after=False, dtype=torch.float64)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    W, U, b, bh = cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
    r = torch.sigmoid(x @ W[:4].T + b[:4] + h @ U[:4].T + bh[:4])
    z = torch.sigmoid(x @ W[4:8].T + b[4:8] + h @ U[4:8].T + bh[4:8])
    n = torch.tanh(x @ W[8:].T + b[8:] + (r * h) @ U[8:].T + bh[8:])
    assert torch.allclose(cell(x, h), (1 - z) * n + z * h)
    torch_form = gatedrnn.GRUCell(3, 4, dtype=torch.float64)
    torch_form.load_state_dict(cell.state_dict())
    assert rel_err(torch_form(x, h), cell(x, h)) > 1e-6


def test_forget_bias_initialises_the_effective_forget_bias():
    for variant in ("vanilla", "cifg", "peephole"):
        m = gatedrnn.LSTM(3, 4, num_layers=2, variant=variant, forget_bias=1.0)
        k = m.cell_config.gates.index("f")
        for layer in range(2):
            b_ih, b_hh = getattr(m, f"bias_ih_l{layer}"), getattr(m, f"bias_hh_l{layer}")
            assert torch.equal(b_ih[4 * k : 4 * k + 4], torch.ones(4))
            assert torch.equal(b_hh[4 * k : 4 * k + 4], torch.zeros(4))
            assert (b_ih[: 4 * k] != 1).all()


def test_zoneout_training_is_random_and_total_zoneout_freezes_state(x):
    m = gatedrnn.LSTM(4, 5, zoneout=1.0, dtype=torch.float64).train()
    h0 = torch.randn(1, 3, 5, dtype=torch.float64)
    c0 = torch.randn(1, 3, 5, dtype=torch.float64)
    out, (h, c) = m(x, (h0, c0))
    assert torch.equal(h, h0) and torch.equal(c, c0)
    half = gatedrnn.LSTM(4, 5, zoneout=0.5, dtype=torch.float64).train()
    assert not torch.equal(half(x)[0], half(x)[0])


def test_zoneout_eval_uses_the_expectation(x):
    m = gatedrnn.GRU(4, 5, zoneout=0.25, dtype=torch.float64).eval()
    plain = gatedrnn.GRU(4, 5, dtype=torch.float64)
    plain.load_state_dict(m.state_dict())
    out = m(x)[0]
    assert torch.equal(out, m(x)[0])
    h_prev = torch.zeros(3, 5, dtype=torch.float64)
    for t in range(x.shape[0]):
        h_new = gatedrnn.GRUCell(4, 5, dtype=torch.float64)
        h_new.load_state_dict({k[:-3]: v for k, v in m.state_dict().items()})
        h_prev = 0.25 * h_prev + 0.75 * h_new(x[t], h_prev)
        assert torch.allclose(out[t], h_prev)


def test_recurrent_dropout_one_mask_per_sequence_and_off_in_eval(x):
    m = gatedrnn.LSTM(4, 5, recurrent_dropout=0.5, dtype=torch.float64)
    plain = gatedrnn.LSTM(4, 5, dtype=torch.float64)
    plain.load_state_dict(m.state_dict())
    m.eval()
    assert torch.equal(m(x)[0], plain(x)[0])
    m.train()
    noise = m._noise(x)
    assert noise.recurrent_mask.shape == (3, 5)
    assert set(noise.recurrent_mask.unique().tolist()) <= {0.0, 2.0}
    assert not torch.equal(m(x)[0], m(x)[0])
    # the mask acts on h_{t-1} where it enters the matmul: ones give the plain LSTM, zeros cut the recurrence
    from gatedrnn.backends import reference
    from gatedrnn.config import Noise

    w = m.layer_weights(0, 0)
    zeros = torch.zeros(3, 5, dtype=torch.float64)
    ones = reference.run_layer(
        m.cell_config, x, (zeros, zeros), w, noise=Noise(recurrent_mask=torch.ones(3, 5, dtype=torch.float64))
    )[0]
    assert torch.allclose(ones, plain(x)[0])
    dropped = reference.run_layer(
        m.cell_config, x, (zeros, zeros), w, noise=Noise(recurrent_mask=torch.zeros(3, 5, dtype=torch.float64))
    )[0]
    assert torch.allclose(dropped, torch.stack(list(_no_recurrence_outputs(m, x))))


def _no_recurrence_outputs(m, x):
    """LSTM outputs when h_{t-1} never enters the matmul (a recurrent mask of zeros)."""
    W, b = m.weight_ih_l0, m.bias_ih_l0 + m.bias_hh_l0
    c = torch.zeros(x.shape[1], 5, dtype=x.dtype)
    for t in range(x.shape[0]):
        i, f, g, o = (x[t] @ W.T + b).split(5, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        yield torch.sigmoid(o) * torch.tanh(c)


def test_layer_norm_modules_and_unknown_variant():
    m = gatedrnn.GRU(3, 4, layer_norm=True)
    assert {n for n, _ in m.named_parameters() if n.startswith("ln_")} == {
        "ln_weight_ih_l0",
        "ln_bias_ih_l0",
        "ln_weight_hh_l0",
        "ln_bias_hh_l0",
    }
    assert torch.equal(m.ln_weight_ih_l0, torch.ones(12))
    with pytest.raises(ValueError, match="unknown variant 'lstm97'.*'vanilla'.*'peephole'.*'fgr'"):
        gatedrnn.LSTM(3, 4, variant="lstm97")


def test_nan_propagates(x):
    for module in (
        gatedrnn.LSTM(4, 5, variant="peephole", dtype=torch.float64),
        gatedrnn.GRU(4, 5, dtype=torch.float64),
    ):
        bad = x.clone()
        bad[2, 1, 0] = float("nan")
        out = module(bad)[0]
        assert torch.isnan(out[2:, 1]).all()
        assert not torch.isnan(out[:, 0]).any() and not torch.isnan(out[:2]).any()


def test_zoneout_draws_fresh_independent_masks_for_h_and_c_at_every_step():
    """Zoneout keeps each unit of h and of c with probability p, drawn afresh at each step and
    independently for h and c (Krueger et al. 2016). Traced in training, a unit is unchanged from
    the previous step about p of the time; h and c both, or one unit two steps running, about p^2."""
    torch.manual_seed(0)
    m = gatedrnn.LSTM(4, 50, zoneout=0.3, dtype=torch.float64).train()
    gates = gatedrnn.inspect_gates(m, torch.randn(41, 8, 4, dtype=torch.float64)).gates[(0, 0)]
    kept_h = (gates["h"][1:] == gates["h"][:-1]).double()  # (40, 8, 50)
    kept_c = (gates["c"][1:] == gates["c"][:-1]).double()
    for kept in (kept_h, kept_c):
        assert abs(kept.mean().item() - 0.3) < 0.03
        assert abs((kept[1:] * kept[:-1]).mean().item() - 0.09) < 0.03, "the same mask at every step"
    assert abs((kept_h * kept_c).mean().item() - 0.09) < 0.03, "h and c share one mask"


@pytest.mark.parametrize("kw", [dict(recurrent_dropout=0.5), dict(zoneout=0.5)], ids=["recurrent_dropout", "zoneout"])
def test_each_sequence_of_a_batch_draws_its_own_masks(kw):
    """One mask per sequence (Gal & Ghahramani 2016), not one for the whole batch: sixteen copies
    of one sequence come out different in training."""
    m = gatedrnn.LSTM(4, 5, dtype=torch.float64, **kw).train()
    out = m(torch.randn(7, 1, 4, dtype=torch.float64).expand(7, 16, 4))[0]
    assert not all(torch.equal(out[:, b], out[:, 0]) for b in range(1, 16))


def test_lstm_cell_forget_bias_initialises_the_forget_rows():
    for variant in ("vanilla", "cifg", "peephole"):
        cell = gatedrnn.LSTMCell(3, 4, variant=variant, forget_bias=1.0)
        k = cell.cell_config.gates.index("f")
        assert torch.equal(cell.bias_ih[4 * k : 4 * k + 4], torch.ones(4)), variant
        assert torch.equal(cell.bias_hh[4 * k : 4 * k + 4], torch.zeros(4)), variant
        assert cell.forget_bias == 1.0 and "forget_bias=1.0" in repr(cell)
    with pytest.raises(ValueError, match="forget_bias=1.0 needs a forget gate"):
        gatedrnn.LSTMCell(3, 4, variant="nfg", forget_bias=1.0)
