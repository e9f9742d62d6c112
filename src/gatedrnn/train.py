"""One training loop for every task: Adam on the task's loss, periodic evaluation of the task's
own success criterion on a fixed set of test sequences, metrics, checkpoints and DDP.

Run layout (``config.out``): ``config.json`` (the resolved :class:`TrainConfig` and the task's
sizes), ``metrics.jsonl`` (one JSON object per line: ``{"step", "sequences", "loss"}`` every
``log_every`` steps and ``{"step", "sequences", "eval": {...}, "solved"}`` at each evaluation),
``curve.png`` (learning curve), ``checkpoint.json`` + ``checkpoint-<step>.safetensors``
(:mod:`gatedrnn.checkpoint`) and ``summary.json``.

Data: every step draws the *global* batch of ``config.batch`` sequences from one generator seeded
with ``config.seed``; under DDP with R ranks, rank r trains on rows [r B/R, (r + 1) B/R). The
gradient DDP averages is then the gradient of the global batch's mean loss, so an R-process run
follows the single-process run with the same global batch (up to float summation order), while
each rank sees different sequences. Only rank 0 writes files.

Determinism: with the same seed on the CPU, a run resumed from a checkpoint ends with exactly the
final loss of an uninterrupted run (the data generator, optimiser and RNG states are restored;
the test set is drawn from its own fixed seed at every evaluation).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from . import checkpoint
from .cells import family_class, registered_families
from .models import (
    FamilyNotFoundError,
    SequenceModel,
    configured_family,
    family_record,
    model_for_task,
    option_takers,
    require_family,
)
from .tasks import Batch, Task, make_task, task_names

TEST_SEED_OFFSET = 1_000_003
"""The test set of a run with seed s is drawn from a generator seeded s + this (fixed per run)."""


class ConfigError(ValueError):
    """A setting that cannot be run (unknown name, non-positive size, a file as ``out``, a resume
    with different settings); the CLI prints it as one ``error:`` line and exits with code 2."""


LSTM_INITS: dict[str, dict[str, float]] = {"long-lag": {"f": 3.0, "i": -3.0}, "torch": {}, "chrono": {}}
"""Gate biases each ``lstm_init`` sets (where the family has the gate), see :class:`TrainConfig`;
``"chrono"`` draws its biases per unit instead (:func:`chrono_biases`)."""

DEFAULT_LSTM_INIT = "long-lag"
""":class:`TrainConfig`'s ``lstm_init`` when none is chosen."""

OWN_INIT = "torch"
"""The ``lstm_init`` that leaves the layer's own initialisation: what every family whose retention
gate is not ``f`` gets, so the one value besides the default that such a family is given."""

RESUMABLE_CHANGES = {
    "steps",
    "resume",
    "out",
    "device",
    "threads",
    "progress",
    "checkpoint_every",
    "eval_every",
    "log_every",
    "stop_when_solved",
    "test_batch",
}
"""Config fields a resumed run may change; any other difference from the checkpointed run is an error."""


