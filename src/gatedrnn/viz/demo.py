"""``gatedrnn demo``: the project's main job in a few CPU minutes on a fresh machine.

1. Trains a plain RNN, an LSTM and a GRU of the same width on one long-lag task (default: the
   adding problem as in Le et al. 2015, at a length the CPU handles quickly) with the project's
   training loop, and prints the comparison table;
2. runs the gate viewer and the memory-span analysis on the LSTM tutorial's sentence with the six
   char-level models shipped in ``gatedrnn/pretrained/`` (RNN, LSTM, GRU, sLSTM, minGRU, minLSTM;
   no training needed): a page and gate heatmaps per cell, one memory-span figure and table of all
   six, and prints where they are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cells import family_class
from ..errors import print_error
from ..tasks import task_names
from ..train import ConfigError, TrainConfig, compare, comparison_table
from .commands import ALL_CELLS, TUTORIAL, add_threads_option, run_gates, set_threads
from .loading import SHIPPED, UsageError

COMPARED = ("rnn", "lstm", "gru")
"""The cells the demo trains on the long-lag task: the plain RNN against the two classic gated cells,
each a minute or less on a CPU."""


def demo_configs(args: argparse.Namespace, out: Path) -> list[TrainConfig]:
    """One :class:`TrainConfig` per cell of :data:`COMPARED` (RNN, LSTM, GRU), identical but for the
    cell (runs in ``out/<cell>``)."""
    return [
        TrainConfig(
            task=args.task,
            seq_len=demo_seq_len(args),
            cell=cell,
            hidden=args.hidden,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            device="cpu",
            threads=args.threads,
            out=str(out / cell),
            eval_every=max(args.steps // 10, 1),
            checkpoint_every=args.steps,
            progress=sys.stderr.isatty(),
        )
        for cell in COMPARED
    ]


DEMO_TASK, DEMO_SEQ_LEN = "adding-modern", 100
"""The demo's default task, at a length that trains in under a minute per cell (its own T is 600)."""


def demo_seq_len(args: argparse.Namespace) -> int | None:
    """``--seq-len``, else :data:`DEMO_SEQ_LEN` for the default task and the task's own length
    (None) for another (digits, for one, has its fixed 64 pixels)."""
    if args.seq_len is not None:
        return args.seq_len
    return DEMO_SEQ_LEN if args.task == DEMO_TASK else None


def run_demo(args: argparse.Namespace) -> int:
    """``gatedrnn demo [--task NAME] [--seq-len T] [--steps N] [--out DIR]``: compare RNN, LSTM
    and GRU on a long-lag task, then the gate viewer and memory span of the six shipped cells on the
    tutorial's sentence."""
    out = Path(args.out)
    try:
        set_threads(args.threads)
        configs = demo_configs(args, out / "compare")
        for config in configs:
            config.validate()
        length = "its own T" if configs[0].seq_len is None else f"T={configs[0].seq_len}"
        print(
            f"training RNN, LSTM and GRU on {args.task} ({length}, {args.hidden} units, {args.steps} "
            f"steps of {args.batch} sequences each) ...",
            flush=True,
        )
        summaries, curves = compare(configs, out / "compare")
    except (UsageError, ConfigError) as e:
        return print_error(str(e))
    print()
    print("\n".join(comparison_table(summaries)))
    print(f"learning curves: {curves} (runs and checkpoints in {out / 'compare'}/<cell>)")
    print()
    names = ", ".join(family_class(cell).title() for cell in SHIPPED)
    print(f'gate viewer of the shipped {names} on the tutorial\'s sentence: "{TUTORIAL}"')
    code = run_gates(
        argparse.Namespace(text=TUTORIAL, model=None, cell=ALL_CELLS, out=str(out / "gates"), threads=args.threads)
    )
    if code == 0:
        print(f"open {out / 'gates'}/<cell>/gates.html in a browser, <cell> one of {', '.join(SHIPPED)}")
    return code


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options. Defaults: the adding problem at T = 100, which the LSTM and GRU solve
    within the step budget on a 2-core CPU while the RNN stays at the no-memory baseline."""
    p.add_argument("--task", default=DEMO_TASK, choices=task_names(), help=f"long-lag task (default {DEMO_TASK})")
    p.add_argument(
        "--seq-len",
        type=int,
        help=f"task length T (default {DEMO_SEQ_LEN} for the default task, the task's own for another --task)",
    )
    p.add_argument("--hidden", type=int, default=64, help="units per cell (default 64)")
    p.add_argument("--steps", type=int, default=2000, help="training steps per cell at most (default 2000)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    add_threads_option(p)
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
