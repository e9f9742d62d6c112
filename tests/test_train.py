"""The training loop's promises: atomic checkpoints that load without running code, a run killed
with SIGKILL and resumed ends exactly like an uninterrupted one, and a 2-process DDP run follows
the single-process run with the same global batch. Also: the first steps are plain Adam on the
seeded data, the test metrics are the task's criterion over a test set of their own seed, a
resume refuses every setting outside ``RESUMABLE_CHANGES``, and ``TrainConfig.validate`` names
each bad field. Tiny runs (adding-modern at T=12, 8 units) on the CPU."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from gatedrnn import checkpoint
from gatedrnn.models import ModelConfig, SequenceModel, model_for_task
from gatedrnn.tasks import Batch, make_task
from gatedrnn.train import (
    TEST_SEED_OFFSET,
    ConfigError,
    TrainConfig,
    build_model,
    build_task,
    comparison_table,
    evaluate,
    refuse_to_replace,
    train,
)
from helpers import metrics_records

TINY = [
    "--task",
    "adding-modern",
    "--seq-len",
    "12",
    "--cell",
    "lstm",
    "--hidden",
    "8",
    "--batch",
    "8",
    "--lr",
    "0.01",
    "--eval-every",
    "40",
    "--log-every",
    "5",
    "--no-stop",
    "--no-progress",
    "--json",
]


def gatedrnn(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gatedrnn", *args], capture_output=True, text=True, timeout=240, **kwargs
    )


def tiny_config(out: Path, **changes) -> TrainConfig:
    values = dict(
        task="adding-modern",
        seq_len=12,
        cell="lstm",
        hidden=8,
        batch=8,
        lr=0.01,
        steps=30,
        eval_every=10,
        log_every=5,
        checkpoint_every=10,
        stop_when_solved=False,
        progress=False,
        device="cpu",
        out=str(out),
    )
    values.update(changes)
    return TrainConfig(**values)


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = model_for_task(make_task("adding-modern", seq_len=5), "gru", hidden_size=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 5, 2))[0].sum().backward()
    optimizer.step()
    return model, optimizer


def test_checkpoint_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model, optimizer = model_and_optimizer()
    generator = torch.Generator().manual_seed(7)
    torch.rand(3, generator=generator)
    checkpoint.save(tmp_path, 12, model, optimizer, generator, extra={"note": [1, 2]})
    expected_next = torch.rand(4, generator=generator)
    expected_global = torch.rand(4)
    torch.rand(10)

    loaded = checkpoint.load(tmp_path)
    assert loaded.step == 12 and loaded.extra == {"note": [1, 2]}
    assert loaded.model.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.model[k], v) for k, v in model.state_dict().items())
    fresh_model, fresh_optimizer = model_and_optimizer(seed=1)
    fresh_optimizer.load_state_dict(loaded.optimizer)
    for a, b in zip(fresh_optimizer.state.values(), optimizer.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    other = torch.Generator()
    checkpoint.set_rng_state(loaded.rng, other)
    assert torch.equal(torch.rand(4, generator=other), expected_next)
    assert torch.equal(torch.rand(4), expected_global)


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = model_and_optimizer()
    generator = torch.Generator().manual_seed(0)
    checkpoint.save(tmp_path, 1, model, optimizer, generator)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def dies_while_writing(tensors, filename):
        Path(filename).write_bytes(b"half a safetensors file")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(checkpoint, "save_file", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, model, optimizer, generator)
    loaded = checkpoint.load(tmp_path)
    assert loaded.step == 1
    assert all(torch.equal(loaded.model[k], before[k]) for k in before)

    monkeypatch.undo()
    monkeypatch.setattr(checkpoint.Path, "write_text", lambda self, text: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 3, model, optimizer, generator)  # tensors renamed, pointer not yet
    assert checkpoint.load(tmp_path).step == 1
    monkeypatch.undo()
    checkpoint.save(tmp_path, 4, model, optimizer, generator)
    assert checkpoint.load(tmp_path).step == 4
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.safetensors")) == ["checkpoint-000000004.safetensors"]


class _Trap:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_loading_cannot_execute_code(tmp_path, monkeypatch):
    model, optimizer = model_and_optimizer()
    checkpoint.save(tmp_path, 1, model, optimizer, torch.Generator())
    with monkeypatch.context() as m:

        def refuse(*args, **kwargs):
            raise AssertionError("a checkpoint loader must not unpickle")

        for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
            m.setattr(module, name, refuse)
        assert checkpoint.load(tmp_path).step == 1
    pointer = json.loads((tmp_path / checkpoint.POINTER).read_text())
    proof = tmp_path / "code-ran"
    (tmp_path / pointer["tensors"]).write_bytes(pickle.dumps(_Trap(str(proof))))
    with pytest.raises(Exception):  # noqa: B017 -- any refusal will do; what matters is that no code ran
        checkpoint.load(tmp_path)
    assert not proof.exists()


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


def _final(out: Path) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    summary = json.loads((out / "summary.json").read_text())
    tensors = load_file(str(next(out.glob("checkpoint-*.safetensors"))))
    return summary, tensors, (out / "metrics.jsonl").read_text().splitlines()


def _checkpointed_step(out: Path) -> int:
    """The step of the checkpoint a run is writing (0 before the first; -1 while unreadable)."""
    try:
        return json.loads((out / checkpoint.POINTER).read_text())["step"]
    except FileNotFoundError:
        return 0
    except ValueError:  # cannot happen with atomic writes: the test then fails below
        return -1


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    args = [*TINY, "--steps", "1500", "--checkpoint-every", "25"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    victim = subprocess.Popen(
        [sys.executable, "-m", "gatedrnn", "train", *args, "--out", str(broken)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 200
    while _checkpointed_step(broken) < 100 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = checkpoint.load(broken).step
    assert 100 <= killed_at < 1500, "the run finished before it could be killed; make it longer"

    done = gatedrnn("train", *args, "--out", str(whole))
    assert done.returncode == 0, done.stderr
    resumed = gatedrnn("train", *args, "--out", str(broken), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    (a, a_tensors, a_metrics), (b, b_tensors, b_metrics) = _final(whole), _final(broken)
    assert b["steps"] == a["steps"] == 1500
    assert b["final_loss"] == a["final_loss"] and b["train_loss"] == a["train_loss"]
    assert json.loads(resumed.stdout.splitlines()[-1])["final_loss"] == a["final_loss"]
    assert a_tensors.keys() == b_tensors.keys()
    assert all(torch.equal(a_tensors[k], b_tensors[k]) for k in a_tensors)
    assert a_metrics == b_metrics  # the log is continued, not restarted or duplicated


def test_resume_with_other_settings_is_refused(tmp_path):
    train(tiny_config(tmp_path, steps=10))
    with pytest.raises(ConfigError, match="hidden: checkpoint 8, now 9"):
        train(tiny_config(tmp_path, steps=20, hidden=9, resume=True))
    summary = train(tiny_config(tmp_path, steps=20, resume=True))
    assert summary["steps"] == 20


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (2 steps) and its config."""
    out = tmp_path_factory.mktemp("resumable") / "run"
    config = tiny_config(out, steps=2, checkpoint_every=2)
    train(config)
    return config


