"""The generic backend against the reference loop: outputs, final states and every gradient in
float64, for every built-in family configuration and a user's family; the transforms it runs
under; ``auto``'s choice of it.

Every buffer allocated with ``torch.empty`` starts as NaN here (torch's
``fill_uninitialized_memory`` under deterministic mode), so an element the backend forgets to
write fails.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn.backends import choose, generic
from gatedrnn.backends import reference as reference_backend
from gatedrnn.config import Noise
from helpers import random_projection, rel_err

I, H, T, B = 3, 5, 7, 4
LENGTHS = [7, 3, 1, 5]
DT = torch.float64


class MGU(gatedrnn.CellFamily):
    """The minimal gated unit (Zhou et al. 2016), as a user writes it:
    f = σ(W_f x + U_f h + b_f), n = tanh(W_n x + U_n (f ⊙ h) + b_n), h' = (1 - f) ⊙ h + f ⊙ n."""

    name = "generic-test-mgu"
    gates = ("f", "n")
    states = ("h",)

    def step(self, x_proj, states, weights):
        (h,) = states
        x_f, x_n = x_proj.split(self.hidden_size, dim=-1)
        u_f, u_n = weights["weight_hh"].split(self.hidden_size)
        b_f, b_n = weights["bias_hh"].split(self.hidden_size) if self.bias else (0.0, 0.0)
        f = torch.sigmoid(x_f + h @ u_f.T + b_f)
        n = torch.tanh(x_n + (f * h) @ u_n.T + b_n)
        return ((1 - f) * h + f * n,), {"f": f, "n": n}


@pytest.fixture(autouse=True)
def _mgu_registered():
    gatedrnn.register_family(MGU)
    yield
    gatedrnn.unregister_family(MGU.name)


@pytest.fixture(autouse=True)
def _poison_empty_one_thread():
    """Uninitialised memory reads as NaN for the duration of a test; one intra-op thread (tiny tensors)."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory,
                torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(previous[0])
    torch.utils.deterministic.fill_uninitialized_memory = previous[1]
    torch.set_num_threads(previous[2])


FAMILIES = [
    pytest.param("lstm", dict(), id="lstm"),
    pytest.param("lstm", dict(variant="fgr"), id="lstm-fgr"),
    pytest.param("lstm", dict(variant="peephole"), id="lstm-peephole"),
    pytest.param("lstm", dict(proj_size=2), id="lstm-proj"),
    pytest.param("lstm", dict(layer_norm=True), id="lstm-ln"),
    pytest.param("lstm", dict(variant="cifg", layer_norm=True, proj_size=3, bias=False), id="lstm-cifg-ln-proj-nobias"),
    pytest.param("gru", dict(), id="gru"),
    pytest.param("gru", dict(layer_norm=True), id="gru-ln"),
    pytest.param("gru", dict(reset_after=False), id="gru-ra0"),
    pytest.param("gru", dict(reset_after=False, layer_norm=True), id="gru-ra0-ln"),
    pytest.param("rnn", dict(), id="rnn-tanh"),
    pytest.param("rnn", dict(nonlinearity="relu"), id="rnn-relu"),
    pytest.param(MGU.name, dict(), id="mgu"),
    pytest.param(MGU.name, dict(bias=False), id="mgu-nobias"),
]


def _pair(family, kw, **layer):
    """(generic, reference) modules of one family with the same weights, float64."""
    torch.manual_seed(0)
    ours = gatedrnn.Recurrent(family, I, H, backend="generic", dtype=DT, **kw, **layer)
    ref = gatedrnn.Recurrent(family, I, H, backend="reference", dtype=DT, **kw, **layer)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _results(module, x, states, lengths, seed=3):
    """Outputs, final states and the gradients of a random projection of them at the input, the
    initial states and every parameter; the noise masks drawn from ``seed``."""
    leaves = [x.clone().requires_grad_(True), *(s.clone().requires_grad_(True) for s in states)]
    inp = leaves[0] if lengths is None else pack_padded_sequence(leaves[0], lengths, enforce_sorted=False)
    hx = tuple(leaves[1:])
    torch.manual_seed(seed)
    out, final = module(inp, hx if len(hx) > 1 else hx[0])
    outs = [out if lengths is None else out.data, *(final if isinstance(final, tuple) else (final,))]
    params = list(module.parameters())
    grads = torch.autograd.grad(random_projection(outs, seed=7), leaves + params, allow_unused=True)
    return [o.detach() for o in outs] + list(grads)


def _assert_same(module, ref, lengths, tol=1e-12):
    x = torch.randn(T, B, I, dtype=DT)
    LD = module.num_layers * module.num_directions
    states = [torch.randn(LD, B, s, dtype=DT) for s in module.cell_config.state_sizes]
    got, want = _results(module, x, states, lengths), _results(ref, x, states, lengths)
    names = ["output"] + [f"h_n[{k}]" for k in range(len(states))] + ["d input"]
    names += [f"d hx[{k}]" for k in range(len(states))] + [f"d {n}" for n, _ in module.named_parameters()]
    for name, a, b in zip(names, got, want, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            assert rel_err(a, b) < tol, f"{name}: rel err {rel_err(a, b)}"


@pytest.mark.parametrize("family,kw", FAMILIES)
def test_matches_the_reference_stacked_bidirectional_packed_with_noise(family, kw):
    """Two layers, both directions, packed sequences of unequal lengths, initial states, zoneout and
    recurrent dropout in training (the same masks for both modules)."""
    ours, ref = _pair(family, kw, num_layers=2, bidirectional=True, zoneout=0.3, recurrent_dropout=0.4)
    _assert_same(ours.train(), ref.train(), LENGTHS)


@pytest.mark.parametrize("family,kw", [FAMILIES[0], FAMILIES[7], FAMILIES[12]])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "packed"])
def test_zoneout_in_evaluation_and_one_direction(family, kw, lengths):
    """Evaluation's zoneout (the expectation, no masks), forward and reverse, padded or packed."""
    for bidirectional in (False, True):
        ours, ref = _pair(family, kw, bidirectional=bidirectional, zoneout=0.25, recurrent_dropout=0.5)
        _assert_same(ours.eval(), ref.eval(), lengths)