@dataclass
class TrainConfig:
    """A training run; every field is a command-line flag of ``gatedrnn train`` (``_`` -> ``-``).

    Attributes:
        task: a name from :func:`gatedrnn.tasks.task_names`.
        seq_len: the task's length parameter T; None for the task's default.
        task_options: further keyword arguments of the task (``--task-opt KEY=VALUE``).
        cell: a registered cell family: ``lstm``, ``gru``, ``rnn`` or a user's
            (:func:`gatedrnn.register_family`; ``--family-module`` imports the module that registers it).
        variant: the family's ``variant`` option (LSTM: ``vanilla``; ``nfg`` is the 1997 LSTM
            without forget gate); ``vanilla`` for a family without one.
        forget_bias, input_bias: initial biases of the forget gate ``f`` and the input gate ``i``,
            for a family with that gate. None: what ``lstm_init`` says.
        lstm_init: for a family whose memory a forget gate ``f`` keeps (its ``retention_gate``,
            as the LSTM's): ``"long-lag"`` (default): forget-gate bias +3 and input-gate bias -3
            where the family has those gates, so that at first the cells keep what they hold
            (f = 0.95) and take in little (i = 0.05); the paper's negative input-gate bias against
            internal state drift (Hochreiter & Schmidhuber 1997, sec. 4). With torch.nn's
            initialisation the 1997 adding problem at T = 100 stayed on its plateau for 15,000
            steps; with these biases it is solved in about 1,000. ``"chrono"``: for lags far
            beyond 100 steps, the chrono initialisation (Tallec & Ollivier 2018, "Can recurrent
            neural networks warp time?"): per unit, b_f = log u with u ~ U[1, T - 1] for the
            task's length T, and b_i = -b_f, so that the units' initial forgetting times
            1 / (1 - f) ~ u spread evenly over the lags the task asks for; with +3 (f = 0.95) a
            mark fades as 0.95^T, to 7e-12 over 500 steps (see :func:`chrono_biases`).
            ``"torch"``: the layer's own initialisation. A family whose retention gate is not ``f``
            (GRU, RNN, minGRU, minLSTM) keeps its own initialisation: it takes the default or
            ``"torch"`` (:meth:`validate` refuses ``"chrono"`` for it, ``gatedrnn train`` any other
            ``--lstm-init`` given, and :func:`settings_for` gives it ``"torch"``, which its run records).
        family_options: the family's other options by name (its ``option_defaults``; ``--family-opt
            KEY=VALUE``), e.g. ``{"layer_norm": True}``.
        hidden, layers, embedding_dim: model sizes (embedding only for token tasks).
        steps: optimiser steps (at most; see ``stop_when_solved``).
        batch: global batch size B (sequences per step, summed over DDP ranks).
        lr: Adam learning rate. clip: global gradient-norm clip (0: none).
        seed: seeds the model initialisation and the training data.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        out: run directory (created). None: ``runs/<task>-<cell>-s<seed>``.
        resume: continue from ``out``'s checkpoint.
        checkpoint_every, eval_every, log_every: intervals in steps (eval 0: only at the end).
        stop_when_solved: stop at the first evaluation that meets the task's criterion.
        test_batch: sequences per forward pass when evaluating.
        threads: torch CPU threads per process. 1 by default: the per-step matrix products of these
            small recurrent nets are too small to split, and on a loaded machine a second thread
            waiting for a core slows every step many times over.
        progress: show a tqdm progress bar (rank 0).
    """

    task: str = "adding"
    seq_len: int | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    cell: str = "lstm"
    variant: str = "vanilla"
    forget_bias: float | None = None
    input_bias: float | None = None
    lstm_init: str = DEFAULT_LSTM_INIT
    family_options: dict[str, Any] = field(default_factory=dict)
    hidden: int = 64
    layers: int = 1
    embedding_dim: int = 64
    steps: int = 5000
    batch: int = 32
    lr: float = 1e-2
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    out: str | None = None
    resume: bool = False
    checkpoint_every: int = 50
    eval_every: int = 100
    log_every: int = 10
    stop_when_solved: bool = True
    test_batch: int = 1024
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`ConfigError`, naming the field, the expectation and the value, on bad settings."""
        if self.task not in task_names():
            raise ConfigError(f"unknown task {self.task!r}; expected one of {', '.join(task_names())}")
        if not isinstance(self.cell, str) or self.cell not in registered_families():
            raise ConfigError(
                f"unknown cell {self.cell!r}; expected a registered cell family: "
                f"{', '.join(registered_families())} (a family of your own: --family-module PATH)"
            )
        if not isinstance(self.family_options, dict):
            raise ConfigError(f"family_options must be a dict, got {type(self.family_options).__name__}")
        if self.lstm_init not in LSTM_INITS:
            raise ConfigError(f"lstm-init must be one of {', '.join(LSTM_INITS)}, got {self.lstm_init!r}")
        if self.lstm_init == "chrono" and (self.forget_bias is not None or self.input_bias is not None):
            raise ConfigError(
                "lstm-init chrono draws both the forget- and the input-gate biases; got it with "
                f"forget-bias {self.forget_bias} and input-bias {self.input_bias} (drop those, or use "
                "lstm-init long-lag with them)"
            )
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
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        problem = family_settings_problem(  # at the run's width, once it is known to be one
            self.cell,
            self.variant,
            self.forget_bias,
            self.input_bias,
            self.family_options,
            self.hidden,
            None if self.lstm_init == DEFAULT_LSTM_INIT else self.lstm_init,  # the default: not chosen
        )
        if problem:
            raise ConfigError(problem)
        if self.seq_len is not None and self.seq_len <= 0:
            raise ConfigError(f"seq-len must be a positive integer, got {self.seq_len}")
        if self.eval_every < 0:
            raise ConfigError(f"eval-every must be 0 (only at the end) or positive, got {self.eval_every}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not self.clip >= 0:  # nan too; inf clips nothing, as 0 does
            raise ConfigError(f"clip must be 0 (none) or a positive number, got {self.clip}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda requested but torch.cuda.is_available() is False")
        if Path(self.run_dir).exists() and not Path(self.run_dir).is_dir():
            raise ConfigError(f"--out must be a directory, but {self.run_dir} is a file")

    @property
    def run_dir(self) -> str:
        return self.out or f"runs/{self.task}-{self.cell}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class World:
    """This process's place in a (possibly single-process) DDP job."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process group was started by :func:`setup_world`

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_world(device: str) -> World:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): gloo on the CPU,
    nccl on CUDA (one GPU per local rank)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=torch.device("cuda" if use_cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        device=torch.device(f"cuda:{local}" if use_cuda else "cpu"),
        owns_group=owns_group,
    )


