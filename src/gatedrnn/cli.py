"""The ``gatedrnn`` command (console script and ``python -m gatedrnn``): argument parsing only.

Commands: ``train`` (one run, :func:`gatedrnn.train.train`), ``compare`` (several cells with the
same budget and seed), ``evaluate`` (a saved model on its task, :mod:`gatedrnn.evaluation`),
``reproduce hochreiter1997`` and ``reproduce formal`` (:mod:`gatedrnn.reproduce`), and the gate
viewer's ``gates``, ``sample`` and ``demo`` (:mod:`gatedrnn.viz.commands`).

Bad arguments print one ``error: ...`` line on stderr and exit with code 2, never a traceback:
argparse does this for unknown flags and choices, :class:`gatedrnn.train.ConfigError` carries the
rest (unknown task option, non-positive size, an ``--out`` that is a file, ...).

Cell families: ``--cell`` (``--cells``) names any registered family. ``--family-module PATH_OR_MODULE``
(repeatable, on every command that builds or loads a model) imports a Python file or module before
the arguments are parsed, so the families it registers (:func:`gatedrnn.register_family`) can be
named by ``train``'s ``--cell`` and ``compare``'s ``--cells``, and rebuild a saved model of theirs;
``--family-opt KEY=VALUE`` sets a family option (its ``option_defaults``), the value a Python
literal (a bare word is a string). A saved run records where its family came from: a family of an
installed module is imported from there, one defined in a file is not (a run never executes a file
it names), so ``evaluate``, ``export``, ``gates``/``sample --model`` and ``train --resume`` take its
``--family-module`` again (:func:`gatedrnn.models.require_family`).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, saved
from .cells import LSTM_VARIANTS, family_class, registered_families
from .errors import UsageError, print_error
from .models import FamilyNotFoundError, import_family_module
from .tasks import task_names, task_options
from .train import (
    LSTM_INITS,
    ConfigError,
    TrainConfig,
    compare,
    comparison_table,
    family_settings_problem,
    forget_gate_families,
    import_run_family,
    lstm_init_for,
    refuse_to_replace,
    settings_for,
    train,
)

DEFAULTS = TrainConfig()


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``error: ...``, exit code 2) instead of the usage block,
    each pointing at the help of the command it is about (``gatedrnn train --help``)."""

    def error(self, message: str):
        sys.exit(print_error(f"{self.prog}: {message} (see {self.prog} --help)"))

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        """argparse's, but arguments no parser recognises are reported by the subcommand's parser
        (argparse reports them from the top one, whose help does not list the subcommand's flags)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._subcommand_parser(getattr(parsed, "command", None)).error(
                f"unrecognized arguments: {' '.join(extras)}"
            )
        return parsed

    def _subcommand_parser(self, command: str | None) -> argparse.ArgumentParser:
        """The parser of subcommand ``command``; this one when it has none of that name."""
        return self.subcommands().get(command, self)

    def subcommands(self) -> dict[str, argparse.ArgumentParser]:
        """The subcommands' parsers by name (``train``, ``evaluate``, ...)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _option_value(text: str, default: object, any_literal: bool = False) -> object:
    """``KEY=TEXT`` of ``--task-opt`` or ``--family-opt`` -> a value of the kind of the option's
    default: the text itself for a string; true or false (any case) for a flag; else a Python
    literal (:func:`ast.literal_eval`, never eval; nan and inf too): an integer for an int, a number
    for a float or (``any_literal`` off) None, any of a number, a flag, None or a bare word for None
    with ``any_literal``. ValueError carrying the kind expected otherwise."""
    if isinstance(default, str):
        return text
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        try:
            value = float(text)
        except ValueError:
            value = text
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        value = {"true": True, "false": False}.get(text.strip().lower(), value)
        fits, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        fits, kind = number and isinstance(value, int), "an integer"
    elif isinstance(default, float) or not any_literal:
        fits, kind = number, "a number"
    else:
        fits, kind = (
            value is None or isinstance(value, (bool, int, float, str)),
            "a number, true, false, None or a word",
        )
    if not fits:
        raise ValueError(kind)
    return float(value) if isinstance(default, float) else value


