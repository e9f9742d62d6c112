"""``gatedrnn reproduce hochreiter1997``: the experiments of Hochreiter & Schmidhuber 1997,
section 5, rerun with :func:`gatedrnn.train.train`, and a Markdown table of the measured results
beside the paper's.

Each :class:`Row` is one line of the paper's tables: a task at the paper's sizes, our model and
optimiser settings, a quick budget (the whole table in 3 to 12 minutes on 2 CPU cores by load, three
seeds per row) and a full budget (three times the training sequences the paper reports, ten seeds).
The paper's numbers (from its result tables for experiments 1 to 6; see REPRODUCTION.md for how
they were checked): the fraction of trials that succeeded (where the table gives it), the mean
number of training sequences until the stopping criterion was met, and the wrong test sequences
of the final nets.

What we measure per row: the fraction of seeds whose run met the task's success criterion
(:meth:`gatedrnn.tasks.Task.solved`, on fresh test sequences), the mean number of training
sequences until the first evaluation that met it (over the successful seeds; evaluations every
``eval_every`` steps, so this is rounded up to that grain), and the wrong sequences of the final
net on a test set of its own (drawn from seed ``seed +`` :data:`HELD_OUT_SEED_OFFSET`: the set the
stopping rule reads is all correct by construction when a run stops).

Differences from the paper, on purpose: our LSTM is torch.nn's (forget gate, no peepholes, full
gradient through time, Adam, mini-batches), the paper's had no forget gate (``--variant nfg``),
truncated gradients and online SGD, and its own architectures per task.

``gatedrnn reproduce formal``: what the six built-in cells (:data:`FORMAL_CELLS`) can remember,
one :class:`FormalRow` per task: parity and modular arithmetic with Delétang et al. 2023's
length-generalisation protocol (train on lengths up to 40, test on 41 to 500, accuracy per length
band and their score), the 1997 adding problem at T = 100 and the copy task at T = 100. Each row
names the papers' results where they report one; the quick budget runs one seed per cell, the
full budget more steps and three seeds. With ``jobs`` > 1 the runs are shared among that many
worker processes (one torch thread each).
"""

from __future__ import annotations

import json
import math
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import LSTM_VARIANTS
from .evaluation import evaluate_saved
from .train import DEFAULT_LSTM_INIT, ConfigError, TrainConfig, refuse_to_replace, settings_for, train

PAPERS = ("hochreiter1997", "formal")

INIT_NAMES = {DEFAULT_LSTM_INIT: "", "chrono": ", chrono init", "torch": ", torch.nn's init"}
"""What a row's title says of each ``lstm_init`` (:meth:`Row.label`): nothing of the default."""

HELD_OUT_SEED_OFFSET = 1000
"""The final net's wrong sequences are counted on the test set of seed ``seed + 1000``, not on the
one training stopped on (for the tasks with a fixed test set, 2a's two sequences, the same)."""


@dataclass(frozen=True)
class Row:
    """One experiment of the table.

    Attributes:
        key: the row's short name (``--rows``), the experiment's number in the paper.
        title: what the row is, for the table (its initialisation added by :meth:`label`).
        config: the LSTM's run (seed, steps and output directory are set per run; a control cell
            takes the settings its family takes, :func:`gatedrnn.train.settings_for`).
        quick_steps: optimiser steps per run in ``--quick``.
        paper_success: the paper's fraction of successful trials, as printed there ("" if not given).
        paper_sequences: the paper's mean number of training sequences until its stopping criterion.
        paper_errors: the paper's wrong test sequences ("1 / 2560"), "" if not given.
        full_only: run only with ``--full`` (long sequences: hours on a CPU).
    """

    key: str
    title: str
    config: TrainConfig
    quick_steps: int
    paper_success: str
    paper_sequences: int
    paper_errors: str = ""
    full_only: bool = False

    def full_steps(self) -> int:
        """Three times the paper's mean number of training sequences, in steps of our batch."""
        return math.ceil(3 * self.paper_sequences / self.config.batch)

    def label(self, lstm_init: str) -> str:
        """The title of a run of the row whose config has ``lstm_init``: the row's initialisation
        named where it is not the default; a run without the row's (a control whose family has no
        forget gate to keep its memory, which ``lstm_init`` does not act on) keeps torch.nn's."""
        if lstm_init != self.config.lstm_init:
            return f"{self.title}, control: torch.nn's init"
        return self.title + INIT_NAMES[lstm_init]