def build_task(config: TrainConfig) -> Task:
    """The task ``config`` names, with its sizes; :class:`ConfigError` when the task rejects them."""
    try:
        return make_task(config.task, config.seq_len, **config.task_options)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


GATE_FLAGS = (("--forget-bias", "f"), ("--input-bias", "i"))
"""The gate-bias settings and the gate each sets."""


def family_settings_problem(
    cell: str,
    variant: str = "vanilla",
    forget_bias: float | None = None,
    input_bias: float | None = None,
    family_options: dict[str, Any] | None = None,
    hidden: int = 1,
    lstm_init: str | None = None,
) -> str | None:
    """Why the registered family ``cell`` cannot take these settings, as one line naming the flag
    (the first problem), or None. What decides is what the family takes, never its name: a
    ``variant`` option, the options of its ``option_defaults`` (``family_options``), the gates
    ``f`` and ``i`` of its configuration (an LSTM variant may lack one), configured with ``hidden``
    units (an option may constrain them: the sLSTM's heads divide them), and its retention gate:
    an ``lstm_init`` chosen (None: none) other than :data:`OWN_INIT` needs a family whose memory a
    forget gate ``f`` keeps, since no other family's initialisation changes with it."""
    family_options = family_options or {}
    cls = family_class(cell)
    if variant != "vanilla" and "variant" not in cls.option_defaults:
        return f"--variant applies to --cell {option_takers('variant')} only, got --cell {cell}"
    if "variant" in family_options:
        return "--family-opt variant=...: use --variant"
    unknown = sorted(set(family_options) - set(cls.option_defaults))
    if unknown:
        return (
            f"--family-opt {unknown[0]}: the cell family {cell!r} has no option {unknown[0]!r}; its options: "
            f"{', '.join(o for o in cls.option_defaults if o != 'variant') or 'none'}"
        )
    try:
        family = configured_family(cell, variant, family_options, hidden)
    except (TypeError, ValueError) as e:
        return f"--cell {cell}: {e}"
    what = f"variant {variant!r}" if variant != "vanilla" else f"--cell {cell}"
    for (flag, gate), value in zip(GATE_FLAGS, (forget_bias, input_bias)):
        if value is not None and gate not in family.gates:
            return f"{flag} needs the {gate!r} gate, but {what} has none (its gates: {', '.join(family.gates)})"
    if lstm_init not in (None, OWN_INIT) and family.retention_gate != "f":
        kept = (
            f"its retention gate is {family.retention_gate!r}" if family.retention_gate else "it has no retention gate"
        )
        return (
            f"--lstm-init {lstm_init} initialises a family whose memory a forget gate 'f' keeps "
            f"({', '.join(forget_gate_families()) or 'none'}), but {what} is not one ({kept}): leave "
            f"--lstm-init out (or give {OWN_INIT}), and the family keeps its own initialisation"
        )
    return None


