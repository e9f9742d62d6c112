"""A user's cell family on the layer machinery: the LSTM written as a user CellFamily (a plain copy
of its equations, with no kernel of its own, so ``auto`` runs it on the reference loop), beside
torch.nn.LSTM and gatedrnn.LSTM (``auto``: torch's kernel) for scale.

    python benchmarks/families.py                    # B=32, I=H=256, T=64, 256, 1024, packed, small cells
    python benchmarks/families.py --quick            # a smoke run
    python benchmarks/families.py --threads 1 --repeats 7

Each row times a forward and backward pass (the sum of the outputs) for every provider,
interleaved (A B C ..., A B C ..., ...), after one untimed call each, and reports medians in ms,
ms per step, and each provider's speed-up over the reference loop. A packed row's lengths are
spread evenly from T down to T/2. Providers: ``reference`` (``gatedrnn.Recurrent`` of the user
family), ``torch.nn`` (``torch.nn.LSTM``) and ``gatedrnn`` (``gatedrnn.LSTM``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn


class UserLSTM(gatedrnn.CellFamily):
    """torch.nn's LSTM cell as a user writes it: gates i, f, g, o; states h, c."""

    name = "bench-user-lstm"
    gates = ("i", "f", "g", "o")
    states = ("h", "c")

    def step(self, x_proj, states, weights):
        h, c = states
        a = x_proj + h @ weights["weight_hh"].T + weights["bias_hh"]
        i, f, g, o = a.split(self.hidden_size, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return (h, c), {"i": i, "f": f, "g": g, "o": o}


PROVIDERS = ("reference", "torch.nn", "gatedrnn")


def build(provider: str, I: int, H: int) -> torch.nn.Module:
    """The module a provider times, with the same initial weights for every provider."""
    torch.manual_seed(0)
    if provider == "torch.nn":
        return torch.nn.LSTM(I, H)
    if provider == "gatedrnn":
        return gatedrnn.LSTM(I, H)
    return gatedrnn.Recurrent(UserLSTM, I, H, backend=provider)


def call(module: torch.nn.Module, x: torch.Tensor, lengths: list[int] | None) -> Callable[[], None]:
    """One forward and backward pass of ``module`` on ``x`` (packed to ``lengths`` when given)."""

    def forward_backward() -> None:
        inp = x if lengths is None else pack_padded_sequence(x, lengths)
        out, _ = module(inp)
        (out if lengths is None else out.data).sum().backward()

    return forward_backward


def time_row(providers: list[str], B: int, T: int, H: int, packed: bool, repeats: int) -> dict[str, list[float]]:
    """Interleaved repetitions of each provider's call, after one untimed call each (allocator,
    thread pool, lazy initialisation); the times in seconds."""
    x = torch.randn(T, B, H, requires_grad=True)
    lengths = [T - (T // 2) * b // max(B - 1, 1) for b in range(B)] if packed else None
    fns = {p: call(build(p, H, H), x, lengths) for p in providers}
    return interleaved_times(fns, repeats)


def print_header() -> None:
    head = ["B", "H", "T", "lengths"] + [f"{p} ms (/step)" for p in PROVIDERS]
    head += [f"ref/{p}" for p in PROVIDERS[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))


def print_row(B: int, H: int, T: int, packed: bool, times: dict[str, list[float]]) -> None:
    """Medians in ms and ms per step, and the speed-up over the reference loop where it ran."""
    med = {p: 1e3 * statistics.median(v) for p, v in times.items()}
    cells = [str(B), str(H), str(T), f"{T}..{T - T // 2}" if packed else "all T"]
    cells += [f"{med[p]:.1f} ({med[p] / T:.2f})" if p in med else "-" for p in PROVIDERS]
    ref = med.get("reference")
    cells += [f"{ref / med[p]:.2f}x" if ref and p in med else "-" for p in PROVIDERS[1:]]
    print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def interleaved_times(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """One untimed call of each (allocator, thread pool, lazy initialisation), then ``repeats``
    rounds calling every provider in turn: each provider's times in seconds."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {p: [] for p in fns}
    for _ in range(repeats):
        for p, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[p].append(time.perf_counter() - start)
    return times


def _peak_kib() -> int:
    """This process's peak resident memory (VmHWM) in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def added_peak_mib(fn: Callable[[], None]) -> float:
    """The peak resident memory one call of ``fn`` adds, MiB: the kernel's peak-RSS mark reset to
    the current RSS (``/proc/self/clear_refs``), then ``VmHWM`` after the call (Linux)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _peak_kib()
    fn()
    return (_peak_kib() - before) / 1024


def memory_in_subprocesses(script: str, providers: list[str], **spec) -> dict[str, float]:
    """Each provider's memory measured by ``script --memory-child JSON`` (``spec`` plus the
    provider) in a fresh process, which prints a number of MiB or ``null``."""
    peaks = {}
    for p in providers:
        child = json.dumps(dict(spec, provider=p))
        done = subprocess.run([sys.executable, script, "--memory-child", child], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() != "null":
            peaks[p] = float(done.stdout.strip())
        elif done.returncode != 0:
            print(f"memory of {p} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return peaks


def sweep_parser(description: str, steps: str, memory_at: int) -> argparse.ArgumentParser:
    """The options of a script that times layers of one size over several T and measures their
    peak memory at one T (``--memory-child`` is the subprocess side of
    :func:`memory_in_subprocesses`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per provider and row (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256, help="H (= the input size)")
    parser.add_argument("--steps", default=steps, help="the rows' T, comma-separated")
    parser.add_argument("--memory-at", type=int, default=memory_at, help="T of the memory row")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory row")
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 repeat: a smoke run")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    return parser


def answer_memory_child(child: str, measure: Callable[[str, int, int, int], float | None]) -> None:
    """The subprocess side of :func:`memory_in_subprocesses`: print ``measure(provider, B, T, H)``
    for the JSON spec ``child`` as JSON."""
    spec = json.loads(child)
    torch.set_num_threads(spec["threads"])
    print(json.dumps(measure(spec["provider"], spec["B"], spec["T"], spec["H"])))


def sweep_sizes(args: argparse.Namespace) -> tuple[int, int, int, list[int]]:
    """(B, H, repeats, steps) of a :func:`sweep_parser` run, small with ``--quick`` (which also moves
    the memory row to T = 64); sets the intra-op threads."""
    torch.set_num_threads(args.threads)
    if args.quick:
        args.memory_at = 64
        return 4, 16, 1, [16, 64]
    return args.batch, args.hidden, args.repeats, [int(t) for t in args.steps.split(",")]


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def machine() -> str:
    """The CPU (``lscpu``'s first lines), torch and Python versions, threads and load."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()[:12]
    except (OSError, subprocess.CalledProcessError):
        lscpu = [platform.processor() or "unknown CPU"]
    return (
        "```\n" + "\n".join(lscpu) + "\n```\n\n"
        f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}), Python "
        f"{platform.python_version()}, {torch.get_num_threads()} intra-op thread(s), load average {load()}"
    )


def parse_row(text: str) -> tuple[int, int, int, bool]:
    """``B,H,T`` or ``B,H,T,packed``."""
    parts = text.split(",")
    return int(parts[0]), int(parts[1]), int(parts[2]), parts[3:] == ["packed"]


ROWS = "32,256,64;32,256,256;32,256,1024;32,256,256,packed;8,32,256;32,64,256"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per provider and row (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--rows", default=ROWS, help=f"B,H,T[,packed] rows separated by ';' (default {ROWS})")
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 repeat: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    rows = [(4, 16, 16, False), (4, 16, 64, True)] if args.quick else [parse_row(r) for r in args.rows.split(";")]
    print(f"## The LSTM as a user family on the reference loop\n\n{machine()}\n")
    print(f"Forward + backward, I = H, medians of {repeats} interleaved calls.\n")
    print_header()
    for B, H, T, packed in rows:
        print_row(B, H, T, packed, time_row(list(PROVIDERS), B, T, H, packed, repeats))
    print(f"\nload average at the end {load()}")


if __name__ == "__main__":
    main()
