"""What gatedrnn adds to torch's own kernel for a packed input, the plain GRU and LSTM against
torch.nn without grad (``backend="torch"``; interleaved calls, medians). Run it under two commits
to compare them:

    python benchmarks/packed_overhead.py
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn

SIZES = [("GRU", 8, 16, 64), ("LSTM", 8, 16, 64), ("GRU", 8, 128, 64), ("LSTM", 32, 128, 256)]


def main() -> None:
    torch.set_num_threads(2)
    for family, B, T, H in SIZES:
        torch.manual_seed(0)
        theirs = getattr(torch.nn, family)(H, H)
        ours = getattr(gatedrnn, family)(H, H, backend="torch")
        ours.load_state_dict(theirs.state_dict())
        packed = pack_padded_sequence(
            torch.randn(T, B, H), torch.linspace(T, 1, B).round().long(), enforce_sorted=False
        )
        times: dict[str, list[float]] = {"torch.nn": [], "gatedrnn": []}
        calls = [("torch.nn", theirs), ("gatedrnn", ours)]
        with torch.no_grad():
            for _ in range(5):
                theirs(packed), ours(packed)
            for i in range(300 if T * H < 10000 else 30):
                for name, module in calls if i % 2 else calls[::-1]:
                    start = time.perf_counter()
                    module(packed)
                    times[name].append(time.perf_counter() - start)
        t, g = (1e3 * statistics.median(times[k]) for k in ("torch.nn", "gatedrnn"))
        print(f"{family} B={B} T={T} H={H}: torch.nn {t:.3f} ms, gatedrnn {g:.3f} ms, overhead {1e3 * (g - t):+.0f} us")


if __name__ == "__main__":
    main()