def forget_gate_families() -> list[str]:
    """The registered families whose retention gate is a forget gate ``f`` (the LSTM, the sLSTM):
    those that ``lstm_init`` initialises."""
    return [name for name in registered_families() if family_class(name).retention_gate == "f"]


def lstm_init_for(cell: str, lstm_init: str) -> str:
    """``lstm_init`` for a run of the family ``cell``: itself for a family whose retention gate is a
    forget gate ``f``, else :data:`OWN_INIT` (such a family keeps its own initialisation whatever the
    value, and its run records that); itself too for a cell not registered (:meth:`TrainConfig.validate`
    names it)."""
    if cell not in registered_families() or family_class(cell).retention_gate == "f":
        return lstm_init
    return OWN_INIT


def settings_for(
    cell: str,
    variant: str = "vanilla",
    forget_bias: float | None = None,
    input_bias: float | None = None,
    family_options: dict[str, Any] | None = None,
    hidden: int = 1,
    lstm_init: str = DEFAULT_LSTM_INIT,
) -> dict[str, Any]:
    """Of these settings, those the registered family ``cell`` takes (see
    :func:`family_settings_problem`), the others at their unset values (``lstm_init``:
    :data:`OWN_INIT` for a family it does not act on, :func:`lstm_init_for`): what ``compare`` and
    ``reproduce`` give each of their cells. Returns the TrainConfig fields variant, forget_bias,
    input_bias, family_options, lstm_init."""
    cls = family_class(cell)
    variant = variant if "variant" in cls.option_defaults else "vanilla"
    options = {k: v for k, v in (family_options or {}).items() if k in cls.option_defaults and k != "variant"}
    try:
        gates = configured_family(cell, variant, options, hidden).gates
    except (TypeError, ValueError):  # an option value it refuses: validate names it
        gates = ("f", "i")
    return {
        "variant": variant,
        "family_options": options,
        "forget_bias": forget_bias if "f" in gates else None,
        "input_bias": input_bias if "i" in gates else None,
        "lstm_init": lstm_init_for(cell, lstm_init),
    }


def gate_biases(config: TrainConfig) -> tuple[float | None, float | None]:
    """(forget_bias, input_bias) the model is built with: the explicit values, else, for a family
    whose retention gate is a forget gate ``f`` (the LSTM), ``lstm_init``'s for the gates it has;
    (None, None) for the others without explicit values (GRU, RNN)."""
    family = configured_family(config.cell, config.variant, config.family_options, config.hidden)
    init = LSTM_INITS[config.lstm_init] if family.retention_gate == "f" else {}

    def bias(value: float | None, gate: str) -> float | None:
        return value if value is not None else init.get(gate) if gate in family.gates else None

    return bias(config.forget_bias, "f"), bias(config.input_bias, "i")