def _split_option(flag: str, pair: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key with ``-`` as ``_``, value text); UsageError without ``=``."""
    key, sep, text = pair.partition("=")
    if not sep:
        raise UsageError(f"{flag} expects KEY=VALUE, got {pair!r}")
    return key.strip().replace("-", "_"), text


def parse_task_options(task: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> the task's keyword arguments, converted to their defaults' types."""
    if task not in task_names():
        raise UsageError(f"unknown task {task!r}; expected one of {', '.join(task_names())}")
    known = task_options(task)
    options: dict[str, Any] = {}
    for pair in pairs:
        key, text = _split_option("--task-opt", pair)
        if key == "seq_len":
            raise UsageError("use --seq-len, not --task-opt seq_len=...")
        if key not in known:
            others = ", ".join(k for k in sorted(known) if k != "seq_len") or "none"
            raise UsageError(f"task {task!r} has no option {key!r}; its options are: {others}")
        try:
            options[key] = _option_value(text, known[key])
        except ValueError as e:
            raise UsageError(f"--task-opt {key}={text}: task {task!r} expects {e} for {key}") from None
    return options


def parse_family_options(pairs: Sequence[str], cells: Sequence[str]) -> dict[str, Any]:
    """``--family-opt`` ``["KEY=VALUE", ...]`` -> ``{key: value}`` for the registered families
    ``cells``: every key an option of one of them at least (``option_defaults``), each value
    converted to fit its default (:func:`_option_value`); UsageError otherwise."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, text = _split_option("--family-opt", pair)
        if key == "variant":
            raise UsageError("use --variant, not --family-opt variant=...")
        takers = [family_class(c).option_defaults for c in cells if key in family_class(c).option_defaults]
        if not takers:
            known = sorted({o for c in cells for o in family_class(c).option_defaults if o != "variant"})
            raise UsageError(
                f"--family-opt {key}: the cell family {' or '.join(map(repr, cells))} has no option "
                f"{key!r}; options: {', '.join(known) or 'none'}"
            )
        default = takers[0][key]
        try:
            options[key] = _option_value(text, default, any_literal=True)
        except ValueError as e:
            raise UsageError(f"--family-opt {pair}: expected {e} for {key} (default {default!r})") from None
    return options


def _family_name(text: str) -> str:
    """``--cell NAME``: a registered cell family (argparse type, checked after ``--family-module``)."""
    if text not in registered_families():
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(registered_families())}; "
            "a family of your own: --family-module PATH_OR_MODULE)"
        )
    return text


REBUILT_FAMILY = (
    "needed for a family defined in a file, which a saved run names but never executes; a family of an "
    "installed module is imported from the module the run records"
)
"""How a saved run's family is found again (:func:`gatedrnn.models.require_family`), for the help."""

SAVED_FAMILY = f"the one that registers the saved model's cell family, if it is not built in ({REBUILT_FAMILY})"
"""What ``--family-module`` does on a command that loads a saved model (:func:`add_family_module_option`)."""


def add_family_module_option(p: argparse.ArgumentParser, use: str = SAVED_FAMILY) -> None:
    """``--family-module PATH_OR_MODULE`` on a command's parser (:func:`main` imports them first),
    its help saying what the modules are for on that command (``use``; default: the family of the
    saved model it loads)."""
    p.add_argument(
        "--family-module",
        action="append",
        default=[],
        metavar="PATH_OR_MODULE",
        help=f"a Python file or module to import first (repeatable): {use}",
    )


def import_family_modules(argv: Sequence[str]) -> None:
    """Import every ``--family-module`` of ``argv``, in order (before the full parse, whose
    ``--cell`` then knows their families); UsageError naming the one that fails."""
    pre = _Parser(prog="gatedrnn", add_help=False, allow_abbrev=False)
    pre.add_argument("--family-module", action="append", default=[])
    for spec in pre.parse_known_args(argv)[0].family_module:
        try:
            import_family_module(spec)
        except Exception as e:  # the user's module: its own error, on one line
            first = str(e).splitlines()[0] if str(e) else ""
            raise UsageError(f"--family-module {spec}: cannot import it ({type(e).__name__}: {first})") from None


_UNSET = argparse.SUPPRESS  # a run flag left out is absent from the namespace: the base config's value applies