def _lstm(
    task: str,
    seq_len: int | None,
    hidden: int,
    lr: float,
    batch: int = 32,
    eval_every: int = 100,
    lstm_init: str = "long-lag",
    test_batch: int = 1024,
    **task_options: Any,
) -> TrainConfig:
    return TrainConfig(
        task=task,
        seq_len=seq_len,
        task_options=task_options,
        cell="lstm",
        hidden=hidden,
        lr=lr,
        batch=batch,
        eval_every=eval_every,
        lstm_init=lstm_init,
        test_batch=test_batch,
    )


HOCHREITER_1997: tuple[Row, ...] = (
    Row(
        "1",
        "embedded Reber grammar (tab. 1, best row)",
        _lstm("reber", None, 32, 1e-2, eval_every=50),
        quick_steps=2000,
        paper_success="100%",
        paper_sequences=8_440,
    ),
    Row(
        "2a",
        "noise-free lag, p = 100 (tab. 2)",
        _lstm("lag-2a", 100, 32, 3e-3, eval_every=25),
        quick_steps=2000,
        paper_success="100%",
        paper_sequences=5_040,
    ),
    Row(
        "2c",
        "no local regularities, q = p = 100 (tab. 3)",
        _lstm("lag-2c", 100, 32, 1e-2, eval_every=250),
        quick_steps=3000,
        paper_success="",
        paper_sequences=31_000,
    ),
    Row(
        "2c-1000",
        "no local regularities, q = p = 1000 (tab. 3)",
        # a test batch of 1024 one-hot sequences of 1000 steps over 1004 symbols would take 4 GB
        _lstm("lag-2c", 1000, 32, 1e-2, eval_every=250, lstm_init="chrono", test_batch=128),
        quick_steps=3000,
        paper_success="",
        paper_sequences=49_000,
        full_only=True,
    ),
    Row(
        "3a",
        "two-sequence with noise, T = 100, N = 3 (tab. 4, ST2)",
        _lstm("two-sequence", 100, 32, 1e-2, eval_every=100),
        quick_steps=2000,
        paper_success="",
        paper_sequences=39_850,
        paper_errors="0.5 / 2560",
    ),
    Row(
        "4",
        "adding, T = 100 (tab. 7)",
        _lstm("adding", 100, 64, 1e-2, eval_every=250),
        quick_steps=8000,
        paper_success="",
        paper_sequences=74_000,
        paper_errors="1 / 2560",
    ),
    Row(
        "4-500",
        "adding, T = 500 (tab. 7)",
        _lstm("adding", 500, 64, 1e-2, eval_every=250, lstm_init="chrono"),
        quick_steps=3000,
        paper_success="",
        paper_sequences=209_000,
        paper_errors="0 / 2560",
        full_only=True,
    ),
    Row(
        "4-1000",
        "adding, T = 1000 (tab. 7)",
        _lstm("adding", 1000, 64, 1e-2, eval_every=250, lstm_init="chrono"),
        quick_steps=3000,
        paper_success="",
        paper_sequences=853_000,
        paper_errors="1 / 2560",
        full_only=True,
    ),
    Row(
        "5",
        "multiplication, T = 100, n_seq = 140 (tab. 8)",
        _lstm("multiplication", 100, 64, 3e-3, eval_every=250),
        quick_steps=4000,
        paper_success="",
        paper_sequences=482_000,
        paper_errors="139 / 2560",
    ),
    Row(
        "6a",
        "temporal order, 2 symbols (tab. 9)",
        _lstm("order-6a", 100, 32, 1e-2, eval_every=100),
        quick_steps=3000,
        paper_success="",
        paper_sequences=31_390,
        paper_errors="1 / 2560",
    ),
    Row(
        "6b",
        "temporal order, 3 symbols (tab. 9)",
        _lstm("order-6b", 100, 32, 1e-2, eval_every=100),
        quick_steps=5000,
        paper_success="",
        paper_sequences=571_100,
        paper_errors="2 / 2560",
    ),
)