def chrono_biases(rnn: nn.Module, lag: int, generator: torch.Generator) -> None:
    """The chrono initialisation (Tallec & Ollivier 2018) of ``rnn``'s gate biases: per unit of each
    layer and direction, b_f = log u with u ~ U[1, lag - 1] (drawn from ``generator``) and
    b_i = -b_f, in ``bias_ih``'s rows of the gates the family has (``bias_hh``'s rows zeroed).

    A unit with forget gate f = sigmoid(b_f) keeps a fraction f^k of what it holds over k steps, a
    forgetting time of about 1 / (1 - f) = 1 + u steps; spreading u over [1, lag - 1] gives units
    for every lag the task asks about, and the input gate starts as closed as the forget gate is
    open (i = 1 - f), so that the cells take in little at first."""
    gates = rnn.cell_config.gates
    H = rnn.hidden_size
    present = [g for g in ("f", "i") if g in gates]
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if not name.startswith(("bias_ih", "bias_hh")):
                continue
            b_f = torch.empty(H, dtype=torch.float64).uniform_(1.0, max(lag - 1, 1), generator=generator).log()
            for gate in present:
                rows = slice(gates.index(gate) * H, (gates.index(gate) + 1) * H)
                value = (b_f if gate == "f" else -b_f) if name.startswith("bias_ih") else torch.zeros(H)
                param[rows] = value.to(param.dtype)


CHRONO_SEED_OFFSET = 7919
"""Added to the run's seed for :func:`chrono_biases`' generator, apart from the weights' and the data's."""


def build_model(config: TrainConfig, task: Task) -> SequenceModel:
    forget_bias, input_bias = gate_biases(config)
    model = model_for_task(
        task,
        config.cell,
        config.hidden,
        config.layers,
        config.variant,
        forget_bias,
        config.embedding_dim,
        input_bias,
        config.family_options,
    )
    if config.lstm_init == "chrono" and model.rnn.cell_config.retention_gate == "f":
        chrono_biases(model.rnn, task.seq_len, torch.Generator().manual_seed(config.seed + CHRONO_SEED_OFFSET))
    return model


def import_run_family(cell: str, run_dir: str | Path) -> None:
    """When ``cell`` is not registered but the run checkpointed in ``run_dir`` records it, import the
    module it came from (:func:`gatedrnn.models.require_family`); ConfigError when that fails. Nothing
    otherwise (an unknown cell is :meth:`TrainConfig.validate`'s to name)."""
    if cell in registered_families():
        return
    record = (checkpoint.saved_extra(run_dir) or {}).get("family")
    if isinstance(record, dict) and record.get("name") == cell:
        try:
            require_family(cell, record)
        except FamilyNotFoundError as e:
            raise ConfigError(str(e)) from None


