"""The minimal cells on the CPU: gatedrnn.MinGRU and gatedrnn.MinLSTM (the cpu backend's fused
kernel) beside their reference-loop runs, torch.nn.GRU, torch.nn.LSTM and mingru-pytorch's
minGRU and minLSTM, in time and in peak training memory.

    python benchmarks/min_cells.py                   # B=32, I=H=256, T=256, 1024, 4096
    python benchmarks/min_cells.py --quick           # a smoke run
    python benchmarks/min_cells.py --steps 1024 --repeats 7 --no-memory
    python benchmarks/min_cells.py --providers gatedrnn.MinGRU,torch.nn.GRU

Time: each row times one forward and backward pass (the sum of the outputs; the input requires
grad) per provider, interleaved (A B C ..., A B C ..., ...) after one untimed call each, and
reports medians in ms and each provider's speed-up over torch.nn.GRU. Memory: each provider
runs one training step in a fresh subprocess, which resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``) once the module and input exist and then reads the peak (``VmHWM``)
after the step: the peak memory the step added, in MiB, and its ratio to torch.nn.LSTM's.

Providers (float32, one layer, one direction): ``gatedrnn.MinGRU`` and ``gatedrnn.MinLSTM`` as a
user builds them (``backend="auto"``, ``mode="auto"``: the cpu kernel), the same with
``mode="parallel"`` (the kernel's chunked scan), the same on ``backend="reference"`` (the step loop
under autograd), ``torch.nn.GRU`` and ``torch.nn.LSTM``, and mingru-pytorch's ``minGRU`` and
``minLSTM``. The minimal cells are configured as the peer's (no bias, batch-first input, the same
width); torch.nn's layers take the same values time-major. ``... projection alone`` is a
``torch.nn.Linear(H, G*H)`` (G = 2 for minGRU, 3 for minLSTM) on the same input: forward and
backward, its three products (x W^T, the input's and the weight's gradients) are those every
provider of that cell computes, the floor the recurrence adds to.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

import torch

import gatedrnn
from families import (
    added_peak_mib,
    answer_memory_child,
    interleaved_times,
    load,
    machine,
    memory_in_subprocesses,
    sweep_parser,
    sweep_sizes,
)

PROVIDERS = (
    "gatedrnn.MinGRU",
    "gatedrnn.MinLSTM",
    "MinGRU parallel",
    "MinLSTM parallel",
    "MinGRU reference",
    "MinLSTM reference",
    "torch.nn.GRU",
    "torch.nn.LSTM",
    "mingru-pytorch minGRU",
    "mingru-pytorch minLSTM",
    "MinGRU projection alone",
    "MinLSTM projection alone",
)
PROJECTION_WIDTH = {"MinGRU": 2, "MinLSTM": 3}
"""Gate blocks of each cell's input projection (z, h; f, i, h)."""
SPEED_BASELINE, MEMORY_BASELINE = "torch.nn.GRU", "torch.nn.LSTM"
REFERENCE_MAX_T = 1024
"""The reference loop's rows stop here (seconds per call beyond)."""


def build(provider: str, H: int) -> tuple[torch.nn.Module, bool] | None:
    """The module a provider times (the same initial weights for every run) and whether it takes
    batch-first input; None where the provider is not installed."""
    torch.manual_seed(0)
    if provider.startswith("torch.nn."):
        return getattr(torch.nn, provider.removeprefix("torch.nn."))(H, H), False
    if provider.startswith("mingru-pytorch"):
        try:
            from minGRU_pytorch import minGRU
            from minGRU_pytorch.minLSTM import minLSTM
        except ImportError:
            return None
        return (minGRU if provider.endswith("minGRU") else minLSTM)(H), True
    cell = "MinGRU" if "MinGRU" in provider else "MinLSTM"
    if provider.endswith("projection alone"):
        return torch.nn.Linear(H, PROJECTION_WIDTH[cell] * H, bias=False), True
    cls = getattr(gatedrnn, cell)
    options = {"parallel": dict(mode="parallel"), "reference": dict(backend="reference")}
    return cls(H, H, bias=False, batch_first=True, **options.get(provider.split()[-1], {})), True