def rows_for(paper: str, full: bool, keys: list[str] | None = None) -> list[Row]:
    """The rows of ``paper`` to run: all of them with ``full``, those without ``full_only``
    otherwise; ``keys`` picks rows by name (:class:`ConfigError` on an unknown one)."""
    if paper != "hochreiter1997":
        raise ConfigError(f"unknown paper {paper!r}; expected hochreiter1997 (the formal table: formal_rows)")
    if keys:
        return _pick(HOCHREITER_1997, keys)
    return [row for row in HOCHREITER_1997 if full or not row.full_only]


def _pick(table: tuple[Any, ...], keys: list[str]) -> list[Any]:
    """The rows of ``table`` named by ``keys``, in that order; ConfigError naming an unknown one."""
    known = {row.key: row for row in table}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(f"unknown row {unknown[0]!r}; expected one of {', '.join(known)}")
    return [known[k] for k in keys]


FORMAL_CELLS = ("rnn", "lstm", "gru", "slstm", "mingru", "minlstm")
"""The cells of the formal table: the built-in families, non-linear recurrences first."""

SOURCES = {
    "D": "Delétang et al. 2023, Table 2: best score (%) of 10 seeds and 3 learning rates",
    "X": "Beck et al. 2024 (xLSTM), sec. 4.1 and Fig. 4 (formal languages)",
    "H": "Hochreiter & Schmidhuber 1997, Table 7",
    "T": "theory (Sarrof et al. 2024; Grazzi et al. 2024): a diagonal linear recurrence whose "
    "transitions lie in (0, 1) cannot track parity or a residue mod m at every length in finite precision",
}
"""The sources the ``papers`` column cites, by the letter it cites them with."""


@dataclass(frozen=True)
class FormalRow:
    """One task of the formal table, run for each cell.

    Attributes:
        key: the row's short name (``--rows``) and its run directory.
        title: what the row is, for the table.
        config: the run (cell, seed, steps and output directory are set per run).
        quick_steps, full_steps: optimiser steps per run of each budget.
        papers: cell -> the published result, as ``"100.0 [D]"`` (the letter a key of
            :data:`SOURCES`); a cell not named has none.
    """

    key: str
    title: str
    config: TrainConfig
    quick_steps: int
    full_steps: int
    papers: Mapping[str, str] = field(default_factory=dict)


def _formal(task: str, seq_len: int | None, eval_every: int) -> TrainConfig:
    return TrainConfig(task=task, seq_len=seq_len, hidden=64, lr=1e-2, batch=32, eval_every=eval_every)


_LINEAR = {"mingru": "cannot [T]", "minlstm": "cannot [T]"}

FORMAL: tuple[FormalRow, ...] = (
    FormalRow(
        "parity",
        "parity check: train L <= 40, test L = 41..500 (Delétang et al. 2023)",
        _formal("parity", None, 500),
        quick_steps=3000,
        full_steps=20000,
        papers={"rnn": "100.0 [D]", "lstm": "100.0 [D]", "slstm": "solved [X]", **_LINEAR},
    ),
    FormalRow(
        "modular-arithmetic",
        "modular arithmetic mod 5: train L <= 40, test L = 41..500 (Delétang et al. 2023)",
        _formal("modular-arithmetic", None, 500),
        quick_steps=3000,
        full_steps=20000,
        papers={"rnn": "100.0 [D]", "lstm": "100.0 [D]", **_LINEAR},
    ),
    FormalRow(
        "adding",
        "adding problem, T = 100 (Hochreiter & Schmidhuber 1997, exp. 4)",
        _formal("adding", 100, 250),
        quick_steps=2000,
        full_steps=8000,
        papers={"lstm": "solved: 74,000 seqs, 1 / 2560 wrong [H]"},
    ),
    FormalRow(
        "copy",
        "copy memory, T = 100 (Arjovsky et al. 2016)",
        _formal("copy", 100, 250),
        quick_steps=2000,
        full_steps=8000,
    ),
)