def shard(batch: Batch, rank: int, size: int) -> Batch:
    """Rows [rank B/size, (rank + 1) B/size) of a global batch."""
    n = len(batch) // size
    rows = slice(rank * n, (rank + 1) * n)
    return Batch(batch.inputs[rows], batch.targets[rows], None if batch.lengths is None else batch.lengths[rows])


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, seed: int, device: torch.device, batch_size: int = 1024) -> dict[str, float]:
    """The task's criterion on its test set (drawn from seed ``seed + TEST_SEED_OFFSET``, so the
    same sequences every call): mean ``loss``, ``accuracy``, ``wrong`` (count), the means of
    ``task.measures`` and ``solved``."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed + TEST_SEED_OFFSET)
    total, loss_sum, right = 0, 0.0, 0
    sums: dict[str, float] = {}
    for batch in task.test_batches(generator, batch_size):
        batch = batch.to(device)
        output, _ = model(batch.inputs)
        n = len(batch)
        total += n
        loss_sum += float(task.loss(output, batch)) * n
        right += int(task.correct(output, batch).sum())
        for key, value in task.measures(output, batch).items():
            sums[key] = sums.get(key, 0.0) + float(value.sum())
    model.train(was_training)
    measures = {k: v / total for k, v in sums.items()}
    metrics: dict[str, float] = {
        "loss": loss_sum / total,
        "accuracy": right / total,
        "wrong": total - right,
        "sequences": total,
        **measures,
    }
    metrics["solved"] = bool(task.solved(metrics["loss"], metrics["accuracy"], **measures))
    return metrics


class RunFiles:
    """Rank 0's files in the run directory; every method is a no-op on other ranks."""

    def __init__(self, directory: str, active: bool) -> None:
        self.dir = Path(directory)
        self.active = active
        self.metrics_path = self.dir / "metrics.jsonl"
        if active:
            self.dir.mkdir(parents=True, exist_ok=True)

    def start(self, config: TrainConfig, task: Task, resumed_step: int) -> None:
        """Write config.json; keep the metrics of steps up to ``resumed_step`` (0: start afresh,
        deleting the checkpoint of any run this one replaces)."""
        if not self.active:
            return
        if not resumed_step:
            checkpoint.clear(self.dir)
        checkpoint.atomic_write_text(
            self.dir / "config.json",
            json.dumps(
                {"train": config.to_dict(), "task": task.describe(), "family": family_record(config.cell)}, indent=2
            ),
        )
        kept = [r for r in self.records() if r["step"] <= resumed_step] if resumed_step else []
        checkpoint.atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict[str, Any]) -> None:
        if self.active:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """The metrics logged so far. A last line cut short (a write that a full disk, a kill or a
        power loss interrupted) is dropped: its step comes after the checkpoint a resumed run
        restarts from, and is logged again; a damaged line before the last one is an error."""
        if not self.metrics_path.exists():
            return []
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError(f"expected an object with an integer step, got {line[:80]!r}")
            except ValueError as e:
                if number == len(lines):
                    break
                raise ConfigError(
                    f"{self.metrics_path} line {number} is damaged ({e}); start afresh with "
                    "--overwrite, or delete the damaged lines"
                ) from None
            records.append(record)
        return records


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path, title: str, baseline: float | None = None) -> None:
    """Training loss (lines) and test loss (dots) against sequences seen, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (label, records), colour in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
        train = [(r["sequences"], r["loss"]) for r in records if "loss" in r]
        tests = [(r["sequences"], r["eval"]["loss"]) for r in records if "eval" in r]
        if train:
            ax.plot(*zip(*train), color=colour, lw=1.2, label=f"{label} train")
        if tests:
            ax.plot(*zip(*tests), "o", color=colour, ms=4, label=f"{label} test")
        solved = [r["sequences"] for r in records if r.get("solved")]
        if solved:
            ax.axvline(solved[0], color=colour, ls=":", lw=1)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="no-memory baseline")
    ax.set_yscale("log")
    ax.set_xlabel("training sequences")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(config: TrainConfig) -> dict[str, Any]:
    """Run ``config`` and return its summary (also written to ``summary.json``): task, cell,
    variant, steps, sequences, train_loss (last logged), final_loss (test loss at the end),
    accuracy, wrong (of ``tested`` test sequences), solved, solved_step, solved_sequences (first
    evaluation that met the criterion, or None), seconds, out, world_size, rank. Uses ``config.threads`` CPU threads and
    restores the caller's setting afterwards. Resuming a run of a family not registered here imports
    the module the run recorded (:func:`import_run_family`)."""
    if config.resume:
        import_run_family(config.cell, config.run_dir)
    config.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig) -> dict[str, Any]:
    world = setup_world(config.device)
    if config.batch % world.size:
        raise ConfigError(f"batch must be divisible by the number of processes ({world.size}), got {config.batch}")
    task = build_task(config)
    torch.manual_seed(config.seed)
    model = build_model(config, task).to(world.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    files = RunFiles(config.run_dir, world.main)
    state = {"step": 0, "seconds": 0.0, "ema": None, "solved_step": None, "last_eval": None}
    if config.resume and checkpoint.exists(config.run_dir):
        state = _restore(config, model, optimizer, generator)
    elif config.resume and world.main:
        tqdm.write(f"no checkpoint in {config.run_dir}; starting from step 0")
    files.start(config, task, state["step"])
    trained = model if world.size == 1 else nn.parallel.DistributedDataParallel(model)
    started = time.perf_counter() - state["seconds"]

    def save() -> None:
        if world.main:
            state["seconds"] = time.perf_counter() - started
            checkpoint.save(
                config.run_dir,
                state["step"],
                model,
                optimizer,
                generator,
                extra={"config": config.to_dict(), "state": state, "family": family_record(config.cell)},
            )

    def run_eval() -> dict[str, float]:
        metrics = evaluate(model, task, config.seed, world.device, config.test_batch)
        step = state["step"]
        if metrics["solved"] and state["solved_step"] is None:
            state["solved_step"] = step
        state["last_eval"] = {"step": step, **metrics}
        files.log({"step": step, "sequences": step * config.batch, "eval": metrics, "solved": metrics["solved"]})
        return metrics

    bar = tqdm(
        total=config.steps,
        initial=state["step"],
        disable=not (config.progress and world.main),
        desc=f"{config.task} {config.cell}",
        dynamic_ncols=True,
        leave=False,
    )
    model.train()
    while state["step"] < config.steps:
        batch = shard(task.sample(config.batch, generator), world.rank, world.size).to(world.device)
        output, _ = trained(batch.inputs)
        loss = task.loss(output, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        state["step"] += 1
        step = state["step"]
        value = loss.detach()
        if world.size > 1:
            dist.all_reduce(value)
            value /= world.size
        value = float(value)
        state["ema"] = value if state["ema"] is None else 0.95 * state["ema"] + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{state['ema']:.4g}")
        if step % config.log_every == 0:
            files.log({"step": step, "sequences": step * config.batch, "loss": value})
        stop = False
        if config.eval_every and step % config.eval_every == 0:
            stop = run_eval()["solved"] and config.stop_when_solved
        if step % config.checkpoint_every == 0 or stop:
            save()
        if stop:
            break
    bar.close()
    if state["last_eval"] is None or state["last_eval"]["step"] != state["step"]:
        run_eval()
    save()
    final = state["last_eval"]
    records = files.records()
    summary = {
        "task": config.task,
        "cell": config.cell,
        "variant": config.variant,
        "seq_len": task.seq_len,
        "hidden": config.hidden,
        "batch": config.batch,
        "lr": config.lr,
        "seed": config.seed,
        "steps": state["step"],
        "sequences": state["step"] * config.batch,
        "train_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),
        "final_loss": final["loss"],
        "accuracy": final["accuracy"],
        "wrong": final["wrong"],
        "tested": final["sequences"],
        "solved": final["solved"],
        "solved_step": state["solved_step"],
        "solved_sequences": None if state["solved_step"] is None else state["solved_step"] * config.batch,
        "baseline": task.baseline,
        "seconds": round(time.perf_counter() - started, 2),
        "out": str(files.dir),
        "world_size": world.size,
        "rank": world.rank,
    }
    if world.main:
        (files.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_curves(
            {config.cell: records},
            files.dir / "curve.png",
            f"{config.task} (T={task.seq_len}), {config.cell}, hidden {config.hidden}",
            task.baseline,
        )
    if world.owns_group:
        dist.destroy_process_group()
    return summary


def compare(configs: list[TrainConfig], out: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """Train each config in turn (same budget and seed, differing in the cell) and draw their
    learning curves in one figure, ``out/compare.png``; returns the summaries and the figure's path."""
    for config in configs:
        config.validate()
    summaries = [train(config) for config in configs]
    path = Path(out) / "compare.png"
    curves = {_label(s): RunFiles(s["out"], active=False).records() for s in summaries}
    first = summaries[0]
    plot_curves(curves, path, f"{first['task']} (T={first['seq_len']}), hidden {first['hidden']}", first["baseline"])
    return summaries, path


