"""``gatedrnn evaluate``: a saved model on its task, at its own sizes (the run's final result) or
others, with the task options it was trained with; exported models and their configs."""

from __future__ import annotations

import json

import pytest
import torch

from gatedrnn import checkpoint, saved
from gatedrnn.cli import main
from gatedrnn.evaluation import evaluate_saved, result_line
from gatedrnn.tasks import make_task
from gatedrnn.train import ConfigError, TrainConfig, build_model, evaluate, train
from test_cli import TINY, one_error_line
from test_train import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny adding-modern run (T=12)."""
    out = tmp_path_factory.mktemp("evaluate") / "run"
    assert main(["train", "--task", "adding-modern", *TINY, "--threads", "1", "--out", str(out)]) == 0
    return out


def _evaluate_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *argv, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    return json.loads(lines[-1])


def test_a_finished_run_at_its_own_sizes_gives_its_final_result(capsys, run):
    summary = json.loads((run / "summary.json").read_text())
    for model in (run, run / checkpoint.POINTER, next(run.glob("checkpoint-*.safetensors"))):
        result = _evaluate_json(capsys, [str(model)])
        assert result["loss"] == summary["final_loss"]
        assert (result["accuracy"], result["wrong"], result["sequences"]) == (
            summary["accuracy"],
            summary["wrong"],
            summary["tested"],
        )
        assert (result["step"], result["seq_len"], result["trained_seq_len"]) == (20, 12, 12)


def test_another_length_runs_the_trained_weights_on_that_task(capsys, run):
    result = _evaluate_json(capsys, [str(run), "--seq-len", "30"])
    assert (result["seq_len"], result["trained_seq_len"]) == (30, 12)
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text())["train"])
    task = make_task("adding-modern", seq_len=30)
    model = build_model(config, task)
    model.load_state_dict(checkpoint.load(run).model)
    expected = evaluate(model, task, config.seed, torch.device("cpu"))
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert result["wrong"] == expected["wrong"]
    assert result["loss"] != json.loads((run / "summary.json").read_text())["final_loss"]
    assert "T=30 (trained at T=12)" in main_line(capsys, [str(run), "--seq-len", "30"])


def main_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(["evaluate", *argv]) == 0
    return capsys.readouterr().out.strip()


def test_a_seed_draws_another_test_set_and_the_same_seed_the_same(run):
    own, other, again = (evaluate_saved(run, seed=s) for s in (None, 7, 7))
    assert other["seed"] == 7 and own["seed"] == 0
    assert other["loss"] != own["loss"]
    assert other == again


def test_a_task_option_reaches_the_task(run):
    strict, loose = (
        evaluate_saved(run, task_options={"tolerance": 1e-6}),
        evaluate_saved(run, task_options={"tolerance": 10.0}),
    )
    assert strict["loss"] == loose["loss"]
    assert (strict["accuracy"], loose["accuracy"]) == (0.0, 1.0)


def test_the_shipped_model_reproduces_its_recorded_validation_bits_per_character(capsys):
    from gatedrnn.viz.loading import shipped_path

    recorded = json.loads(shipped_path("lstm").with_suffix(".json").read_text())["result"]
    result = _evaluate_json(capsys, ["--shipped", "lstm"])
    assert result["task"] == "charlm" and result["step"] == recorded["steps"]
    assert result["bpc"] == pytest.approx(recorded["valid_bpc"], abs=6e-5)


def test_a_language_model_is_reported_in_bits_per_character_without_sequences_correct():
    """A task that measures bpc: its bits per character, the loss in nats beside the baseline's
    in both units, and its target; no "correct" or "solved", which say little of a language model.
    Another task keeps its sequences correct and criterion."""
    common = dict(cell="lstm", variant="vanilla", hidden=128, layers=1, step=4000, seed=0, sequences=512)
    charlm = dict(common, task="charlm", seq_len=128, trained_seq_len=128, baseline=3.0639, loss=1.2518)
    charlm.update(accuracy=0.047, wrong=488, bpc=1.8059, solved=False)
    assert result_line(charlm) == (
        "charlm lstm (hidden 128, step 4000), T=128, test seed 0: 1.806 bits per character on 512 test "
        "windows (test loss 1.252 nats per character; no-memory baseline 4.42 bpc, 3.064 nats); the task's "
        "target_bpc is not reached"
    )
    assert result_line(dict(charlm, solved=True)).endswith("the task's target_bpc is reached")
    adding = dict(common, task="adding", seq_len=100, trained_seq_len=100, baseline=0.04, loss=0.001)
    adding.update(accuracy=0.5, wrong=256, abs_error=0.02, solved=False)
    assert result_line(adding).endswith(
        "test loss 0.001 (no-memory baseline 0.04), mean abs_error 0.02; 50.0% of 512 test sequences correct "
        "(256 wrong); not solved by the task's criterion"
    )


def test_sizes_that_change_the_models_inputs_are_refused(capsys, tmp_path):
    out = tmp_path / "lags"
    assert (
        main(
            [
                "train",
                "--task",
                "lag-2a",
                "--seq-len",
                "6",
                "--hidden",
                "4",
                "--batch",
                "4",
                "--steps",
                "2",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    line = one_error_line(capsys, ["evaluate", str(out), "--seq-len", "9"])
    assert "the model was trained on lag-2a with input_size 7" in line and "the task has input_size 10" in line


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "give either MODEL (a run directory or .safetensors file) or --shipped CELL, got neither"),
        (["x", "--shipped", "lstm"], "got both"),
        (["--shipped", "cnn"], "invalid choice: 'cnn'"),
        (["nowhere"], "model 'nowhere' not found"),
        (["{run}", "--task-opt", "nope=1"], "task 'adding-modern' has no option 'nope'"),
        (["{run}", "--seq-len", "0"], "--seq-len: expected a positive integer, got 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, run, argv, expected):
    assert expected in one_error_line(capsys, ["evaluate", *(a.format(run=run) for a in argv)])


def test_a_directory_without_a_run_and_a_mangled_config_are_refused(capsys, tmp_path, run):
    assert "has no checkpoint.json: not a finished `gatedrnn train` run" in one_error_line(
        capsys, ["evaluate", str(tmp_path)]
    )
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["train"]["task_options"] = ["tolerance"]
    (copy / "config.json").write_text(json.dumps(config))
    assert "mangles its options" in one_error_line(capsys, ["evaluate", str(copy)])
    config["train"]["hidden"] = 9
    config["train"]["task_options"] = {}
    (copy / "config.json").write_text(json.dumps(config))
    line = one_error_line(capsys, ["evaluate", str(copy)])
    assert "the weights do not match their config" in line
    assert "size mismatch for" in line and "torch.Size([36" in line, "the mismatch itself is named, not cut off"


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
