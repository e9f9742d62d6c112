"""Evaluating a saved model on its task (``gatedrnn evaluate``): test loss, accuracy, the task's
own measures and its success criterion, at the sizes it was trained at or at others.

At the sizes and seed it was trained with, the test set is the one :func:`gatedrnn.train.train`
judged the run on, so the numbers of a finished run are its ``summary.json``'s. A different
``seq_len`` asks whether what the network learnt carries over to longer (or shorter) lags: the
1997 tasks are defined for any T, and a network that truly stores the relevant input keeps its
accuracy as T grows, while one that learnt a length-specific shortcut does not. A different
``seed`` draws a fresh test set from the same distribution (for generated tasks; tasks with a
fixed split, charlm and digits, use the same one).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import saved
from .train import ConfigError, TrainConfig, build_task, evaluate

MODEL_SIZES = ("input_size", "output_size", "vocab_size", "vocab")
"""Task sizes a model's weights are built for: evaluating on a task that changes one is refused."""


def evaluate_saved(
    path: str | Path | saved.SavedModel,
    seq_len: int | None = None,
    task_options: dict[str, Any] | None = None,
    seed: int | None = None,
    test_batch: int = 1024,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate the model saved at ``path`` (any form :func:`gatedrnn.saved.read` takes, or what
    it returned) on its task.

    Args:
        seq_len: the task's length T (None: the length it was trained at).
        task_options: task options to change (the others stay as trained).
        seed: the run seed whose test set is drawn (None: the run's own).
        test_batch: sequences per forward pass.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).

    Returns:
        ``{"model", "task", "cell", "variant", "hidden", "layers", "step", "seq_len",
        "trained_seq_len", "seed", "baseline"}`` and :func:`gatedrnn.train.evaluate`'s metrics
        (``loss``, ``accuracy``, ``wrong``, ``sequences``, the task's measures, ``solved``).

    Raises:
        SavedModelError: the files cannot be read or do not match their config.
        ConfigError: the task rejects the sizes, or they change the sizes the model is built for.
    """
    model_file = path if isinstance(path, saved.SavedModel) else saved.read(path)
    path = model_file.source
    trained = TrainConfig.from_dict(model_file.meta["train"])
    if not isinstance(trained.task, str) or not isinstance(trained.task_options, dict):
        raise saved.SavedModelError(
            f"the config of {str(path)!r} names no task or mangles its options "
            f"(task {trained.task!r}, task_options {trained.task_options!r})"
        )
    config = replace(
        trained,
        seq_len=trained.seq_len if seq_len is None else seq_len,
        task_options={**trained.task_options, **(task_options or {})},
        seed=trained.seed if seed is None else seed,
        test_batch=test_batch,
    )
    task = build_task(config)
    _check_sizes(model_file.meta["task"], task.describe(), config)
    target = _device(device)
    model = saved.rebuild(model_file.meta, model_file.tensors).to(target)
    metrics = evaluate(model, task, config.seed, target, test_batch)
    return {
        "model": str(path),
        "task": config.task,
        "cell": config.cell,
        "variant": config.variant,
        "hidden": config.hidden,
        "layers": config.layers,
        "step": model_file.step,
        "seq_len": task.seq_len,
        "trained_seq_len": model_file.meta["task"].get("seq_len"),
        "seed": config.seed,
        "baseline": task.baseline,
        **metrics,
    }


def _check_sizes(trained: dict[str, Any], now: dict[str, Any], config: TrainConfig) -> None:
    """Refuse task sizes under which the model's input, output or vocabulary would differ."""
    for key in MODEL_SIZES:
        if key in trained and trained[key] != now.get(key):
            shown = "its vocabulary" if key == "vocab" else f"{key} {trained[key]}"
            raise ConfigError(
                f"the model was trained on {config.task} with {shown}, but with seq_len={now['seq_len']} "
                f"and options {config.task_options or '{}'} the task has "
                f"{'another vocabulary' if key == 'vocab' else f'{key} {now.get(key)}'}: its weights "
                "cannot read that task (evaluate it with sizes that keep its inputs and outputs)"
            )


def _device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def result_line(result: dict[str, Any]) -> str:
    """One line for the terminal: what was evaluated and how it did. A language model (a task that
    measures ``bpc``, bits per character) is told by its bits per character, its loss in nats per
    character beside the no-memory baseline's and whether it reaches the task's ``target_bpc``: the
    fraction of test windows "correct" and "solved" that the other tasks print say little of it."""
    at = f"step {result['step']}" if result["step"] is not None else "final weights"
    lengths = (
        f"T={result['seq_len']}"
        if result["seq_len"] == result["trained_seq_len"]
        else f"T={result['seq_len']} (trained at T={result['trained_seq_len']})"
    )
    head = (
        f"{result['task']} {result['cell']}{'' if result['variant'] == 'vanilla' else '-' + result['variant']} "
        f"(hidden {result['hidden']}, {at}), {lengths}, test seed {result['seed']}: "
    )
    return head + (_language_model_result(result) if "bpc" in result else _task_result(result))


def _task_result(result: dict[str, Any]) -> str:
    """Test loss (beside the no-memory baseline), the task's measures, the sequences correct and
    the task's criterion."""
    baseline = f" (no-memory baseline {result['baseline']:.4g})" if result["baseline"] is not None else ""
    measures = "".join(f", mean {k} {result[k]:.4g}" for k in result if k not in _NOT_MEASURES)
    return (
        f"test loss {result['loss']:.4g}{baseline}{measures}; {result['accuracy']:.1%} of {result['sequences']} "
        f"test sequences correct ({result['wrong']} wrong); {'solved' if result['solved'] else 'not solved'} "
        "by the task's criterion"
    )


def _language_model_result(result: dict[str, Any]) -> str:
    """Bits per character over the test windows, the loss in nats per character (beside the
    no-memory baseline's, in both units), and whether the task's ``target_bpc`` is reached."""
    baseline = result["baseline"]
    beside = (
        f"; no-memory baseline {baseline / math.log(2.0):.4g} bpc, {baseline:.4g} nats" if baseline is not None else ""
    )
    return (
        f"{result['bpc']:.4g} bits per character on {result['sequences']} test windows (test loss "
        f"{result['loss']:.4g} nats per character{beside}); the task's target_bpc is "
        f"{'reached' if result['solved'] else 'not reached'}"
    )


_NOT_MEASURES = {
    "model",
    "task",
    "cell",
    "variant",
    "hidden",
    "layers",
    "step",
    "seq_len",
    "trained_seq_len",
    "seed",
    "baseline",
    "loss",
    "accuracy",
    "wrong",
    "sequences",
    "solved",
}