@dataclass
class FormalResult:
    """What one cell measured on one row over its seeds (held-out test sets)."""

    row: FormalRow
    cell: str
    summaries: list[dict[str, Any]] = field(default_factory=list)

    def bands(self) -> list[str]:
        """The length-band accuracies the task measures (``acc_1_40``, ...), in its order."""
        return [k for k in self.summaries[0]["held_out"] if k.startswith("acc_")]

    def cells(self) -> list[str]:
        """papers, solved k/n, each band's mean accuracy (%), the score (or accuracy): mean and
        best, sequences until solved (mean over the solved seeds), steps (mean), seconds (sum)."""
        held = [s["held_out"] for s in self.summaries]
        n = len(held)
        solved = [s for s, h in zip(self.summaries, held) if h["solved"]]
        headline = [h.get("score", h["accuracy"]) for h in held]
        sequences = [s["solved_sequences"] for s in self.summaries if s["solved_sequences"] is not None]
        return [
            self.row.papers.get(self.cell, "-"),
            f"{len(solved)}/{n}",
            *(f"{100 * sum(h[b] for h in held) / n:.1f}" for b in self.bands()),
            f"{100 * sum(headline) / n:.1f}" + (f" ({100 * max(headline):.1f})" if n > 1 else ""),
            f"{round(sum(sequences) / len(sequences)):,}" if sequences else "-",
            f"{round(sum(s['steps'] for s in self.summaries) / n):,}",
            f"{sum(s['seconds'] for s in self.summaries):.0f}",
        ]


def formal_table(results: list[FormalResult], budget: str) -> str:
    """One Markdown table per row (a line per cell), the sources cited, then the command per run."""
    lines = [f"What the six cells remember, {budget} budget (gatedrnn, Adam; held-out test sets)", ""]
    for key in dict.fromkeys(r.row.key for r in results):
        group = [r for r in results if r.row.key == key]
        first = group[0]
        bands = [b.removeprefix("acc_").replace("_", "-") for b in first.bands()]
        headline = "score: mean (best)" if bands else "accuracy: mean (best)"
        columns = ["cell", "papers", "solved", *[f"L {b} (%)" for b in bands], headline, "seqs until solved"]
        lines += [
            f"**{first.row.title}**, {first.summaries[0]['budget_steps']:,} steps of "
            f"{first.summaries[0]['batch']} sequences at most, {len(first.summaries)} seed(s)",
            "",
            "| " + " | ".join([*columns, "steps", "seconds"]) + " |",
            "|" + "---|" * (len(columns) + 2),
        ]
        lines += ["| " + " | ".join([r.cell, *r.cells()]) + " |" for r in group]
        lines.append("")
    lines += [f"- [{k}] {v}" for k, v in SOURCES.items()]
    lines += ["", "Rerun a cell (seed 0; `--seed S` for the others):", ""]
    lines += [
        f"- {r.row.key}, {r.cell}: `{command_line(TrainConfig.from_dict(r.summaries[0]['config']))}`" for r in results
    ]
    return "\n".join(lines) + "\n"