def test_gradcheck():
    """torch's own check, analytic against numerical, on a packed pair of sequences with noise."""
    torch.manual_seed(0)
    module = gatedrnn.Recurrent(MGU.name, 2, 3, bidirectional=True, zoneout=0.2, recurrent_dropout=0.3,
                                backend="generic", dtype=DT).train()
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=DT, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=DT, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def f(x, h0, *ps):
        torch.manual_seed(5)  # the same masks at every evaluation
        packed = pack_padded_sequence(x, [3, 2], enforce_sorted=False)
        out, h_n = functional_call(module, dict(zip(names, ps)), (packed, h0))
        return out.data, h_n

    assert gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def _gradient_penalty(module, x, h0):
    """First-order gradients with ``create_graph``, then the gradients of their squared norm."""
    leaves = [x.clone().requires_grad_(True), h0.clone().requires_grad_(True), *module.parameters()]
    packed = pack_padded_sequence(leaves[0], LENGTHS, enforce_sorted=False)
    torch.manual_seed(3)
    out, h_n = module(packed, leaves[1])
    first = torch.autograd.grad(random_projection([out.data, h_n], seed=7), leaves, create_graph=True)
    return torch.autograd.grad(sum(g.pow(2).sum() for g in first), leaves)


def test_second_derivatives_match_the_reference():
    """A gradient penalty through the recurrence (create_graph), packed, with noise, both directions."""
    ours, ref = _pair(MGU.name, {}, bidirectional=True, zoneout=0.3, recurrent_dropout=0.3)
    x, h0 = torch.randn(T, B, I, dtype=DT), torch.randn(2, B, H, dtype=DT)
    names = ["x", "h0"] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, _gradient_penalty(ours.train(), x, h0), _gradient_penalty(ref.train(), x, h0),
                          strict=True):
        assert rel_err(a, b) < 1e-12, name


def test_torch_func_grad_and_vmap():
    """torch.func.grad and vmap over a user family on the generic backend give autograd's numbers."""
    module = gatedrnn.Recurrent(MGU.name, I, H, backend="generic", dtype=DT)
    params = {n: p.detach() for n, p in module.named_parameters()}
    x = torch.randn(T, B, I, dtype=DT)

    def loss(p, inp):
        return functional_call(module, p, (inp,))[0].pow(2).sum()

    given = torch.func.grad(loss)(params, x)
    expected = torch.autograd.grad(loss(dict(module.named_parameters()), x), list(module.parameters()))
    assert all(rel_err(given[n], e) < 1e-12 for n, e in zip(params, expected))
    batched = torch.func.vmap(lambda inp: module(inp)[0], in_dims=1, out_dims=1)(x)
    assert rel_err(batched, module(x)[0]) < 1e-12


