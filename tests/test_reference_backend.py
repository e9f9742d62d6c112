"""The reference loop runs every family, on every device: a user's family under torch.func transforms
and export, a backward linear in T, zeros on padded steps, and ``auto``'s choice of it for a family
no fused backend has a kernel for."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.func import functional_call

import gatedrnn
from gatedrnn.backends import choose
from gatedrnn.backends import reference as reference_backend
from gatedrnn.config import Noise
from helpers import random_projection, rel_err

I, H, T, B = 3, 5, 7, 4
LENGTHS = [7, 3, 1, 5]
DT = torch.float64


class MGU(gatedrnn.CellFamily):
    """The minimal gated unit (Zhou et al. 2016), as a user writes it:
    f = σ(W_f x + U_f h + b_f), n = tanh(W_n x + U_n (f ⊙ h) + b_n), h' = (1 - f) ⊙ h + f ⊙ n."""

    name = "reference-test-mgu"
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


def test_torch_func_grad_and_vmap():
    """torch.func.grad and vmap over a user family give autograd's numbers."""
    module = gatedrnn.Recurrent(MGU.name, I, H, dtype=DT)
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
    module = gatedrnn.Recurrent(MGU.name, I, H, num_layers=2).eval()
    program = torch.export.export(module, (torch.randn(T, B, I),))
    x = torch.randn(T, B, I)
    for ours, eager in zip(program.module()(x), module(x)):
        assert rel_err(ours, eager) < 1e-6


def test_the_backward_is_linear_in_time():
    """No step reads the projection by indexing it (each such select's backward would allocate and
    zero a whole (T, B, G*H) gradient: a backward quadratic in T); one unbind serves every step."""
    module = gatedrnn.Recurrent(MGU.name, I, H)
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


def test_auto_runs_a_new_family_on_the_reference_and_the_fused_backends_refuse_it(monkeypatch):
    """A family registered now has no kernel anywhere: auto runs it on the reference loop (no fused
    kernel runs), and naming the cpu or triton backend raises an error that names the family."""
    calls = []
    for backend in ("reference", "cpu", "triton"):
        module = importlib.import_module(f"gatedrnn.backends.{backend}")
        monkeypatch.setattr(
            module, "run_layer", lambda *a, _f=module.run_layer, _b=backend, **k: calls.append(_b) or _f(*a, **k)
        )
    module = gatedrnn.Recurrent(MGU.name, I, H, num_layers=2)
    x = torch.randn(T, B, I)
    assert choose("auto", module.cell_config, x, regularised=False) == "reference"
    module(x)[0].sum().backward()
    assert calls == ["reference", "reference"], calls
    for backend in ("cpu", "triton"):
        module.backend = backend
        with pytest.raises(ValueError, match=f"backend '{backend}' cannot run this layer: .*'{MGU.name}' family"):
            module(x)


def test_auto_keeps_the_fused_backend_for_a_built_in_variant_and_the_reference_under_transforms():
    cfg = gatedrnn.Recurrent("lstm", I, H, variant="peephole").cell_config
    x = torch.randn(T, B, I)
    assert choose("auto", cfg, x, regularised=False) == "cpu"
    chosen = []
    torch.func.vmap(
        lambda inp: chosen.append(choose("auto", cfg, inp.unsqueeze(1), regularised=False)) or inp, in_dims=1
    )(x)
    assert chosen == ["reference"]


@pytest.mark.parametrize("family,kw", [("lstm", dict(variant="fgr")), (MGU.name, {})], ids=["lstm-fgr", "mgu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_run_layer_outputs_zeros_on_padded_steps_and_no_gradient_from_them(family, kw, reverse):
    """One layer and direction called directly (the padded steps of a packed input are not visible
    through the module): zeros past each length, and the final state of each sequence's last step."""
    torch.manual_seed(0)
    module = gatedrnn.Recurrent(family, I, H, dtype=DT, **kw)
    cfg, weights = module.cell_config, module.layer_weights(0, 0)
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    state = tuple(torch.randn(B, s, dtype=DT) for s in cfg.state_sizes)
    keeps = [torch.rand(T, B, s, dtype=DT).lt(0.3).to(DT) for s in cfg.state_sizes]
    noise = Noise(torch.rand(B, cfg.output_size, dtype=DT) * 2, 0.3, *keeps[:2])
    lengths = torch.tensor(LENGTHS)
    out, final, _ = reference_backend.run_layer(cfg, x, state, weights, reverse=reverse, lengths=lengths, noise=noise)
    padded = torch.arange(T)[:, None] >= lengths
    assert (out[padded] == 0).all()
    (grad,) = torch.autograd.grad(random_projection([out, *final], seed=7), [x])
    assert (grad[padded] == 0).all()
    for b, n in enumerate(LENGTHS):  # each sequence alone, unpadded, ends in the same state
        alone = reference_backend.run_layer(
            cfg,
            x[:n, b : b + 1],
            tuple(s[b : b + 1] for s in state),
            weights,
            reverse=reverse,
            noise=Noise(noise.recurrent_mask[b : b + 1], 0.3, *(k[:n, b : b + 1] for k in keeps[:2])),
        )
        assert all(rel_err(f[b : b + 1], a) < 1e-12 for f, a in zip(final, alone[1]))
