"""Per-call overhead of one step: streaming inference with the state carried between calls.

    python benchmarks/one_step.py                     # H=256, B=1, the layers below
    python benchmarks/one_step.py --hidden 64 --batch 8
    python benchmarks/one_step.py --quick             # a smoke run

Each provider runs ``calls`` one-step forward calls (T=1, inference: eval mode, no gradients) that
carry the returned state into the next, as a server feeding a stream does; a sample is the time of
those calls divided by ``calls``. Samples of all providers are interleaved (A B C, A B C, ...) after
one untimed round, and the table gives medians in microseconds per call and each gatedrnn layer's
ratio to its torch.nn counterpart (the target: at most 1.2x). Rows:

- ``LSTM``, ``GRU``, ``RNN``: ``gatedrnn``'s layer (``backend="auto"``) against ``torch.nn``'s;
- ``... reset``: the same gatedrnn call given a ``reset`` mask (a stream restarting on a flag),
  which ``auto`` runs on the cpu backend, torch's kernels having no reset;
- ``SLSTM``, ``MinGRU``, ``MinLSTM``: the modern cells, one step each (no torch.nn counterpart).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import gatedrnn
from families import load, machine

PAIRS = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}
MODERN = ("SLSTM", "MinGRU", "MinLSTM")


def stream(module: torch.nn.Module, x: torch.Tensor, calls: int, reset: torch.Tensor | None = None) -> Callable:
    """``calls`` one-step calls of ``module`` on ``x`` (1, B, I), each fed the state the last returned."""

    def run() -> None:
        state = None
        with torch.no_grad():
            for _ in range(calls):
                if reset is None:
                    _, state = module(x, state)
                else:
                    _, state = module(x, state, reset=reset)

    return run


def providers(H: int, B: int, calls: int) -> dict[str, Callable[[], None]]:
    """Every timed call by its label, each module in eval mode with its own seeded weights."""
    x = torch.randn(1, B, H)
    no_reset = torch.zeros(1, B, dtype=torch.bool)
    fns: dict[str, Callable[[], None]] = {}
    for name, reference in PAIRS.items():
        torch.manual_seed(0)
        ours = getattr(gatedrnn, name)(H, H).eval()
        torch.manual_seed(0)
        theirs = reference(H, H).eval()
        fns[f"torch.nn.{name}"] = stream(theirs, x, calls)
        fns[f"gatedrnn.{name}"] = stream(ours, x, calls)
        fns[f"gatedrnn.{name} reset"] = stream(ours, x, calls, no_reset)
    for name in MODERN:
        torch.manual_seed(0)
        fns[f"gatedrnn.{name}"] = stream(getattr(gatedrnn, name)(H, H).eval(), x, calls)
    return fns


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, calls: int) -> dict[str, float]:
    """One untimed round, then ``repeats`` rounds of every provider in turn: the median time per
    call of each, in microseconds."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[label].append((time.perf_counter() - start) / calls * 1e6)
    return {label: statistics.median(times) for label, times in samples.items()}


def table(medians: dict[str, float], H: int, B: int) -> str:
    """The Markdown table: each layer's median per call and its ratio to torch.nn's."""
    lines = [
        f"One-step calls (T=1, B={B}, I=H={H}, inference, state carried), median microseconds per call",
        "",
        "| layer | gatedrnn | torch.nn | ratio |",
        "|---|---|---|---|",
    ]
    for label, value in medians.items():
        if label.startswith("torch.nn."):
            continue
        layer = label.removeprefix("gatedrnn.")
        peer = medians.get(f"torch.nn.{layer.removesuffix(' reset')}")
        theirs, ratio = (f"{peer:.1f}", f"{value / peer:.2f}x") if peer else ("-", "-")
        lines.append(f"| {layer} | {value:.1f} | {theirs} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=200, help="one-step calls per sample (default 200)")
    parser.add_argument("--repeats", type=int, default=21, help="samples per provider (default 21)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 samples of 10 calls")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    calls, repeats = (10, 3) if args.quick else (args.calls, args.repeats)
    medians = interleaved_medians(providers(args.hidden, args.batch, calls), repeats, calls)
    print(machine())
    print()
    print(table(medians, args.hidden, args.batch))
    print(f"\nload average after the run: {load()}")


if __name__ == "__main__":
    main()
