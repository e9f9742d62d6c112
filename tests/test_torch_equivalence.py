"""gatedrnn's default modules are torch.nn's: same parameters, same numbers, same gradients (float64)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from helpers import assert_close_results, rel_err, run_and_grad

FAMILIES = {"LSTM": (gatedrnn.LSTM, nn.LSTM), "GRU": (gatedrnn.GRU, nn.GRU), "RNN": (gatedrnn.RNN, nn.RNN)}


def _configs(n=28, seed=7):
    """A seeded random sample of layer configurations across every switch."""
    rng = random.Random(seed)
    space = list(
        itertools.product(
            FAMILIES,
            (1, 2),
            (False, True),
            (0, 2),
            (False, True),
            ("padded", "packed", "unsorted", "unbatched"),
            (False, True),
            (False, True),
        )
    )
    picked = rng.sample(space, n)
    configs = []
    for family, layers, bidir, proj, batch_first, layout, with_hx, bias in picked:
        kw = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias)
        if family == "LSTM":
            kw["proj_size"] = proj
        if family == "RNN":
            kw["nonlinearity"] = rng.choice(["tanh", "relu"])
        configs.append(
            pytest.param(
                family,
                kw,
                layout,
                with_hx,
                id=f"{family}-{layout}-hx{int(with_hx)}-" + "-".join(f"{k}{v}" for k, v in kw.items()),
            )
        )
    return configs


def _pair(family, kw, I=5, H=7):
    ours_cls, theirs_cls = FAMILIES[family]
    theirs = theirs_cls(I, H, **kw, dtype=torch.float64)
    ours = ours_cls(I, H, **kw, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _input_maker(layout, batch_first, T=9, B=4, I=5):
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([9, 3, 6, 1][:B])

    def make():
        leaf = x.clone().requires_grad_(True)
        if layout == "unbatched":
            return leaf, leaf[:, 0]
        if layout in ("packed", "unsorted"):
            lens = lengths if layout == "unsorted" else lengths.sort(descending=True).values
            return leaf, pack_padded_sequence(leaf, lens, enforce_sorted=layout == "packed")
        return leaf, leaf.transpose(0, 1) if batch_first else leaf

    return make


def _initial_state(module, layout, B=4):
    LD = module.num_layers * (2 if module.bidirectional else 1)
    sizes = module.cell_config.state_sizes
    shape = (lambda s: (LD, s)) if layout == "unbatched" else (lambda s: (LD, B, s))
    return tuple(torch.randn(shape(s), dtype=torch.float64) for s in sizes)


@pytest.mark.parametrize("family,kw,layout,with_hx", _configs())
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_outputs_and_all_gradients_equal_torch(family, kw, layout, with_hx, backend):
    ours, theirs = _pair(family, kw)
    ours.backend = backend
    make = _input_maker(layout, kw["batch_first"])
    hx = _initial_state(ours, layout) if with_hx else None
    assert_close_results(run_and_grad(ours, make, hx), run_and_grad(theirs, make, hx))


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_loads_strictly_both_ways_and_same_seed_gives_same_weights(family):
    ours_cls, theirs_cls = FAMILIES[family]
    kw = dict(num_layers=2, bidirectional=True) | ({"proj_size": 3} if family == "LSTM" else {})
    torch.manual_seed(3)
    theirs = theirs_cls(4, 6, **kw)
    torch.manual_seed(3)
    ours = ours_cls(4, 6, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.shape == b.shape and torch.equal(a, b), name
    fresh = ours_cls(4, 6, **kw)
    fresh.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours_cls(4, 6, **kw).state_dict(), strict=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_positional_arguments_match_torch(family):
    ours_cls, theirs_cls = FAMILIES[family]
    args = (3, 5, 2, "relu", False, True, 0.0, True) if family == "RNN" else (3, 5, 2, False, True, 0.0, True)
    ours, theirs = ours_cls(*args), theirs_cls(*args)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert repr(ours) == repr(theirs).replace("torch.nn", "gatedrnn")


@pytest.mark.parametrize("family", ["LSTM", "GRU"])
def test_dropout_between_layers_only_in_training(family):
    ours, theirs = _pair(family, dict(num_layers=3, dropout=0.5))
    ours.backend = "reference"
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    ours.eval(), theirs.eval()
    assert rel_err(ours(x)[0], theirs(x)[0]) < 1e-12
    ours.train()
    a, b = ours(x)[0], ours(x)[0]
    assert not torch.equal(a, b), "training-mode dropout should draw new masks each call"


@pytest.mark.parametrize(
    "cls,tcls,kw",
    [
        (gatedrnn.LSTMCell, nn.LSTMCell, {}),
        (gatedrnn.GRUCell, nn.GRUCell, {}),
        (gatedrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
        (gatedrnn.LSTMCell, nn.LSTMCell, {"bias": False}),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("batched", [True, False])
def test_cells_equal_torch(cls, tcls, kw, backend, batched):
    torch.manual_seed(5)
    theirs = tcls(4, 6, **kw, dtype=torch.float64)
    torch.manual_seed(5)
    ours = cls(4, 6, **kw, dtype=torch.float64, backend=backend)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(3, 4, dtype=torch.float64) if batched else torch.randn(4, dtype=torch.float64)
    states = [
        torch.randn(x.shape[:-1] + (6,), dtype=torch.float64) for _ in range(2 if cls is gatedrnn.LSTMCell else 1)
    ]
    results = []
    for module in (ours, theirs):
        xs = x.clone().requires_grad_(True)
        hs = [s.clone().requires_grad_(True) for s in states]
        out = module(xs, tuple(hs) if len(hs) == 2 else hs[0])
        outs = list(out) if isinstance(out, tuple) else [out]
        sum((o * (k + 1.5)).sin().sum() for k, o in enumerate(outs)).backward()
        results.append((outs, [xs.grad] + [h.grad for h in hs] + [p.grad for p in module.parameters()]))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        assert rel_err(a, b) < 1e-10


def test_default_module_uses_torch_kernels_and_variants_do_not():
    from gatedrnn.backends import choose

    x = torch.randn(3, 2, 4)
    assert choose("auto", gatedrnn.LSTM(4, 5).cell_config, x, False) == "torch"
    assert choose("auto", gatedrnn.GRU(4, 5).cell_config, x, False) == "torch"
    assert choose("auto", gatedrnn.LSTM(4, 5, variant="peephole").cell_config, x, False) != "torch"
    assert choose("auto", gatedrnn.GRU(4, 5, reset_after=False).cell_config, x, False) != "torch"
    assert choose("auto", gatedrnn.LSTM(4, 5).cell_config, x, True) != "torch"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_packed_batch_reaches_torchs_kernel_unpadded(family, monkeypatch):
    """On torch's kernels a packed input goes in packed, as in torch.nn: padding it first (which
    only the time loops need) cost up to 6% of the call. The lengths and batch sizes the other
    backends take from it agree with pad_packed_sequence's."""
    from torch.nn.utils.rnn import pad_packed_sequence

    import gatedrnn.nn as gnn

    pads = []
    monkeypatch.setattr(gnn, "pad_packed_sequence", lambda *a, **k: pads.append(1) or pad_packed_sequence(*a, **k))
    torch.manual_seed(0)
    ours, theirs = getattr(gatedrnn, family)(3, 4, backend="torch"), getattr(nn, family)(3, 4)
    theirs.load_state_dict(ours.state_dict())
    lengths = [5, 2, 7, 7]
    packed = pack_padded_sequence(torch.randn(7, 4, 3), lengths, enforce_sorted=False)
    got, want = ours(packed), theirs(packed)
    assert pads == []
    assert torch.equal(got[0].data, want[0].data)
    prep = ours._prepare(packed)
    assert torch.equal(prep.lengths, torch.tensor(lengths)) and prep.ragged and prep.like.shape == (7, 4, 3)
    assert torch.equal(prep.x, pad_packed_sequence(packed)[0])
    assert not ours._prepare(pack_padded_sequence(torch.randn(7, 4, 3), [7] * 4)).ragged