def reproduce_formal(
    full: bool = False,
    out: Path = Path("runs/reproduce-formal"),
    seeds: int | None = None,
    rows: str | None = None,
    cells: str | None = None,
    budget_scale: float = 1.0,
    progress: bool = True,
    overwrite: bool = False,
    jobs: int = 1,
) -> tuple[str, Path]:
    """The formal table: each row of :data:`FORMAL` (``rows`` picks some) for each cell of
    :data:`FORMAL_CELLS` (``cells`` picks some), ``seeds`` times (default 1 quick, 3 full), runs
    in ``out/<row>/<cell>/seed<S>``; writes ``out/formal-<quick|full>.md`` and ``.json`` and
    prints the table; returns it and its path. Refuses to replace results as :func:`reproduce`."""
    _check_budget(budget_scale, jobs)
    selected = _pick(FORMAL, _names(rows)) if _names(rows) else list(FORMAL)
    chosen = _names(cells) or list(FORMAL_CELLS)
    unknown = [c for c in chosen if c not in FORMAL_CELLS]
    if unknown:
        raise ConfigError(f"unknown cell {unknown[0]!r}; the formal table runs {', '.join(FORMAL_CELLS)}")
    seeds = seeds or (3 if full else 1)
    budget = "full" if full else "quick"
    path = out / f"formal-{budget}.md"
    runs = [(row, cell, seed) for row in selected for cell in chosen for seed in range(seeds)]
    if not overwrite:
        _refuse_to_replace_results(path, [out / row.key / cell / f"seed{seed}" for row, cell, seed in runs])
    configs = [
        _run_config(
            row.config,
            _scaled(row.full_steps if full else row.quick_steps, budget_scale),
            seed,
            out / row.key / cell / f"seed{seed}",
            cell=cell,
            **settings_for(cell, lstm_init=row.config.lstm_init),
        )
        for row, cell, seed in runs
    ]
    summaries = iter(_run_all(configs, jobs, f"formal {budget}", progress))
    results = [FormalResult(row, cell, [next(summaries) for _ in range(seeds)]) for row in selected for cell in chosen]
    table = formal_table(results, budget)
    _write(out, f"formal-{budget}", table, [r.summaries for r in results])
    return table, path


def command_line(config: TrainConfig) -> str:
    """The ``gatedrnn train`` command that runs ``config`` (the settings that differ from the defaults
    ``train`` gives its cell)."""
    defaults = TrainConfig(**settings_for(config.cell))
    parts = ["gatedrnn train", f"--task {config.task}", f"--cell {config.cell}"]
    if config.seq_len is not None:
        parts.append(f"--seq-len {config.seq_len}")
    parts += [f"--task-opt {k}={v}" for k, v in config.task_options.items()]
    parts += [f"--family-opt {k}={v}" for k, v in config.family_options.items()]
    for name in (
        "variant",
        "forget_bias",
        "input_bias",
        "lstm_init",
        "hidden",
        "layers",
        "steps",
        "batch",
        "lr",
        "clip",
        "seed",
        "eval_every",
        "test_batch",
    ):
        value = getattr(config, name)
        if value is not None and (value != getattr(defaults, name) or name in ("steps", "eval_every")):
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


@dataclass
class RowResult:
    """What one row measured over its seeds, for one cell."""

    row: Row
    summaries: list[dict[str, Any]] = field(default_factory=list)
    cell: str = "lstm"

    @property
    def solved(self) -> list[dict[str, Any]]:
        return [s for s in self.summaries if s["solved_sequences"] is not None]

    def cells(self) -> list[str]:
        n, solved = len(self.summaries), self.solved
        rate = f"{len(solved)}/{n} ({len(solved) / n:.0%})"
        sequences = f"{round(sum(s['solved_sequences'] for s in solved) / len(solved)):,}" if solved else "not solved"
        wrong = sum(s["held_out_wrong"] for s in self.summaries) / n
        tested = self.summaries[0]["held_out_tested"]
        seconds = sum(s["seconds"] for s in self.summaries)
        wrong_text = f"{wrong:.0f}" if wrong == int(wrong) else f"{wrong:.1f}"  # a mean over seeds
        return [rate, sequences, f"{wrong_text} / {tested}", f"{seconds:.0f}"]


