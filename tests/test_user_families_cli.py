"""A user's own cell family through the command line: ``--family-module`` and ``--cell`` on ``train``,
``compare``, ``evaluate``, ``--resume`` and ``gates``; ``--family-opt``; a saved run that records
where its family came from, is rebuilt from there in a fresh process, and names it in one error
line when it cannot be found.

The family is the minimal gated unit (Zhou et al. 2016), written to a file as a user would:

    f = sigma(W_f x + U_f h + b_f),  n = act(W_n x + U_n (f * h) + b_n),  h' = (1 - f) * h + f * n
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import gatedrnn
from gatedrnn import checkpoint, saved
from gatedrnn.cli import build_parser, main

MGU_SOURCE = '''
import torch
import gatedrnn


@gatedrnn.register_family
class MGU(gatedrnn.CellFamily):
    """The minimal gated unit: one gate f that both forgets and admits the candidate n."""

    name, gates, states = "mgu", ("f", "n"), ("h",)
    option_defaults = {"activation": "tanh"}

    def check_options(self):
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"MGU: activation must be tanh or relu, got {self.activation!r}")

    def step(self, x_proj, states, weights):
        (h,) = states
        x_f, x_n = x_proj.split(self.hidden_size, dim=-1)
        u_f, u_n = weights["weight_hh"].split(self.hidden_size)
        b_f, b_n = weights["bias_hh"].split(self.hidden_size) if "bias_hh" in weights else (0.0, 0.0)
        f = torch.sigmoid(x_f + h @ u_f.T + b_f)
        n = getattr(torch, self.activation)(x_n + (f * h) @ u_n.T + b_n)
        return ((1 - f) * h + f * n,), {"f": f, "n": n}
'''

TINY = [
    "--task",
    "adding-modern",
    "--seq-len",
    "12",
    "--hidden",
    "8",
    "--batch",
    "8",
    "--eval-every",
    "0",
    "--checkpoint-every",
    "2",
    "--no-progress",
]
CHARLM = [
    "--task",
    "charlm",
    "--seq-len",
    "16",
    "--hidden",
    "6",
    "--embedding-dim",
    "4",
    "--batch",
    "4",
    "--steps",
    "2",
    "--eval-every",
    "0",
    "--no-progress",
]


@pytest.fixture
def family_file(tmp_path):
    """``my_cells.py`` in tmp_path, registering ``mgu`` when imported; unregistered afterwards."""
    path = tmp_path / "my_cells.py"
    path.write_text(MGU_SOURCE)
    yield path
    if "mgu" in gatedrnn.registered_families():
        gatedrnn.unregister_family("mgu")
    sys.modules.pop("my_cells", None)


def forget(family: str = "mgu") -> None:
    """Unregister ``family`` as a fresh process would lack it (its module forgotten too)."""
    gatedrnn.unregister_family(family)
    sys.modules.pop("my_cells", None)


def run_json(capsys, argv: list[str]) -> dict:
    """Run ``gatedrnn argv --json``; assert success; return the JSON of the last line."""
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def error_line(capsys, argv: list[str]) -> str:
    """Run ``gatedrnn argv``; assert exit code 2 and one ``error:`` line; return it."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_train_evaluate_and_resume_a_user_family(tmp_path, family_file, capsys):
    """train records the family and its file; evaluate reproduces the run's test loss; a resume in
    a process without the family, given its file, ends exactly where an uninterrupted run ends."""
    run = tmp_path / "run"
    first = run_json(
        capsys,
        ["train", "--family-module", str(family_file), "--cell", "mgu", *TINY, "--steps", "4", "--out", str(run)],
    )
    record = {"name": "mgu", "module": "my_cells", "class": "MGU", "file": str(family_file)}
    assert json.loads((run / "config.json").read_text())["family"] == record
    assert checkpoint.saved_extra(run)["family"] == record
    saved_run = saved.read(run)
    model = saved.rebuild(saved_run.meta, saved_run.tensors)
    assert type(model.rnn) is gatedrnn.Recurrent and model.rnn.cell_config.gates == ("f", "n")
    assert model.rnn.weight_hh_l0.shape == (2 * 8, 8)

    assert run_json(capsys, ["evaluate", str(run)])["loss"] == pytest.approx(first["final_loss"], rel=1e-6)

    forget()
    resumed = run_json(
        capsys, ["train", *TINY[:2], "--resume", "--out", str(run), "--steps", "6", "--family-module", str(family_file)]
    )
    whole = run_json(
        capsys,
        [
            "train",
            "--family-module",
            str(family_file),
            "--cell",
            "mgu",
            *TINY,
            "--steps",
            "6",
            "--out",
            str(tmp_path / "whole"),
        ],
    )
    assert (resumed["steps"], resumed["cell"]) == (6, "mgu")
    assert resumed["final_loss"] == whole["final_loss"]


