"""Deployment on the CPU: ONNX export in onnxruntime, float32 and int8 weights, beside PyTorch eager.

    python benchmarks/int8.py                      # accuracy of the shipped models, then the speed grid
    python benchmarks/int8.py --quick              # a smoke run (small sizes, one repeat)
    python benchmarks/int8.py --skip-accuracy --threads 2 --repeats 5

Accuracy: each character model shipped with gatedrnn (``gatedrnn/pretrained/``) exported with
:func:`gatedrnn.export_onnx`, quantized with :func:`gatedrnn.export.quantize_int8`, and scored in bits
per character on the fixed validation windows of ``gatedrnn.tasks.charlm`` (512 windows of 128
characters) in PyTorch, onnxruntime float32 and onnxruntime int8.

Speed: one layer of I = H units over T steps, B sequences (inference, no gradients), for the LSTM
and GRU (ONNX's operators) and the layer-norm LSTM (a Scan loop over time). Providers, interleaved
(A B C, A B C, ...) after one untimed call each, medians in ms: ``torch`` (gatedrnn's layer in
PyTorch eager, ``backend="auto"``), ``ort fp32`` and ``ort int8`` (the exported file in onnxruntime's
CPU provider, ``--threads`` intra-op threads like PyTorch).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import gatedrnn
from gatedrnn import saved
from gatedrnn.export import export_onnx, quantize_int8, run_onnx, session
from gatedrnn.tasks.charlm import CharLM
from gatedrnn.viz.loading import SHIPPED, shipped_path

LAYERS = {
    "LSTM": dict(family="lstm"),
    "GRU": dict(family="gru"),
    "LSTM layer norm": dict(family="lstm", layer_norm=True),
}
PROVIDERS = ("torch", "ort fp32", "ort int8")


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine(threads: int) -> str:
    """The CPU (``lscpu``'s model line), versions, threads and load."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")
    except (OSError, subprocess.CalledProcessError):
        cpu = platform.processor() or "unknown CPU"
    import onnxruntime

    return (
        f"{cpu}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, Python "
        f"{platform.python_version()}, {threads} thread(s) each, load average {load()}"
    )


# ----- accuracy ---------------------------------------------------------------------------------------


def bits_per_char(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed cross-entropy in bits of (B, T, V) logits against (B, T) targets."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item() / np.log(2.0)


def accuracy(cell: str, workdir: Path, batch: int) -> dict[str, float]:
    """Bits per character of the shipped ``cell`` model on the validation windows, per provider."""
    model_file = saved.read(shipped_path(cell))
    model = saved.rebuild(model_file.meta, model_file.tensors).eval()
    fp32, int8 = workdir / f"{cell}.onnx", workdir / f"{cell}-int8.onnx"
    export_onnx(model, torch.randint(1, 78, (2, 7)), fp32)
    quantize_int8(fp32, int8)
    sessions = {"ort fp32": session(fp32), "ort int8": session(int8)}
    task = CharLM(seq_len=model_file.meta["task"]["seq_len"])
    totals = dict.fromkeys(PROVIDERS, 0.0)
    count = 0
    for windows in task.test_batches(torch.Generator(), batch):
        with torch.no_grad():
            totals["torch"] += bits_per_char(model(windows.inputs)[0], windows.targets)
        for name, sess in sessions.items():
            logits = torch.from_numpy(run_onnx(sess, (windows.inputs,))[0])
            totals[name] += bits_per_char(logits, windows.targets)
        count += windows.targets.numel()
    return {name: total / count for name, total in totals.items()}


def print_accuracy(workdir: Path, batch: int) -> None:
    print("| model | PyTorch | onnxruntime fp32 | onnxruntime int8 | int8 - fp32 | file fp32 / int8 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cell in SHIPPED:
        if not shipped_path(cell).exists():
            print(f"| {cell} | not installed here | | | | |")
            continue
        bpc = accuracy(cell, workdir, batch)
        sizes = [os.path.getsize(workdir / f"{cell}{suffix}.onnx") // 1024 for suffix in ("", "-int8")]
        print(
            f"| {cell.upper()} | {bpc['torch']:.4f} | {bpc['ort fp32']:.4f} | {bpc['ort int8']:.4f} | "
            f"{bpc['ort int8'] - bpc['ort fp32']:+.4f} | {sizes[0]} kB / {sizes[1]} kB |",
            flush=True,
        )


# ----- speed ------------------------------------------------------------------------------------------------


def providers(layer: str, H: int, workdir: Path, threads: int):
    """name -> (callable on a (T, B, H) input) for the three providers of one layer and size."""
    torch.manual_seed(0)
    options = dict(LAYERS[layer])
    module = gatedrnn.Recurrent(options.pop("family"), H, H, **options).eval()
    fp32, int8 = workdir / "speed.onnx", workdir / "speed-int8.onnx"
    export_onnx(module, torch.randn(5, 3, H), fp32, check=False)
    quantize_int8(fp32, int8)
    sessions = {"ort fp32": session(fp32, threads), "ort int8": session(int8, threads)}

    def eager(x):
        with torch.no_grad():
            module(x)

    calls = {"torch": eager}
    for name, sess in sessions.items():
        calls[name] = lambda x, sess=sess: run_onnx(sess, (x,))
    return calls


def time_row(layer: str, B: int, T: int, H: int, workdir: Path, threads: int, repeats: int) -> dict[str, float]:
    calls = providers(layer, H, workdir, threads)
    x = torch.randn(T, B, H)
    for call in calls.values():
        call(x)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call(x)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def print_speed(sizes: list[tuple[int, int, int]], workdir: Path, threads: int, repeats: int) -> None:
    print("| layer | B | T | H | torch ms | ort fp32 ms | ort int8 ms | int8 vs fp32 | int8 vs torch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for layer in LAYERS:
        for B, T, H in sizes:
            ms = time_row(layer, B, T, H, workdir, threads, repeats)
            print(
                f"| {layer} | {B} | {T} | {H} | {ms['torch']:.1f} | {ms['ort fp32']:.1f} | {ms['ort int8']:.1f} | "
                f"{ms['ort fp32'] / ms['ort int8']:.2f}x | {ms['torch'] / ms['ort int8']:.2f}x |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat, no accuracy")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and onnxruntime")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="validation windows per call (accuracy)")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [(B, T, H) for H in (256, 1024) for B in (1, 32) for T in (256,)]
    if args.quick:
        sizes, args.repeats, args.skip_accuracy = [(2, 16, 32)], 1, True
    print(machine(args.threads), "\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if not args.skip_accuracy:
            print_accuracy(workdir, args.batch)
            print(flush=True)
        if not args.skip_speed:
            print_speed(sizes, workdir, args.threads, args.repeats)
    print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