@pytest.mark.parametrize(
    "change",
    [
        dict(lr=0.02),
        dict(clip=0.5),
        dict(batch=4),
        dict(seed=1),
        dict(lstm_init="torch"),
        dict(layers=2),
        dict(task_options={"tolerance": 0.1}),
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_resume_refuses_each_setting_that_is_not_resumable(finished, change):
    """Only the fields of RESUMABLE_CHANGES may differ from the checkpointed run: another learning
    rate, clip, batch, seed, initialisation, depth or task option is named and refused."""
    name = next(iter(change))
    with pytest.raises(ConfigError, match=f"different settings \\({name}: checkpoint"):
        train(replace(finished, steps=3, resume=True, **change))


def test_a_resumed_run_counts_the_seconds_before_the_checkpoint(tmp_path):
    """The summary's seconds include the training time the checkpoint recorded."""
    train(tiny_config(tmp_path, steps=2))
    pointer = tmp_path / checkpoint.POINTER
    meta = json.loads(pointer.read_text())
    meta["extra"]["state"]["seconds"] = 1000.0
    pointer.write_text(json.dumps(meta))
    assert train(tiny_config(tmp_path, steps=4, resume=True))["seconds"] >= 1000.0


def test_stop_when_solved_and_the_summary(tmp_path):
    summary = train(tiny_config(tmp_path, task="lag-2a", seq_len=4, hidden=32, steps=600, stop_when_solved=True))
    assert summary["solved"] and summary["steps"] < 600
    assert summary["solved_step"] == summary["steps"] and summary["solved_sequences"] == summary["steps"] * 8
    assert (
        evaluate(
            model_for_task(make_task("lag-2a", seq_len=4), "lstm", 8),
            make_task("lag-2a", seq_len=4),
            0,
            torch.device("cpu"),
        )["sequences"]
        == 2
    )
    lines = comparison_table([summary])
    assert "lag-2a (T=4)" in lines[0] and "yes" in lines[2]


def test_solved_step_is_the_first_evaluation_that_met_the_criterion(tmp_path):
    """With --no-stop a run evaluates on after it is solved: solved_step stays at the first
    evaluation that met the criterion, not the last."""
    first = train(tiny_config(tmp_path / "stop", task="lag-2a", seq_len=4, hidden=32, steps=600, stop_when_solved=True))
    assert first["solved"]
    summary = train(tiny_config(tmp_path / "on", task="lag-2a", seq_len=4, hidden=32, steps=first["steps"] + 40))
    solved = [r["step"] for r in metrics_records(tmp_path / "on") if r.get("solved")]
    assert len(solved) > 1, "the run must be solved at several evaluations for this test to see the first"
    assert summary["solved_step"] == solved[0] == first["solved_step"]


def test_the_comparison_table_gives_the_loss_over_the_baseline():
    summary = dict(
        task="adding-modern",
        seq_len=12,
        hidden=8,
        seed=0,
        baseline=0.2,
        cell="lstm",
        variant="vanilla",
        steps=10,
        sequences=80,
        final_loss=0.05,
        accuracy=0.5,
        solved=False,
        solved_sequences=None,
        seconds=1.0,
    )
    row = comparison_table([summary])[2].split()
    assert row[4] == "0.25" and row[-2] == "-"


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


def test_lag_2a_long_lag_is_learned_at_p_20(tmp_path):
    # With the plain mean over the p steps (last_weight=1) the cells drift into saturation and the
    # last prediction stays at chance for thousands of steps; weighted, it is solved in about 200.
    summary = train(
        tiny_config(
            tmp_path,
            task="lag-2a",
            seq_len=20,
            hidden=32,
            batch=32,
            steps=600,
            eval_every=25,
            checkpoint_every=600,
            stop_when_solved=True,
        )
    )
    assert summary["solved"] and summary["steps"] < 600


def _kill_processes_mentioning(marker: str) -> None:
    """SIGKILL every process of this user whose command line contains ``marker`` (Linux /proc)."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace") and int(entry.name) != os.getpid():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    args = [*TINY, "--steps", "40", "--batch", "16", "--checkpoint-every", "40"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # --standalone: torchrun picks a free port itself; gloo talks over the loopback interface.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    out_file, err_file = tmp_path / "torchrun.out", tmp_path / "torchrun.err"
    # Output to files, not pipes: a worker that outlived the launcher would hold a pipe open and
    # block the read forever. torchrun starts each worker with setsid (a process group of its own), so
    # killing the launcher's group does not reach them: they are found by the unique --out in their
    # command line.
    with open(out_file, "w") as out, open(err_file, "w") as err:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "gatedrnn",
                "train",
                *args,
                "--out",
                str(ddp),
            ],
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        try:
            launcher.wait(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            _kill_processes_mentioning(str(ddp))
            launcher.wait()
            pytest.fail(f"torchrun did not finish in 240 s; its stderr ends with:\n{err_file.read_text()[-3000:]}")
        finally:
            _kill_processes_mentioning(str(ddp))  # no worker may outlive the test
    stdout, stderr = out_file.read_text(), err_file.read_text()
    assert launcher.returncode == 0, stderr[-3000:]
    alone = gatedrnn("train", *args, "--out", str(single))
    assert alone.returncode == 0, alone.stderr
    (a, a_tensors, a_metrics), (b, b_tensors, b_metrics) = _final(single), _final(ddp)
    assert b["world_size"] == 2 and a["world_size"] == 1
    summaries = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports
    assert len(b_metrics) == len(a_metrics)  # only rank 0 writes
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-4)
    for key in a_tensors:
        torch.testing.assert_close(b_tensors[key], a_tensors[key], rtol=1e-4, atol=1e-5, msg=key)
    a_losses = [json.loads(r)["loss"] for r in a_metrics if '"loss"' in r and '"eval"' not in r]
    b_losses = [json.loads(r)["loss"] for r in b_metrics if '"loss"' in r and '"eval"' not in r]
    assert b_losses == pytest.approx(a_losses, rel=1e-4)


@pytest.mark.parametrize(
    "variant, lstm_init, forget, input_",
    [
        ("vanilla", "long-lag", 3.0, -3.0),
        ("nfg", "long-lag", None, -3.0),
        ("cifg", "long-lag", 3.0, None),
        ("vanilla", "torch", None, None),
    ],
)
def test_lstm_gate_bias_initialisation(variant, lstm_init, forget, input_):
    from gatedrnn.config import LSTM_VARIANTS
    from gatedrnn.train import build_model, gate_biases

    config = TrainConfig(task="adding-modern", seq_len=5, hidden=6, layers=2, variant=variant, lstm_init=lstm_init)
    assert gate_biases(config) == (forget, input_)
    model = build_model(config, make_task("adding-modern", seq_len=5))
    gates = LSTM_VARIANTS[variant]
    for layer in range(2):
        b_ih, b_hh = getattr(model.rnn, f"bias_ih_l{layer}"), getattr(model.rnn, f"bias_hh_l{layer}")
        for gate, value in (("f", forget), ("i", input_)):
            if value is not None:
                rows = slice(gates.index(gate) * 6, (gates.index(gate) + 1) * 6)
                assert (b_ih[rows] == value).all() and (b_hh[rows] == 0).all()
        if lstm_init == "torch":
            assert b_ih.abs().max() < 1 / 6**0.5 + 1e-6  # torch.nn's U(-1/sqrt(H), 1/sqrt(H))
    assert gate_biases(TrainConfig(cell="gru")) == (None, None)
    with pytest.raises(ConfigError, match="--input-bias needs the 'i' gate, but variant 'cifg' has none"):
        TrainConfig(variant="cifg", input_bias=-1.0).validate()


@pytest.mark.parametrize("cell", ["gru", "rnn", "mingru", "minlstm"])
def test_a_family_without_a_forget_gate_keeps_its_own_initialisation(cell, tmp_path):
    """lstm_init initialises a family whose retention gate is f: another (decided by its
    retention gate, the minLSTM's f gate notwithstanding) is built alike under any of its values,
    validates with the default or torch (what it keeps) but refuses chrono, is given torch by
    settings_for, and resumes a run recorded with another value it ignores alike."""
    from gatedrnn.train import build_model, settings_for

    task = make_task("adding-modern", seq_len=5)

    def weights(lstm_init: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        config = TrainConfig(task="adding-modern", seq_len=5, cell=cell, hidden=6, lstm_init=lstm_init)
        return build_model(config, task).state_dict()

    own = weights("torch")
    for lstm_init in ("long-lag", "chrono"):
        assert all(torch.equal(own[k], v) for k, v in weights(lstm_init).items()), lstm_init
    TrainConfig(cell=cell, lstm_init="torch").validate()
    with pytest.raises(ConfigError, match=f"--lstm-init chrono initialises .* but --cell {cell} is not one"):
        TrainConfig(cell=cell, lstm_init="chrono").validate()
    assert settings_for(cell, lstm_init="chrono")["lstm_init"] == "torch"
    train(tiny_config(tmp_path, cell=cell, lstm_init="torch", steps=2, checkpoint_every=2))
    assert train(tiny_config(tmp_path, cell=cell, steps=4, resume=True))["steps"] == 4


@pytest.mark.parametrize("cell, variant", [("lstm", "vanilla"), ("lstm", "nfg"), ("slstm", "vanilla")])
def test_settings_for_keeps_the_lstm_init_of_a_family_whose_memory_a_forget_gate_keeps(cell, variant):
    """The LSTM (its nfg variant too, whose input-gate biases chrono sets) and the sLSTM take it."""
    from gatedrnn.train import family_settings_problem, settings_for

    assert settings_for(cell, variant, lstm_init="chrono")["lstm_init"] == "chrono"
    assert family_settings_problem(cell, variant, lstm_init="chrono", hidden=8) is None


@pytest.mark.parametrize("variant", ["vanilla", "nfg"])
def test_chrono_initialisation_spreads_forgetting_times_over_the_task_length(variant):
    """chrono: per unit b_f = log u, u ~ U[1, T - 1], b_i = -b_f in bias_ih (bias_hh's rows zero),
    a fresh draw per layer, the same for the same seed; the nfg cell gets its input-gate half."""
    from gatedrnn.config import LSTM_VARIANTS
    from gatedrnn.train import build_model, gate_biases

    T, H = 400, 300
    config = TrainConfig(task="adding", seq_len=T, hidden=H, layers=2, variant=variant, lstm_init="chrono")
    config.validate()
    model = build_model(config, make_task("adding", seq_len=T))
    gates = LSTM_VARIANTS[variant]
    rows = {g: slice(gates.index(g) * H, (gates.index(g) + 1) * H) for g in ("i", "f") if g in gates}
    drawn = []
    for layer in range(2):
        b_ih, b_hh = getattr(model.rnn, f"bias_ih_l{layer}"), getattr(model.rnn, f"bias_hh_l{layer}")
        b_i = b_ih[rows["i"]].detach()
        u = (-b_i).exp()
        assert u.min() >= 1 - 1e-5 and u.max() <= T - 1 + 1e-3
        assert 0.4 < float(((u - 1) / (T - 2)).mean()) < 0.6  # uniform over [1, T - 1]
        if "f" in rows:
            assert torch.equal(b_ih[rows["f"]], -b_i)
        for rows_of_gate in rows.values():
            assert (b_hh[rows_of_gate] == 0).all()
        drawn.append(b_i)
    assert not torch.equal(drawn[0], drawn[1])
    again = build_model(config, make_task("adding", seq_len=T))
    assert torch.equal(again.rnn.bias_ih_l1[rows["i"]], model.rnn.bias_ih_l1[rows["i"]])  # the seed's draw
    assert gate_biases(config) == (None, None)


def test_a_sequence_model_passes_reset_to_its_layer():
    """reset (B, T) restarts a sequence inside the call: the outputs from there on are the ones a
    fresh call on the rest of the sequence gives."""
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(cell="lstm", input_size=3, output_size=2, hidden_size=4)).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    reset = torch.zeros(2, 7, dtype=torch.bool)
    reset[1, 4] = True
    out, _ = model(x, reset=reset)
    torch.testing.assert_close(out[1, 4:], model(x[1:, 4:])[0][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0], model(x[:1])[0][0], rtol=0, atol=1e-12)


def test_a_sequence_model_refuses_lstm_options_for_other_cells():
    """variant (like forget_bias and input_bias) applies to the LSTM only."""
    with pytest.raises(ValueError, match="variant applies to lstm only, got cell='gru'"):
        SequenceModel(ModelConfig(cell="gru", input_size=2, output_size=1, variant="nfg"))


@pytest.mark.parametrize(
    "change, message",
    [
        *[
            (dict([(name, 0)]), f"{name.replace('_', '-')} must be a positive integer, got 0")
            for name in (
                "hidden",
                "layers",
                "threads",
                "embedding_dim",
                "steps",
                "batch",
                "checkpoint_every",
                "log_every",
                "test_batch",
            )
        ],
        (dict(seq_len=0), "seq-len must be a positive integer, got 0"),
        (dict(eval_every=-1), "eval-every must be 0 (only at the end) or positive, got -1"),
        (dict(lr=0.0), "lr must be a positive number, got 0.0"),
        (dict(lr=math.inf), "lr must be a positive number, got inf"),
        (dict(device="tpu"), "device must be auto, cpu or cuda, got 'tpu'"),
        (dict(cell="gru", variant="nfg"), "--variant applies to --cell lstm only, got --cell gru"),
        (dict(cell="rnn", input_bias=-1.0), "--input-bias needs the 'i' gate, but --cell rnn has none"),
        (dict(lstm_init="xavier"), "lstm-init must be one of long-lag, torch, chrono, got 'xavier'"),
        (
            dict(lstm_init="chrono", forget_bias=2.0),
            "lstm-init chrono draws both the forget- and the input-gate biases; got it with forget-bias 2.0",
        ),
        (
            dict(lstm_init="chrono", cell="gru"),
            "--lstm-init chrono initialises a family whose memory a forget gate 'f' keeps (lstm, slstm), "
            "but --cell gru is not one (its retention gate is 'z')",
        ),
        (dict(lstm_init="chrono", cell="minlstm"), "--cell minlstm is not one (it has no retention gate)"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_validate_refuses_each_bad_field(change, message):
    """TrainConfig.validate names each bad field itself (the CLI's parsers refuse most of these
    before it, so only a direct use of the API reaches these checks)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**change).validate()


def test_from_dict_ignores_keys_it_does_not_know():
    """A config written by another version (an extra field) still loads, the field dropped."""
    config = TrainConfig.from_dict({**TrainConfig(hidden=5).to_dict(), "a_later_field": 1})
    assert config == TrainConfig(hidden=5)


def test_a_run_starting_afresh_deletes_the_checkpoint_it_replaces(tmp_path):
    """Otherwise a run killed before its first checkpoint would leave the old run's checkpoint
    beside its own config, and --resume would restore the old run."""
    from gatedrnn.train import RunFiles, build_task

    config = tiny_config(tmp_path, steps=10)
    train(config)
    assert checkpoint.exists(tmp_path) and list(tmp_path.glob("checkpoint-*.safetensors"))
    RunFiles(str(tmp_path), True).start(config, build_task(config), 0)
    assert not checkpoint.exists(tmp_path) and not list(tmp_path.glob("checkpoint-*"))
    RunFiles(str(tmp_path), True).start(config, build_task(config), 0)  # nothing left to delete: fine


def test_checkpoint_restores_the_numpy_and_python_rng(tmp_path):
    model, optimizer = model_and_optimizer()
    np.random.seed(3)
    random.seed(4)
    checkpoint.save(tmp_path, 1, model, optimizer, torch.Generator())
    expected_np, expected_py = np.random.rand(3), random.random()
    np.random.rand(5), random.random()
    checkpoint.set_rng_state(checkpoint.load(tmp_path).rng, torch.Generator())
    assert np.array_equal(np.random.rand(3), expected_np)
    assert random.random() == expected_py


def test_loaded_optimizer_state_belongs_to_the_parameters(tmp_path):
    model, optimizer = model_and_optimizer()
    checkpoint.save(tmp_path, 1, model, optimizer, torch.Generator())
    fresh_model, fresh_optimizer = model_and_optimizer(seed=1)
    fresh_optimizer.load_state_dict(checkpoint.load(tmp_path).optimizer)
    assert set(fresh_optimizer.state) == set(fresh_model.parameters())
    for new, old in zip(fresh_model.parameters(), model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(fresh_optimizer.state[new][key], optimizer.state[old][key]), key


def test_a_save_deletes_the_temporary_files_of_killed_writes(tmp_path):
    model, optimizer = model_and_optimizer()
    (tmp_path / "checkpoint-000000002.safetensors.tmp").write_bytes(b"half a safetensors file")
    (tmp_path / "checkpoint.json.tmp").write_text("{")
    checkpoint.save(tmp_path, 3, model, optimizer, torch.Generator())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000000003.safetensors", "checkpoint.json"]


def test_clearing_a_run_directory_deletes_the_temporary_files_of_killed_writes(tmp_path):
    """A run starting afresh leaves no half-written checkpoint.json.tmp or tensors .tmp behind
    (the save that follows would replace the first, but clear() alone must delete both)."""
    (tmp_path / "checkpoint.json.tmp").write_text("{")
    (tmp_path / "checkpoint-000000002.safetensors.tmp").write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("not ours")
    checkpoint.clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


def test_a_family_whose_options_constrain_the_width_validates_at_the_run_s_width():
    """The sLSTM's default 4 heads divide 128 units: the settings are checked at the run's width."""
    from gatedrnn.cli import main
    from gatedrnn.train import gate_biases

    config = TrainConfig(task="charlm", cell="slstm", hidden=128)
    config.validate()
    assert gate_biases(replace(config, lstm_init="torch")) == (None, None)
    with pytest.raises(ConfigError, match=r"hidden_size \(6\) must be divisible by num_heads \(4\)"):
        replace(config, hidden=6).validate()
    assert main(["train", "--task", "charlm", "--cell", "slstm", "--hidden", "6", "--steps", "1"]) == 2