def _label(summary: dict[str, Any]) -> str:
    variant = summary["variant"]
    return summary["cell"] if variant == "vanilla" else f"{summary['cell']}-{variant}"


def comparison_table(summaries: list[dict[str, Any]]) -> list[str]:
    """Lines of a text table, one row per run: test loss (and its ratio to the no-memory
    baseline), fraction of test sequences correct, solved or not and after how many sequences."""
    first = summaries[0]
    title = f"{first['task']} (T={first['seq_len']}), hidden {first['hidden']}, seed {first['seed']}"
    if first["baseline"] is not None:
        title += f"; no-memory baseline loss {first['baseline']:.4g}"
    lines = [
        title,
        f"{'cell':<12} {'steps':>6} {'sequences':>9} {'test loss':>10} {'/ baseline':>10} "
        f"{'correct':>8} {'solved':>6} {'solved at (seqs)':>16} {'seconds':>8}",
    ]
    for s in summaries:
        ratio = f"{s['final_loss'] / s['baseline']:.3g}" if s["baseline"] else "-"
        at = "-" if s["solved_sequences"] is None else str(s["solved_sequences"])
        lines.append(
            f"{_label(s):<12} {s['steps']:>6} {s['sequences']:>9} {s['final_loss']:>10.4g} {ratio:>10} "
            f"{s['accuracy']:>8.1%} {'yes' if s['solved'] else 'no':>6} {at:>16} {s['seconds']:>8.1f}"
        )
    return lines


