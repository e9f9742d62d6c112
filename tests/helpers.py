"""What several test files share: relative errors, a random scalar loss, gradient collection, a
run's metrics."""

from __future__ import annotations

import json

import torch
from torch.nn.utils.rnn import PackedSequence


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are zero); NaN anywhere gives inf."""
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if torch.isnan(a).any() or torch.isnan(b).any():
        return float("inf")
    denom = b.norm().item()
    diff = (a - b).norm().item()
    return diff if denom == 0 else diff / denom


def flatten_result(result):
    """(output, state) as returned by a layer -> list of tensors."""
    output, state = result
    out = output.data if isinstance(output, PackedSequence) else output
    states = list(state) if isinstance(state, tuple) else [state]
    return [out] + states


def random_projection(tensors, seed: int) -> torch.Tensor:
    """sum_k <t_k, r_k> with r_k ~ N(0, 1) drawn from a generator seeded ``seed``: a scalar loss
    whose gradient reaches every element of every tensor with its own weight."""
    gen = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in tensors)


def run_and_grad(module, make_input, hx=None):
    """Forward, a fixed random-weighted scalar loss over every output, backward.

    Returns (outputs, grads) where grads maps "input", "hx<k>" and each parameter name to its gradient.
    """
    module.zero_grad(set_to_none=True)
    leaf, model_input = make_input()
    hx_leaves = None
    if hx is not None:
        hx_leaves = tuple(h.detach().clone().requires_grad_(True) for h in hx)
    arg = None if hx_leaves is None else (hx_leaves if len(hx_leaves) > 1 else hx_leaves[0])
    outs = flatten_result(module(model_input, arg))
    random_projection(outs, seed=1234).backward()
    grads = {"input": leaf.grad}
    if hx_leaves is not None:
        grads.update({f"hx{k}": h.grad for k, h in enumerate(hx_leaves)})
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return [o.detach() for o in outs], grads


def assert_close_results(a, b, tol=1e-10):
    outs_a, grads_a = a
    outs_b, grads_b = b
    for k, (x, y) in enumerate(zip(outs_a, outs_b)):
        assert rel_err(x, y) < tol, f"output {k}: rel err {rel_err(x, y)}"
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        ga, gb = grads_a[name], grads_b[name]
        if ga is None or gb is None:
            assert ga is None and gb is None, f"gradient {name}: one side missing"
            continue
        assert rel_err(ga, gb) < tol, f"gradient {name}: rel err {rel_err(ga, gb)}"


def metrics_records(out) -> list[dict]:
    """The records of a run directory's ``metrics.jsonl``, one dict per line."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def layer_run_and_grad(backend, cfg, x, state, weights, seed=1234, **kwargs):
    """One layer and direction, ``backend.run_layer(cfg, x, state, weights, **kwargs)``, and the
    gradients of a fixed random-weighted scalar loss over its output and final states.

    Returns (outputs, grads): [output, *final states] and the gradients with respect to x, each
    initial state and each weight, in that order (zeros for one the loss does not reach)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *state, *weights.values())]
    n = len(state)
    states, layer_weights = tuple(leaves[1 : 1 + n]), dict(zip(weights, leaves[1 + n :]))
    out, final, _ = backend.run_layer(cfg, leaves[0], states, layer_weights, **kwargs)
    outs = [out, *final]
    grads = torch.autograd.grad(random_projection(outs, seed), leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]
    return [o.detach() for o in outs], grads


def assert_close_lists(a, b, tol=1e-10, what="tensor"):
    """Each tensor of the list ``a`` within ``tol`` relative error of the same one of ``b``."""
    assert len(a) == len(b), f"{len(a)} {what}s against {len(b)}"
    for k, (x, y) in enumerate(zip(a, b)):
        assert rel_err(x, y) < tol, f"{what} {k}: rel err {rel_err(x, y)}"