def markdown_table(results: list[RowResult], budget: str, variant: str = "vanilla") -> str:
    """The table: the paper's numbers beside ours, then the command that reruns each row; a cell
    column when a cell other than the LSTM ran (the controls)."""
    lstm = "LSTM" if variant == "vanilla" else f"LSTM variant {variant}"
    controls = sorted({r.cell.upper() for r in results if r.cell != "lstm"})
    who = lstm if not controls else f"{lstm} and the controls {', '.join(controls)}"
    by_cell = bool(controls)
    lines = [
        f"Hochreiter & Schmidhuber 1997, section 5, {budget} budget: {who} (gatedrnn, Adam) against the paper's",
        "",
        "| exp | experiment | "
        + ("cell | " if by_cell else "")
        + "paper: success | paper: sequences until solved | paper: wrong test seqs | "
        "measured: success | measured: sequences until solved | measured: wrong test seqs (held-out set, at end) | "
        "budget (sequences) "
        "| seconds (all seeds) |",
        "|---|---|" + ("---|" if by_cell else "") + "---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        row, first = r.row, r.summaries[0]
        rate, sequences, wrong, seconds = r.cells()
        cell = f"{r.cell} | " if by_cell else ""
        lines.append(
            f"| {row.key} | {row.label(first['config']['lstm_init'])} | {cell}{row.paper_success or '-'} | "
            f"{row.paper_sequences:,} | {row.paper_errors or '-'} | {rate} | {sequences} | {wrong} | "
            f"{first['budget_steps'] * first['batch']:,} | {seconds} |"
        )
    lines += ["", "Rerun a row (seed 0; `--seed S` for the others):", ""]
    lines += [
        f"- {r.row.key}{f', {r.cell}' if by_cell else ''}: "
        f"`{command_line(TrainConfig.from_dict(r.summaries[0]['config']))}`"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def reproduce(
    paper: str,
    full: bool = False,
    out: Path = Path("runs/reproduce"),
    seeds: int | None = None,
    rows: str | None = None,
    variant: str = "vanilla",
    budget_scale: float = 1.0,
    progress: bool = True,
    overwrite: bool = False,
    cells: str | None = None,
    jobs: int = 1,
) -> tuple[str, Path]:
    """Run the table (each row ``seeds`` times: default 3 quick, 10 full; runs in
    ``out/<row>[-<variant>]/seed<S>``), write ``out/<paper>-<quick|full>[-<variant>].md`` (and the
    run summaries as ``.json``) and print it; returns the table and its path. ``variant`` trains
    another LSTM variant (``nfg``: the paper's LSTM without forget gate); ``cells`` (default
    ``"lstm"``) runs each row with these registered cells too, at the same settings and budget, as
    controls (``"lstm,gru,rnn"``; runs of a cell c other than the LSTM in ``out/<row>-<c>/seed<S>``,
    the table ``...-<cells>.md``); ``budget_scale``
    multiplies every row's steps; ``jobs`` runs that many trainings at a time. Without
    ``overwrite``, a table or run already in ``out`` that this call would replace is refused
    (ConfigError) before any training. ``paper="formal"`` runs :func:`reproduce_formal` (``cells``
    picks its cells; ``variant`` is refused there)."""
    _check_budget(budget_scale, jobs)
    if paper == "formal":
        if variant != "vanilla":
            raise ConfigError(f"--variant applies to hochreiter1997 only, got --variant {variant} for formal")
        return reproduce_formal(full, out, seeds, rows, cells, budget_scale, progress, overwrite, jobs)
    if variant not in LSTM_VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {', '.join(LSTM_VARIANTS)}")
    selected = rows_for(paper, full, _names(rows))
    chosen = _control_cells(cells)
    seeds = seeds or (10 if full else 3)
    budget = "full" if full else "quick"
    suffix = "" if variant == "vanilla" else f"-{variant}"
    name = f"{paper}-{budget}{suffix}" + ("" if chosen == ["lstm"] else "-" + "-".join(chosen))
    path = out / f"{name}.md"
    runs = [(row, cell, seed) for row in selected for cell in chosen for seed in range(seeds)]

    def run_dir(row: Row, cell: str, seed: int) -> Path:
        return out / (f"{row.key}{suffix}" if cell == "lstm" else f"{row.key}-{cell}") / f"seed{seed}"

    if not overwrite:
        _refuse_to_replace_results(path, [run_dir(*run) for run in runs])
    configs = [
        _run_config(
            row.config,
            _scaled(row.full_steps() if full else row.quick_steps, budget_scale),
            seed,
            run_dir(row, cell, seed),
            cell=cell,
            **settings_for(cell, variant, lstm_init=row.config.lstm_init),
        )
        for row, cell, seed in runs
    ]
    summaries = iter(_run_all(configs, jobs, f"{paper} {budget}", progress))
    results = [RowResult(row, [next(summaries) for _ in range(seeds)], cell) for row in selected for cell in chosen]
    table = markdown_table(results, budget, variant)
    _write(out, name, table, [r.summaries for r in results])
    return table, path


def _control_cells(cells: str | None) -> list[str]:
    """The cells of a hochreiter1997 run: ``"lstm"`` alone by default, else the registered families
    named (ConfigError naming an unknown one)."""
    from .cells import registered_families

    chosen = _names(cells) or ["lstm"]
    unknown = [c for c in chosen if c not in registered_families()]
    if unknown:
        raise ConfigError(f"unknown cell {unknown[0]!r}; expected registered cells: {', '.join(registered_families())}")
    return list(dict.fromkeys(chosen))


def _check_budget(budget_scale: float, jobs: int) -> None:
    if not budget_scale > 0:
        raise ConfigError(f"--budget-scale must be positive, got {budget_scale}")
    if not (isinstance(jobs, int) and jobs > 0):
        raise ConfigError(f"--jobs must be a positive integer, got {jobs!r}")


def _names(text: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; None or empty -> None."""
    return [k.strip() for k in text.split(",") if k.strip()] if text else None


def _scaled(steps: int, budget_scale: float) -> int:
    return max(1, round(steps * budget_scale))


def _run_config(base: TrainConfig, steps: int, seed: int, out: Path, **changes: Any) -> TrainConfig:
    """One run of a table: ``base`` with these steps, seed and directory, on the CPU, checkpointed
    at the end."""
    return replace(
        base, steps=steps, seed=seed, checkpoint_every=steps, out=str(out), device="cpu", progress=False, **changes
    )


def train_and_hold_out(config: TrainConfig) -> dict[str, Any]:
    """Train ``config`` and evaluate the final net on the test set of seed ``seed +``
    :data:`HELD_OUT_SEED_OFFSET`: the run's summary with ``config``, ``budget_steps``,
    ``held_out`` (the evaluation's metrics), ``held_out_wrong`` and ``held_out_tested``."""
    summary = train(config)
    held_out = evaluate_saved(config.out, seed=config.seed + HELD_OUT_SEED_OFFSET, test_batch=config.test_batch)
    summary.update(
        config=config.to_dict(),
        budget_steps=config.steps,
        held_out=held_out,
        held_out_wrong=held_out["wrong"],
        held_out_tested=held_out["sequences"],
    )
    return summary


def _run_all(configs: list[TrainConfig], jobs: int, desc: str, progress: bool) -> list[dict[str, Any]]:
    """:func:`train_and_hold_out` of each config, in order; ``jobs`` > 1 shares them among that
    many worker processes (longest first, so that the last to finish is a short one)."""
    bar = tqdm(total=len(configs), desc=desc, disable=not progress, dynamic_ncols=True)
    if jobs == 1:
        summaries = []
        for config in configs:
            bar.set_postfix_str(f"{config.task} {config.cell} seed {config.seed}")
            summaries.append(train_and_hold_out(replace(config, progress=progress)))
            bar.update(1)
        bar.close()
        return summaries
    results: dict[int, dict[str, Any]] = {}
    order = sorted(range(len(configs)), key=lambda k: -configs[k].steps)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(train_and_hold_out, configs[k]): k for k in order}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    bar.close()
    return [results[k] for k in range(len(configs))]


def _write(out: Path, name: str, table: str, summaries: list[Any]) -> None:
    """``out/<name>.md`` (the table, also printed) and ``out/<name>.json`` (the run summaries)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(table)
    (out / f"{name}.json").write_text(json.dumps(summaries, indent=1))
    print(table)
    print(f"wrote {out / f'{name}.md'}")


def _refuse_to_replace_results(table: Path, run_dirs: list[Path]) -> None:
    """ConfigError when ``table`` or any of ``run_dirs`` already holds results (a --full table
    takes hours), naming the flag that replaces them."""
    remedy = "pass --overwrite to replace the table and its runs"
    if table.exists():
        raise ConfigError(f"{table} already holds a table of this paper and budget: {remedy}, or choose another --out")
    for run_dir in run_dirs:
        refuse_to_replace(run_dir, remedy)
