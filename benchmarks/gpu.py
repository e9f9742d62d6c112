"""GPU benchmark of one recurrent layer: torch.nn (cuDNN), gatedrnn's reference loop and the Triton
kernels side by side, forward and forward+backward, medians of CUDA-event timings.

    python benchmarks/gpu.py                      # the issue's grid (T=512), targets first
    python benchmarks/gpu.py --budget-s 240 --csv out.csv --markdown out.md
    python benchmarks/gpu.py --dry-run            # list the cases in run order (no GPU needed)

Reports µs per time step, the speed-up over cuDNN, the peak memory of forward+backward and the
path the Triton kernels took (persistent or per step, resident or streamed weights). The grid
runs the issue's targets first (and the layer-norm LSTM and GRU at B=16, H=1024 against cuDNN's
plain cells, which have no layer norm), then breadth first (B=16 and H=1024 before the corners), and
starts no new case once ``--budget-s`` is spent (the skipped ones are listed).
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

os.environ.setdefault("GATEDRNN_TRITON_CUDA", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import gatedrnn  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CELLS = {"lstm": (torch.nn.LSTM, gatedrnn.LSTM), "gru": (torch.nn.GRU, gatedrnn.GRU)}
# layer-norm cells, timed against cuDNN's plain cell of the same size (cuDNN has no layer norm)
LAYER_NORM_CELLS = {"lstm-ln": (torch.nn.LSTM, functools.partial(gatedrnn.LSTM, layer_norm=True)),
                    "gru-ln": (torch.nn.GRU, functools.partial(gatedrnn.GRU, layer_norm=True))}
PROVIDERS = ("cudnn", "triton", "reference")


@dataclass(frozen=True)
class Case:
    cell: str
    dtype: str
    B: int
    H: int
    T: int = 512

    @property
    def label(self) -> str:
        return f"{self.cell} {self.dtype} B={self.B} H={self.H} T={self.T}"


TARGETS = (Case("lstm", "bf16", 16, 1024), Case("gru", "bf16", 16, 1024), Case("lstm", "fp16", 16, 1024),
           Case("lstm", "fp16", 16, 768, 1024), Case("gru", "fp16", 16, 768, 1024), Case("gru", "bf16", 16, 768, 1024),
           Case("lstm-ln", "bf16", 16, 1024), Case("gru-ln", "bf16", 16, 1024))


def cases(batches, hiddens, dtypes, cells, T: int = 512) -> list[Case]:
    """The issue's targets first, then the grid, most telling first: B=16 before the other
    batches, H=1024 before the other sizes, then in the order of ``dtypes``."""
    def priority(c: Case):
        return (c.B != 16, abs(c.H - 1024), dtypes.index(c.dtype), c.B, cells.index(c.cell))

    grid = sorted((Case(c, d, b, h, T) for d in dtypes for c in cells for h in hiddens for b in batches), key=priority)
    return list(TARGETS) + [c for c in grid if c not in TARGETS]


def build(case: Case, provider: str) -> torch.nn.Module:
    dtype = DTYPES[case.dtype]
    torch_cls, ours = {**CELLS, **LAYER_NORM_CELLS}[case.cell]
    if provider == "cudnn":
        return torch_cls(case.H, case.H, device="cuda", dtype=dtype)
    return ours(case.H, case.H, device="cuda", dtype=dtype, backend=provider)


def measure(case: Case, provider: str, rep_ms: int) -> dict[str, float]:
    """Median forward and forward+backward milliseconds and peak MiB of forward+backward."""
    from triton.testing import do_bench

    module = build(case, provider)
    x = torch.randn(case.T, case.B, case.H, device="cuda", dtype=DTYPES[case.dtype], requires_grad=True)

    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        out, _ = module(x)
        out.backward(torch.ones_like(out))

    fwd_bwd()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    result = {
        "fwd_ms": do_bench(fwd, warmup=rep_ms // 4, rep=rep_ms, return_mode="median"),
        "fwdbwd_ms": do_bench(fwd_bwd, warmup=rep_ms // 4, rep=rep_ms, return_mode="median"),
        "peak_mib": peak,
    }
    if provider == "triton":
        from gatedrnn.backends.triton import launch

        result["path"] = "; ".join(f"{k}: {p.describe()}" for k, p in launch.last_plans.items())
    return result


def machine() -> str:
    import triton

    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown"
    return (f"{props.name} ({props.multi_processor_count} SMs), driver {driver}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, Triton {triton.__version__}, "
            f"Python {platform.python_version()}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--hiddens", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no new case after this long")
    p.add_argument("--rep-ms", type=int, default=200, help="do_bench repetition time per measurement")
    p.add_argument("--reference-for", default="B=16", help="run the slow reference loop only where the label "
                   "contains this (empty: everywhere)")
    p.add_argument("--T", type=int, default=512, help="sequence length of the grid (targets keep theirs)")
    p.add_argument("--csv")
    p.add_argument("--markdown")
    p.add_argument("--dry-run", action="store_true", help="print the cases in run order and exit")
    args = p.parse_args(argv)
    planned = cases(args.batches, args.hiddens, args.dtypes, args.cells, args.T)
    if args.dry_run:
        print("\n".join(c.label for c in planned))
        return 0
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    header = machine()
    print(header, flush=True)
    start = time.time()
    rows, skipped = [], []
    for case in planned:
        if time.time() - start > args.budget_s:
            skipped.append(case.label)
            continue
        results = {}
        for provider in PROVIDERS:
            if provider == "reference" and (args.reference_for not in f"{case.label} " or case.H > 1024):
                continue
            try:
                results[provider] = measure(case, provider, args.rep_ms)
            except Exception as exc:  # a failing provider is a result to report, not a crash
                results[provider] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        base = results["cudnn"]
        for provider, r in results.items():
            row = {"case": case.label, "provider": provider, **r}
            if "error" not in r and "error" not in base:
                row["us_step_fwd"] = 1000 * r["fwd_ms"] / case.T
                row["us_step_fwdbwd"] = 1000 * r["fwdbwd_ms"] / case.T
                row["speedup_fwd"] = base["fwd_ms"] / r["fwd_ms"]
                row["speedup_fwdbwd"] = base["fwdbwd_ms"] / r["fwdbwd_ms"]
            rows.append(row)
            print(format_row(row), flush=True)
    table = markdown(header, rows, skipped)
    summary = summarise(rows)
    if args.csv:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "case", k != "provider", k))
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print("\n" + table)
    print(summary)
    return 0


def summarise(rows: list[dict]) -> str:
    """One line per case: cuDNN and triton µs/step (forward, forward+backward) and the speed-ups."""
    by_case: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["provider"]] = r
    lines = ["", "Summary (µs/step; speed-up = cuDNN time / triton time; fwd | fwd+bwd):"]
    for case, r in by_case.items():
        c, t = r.get("cudnn", {}), r.get("triton", {})
        if "us_step_fwd" not in t:
            lines.append(f"  {case:<34} triton: {t.get('error', 'not run')}")
            continue
        lines.append(f"  {case:<34} cuDNN {c['us_step_fwd']:7.2f} | {c['us_step_fwdbwd']:7.2f}   triton "
                     f"{t['us_step_fwd']:7.2f} | {t['us_step_fwdbwd']:7.2f}   x{t['speedup_fwd']:.2f} | "
                     f"x{t['speedup_fwdbwd']:.2f}   mem {t['peak_mib']:.0f}/{c['peak_mib']:.0f} MiB")
    return "\n".join(lines)


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['case']:<34} {row['provider']:<10} ERROR {row['error']}"
    if "us_step_fwd" not in row:
        return f"{row['case']:<34} {row['provider']:<10} fwd {row['fwd_ms']:.3f} ms  fwd+bwd {row['fwdbwd_ms']:.3f} ms"
    return (f"{row['case']:<34} {row['provider']:<10} fwd {row['us_step_fwd']:7.2f} us/step "
            f"(x{row['speedup_fwd']:.2f})  fwd+bwd {row['us_step_fwdbwd']:7.2f} us/step "
            f"(x{row['speedup_fwdbwd']:.2f})  peak {row['peak_mib']:.0f} MiB")


def markdown(header: str, rows: list[dict], skipped: list[str]) -> str:
    lines = [f"Machine: {header}", "",
             "| case | provider | fwd µs/step | fwd speed-up | fwd+bwd µs/step | fwd+bwd speed-up | peak MiB | path |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "us_step_fwd" in r:
            lines.append(f"| {r['case']} | {r['provider']} | {r['us_step_fwd']:.2f} | {r['speedup_fwd']:.2f}x | "
                         f"{r['us_step_fwdbwd']:.2f} | {r['speedup_fwdbwd']:.2f}x | {r['peak_mib']:.0f} | "
                         f"{r.get('path', '')} |")
        else:
            lines.append(f"| {r['case']} | {r['provider']} | {r.get('error', 'cuDNN failed')} | | | | | |")
    if skipped:
        lines += ["", f"Not run (time budget): {', '.join(skipped)}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
