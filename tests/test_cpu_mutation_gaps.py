"""Cases of the CPU backend that a mutation test of ``tests/test_cpu_backend.py`` found unpinned:
each test here fails on a wrong backend that the rest of the suite passes.

- every sequence of a packed batch at least T - 1 steps long (the length mask must still act);
- more than two intra-op threads, each with a task of its own (the compiled loops' per-thread
  parameter-gradient sums must all be added);
- the padded steps of a layer run with lengths (``module.run_layers``, the backends' ``run_layer``):
  zero outputs, and a gradient arriving there reaches nothing, as the reference loop's contract
  says (a packed module output drops those steps, so the module tests cannot see them);
- every word that switches the compiled loops off (the documented ``0, false, no, off``).

Float64 against the reference loop, with the compiled loops and with the Python ones, through the
fixtures of ``test_cpu_backend`` (NaN-poisoned ``torch.empty``, one thread unless a test sets more,
a count of compiled passes).
"""

from __future__ import annotations

import pytest
import torch

import gatedrnn
from gatedrnn.backends.cpu import compiled
from gatedrnn.config import CellConfig
from helpers import rel_err
# the fixtures are autouse: importing them runs every test here with both loops, like test_cpu_backend's
from test_cpu_backend import (  # noqa: F401
    B, I, LENGTHS, T, _compare, _compiled_runs, _pair, _poison_empty_one_thread, _row_tasks, loop,
)

NEARLY_FULL = [
    pytest.param(gatedrnn.LSTM, dict(), id="lstm"),
    pytest.param(gatedrnn.LSTM, dict(variant="fgr", layer_norm=True, proj_size=2), id="lstm-fgr-ln-proj"),
    pytest.param(gatedrnn.GRU, dict(reset_after=True), id="gru-ra1"),
    pytest.param(gatedrnn.GRU, dict(reset_after=False, layer_norm=True), id="gru-ra0-ln"),
    pytest.param(gatedrnn.RNN, dict(nonlinearity="relu"), id="rnn-relu"),
]


@pytest.mark.parametrize("cls,kw", NEARLY_FULL)
def test_a_packed_batch_whose_shortest_sequence_is_one_step_short(cls, kw):
    """Lengths T and T - 1 only: the sequences one step short must stop there (final state, and
    the reverse direction starts at their own last step), though no sequence is shorter. The
    suite's other packed batches all have a sequence at most T - 2 long."""
    ref, fast = _pair(cls, kw, bidirectional=True, num_layers=2)
    _compare(ref, fast, lengths=True, hx=True, step_counts=[T, T - 1, T - 1, T])


THREADED = [
    pytest.param(gatedrnn.LSTM, dict(variant="peephole", layer_norm=True), id="lstm-peephole-ln"),
    pytest.param(gatedrnn.GRU, dict(reset_after=True, layer_norm=True), id="gru-ra1-ln"),
]


@pytest.mark.parametrize("cls,kw", THREADED)
def test_four_threads_each_with_its_own_rows(cls, kw):
    """Four intra-op threads, every step's rows split into four tasks (B = 100, H = 64): the
    compiled loops keep the layer-norm gains', shifts' and peepholes' gradients per thread and add
    them up after the loop; a sum that missed a thread past the second would pass every test run
    with two threads."""
    torch.set_num_threads(4)
    ref, fast = _pair(cls, kw, hidden=64, bidirectional=True)
    cfg = fast.cell_config
    row_size = 4 * 64 if cfg.family == "lstm" or cfg.reset_after else 3 * 64
    assert _row_tasks(100, row_size, torch.get_num_threads()) == 4
    _compare(ref, fast, lengths=False, hx=True, batch=100)


PADDED = [
    pytest.param(gatedrnn.LSTM, dict(variant="peephole", proj_size=2), id="lstm-peephole-proj"),
    pytest.param(gatedrnn.GRU, dict(reset_after=False), id="gru-ra0"),
    pytest.param(gatedrnn.RNN, dict(), id="rnn"),
]


@pytest.mark.parametrize("cls,kw", PADDED)
def test_a_layer_outputs_zeros_on_padded_steps_and_takes_no_gradient_there(cls, kw):
    """``run_layers`` with lengths, a loss weighting every step of the (T, B, D*R) output, padded
    ones included: the cpu backend's output, final states and gradients equal the reference's
    (whose padded outputs are constant zeros)."""
    ref, fast = _pair(cls, kw, bidirectional=True)
    x, lengths = torch.randn(T, B, I, dtype=torch.float64), torch.tensor(LENGTHS)
    states = tuple(torch.randn(2, B, s, dtype=torch.float64) for s in ref.cell_config.state_sizes)
    results = []
    for module, backend in ((fast, "cpu"), (ref, "reference")):
        leaf = x.clone().requires_grad_(True)
        out, finals, _ = module.run_layers(leaf, states, lengths, backend)
        gen = torch.Generator().manual_seed(3)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in (out, *finals))
        results.append([out, *finals, *torch.autograd.grad(loss, [leaf, *module.parameters()])])
    padded = torch.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    assert results[0][0][padded].abs().max() == 0, "padded steps should output zeros"
    for k, (a, b) in enumerate(zip(*results)):
        assert rel_err(a, b) < 1e-10, f"result {k}: rel err {rel_err(a, b)}"


@pytest.mark.parametrize("word", ["0", "false", "No", " off "])
def test_every_documented_word_switches_the_compiled_loops_off(monkeypatch, word):
    """GATEDRNN_CPU_COMPILED set to 0, false, no or off (any case, spaces around) runs the Python
    loops; other values keep the compiled ones where they are built."""
    cfg = CellConfig("lstm", I, 5)
    monkeypatch.setenv(compiled.ENV, word)
    assert compiled.disabled() and compiled.loop_for(cfg, torch.float64) is None
    monkeypatch.setenv(compiled.ENV, "1")
    assert not compiled.disabled()
