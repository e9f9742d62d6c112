"""Cell families as plug-ins: the registry, the CellFamily contract, and user families on the layer
machinery (gatedrnn.Recurrent), checked in float64 against hand-written loops."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.cells import GRUFamily, LSTMFamily, family_class
from helpers import rel_err


class MGU(gatedrnn.CellFamily):
    """The minimal gated unit (Zhou et al. 2016):
    f = σ(W_f x + U_f h + b_f), n = tanh(W_n x + U_n (f ⊙ h) + b_n), h' = (1 - f) ⊙ h + f ⊙ n."""

    name = "test-mgu"
    gates = ("f", "n")
    states = ("h",)

    def step(self, x_proj, states, weights):
        (h,) = states
        H = self.hidden_size
        u_f, u_n = weights["weight_hh"].split(H)
        b_f, b_n = weights["bias_hh"].split(H) if "bias_hh" in weights else (0.0, 0.0)
        x_f, x_n = x_proj.split(H, dim=-1)
        f = torch.sigmoid(x_f + h @ u_f.T + b_f)
        n = torch.tanh(x_n + (f * h) @ u_n.T + b_n)
        return ((1 - f) * h + f * n,), {"f": f, "n": n}


class LeakyPair(gatedrnn.CellFamily):
    """A two-state family with an option: c' = a c + (1 - a) tanh(W x + U h + b), h' = tanh(c')."""

    name = "test-leaky-pair"
    gates = ("u",)
    states = ("h", "c")
    option_defaults = {"leak": 0.5}

    def check_options(self):
        if not 0 <= self.leak <= 1:
            raise ValueError(f"LeakyPair: expected leak in [0, 1], got {self.leak}")

    def step(self, x_proj, states, weights):
        h, c = states
        u = torch.tanh(x_proj + h @ weights["weight_hh"].T + weights.get("bias_hh", 0.0))
        c_new = self.leak * c + (1 - self.leak) * u
        return (torch.tanh(c_new), c_new), {"u": u}


