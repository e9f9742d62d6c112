"""Promises of the training and persistence side that a mutation review of ``tests/test_train.py``,
``test_cli.py`` and ``test_evaluation.py`` found unpinned: each test here fails on a changed
``train.py``, ``checkpoint.py``, ``saved.py``, ``evaluation.py``, ``cli.py``, ``reproduce.py`` or
``models.py`` that the rest of the suite passes.

- the test metrics are the task's criterion over the whole test set of seed ``s + TEST_SEED_OFFSET``
  (the loss weighted by batch size, the count of wrong sequences, the means of the measures), and
  evaluation leaves the model in the mode it found it in;
- the first optimiser steps are Adam on the seeded data with the clip, as a plain loop writes them;
  the loss average, the metrics lines, ``train_loss``, ``solved_step`` and the seconds of a resumed run;
- a resume refuses every setting outside ``RESUMABLE_CHANGES``; ``TrainConfig.validate`` refuses
  each bad field itself (the CLI's parsers hide it);
- unreadable checkpoint steps and ``extra`` dicts, exported configs without their sections, rebuilt
  models in eval mode, the task options an evaluation keeps;
- ``compare``'s cells and LSTM-only flags, task options spelt with dashes, the reproduce table's
  budgets, rows, seeds and cells.

Tiny runs (adding-modern at T=12, 8 units) on the CPU, like ``test_train``'s.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

from gatedrnn import checkpoint, reproduce, saved
from gatedrnn.cli import build_parser, config_from_args, main, parse_task_options
from gatedrnn.evaluation import evaluate_saved
from gatedrnn.models import ModelConfig, SequenceModel, model_for_task
from gatedrnn.tasks import Batch, make_task
from gatedrnn.train import (
    TEST_SEED_OFFSET, ConfigError, TrainConfig, build_model, build_task, comparison_table, evaluate,
    refuse_to_replace, train,
)
from test_cli import metrics_records, one_error_line
from test_train import tiny_config


@pytest.mark.parametrize("mode", [True, False], ids=["training", "eval"])
def test_evaluate_is_the_criterion_over_the_whole_test_set_of_its_own_seed(mode):
    """Batches of 300 of adding-modern's 1000 test sequences (the last one 100): the loss is the
    mean over all sequences (each batch weighted by its size), ``wrong`` the count of incorrect
    ones, ``abs_error`` the mean over all; the set is drawn from seed + TEST_SEED_OFFSET, not from
    the training data's seed; the model is left in the mode it was in."""
    task = make_task("adding-modern", seq_len=6)
    torch.manual_seed(0)
    model = model_for_task(task, "lstm", hidden_size=4).train(mode)
    metrics = evaluate(model, task, 3, torch.device("cpu"), batch_size=300)
    assert model.training is mode
    batches = list(task.test_batches(torch.Generator().manual_seed(3 + TEST_SEED_OFFSET), 300))
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    whole = Batch(torch.cat([b.inputs for b in batches]), torch.cat([b.targets for b in batches]))
    with torch.no_grad():
        output = torch.cat([model.eval()(b.inputs)[0] for b in batches])
    correct = task.correct(output, whole)
    assert metrics["sequences"] == 1000
    assert metrics["loss"] == pytest.approx(float(task.loss(output, whole)), rel=1e-6)
    assert metrics["wrong"] == int((~correct).sum()) and metrics["accuracy"] == float(correct.float().mean())
    assert metrics["abs_error"] == pytest.approx(float(task.measures(output, whole)["abs_error"].mean()), rel=1e-6)
    same_seed = evaluate(model, task, 3, torch.device("cpu"), batch_size=300)
    train_seed = list(task.test_batches(torch.Generator().manual_seed(3), 300))[0]
    assert same_seed == metrics and not torch.equal(train_seed.inputs, batches[0].inputs)


