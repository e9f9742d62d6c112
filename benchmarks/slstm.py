"""The sLSTM on the CPU: gatedrnn.SLSTM (``backend="auto"``: the cpu backend's fused kernel) beside
its reference-loop run, torch.nn.LSTM of the same width and the xlstm package's vanilla sLSTM, in
time and in peak training memory.

    python benchmarks/slstm.py                       # B=32, I=H=256, 4 heads, T=128, 256, 1024
    python benchmarks/slstm.py --quick               # a smoke run
    python benchmarks/slstm.py --steps 256 --repeats 7 --no-memory

Time: each row times one forward and backward pass (the sum of the outputs; the input requires
grad) per provider, interleaved (A B C ..., A B C ..., ...) after one untimed call each, and
reports medians in ms, ms per step, and each provider's time against torch.nn.LSTM's and the
xlstm peer's. Memory: each provider runs one training step in a fresh subprocess, which resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``) once the module and input exist and then
reads the peak (``VmHWM``) after the step: the peak memory the step added, in MiB, and its ratio
to torch.nn.LSTM's.

Providers (float32, one layer, one direction, time-major): ``gatedrnn.SLSTM`` (4 heads, the
sigmoid forget gate), the same on ``backend="reference"`` (the step loop under autograd),
``torch.nn.LSTM(I, H)``, and ``xlstm vanilla``: the xlstm package's ``sLSTMCell_vanilla`` (its
pure-PyTorch backend) after a bias-free ``torch.nn.Linear(I, 4H)``, configured as
``tests/test_slstm.py`` checks it computes gatedrnn.SLSTM's numbers. The two Python-loop providers
run up to T = 256 (seconds per call beyond).
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

PROVIDERS = ("gatedrnn.SLSTM", "SLSTM reference", "torch.nn.LSTM", "xlstm vanilla")
BASELINE, PEER = "torch.nn.LSTM", "xlstm vanilla"
LOOP_MAX_T = 256
"""The reference loop's and the xlstm peer's rows stop here."""
HEADS = 4


class XLSTMVanilla(torch.nn.Module):
    """The xlstm package's vanilla sLSTM cell behind a bias-free input projection: (T, B, I) -> (T, B, H)."""

    def __init__(self, I: int, H: int, cell: torch.nn.Module) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(I, 4 * H, bias=False)
        self.cell = cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cell(self.proj(x))[0]


def build(provider: str, H: int) -> torch.nn.Module | None:
    """The module a provider times (the same initial weights on every run); None where it is not installed."""
    torch.manual_seed(0)
    if provider == "torch.nn.LSTM":
        return torch.nn.LSTM(H, H)
    if provider == "xlstm vanilla":
        try:
            from xlstm.blocks.slstm.cell import sLSTMCell_vanilla, sLSTMCellConfig
        except ImportError:
            return None
        config = sLSTMCellConfig(
            hidden_size=H, num_heads=HEADS, backend="vanilla", dtype="float32", input_shape="SBGNH", output_shape="SBH"
        )
        return XLSTMVanilla(H, H, sLSTMCell_vanilla(config))
    backend = "reference" if provider.endswith("reference") else "auto"
    return gatedrnn.SLSTM(H, H, num_heads=HEADS, backend=backend)


def call(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward and backward pass of ``module`` on ``x`` (its first output summed)."""

    def forward_backward() -> None:
        out = module(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return forward_backward


def calls(providers: list[str], B: int, T: int, H: int) -> dict[str, Callable[[], None]]:
    """Each installed provider's call on the same input values."""
    torch.manual_seed(1)
    x = torch.randn(T, B, H)
    modules = {p: m for p in providers if (m := build(p, H)) is not None}
    return {p: call(m, x.clone().requires_grad_()) for p, m in modules.items()}


def time_row(providers: list[str], B: int, T: int, H: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved repetitions of each provider's call, after one untimed call each; seconds."""
    fns = calls(providers, B, T, H)
    return interleaved_times(fns, repeats)


def measure_memory(provider: str, B: int, T: int, H: int) -> float | None:
    """In this process: the peak resident memory one training step adds, MiB."""
    fn = calls([provider], B, T, H).get(provider)
    if fn is None:
        return None
    return added_peak_mib(fn)


def memory_row(providers: list[str], B: int, T: int, H: int, threads: int) -> dict[str, float]:
    """Each provider's :func:`measure_memory` in a fresh subprocess."""
    return memory_in_subprocesses(__file__, providers, B=B, T=T, H=H, threads=threads)


def print_time_row(T: int, providers: list[str], times: dict[str, list[float]]) -> None:
    """Medians in ms (and per step), then torch.nn.LSTM's and the peer's time over gatedrnn.SLSTM's."""
    med = {p: 1e3 * statistics.median(v) for p, v in times.items()}
    row = [str(T)] + [f"{med[p]:.1f} ({med[p] / T:.2f})" if p in med else "-" for p in providers]
    ours = med.get(providers[0])
    row += [f"{med[p] / ours:.2f}x" if ours and p in med else "-" for p in (BASELINE, PEER)]
    print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def print_memory_row(T: int, providers: list[str], peaks: dict[str, float]) -> None:
    """Peaks in MiB, then each against torch.nn.LSTM's."""
    head = ["T"] + [f"{p} MiB" for p in providers] + [f"{p} / {BASELINE}" for p in providers if p != BASELINE]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = peaks.get(BASELINE)
    row = [str(T)] + [f"{peaks[p]:.0f}" if p in peaks else "-" for p in providers]
    row += [f"{peaks[p] / base:.2f}x" if base and p in peaks else "-" for p in providers if p != BASELINE]
    print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = sweep_parser(__doc__, steps="128,256,1024", memory_at=256)
    args = parser.parse_args(argv)
    if args.memory_child:
        answer_memory_child(args.memory_child, measure_memory)
        return
    B, H, repeats, steps = sweep_sizes(args)
    providers = list(PROVIDERS)
    print(f"## sLSTM on the CPU\n\n{machine()}\n")
    print(
        f"Forward + backward, float32, B = {B}, I = H = {H}, {HEADS} heads, medians of {repeats} interleaved calls.\n"
    )
    head = ["T"] + [f"{p} ms (/step)" for p in providers] + [f"{BASELINE} / ours", f"{PEER} / ours"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for T in steps:
        wanted = [p for p in providers if p not in ("SLSTM reference", PEER) or T <= LOOP_MAX_T]
        print_time_row(T, providers, time_row(wanted, B, T, H, repeats))
    print(f"\nload average after the timings {load()}")
    if not args.no_memory:
        print(f"\nPeak memory of one training step at T = {args.memory_at}, MiB (each its own process):\n")
        print_memory_row(args.memory_at, providers, memory_row(providers, B, args.memory_at, H, args.threads))
    print(f"\nload average at the end {load()}")


if __name__ == "__main__":
    main()
