"""Cases of the task generators and criteria that a mutation review of ``tests/test_tasks.py`` found
unpinned: each test here fails on a wrong task that the rest of the suite passes.

- the ranges the 1997 paper draws from are reached at both ends: every length in [T, T + T/10],
  every slot of the first adding mark (one of the first ten pairs), every position of the
  temporal-order windows, every distractor symbol, every copy data symbol, Reber strings exactly
  ``seq_len`` long;
- each task's published tolerance (0.04 for the adding and multiplication problems, 0.2 for
  two-sequence and task 2c, 0.25 for task 2a, 0.3 for temporal order), and "below" / "at least"
  taken strictly / inclusively at an exactly representable boundary;
- the shared machinery: "every output within tolerance" for a regression head of more than one
  output, arg-max classification, ``test_batches`` giving exactly ``test_size`` sequences,
  ``Batch.to`` keeping the lengths, zero padding in every padded task, ties not counting as
  "most active" on the Reber grammar;
- sizes and limits the docstrings state: task 2c's default p = q, copy's 9 output classes, the
  digits' train/test split and sampling, the shortest lengths each task accepts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gatedrnn.tasks import Batch, LastStepRegression, make_task
from gatedrnn.tasks.base import Task
from gatedrnn.tasks.digits import TEST_IMAGES, load_digits
from test_tasks import SMALL, gen, last_step_output, real_steps

RANDOM_LENGTH = ["two-sequence", "adding", "multiplication", "order-6a", "order-6b"]
"""Tasks whose length is random in [T, T + T/10] (the paper's rule for experiments 3 to 6)."""


def target_prob_logits(targets: torch.Tensor, classes: int, prob: float) -> torch.Tensor:
    """Logits (..., classes) whose softmax puts ``prob`` on each target id, ``1 - prob`` on one
    other class and (numerically) nothing elsewhere: every output's error is ``1 - prob``."""
    logits = torch.full((*targets.shape, classes), -1e4)
    logits.scatter_(-1, targets.unsqueeze(-1), math.log(prob / (1 - prob)))
    logits.scatter_(-1, ((targets + 1) % classes).unsqueeze(-1), 0.0)
    return logits


@pytest.mark.parametrize("name", RANDOM_LENGTH)
def test_every_length_from_T_to_T_plus_T_over_10_occurs(name):
    """Lengths are drawn from {T, ..., T + T // 10}, both ends included (not T + T/10 - 1)."""
    T = 30
    lengths = make_task(name, seq_len=T).sample(2000, gen()).lengths
    assert set(lengths.tolist()) == set(range(T, T + T // 10 + 1))


def test_adding_mark_positions_follow_the_1997_scheme():
    """The first mark is uniform over the first ten pairs and the second over the first T/2 - 1
    others, so P(mark at j) = 1/10 + (9/10) / (T/2 - 1) for j < 10 and 1 / (T/2 - 1) for
    10 <= j < T/2, 0 beyond (a first mark that never reaches pair 9 fails at j = 9)."""
    T, n = 100, 20000
    marker = make_task("adding", seq_len=T).sample(n, gen()).inputs[..., 1]
    freq = (marker == 1).float().mean(0)  # (L_max,) fraction of sequences marked at j
    slots = T // 2 - 1
    expected = torch.zeros_like(freq)
    expected[:10] = 0.1 + 0.9 / slots
    expected[10:T // 2] = 1 / slots
    sigma = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * sigma).all()


@pytest.mark.parametrize("name, T, tolerance", [("adding", 30, 0.04), ("multiplication", 30, 0.04),
                                                ("adding-modern", 30, 0.04), ("two-sequence", 30, 0.2)])
def test_regression_criterion_uses_the_published_tolerance(name, T, tolerance):
    """A sequence is correct when the absolute error at its end is below the paper's tolerance:
    ``tolerance - 0.002`` off is correct, ``tolerance + 0.002`` off is not."""
    task = make_task(name, seq_len=T)
    batch = task.sample(4, gen())
    offsets = torch.tensor([[tolerance - 0.002], [-(tolerance - 0.002)], [tolerance + 0.002], [-(tolerance + 0.002)]])
    ok = task.correct(last_step_output(batch, batch.targets + offsets, 1), batch)
    assert ok.tolist() == [True, True, False, False]


@pytest.mark.parametrize("name, tolerance", [("lag-2c", 0.2), ("order-6a", 0.3), ("order-6b", 0.3)])
def test_class_criterion_uses_the_published_tolerance(name, tolerance):
    """Every softmax output within the paper's tolerance of the one-hot target at the last step:
    an error of ``tolerance - 0.005`` is correct, ``tolerance + 0.005`` is not."""
    task = make_task(name, seq_len=SMALL[name] if name == "lag-2c" else 100)
    batch = task.sample(6, gen())
    for error, expected in [(tolerance - 0.005, True), (tolerance + 0.005, False)]:
        logits = target_prob_logits(batch.targets, task.output_size, 1 - error)
        assert task.correct(last_step_output(batch, logits, task.output_size), batch).tolist() == [expected] * 6


def test_lag_2a_criterion_uses_the_published_tolerance_0_25():
    """Task 2a: the maximal absolute error of all outputs below 0.25 at every step; one step of
    one sequence with error 0.245 is still correct, with 0.255 it is not."""
    p = 12
    task = make_task("lag-2a", seq_len=p)
    batch = next(task.test_batches(gen(), 2))
    for error, expected in [(0.245, [True, True]), (0.255, [False, True])]:
        output = F.one_hot(batch.targets, p + 1).float() * 20
        output[0, 3] = target_prob_logits(batch.targets[0, 3], p + 1, 1 - error)
        assert task.correct(output, batch).tolist() == expected


def test_below_and_at_least_are_strict_and_inclusive_at_exact_boundaries():
    """"Below" excludes the boundary and "at least" includes it, at values that are exact in
    binary: an error of exactly the tolerance is wrong, an accuracy of exactly the threshold is
    solved, a wrong fraction or an MSE exactly at the threshold is not solved."""
    regression = make_task("adding", seq_len=30, tolerance=0.25)
    batch = regression.sample(2, gen())
    half = Batch(batch.inputs, torch.full((2, 1), 0.5), batch.lengths)
    out = last_step_output(half, torch.tensor([[0.75], [0.7]]), 1)  # errors 0.25 (exact) and 0.05
    assert regression.correct(out, half).tolist() == [False, True]
    lag = make_task("lag-2c", seq_len=12, tolerance=0.5)
    coin = lag.sample(3, gen())
    assert not lag.correct(torch.zeros(3, coin.inputs.shape[1], 2), coin).any()  # softmax 0.5: error 0.5
    assert not make_task("multiplication", seq_len=30, wrong_fraction=0.5).solved(0.0, 0.5)
    assert not make_task("adding-modern", seq_len=30, solved_mse=0.5).solved(0.5, 1.0)
    assert make_task("copy", seq_len=10, solved_accuracy=0.5).solved(0.0, 0.5)
    assert make_task("digits", solved_accuracy=0.5).solved(0.0, 0.5)


def test_digits_default_success_is_90_percent_and_correct_is_the_arg_max():
    """Digits: solved at test accuracy 0.9 (not below), and a sequence is correct exactly when the
    arg-max of the last step's logits is the label."""
    task = make_task("digits")
    assert task.solved(0.0, 0.9) and not task.solved(0.0, 0.89)
    batch = task.sample(200, gen())
    logits = torch.randn(200, 64, 10, generator=gen(3))
    assert torch.equal(task.correct(logits, batch), logits[:, -1].argmax(-1) == batch.targets)
    assert task.correct(last_step_output(batch, F.one_hot(batch.targets, 10).float(), 10), batch).all()


def test_digits_training_draws_are_the_first_1500_images_all_of_them():
    """The training split is the first 1797 - 297 images: every training draw is one of them, and
    enough draws reach each one (the last included); the held-out images are never drawn."""
    task = make_task("digits")
    images, _ = load_digits()
    train = {tuple(r) for r in images[:-TEST_IMAGES].tolist()}
    test_only = {tuple(r) for r in images[-TEST_IMAGES:].tolist()} - train
    assert test_only  # the check below can see a held-out image
    drawn = {tuple(r) for r in task.sample(30_000, gen()).inputs[..., 0].tolist()}
    assert drawn == train and not drawn & test_only


def test_regression_correct_needs_every_output_within_tolerance():
    """LastStepRegression (public): with more than one output, a sequence is correct only when
    every output, not just the best one, is within the tolerance."""

    class TwoOutputs(LastStepRegression):
        name, reference, tolerance = "two-outputs", "this test", 0.1
        seq_len, input_size, output_size = 3, 1, 2

        def sample(self, batch_size, generator, split="train"):
            return Batch(torch.zeros(batch_size, 3, 1), torch.zeros(batch_size, 2))

    task = TwoOutputs()
    batch = task.sample(2, gen())
    out = last_step_output(batch, torch.tensor([[0.05, 0.5], [0.05, -0.05]]), 2)
    assert task.correct(out, batch).tolist() == [False, True]


@pytest.mark.parametrize("name", ["reber", "lag-2c", "two-sequence", "adding", "order-6a", "adding-modern", "copy"])
def test_test_batches_give_exactly_test_size_sequences(name):
    """The generated test set is ``test_size`` sequences even when the batch size does not divide
    it (the last batch is smaller)."""
    task = make_task(name, seq_len=SMALL[name])
    assert type(task).test_batches is Task.test_batches
    sizes = [len(b) for b in task.test_batches(gen(), 300)]
    assert sum(sizes) == task.test_size and max(sizes) <= 300


def test_batch_to_keeps_the_lengths():
    """Batch.to moves the lengths with the tensors instead of dropping them (a padded batch without
    lengths would be scored at the padding)."""
    batch = make_task("adding", seq_len=30).sample(5, gen())
    moved = batch.to("cpu")
    assert moved.lengths is not None and torch.equal(moved.lengths, batch.lengths)


@pytest.mark.parametrize("name", ["reber", "lag-2c", "two-sequence", "adding", "multiplication", "order-6a", "order-6b"])
def test_padding_after_each_sequence_is_zero(name):
    """Every padded task pads with zero inputs (no symbol, no value), as adding and task 2c do."""
    task = make_task(name, seq_len=SMALL[name])
    batch = task.sample(200, gen())
    assert batch.lengths is not None and batch.lengths.unique().numel() > 1
    for b in range(len(batch)):
        assert (batch.inputs[b, real_steps(batch, b):] == 0).all()


def test_reber_counts_a_tie_as_not_most_active():
    """Reber: the allowed symbols must be strictly the most active; a constant output (every unit
    tied) says nothing about the next symbol and is not correct."""
    task = make_task("reber")
    batch = task.sample(20, gen())
    assert not task.correct(torch.zeros(20, batch.inputs.shape[1], 7), batch).any()


def test_reber_keeps_strings_exactly_seq_len_long():
    """``seq_len`` bounds the string length inclusively: at 10, both the 9-symbol and the
    10-symbol embedded strings occur (inputs are one shorter)."""
    lengths = make_task("reber", seq_len=10).sample(300, gen()).lengths
    assert set((lengths + 1).tolist()) == {9, 10}


@pytest.mark.parametrize("name, windows", [("order-6a", [(10, 20), (50, 60)]),
                                           ("order-6b", [(10, 20), (33, 43), (66, 76)])])
def test_temporal_order_windows_and_distractors_are_reached_at_both_ends(name, windows):
    """Each relevant position is uniform over its whole window, ends included, and every one of
    the four distractors a, b, c, d occurs."""
    batch = make_task(name, seq_len=100).sample(2000, gen())
    ids = batch.inputs.argmax(-1)
    relevant = (ids == 4) | (ids == 5)
    for lo, hi in windows:
        hit = relevant[:, lo:hi + 1].nonzero()[:, 1] + lo
        assert set(hit.tolist()) == set(range(lo, hi + 1))
    assert set(ids[:, 1:99][~relevant[:, 1:99]].tolist()) == {0, 1, 2, 3}  # before any trigger


def test_lag_2c_uses_every_distractor_and_p_defaults_to_q():
    """Task 2c: distractors are uniform over all p symbols a_1..a_p (ids 0..p-1), and p = q
    unless given (I = q + 4)."""
    q, p = 12, 20
    batch = make_task("lag-2c", seq_len=q, distractors=p).sample(500, gen())
    ids = batch.inputs.argmax(-1)
    middle = torch.cat([ids[i, 2:int(batch.lengths[i]) - 1] for i in range(len(batch))])
    assert set(middle.tolist()) == set(range(p))
    default = make_task("lag-2c", seq_len=q)
    assert default.distractors == q and default.input_size == q + 4


def test_copy_uses_all_eight_symbols_nine_outputs_and_checks_all_ten():
    """Copy: data symbols are uniform over 1..8, the head has 9 outputs (blank and the eight data
    symbols), and one wrong symbol anywhere among the ten recalled makes the sequence wrong."""
    task = make_task("copy", seq_len=10)
    batch = task.sample(100, gen())
    assert set(batch.targets[:, -10:].flatten().tolist()) == set(range(1, 9))
    assert (task.input_size, task.output_size) == (10, 9)
    perfect = F.one_hot(batch.targets, 9).float() * 10
    for t in range(10):
        wrong = perfect.clone()
        wrong[0, -10 + t] = wrong[0, -10 + t].roll(1)
        assert task.correct(wrong, batch).tolist() == [False] + [True] * 99


@pytest.mark.parametrize("name, accepted, refused", [
    ("adding", dict(seq_len=22), dict(seq_len=21)), ("multiplication", dict(seq_len=22), dict(seq_len=21)),
    ("order-6a", dict(seq_len=20), dict(seq_len=19)), ("reber", dict(seq_len=9), dict(seq_len=8)),
    ("two-sequence", dict(seq_len=30, info=30), dict(seq_len=30, info=31))])
def test_shortest_accepted_sizes(name, accepted, refused):
    """The documented limits: adding and multiplication need T >= 22, temporal order T >= 20,
    Reber seq_len >= 9, two-sequence N <= T; one step beyond is refused with a message naming it."""
    make_task(name, **accepted).sample(2, gen())
    key = "info" if "info" in refused else "seq_len"
    with pytest.raises(ValueError, match=f"{key}.*{'at most' if key == 'info' else 'at least'}"):
        make_task(name, **refused)