@pytest.mark.parametrize("clip", [0.0, 0.05], ids=["no-clip", "clip"])
def test_the_first_steps_are_adam_on_the_seeded_data(tmp_path, clip):
    """Four steps logged one by one equal a plain loop: model initialised under
    ``torch.manual_seed(seed)``, the global batch drawn from a generator seeded ``seed``, fresh
    gradients each step, the gradient norm clipped to ``clip`` (0: not at all; 0.05 clips every
    step here), Adam at ``lr``; the checkpoint holds the weights and the loss average
    ema_1 = l_1, ema_k = 0.95 ema_{k-1} + 0.05 l_k."""
    config = tiny_config(tmp_path, steps=4, log_every=1, eval_every=0, checkpoint_every=4, clip=clip, seed=5)
    train(config)
    task = build_task(config)
    torch.manual_seed(5)
    model = build_model(config, task)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(5)
    losses, norms = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        for _ in range(4):
            batch = task.sample(config.batch, generator)
            loss = task.loss(model(batch.inputs)[0], batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(float(torch.stack([p.grad.norm() for p in model.parameters()]).norm()))
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert not clip or min(norms) > 2 * clip, "the clip must act for this test to see it"
    assert [r["loss"] for r in metrics_records(tmp_path) if "loss" in r] == losses
    saved_run = checkpoint.load(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(saved_run.model[name], value), name
    ema = losses[0]
    for value in losses[1:]:
        ema = 0.95 * ema + 0.05 * value
    assert saved_run.extra["state"]["ema"] == ema


def test_metrics_lines_and_the_train_loss_of_the_summary(tmp_path):
    """10 steps, log every 3, evaluate every 5: loss lines at steps 3, 6, 9 and evaluations at 5
    and 10, each with ``sequences`` = step x batch; the summary's train_loss is the last logged."""
    summary = train(tiny_config(tmp_path, steps=10, log_every=3, eval_every=5))
    records = metrics_records(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == [3, 6, 9]
    assert [r["step"] for r in records if "eval" in r] == [5, 10]
    assert all(r["sequences"] == 8 * r["step"] for r in records)
    assert summary["train_loss"] == next(r["loss"] for r in records if r["step"] == 9)


def test_a_resumed_run_counts_the_seconds_before_the_checkpoint(tmp_path):
    """The summary's seconds include the training time the checkpoint recorded."""
    train(tiny_config(tmp_path, steps=2))
    pointer = tmp_path / checkpoint.POINTER
    meta = json.loads(pointer.read_text())
    meta["extra"]["state"]["seconds"] = 1000.0
    pointer.write_text(json.dumps(meta))
    assert train(tiny_config(tmp_path, steps=4, resume=True))["seconds"] >= 1000.0


def test_solved_step_is_the_first_evaluation_that_met_the_criterion(tmp_path):
    """With --no-stop a run evaluates on after it is solved: solved_step stays at the first
    evaluation that met the criterion, not the last."""
    first = train(tiny_config(tmp_path / "stop", task="lag-2a", seq_len=4, hidden=32, steps=600,
                              stop_when_solved=True))
    assert first["solved"]
    summary = train(tiny_config(tmp_path / "on", task="lag-2a", seq_len=4, hidden=32, steps=first["steps"] + 40))
    solved = [r["step"] for r in metrics_records(tmp_path / "on") if r.get("solved")]
    assert len(solved) > 1, "the run must be solved at several evaluations for this test to see the first"
    assert summary["solved_step"] == solved[0] == first["solved_step"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (2 steps) and its config."""
    out = tmp_path_factory.mktemp("resumable") / "run"
    config = tiny_config(out, steps=2, checkpoint_every=2)
    train(config)
    return config


@pytest.mark.parametrize("change", [dict(lr=0.02), dict(clip=0.5), dict(batch=4), dict(seed=1),
                                    dict(lstm_init="torch"), dict(layers=2), dict(task_options={"tolerance": 0.1})],
                         ids=lambda c: next(iter(c)))
def test_a_resume_refuses_each_setting_that_is_not_resumable(finished, change):
    """Only the fields of RESUMABLE_CHANGES may differ from the checkpointed run: another learning
    rate, clip, batch, seed, initialisation, depth or task option is named and refused."""
    name = next(iter(change))
    with pytest.raises(ConfigError, match=f"different settings \\({name}: checkpoint"):
        train(replace(finished, steps=3, resume=True, **change))


@pytest.mark.parametrize("change, message", [
    *[(dict([(name, 0)]), f"{name.replace('_', '-')} must be a positive integer, got 0")
      for name in ("hidden", "layers", "threads", "embedding_dim", "steps", "batch", "checkpoint_every", "log_every",
                   "test_batch")],
    (dict(seq_len=0), "seq-len must be a positive integer, got 0"),
    (dict(eval_every=-1), "eval-every must be 0 (only at the end) or positive, got -1"),
    (dict(lr=0.0), "lr must be a positive number, got 0.0"),
    (dict(lr=math.inf), "lr must be a positive number, got inf"),
    (dict(device="tpu"), "device must be auto, cpu or cuda, got 'tpu'"),
    (dict(cell="gru", variant="nfg"), "--variant, --forget-bias and --input-bias apply to --cell lstm only"),
    (dict(cell="rnn", input_bias=-1.0), "apply to --cell lstm only, got --cell rnn"),
    (dict(lstm_init="xavier"), "lstm-init must be one of long-lag, torch, got 'xavier'"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_validate_refuses_each_bad_field(change, message):
    """TrainConfig.validate names each bad field itself (the CLI's parsers refuse most of these
    before it, so only a direct use of the API reaches these checks)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**change).validate()


def test_a_sequence_model_refuses_lstm_options_for_other_cells():
    """variant (like forget_bias and input_bias) applies to the LSTM only."""
    with pytest.raises(ValueError, match="variant, forget_bias and input_bias apply to the LSTM only"):
        SequenceModel(ModelConfig(cell="gru", input_size=2, output_size=1, variant="nfg"))


def test_from_dict_ignores_keys_it_does_not_know():
    """A config written by another version (an extra field) still loads, the field dropped."""
    config = TrainConfig.from_dict({**TrainConfig(hidden=5).to_dict(), "a_later_field": 1})
    assert config == TrainConfig(hidden=5)


def test_a_checkpoint_with_an_unreadable_step_or_extra(tmp_path):
    """A step that is no integer (Infinity) reads as unknown, and refusing to replace the run says
    so; an ``extra`` that is no object reads as None."""
    train(tiny_config(tmp_path, steps=1))
    pointer = tmp_path / checkpoint.POINTER
    meta = json.loads(pointer.read_text())
    pointer.write_text(json.dumps({**meta, "step": math.inf}))
    assert checkpoint.saved_step(tmp_path) is None
    with pytest.raises(ConfigError, match=r"its checkpoint is at step unknown: unreadable\): fix it"):
        refuse_to_replace(tmp_path, "fix it")
    pointer.write_text(json.dumps({**meta, "extra": ["config"]}))
    assert checkpoint.saved_extra(tmp_path) is None


def test_clearing_a_run_directory_deletes_the_temporary_files_of_killed_writes(tmp_path):
    """A run starting afresh leaves no half-written checkpoint.json.tmp or tensors .tmp behind
    (the save that follows would replace the first, but clear() alone must delete both)."""
    (tmp_path / "checkpoint.json.tmp").write_text("{")
    (tmp_path / "checkpoint-000000002.safetensors.tmp").write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("not ours")
    checkpoint.clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An exported pair <stem>.safetensors + <stem>.json of an untrained adding-modern GRU."""
    from safetensors.torch import save_file

    task = make_task("adding-modern", seq_len=12)
    config = TrainConfig(task="adding-modern", seq_len=12, cell="gru", hidden=4)
    stem = tmp_path_factory.mktemp("exported") / "gru"
    save_file(build_model(config, task).state_dict(), str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps({"train": config.to_dict(), "task": task.describe()}))
    return stem


def test_an_exported_config_without_its_sections_is_refused(exported):
    """The .json beside exported weights needs the 'train' and 'task' objects gatedrnn writes."""
    meta = json.loads(exported.with_suffix(".json").read_text())
    for broken in ({"train": meta["train"]}, {"train": meta["train"], "task": []}):
        exported.with_suffix(".json").write_text(json.dumps(broken))
        try:
            with pytest.raises(saved.SavedModelError, match="lacks the 'train' and 'task' sections"):
                saved.read(exported.with_suffix(".safetensors"))
        finally:
            exported.with_suffix(".json").write_text(json.dumps(meta))


def test_a_rebuilt_model_is_in_eval_mode(exported):
    model_file = saved.read(exported.with_suffix(".safetensors"))
    assert not saved.rebuild(model_file.meta, model_file.tensors).training


def test_an_evaluation_keeps_the_trained_task_options_it_is_not_told_to_change(tmp_path):
    """A run trained with tolerance=1.0 is judged at that tolerance (the task's default is 0.04),
    and an option given (solved_mse) changes only itself."""
    summary = train(tiny_config(tmp_path, steps=2, task_options={"tolerance": 1.0}))
    own = evaluate_saved(tmp_path)
    assert (own["accuracy"], own["loss"]) == (summary["accuracy"], summary["final_loss"])
    default_tolerance = evaluate_saved(tmp_path, task_options={"tolerance": 0.04})
    assert default_tolerance["accuracy"] < own["accuracy"], "the tolerance must matter for this test to see it"
    lenient = evaluate_saved(tmp_path, task_options={"solved_mse": 1e9})
    assert lenient["solved"] and lenient["accuracy"] == own["accuracy"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_evaluating_on_cuda_without_it_is_a_config_error(tmp_path):
    train(tiny_config(tmp_path, steps=1))
    with pytest.raises(ConfigError, match="--device cuda was asked for, but torch sees no CUDA device"):
        evaluate_saved(tmp_path, device="cuda")


def test_task_options_spelt_with_dashes_and_whole_numbers_for_none_defaults():
    """``--task-opt solved-error=0.1`` names ``solved_error``; an option whose default is None
    takes a whole number as an int (lag-2c's distractors) and a fraction as a float."""
    assert parse_task_options("two-sequence", ["solved-error=0.1"]) == {"solved_error": 0.1}
    options = parse_task_options("lag-2c", ["distractors=5"])
    assert options == {"distractors": 5} and type(options["distractors"]) is int
    assert type(parse_task_options("lag-2a", ["last_weight=2.5"])["last_weight"]) is float


def test_compare_gives_the_lstm_flags_to_the_lstm_only(tmp_path):
    """``compare --variant nfg --input-bias -1`` trains the LSTM as asked and the other cells
    plainly (their configs validate)."""
    args = build_parser().parse_args(["compare", "--task", "adding-modern", "--variant", "nfg", "--input-bias", "-1"])
    lstm, gru = (config_from_args(args, cell, str(tmp_path / cell)) for cell in ("lstm", "gru"))
    assert (lstm.variant, lstm.input_bias) == ("nfg", -1.0)
    assert (gru.variant, gru.input_bias, gru.forget_bias) == ("vanilla", None, None)
    gru.validate()


@pytest.mark.parametrize("cells, expected", [(",", "--cells expects a comma-separated list of rnn, lstm, gru"),
                                             ("gru,lstm,gru", "--cells lists a cell twice: 'gru,lstm,gru'")])
def test_compare_refuses_no_cells_and_a_cell_twice(capsys, tmp_path, cells, expected):
    line = one_error_line(capsys, ["compare", "--task", "adding-modern", "--cells", cells, "--out", str(tmp_path)])
    assert expected in line and not any(tmp_path.iterdir())


def test_the_comparison_table_gives_the_loss_over_the_baseline():
    summary = dict(task="adding-modern", seq_len=12, hidden=8, seed=0, baseline=0.2, cell="lstm", variant="vanilla",
                   steps=10, sequences=80, final_loss=0.05, accuracy=0.5, solved=False, solved_sequences=None,
                   seconds=1.0)
    row = comparison_table([summary])[2].split()
    assert row[4] == "0.25" and row[-2] == "-"


def test_row_budgets_and_the_rows_of_a_full_table():
    """The full budget is three times the paper's sequences, rounded up to whole steps of our
    batch (2a: 3 x 5,040 / 32 = 472.5 -> 473); the full table adds the full_only rows."""
    rows = {row.key: row for row in reproduce.HOCHREITER_1997}
    assert rows["2a"].full_steps() == 473
    quick, full = reproduce.rows_for("hochreiter1997", False), reproduce.rows_for("hochreiter1997", True)
    assert [r.key for r in full] == list(rows)
    assert {r.key for r in full} - {r.key for r in quick} == {"2c-1000", "4-1000"}


def test_a_rows_command_line_reruns_it():
    """The command a table prints for a row gives the row's config back, and names its steps and
    evaluation interval even where they are the defaults."""
    row = next(r for r in reproduce.HOCHREITER_1997 if r.key == "6a")
    config = replace(row.config, steps=TrainConfig().steps, seed=2)
    command = reproduce.command_line(config)
    assert f"--steps {config.steps}" in command and "--eval-every 100" in command
    args = build_parser().parse_args(command.split()[1:])
    rerun = config_from_args(args, args.cell, None)
    for name in ("task", "seq_len", "task_options", "cell", "variant", "hidden", "layers", "steps", "batch", "lr",
                 "clip", "seed", "eval_every", "lstm_init"):
        assert getattr(rerun, name) == getattr(config, name), name


def test_the_table_cells_over_seeds():
    """Three seeds, two solved after 100 and 300 sequences, 1 + 2 + 4 wrong of 2,560: success
    2/3 (67%), mean 200 sequences over the solved seeds, mean 2.3 wrong, budget steps x batch."""
    row = next(r for r in reproduce.HOCHREITER_1997 if r.key == "2a")
    config = row.config.to_dict()
    summaries = [dict(solved_sequences=s, held_out_wrong=w, held_out_tested=2560, seconds=1.0, budget_steps=50,
                      batch=32, config=config) for s, w in ((100, 1), (None, 2), (300, 4))]
    result = reproduce.RowResult(row, summaries)
    assert result.cells() == ["2/3 (67%)", "200", "2.3 / 2560", "3"]
    line = next(x for x in reproduce.markdown_table([result], "quick").splitlines() if x.startswith("| 2a"))
    assert "| 2/3 (67%) | 200 | 2.3 / 2560 | 1,600 | 3 |" in line


@pytest.mark.parametrize("full, scale, seeds, steps", [(False, 1.0, 3, 2000), (False, 0.5, 3, 1000),
                                                       (True, 1.0, 10, 473)], ids=["quick", "scaled", "full"])
def test_reproduce_runs_each_row_its_seeds_at_its_budget(tmp_path, monkeypatch, full, scale, seeds, steps):
    """Without --seeds a quick table runs 3 seeds and a full one 10; each run's steps are the
    row's quick steps (or full budget) times --budget-scale, in out/<row>/seed<S>."""
    runs = []

    def fake_train(config):
        runs.append(config)
        return {"solved_sequences": None, "seconds": 0.0, "batch": config.batch}

    monkeypatch.setattr(reproduce, "train", fake_train)
    monkeypatch.setattr(reproduce, "evaluate_saved", lambda path, seed: {"wrong": 0, "sequences": 2})
    reproduce.reproduce("hochreiter1997", full=full, out=tmp_path, rows="2a", budget_scale=scale, progress=False)
    assert [c.seed for c in runs] == list(range(seeds)) and {c.steps for c in runs} == {steps}
    assert [c.out for c in runs] == [str(tmp_path / "2a" / f"seed{s}") for s in range(seeds)]


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan])
def test_reproduce_refuses_a_budget_scale_that_is_not_positive(tmp_path, scale):
    with pytest.raises(ConfigError, match="--budget-scale must be positive"):
        reproduce.reproduce("hochreiter1997", out=tmp_path, rows="2a", budget_scale=scale, progress=False)