def test_compare_a_user_family_with_a_built_in_one(tmp_path, family_file, capsys):
    """--cells takes a family --family-module registers; --family-opt goes to the cells that have it."""
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--family-module",
                str(family_file),
                "--cells",
                "mgu,gru",
                *TINY,
                "--steps",
                "2",
                "--family-opt",
                "activation=relu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert re.search(r"^mgu\s", printed, re.M) and re.search(r"^gru\s", printed, re.M)
    configs = {c: json.loads((out / c / "config.json").read_text())["train"] for c in ("mgu", "gru")}
    assert configs["mgu"]["family_options"] == {"activation": "relu"} and configs["gru"]["family_options"] == {}


def test_family_options_and_gate_flags_are_decided_by_what_the_family_takes(tmp_path, family_file, capsys):
    """--family-opt is checked against option_defaults and parsed as a literal; --forget-bias needs
    a gate f (the MGU has one), --input-bias a gate i, --variant a variant option."""
    module = ["--family-module", str(family_file)]
    run = tmp_path / "relu"
    assert (
        main(
            [
                "train",
                *module,
                "--cell",
                "mgu",
                *TINY,
                "--steps",
                "2",
                "--family-opt",
                "activation=relu",
                "--forget-bias",
                "1.5",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    saved_run = saved.read(run)
    assert saved_run.meta["train"]["family_options"] == {"activation": "relu"}
    model = saved.rebuild(saved_run.meta, saved_run.tensors)
    assert model.rnn.cell_config.activation == "relu"

    cases = [
        (
            ["--family-opt", "nope=1"],
            "--family-opt nope: the cell family 'mgu' has no option 'nope'; options: activation",
        ),
        (["--family-opt", "activation=sigmoid"], "activation must be tanh or relu, got 'sigmoid'"),
        (["--family-opt", "activation"], "--family-opt expects KEY=VALUE, got 'activation'"),
        (["--input-bias", "-1"], "--input-bias needs the 'i' gate, but --cell mgu has none (its gates: f, n)"),
        (["--variant", "nfg"], "--variant applies to --cell lstm only, got --cell mgu"),
        (
            ["--lstm-init", "chrono"],  # its gate f is not declared its retention gate
            "--lstm-init chrono initialises a family whose memory a forget gate 'f' keeps (lstm, slstm), "
            "but --cell mgu is not one (it has no retention gate)",
        ),
    ]
    for flags, expected in cases:
        assert expected in error_line(
            capsys, ["train", *module, "--cell", "mgu", *TINY, *flags, "--out", str(tmp_path / "bad")]
        )
    line = error_line(
        capsys, ["train", "--cell", "gru", *TINY, "--family-opt", "layer_norm=maybe", "--out", str(tmp_path / "bad")]
    )
    assert "--family-opt layer_norm=maybe: expected true or false for layer_norm" in line
    assert not (tmp_path / "bad").exists()


def test_the_forget_bias_lands_in_the_user_familys_f_rows(family_file):
    """The gate-bias flags reach any family with the gate: b_ih's f rows = the bias, b_hh's 0."""
    from gatedrnn.models import import_family_module
    from gatedrnn.tasks import make_task
    from gatedrnn.train import TrainConfig, build_model, gate_biases

    import_family_module(str(family_file))
    config = TrainConfig(task="adding-modern", seq_len=5, cell="mgu", hidden=3, forget_bias=2.0)
    config.validate()
    assert gate_biases(config) == (2.0, None)  # lstm_init applies to a family whose retention gate is f only
    rnn = build_model(config, make_task("adding-modern", seq_len=5)).rnn
    assert (rnn.bias_ih_l0[:3] == 2.0).all() and (rnn.bias_hh_l0[:3] == 0).all()
    assert gate_biases(TrainConfig(cell="mgu")) == (None, None)


def test_the_gate_viewer_shows_a_user_familys_gates(tmp_path, family_file, capsys):
    """gates --model RUN --family-module FILE: the page has the MGU's f, n and h, opens on h."""
    run, out = tmp_path / "charlm", tmp_path / "page"
    assert main(["train", "--family-module", str(family_file), "--cell", "mgu", *CHARLM, "--out", str(run)]) == 0
    forget()
    assert (
        main(
            [
                "gates",
                "It is a truth",
                "--model",
                str(run),
                "--family-module",
                str(family_file),
                "--out",
                str(out),
                "--span-window",
                "4",
            ]
        )
        == 0
    )
    assert "MGU:" in capsys.readouterr().out
    page = (out / "gates.html").read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert (data["cell"], data["names"], data["initial"]) == ("mgu", ["f", "n", "h"], "h")
    assert set(data["layers"][0]) == {"f", "n", "h"} and len(data["layers"][0]["f"]) == 6
    assert data["ranges"] == {"f": [0.0, 1.0], "n": [-1.0, 1.0], "h": None}
    assert data["descriptions"]["h"] == "state h: the layer's output"
    assert list(data["scores"]) == ["memory span of h (mean influence distance, chars)", "activity (std of h)"]
    for name in ("gates.png", "memory_span.png"):
        assert (out / name).stat().st_size > 1000


FRESH_PROCESS = """
import sys
from gatedrnn.cli import main

run, file = sys.argv[1:]
missing = main(["evaluate", run])
sys.exit(10 * missing + main(["evaluate", run, "--family-module", file]))
"""
"""In a new process: evaluate without the family's file named (exit 2), then with it (exit 0)."""


def test_a_fresh_process_names_the_missing_family_and_rebuilds_it_from_the_named_file(tmp_path, family_file, capsys):
    """In a new process, evaluate names the family, its module, class and file, and the flag in one
    error line, without executing the file the run records; with --family-module it rebuilds the run.
    gates and --resume say the same."""
    run = tmp_path / "run"
    assert main(["train", "--family-module", str(family_file), "--cell", "mgu", *CHARLM, "--out", str(run)]) == 0
    capsys.readouterr()
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(run), str(family_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    expected = (
        f"error: the run's cell family 'mgu' (module my_cells, class MGU, from {family_file}) is not "
        "registered (a file a run names is executed only when given as --family-module): pass "
        "--family-module PATH_OR_MODULE"
    )
    assert fresh.returncode == 20, fresh.stderr
    assert fresh.stderr.startswith(expected) and fresh.stderr.count("\n") == 1, fresh.stderr
    assert "charlm mgu (hidden 6, step 2)" in fresh.stdout

    forget()
    for argv in (
        ["gates", "It is", "--model", str(run), "--out", str(tmp_path / "page")],
        ["train", *CHARLM[:2], "--resume", "--out", str(run), "--steps", "3"],
    ):
        assert error_line(capsys, argv).startswith(expected)
    assert main(["evaluate", str(run), "--family-module", str(family_file)]) == 0


def test_each_command_s_help_says_what_its_family_module_is_for():
    """--cell (train) and --cells (compare) name the families a module registers; evaluate, export,
    gates and sample, which have no --cell for them, take the module of the saved model's family,
    which a file's family needs (a run never executes the file it names, as the test above shows)."""
    commands = build_parser().subcommands()

    def help_of(command: str) -> str:
        return next(a.help for a in commands[command]._actions if "--family-module" in a.option_strings)

    assert "can be named by --cell; with --resume, the one that registers the run's family" in help_of("train")
    assert help_of("compare").endswith("gatedrnn.register_family can be named by --cells")
    for command, whose in [("evaluate", "the saved model's"), ("export", "the saved model's")] + [
        (c, "the cell family of --model") for c in ("gates", "sample")
    ]:
        text = help_of(command)
        assert f"the one that registers {whose}" in text and "--cell " not in text and "--cell;" not in text
    for command in ("train", "evaluate", "export", "gates", "sample"):
        assert "a family defined in a file, which a saved run names but never executes" in help_of(command)
    gates = commands["gates"].description
    assert "one defined in a file is not" in gates and "give that file with --family-module" in gates


def test_an_unregistered_cell_or_a_broken_module_is_one_error_line(tmp_path, capsys):
    assert (
        f"invalid choice: 'mgu' (choose from {', '.join(gatedrnn.registered_families())}; "
        "a family of your own: --family-module" in error_line(capsys, ["train", "--cell", "mgu", *TINY])
    )
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no cells here')\n")
    assert error_line(capsys, ["train", "--family-module", str(broken), *TINY]) == (
        f"error: --family-module {broken}: cannot import it (RuntimeError: no cells here)"
    )
    assert "no file or importable module 'no_such_cells'" in error_line(
        capsys, ["evaluate", "x", "--family-module", "no_such_cells"]
    )
