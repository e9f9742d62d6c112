"""Each task's generator against its published definition: shapes, markers, target formula,
loss, per-sequence criterion, success rule, baselines and seeding. The ranges a paper draws from
are reached at both ends, each criterion uses the published tolerance, and "below" / "at least"
are strict / inclusive at an exactly representable boundary."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from gatedrnn.tasks import Batch, LastStepRegression, make_task, task_names, task_options
from gatedrnn.tasks.base import Task
from gatedrnn.tasks.digits import TEST_IMAGES, load_digits
from gatedrnn.tasks.formal import band_name, length_bands
from gatedrnn.tasks.reber import SYMBOLS as REBER_SYMBOLS
from gatedrnn.tasks.temporal_order import SYMBOLS as ORDER_SYMBOLS

PAPER_1997 = {"reber", "lag-2a", "lag-2c", "two-sequence", "adding", "multiplication", "order-6a", "order-6b"}
MODERN = {"adding-modern", "copy", "digits", "digits-permuted"}
FORMAL = {"parity", "modular-arithmetic"}
SMALL = {
    "reber": 40,
    "lag-2a": 12,
    "lag-2c": 12,
    "two-sequence": 30,
    "adding": 30,
    "multiplication": 30,
    "order-6a": 40,
    "order-6b": 40,
    "adding-modern": 30,
    "copy": 15,
    "digits": 64,
    "digits-permuted": 64,
    "parity": 6,
    "modular-arithmetic": 9,
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_batch_equal(a: Batch, b: Batch) -> None:
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert (a.lengths is None) == (b.lengths is None)
    if a.lengths is not None:
        assert torch.equal(a.lengths, b.lengths)


def test_registry_has_every_experiment():
    assert PAPER_1997 | MODERN | FORMAL <= set(task_names())


def test_unknown_task_and_option_name_the_choices():
    with pytest.raises(ValueError, match="unknown task 'nope'.*adding"):
        make_task("nope")
    with pytest.raises(ValueError, match="no option bogus.*tolerance"):
        make_task("adding", bogus=1)


@pytest.mark.parametrize("name", sorted(PAPER_1997 | MODERN | FORMAL))
def test_every_task_takes_seq_len_and_rejects_non_positive(name):
    assert "seq_len" in task_options(name)
    with pytest.raises(ValueError, match="seq_len"):
        make_task(name, seq_len=0)


def real_options() -> list[tuple[str, str]]:
    """(task, option) for every real-valued option of every registered task (``last_weight``
    defaults to None, meaning p - 1)."""
    return [
        (name, key)
        for name in task_names()
        for key, default in task_options(name).items()
        if isinstance(default, float) or key == "last_weight"
    ]


FRACTIONS = {
    ("copy", "solved_accuracy"),
    ("digits", "solved_accuracy"),
    ("digits-permuted", "solved_accuracy"),
    ("order-6a", "tolerance"),
    ("order-6b", "tolerance"),
    ("lag-2c", "tolerance"),
    ("parity", "solved_accuracy"),
    ("modular-arithmetic", "solved_accuracy"),
}
"""Options that are a fraction in (0, 1]: an accuracy, or a tolerance on softmax outputs."""


def test_the_real_options_checked_below_are_every_tasks_thresholds():
    assert {
        ("two-sequence", "variance"),
        ("adding", "tolerance"),
        ("copy", "solved_accuracy"),
        ("charlm", "valid_fraction"),
        ("lag-2a", "last_weight"),
    } <= set(real_options())
    assert FRACTIONS <= set(real_options())


ZERO_OK = {("two-sequence", "variance")}
"""Options that may be 0: the noise of a noise-free control."""


@pytest.mark.parametrize("name, key", real_options(), ids=[f"{n}-{k}" for n, k in real_options()])
@pytest.mark.parametrize("value", [-1.0, 0.0, math.nan, math.inf, "0.5", True], ids=repr)
def test_real_options_reject_non_positive_nan_inf_and_non_numbers(name, key, value):
    if value == 0.0 and (name, key) in ZERO_OK:
        assert getattr(make_task(name, **{key: value}), "std" if key == "variance" else key) == 0.0
        return
    with pytest.raises(
        ValueError, match=f"task '{name}': {key} must be (a positive finite number|a finite number >= 0|in \\()"
    ):
        make_task(name, **{key: value})


@pytest.mark.parametrize("name, key", sorted(FRACTIONS))
def test_fraction_options_take_one_and_reject_more(name, key):
    assert getattr(make_task(name, **{key: 1.0}), key) == 1.0
    with pytest.raises(ValueError, match=re.escape(f"task '{name}': {key} must be in (0, 1], got 5.0")):
        make_task(name, **{key: 5.0})


def test_option_errors_say_what_was_expected_and_what_was_given():
    with pytest.raises(
        ValueError, match=re.escape("task 'two-sequence': variance must be a finite number >= 0, got -1.0")
    ):
        make_task("two-sequence", variance=-1.0)
    with pytest.raises(ValueError, match=re.escape("task 'charlm': valid_fraction must be in (0, 0.5), got 0.5")):
        make_task("charlm", valid_fraction=0.5)
    assert make_task("two-sequence", variance=4).std == 2.0  # an int is a number too
    assert make_task("lag-2a", seq_len=12).last_weight == 11.0


@pytest.mark.parametrize(
    "opt, message",
    [
        ("variance=-1", "task 'two-sequence': variance must be a finite number >= 0, got -1.0"),
        ("variance=nan", "task 'two-sequence': variance must be a finite number >= 0, got nan"),
        ("tolerance=inf", "task 'two-sequence': tolerance must be a positive finite number, got inf"),
    ],
)
def test_cli_reports_a_bad_task_option_value_in_one_line(opt, message, tmp_path, capsys):
    from gatedrnn.cli import main

    argv = [
        "train",
        "--task",
        "two-sequence",
        "--seq-len",
        "10",
        "--steps",
        "2",
        "--hidden",
        "8",
        "--batch",
        "4",
        "--task-opt",
        opt,
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(PAPER_1997 | MODERN | FORMAL))
def test_shapes_seeding_loss_and_criterion_types(name):
    task = make_task(name, seq_len=SMALL[name])
    batch = task.sample(6, gen(1))
    assert_batch_equal(batch, task.sample(6, gen(1)))
    other = task.sample(6, gen(2))
    assert not (
        batch.inputs.shape == other.inputs.shape and torch.equal(batch.inputs, other.inputs)
    ) or not torch.equal(batch.targets, other.targets)
    steps = batch.inputs.shape[1]
    assert batch.inputs.shape == (6, steps, task.input_size) and batch.inputs.dtype == torch.float32
    if batch.lengths is not None:
        assert batch.lengths.shape == (6,) and int(batch.lengths.max()) == steps
    output = torch.randn(6, steps, task.output_size, requires_grad=True)
    loss = task.loss(output, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert output.grad.abs().sum() > 0
    ok = task.correct(output.detach(), batch)
    assert ok.shape == (6,) and ok.dtype == torch.bool
    assert set(task.describe()) >= {"name", "seq_len", "input_size", "output_size"}


def real_steps(batch: Batch, b: int) -> int:
    return int(batch.lengths[b]) if batch.lengths is not None else batch.inputs.shape[1]


def last_step_output(batch: Batch, value: torch.Tensor, size: int) -> torch.Tensor:
    """(B, T, O) output that is ``value`` (B, O) at each sequence's last real step, 0 elsewhere."""
    out = torch.zeros(len(batch), batch.inputs.shape[1], size)
    for b in range(len(batch)):
        out[b, real_steps(batch, b) - 1] = value[b]
    return out