@pytest.mark.parametrize("kw", [{}, {"variant": "peephole"}], ids=["vanilla", "peephole"])
def test_torch_compile_gives_the_eager_numbers_and_gradients(kw):
    module = gatedrnn.LSTM(4, 6, num_layers=2, dtype=torch.float64, **kw)
    x = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager")
    out_c = compiled(x)[0]
    (gx_c,) = torch.autograd.grad(out_c.sum(), x)
    out_e = module(x)[0]
    (gx_e,) = torch.autograd.grad(out_e.sum(), x)
    assert rel_err(out_c, out_e) < 1e-12 and rel_err(gx_c, gx_e) < 1e-12


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_dropout_leaves_the_last_layers_output_alone(backend):
    """torch.nn drops out between layers only: with dropout=1 in training the second layer sees
    zeros, yet its output is not dropped and equals torch.nn's (which the torch path alone was
    compared with: the time-loop backends' dropout was only checked to be random)."""
    ours, theirs = _pair("LSTM", dict(num_layers=2, dropout=1.0))
    ours.backend = backend
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    (a, (ha, ca)), (b, (hb, cb)) = ours.train()(x), theirs.train()(x)
    assert (b != 0).all()
    assert rel_err(a, b) < 1e-12 and rel_err(ha, hb) < 1e-12 and rel_err(ca, cb) < 1e-12
