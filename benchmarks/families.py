"""A user's cell family against the built-in one: the LSTM written as a user CellFamily (a plain
copy of its equations, with no kernel of its own) on the reference loop and on each of the
generic backend's loops, beside torch.nn.LSTM and gatedrnn.LSTM (``auto``) for scale.

    python benchmarks/families.py                    # B=32, I=H=256, T=64, 256, 1024, then small cells
    python benchmarks/families.py --quick            # a smoke run
    python benchmarks/families.py --threads 1 --repeats 7

Each row times a forward and backward pass (the sum of the outputs) for every provider,
interleaved (A B C ..., A B C ..., ...), and reports medians in ms, ms per step, and each
provider's speed-up over the reference loop. Providers: ``reference``; ``graph``, ``bptt`` and
``compiled``, the generic backend's loops (``GATEDRNN_GENERIC_LOOP``, see
:mod:`gatedrnn.backends.generic`); ``torch.nn`` and ``gatedrnn`` (``gatedrnn.LSTM``, auto).
``compiled``'s first call (its step product's compile) is timed apart. The reference loop's
backward is quadratic in T, so ``--reference-max-T`` leaves it out of longer rows.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import gatedrnn
from gatedrnn.backends import generic


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


GENERIC_LOOPS = ("graph", "bptt", "compiled")
PROVIDERS = ("reference", *GENERIC_LOOPS, "torch.nn", "gatedrnn")


def build(provider: str, I: int, H: int) -> torch.nn.Module:
    """The module a provider times, with the same initial weights for every provider."""
    torch.manual_seed(0)
    if provider == "torch.nn":
        return torch.nn.LSTM(I, H)
    if provider == "gatedrnn":
        return gatedrnn.LSTM(I, H)
    return gatedrnn.Recurrent(UserLSTM, I, H, backend="reference" if provider == "reference" else "generic")


def call(provider: str, module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward and backward pass of ``module`` on ``x``, on the provider's loop."""
    loop = provider if provider in GENERIC_LOOPS else None

    def forward_backward() -> None:
        if loop is not None:
            os.environ[generic.ENV] = loop
        try:
            out, _ = module(x)
            out.sum().backward()
        finally:
            os.environ.pop(generic.ENV, None)

    return forward_backward


def time_row(providers: list[str], B: int, T: int, I: int, H: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved repetitions of each provider's call, after one untimed call each (compile,
    allocator, thread pool); returns the times in seconds, and the first calls' under "first:<p>"."""
    x = torch.randn(T, B, I, requires_grad=True)
    fns = {p: call(p, build(p, I, H), x) for p in providers}
    times: dict[str, list[float]] = {}
    for p, fn in fns.items():
        start = time.perf_counter()
        fn()
        times[f"first:{p}"] = [time.perf_counter() - start]
    for p in fns:
        times[p] = []
    for _ in range(repeats):
        for p, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[p].append(time.perf_counter() - start)
    return times


def print_header(providers: list[str]) -> None:
    head = ["B", "H", "T"] + [f"{p} ms (/step)" for p in providers] + [f"ref/{p}" for p in providers[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))


def print_row(B: int, H: int, T: int, times: dict[str, list[float]], providers: list[str]) -> None:
    """Medians in ms and ms per step, and the speed-up over the reference loop where it ran."""
    med = {p: 1e3 * statistics.median(times[p]) for p in providers if times.get(p)}
    cells = [str(B), str(H), str(T)]
    cells += [f"{med[p]:.1f} ({med[p] / T:.2f})" if p in med else "-" for p in providers]
    ref = med.get("reference")
    cells += [f"{ref / med[p]:.2f}x" if ref and p in med else "-" for p in providers[1:]]
    print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def print_first_calls(rows: list[tuple[int, int, int, dict[str, list[float]]]]) -> None:
    """The compiled loop's first call (its compile, when the row's size is a new one) against its median."""
    for B, H, T, times in rows:
        if "first:compiled" in times and times.get("compiled"):
            first, med = times["first:compiled"][0], statistics.median(times["compiled"])
            print(f"- B={B} H={H} T={T}: first compiled call {first:.1f} s (median call {med:.2f} s)")


def machine() -> str:
    """The CPU (``lscpu``'s first lines), torch and Python versions, threads and load."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()[:10]
    except (OSError, subprocess.CalledProcessError):
        lscpu = [platform.processor() or "unknown CPU"]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return ("```\n" + "\n".join(lscpu) + "\n```\n\n"
            f"torch {torch.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} intra-op "
            f"thread(s), load average {load}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per provider and row (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--steps", default="64,256,1024", help="T of the B=32, I=H=256 rows")
    parser.add_argument("--reference-max-T", type=int, default=1024, help="longest T the reference loop runs")
    parser.add_argument("--small", default="8,32,256;32,64,256",
                        help="B,H,T of smaller cells' rows, separated by ';' ('' for none)")
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 repeat: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    sizes = [(32, 256, int(T)) for T in args.steps.split(",")]
    sizes += [tuple(int(v) for v in row.split(",")) for row in args.small.split(";") if row]
    if args.quick:
        sizes = [(4, 16, 16), (4, 16, 64)]
    print(f"## The LSTM as a user family: reference loop vs generic backend\n\n{machine()}\n")
    print(f"Forward + backward, I = H, medians of {repeats} interleaved calls.\n")
    print_header(list(PROVIDERS))
    rows = []
    for B, H, T in sizes:
        providers = [p for p in PROVIDERS if p != "reference" or T <= args.reference_max_T]
        rows.append((B, H, T, time_row(providers, B, T, H, H, repeats)))
        print_row(*rows[-1], list(PROVIDERS))
    print()
    print_first_calls(rows)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"\nload average at the end {load}")


if __name__ == "__main__":
    main()
