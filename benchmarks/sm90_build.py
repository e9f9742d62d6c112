"""Build every kernel of the GPU benchmark's grid for sm_90 (H100 / H200) on a machine without a
GPU, and report what the compiler allocated: registers per thread, bytes spilled to local memory
(and how many spill instructions sit in the step loop rather than the once-per-launch prologue),
shared memory against the planner's estimate and the device's 227 KiB. No timing (that needs the
GPU: benchmarks/gpu.py); this catches a kernel that does not compile, overflows shared memory or
spills, before GPU time is spent on it.

    python benchmarks/sm90_build.py                      # the grid of benchmarks/gpu.py, plus variants
    python benchmarks/sm90_build.py --markdown out.md --jobs 2

Builds with the same plan (:func:`gatedrnn.backends.triton.offline.plan_for`) the device would
choose; identical plans (B only changes the streamed batch block) are built once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import torch  # noqa: E402
import triton  # noqa: E402

import gpu  # noqa: E402  (the benchmark's grid)
from gatedrnn.backends.triton import offline  # noqa: E402
from gatedrnn.backends.triton.launch import KernelSpec  # noqa: E402

SPECS = {
    "lstm": KernelSpec("lstm"),
    "gru": KernelSpec("gru"),
    "lstm-ln": KernelSpec("lstm", layer_norm=True),
    "gru-ln": KernelSpec("gru", layer_norm=True),
    "lstm-zo": KernelSpec("lstm", zoneout=1, dropout=True),
}
# the variants the grid does not time, at the target size
VARIANTS = {
    "lstm-peephole": KernelSpec("lstm", "peephole"),
    "lstm-cifg": KernelSpec("lstm", "cifg"),
    "lstm-proj": KernelSpec("lstm", proj=True),
    "gru-before": KernelSpec("gru", reset_after=False),
    "rnn-tanh": KernelSpec("rnn"),
    "lstm-proj-ln": KernelSpec("lstm", proj=True, layer_norm=True),
    "gru-zo": KernelSpec("gru", zoneout=1, dropout=True),
    "lstm-ln-zo": KernelSpec("lstm", layer_norm=True, zoneout=1, dropout=True),
    "gru-before-zo": KernelSpec("gru", reset_after=False, zoneout=1, dropout=True),
    "lstm-fgr": KernelSpec("lstm", "fgr"),
    "lstm-fgr-ln": KernelSpec("lstm", "fgr", layer_norm=True),
}


def jobs(batches, hiddens, dtypes) -> dict[tuple, list[str]]:
    """Unique builds -> the case labels that use them. A build is (spec name, backward, dtype, B, H, R);
    cases whose plans are equal share the first one's build."""
    planned = gpu.cases(batches, hiddens, dtypes, list(gpu.CELLS) + list(gpu.LAYER_NORM_CELLS))
    todo = [(c.cell, SPECS[c.cell], c.dtype, c.B, c.H, c.H, c.label) for c in planned]
    todo += [
        (name, spec, "bf16", 16, 1024, 512 if spec.proj else 1024, f"{name} bf16 B=16 H=1024")
        for name, spec in VARIANTS.items()
    ]
    unique: dict[tuple, list[str]] = {}
    seen: dict[tuple, tuple] = {}
    for name, spec, dtype, B, H, R, label in todo:
        for backward in (False, True):
            plan = offline.plan_for(offline.H100, spec, backward, gpu.DTYPES[dtype], B, H, R)
            # the launcher also specialises the sizes: 1 becomes a constant, multiples of 16 are marked
            shapes = tuple((n == 1, n % 16 == 0) for n in (B, H, R))
            key = (
                spec,
                backward,
                dtype,
                tuple(sorted((k, str(v)) for k, v in plan.consts.items())),
                plan.num_warps,
                shapes,
            )
            build = seen.setdefault(key, (name, backward, dtype, B, H, R))
            unique.setdefault(build, []).append(label)
    return unique


def build(job: tuple) -> dict:
    name, backward, dtype, B, H, R = job
    spec = {**SPECS, **VARIANTS}[name]
    start = time.time()
    try:
        b = offline.compile_for(offline.H100, spec, backward, gpu.DTYPES[dtype], B, H, R)
    except Exception as exc:  # a failed build is the finding, reported as such
        last = (str(exc).strip().splitlines() or [""])[-1]
        return {"job": job, "error": f"{type(exc).__name__}: {last[:200]}"}
    return {"job": job, "build": b, "seconds": time.time() - start}


def row(result: dict, labels: list[str]) -> str:
    name, backward, dtype, B, H, R = result["job"]
    what = f"{name} {dtype} H={H}{'' if R == H else f' R={R}'} {'bwd' if backward else 'fwd'}"
    used = f"{len(labels)} case{'s' if len(labels) > 1 else ''}"
    if "error" in result:
        return f"| {what} | {used} | BUILD FAILED: {result['error']} | | | | |"
    b = result["build"]
    spill = f"{b.spill_stores}/{b.spill_loads}" if b.spills else "0"
    within = "ok" if b.shared_bytes <= min(b.estimate_bytes, offline.H100.shared_per_block) else "OVER"
    return (
        f"| {what} | {used} | {b.plan.describe()}, {b.plan.num_warps} warps | {b.registers} | {spill} | "
        f"{b.loop_spills} | {b.shared_bytes} / {b.estimate_bytes} {within} | {result['seconds']:.0f} s |"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--hiddens", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--dtypes", nargs="+", default=list(gpu.DTYPES), choices=list(gpu.DTYPES))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    unique = jobs(args.batches, args.hiddens, args.dtypes)
    print(
        f"{len(unique)} builds for sm_{offline.H100.capability} with Triton {triton.__version__}, "
        f"torch {torch.__version__}",
        flush=True,
    )
    lines = [
        f"sm_{offline.H100.capability} builds ({offline.H100.name}), Triton {triton.__version__}: "
        "registers per thread, spilled bytes per thread (stores/loads), local-memory instructions inside the "
        "step loop, shared bytes allocated / planner's estimate",
        "",
        "| kernel | used by | plan | registers | spills | in the step loop | shared | build |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failed = spilled = in_loop = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(build, unique):
            line = row(result, unique[result["job"]])
            failed += "error" in result
            spilled += "error" not in result and result["build"].spills
            in_loop += "error" not in result and result["build"].loop_spills > 0
            print(line, flush=True)
            lines.append(line)
    lines += ["", f"{len(unique)} builds: {failed} failed, {spilled} spill, {in_loop} of them inside the step loop"]
    print(lines[-1])
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
