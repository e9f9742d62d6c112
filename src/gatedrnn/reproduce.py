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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import LSTM_VARIANTS
from .evaluation import evaluate_saved
from .train import ConfigError, TrainConfig, refuse_to_replace, train

PAPERS = ("hochreiter1997",)

HELD_OUT_SEED_OFFSET = 1000
"""The final net's wrong sequences are counted on the test set of seed ``seed + 1000``, not on the
one training stopped on (for the tasks with a fixed test set, 2a's two sequences, the same)."""


@dataclass(frozen=True)
class Row:
    """One experiment of the table.

    Attributes:
        key: the row's short name (``--rows``), the experiment's number in the paper.
        title: what the row is, for the table.
        config: the run (seed, steps and output directory are set per run).
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


def _lstm(
    task: str, seq_len: int | None, hidden: int, lr: float, batch: int = 32, eval_every: int = 100, **task_options: Any
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
        _lstm("lag-2c", 1000, 32, 1e-2, eval_every=250),
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
        "4-1000",
        "adding, T = 1000 (tab. 7)",
        _lstm("adding", 1000, 64, 1e-2, eval_every=500),
        quick_steps=8000,
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
    if paper not in PAPERS:
        raise ConfigError(f"unknown paper {paper!r}; expected one of {', '.join(PAPERS)}")
    table = HOCHREITER_1997
    if keys:
        known = {row.key: row for row in table}
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise ConfigError(f"unknown row {unknown[0]!r}; expected one of {', '.join(known)}")
        return [known[k] for k in keys]
    return [row for row in table if full or not row.full_only]


def command_line(config: TrainConfig) -> str:
    """The ``gatedrnn train`` command that runs ``config`` (the settings that differ from the defaults)."""
    defaults = TrainConfig()
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
    ):
        value = getattr(config, name)
        if value is not None and (value != getattr(defaults, name) or name in ("steps", "eval_every")):
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


@dataclass
class RowResult:
    """What one row measured over its seeds."""

    row: Row
    summaries: list[dict[str, Any]] = field(default_factory=list)

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
    """The table: the paper's numbers beside ours, then the command that reruns each row."""
    cell = "LSTM" if variant == "vanilla" else f"LSTM variant {variant}"
    lines = [
        f"Hochreiter & Schmidhuber 1997, section 5, {budget} budget: {cell} (gatedrnn, Adam) against the paper's",
        "",
        "| exp | experiment | paper: success | paper: sequences until solved | paper: wrong test seqs | "
        "measured: success | measured: sequences until solved | measured: wrong test seqs (held-out set, at end) | "
        "budget (sequences) "
        "| seconds (all seeds) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        row, config = r.row, r.summaries[0]
        rate, sequences, wrong, seconds = r.cells()
        lines.append(
            f"| {row.key} | {row.title} | {row.paper_success or '-'} | {row.paper_sequences:,} | "
            f"{row.paper_errors or '-'} | {rate} | {sequences} | {wrong} | "
            f"{config['budget_steps'] * config['batch']:,} | {seconds} |"
        )
    lines += ["", "Rerun a row (seed 0; `--seed S` for the others):", ""]
    lines += [f"- {r.row.key}: `{command_line(TrainConfig.from_dict(r.summaries[0]['config']))}`" for r in results]
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
) -> tuple[str, Path]:
    """Run the table (each row ``seeds`` times: default 3 quick, 10 full; runs in
    ``out/<row>[-<variant>]/seed<S>``), write ``out/<paper>-<quick|full>[-<variant>].md`` (and the
    run summaries as ``.json``) and print it; returns the table and its path. ``variant`` trains
    another LSTM variant (``nfg``: the paper's LSTM without forget gate); ``budget_scale``
    multiplies every row's steps. Without ``overwrite``, a table or run already in ``out`` that
    this call would replace is refused (ConfigError) before any training."""
    if variant not in LSTM_VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {', '.join(LSTM_VARIANTS)}")
    if not budget_scale > 0:
        raise ConfigError(f"--budget-scale must be positive, got {budget_scale}")
    selected = rows_for(paper, full, [k.strip() for k in rows.split(",")] if rows else None)
    seeds = seeds or (10 if full else 3)
    budget = "full" if full else "quick"
    suffix = "" if variant == "vanilla" else f"-{variant}"
    path = out / f"{paper}-{budget}{suffix}.md"
    results = [RowResult(row) for row in selected]
    if not overwrite:
        _refuse_to_replace_results(
            path, [out / f"{row.key}{suffix}" / f"seed{seed}" for row in selected for seed in range(seeds)]
        )
    bar = tqdm(total=len(selected) * seeds, desc=f"{paper} {budget}", disable=not progress, dynamic_ncols=True)
    for result in results:
        row = result.row
        steps = max(1, round((row.full_steps() if full else row.quick_steps) * budget_scale))
        for seed in range(seeds):
            bar.set_postfix_str(f"row {row.key} seed {seed}")
            config = replace(
                row.config,
                variant=variant,
                steps=steps,
                seed=seed,
                checkpoint_every=steps,
                out=str(out / f"{row.key}{suffix}" / f"seed{seed}"),
                progress=progress,
                device="cpu",
            )
            summary = train(config)
            held_out = evaluate_saved(config.out, seed=seed + HELD_OUT_SEED_OFFSET)
            summary.update(
                config=config.to_dict(),
                budget_steps=steps,
                held_out_wrong=held_out["wrong"],
                held_out_tested=held_out["sequences"],
            )
            result.summaries.append(summary)
            bar.update(1)
    bar.close()
    table = markdown_table(results, budget, variant)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    (out / f"{paper}-{budget}{suffix}.json").write_text(json.dumps([r.summaries for r in results], indent=1))
    print(table)
    print(f"wrote {path}")
    return table, path


def _refuse_to_replace_results(table: Path, run_dirs: list[Path]) -> None:
    """ConfigError when ``table`` or any of ``run_dirs`` already holds results (a --full table
    takes hours), naming the flag that replaces them."""
    remedy = "pass --overwrite to replace the table and its runs"
    if table.exists():
        raise ConfigError(f"{table} already holds a table of this paper and budget: {remedy}, or choose another --out")
    for run_dir in run_dirs:
        refuse_to_replace(run_dir, remedy)
