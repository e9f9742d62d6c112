"""The ``gatedrnn`` command: one-line errors with exit code 2, the files and the JSON summary of a
run, task options, ``compare``'s table, figure and cells, ``reproduce``'s rows, budgets, seeds and
Markdown table, and ``python -m gatedrnn``."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import gatedrnn
from gatedrnn import cli, reproduce
from gatedrnn.cli import build_parser, config_from_args, main, parse_task_options
from gatedrnn.tasks import make_task, task_names
from gatedrnn.train import TEST_SEED_OFFSET, ConfigError, TrainConfig, build_model, build_task
from helpers import metrics_records

TINY = [
    "--seq-len",
    "12",
    "--hidden",
    "8",
    "--batch",
    "8",
    "--steps",
    "20",
    "--eval-every",
    "10",
    "--checkpoint-every",
    "10",
    "--no-progress",
]


def one_error_line(capsys, argv: list[str]) -> str:
    """Run ``gatedrnn argv``; assert exit code 2 and a single ``error:`` line; return that line."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--task", "nope"], "unknown task 'nope'; expected one of adding"),
        (["train", "--task", "adding", "--cell", "lstmx"], "invalid choice: 'lstmx'"),
        (["train", "--task", "adding", "--variant", "forgetless"], "invalid choice: 'forgetless'"),
        (["train", "--task", "adding", "--cell", "gru", "--variant", "nfg"], "--variant applies to --cell lstm only"),
        (["train", "--task", "adding", "--variant", "nfg", "--forget-bias", "1"], "variant 'nfg' has none"),
        (
            ["train", "--task", "adding", "--cell", "gru", "--lstm-init", "chrono"],
            "--lstm-init chrono initialises a family whose memory a forget gate 'f' keeps (lstm, slstm), but "
            "--cell gru is not one (its retention gate is 'z'): leave --lstm-init out (or give torch)",
        ),
        (
            ["train", "--task", "adding", "--cell", "rnn", "--lstm-init", "long-lag"],
            "--lstm-init long-lag initialises a family whose memory a forget gate 'f' keeps (lstm, slstm), but "
            "--cell rnn is not one (it has no retention gate)",
        ),
        (["train", "--task", "adding", "--cell", "minlstm", "--lstm-init", "chrono"], "--cell minlstm is not one"),
        (["train", "--task", "adding", "--hidden", "0"], "--hidden: expected a positive integer, got 0"),
        (["train", "--task", "adding", "--steps", "-5"], "--steps: expected a positive integer, got -5"),
        (["train", "--task", "adding", "--seq-len", "0"], "--seq-len: expected a positive integer, got 0"),
        (["train", "--task", "adding", "--batch", "x"], "expected a positive integer, got 'x'"),
        (["train", "--task", "adding", "--seq-len", "10"], "seq_len must be at least 22"),
        (["train", "--task", "adding", "--lr", "-1"], "lr must be a positive number, got -1"),
        (
            ["train", "--task", "adding", "--task-opt", "nope=1"],
            "task 'adding' has no option 'nope'; its options are: tolerance",
        ),
        (["train", "--task", "adding", "--task-opt", "tolerance=abc"], "task 'adding' expects a number for tolerance"),
        (["train", "--task", "adding", "--task-opt", "tolerance"], "--task-opt expects KEY=VALUE"),
        (
            ["compare", "--task", "adding", "--cells", "rnn,tree"],
            "--cells expects a comma-separated list of " + ", ".join(gatedrnn.registered_families()),
        ),
        (["reproduce", "hochreiter2000"], "invalid choice: 'hochreiter2000'"),
        (["reproduce", "hochreiter1997", "--rows", "nope"], "unknown row 'nope'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, expected):
    assert expected in one_error_line(capsys, argv)


REQUIRED = {
    "train": ["--task", "adding"],
    "compare": ["--task", "adding"],
    "reproduce": ["hochreiter1997"],
    "export": ["--out", "model.onnx"],
    "sample": ["--prompt", "It"],
}
"""What each subcommand needs to parse, so that an unknown flag is the one problem."""


def test_an_unknown_flag_points_at_its_subcommand_s_help(capsys):
    """Every subcommand: argparse reports an unknown flag from the top parser; the error names the
    subcommand and its help, where its flags are listed."""
    commands = build_parser().subcommands()
    assert set(REQUIRED) <= set(commands)
    for command in commands:
        line = one_error_line(capsys, [command, *REQUIRED.get(command, []), "--bogus"])
        assert line == f"error: gatedrnn {command}: unrecognized arguments: --bogus (see gatedrnn {command} --help)"


def test_out_that_is_a_file_is_refused(capsys, tmp_path):
    path = tmp_path / "a-file"
    path.write_text("")
    line = one_error_line(capsys, ["train", "--task", "adding-modern", *TINY, "--out", str(path)])
    assert f"--out must be a directory, but {path} is a file" in line


def _finished_run(capsys, out) -> list[str]:
    """Train a tiny run into ``out``; returns its command line (without ``--out``)."""
    argv = ["train", "--task", "adding-modern", *TINY]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    return argv


def test_a_second_run_into_a_run_directory_needs_resume_or_overwrite(capsys, tmp_path):
    out = tmp_path / "run"
    argv = _finished_run(capsys, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_error_line(capsys, [*argv, "--steps", "10", "--out", str(out)])
    assert f"{out} already holds a run (its checkpoint is at step 20)" in line
    assert "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the refused run changed the files"
    assert "not allowed with argument" in one_error_line(capsys, [*argv, "--out", str(out), "--resume", "--overwrite"])
    assert main([*argv, "--steps", "10", "--out", str(out), "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 10
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 10


def _damage(out, how: str) -> None:
    pointer = out / "checkpoint.json"
    tensors = out / json.loads(pointer.read_text())["tensors"]
    if how == "json-syntax":
        pointer.write_text("{bad json")
    elif how == "json-list":
        pointer.write_text("[]")
    elif how == "json-no-rng":
        meta = json.loads(pointer.read_text())
        del meta["rng"]
        pointer.write_text(json.dumps(meta))
    elif how == "rng-truncated":
        meta = json.loads(pointer.read_text())
        meta["rng"]["torch"] = meta["rng"]["torch"][:10]
        pointer.write_text(json.dumps(meta))
    elif how in ("state-empty", "state-mangled", "config-mangled", "config-options", "step-infinite"):
        meta = json.loads(pointer.read_text())
        if how == "state-empty":
            meta["extra"]["state"] = {}
        elif how == "state-mangled":
            meta["extra"]["state"].update(ema="0.1", solved_step=2.5)
        elif how == "config-mangled":
            meta["extra"]["config"]["hidden"] = "8"
        elif how == "config-options":
            meta["extra"]["config"]["task_options"] = ["tolerance"]
        else:
            meta["step"] = float("inf")
        pointer.write_text(json.dumps(meta))
    elif how == "tensors-truncated":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif how == "tensors-missing":
        tensors.unlink()


@pytest.mark.parametrize(
    "how, expected",
    [
        ("json-syntax", "checkpoint.json: JSONDecodeError"),
        ("json-list", "expected a JSON object, got list"),
        ("json-no-rng", "has no 'rng' entry"),
        ("rng-truncated", "its checkpoint is damaged or from another program (RuntimeError"),
        ("state-empty", "its training state lacks ema, last_eval, seconds, solved_step, step"),
        ("state-mangled", "its training state mangles ema, solved_step"),
        ("config-mangled", "the settings in its checkpoint are damaged (TypeError"),
        ("config-options", "the settings in its checkpoint are damaged (TypeError: task_options must be a JSON object"),
        ("step-infinite", "is not a checkpoint gatedrnn wrote: OverflowError"),
        ("tensors-truncated", ".safetensors (named by"),
        ("tensors-missing", ".safetensors (named by"),
    ],
)
def test_resuming_a_damaged_checkpoint_says_what_is_wrong_in_one_line(capsys, tmp_path, how, expected):
    out = tmp_path / "run"
    argv = _finished_run(capsys, out)
    _damage(out, how)
    line = one_error_line(capsys, [*argv, "--steps", "30", "--out", str(out), "--resume"])
    assert line.startswith(f"error: cannot resume {out}: ") and expected in line, line


def test_train_writes_its_files_and_a_json_summary_last(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--task", "adding-modern", "--cell", "gru", *TINY, "--out", str(out), "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert {"task", "cell", "steps", "final_loss", "solved"} <= set(summary)
    assert (summary["task"], summary["cell"], summary["steps"]) == ("adding-modern", "gru", 20)
    assert isinstance(summary["solved"], bool) and summary["final_loss"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["hidden"] == 8 and config["train"]["cell"] == "gru" and config["task"]["seq_len"] == 12
    records = metrics_records(out)
    assert [r["step"] for r in records if "eval" in r] == [10, 20]
    assert records[-1]["eval"]["loss"] == summary["final_loss"]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pointer = json.loads((out / "checkpoint.json").read_text())
    assert pointer["step"] == 20 and (out / pointer["tensors"]).is_file()
    assert json.loads((out / "summary.json").read_text()) == summary


def test_task_options_reach_the_task(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--task", "lag-2c", *TINY, "--task-opt", "distractors=5", "--out", str(out), "--json"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["task_options"] == {"distractors": 5} and config["task"]["input_size"] == 9


def test_task_options_spelt_with_dashes_and_whole_numbers_for_none_defaults():
    """``--task-opt solved-error=0.1`` names ``solved_error``; an option whose default is None
    takes a whole number as an int (lag-2c's distractors) and a fraction as a float."""
    assert parse_task_options("two-sequence", ["solved-error=0.1"]) == {"solved_error": 0.1}
    options = parse_task_options("lag-2c", ["distractors=5"])
    assert options == {"distractors": 5} and type(options["distractors"]) is int
    assert type(parse_task_options("lag-2a", ["last_weight=2.5"])["last_weight"]) is float


def test_compare_prints_one_table_and_writes_a_figure(capsys, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--task", "adding-modern", "--cells", "rnn,gru", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.split()[:1] in (["rnn"], ["gru"])]
    assert len(rows) == 2 and "baseline loss 0.1667" in text
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "rnn" / "summary.json").is_file() and (out / "gru" / "summary.json").is_file()


def test_compare_gives_the_lstm_flags_to_the_lstm_only(tmp_path):
    """``compare --variant nfg --input-bias -1 --lstm-init torch`` trains the LSTM as asked and
    the other cells plainly (their configs validate); the sLSTM, whose memory a forget gate keeps
    too, takes the initialisation."""
    args = build_parser().parse_args(
        ["compare", "--task", "adding-modern", "--variant", "nfg", "--input-bias", "-1", "--lstm-init", "torch"]
    )
    lstm, gru, rnn = (config_from_args(args, cell, str(tmp_path / cell)) for cell in ("lstm", "gru", "rnn"))
    assert (lstm.variant, lstm.input_bias, lstm.lstm_init) == ("nfg", -1.0, "torch")
    assert (gru.variant, gru.input_bias, gru.forget_bias, gru.lstm_init) == ("vanilla", None, None, "torch")
    gru.validate()
    args = build_parser().parse_args(["compare", "--task", "adding-modern", "--lstm-init", "chrono"])
    configs = {c: config_from_args(args, c, str(tmp_path / c)) for c in ("lstm", "slstm", "gru", "rnn", "minlstm")}
    assert {c: config.lstm_init for c, config in configs.items()} == {
        "lstm": "chrono",
        "slstm": "chrono",
        "gru": "torch",
        "rnn": "torch",
        "minlstm": "torch",
    }
    for config in configs.values():
        config.validate()


@pytest.mark.parametrize(
    "cells, expected",
    [
        (",", "--cells expects a comma-separated list of " + ", ".join(gatedrnn.registered_families())),
        ("gru,lstm,gru", "--cells lists a cell twice: 'gru,lstm,gru'"),
    ],
)
def test_compare_refuses_no_cells_and_a_cell_twice(capsys, tmp_path, cells, expected):
    line = one_error_line(capsys, ["compare", "--task", "adding-modern", "--cells", cells, "--out", str(tmp_path)])
    assert expected in line and not any(tmp_path.iterdir())


def test_reproduce_writes_and_prints_a_markdown_table(capsys, tmp_path):
    out = tmp_path / "rep"
    assert (
        main(
            ["reproduce", "hochreiter1997", "--rows", "2a", "--seeds", "1", "--budget-scale", "0.01", "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    table = (out / "hochreiter1997-quick.md").read_text()
    assert table.strip() in printed
    header = next(line for line in table.splitlines() if line.startswith("| exp"))
    assert "paper" in header and "measured" in header
    row = next(line for line in table.splitlines() if line.startswith("| 2a"))
    assert "5,040" in row and "100%" in row  # the paper's numbers beside ours
    summary_before = (out / "2a" / "seed0" / "summary.json").read_text()
    assert (out / "2a" / "seed0" / "summary.json").is_file()
    again = ["reproduce", "hochreiter1997", "--rows", "2a", "--seeds", "1", "--budget-scale", "0.02", "--out", str(out)]
    line = one_error_line(capsys, again)
    assert f"{out / 'hochreiter1997-quick.md'} already holds a table" in line and "--overwrite" in line
    assert (out / "hochreiter1997-quick.md").read_text() == table, "the refused run changed the table"
    (out / "hochreiter1997-quick.md").unlink()  # the runs alone are kept too
    assert "already holds a run" in one_error_line(capsys, again)
    assert main([*again, "--overwrite"]) == 0
    assert (
        json.loads((out / "2a" / "seed0" / "summary.json").read_text())["steps"] != json.loads(summary_before)["steps"]
    )


def test_row_budgets_and_the_rows_of_a_full_table():
    """The full budget is three times the paper's sequences, rounded up to whole steps of our
    batch (2a: 3 x 5,040 / 32 = 472.5 -> 473); the full table adds the full_only rows."""
    rows = {row.key: row for row in reproduce.HOCHREITER_1997}
    assert rows["2a"].full_steps() == 473
    quick, full = reproduce.rows_for("hochreiter1997", False), reproduce.rows_for("hochreiter1997", True)
    assert [r.key for r in full] == list(rows)
    assert {r.key for r in full} - {r.key for r in quick} == {"2c-1000", "4-500", "4-1000"}


def test_a_rows_command_line_reruns_it():
    """The command a table prints for a row gives the row's config back, and names its steps and
    evaluation interval even where they are the defaults."""
    row = next(r for r in reproduce.HOCHREITER_1997 if r.key == "6a")
    config = replace(row.config, steps=TrainConfig().steps, seed=2)
    command = reproduce.command_line(config)
    assert f"--steps {config.steps}" in command and "--eval-every 100" in command
    args = build_parser().parse_args(command.split()[1:])
    rerun = config_from_args(args, args.cell, None)
    for name in (
        "task",
        "seq_len",
        "task_options",
        "cell",
        "variant",
        "hidden",
        "layers",
        "steps",
        "batch",
        "lr",
        "clip",
        "seed",
        "eval_every",
        "lstm_init",
    ):
        assert getattr(rerun, name) == getattr(config, name), name


def test_the_table_cells_over_seeds():
    """Three seeds, two solved after 100 and 300 sequences, 1 + 2 + 4 wrong of 2,560: success
    2/3 (67%), mean 200 sequences over the solved seeds, mean 2.3 wrong, budget steps x batch."""
    row = next(r for r in reproduce.HOCHREITER_1997 if r.key == "2a")
    config = row.config.to_dict()
    summaries = [
        dict(
            solved_sequences=s,
            held_out_wrong=w,
            held_out_tested=2560,
            seconds=1.0,
            budget_steps=50,
            batch=32,
            config=config,
        )
        for s, w in ((100, 1), (None, 2), (300, 4))
    ]
    result = reproduce.RowResult(row, summaries)
    assert result.cells() == ["2/3 (67%)", "200", "2.3 / 2560", "3"]
    line = next(x for x in reproduce.markdown_table([result], "quick").splitlines() if x.startswith("| 2a"))
    assert "| 2/3 (67%) | 200 | 2.3 / 2560 | 1,600 | 3 |" in line


@pytest.mark.parametrize(
    "full, scale, seeds, steps",
    [(False, 1.0, 3, 2000), (False, 0.5, 3, 1000), (True, 1.0, 10, 473)],
    ids=["quick", "scaled", "full"],
)
def test_reproduce_runs_each_row_its_seeds_at_its_budget(tmp_path, monkeypatch, full, scale, seeds, steps):
    """Without --seeds a quick table runs 3 seeds and a full one 10; each run's steps are the
    row's quick steps (or full budget) times --budget-scale, in out/<row>/seed<S>."""
    runs = []

    def fake_train(config):
        runs.append(config)
        return {"solved_sequences": None, "seconds": 0.0, "batch": config.batch}

    monkeypatch.setattr(reproduce, "train", fake_train)
    monkeypatch.setattr(reproduce, "evaluate_saved", lambda path, seed, test_batch: {"wrong": 0, "sequences": 2})
    reproduce.reproduce("hochreiter1997", full=full, out=tmp_path, rows="2a", budget_scale=scale, progress=False)
    assert [c.seed for c in runs] == list(range(seeds)) and {c.steps for c in runs} == {steps}
    assert [c.out for c in runs] == [str(tmp_path / "2a" / f"seed{s}") for s in range(seeds)]


def test_reproduce_runs_the_controls_at_the_rows_settings(tmp_path, monkeypatch, capsys):
    """--cells lstm,gru,rnn: each row for each cell at the row's settings and budget, the controls
    in out/<row>-<cell>, a cell column in the table. The LSTM's chrono init is the LSTM's alone: the
    controls run with everything else the LSTM's (seeds too), keep torch.nn's init, say so in the
    table, and their printed commands run as printed."""
    runs = []

    def fake_train(config):
        runs.append(config)
        return {"solved_sequences": 640 if config.cell == "lstm" else None, "seconds": 1.0, "batch": config.batch}

    monkeypatch.setattr(reproduce, "train", fake_train)
    monkeypatch.setattr(reproduce, "evaluate_saved", lambda path, seed, test_batch: {"wrong": 0, "sequences": 2})
    table, path = reproduce.reproduce(
        "hochreiter1997", out=tmp_path, rows="4-500", cells="lstm,gru,rnn", seeds=2, progress=False
    )
    assert [(c.cell, c.seed) for c in runs] == [(c, s) for c in ("lstm", "gru", "rnn") for s in range(2)]
    assert {c.steps for c in runs} == {3000} and {c.seq_len for c in runs} == {500}
    assert [c.lstm_init for c in runs] == ["chrono"] * 2 + ["torch"] * 4
    assert {c.test_batch for c in runs} == {1024}
    for control in runs[2:]:  # the LSTM's run of its seed but for the cell, its directory and the init
        lstm = runs[control.seed]
        assert replace(control, cell="lstm", out=lstm.out, lstm_init="chrono") == lstm
        control.validate()
    assert runs[2].out == str(tmp_path / "4-500-gru" / "seed0") and runs[0].out == str(tmp_path / "4-500" / "seed0")
    assert path == tmp_path / "hochreiter1997-quick-lstm-gru-rnn.md" and path.read_text() == table
    assert "LSTM and the controls GRU, RNN" in table
    assert "| 4-500 | adding, T = 500 (tab. 7), chrono init | lstm |" in table
    assert "| 4-500 | adding, T = 500 (tab. 7), control: torch.nn's init | gru |" in table
    assert "| 2/2 (100%) | 640 |" in table and "| 0/2 (0%) | not solved |" in table
    commands = dict(re.findall(r"^- 4-500, (\w+): `gatedrnn (.*)`$", table, re.M))
    assert "--lstm-init chrono" in commands["lstm"] and "--lstm-init" not in commands["rnn"]
    ran = []
    monkeypatch.setattr(cli, "train", lambda config: ran.append(config) or {"rank": 1})  # rank 1 prints nothing
    for cell, command in commands.items():
        assert main([*command.split(), "--out", str(tmp_path / "rerun" / cell)]) == 0, capsys.readouterr().err
    assert [(c.cell, c.lstm_init, c.seq_len, c.steps) for c in ran] == [
        ("lstm", "chrono", 500, 3000),
        ("gru", "torch", 500, 3000),
        ("rnn", "torch", 500, 3000),
    ]


@pytest.mark.parametrize(
    "config",
    [pytest.param(row.config, id=row.key) for row in reproduce.HOCHREITER_1997]
    + [
        pytest.param(replace(row.config, cell=cell), id=f"{row.key}-{cell}")
        for row in reproduce.FORMAL
        for cell in "lstm gru".split()
    ],
)
def test_every_row_s_rerun_command_runs_the_row_s_settings(config, tmp_path):
    """The command REPRODUCTION.md and the tables print for a row (its non-default settings, the
    2c rows' smaller test batches included) parses, and trains what the row trains."""
    config = replace(config, **reproduce.settings_for(config.cell, lstm_init=config.lstm_init), steps=7)
    command = reproduce.command_line(config).split()
    assert command[0] == "gatedrnn"
    parsed = config_from_args(build_parser().parse_args(command[1:]), config.cell, str(tmp_path))
    fields = "task seq_len task_options cell lstm_init hidden lr batch steps eval_every test_batch".split()
    assert {f: getattr(parsed, f) for f in fields} == {f: getattr(config, f) for f in fields}


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan])
def test_reproduce_refuses_a_budget_scale_that_is_not_positive(tmp_path, scale):
    with pytest.raises(ConfigError, match="--budget-scale must be positive"):
        reproduce.reproduce("hochreiter1997", out=tmp_path, rows="2a", budget_scale=scale, progress=False)


def test_python_dash_m_and_the_console_script(tmp_path):
    ran = subprocess.run([sys.executable, "-m", "gatedrnn", "train", "--task", "nope"], capture_output=True, text=True)
    assert ran.returncode == 2 and ran.stderr.startswith("error: unknown task 'nope'")
    assert "Traceback" not in ran.stderr
    ran = subprocess.run([sys.executable, "-m", "gatedrnn", "--help"], capture_output=True, text=True)
    assert ran.returncode == 0 and all(c in ran.stdout for c in ("train", "compare", "reproduce", "gates", "demo"))


def test_version(capsys):
    import gatedrnn

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"gatedrnn {gatedrnn.__version__}"


def test_resume_keeps_the_settings_left_out_and_refuses_one_changed(capsys, tmp_path):
    """``--resume`` with only --task and --out continues the run as it was set up (here a GRU at
    T=12 with 8 units, where the defaults say LSTM, the task's own T and 64 units); a flag given
    that differs from the checkpoint's is refused, and --steps may grow."""
    out = tmp_path / "run"
    first = [
        "train",
        "--task",
        "adding-modern",
        "--cell",
        "gru",
        "--seq-len",
        "12",
        "--hidden",
        "8",
        "--batch",
        "8",
        "--steps",
        "10",
        "--checkpoint-every",
        "5",
        "--task-opt",
        "tolerance=0.1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(first) == 0
    capsys.readouterr()
    line = one_error_line(capsys, ["train", "--task", "adding-modern", "--hidden", "16", "--out", str(out), "--resume"])
    assert "hidden: checkpoint 8, now 16" in line and "seq_len" not in line and "cell" not in line
    assert (
        main(
            [
                "train",
                "--task",
                "adding-modern",
                "--steps",
                "20",
                "--no-progress",
                "--out",
                str(out),
                "--resume",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 20 and summary["cell"] == "gru"
    config = json.loads((out / "config.json").read_text())["train"]
    assert (config["cell"], config["seq_len"], config["hidden"], config["batch"]) == ("gru", 12, 8, 8)
    assert config["task_options"] == {"tolerance": 0.1} and config["checkpoint_every"] == 5


def test_a_family_without_a_forget_gate_resumes_whatever_lstm_init_its_run_recorded(capsys, tmp_path):
    """``--lstm-init torch`` names what a GRU keeps, its own initialisation, and is taken (and what
    a GRU run records, given or not); a GRU run that recorded chrono (as the controls of
    the chrono rows of ``reproduce`` once did) resumes: a value its family ignores is no difference."""
    out = tmp_path / "run"
    argv = ["train", "--task", "adding-modern", "--cell", "gru", *TINY, "--out", str(out)]
    assert main([*argv, "--lstm-init", "torch"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["lstm_init"] == "torch"
    pointer = out / "checkpoint.json"
    meta = json.loads(pointer.read_text())
    meta["extra"]["config"]["lstm_init"] = "chrono"
    pointer.write_text(json.dumps(meta))
    capsys.readouterr()
    resumed = ["train", "--task", "adding-modern", "--steps", "30", "--no-progress", "--out", str(out), "--resume"]
    assert main([*resumed, "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 30


def test_resume_under_another_task_machine_and_stopping_rule(capsys, tmp_path):
    """Another --task is refused as a different setting (not judged by the other task's sizes); the
    machine's settings are not inherited (a run checkpointed on a GPU resumes here); --stop undoes
    a --no-stop."""
    out = tmp_path / "run"
    argv = ["train", "--task", "adding-modern", *TINY, "--steps", "10", "--no-stop", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    line = one_error_line(capsys, ["train", "--task", "adding", "--out", str(out), "--resume"])
    assert "different settings (" in line and "task: checkpoint 'adding-modern', now 'adding'" in line
    pointer = out / "checkpoint.json"
    meta = json.loads(pointer.read_text())
    meta["extra"]["config"]["device"] = "cuda"  # as a GPU run saves it
    pointer.write_text(json.dumps(meta))
    assert (
        main(
            [
                "train",
                "--task",
                "adding-modern",
                "--steps",
                "20",
                "--stop",
                "--no-progress",
                "--out",
                str(out),
                "--resume",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["device"] == "auto" and config["stop_when_solved"] is True and config["hidden"] == 8
    assert "not allowed with argument" in one_error_line(capsys, [*argv, "--stop"])


def test_resume_drops_a_metrics_line_cut_short(capsys, tmp_path):
    """A metrics line whose write was cut off (disk full, power loss) does not stop a resume: it
    came after the checkpoint, so it is dropped and its step logged again; the log then reads as
    an uninterrupted run's."""
    out, whole = tmp_path / "run", tmp_path / "whole"
    argv = ["train", "--task", "adding-modern", *TINY, "--log-every", "1"]
    assert main([*argv, "--steps", "10", "--out", str(out)]) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "seq')
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert main([*argv, "--out", str(whole)]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines) and lines == (whole / "metrics.jsonl").read_text().splitlines()


def test_a_damaged_metrics_line_before_the_last_is_one_error_line(capsys, tmp_path):
    out = tmp_path / "run"
    argv = _finished_run(capsys, out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(["{oops", *lines]) + "\n")
    line = one_error_line(capsys, [*argv, "--steps", "30", "--out", str(out), "--resume"])
    assert "metrics.jsonl line 1 is damaged" in line and "--overwrite" in line


def test_compare_keeps_the_runs_already_in_its_directory(capsys, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "adding-modern", "--cells", "rnn,gru", *TINY, "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    before = (out / "gru" / "checkpoint.json").read_bytes()
    line = one_error_line(capsys, [*argv, "--steps", "5"])
    assert f"{out / 'rnn'} already holds a run (its checkpoint is at step 20)" in line and "--overwrite" in line
    assert (out / "gru" / "checkpoint.json").read_bytes() == before
    assert main([*argv, "--steps", "5", "--overwrite"]) == 0
    assert json.loads((out / "gru" / "checkpoint.json").read_text())["step"] == 5


@pytest.mark.parametrize("clip", ["nan", "-1"])
def test_a_clip_that_is_not_a_finite_non_negative_number_is_refused(capsys, clip):
    line = one_error_line(capsys, ["train", "--task", "adding-modern", *TINY, "--clip", clip])
    assert "clip must be 0 (none) or a positive number" in line


def test_the_demo_trains_a_task_of_fixed_length_at_its_own_length(tmp_path):
    """``demo --task digits`` failed: the demo's T=100 default is the default task's, and digits
    is fixed at 64 pixels."""
    from gatedrnn.viz.demo import add_demo_arguments, demo_configs

    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    for argv, expected in ((["--task", "digits"], None), ([], 100), (["--task", "digits", "--seq-len", "64"], 64)):
        configs = demo_configs(parser.parse_args(argv), tmp_path)
        assert {c.seq_len for c in configs} == {expected}
        for config in configs:
            config.validate()


def test_reproduce_counts_wrong_sequences_on_a_test_set_of_their_own(tmp_path, capsys, monkeypatch):
    """The stopping rule reads the run's own test set, so the table's last count comes from
    another one: seed + HELD_OUT_SEED_OFFSET, as ``gatedrnn evaluate --seed`` draws it."""
    calls, evaluate_saved = [], reproduce.evaluate_saved

    def spy(path, seed=None, **kwargs):
        calls.append((Path(path), seed))
        return dict(evaluate_saved(path, seed=seed, **kwargs), wrong=7)  # a count to follow into the table

    monkeypatch.setattr(reproduce, "evaluate_saved", spy)
    out = tmp_path / "rep"
    assert (
        main(
            ["reproduce", "hochreiter1997", "--rows", "6a", "--seeds", "1", "--budget-scale", "0.01", "--out", str(out)]
        )
        == 0
    )
    capsys.readouterr()
    assert calls == [(out / "6a" / "seed0", reproduce.HELD_OUT_SEED_OFFSET)]
    [[summary]] = json.loads((out / "hochreiter1997-quick.json").read_text())
    assert (summary["held_out_wrong"], summary["held_out_tested"]) == (7, 2560)
    row = next(line for line in (out / "hochreiter1997-quick.md").read_text().splitlines() if line.startswith("| 6a"))
    assert "| 7 / 2560 |" in row and "| 1 / 2560 |" in row  # ours, then the paper's
    task = make_task("order-6a", seq_len=100)
    first = [
        next(task.test_batches(torch.Generator().manual_seed(s + TEST_SEED_OFFSET), 64)).inputs
        for s in (0, reproduce.HELD_OUT_SEED_OFFSET)
    ]
    assert not torch.equal(*first)  # two different test sets


SIX_CELLS = "rnn,lstm,gru,slstm,mingru,minlstm"
SHORT = {"digits": 64, "digits-permuted": 64, "charlm": 16}
"""A length every task takes (fixed at 64 for the digits), for tiny runs."""


@pytest.mark.parametrize("task", task_names())
def test_compare_s_six_cells_learn_on_every_task(task, tmp_path):
    """The run ``compare --cells rnn,lstm,gru,slstm,mingru,minlstm`` configures for each cell,
    on any task, validates and trains: a finite loss, a gradient for every parameter, the
    task's criterion per sequence."""
    cells = SIX_CELLS.split(",")
    length = str(SHORT.get(task, 24))
    args = build_parser().parse_args(["compare", "--task", task, "--cells", SIX_CELLS, "--seq-len", length])
    for cell in cells:
        config = replace(config_from_args(args, cell, str(tmp_path / cell), cells=cells), hidden=8)
        config.validate()
        built = build_task(config)
        model = build_model(config, built)
        batch = built.sample(3, torch.Generator().manual_seed(0))
        output, _ = model(batch.inputs)
        loss = built.loss(output, batch)
        loss.backward()
        assert torch.isfinite(loss), cell
        assert all(p.grad is not None for p in model.parameters()), cell
        assert built.correct(output.detach(), batch).shape == (3,)


def test_compare_runs_the_six_cells_on_a_length_generalisation_task(capsys, tmp_path):
    out = tmp_path / "cmp"
    sizes = ["--seq-len", "4", "--task-opt", "test_max=12", "--task-opt", "per_length=1"]
    argv = ["compare", "--task", "parity", "--cells", SIX_CELLS, *sizes, "--hidden", "8", "--batch", "4"]
    assert main([*argv, "--steps", "2", "--eval-every", "0", "--no-progress", "--out", str(out)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:8]
    assert [line.split()[0] for line in rows] == SIX_CELLS.split(",")
    summary = json.loads((out / "slstm" / "summary.json").read_text())
    assert (summary["steps"], summary["tested"]) == (2, 12)


@pytest.mark.parametrize("full, seeds, steps", [(False, 1, 3000), (True, 3, 20000)], ids=["quick", "full"])
def test_reproduce_formal_runs_every_cell_on_each_row(tmp_path, monkeypatch, full, seeds, steps):
    """The formal table trains each of the six cells on each row, 1 seed quick and 3 full, at the
    row's budget, in out/<row>/<cell>/seed<S>; its lines give the papers' result, the band
    accuracies and the score in percent."""
    runs = []

    def fake_train(config):
        runs.append(config)
        return {"solved_sequences": None, "seconds": 1.0, "batch": config.batch, "steps": config.steps}

    held_out = {"wrong": 1, "sequences": 2, "accuracy": 0.5, "solved": False, "acc_1_40": 1.0, "score": 0.25}
    monkeypatch.setattr(reproduce, "train", fake_train)
    monkeypatch.setattr(reproduce, "evaluate_saved", lambda path, seed, test_batch: held_out)
    table, path = reproduce.reproduce("formal", full=full, out=tmp_path, rows="parity", progress=False)
    assert [(c.cell, c.seed) for c in runs] == [(c, s) for c in SIX_CELLS.split(",") for s in range(seeds)]
    assert {c.steps for c in runs} == {steps} and {c.task for c in runs} == {"parity"}
    assert runs[0].out == str(tmp_path / "parity" / "rnn" / "seed0")
    assert path == tmp_path / f"formal-{'full' if full else 'quick'}.md" and path.read_text() == table
    line = next(x for x in table.splitlines() if x.startswith("| lstm"))
    best = " (25.0)" if seeds > 1 else ""
    assert line.startswith(f"| lstm | 100.0 [D] | 0/{seeds} | 100.0 | 25.0{best} | - | {steps:,} |")


def test_reproduce_formal_quick_table_on_tiny_budgets(tmp_path, capsys, monkeypatch):
    """The whole quick pipeline, rows shrunk to tiny sizes: a table per row with its length
    bands, the runs and their commands, and a second call refused."""
    tiny = {"parity": {"test_max": 12, "per_length": 1}, "copy": {}}
    rows = tuple(
        replace(row, config=replace(row.config, seq_len=4, hidden=8, task_options=tiny[row.key]))
        for row in reproduce.FORMAL
        if row.key in tiny
    )
    monkeypatch.setattr(reproduce, "FORMAL", rows)
    out = tmp_path / "formal"
    argv = ["reproduce", "formal", "--cells", "lstm,mingru", "--budget-scale", "0.001", "--out", str(out)]
    assert main(argv) == 0
    table = (out / "formal-quick.md").read_text()
    assert table.strip() in capsys.readouterr().out
    assert "| cell | papers | solved | L 1-4 (%) | L 5-12 (%) | score: mean (best) |" in table
    assert "| cell | papers | solved | accuracy: mean (best) |" in table
    assert json.loads((out / "parity" / "mingru" / "seed0" / "summary.json").read_text())["steps"] == 3
    assert "- parity, mingru: `gatedrnn train --task parity --cell mingru --seq-len 4 --task-opt test_max=12" in table
    assert "already holds a table" in one_error_line(capsys, argv)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["formal", "--variant", "nfg"], "--variant applies to hochreiter1997 only, got --variant nfg for formal"),
        (["hochreiter1997", "--cells", "lstm,tree"], "unknown cell 'tree'; expected registered cells: "),
        (["formal", "--cells", "lstm,mgu"], "unknown cell 'mgu'; the formal table runs rnn, lstm"),
        (["formal", "--rows", "parity,nope"], "unknown row 'nope'; expected one of parity, modular-arithmetic"),
    ],
)
def test_reproduce_refuses_what_its_table_does_not_take(capsys, tmp_path, argv, expected):
    line = one_error_line(capsys, ["reproduce", *argv, "--out", str(tmp_path / "r")])
    assert expected in line and not (tmp_path / "r").exists()


def test_reproduce_jobs_share_the_runs_and_keep_their_order(monkeypatch):
    """With ``jobs`` > 1 the runs go to a pool of that many workers, the longest budget first,
    and come back in the order they were asked for."""
    from concurrent.futures import ThreadPoolExecutor

    pools, started = [], []

    class Pool(ThreadPoolExecutor):
        def __init__(self, workers, mp_context):
            pools.append((workers, mp_context.get_start_method()))
            super().__init__(1)

    def fake(config):
        started.append(config.steps)
        return {"steps": config.steps}

    monkeypatch.setattr(reproduce, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(reproduce, "train_and_hold_out", fake)
    configs = [TrainConfig(steps=s) for s in (5, 30, 10)]
    assert [s["steps"] for s in reproduce._run_all(configs, 2, "test", False)] == [5, 30, 10]
    assert pools == [(2, "spawn")] and started == [30, 10, 5]