@pytest.fixture(autouse=True)
def float64():
    """Every tensor and module of these tests in float64 (the default dtype restored after each)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def registered():
    """The test families registered for each test, and only for it."""
    for cls in (MGU, LeakyPair):
        gatedrnn.register_family(cls)
    yield
    for cls in (MGU, LeakyPair):
        if cls.name in gatedrnn.registered_families():
            gatedrnn.unregister_family(cls.name)


def mgu_loop(x, h, w_ih, w_hh, b_ih, b_hh):
    """The MGU by its equations, one sequence batch (T, B, I) from h (B, H): outputs (T, B, H), h_T."""
    W_f, W_n = w_ih.chunk(2)
    U_f, U_n = w_hh.chunk(2)
    bi_f, bi_n = b_ih.chunk(2)
    bh_f, bh_n = b_hh.chunk(2)
    outs = []
    for x_t in x:
        f = torch.sigmoid(x_t @ W_f.T + bi_f + h @ U_f.T + bh_f)
        n = torch.tanh(x_t @ W_n.T + bi_n + (f * h) @ U_n.T + bh_n)
        h = (1 - f) * h + f * n
        outs.append(h)
    return torch.stack(outs), h


def layer_params(module, layer, direction):
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return [getattr(module, k + suffix) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def mgu_stack(module, x, h0):
    """A stacked, optionally bidirectional MGU by hand (no inter-layer dropout)."""
    D = 2 if module.bidirectional else 1
    finals, layer_input = [], x
    for layer in range(module.num_layers):
        outs = []
        for d in range(D):
            xs = layer_input.flip(0) if d else layer_input
            out, h = mgu_loop(xs, h0[layer * D + d], *layer_params(module, layer, d))
            outs.append(out.flip(0) if d else out)
            finals.append(h)
        layer_input = torch.cat(outs, -1)
    return layer_input, torch.stack(finals)


# ----- the registry ----------------------------------------------------------------------------------


def test_builtin_families_are_registered_first():
    assert gatedrnn.registered_families()[:3] == ("lstm", "gru", "rnn")
    assert family_class("lstm") is LSTMFamily and family_class(GRUFamily) is GRUFamily


def test_register_family_works_as_a_decorator_and_returns_the_class():
    gatedrnn.unregister_family("test-mgu")

    @gatedrnn.register_family
    class Again(MGU):
        name = "test-mgu"

    assert family_class("test-mgu") is Again
    gatedrnn.unregister_family("test-mgu")


def test_another_class_under_a_taken_name_is_refused():
    class Other(MGU):
        pass

    with pytest.raises(ValueError, match="'test-mgu' is already registered"):
        gatedrnn.register_family(Other)
    gatedrnn.register_family(MGU)  # the same class again replaces itself


@pytest.mark.parametrize(
    "attrs, error, message",
    [
        (dict(name=""), ValueError, "expected `name` to be a non-empty string"),
        (dict(name=3), ValueError, "expected `name` to be a non-empty string"),
        (dict(gates=()), ValueError, "expected `gates` to be a non-empty tuple"),
        (dict(gates=["f", "n"]), ValueError, "expected `gates` to be a non-empty tuple"),
        (dict(states=("h", "h")), ValueError, "expected `states` to be a non-empty tuple of distinct names"),
    ],
)
def test_malformed_families_are_refused_by_what_is_wrong(attrs, error, message):
    bad = type("Bad", (MGU,), attrs)
    with pytest.raises(error, match=message):
        gatedrnn.register_family(bad)


def test_a_family_without_a_step_is_refused():
    class NoStep(gatedrnn.CellFamily):
        name, gates, states = "test-nostep", ("a",), ("h",)

    with pytest.raises(TypeError, match="must implement step"):
        gatedrnn.register_family(NoStep)
    with pytest.raises(TypeError, match="expected a subclass of gatedrnn.CellFamily"):
        gatedrnn.register_family(int)


def test_unknown_names_are_errors_that_list_the_registered_families():
    with pytest.raises(ValueError, match=r"unknown cell family 'nope': expected one of 'lstm', 'gru', 'rnn'"):
        gatedrnn.Recurrent("nope", 3, 4)
    with pytest.raises(KeyError, match="no cell family named 'nope'"):
        gatedrnn.unregister_family("nope")


def test_unknown_and_bad_options_are_refused():
    with pytest.raises(TypeError, match="unknown option.*variant.*takes: leak"):
        gatedrnn.Recurrent("test-leaky-pair", 3, 4, variant="cifg")
    with pytest.raises(ValueError, match="expected leak in"):
        gatedrnn.Recurrent("test-leaky-pair", 3, 4, leak=2.0)
    with pytest.raises(ValueError, match="unknown variant 'bogus'"):
        gatedrnn.Recurrent("lstm", 3, 4, variant="bogus")


# ----- kernels are the family's own ------------------------------------------------------------------


def test_a_subclass_that_changes_the_math_gets_none_of_its_parents_kernels():
    class SlowForget(LSTMFamily):
        name = "test-slow-forget"

        def step(self, x_proj, states, weights, h_in=None):
            return super().step(x_proj, states, weights, h_in)

    assert LSTMFamily(4).kernel("cpu") == "lstm" and LSTMFamily(4).torch_mode == "LSTM"
    assert SlowForget(4).kernel("cpu") is None and SlowForget(4).torch_mode is None


@pytest.mark.parametrize(
    "parent, hook",
    [("slstm", "recurrent_part"), ("lstm", "recurrent_part"), ("mingru", "coefficients"), ("minlstm", "candidate")],
)
def test_a_subclass_that_changes_a_factored_out_part_of_the_step_gets_no_kernels(parent, hook):
    """The built-in families compute parts of their step in helper hooks, which the fused
    kernels do not call: overriding one changes the math as overriding ``step`` does."""
    base = family_class(parent)
    changed = type("Changed", (base,), {"name": "test-changed", hook: getattr(base, hook)})
    assert base(8).kernel("cpu") is not None
    assert all(changed(8).kernel(backend) is None for backend in ("cpu", "triton", "torch", "onnx"))


def test_a_subclass_that_keeps_the_math_keeps_the_kernels():
    class Named(GRUFamily):
        name = "test-named-gru"

    assert Named(4).torch_mode == "GRU" and Named(4, reset_after=False).torch_mode is None


def test_a_user_family_is_refused_by_the_fused_backends_and_never_runs_torch():
    layer = gatedrnn.Recurrent("test-mgu", 3, 4)
    x = torch.randn(5, 2, 3)
    assert layer.cell_config.torch_mode is None
    for backend in ("torch", "cpu"):
        layer.backend = backend
        with pytest.raises(ValueError, match="test-mgu"):
            layer(x)


# ----- a user family on the layer machinery -----------------------------------------------------------


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)], ids=["1", "2-bi"])
def test_user_family_matches_its_equations_stacked_and_bidirectional(num_layers, bidirectional):
    torch.manual_seed(0)
    layer = gatedrnn.Recurrent("test-mgu", 3, 5, num_layers, bidirectional=bidirectional)
    x = torch.randn(7, 2, 3)
    h0 = torch.randn(num_layers * (2 if bidirectional else 1), 2, 5)
    out, h_n = layer(x, h0)
    want_out, want_h = mgu_stack(layer, x, h0)
    assert rel_err(out, want_out) < 1e-12 and rel_err(h_n, want_h) < 1e-12


def test_user_family_packed_batch_first_and_unbatched():
    torch.manual_seed(1)
    layer = gatedrnn.Recurrent("test-mgu", 3, 4, batch_first=True)
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, h_n = layer(packed)
    padded, _ = pad_packed_sequence(out, batch_first=True)
    for b, n in enumerate(lengths.tolist()):
        want, want_h = mgu_loop(x[b, :n].unsqueeze(1), torch.zeros(1, 4), *layer_params(layer, 0, 0))
        assert rel_err(padded[b, :n], want.squeeze(1)) < 1e-12
        assert rel_err(h_n[0, b], want_h[0]) < 1e-12
    single, h_single = layer(x[0])
    assert single.shape == (6, 4) and h_single.shape == (1, 4)
    assert rel_err(single, layer(x[:1])[0][0]) < 1e-12


def test_user_family_gradients_pass_gradcheck():
    torch.manual_seed(2)
    layer = gatedrnn.Recurrent("test-mgu", 2, 3, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 2, requires_grad=True)
    h0 = torch.randn(4, 2, 3, requires_grad=True)
    params = tuple(layer.parameters())

    def run(x, h0, *weights):
        state = dict(zip((n for n, _ in layer.named_parameters()), weights))
        out, h_n = torch.func.functional_call(layer, state, (x, h0))
        return out, h_n

    assert torch.autograd.gradcheck(run, (x, h0, *params))


def test_several_states_go_in_and_out_as_a_tuple():
    torch.manual_seed(3)
    layer = gatedrnn.Recurrent("test-leaky-pair", 3, 4, num_layers=2, leak=0.25)
    x = torch.randn(5, 2, 3)
    h0, c0 = torch.randn(2, 2, 4), torch.randn(2, 2, 4)
    out, (h_n, c_n) = layer(x, (h0, c0))
    assert out.shape == (5, 2, 4) and h_n.shape == c_n.shape == (2, 2, 4)
    c = c0[0]
    for t in range(5):  # the first layer's c by hand
        w = layer_params(layer, 0, 0)
        h_prev = torch.tanh(c) if t else h0[0]
        u = torch.tanh(x[t] @ w[0].T + w[2] + h_prev @ w[1].T + w[3])
        c = 0.25 * c + 0.75 * u
    assert rel_err(c_n[0], c) < 1e-12
    with pytest.raises(TypeError, match=r"expected hx to be a tuple \(h_0, c_0\) of two tensors, got Tensor"):
        layer(x, h0)


def test_inspect_gates_records_a_user_familys_gates_then_states():
    torch.manual_seed(4)
    layer = gatedrnn.Recurrent("test-mgu", 3, 4, num_layers=2)
    x = torch.randn(6, 1, 3)
    trace = gatedrnn.inspect_gates(layer, x)
    assert trace.names == ("f", "n", "h")
    assert rel_err(trace.gates[(1, 0)]["h"], layer(x)[0]) < 1e-12
    f = trace.gates[(0, 0)]["f"]
    assert ((f > 0) & (f < 1)).all()


def test_parameters_names_state_dict_and_repr():
    layer = gatedrnn.Recurrent(MGU, 3, 4, num_layers=2, bidirectional=True, bias=False)
    names = [n for n, _ in layer.named_parameters()]
    assert names == [
        "weight_ih_l0",
        "weight_hh_l0",
        "weight_ih_l0_reverse",
        "weight_hh_l0_reverse",
        "weight_ih_l1",
        "weight_hh_l1",
        "weight_ih_l1_reverse",
        "weight_hh_l1_reverse",
    ]
    assert layer.weight_ih_l1.shape == (8, 8) and layer.weight_hh_l0.shape == (8, 4)
    copy = gatedrnn.Recurrent("test-mgu", 3, 4, num_layers=2, bidirectional=True, bias=False)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(4, 2, 3)
    assert torch.equal(copy(x)[0], layer(x)[0])
    assert repr(layer) == "Recurrent('test-mgu', 3, 4, num_layers=2, bias=False, bidirectional=True)"
    assert "leak=0.1" in repr(gatedrnn.Recurrent("test-leaky-pair", 3, 4, leak=0.1))


def test_forget_bias_sets_any_familys_f_rows():
    layer = gatedrnn.Recurrent("test-mgu", 3, 4, forget_bias=2.0)
    assert torch.equal(layer.bias_ih_l0[:4], torch.full((4,), 2.0)) and not layer.bias_hh_l0[:4].any()
    with pytest.raises(ValueError, match="forget_bias=1.0 needs a forget gate 'f'.*has gates u"):
        gatedrnn.Recurrent("test-leaky-pair", 3, 4, forget_bias=1.0)


def test_builtin_families_through_recurrent_are_the_builtin_modules():
    for family, module, options in [
        ("lstm", gatedrnn.LSTM, dict(proj_size=2)),
        ("gru", gatedrnn.GRU, {}),
        ("rnn", gatedrnn.RNN, dict(nonlinearity="relu")),
    ]:
        torch.manual_seed(5)
        generic = gatedrnn.Recurrent(family, 3, 4, 2, **options)
        torch.manual_seed(5)
        builtin = module(3, 4, 2, **options)
        assert generic.state_dict().keys() == builtin.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(generic.parameters(), builtin.parameters()))
        x = torch.randn(5, 2, 3)
        assert torch.equal(generic(x)[0], builtin(x)[0])


def test_zoneout_acts_on_every_state_of_a_user_family():
    torch.manual_seed(6)
    layer = gatedrnn.Recurrent("test-leaky-pair", 3, 4, zoneout=1.0).train()
    x = torch.randn(5, 2, 3)
    h0, c0 = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    out, (h_n, c_n) = layer(x, (h0, c0))  # every unit keeps its value at every step
    assert torch.equal(h_n, h0) and torch.equal(c_n, c0)


def test_torch_compile_runs_a_user_family():
    torch.manual_seed(7)
    layer = gatedrnn.Recurrent("test-mgu", 3, 4)
    x = torch.randn(3, 2, 3)
    compiled = torch.compile(layer, backend="eager")
    assert rel_err(compiled(x)[0], layer(x)[0]) < 1e-12
