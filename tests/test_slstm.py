"""sLSTM (gatedrnn.SLSTM): the xlstm package's vanilla sLSTM recurrence, the exp forget gate against
the reference loop's equations, gradients, and the stabiliser keeping states finite."""

from __future__ import annotations

import pytest
import torch

import gatedrnn
from gatedrnn.backends import reference
from gatedrnn.cells import SLSTMFamily

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