def test_torch_export():
    module = gatedrnn.Recurrent(MGU.name, I, H, num_layers=2, backend="generic").eval()
    program = torch.export.export(module, (torch.randn(T, B, I),))
    x = torch.randn(T, B, I)
    for ours, eager in zip(program.module()(x), module(x)):
        assert rel_err(ours, eager) < 1e-6


def test_the_backward_is_linear_in_time():
    """No step reads the projection by indexing it (each such select's backward would allocate and
    zero a whole (T, B, G*H) gradient: a backward quadratic in T); one unbind serves every step."""
    module = gatedrnn.Recurrent(MGU.name, I, H, backend="generic")
    out, _ = module(torch.randn(T, B, I))
    seen, todo, kinds = set(), [out.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kinds.append(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    assert "SelectBackward0" not in kinds and kinds.count("UnbindBackward0") == 1, sorted(set(kinds))


def test_auto_runs_a_new_family_on_generic_and_the_fused_backends_refuse_it(monkeypatch):
    """A family registered now has no kernel anywhere: auto runs it on the generic backend (no fused
    kernel runs), and naming the cpu or triton backend raises an error that names the family."""
    calls = []
    for backend in ("generic", "reference", "cpu", "triton"):
        module = importlib.import_module(f"gatedrnn.backends.{backend}")
        monkeypatch.setattr(module, "run_layer", lambda *a, _f=module.run_layer, _b=backend, **k:
                            calls.append(_b) or _f(*a, **k))
    module = gatedrnn.Recurrent(MGU.name, I, H, num_layers=2)
    x = torch.randn(T, B, I)
    assert choose("auto", module.cell_config, x, regularised=False) == "generic"
    module(x)[0].sum().backward()
    assert calls == ["generic", "generic"], calls
    for backend in ("cpu", "triton"):
        module.backend = backend
        with pytest.raises(ValueError, match=f"backend '{backend}' cannot run this layer: .*'{MGU.name}' family"):
            module(x)


def test_auto_keeps_the_fused_backend_for_a_built_in_variant_and_generic_under_transforms():
    cfg = gatedrnn.Recurrent("lstm", I, H, variant="peephole").cell_config
    x = torch.randn(T, B, I)
    assert choose("auto", cfg, x, regularised=False) == "cpu"
    chosen = []
    torch.func.vmap(lambda inp: chosen.append(choose("auto", cfg, inp.unsqueeze(1), regularised=False)) or inp,
                    in_dims=1)(x)
    assert chosen == ["generic"]


@pytest.mark.parametrize("family,kw", [FAMILIES[1], FAMILIES[12]])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_run_layer_outputs_zeros_on_padded_steps_as_the_reference_does(family, kw, reverse):
    """One layer and direction called directly (the padded steps of a packed input are not
    visible through the module): every step's output, zeros past each length, and the gradients."""
    torch.manual_seed(0)
    module = gatedrnn.Recurrent(family, I, H, dtype=DT, **kw)
    cfg, weights = module.cell_config, module.layer_weights(0, 0)
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    state = tuple(torch.randn(B, s, dtype=DT, requires_grad=True) for s in cfg.state_sizes)
    keeps = [torch.rand(T, B, s, dtype=DT).lt(0.3).to(DT) for s in cfg.state_sizes]
    noise = Noise(torch.rand(B, cfg.output_size, dtype=DT) * 2, 0.3, *keeps[:2])
    lengths = torch.tensor(LENGTHS)
    results = []
    for backend in (generic, reference_backend):
        out, final, _ = backend.run_layer(cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise)
        outs = [out, *final]
        grads = torch.autograd.grad(random_projection(outs, seed=7), [x, *state, *weights.values()])
        results.append([o.detach() for o in outs] + list(grads))
    assert (results[0][0][torch.arange(T)[:, None] >= lengths] == 0).all()
    for a, b in zip(*results, strict=True):
        assert rel_err(a, b) < 1e-12


def test_gate_recording_and_an_empty_batch_run_on_the_reference():
    torch.manual_seed(0)
    module = gatedrnn.Recurrent(MGU.name, I, H, dtype=DT)
    cfg, weights = module.cell_config, module.layer_weights(0, 0)
    for batch, record in ((B, True), (0, False)):
        x, state = torch.randn(T, batch, I, dtype=DT), (torch.randn(batch, H, dtype=DT),)
        got = generic.run_layer(cfg, x, state, weights, record=record)
        want = reference_backend.run_layer(cfg, x, state, weights, record=record)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1][0], want[1][0])
        assert (got[2] is None) == (want[2] is None)
        if record:
            assert all(torch.equal(got[2][k], want[2][k]) for k in want[2])