def call(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward and backward pass of ``module`` on ``x`` (its first output summed)."""

    def forward_backward() -> None:
        out = module(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return forward_backward


def inputs(provider_modules: dict, B: int, T: int, H: int) -> dict[str, Callable[[], None]]:
    """Each provider's call on the same values, batch-first or time-major as it takes them."""
    torch.manual_seed(1)
    time_major = torch.randn(T, B, H)
    batch_first = time_major.transpose(0, 1).contiguous()
    return {
        p: call(module, (batch_first if first else time_major).clone().requires_grad_())
        for p, (module, first) in provider_modules.items()
    }


def time_row(providers: list[str], B: int, T: int, H: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved repetitions of each provider's call, after one untimed call each; seconds."""
    modules = {p: m for p in providers if (m := build(p, H)) is not None}
    fns = inputs(modules, B, T, H)
    return interleaved_times(fns, repeats)


def measure_memory(provider: str, B: int, T: int, H: int) -> float | None:
    """In this process: the peak resident memory one training step adds, MiB (see the module docstring)."""
    built = build(provider, H)
    if built is None:
        return None
    fn = inputs({provider: built}, B, T, H)[provider]
    return added_peak_mib(fn)


def memory_row(providers: list[str], B: int, T: int, H: int, threads: int) -> dict[str, float]:
    """Each provider's :func:`measure_memory` in a fresh subprocess."""
    return memory_in_subprocesses(__file__, providers, B=B, T=T, H=H, threads=threads)


def print_table(results: dict[int, dict[str, float]], unit: str, baseline: str, ratio_name: str) -> None:
    """One row per provider, per T its value (ms or MiB) and its ratio to the baseline's (speed-up
    for times, ``value / baseline`` for memory)."""
    steps = list(results)
    print("| provider | " + " | ".join(f"T={T} {unit} | {ratio_name}" for T in steps) + " |")
    print("|---|" + "---|---|" * len(steps))
    for p in [p for p in PROVIDERS if any(p in row for row in results.values())]:
        cells = []
        for T in steps:
            value, base = results[T].get(p), results[T].get(baseline)
            ratio = "-" if value is None or not base else f"{base / value if unit == 'ms' else value / base:.2f}x"
            cells += ["-" if value is None else f"{value:.0f}", ratio]
        print(f"| {p} | " + " | ".join(cells) + " |")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = sweep_parser(__doc__, steps="256,1024,4096", memory_at=1024)
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated (default all)")
    args = parser.parse_args(argv)
    if args.memory_child:
        answer_memory_child(args.memory_child, measure_memory)
        return
    B, H, repeats, steps = sweep_sizes(args)
    providers = args.providers.split(",")
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown:
        parser.error(f"unknown providers {unknown}: expected some of {', '.join(PROVIDERS)}")
    print(f"## Minimal cells on the CPU\n\n{machine()}\n")
    print(f"Forward + backward, float32, B = {B}, I = H = {H}, medians of {repeats} interleaved calls, ms.\n")
    times = {}
    for T in steps:
        wanted = [p for p in providers if "reference" not in p or T <= REFERENCE_MAX_T]
        times[T] = {p: 1e3 * statistics.median(v) for p, v in time_row(wanted, B, T, H, repeats).items()}
        print(f"T = {T} timed, load average {load()}", file=sys.stderr)
    print_table(times, "ms", SPEED_BASELINE, f"x {SPEED_BASELINE}")
    print(f"\nload average after the timings {load()}")
    if not args.no_memory:
        print("\nPeak memory a training step adds, MiB (each provider in its own process):\n")
        peaks = {args.memory_at: memory_row(providers, B, args.memory_at, H, args.threads)}
        print_table(peaks, "MiB", MEMORY_BASELINE, f"/ {MEMORY_BASELINE}")
    print(f"\nload average at the end {load()}")


if __name__ == "__main__":
    main()
