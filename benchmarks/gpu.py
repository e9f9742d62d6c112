"""GPU benchmark of one recurrent layer: torch.nn (cuDNN), gatedrnn's reference loop and the Triton
kernels side by side, forward and forward+backward, medians of CUDA-event timings.

    python benchmarks/gpu.py                      # the grid (T=512), targets first
    python benchmarks/gpu.py --budget-s 240 --csv out.csv --markdown out.md
    python benchmarks/gpu.py --dry-run            # list the cases in run order (no GPU needed)
    python benchmarks/gpu.py --auto-table src/gatedrnn/backends/triton/measured.json --verified

With ``--auto-table`` the run's speed-ups over cuDNN are recorded for ``backend="auto"`` (see
:mod:`gatedrnn.backends.triton.measured`), replacing this GPU's earlier record; ``--verified``
says the GPU tests passed on this device (``benchmarks/gpu_check.sh`` passes it only then).

Reports µs per time step, the speed-up over cuDNN, the peak memory of forward+backward and the
path the Triton kernels took (persistent or per step, resident or streamed weights). The grid
runs the targets first (and the layer-norm LSTM and GRU at B=16, H=1024 against cuDNN's
plain cells, which have no layer norm), then the layer kernels (the sLSTM with 4 heads against
cuDNN's LSTM, minGRU and minLSTM against its GRU; B=32, H=256 and 1024, T=256 and 1024), then a
few cases under each launch override of ``SWEEP``
(units per program, warps, where the weights live, the batch block: what the planner chose without
a GPU against the alternatives), then breadth first (B=16 and H=1024 before the corners), and
starts no new case once ``--budget-s`` is spent (the skipped ones are listed).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import gatedrnn  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CELLS = {"lstm": (torch.nn.LSTM, gatedrnn.LSTM), "gru": (torch.nn.GRU, gatedrnn.GRU)}
# layer-norm cells, timed against cuDNN's plain cell of the same size (cuDNN has no layer norm)
LAYER_NORM_CELLS = {
    "lstm-ln": (torch.nn.LSTM, functools.partial(gatedrnn.LSTM, layer_norm=True)),
    "gru-ln": (torch.nn.GRU, functools.partial(gatedrnn.GRU, layer_norm=True)),
}
# regularised training (zoneout and recurrent dropout inside the kernels), which cuDNN cannot run:
# timed beside cuDNN's unregularised cell and the reference loop, a regularised run's alternative
REGULARISED_CELLS = {"lstm-zo": (torch.nn.LSTM, functools.partial(gatedrnn.LSTM, zoneout=0.1, recurrent_dropout=0.1))}
# the families on the Triton layer kernels, which torch.nn does not compute: timed against cuDNN's
# cell of the same size (the sLSTM against the LSTM, the minimal cells against the GRU)
LAYER_KERNEL_CELLS = {
    "slstm": (torch.nn.LSTM, functools.partial(gatedrnn.SLSTM, num_heads=4)),
    "mingru": (torch.nn.GRU, gatedrnn.MinGRU),
    "minlstm": (torch.nn.GRU, gatedrnn.MinLSTM),
}
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


TARGETS = (
    Case("lstm", "bf16", 16, 1024),
    Case("gru", "bf16", 16, 1024),
    Case("lstm", "fp16", 16, 1024),
    Case("lstm", "fp16", 16, 768, 1024),
    Case("gru", "fp16", 16, 768, 1024),
    Case("gru", "bf16", 16, 768, 1024),
    Case("lstm-ln", "bf16", 16, 1024),
    Case("gru-ln", "bf16", 16, 1024),
)
# the layer kernels' cases, timed after the targets, before the sweep
LAYER_KERNEL_CASES = tuple(
    Case(cell, "bf16", 32, H, T) for cell in LAYER_KERNEL_CELLS for H in (256, 1024) for T in (256, 1024)
)
FIRST = TARGETS + LAYER_KERNEL_CASES
"""The cases timed before the launch-override sweep."""
# timed after the targets and the sweep, before the grid
EXTRAS = (Case("lstm-zo", "bf16", 16, 1024),)


# launch overrides (gatedrnn.backends.triton.launch.Tuning) tried after the targets: the planner's
# choices were made without a GPU (from compiler reports: benchmarks/sm90_build.py), this shows
# what a GPU prefers. At B=16 the units per program, warps, where the weights live and the
# pipelining of the streamed loops (the backward streams at H=1024); at B=256 the streamed batch
# block (BB=32 re-reads the weights twice as often as 64) and the pipelining
_SMALL_BATCH = {
    "planner's choice": {},
    "block_h=8": {"block_h": 8},
    "block_h=32": {"block_h": 32},
    "4 warps": {"num_warps": 4},
    "8 warps": {"num_warps": 8},
    "streamed weights": {"resident": False},
    "2 stages": {"stages": 2},
    "3 stages": {"stages": 3},
}
SWEEP = {
    TARGETS[0]: _SMALL_BATCH,
    TARGETS[1]: _SMALL_BATCH,
    Case("lstm", "bf16", 256, 1024): {
        "planner's choice": {},
        "block_b=32": {"block_b": 32},
        "8 warps": {"num_warps": 8},
        "3 stages": {"stages": 3},
    },
}


def cases(batches, hiddens, dtypes, cells, T: int = 512) -> list[Case]:
    """The targets and the layer kernels' cases first (:data:`FIRST`), then :data:`EXTRAS`, then the
    grid, most telling first: B=16 before the other batches, H=1024 before the other sizes, then in
    the order of ``dtypes``."""

    def priority(c: Case):
        return (c.B != 16, abs(c.H - 1024), dtypes.index(c.dtype), c.B, cells.index(c.cell))

    grid = sorted((Case(c, d, b, h, T) for d in dtypes for c in cells for h in hiddens for b in batches), key=priority)
    return list(FIRST) + list(EXTRAS) + [c for c in grid if c not in TARGETS]


def build(case: Case, provider: str) -> torch.nn.Module:
    dtype = DTYPES[case.dtype]
    torch_cls, ours = {**CELLS, **LAYER_NORM_CELLS, **REGULARISED_CELLS, **LAYER_KERNEL_CELLS}[case.cell]
    if provider == "cudnn":
        return torch_cls(case.H, case.H, device="cuda", dtype=dtype)
    return ours(case.H, case.H, device="cuda", dtype=dtype, backend=provider)


def measure(case: Case, provider: str, rep_ms: int) -> dict[str, float]:
    """Median forward and forward+backward milliseconds and peak MiB of forward+backward."""
    from triton.testing import do_bench

    from gatedrnn.backends.triton import launch

    launch.last_plans.clear()  # the recurrence op's plans; the layer kernels record none
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
        result["path"] = "; ".join(f"{k}: {p.describe()}" for k, p in launch.last_plans.items()) or "layer kernel"
    return result


def machine() -> str:
    import triton

    props = torch.cuda.get_device_properties(0)
    try:
        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.strip()
            .splitlines()[0]
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown"
    return (
        f"{props.name} ({props.multi_processor_count} SMs), driver {driver}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, Triton {triton.__version__}, "
        f"Python {platform.python_version()}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--hiddens", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no new case after this long")
    p.add_argument("--rep-ms", type=int, default=200, help="do_bench repetition time per measurement")
    p.add_argument(
        "--reference-for",
        default="B=16",
        help="run the slow reference loop only where the label contains this (empty: everywhere)",
    )
    p.add_argument("--T", type=int, default=512, help="sequence length of the grid (targets keep theirs)")
    p.add_argument("--csv")
    p.add_argument("--markdown")
    p.add_argument("--dry-run", action="store_true", help="print the cases in run order and exit")
    p.add_argument("--no-sweep", action="store_true", help="skip the launch-override sweep after the targets")
    p.add_argument(
        "--sweep-budget-s",
        type=float,
        default=float("inf"),
        help="start no new sweep case after this long in the sweep (within --budget-s)",
    )
    p.add_argument("--auto-table", help="record the speed-ups in this measured.json for backend='auto'")
    p.add_argument("--verified", action="store_true", help="the GPU tests passed on this device")
    args = p.parse_args(argv)
    planned = cases(args.batches, args.hiddens, args.dtypes, args.cells, args.T)
    if args.dry_run:
        print("\n".join(c.label for c in planned))
        return 0
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ.setdefault("GATEDRNN_TRITON_CUDA", "1")  # time the kernels even before a device is verified
    torch.backends.cuda.matmul.allow_tf32 = False
    header = machine()
    print(header, flush=True)
    rows, skipped, swept = run(planned, args)
    table = markdown(header, rows, skipped) + sweep_markdown(swept)
    summary = summarise(rows) + sweep_summary(swept)
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
    if args.auto_table:
        import triton

        record = auto_record(
            rows,
            planned,
            torch.cuda.get_device_name(0),
            args.verified,
            list(torch.cuda.get_device_capability(0)),
            triton.__version__,
            header,
        )
        write_auto_table(args.auto_table, record)
        print(auto_summary(record))
    return 0


def run(planned: list[Case], args) -> tuple[list[dict], list[str], list[dict]]:
    """The targets, the sweep, then the rest of ``planned`` until the budget is spent: (rows,
    labels of the cases not run, sweep rows). An interrupt (the caller's timeout sends SIGINT)
    ends the run early with what was measured, so the tables are still written."""
    start = time.time()
    rows, swept, done = [], [], 0

    def spent() -> bool:
        return time.time() - start > args.budget_s

    try:
        for case in planned[: len(FIRST)]:  # cases() puts the targets and the layer kernels first
            if spent():
                break
            rows += measure_case(case, args)
            done += 1
        if not args.no_sweep:
            sweep(SWEEP, args.rep_ms, min(start + args.budget_s, time.time() + args.sweep_budget_s), swept)
        for case in planned[done:]:
            if spent():
                break
            rows += measure_case(case, args)
            done += 1
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", flush=True)
    return rows, [c.label for c in planned[done:]], swept


def measure_case(case: Case, args) -> list[dict]:
    """Rows of one case: each provider's times and its speed-ups over cuDNN."""
    results = {}
    for provider in PROVIDERS:
        if provider == "reference" and (args.reference_for not in f"{case.label} " or case.H > 1024):
            continue
        try:
            results[provider] = measure(case, provider, args.rep_ms)
        except Exception as exc:  # a failing provider is a result to report, not a crash
            results[provider] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    base = results["cudnn"]
    rows = []
    for provider, r in results.items():
        row = {"case": case.label, "provider": provider, **r}
        if "error" not in r and "error" not in base:
            row["us_step_fwd"] = 1000 * r["fwd_ms"] / case.T
            row["us_step_fwdbwd"] = 1000 * r["fwdbwd_ms"] / case.T
            row["speedup_fwd"] = base["fwd_ms"] / r["fwd_ms"]
            row["speedup_fwdbwd"] = base["fwdbwd_ms"] / r["fwdbwd_ms"]
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def sweep(plan: dict[Case, dict[str, dict]], rep_ms: int, deadline: float, rows: list[dict]) -> None:
    """Time the kernels on each case of ``plan`` under each of its launch overrides (as
    :data:`SWEEP`), until ``deadline`` (time.time()), appending to ``rows`` as it goes (so an
    interrupt keeps what was measured)."""
    from gatedrnn.backends.triton import launch

    for case, overrides_by_name in plan.items():
        for name, overrides in overrides_by_name.items():
            if time.time() > deadline:
                return
            saved = launch.tuning
            launch.tuning = launch.Tuning(**overrides)
            try:
                r = measure(case, "triton", rep_ms)
            except Exception as exc:  # an override the device refuses is a result too
                r = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            finally:
                launch.tuning = saved
            row = {"case": case.label, "tuning": name, **r}
            if "error" not in r:
                row.update(us_step_fwd=1000 * r["fwd_ms"] / case.T, us_step_fwdbwd=1000 * r["fwdbwd_ms"] / case.T)
            print(
                f"sweep {case.label} [{name}] "
                + (
                    row.get("error")
                    or f"fwd {row['us_step_fwd']:.2f} fwd+bwd {row['us_step_fwdbwd']:.2f} us/step; {row['path']}"
                ),
                flush=True,
            )
            rows.append(row)


def sweep_summary(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", "Sweep (triton µs/step under launch overrides; fwd | fwd+bwd):"]
    for r in rows:
        what = r.get("error") or f"{r['us_step_fwd']:7.2f} | {r['us_step_fwdbwd']:7.2f}"
        lines.append(f"  {r['case']:<30} {r['tuning']:<17} {what}")
    return "\n".join(lines)


def sweep_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "",
        "| case | launch override | fwd µs/step | fwd+bwd µs/step | peak MiB | path |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['tuning']} | {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['case']} | {r['tuning']} | {r['us_step_fwd']:.2f} | {r['us_step_fwdbwd']:.2f} | "
                f"{r['peak_mib']:.0f} | {r['path']} |"
            )
    return "\n".join(lines) + "\n"


def auto_record(
    rows: list[dict],
    planned: list[Case],
    device: str,
    verified: bool,
    capability: list[int],
    triton_version: str,
    source: str,
) -> dict:
    """This run as a device record of measured.json: the speed-ups of every case of a cell cuDNN
    also runs (not the layer-norm rows, which compare against cuDNN's plain cell). A case where
    the kernels or cuDNN failed is recorded with speed-ups 0: no neighbouring measurement may
    then choose the kernels there."""
    by_label = {c.label: c for c in planned}
    cases = []
    for r in rows:
        case = by_label.get(r["case"])
        if r["provider"] != "triton" or case is None or case.cell not in CELLS:
            continue
        fwd, train = (r["speedup_fwd"], r["speedup_fwdbwd"]) if "speedup_fwd" in r else (0.0, 0.0)
        cases.append(
            {
                "cell": case.cell,
                "dtype": case.dtype,
                "B": case.B,
                "H": case.H,
                "T": case.T,
                "fwd": round(fwd, 3),
                "train": round(train, 3),
            }
        )
    return {
        "name": device,
        "capability": capability,
        "verified": bool(verified),
        "triton": triton_version,
        "torch": torch.__version__,
        "source": source,
        "measured": time.strftime("%Y-%m-%d"),
        "cases": cases,
    }


def write_auto_table(path: str, record: dict) -> None:
    """Put ``record`` into the table at ``path`` in place of any earlier record of that device,
    checked by the same parser ``auto`` uses, written atomically."""
    from gatedrnn.backends.triton import measured

    table = {"devices": []}
    if os.path.exists(path):
        with open(path) as f:
            table = json.load(f)
    table["devices"] = [d for d in table.get("devices", []) if d.get("name") != record["name"]] + [record]
    measured.parse(table, path)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    measured.load.cache_clear()


def auto_summary(record: dict) -> str:
    """How many cases ``auto`` now runs on the kernels instead of cuDNN (forward, training), and which."""
    from gatedrnn.backends.triton.measured import MARGIN

    cases = record["cases"] if record["verified"] else []
    fwd = [c for c in cases if c["fwd"] >= MARGIN]
    train = [c for c in cases if c["train"] >= MARGIN]
    lines = [
        f"auto on {record['name']} (verified: {record['verified']}): triton instead of cuDNN where "
        f">= {MARGIN}x, forward in {len(fwd)} and training in {len(train)} of {len(record['cases'])} cases"
    ]
    lines += [f"  train: {c['cell']} {c['dtype']} B={c['B']} H={c['H']} x{c['train']:.2f}" for c in train]
    return "\n".join(lines)


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
        lines.append(
            f"  {case:<34} cuDNN {c['us_step_fwd']:7.2f} | {c['us_step_fwdbwd']:7.2f}   triton "
            f"{t['us_step_fwd']:7.2f} | {t['us_step_fwdbwd']:7.2f}   x{t['speedup_fwd']:.2f} | "
            f"x{t['speedup_fwdbwd']:.2f}   mem {t['peak_mib']:.0f}/{c['peak_mib']:.0f} MiB"
        )
    return "\n".join(lines)


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['case']:<34} {row['provider']:<10} ERROR {row['error']}"
    if "us_step_fwd" not in row:
        return f"{row['case']:<34} {row['provider']:<10} fwd {row['fwd_ms']:.3f} ms  fwd+bwd {row['fwdbwd_ms']:.3f} ms"
    return (
        f"{row['case']:<34} {row['provider']:<10} fwd {row['us_step_fwd']:7.2f} us/step "
        f"(x{row['speedup_fwd']:.2f})  fwd+bwd {row['us_step_fwdbwd']:7.2f} us/step "
        f"(x{row['speedup_fwdbwd']:.2f})  peak {row['peak_mib']:.0f} MiB"
    )


def markdown(header: str, rows: list[dict], skipped: list[str]) -> str:
    lines = [
        f"Machine: {header}",
        "",
        "| case | provider | fwd µs/step | fwd speed-up | fwd+bwd µs/step | fwd+bwd speed-up | peak MiB | path |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "us_step_fwd" in r:
            lines.append(
                f"| {r['case']} | {r['provider']} | {r['us_step_fwd']:.2f} | {r['speedup_fwd']:.2f}x | "
                f"{r['us_step_fwdbwd']:.2f} | {r['speedup_fwdbwd']:.2f}x | {r['peak_mib']:.0f} | "
                f"{r.get('path', '')} |"
            )
        else:
            lines.append(f"| {r['case']} | {r['provider']} | {r.get('error', 'cuDNN failed')} | | | | | |")
    if skipped:
        lines += ["", f"Not run (time budget or interrupt): {', '.join(skipped)}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