RUN_FLAGS = (
    "seq_len",
    "variant",
    "forget_bias",
    "input_bias",
    "lstm_init",
    "hidden",
    "layers",
    "embedding_dim",
    "steps",
    "batch",
    "lr",
    "clip",
    "seed",
    "device",
    "threads",
    "checkpoint_every",
    "eval_every",
    "test_batch",
    "log_every",
    "stop_when_solved",
    "progress",
)
"""The :class:`TrainConfig` fields the run flags set (``_`` -> ``-``, plus ``--task-opt``, ``--cell``)."""


def _add_run_options(p: argparse.ArgumentParser, family_use: str) -> None:
    """The flags of ``train`` and ``compare`` (``family_use``: what ``--family-module`` is for on
    the command). None has a parser default: a flag left out takes the base config's value
    (:func:`config_from_args`), the defaults named in the help, or with ``--resume`` the
    checkpointed run's."""
    d = DEFAULTS
    p.add_argument("--task", required=True, metavar="NAME", help=f"the experiment: {', '.join(task_names())}")
    p.add_argument(
        "--seq-len",
        type=_positive_int,
        default=_UNSET,
        metavar="T",
        help="the task's length T (default: the task's own)",
    )
    p.add_argument(
        "--task-opt",
        action="append",
        default=_UNSET,
        metavar="KEY=VALUE",
        help="another size of the task, e.g. --task-opt distractors=50 (repeatable)",
    )
    p.add_argument(
        "--variant",
        default=_UNSET,
        choices=sorted(LSTM_VARIANTS),
        metavar="V",
        help=f"LSTM variant: {', '.join(LSTM_VARIANTS)} (nfg: the 1997 LSTM, no forget gate; "
        f"default {d.variant}); for a family with a variant option",
    )
    p.add_argument(
        "--forget-bias",
        type=float,
        default=_UNSET,
        metavar="X",
        help="forget-gate (f) bias at initialisation, for a family with that gate (default: --lstm-init's)",
    )
    p.add_argument(
        "--input-bias",
        type=float,
        default=_UNSET,
        metavar="X",
        help="input-gate (i) bias at initialisation, for a family with that gate (default: --lstm-init's)",
    )
    p.add_argument(
        "--lstm-init",
        default=_UNSET,
        choices=tuple(LSTM_INITS),
        help=f"the initialisation of a family whose memory a forget gate f keeps ({', '.join(forget_gate_families())}"
        "): long-lag (default): forget-gate bias +3, input-gate bias -3; chrono: per unit b_f = log u, "
        "u ~ U[1, T-1] for the task's length T, b_i = -b_f (lags of hundreds of steps and more); torch: "
        "torch.nn's init. Another family keeps its own initialisation (torch.nn's): train refuses "
        "long-lag and chrono for it, compare gives them to the cells with f only",
    )
    p.add_argument(
        "--family-opt",
        action="append",
        default=_UNSET,
        metavar="KEY=VALUE",
        help="an option of the cell family, e.g. --family-opt layer_norm=True (a Python literal; repeatable)",
    )
    add_family_module_option(p, family_use)
    p.add_argument(
        "--hidden", type=_positive_int, default=_UNSET, metavar="N", help=f"hidden units (default {d.hidden})"
    )
    p.add_argument(
        "--layers", type=_positive_int, default=_UNSET, metavar="N", help=f"stacked layers (default {d.layers})"
    )
    p.add_argument(
        "--embedding-dim",
        type=_positive_int,
        default=_UNSET,
        metavar="E",
        help=f"embedding width for token tasks (default {d.embedding_dim})",
    )
    p.add_argument(
        "--steps", type=_positive_int, default=_UNSET, metavar="N", help=f"optimiser steps at most (default {d.steps})"
    )
    p.add_argument(
        "--batch",
        type=_positive_int,
        default=_UNSET,
        metavar="N",
        help=f"sequences per step, over all processes (default {d.batch})",
    )
    p.add_argument("--lr", type=float, default=_UNSET, metavar="X", help=f"Adam learning rate (default {d.lr})")
    p.add_argument(
        "--clip", type=float, default=_UNSET, metavar="X", help=f"gradient-norm clip, 0 for none (default {d.clip})"
    )
    p.add_argument("--seed", type=int, default=_UNSET, metavar="S", help=f"seed of weights and data (default {d.seed})")
    p.add_argument("--device", default=_UNSET, choices=("auto", "cpu", "cuda"), help=f"(default {d.device})")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=_UNSET,
        metavar="N",
        help=f"CPU threads per process (default {d.threads}: fastest for small recurrent nets)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=_UNSET,
        metavar="N",
        help=f"steps between checkpoints (default {d.checkpoint_every})",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=_UNSET,
        metavar="N",
        help=f"steps between test evaluations, 0 for only at the end (default {d.eval_every})",
    )
    p.add_argument(
        "--test-batch",
        type=_positive_int,
        default=_UNSET,
        metavar="N",
        help=f"test sequences per forward pass, smaller for long one-hot sequences (default {d.test_batch})",
    )
    p.add_argument(
        "--log-every",
        type=_positive_int,
        default=_UNSET,
        metavar="N",
        help=f"steps between metrics lines (default {d.log_every})",
    )
    stopping = p.add_mutually_exclusive_group()
    stopping.add_argument(
        "--no-stop",
        dest="stop_when_solved",
        action="store_false",
        default=_UNSET,
        help="train all --steps even after the task is solved",
    )
    stopping.add_argument(
        "--stop",
        dest="stop_when_solved",
        action="store_true",
        default=_UNSET,
        help="stop at the first evaluation that meets the task's criterion (the default; "
        "undoes the --no-stop of a run resumed)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", default=_UNSET, help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def given_run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run flags given on the command line, by :class:`TrainConfig` field."""
    return {name: getattr(args, name) for name in RUN_FLAGS if hasattr(args, name)}


def config_from_args(
    args: argparse.Namespace, cell: str | None, out: str | None, base: TrainConfig = DEFAULTS, cells: Sequence[str] = ()
) -> TrainConfig:
    """The :class:`TrainConfig` the parsed flags describe, for ``cell`` (None: the base's), writing
    into ``out``; each flag left out takes ``base``'s value (its task options only for its task).
    The family's settings (``--variant``, the gate biases, ``--family-opt``) are those it takes
    (:func:`gatedrnn.train.settings_for`); ``cells``: every cell of the command, which the
    ``--family-opt`` keys are checked against (default: ``cell``). The progress bar shows where
    asked for (by default) and stderr is a terminal."""
    cell = cell or base.cell
    given = given_run_flags(args)
    if hasattr(args, "task_opt"):
        options = parse_task_options(args.task, args.task_opt)
    else:
        parse_task_options(args.task, [])  # an unknown task is named here, before any run
        options = dict(base.task_options) if base.task == args.task else {}
    values = {name: given.get(name, getattr(base, name)) for name in RUN_FLAGS}
    family_options = (
        parse_family_options(args.family_opt, cells or [cell]) if hasattr(args, "family_opt") else base.family_options
    )
    values.update(
        settings_for(
            cell,
            values["variant"],
            values["forget_bias"],
            values["input_bias"],
            family_options,
            values["hidden"],
            values["lstm_init"],
        ),
        progress=given.get("progress", DEFAULTS.progress) and sys.stderr.isatty(),
    )
    return replace(
        base, task=args.task, task_options=options, cell=cell, out=out, resume=getattr(args, "resume", False), **values
    )


MACHINE_FLAGS = ("device", "threads")
"""Settings of the machine rather than the run: a resumed run takes them from its own command line
or the defaults (a run checkpointed on a GPU resumes on a CPU-only machine)."""


def _checkpointed_config(args: argparse.Namespace) -> TrainConfig:
    """What ``train --resume`` builds on: the config of the run checkpointed in ``--out`` (or the
    default run directory), so that a flag left out continues as it was, but for
    :data:`MACHINE_FLAGS`; the defaults where there is no readable checkpoint, or it is another
    task's (training then names what is wrong or differs). Raises ConfigError when the saved
    settings themselves are damaged."""
    run_dir = config_from_args(args, getattr(args, "cell", None), args.out).run_dir
    saved_config = (checkpoint.saved_extra(run_dir) or {}).get("config")
    if not isinstance(saved_config, dict) or saved_config.get("task") != args.task:
        return DEFAULTS
    if isinstance(saved_config.get("cell"), str):
        import_run_family(saved_config["cell"], run_dir)
    try:
        base = replace(TrainConfig.from_dict(saved_config), **{k: getattr(DEFAULTS, k) for k in MACHINE_FLAGS})
        base.lstm_init = lstm_init_for(base.cell, base.lstm_init)  # what the run's family takes of it
        if not isinstance(base.task_options, dict):
            raise TypeError(f"task_options must be a JSON object, got {type(base.task_options).__name__}")
        base.validate()
    except (TypeError, ValueError, ConfigError) as e:
        raise ConfigError(
            f"cannot resume {run_dir}: the settings in its checkpoint are damaged "
            f"({type(e).__name__}: {e}); start afresh in another --out, or delete the directory"
        ) from e
    return base


def _result_line(summary: dict[str, Any]) -> str:
    solved = (
        f"solved after {summary['solved_sequences']} sequences"
        if summary["solved_sequences"] is not None
        else "not solved"
    )
    return (
        f"{summary['task']} {summary['cell']}: {summary['steps']} steps, test loss {summary['final_loss']:.4g}, "
        f"accuracy {summary['accuracy']:.1%}, {solved}; {summary['seconds']:.1f} s; files in {summary['out']}"
    )


def run_train(args: argparse.Namespace) -> int:
    """Train one network on one task (gatedrnn train --task NAME --cell C ...). Writes the
    run directory --out: config, metrics, learning curve, checkpoints and summary. A directory that
    already holds a run is continued with --resume or replaced with --overwrite."""
    base = _checkpointed_config(args) if args.resume else DEFAULTS
    cell = getattr(args, "cell", None) or base.cell
    given = given_run_flags(args)
    options = parse_family_options(args.family_opt, [cell]) if hasattr(args, "family_opt") else {}
    problem = family_settings_problem(
        cell,
        given.get("variant", "vanilla"),
        given.get("forget_bias"),
        given.get("input_bias"),
        options,
        given.get("hidden", base.hidden),
        given.get("lstm_init"),
    )
    if problem:
        raise UsageError(problem)
    config = config_from_args(args, cell, args.out, base)
    if not args.resume and not args.overwrite:
        refuse_to_replace(config.run_dir, "pass --resume to continue it, --overwrite to replace it")
    summary = train(config)
    if summary["rank"] != 0:  # under torchrun only rank 0 reports
        return 0
    print(_result_line(summary))
    if args.json:
        print(json.dumps(summary))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``gatedrnn compare --task NAME --cells rnn,lstm,gru ...``: each cell with the same budget and
    seed (runs in OUT/<cell>), a table and ``OUT/compare.png``."""
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in registered_families()]
    if not cells or unknown:
        raise UsageError(
            f"--cells expects a comma-separated list of {', '.join(registered_families())} (or of "
            f"families a --family-module registers), got {args.cells!r}"
        )
    if len(set(cells)) != len(cells):
        raise UsageError(f"--cells lists a cell twice: {args.cells!r}")
    out = Path(args.out or f"runs/compare-{args.task}")
    configs = [config_from_args(args, c, str(out / c), cells=cells) for c in cells]
    if not args.overwrite:
        for config in configs:
            refuse_to_replace(config.run_dir, "pass --overwrite to replace the compared runs")
    summaries, plot = compare(configs, out)
    print("\n".join(comparison_table(summaries)))
    print(f"wrote {plot} (runs, metrics and checkpoints in {out}/<cell>)")
    if args.json:
        print(json.dumps(summaries))
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    """``gatedrnn reproduce hochreiter1997 [--quick|--full]``: the 1997 paper's experiments, and a
    Markdown table of the measured results beside the paper's. ``gatedrnn reproduce formal``: the
    six cells on parity, modular arithmetic (trained on lengths up to 40, tested on 41 to 500),
    adding and copy at T = 100, beside the papers' results."""
    from .reproduce import reproduce

    reproduce(
        args.paper,
        full=args.full,
        out=Path(args.out or f"runs/reproduce-{args.paper}"),
        seeds=args.seeds,
        rows=args.rows,
        variant=args.variant,
        budget_scale=args.budget_scale,
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
        cells=args.cells,
        jobs=args.jobs,
    )
    return 0


def _model_path(args: argparse.Namespace) -> str | Path:
    """The saved model a command names: MODEL, or the shipped model of --shipped CELL (one of them)."""
    from .viz.loading import shipped_path

    if (args.model is None) == (args.shipped is None):
        raise UsageError(
            "give either MODEL (a run directory or .safetensors file) or --shipped CELL, "
            f"got {'both' if args.model else 'neither'}"
        )
    return args.model if args.model is not None else shipped_path(args.shipped)


def _add_model_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """MODEL and --shipped CELL, which :func:`_model_path` reads."""
    from .viz.loading import SHIPPED

    p.add_argument(
        "model", nargs="?", metavar="MODEL", help="run directory, checkpoint-N.safetensors or exported .safetensors"
    )
    p.add_argument(
        "--shipped",
        choices=SHIPPED,
        metavar="CELL",
        help=f"{verb} the character model shipped for CELL ({', '.join(SHIPPED)}) instead",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained model on its task: test loss, accuracy, the task's measures and whether
    its criterion is met (a character model: bits per character, and whether the task's target is
    reached). MODEL is a run directory of gatedrnn train, one of its
    checkpoint-N.safetensors, or an exported .safetensors with its .json (--shipped CELL: the
    character model shipped with gatedrnn). By default at the sizes and seed it was trained with,
    which reproduces the run's final test result; --seq-len T asks whether it generalises to
    other lengths, --seed S draws another test set."""
    from .evaluation import evaluate_saved, result_line

    torch.set_num_threads(args.threads)
    model_file = saved.read(_model_path(args))
    options = parse_task_options(model_file.meta["train"].get("task"), args.task_opt) if args.task_opt else {}
    result = evaluate_saved(
        model_file,
        seq_len=args.seq_len,
        task_options=options,
        seed=args.seed,
        test_batch=args.test_batch,
        device=args.device,
    )
    print(result_line(result))
    if args.json:
        print(json.dumps(result))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Export a trained model to an ONNX file for serving (gatedrnn.export_onnx): batch and length
    dynamic, the cells ONNX computes as its LSTM/GRU/RNN operators and the others as loops over
    time, checked in onnxruntime on other sizes. MODEL is a run directory of gatedrnn train, one of
    its checkpoint-N.safetensors, or an exported .safetensors with its .json (--shipped CELL: the
    character model shipped with gatedrnn). The graph takes the model's input batch first (token
    ids (B, T) for a character model), named "input", and returns its output and final states,
    named "output", "h_n" (, "c_n", ...: the family's states with the suffix _n). --int8 PATH also
    writes the file with int8 weights (onnxruntime's dynamic quantization). Needs onnx, onnxscript
    and onnxruntime: pip install "gatedrnn[onnx]" (without onnxruntime, no --int8 and no check).
    The folders of --out and --int8 are created."""
    from .export import INSTALL, default_names, example_input, export_onnx, has_onnxruntime, quantize_int8, require_onnx

    try:
        require_onnx(runtime=args.int8 is not None)
    except ImportError as e:
        raise UsageError(f"gatedrnn export{' --int8' if args.int8 is not None else ''}: {e}") from None
    model_file = saved.read(_model_path(args))
    model = saved.rebuild(model_file.meta, model_file.tensors).eval()
    check = not args.no_check and has_onnxruntime()
    for path in (args.out, args.int8):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    inputs, outputs = default_names(model.rnn, given_states=0)
    example = example_input(model)
    export_onnx(model, example, args.out, native=not args.loop, check=check, input_names=inputs, output_names=outputs)
    if check:
        print(f"wrote {args.out} (checked in onnxruntime against PyTorch on other batch sizes and lengths)")
    else:
        why = "--no-check" if args.no_check else f"onnxruntime is not installed; {INSTALL}"
        print(f"wrote {args.out} (not checked against PyTorch: {why})")
    if args.int8 is not None:
        quantize_int8(args.out, args.int8)
        print(f"wrote {args.int8} (int8 weights)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``gatedrnn`` parser; ``--cell`` takes the families registered when it is called."""
    parser = _Parser(prog="gatedrnn", description="Gated recurrent networks: long-lag experiments and the gate viewer.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gatedrnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one network on one task", description=run_train.__doc__)
    _add_run_options(
        p,
        "the cell families it registers with gatedrnn.register_family can be named by --cell; with "
        f"--resume, the one that registers the run's family ({REBUILT_FAMILY})",
    )
    p.add_argument(
        "--cell",
        default=_UNSET,
        type=_family_name,
        metavar="NAME",
        help=f"a registered cell family: {', '.join(registered_families())} (default {DEFAULTS.cell}), "
        "or one a --family-module registers",
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<task>-<cell>-s<seed>)")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out; a flag left out keeps the run's setting "
        "(but --device and --threads: this machine's defaults), one given must match it "
        "(except --steps, --device, --threads, the intervals and --stop/--no-stop/--no-progress)",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if --out holds a run (its checkpoint and metrics are replaced)",
    )
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "compare",
        help="train several cells with the same budget and seed, print a table",
        description=run_compare.__doc__,
    )
    _add_run_options(p, "the cell families it registers with gatedrnn.register_family can be named by --cells")
    p.add_argument(
        "--cells", default="rnn,lstm,gru", help="comma-separated registered cell families (default rnn,lstm,gru)"
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/compare-<task>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the runs already in --out (refused without it: their checkpoints would be lost)",
    )
    p.set_defaults(func=run_compare)

    from .reproduce import PAPERS

    p = sub.add_parser("reproduce", help="rerun a paper's table of experiments", description=run_reproduce.__doc__)
    p.add_argument(
        "paper",
        choices=PAPERS,
        help="which table (hochreiter1997: LSTM, sec. 5; formal: six cells, parity, modular arithmetic, adding, copy)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--quick",
        dest="full",
        action="store_false",
        default=False,
        help="reduced budgets, minutes on 2 CPU cores (default)",
    )
    budget.add_argument("--full", dest="full", action="store_true", help="the paper's budgets (hours)")
    p.add_argument(
        "--seeds",
        type=_positive_int,
        metavar="N",
        help="trials per row (default: hochreiter1997 3 quick, 10 full; formal 1 quick, 3 full)",
    )
    p.add_argument(
        "--rows", metavar="NAMES", help="comma-separated rows to run, e.g. 2a,4 or parity,copy (default: all)"
    )
    p.add_argument(
        "--cells",
        metavar="NAMES",
        help="comma-separated cells to run: formal: of the six (default all); hochreiter1997: the LSTM and "
        "controls at the same settings, e.g. lstm,gru,rnn (default lstm)",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="trainings to run at a time, one process each (default 1)",
    )
    p.add_argument(
        "--variant",
        default="vanilla",
        choices=sorted(LSTM_VARIANTS),
        metavar="V",
        help="LSTM variant to train (nfg: the paper's LSTM, without forget gate; default vanilla)",
    )
    p.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply every row's training steps by X (default 1)",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/reproduce-<paper>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the table and runs already in --out (refused without it: a --full table takes hours)",
    )
    p.set_defaults(func=run_reproduce)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained model on its task, at its own or other sizes",
        description=run_evaluate.__doc__,
    )
    _add_model_arguments(p, "evaluate")
    p.add_argument("--seq-len", type=_positive_int, metavar="T", help="the task's length T (default: as trained)")
    p.add_argument(
        "--task-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one of the task's other sizes (repeatable; default: as trained)",
    )
    p.add_argument("--seed", type=int, metavar="S", help="draw the test set of run seed S (default: the run's)")
    p.add_argument(
        "--test-batch",
        type=_positive_int,
        default=DEFAULTS.test_batch,
        metavar="N",
        help=f"sequences per forward pass (default {DEFAULTS.test_batch})",
    )
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="(default cpu)")
    p.add_argument("--threads", type=_positive_int, default=1, metavar="N", help="CPU threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON too, as the last line")
    add_family_module_option(p)
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser(
        "export", help="export a trained model to ONNX (and int8) for serving", description=run_export.__doc__
    )
    _add_model_arguments(p, "export")
    p.add_argument("--out", required=True, metavar="PATH", help="the .onnx file to write")
    p.add_argument("--int8", metavar="PATH", help="also write the model with int8 weights to PATH")
    p.add_argument("--loop", action="store_true", help="every layer as a loop over time, no ONNX recurrent operators")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check against PyTorch")
    add_family_module_option(p)
    p.set_defaults(func=run_export)

    from .viz.commands import add_subcommands

    add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Import the ``--family-module``s of ``argv`` (default ``sys.argv[1:]``), parse it, run the
    command, return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import_family_modules(argv)
    except UsageError as e:
        return print_error(str(e))
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UsageError, ConfigError, saved.SavedModelError, FamilyNotFoundError) as e:
        return print_error(str(e))
    except OSError as e:
        return print_error(f"cannot read or write a file: {e}")
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