def target_prob_logits(targets: torch.Tensor, classes: int, prob: float) -> torch.Tensor:
    """Logits (..., classes) whose softmax puts ``prob`` on each target id, ``1 - prob`` on one
    other class and (numerically) nothing elsewhere: every output's error is ``1 - prob``."""
    logits = torch.full((*targets.shape, classes), -1e4)
    logits.scatter_(-1, targets.unsqueeze(-1), math.log(prob / (1 - prob)))
    logits.scatter_(-1, ((targets + 1) % classes).unsqueeze(-1), 0.0)
    return logits


RANDOM_LENGTH = ["two-sequence", "adding", "multiplication", "order-6a", "order-6b"]
"""Tasks whose length is random in [T, T + T/10] (the paper's rule for experiments 3 to 6)."""


@pytest.mark.parametrize("name", RANDOM_LENGTH)
def test_every_length_from_T_to_T_plus_T_over_10_occurs(name):
    """Lengths are drawn from {T, ..., T + T // 10}, both ends included (not T + T/10 - 1)."""
    T = 30
    lengths = make_task(name, seq_len=T).sample(2000, gen()).lengths
    assert set(lengths.tolist()) == set(range(T, T + T // 10 + 1))


@pytest.mark.parametrize(
    "name, T, tolerance",
    [("adding", 30, 0.04), ("multiplication", 30, 0.04), ("adding-modern", 30, 0.04), ("two-sequence", 30, 0.2)],
)
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


def test_below_and_at_least_are_strict_and_inclusive_at_exact_boundaries():
    """ "Below" excludes the boundary and "at least" includes it, at values that are exact in
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


@pytest.mark.parametrize(
    "name", ["reber", "lag-2c", "two-sequence", "adding", "multiplication", "order-6a", "order-6b"]
)
def test_padding_after_each_sequence_is_zero(name):
    """Every padded task pads with zero inputs (no symbol, no value), as adding and task 2c do."""
    task = make_task(name, seq_len=SMALL[name])
    batch = task.sample(200, gen())
    assert batch.lengths is not None and batch.lengths.unique().numel() > 1
    for b in range(len(batch)):
        assert (batch.inputs[b, real_steps(batch, b) :] == 0).all()


@pytest.mark.parametrize(
    "name, accepted, refused",
    [
        ("adding", dict(seq_len=22), dict(seq_len=21)),
        ("multiplication", dict(seq_len=22), dict(seq_len=21)),
        ("order-6a", dict(seq_len=20), dict(seq_len=19)),
        ("reber", dict(seq_len=9), dict(seq_len=8)),
        ("two-sequence", dict(seq_len=30, info=30), dict(seq_len=30, info=31)),
    ],
)
def test_shortest_accepted_sizes(name, accepted, refused):
    """The documented limits: adding and multiplication need T >= 22, temporal order T >= 20,
    Reber seq_len >= 9, two-sequence N <= T; one step beyond is refused with a message naming it."""
    make_task(name, **accepted).sample(2, gen())
    key = "info" if "info" in refused else "seq_len"
    with pytest.raises(ValueError, match=f"{key}.*{'at most' if key == 'info' else 'at least'}"):
        make_task(name, **refused)


@pytest.mark.parametrize("T", [22, 100, 131])
def test_adding_1997_marking_scheme_and_target(T):
    task = make_task("adding", seq_len=T)
    batch = task.sample(400, gen(T))
    values, marker = batch.inputs[..., 0], batch.inputs[..., 1]
    assert ((batch.lengths >= T) & (batch.lengths <= T + T // 10)).all()
    assert batch.lengths.unique().numel() > 1 or T < 30
    for b in range(len(batch)):
        n = int(batch.lengths[b])
        marks = (marker[b] == 1).nonzero().flatten()
        assert len(marks) == 2
        assert min(marks) < 10 and max(marks) < T // 2
        assert marker[b, n - 1] == -1 and (marker[b, 0] == -1 or 0 in marks.tolist())
        assert (marker[b, 1 : n - 1].abs() == (marker[b, 1 : n - 1] == 1).float()).all()  # only 0 and the marks
        assert (values[b, n:] == 0).all() and (marker[b, n:] == 0).all()
        assert values[b, :n].min() >= -1 and values[b, :n].max() <= 1
        if 0 in marks.tolist():
            assert values[b, 0] == 0  # "X1 is set to zero" when the first pair is marked
        x1, x2 = values[b, marks]
        assert torch.isclose(batch.targets[b, 0], 0.5 + (x1 + x2) / 4)
    assert batch.targets.shape == (400, 1)


def test_adding_1997_criterion_is_absolute_error_below_004():
    task = make_task("adding", seq_len=30)
    batch = task.sample(4, gen())
    offsets = torch.tensor([[0.0], [0.039], [-0.041], [0.5]])
    ok = task.correct(last_step_output(batch, batch.targets + offsets, 1), batch)
    assert ok.tolist() == [True, True, False, False]
    assert task.solved(0.0, 1.0, abs_error=0.0) and not task.solved(0.0, 2559 / 2560, abs_error=0.0)


@pytest.mark.parametrize("name", ["adding", "multiplication"])
def test_1997_marked_baseline_is_the_best_constant_predictors_mse(name):
    task = make_task(name, seq_len=24)
    targets = task.sample(100_000, gen()).targets
    assert task.baseline == pytest.approx(float(targets.var()), rel=0.02)


def test_adding_1997_second_mark_reaches_every_allowed_slot():
    task = make_task("adding", seq_len=22)  # marks in {0..9} and {0..10}
    marker = task.sample(3000, gen()).inputs[..., 1]
    positions = set((marker == 1).nonzero()[:, 1].tolist())
    assert positions == set(range(11))


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
    expected[10 : T // 2] = 1 / slots
    sigma = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * sigma).all()


def test_multiplication_target_is_product_of_values_in_0_1():
    task = make_task("multiplication", seq_len=40)
    batch = task.sample(300, gen())
    values, marker = batch.inputs[..., 0], batch.inputs[..., 1]
    real = torch.arange(values.shape[1]) < batch.lengths.view(-1, 1)
    assert values[real].min() >= 0 and values[real].max() <= 1
    for b in range(len(batch)):
        marks = (marker[b] == 1).nonzero().flatten()
        x = values[b, marks]
        if 0 in marks.tolist():
            assert values[b, 0] == 1.0  # the neutral element of the product
        assert torch.isclose(batch.targets[b, 0], x[0] * x[1])
    # the paper's stopping rule, n_seq = 140 of 2000 sequences off by more than 0.04: below 7% wrong
    assert task.solved(0.0, 1 - 139 / 2000, abs_error=0.05) and not task.solved(0.0, 1 - 140 / 2000, abs_error=0.01)
    strict = make_task("multiplication", seq_len=40, wrong_fraction=13 / 2000)
    assert strict.solved(0.0, 1 - 12 / 2000) and not strict.solved(0.0, 1 - 139 / 2000)


def test_modern_adding_definition_and_baseline():
    task = make_task("adding-modern", seq_len=50)
    batch = task.sample(20000, gen())
    values, marker = batch.inputs[..., 0], batch.inputs[..., 1]
    assert batch.inputs.shape == (20000, 50, 2) and batch.lengths is None
    assert (marker.sum(1) == 2).all() and set(marker.unique().tolist()) == {0.0, 1.0}
    assert values.min() >= 0 and values.max() <= 1
    assert torch.allclose(batch.targets[:, 0], (values * marker).sum(1))
    # Always predicting 1 scores Var(X1 + X2) = 1/6.
    ones = torch.ones(20000, 50, 1)
    assert task.baseline == pytest.approx(1 / 6)
    assert float(task.loss(ones, batch)) == pytest.approx(1 / 6, abs=0.005)
    assert not task.solved(0.0011, 1.0) and task.solved(0.0009, 0.0)
    first_positions = marker.argmax(1)
    assert first_positions.float().mean() < 25  # both markers anywhere, the first one early on average


@pytest.mark.parametrize("T", [1, 30, 100])
def test_copy_memory_layout(T):
    task = make_task("copy", seq_len=T)
    batch = task.sample(50, gen())
    ids = batch.inputs.argmax(-1)
    assert batch.inputs.shape == (50, T + 20, 10) and batch.targets.shape == (50, T + 20)
    data = ids[:, :10]
    assert ((data >= 1) & (data <= 8)).all()
    assert (ids[:, 10 : T + 9] == 0).all() and (ids[:, T + 9] == 9).all() and (ids[:, T + 10 :] == 0).all()
    assert (batch.targets[:, : T + 10] == 0).all() and torch.equal(batch.targets[:, T + 10 :], data)


@pytest.mark.parametrize("T", [10, 100])
def test_copy_memoryless_baseline_is_10_ln8_over_T_plus_20(T):
    task = make_task("copy", seq_len=T)
    batch = task.sample(64, gen())
    # Blank with certainty for T + 10 steps, then uniform over the 8 data symbols.
    out = torch.full((64, T + 20, 9), -1e4)
    out[:, : T + 10, 0] = 0.0
    out[:, T + 10 :, 1:] = 0.0
    assert task.baseline == pytest.approx(10 * math.log(8) / (T + 20))
    assert float(task.loss(out, batch)) == pytest.approx(task.baseline, rel=1e-5)
    perfect = F.one_hot(batch.targets, 9).float() * 10
    assert task.correct(perfect, batch).all()
    perfect[0, -1] = perfect[0, -1].roll(1)
    assert task.correct(perfect, batch).tolist() == [False] + [True] * 63


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


def test_lag_2a_two_sequences_and_next_symbol_targets():
    p = 12
    task = make_task("lag-2a", seq_len=p)
    batch = task.sample(200, gen())
    ids = batch.inputs.argmax(-1)
    assert batch.inputs.shape == (200, p, p + 1) and batch.targets.shape == (200, p)
    assert set(ids[:, 0].tolist()) == {p - 1, p}  # x and y both occur
    assert (ids[:, 1:] == torch.arange(p - 1)).all()  # a_1 .. a_{p-1}
    assert torch.equal(batch.targets[:, :-1], ids[:, 1:]) and torch.equal(batch.targets[:, -1], ids[:, 0])
    test = list(task.test_batches(gen(), 100))
    assert len(test) == 1 and sorted(test[0].targets[:, -1].tolist()) == [p - 1, p]
    perfect = F.one_hot(batch.targets, p + 1).float() * 20
    assert task.correct(perfect, batch).all()
    perfect[:, -1] = perfect[:, -1].flip(-1)
    assert not task.correct(perfect, batch).any()


def test_lag_2a_counts_a_sequence_correct_only_within_0_25_at_every_step():
    """The paper's criterion: every output unit within 0.25 of the target at every step, not just
    the right arg-max (a softmax of 0.6 on the right symbol is still wrong)."""
    p = 12
    task = make_task("lag-2a", seq_len=p)
    batch = next(task.test_batches(gen(), 2))
    output = F.one_hot(batch.targets, p + 1).float() * 20
    unsure = torch.full((p + 1,), -20.0)
    unsure[batch.targets[0, 3]], unsure[0 if batch.targets[0, 3] else 1] = 0.4, 0.0  # softmax 0.6 / 0.4
    output[0, 3] = unsure
    assert output[0, 3].argmax() == batch.targets[0, 3]
    assert task.correct(output, batch).tolist() == [False, True]
    assert make_task("lag-2a", seq_len=p, tolerance=0.5).correct(output, batch).tolist() == [True, True]
    with pytest.raises(ValueError, match=r"tolerance must be in \(0, 1\], got 1.5"):
        make_task("lag-2a", seq_len=p, tolerance=1.5)


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


def test_lag_2a_loss_weighs_the_long_lag_prediction_like_all_the_others_together():
    p = 12
    task = make_task("lag-2a", seq_len=p)
    batch = next(task.test_batches(gen(), 2))
    # every deterministic prediction certain and right, the last one a coin flip between x and y
    output = F.one_hot(batch.targets, p + 1).float() * 1e4
    output[:, -1] = -1e4
    output[:, -1, [p - 1, p]] = 0.0
    last = math.log(2.0)
    assert task.last_weight == p - 1
    assert task.loss(output, batch).item() == pytest.approx(last * (p - 1) / (2 * (p - 1)))
    plain = make_task("lag-2a", seq_len=p, last_weight=1)
    assert plain.loss(output, batch).item() == pytest.approx(last / p)
    assert plain.loss(output, batch).item() == pytest.approx(
        F.cross_entropy(output.flatten(0, 1), batch.targets.flatten()).item()
    )
    with pytest.raises(ValueError, match="last_weight must be a positive finite number, got 0"):
        make_task("lag-2a", seq_len=p, last_weight=0)


def test_lag_2c_structure_and_length_distribution():
    q, p = 12, 20
    task = make_task("lag-2c", seq_len=q, distractors=p)
    batch = task.sample(4000, gen())
    e, b_sym, x = p, p + 1, p + 2
    ids = batch.inputs.argmax(-1)
    assert task.input_size == p + 4 and task.output_size == 2
    assert (batch.lengths >= q + 3).all()
    for i in range(50):
        n = int(batch.lengths[i])
        assert ids[i, 0] == b_sym and ids[i, 1] == x + batch.targets[i] and ids[i, n - 1] == e
        assert (ids[i, 2 : n - 1] < p).all()
        assert batch.inputs[i, n:].abs().sum() == 0
    extra = (batch.lengths - q - 3).float()
    assert float(extra.mean()) == pytest.approx(9.0, abs=0.5)  # P(k) = 0.1 * 0.9^k
    assert float((extra == 0).float().mean()) == pytest.approx(0.1, abs=0.02)
    assert set(batch.targets.tolist()) == {0, 1}
    logits = torch.zeros(4000, batch.inputs.shape[1], 2)
    good = last_step_output(batch, F.one_hot(batch.targets, 2).float() * 3.0, 2)  # softmax 0.95 / 0.05
    assert task.correct(good, batch).all()
    assert not task.correct(logits, batch).any()  # 0.5 / 0.5 is off by 0.5 > 0.2


def test_lag_2c_uses_every_distractor_and_p_defaults_to_q():
    """Task 2c: distractors are uniform over all p symbols a_1..a_p (ids 0..p-1), and p = q
    unless given (I = q + 4)."""
    q, p = 12, 20
    batch = make_task("lag-2c", seq_len=q, distractors=p).sample(500, gen())
    ids = batch.inputs.argmax(-1)
    middle = torch.cat([ids[i, 2 : int(batch.lengths[i]) - 1] for i in range(len(batch))])
    assert set(middle.tolist()) == set(range(p))
    default = make_task("lag-2c", seq_len=q)
    assert default.distractors == q and default.input_size == q + 4


def test_two_sequence_definition():
    T, N = 60, 3
    task = make_task("two-sequence", seq_len=T, info=N)
    batch = task.sample(3000, gen())
    x = batch.inputs[..., 0]
    assert ((batch.lengths >= T) & (batch.lengths <= T + T // 10)).all()
    sign = 2 * batch.targets - 1  # class 1 -> +1, class 2 -> -1
    assert torch.equal(x[:, :N], sign.expand(-1, N))
    noise = torch.cat([x[i, N : int(batch.lengths[i])] for i in range(len(batch))])
    assert float(noise.var()) == pytest.approx(0.2, rel=0.05) and abs(float(noise.mean())) < 0.01
    assert set(batch.targets.flatten().tolist()) == {0.0, 1.0}
    assert task.solved(0.0, 1.0, abs_error=0.009)
    assert not task.solved(0.0, 1.0, abs_error=0.011) and not task.solved(0.0, 0.99, abs_error=0.0)


def reber_valid(string: str) -> bool:
    """An independent check of the embedded Reber grammar: the outer frame, then the inner string
    run through the Reber automaton (Cleeremans et al. 1989, fig. 1)."""
    edges = {0: {"T": 1, "P": 2}, 1: {"S": 1, "X": 3}, 2: {"T": 2, "V": 4}, 3: {"X": 2, "S": 5}, 4: {"P": 3, "V": 5}}
    if len(string) < 9 or string[0] != "B" or string[1] not in "TP" or string[-2] != string[1] or string[-1] != "E":
        return False
    body = string[2:-2]
    if body[0] != "B" or body[-1] != "E":
        return False
    state = 0
    for c in body[1:-1]:
        if state == 5 or c not in edges[state]:
            return False
        state = edges[state][c]
    return state == 5


def test_embedded_reber_strings_are_grammatical_and_legal_sets_are_right():
    task = make_task("reber")
    batch = task.sample(300, gen())
    assert task.input_size == task.output_size == 7
    steps = batch.inputs.shape[1]
    assert batch.targets.shape == (300, steps, 8)
    seen_second = set()
    for b in range(len(batch)):
        n = int(batch.lengths[b])
        string = (
            "".join(REBER_SYMBOLS[i] for i in batch.inputs[b, :n].argmax(-1))
            + REBER_SYMBOLS[batch.targets[b, n - 1, 0]]
        )
        assert reber_valid(string), string
        seen_second.add(string[1])
        legal = batch.targets[b, :n, 1:].bool()
        assert legal[torch.arange(n), batch.targets[b, :n, 0]].all()  # the real next symbol is legal
        assert legal[n - 2].sum() == 1 and REBER_SYMBOLS[int(legal[n - 2].float().argmax())] == string[1]
        assert (batch.targets[b, n:, 0] == -100).all()
    assert seen_second == {"T", "P"}
    perfect = batch.targets[..., 1:].float()
    assert task.correct(perfect, batch).all()
    wrong = perfect.clone()
    n0 = int(batch.lengths[0])
    wrong[0, n0 - 2] = 1.0 - wrong[0, n0 - 2]  # the long-lag prediction gets it backwards
    assert task.correct(wrong, batch).tolist() == [False] + [True] * 299


def test_reber_seq_len_bounds_string_length():
    task = make_task("reber", seq_len=12)
    batch = task.sample(50, gen())
    assert int(batch.lengths.max()) + 1 <= 12


def test_reber_keeps_strings_exactly_seq_len_long():
    """``seq_len`` bounds the string length inclusively: at 10, both the 9-symbol and the
    10-symbol embedded strings occur (inputs are one shorter)."""
    lengths = make_task("reber", seq_len=10).sample(300, gen()).lengths
    assert set((lengths + 1).tolist()) == {9, 10}


def test_reber_counts_a_tie_as_not_most_active():
    """Reber: the allowed symbols must be strictly the most active; a constant output (every unit
    tied) says nothing about the next symbol and is not correct."""
    task = make_task("reber")
    batch = task.sample(20, gen())
    assert not task.correct(torch.zeros(20, batch.inputs.shape[1], 7), batch).any()


@pytest.mark.parametrize(
    "name, windows", [("order-6a", [(10, 20), (50, 60)]), ("order-6b", [(10, 20), (33, 43), (66, 76)])]
)
def test_temporal_order_definition(name, windows):
    task = make_task(name, seq_len=100)
    batch = task.sample(500, gen())
    ids = batch.inputs.argmax(-1)
    assert task.input_size == 8 and task.output_size == 2 ** len(windows)
    assert ((batch.lengths >= 100) & (batch.lengths <= 110)).all()
    x_id = ORDER_SYMBOLS.index("X")
    for b in range(len(batch)):
        n = int(batch.lengths[b])
        assert ids[b, 0] == ORDER_SYMBOLS.index("start") and ids[b, n - 1] == ORDER_SYMBOLS.index("trigger")
        where = ((ids[b, :n] == x_id) | (ids[b, :n] == x_id + 1)).nonzero().flatten().tolist()
        assert len(where) == len(windows)
        assert all(lo <= t <= hi for t, (lo, hi) in zip(where, windows))
        assert ids[b, 1 : n - 1][(ids[b, 1 : n - 1] < 4)].numel() == n - 2 - len(windows)
        bits = [int(ids[b, t] == x_id + 1) for t in where]
        assert int(batch.targets[b]) == int("".join(map(str, bits)), 2)  # XX -> Q=0, XY -> R=1, ...
    assert set(batch.targets.tolist()) == set(range(2 ** len(windows)))
    # Correct: every softmax output within 0.3 of the one-hot target.
    out = last_step_output(batch, F.one_hot(batch.targets, task.output_size).float() * 5, task.output_size)
    assert task.correct(out, batch).all()
    assert not task.correct(last_step_output(batch, torch.zeros(500, task.output_size), task.output_size), batch).any()


@pytest.mark.parametrize(
    "name, windows", [("order-6a", [(10, 20), (50, 60)]), ("order-6b", [(10, 20), (33, 43), (66, 76)])]
)
def test_temporal_order_windows_and_distractors_are_reached_at_both_ends(name, windows):
    """Each relevant position is uniform over its whole window, ends included, and every one of
    the four distractors a, b, c, d occurs."""
    batch = make_task(name, seq_len=100).sample(2000, gen())
    ids = batch.inputs.argmax(-1)
    relevant = (ids == 4) | (ids == 5)
    for lo, hi in windows:
        hit = relevant[:, lo : hi + 1].nonzero()[:, 1] + lo
        assert set(hit.tolist()) == set(range(lo, hi + 1))
    assert set(ids[:, 1:99][~relevant[:, 1:99]].tolist()) == {0, 1, 2, 3}  # before any trigger


def test_digits_sequential_and_permuted():
    seq, perm = make_task("digits"), make_task("digits-permuted")
    a, b = seq.sample(30, gen()), perm.sample(30, gen())
    assert a.inputs.shape == (30, 64, 1) and a.targets.dtype == torch.int64
    assert a.inputs.min() >= 0 and a.inputs.max() <= 1 and set(a.targets.tolist()) <= set(range(10))
    assert torch.equal(a.targets, b.targets)
    # One fixed permutation of the same pixels for every image (and for every task instance).
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(order, torch.arange(64))
    assert torch.equal(b.inputs, a.inputs[:, order])
    assert torch.equal(make_task("digits-permuted").sample(30, gen()).inputs, b.inputs)
    test = list(seq.test_batches(gen(), 100))
    assert sum(len(t) for t in test) == 297
    assert torch.equal(
        torch.cat([t.targets for t in test]), torch.cat([t.targets for t in seq.test_batches(gen(5), 297)])
    )
    with pytest.raises(ValueError, match="fixed at 64"):
        make_task("digits", seq_len=63)


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


MOD_SYMBOLS = "01234+-*_"
"""Modular arithmetic's symbols by id (mod 5), as the reference code numbers them."""


def decode(batch: Batch, b: int, symbols: str) -> str:
    """Sequence ``b`` of a formal-language batch as text, the query step checked and dropped."""
    steps = real_steps(batch, b)
    ids = batch.inputs[b, :steps].argmax(-1).tolist()
    assert ids[-1] == len(symbols) and (batch.inputs[b, :steps].sum(-1) == 1).all()
    assert (batch.inputs[b, steps:] == 0).all()
    return "".join(symbols[i] for i in ids[:-1])


def test_parity_labels_are_the_count_of_ones_mod_2():
    """Class 1 exactly when a string has an odd number of 1s, at training and test lengths."""
    task = make_task("parity")
    for batch in [task.sample(64, gen(1)), task.sample(64, gen(2), split="test")]:
        for b in range(len(batch)):
            text = decode(batch, b, "01")
            assert set(text) <= {"0", "1"} and len(text) == int(batch.targets[b, 1])
            assert int(batch.targets[b, 0]) == text.count("1") % 2


def test_modular_arithmetic_labels_are_the_expression_value_mod_5():
    """The label is Python's value of the expression (``*`` before ``+`` and ``-``, left to right)
    mod 5; a drawn even length L gives L - 1 symbols (the reference code's rule)."""
    task = make_task("modular-arithmetic", per_length=1)
    batches = [task.sample(64, gen(1)), task.sample(64, gen(2), split="test"), *task.test_batches(gen(3), 400)]
    labels = []
    for batch in batches:
        for b in range(len(batch)):
            text, drawn = decode(batch, b, MOD_SYMBOLS), int(batch.targets[b, 1])
            assert len(text) == drawn - (drawn % 2 == 0)
            assert re.fullmatch(r"[0-4]([-+*][0-4])*", text), text
            assert int(batch.targets[b, 0]) == eval(text) % 5  # only digits and + - *, checked above
            labels.append(int(batch.targets[b, 0]))
    assert set(labels) == set(range(5))


def test_modular_arithmetic_examples_of_the_reference_code():
    """The reference's docstring examples mod 5: 1 + 2 * 3 = 2, 1 - 1 - 1 = 4, 0 * 1 + 4 * 3 - 2 = 0."""
    from gatedrnn.tasks.formal import MINUS, PLUS, TIMES, evaluate_expression

    numbers = torch.tensor([[1, 2, 3, 0, 0], [1, 1, 1, 0, 0], [0, 1, 4, 3, 2]])
    operators = torch.tensor([[PLUS, TIMES, PLUS, PLUS], [MINUS, MINUS, PLUS, PLUS], [TIMES, PLUS, TIMES, MINUS]])
    assert evaluate_expression(numbers, operators, 5).tolist() == [2, 4, 0]


@pytest.mark.parametrize("name, lengths", [("parity", range(1, 41)), ("modular-arithmetic", range(1, 41, 2))])
def test_formal_training_lengths_are_uniform_up_to_40_one_per_batch(name, lengths):
    """Training batches hold one length each, drawn from 1..40 (odd ones for arithmetic), all reached."""
    task = make_task(name)
    generator, seen = gen(), []
    for _ in range(600):
        batch = task.sample(3, generator)
        assert batch.lengths is None and len(set(batch.targets[:, 1].tolist())) == 1
        seen.append(batch.inputs.shape[1] - 1)
    assert set(seen) == set(lengths)


@pytest.mark.parametrize("name", sorted(FORMAL))
def test_formal_test_set_is_per_length_strings_of_every_length_in_bands(name):
    """The test set: ``per_length`` strings of each length 1..test_max, shortest first, the same
    for the same seed; bands split it at the training length and at each multiple of 100."""
    task = make_task(name, per_length=3)
    assert task.test_size == 1500
    assert [band_name(b) for b in task.bands] == [
        "acc_1_40",
        "acc_41_100",
        "acc_101_200",
        "acc_201_300",
        "acc_301_400",
        "acc_401_500",
    ]
    batches = list(task.test_batches(gen(4), 256))
    drawn = torch.cat([b.targets[:, 1] for b in batches])
    assert torch.equal(drawn, torch.arange(1, 501).repeat_interleave(3))
    again = torch.cat([b.targets for b in task.test_batches(gen(4), 256)])
    assert torch.equal(torch.cat([b.targets for b in batches]), again)
    assert length_bands(12, 250) == [(1, 12), (13, 100), (101, 200), (201, 250)]
    assert length_bands(100, 150) == [(1, 100), (101, 150)]


def test_formal_band_measures_average_to_each_bands_accuracy_and_the_score():
    """Averaged over the test set as training's ``evaluate`` does, the measures are the accuracy
    within each band and the mean accuracy over the lengths above 40 (the paper's score); solved
    is a score of at least ``solved_accuracy``."""
    task = make_task("parity", test_max=150, per_length=2)
    sums, total, by_length = {}, 0, {}
    for batch in task.test_batches(gen(), 64):
        length = batch.targets[:, 1]
        right = length % 3 != 0  # answer right exactly at the lengths not divisible by 3
        answer = torch.where(right, batch.targets[:, 0], 1 - batch.targets[:, 0])
        output = last_step_output(batch, F.one_hot(answer, 2).float(), 2)
        assert torch.equal(task.correct(output, batch), right)
        for key, value in task.measures(output, batch).items():
            sums[key] = sums.get(key, 0.0) + float(value.sum())
        total += len(batch)
        by_length.update({int(n): bool(r) for n, r in zip(length, right)})
    means = {k: v / total for k, v in sums.items()}

    def accuracy(first, last):
        return sum(by_length[n] for n in range(first, last + 1)) / (last - first + 1)

    expected = {"acc_1_40": accuracy(1, 40), "acc_41_100": accuracy(41, 100), "acc_101_150": accuracy(101, 150)}
    assert means == pytest.approx({**expected, "score": accuracy(41, 150)})
    assert task.solved(0.0, 0.0, score=0.9) and not task.solved(0.0, 1.0, score=0.89)


def test_formal_sizes_are_checked():
    with pytest.raises(ValueError, match="test_max must exceed seq_len.*test_max=40, seq_len=40"):
        make_task("parity", test_max=40)
    with pytest.raises(ValueError, match="modulus must be at least 2, got 1"):
        make_task("modular-arithmetic", modulus=1)
    task = make_task("modular-arithmetic", modulus=7)
    assert (task.input_size, task.output_size, task.chance) == (12, 7, 1 / 7)
    assert make_task("parity").baseline == pytest.approx(math.log(2))


def test_one_hot_codes_ids_and_zeros_the_padding():
    """The local coding equals torch's one_hot in float32, with zero rows where ``active`` is False."""
    from gatedrnn.tasks.base import one_hot, step_mask

    ids = torch.randint(7, (3, 5), generator=torch.Generator().manual_seed(0))
    active = step_mask(torch.tensor([5, 2, 4]), 3, 5)
    expected = F.one_hot(ids, 7).float()
    assert torch.equal(one_hot(ids, 7), expected) and one_hot(ids, 7).dtype == torch.float32
    assert torch.equal(one_hot(ids, 7, active), expected * active.unsqueeze(-1))
    assert one_hot(ids, 7, active)[1, 2:].abs().sum() == 0