def refuse_to_replace(run_dir: str | Path, remedy: str) -> None:
    """Raise the ConfigError that keeps a run already in ``run_dir``, naming its checkpoint's step
    and ``remedy`` (the flag that continues or replaces it); nothing when there is none."""
    if checkpoint.exists(run_dir):
        step = checkpoint.saved_step(run_dir)
        raise ConfigError(
            f"{run_dir} already holds a run (its checkpoint is at step "
            f"{'unknown: unreadable' if step is None else step}): {remedy}, or choose another --out"
        )


def _restore(
    config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict[str, Any]:
    try:
        ckpt = checkpoint.load(config.run_dir)
        saved, state = dict(ckpt.extra["config"]), dict(ckpt.extra["state"])
        missing = sorted({"step", "seconds", "ema", "solved_step", "last_eval"} - set(state))
        if missing:
            raise ValueError(f"its training state lacks {', '.join(missing)}")
        mangled = _mangled_state(state)
        if mangled:
            raise ValueError(f"its training state mangles {', '.join(mangled)}")
    except (checkpoint.CheckpointError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"cannot resume {config.run_dir}: {_damage(e)}") from e
    mine = config.to_dict()
    for settings in (saved, mine):  # a value the run's family ignores is no difference
        if isinstance(settings.get("lstm_init"), str):
            settings["lstm_init"] = lstm_init_for(config.cell, settings["lstm_init"])
    changed = sorted(k for k in saved if k not in RESUMABLE_CHANGES and saved[k] != mine.get(k))
    if changed:
        diffs = ", ".join(f"{k}: checkpoint {saved[k]!r}, now {mine.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume {config.run_dir} with different settings ({diffs})")
    try:
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.optimizer)
        checkpoint.set_rng_state(ckpt.rng, generator)
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise ConfigError(f"cannot resume {config.run_dir}: {_damage(e)}") from e
    return state


def _mangled_state(state: dict[str, Any]) -> list[str]:
    """The entries of a checkpoint's training state that are not of their kind: step an int,
    seconds a number, the loss average a number or None, the solved step an int or None, the
    last evaluation a dict or None."""

    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    kinds = {
        "step": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "seconds": number,
        "ema": lambda v: v is None or number(v),
        "solved_step": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
        "last_eval": lambda v: v is None or isinstance(v, dict),
    }
    return [name for name, fits in kinds.items() if not fits(state[name])]


def _damage(error: Exception) -> str:
    """Why a checkpoint could not be restored, for a one-line error."""
    if isinstance(error, checkpoint.CheckpointError):
        return str(error)
    detail = f"no {error.args[0]!r} entry" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
    return (
        f"its checkpoint is damaged or from another program ({detail.splitlines()[0]}); "
        "start afresh in another --out, or delete the directory"
    )
