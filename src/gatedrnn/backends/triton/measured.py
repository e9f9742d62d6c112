"""What GPU runs measured: on which device the kernels passed the GPU tests, and where they beat
cuDNN. ``backend="auto"`` consults this on CUDA, so that it picks the kernels only where a
measurement says they win.

The table is ``measured.json`` beside this module, written by ``benchmarks/gpu.py --auto-table``
from one benchmark run (``benchmarks/gpu_check.sh`` does it, and marks the device verified only
when every GPU test passed)::

    {"devices": [{"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "verified": true,
                  "triton": "3.6.0", "torch": "2.11.0", "source": "...",
                  "cases": [{"cell": "lstm", "dtype": "bf16", "B": 16, "H": 1024,
                             "fwd": 3.1, "train": 4.2}, ...]}]}

``fwd`` and ``train`` are speed-ups over cuDNN (its time over the kernels' time) without and with
the backward pass; a case where the kernels failed is recorded with speed-ups 0, so that no
neighbouring measurement can choose them there. The rule (:func:`beats_cudnn`): on a device of that name, for
a cell and dtype
that was measured, take the measured point nearest in batch and hidden size (at most a factor of 2
away in each, ties to the lower speed-up) and pick the kernels when its speed-up is at least
:data:`MARGIN`. Anywhere else (another GPU, a size far from any measurement, a configuration
cuDNN does not run) nothing is claimed and cuDNN stays.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...cells.family import CellFamily
from .. import compute_dtype

TABLE_PATH = Path(__file__).with_name("measured.json")
#: the kernels replace cuDNN only where they measured at least this much faster, so that noise in
#: one run cannot make the default slower than torch.nn
MARGIN = 1.05
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Point:
    """One measured size: speed-ups over cuDNN, forward only and forward + backward."""

    cell: str
    dtype: str
    B: int
    H: int
    fwd: float
    train: float


@dataclass(frozen=True)
class DeviceRecord:
    name: str
    verified: bool
    points: tuple[Point, ...]


def cell_key(cfg: CellFamily) -> str | None:
    """The benchmark's name for a configuration cuDNN also runs: torch's mode in lower case
    (:attr:`CellFamily.torch_mode`: ``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``); None
    for the others (the variants, layer norm, and a projection: h narrower than H)."""
    if cfg.torch_mode is None or cfg.output_size != cfg.hidden_size:
        return None
    return cfg.torch_mode.lower()


def parse(table: dict, source: str) -> dict[str, DeviceRecord]:
    """Device name -> record, from the JSON object of :data:`TABLE_PATH`; a malformed table raises
    ValueError naming ``source`` and what was expected."""
    try:
        records = {}
        for d in table["devices"]:
            points = tuple(
                Point(str(p["cell"]), str(p["dtype"]), int(p["B"]), int(p["H"]), float(p["fwd"]), float(p["train"]))
                for p in d["cases"]
            )
            records[str(d["name"])] = DeviceRecord(str(d["name"]), bool(d["verified"]), points)
        return records
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{source}: expected {{'devices': [{{'name', 'verified', 'cases': [{{'cell', 'dtype', "
            f"'B', 'H', 'fwd', 'train'}}]}}]}}, got a table without {exc}"
        ) from exc


@functools.cache
def load(path: str = str(TABLE_PATH)) -> dict[str, DeviceRecord]:
    """The records of ``path`` (cached; empty when the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return {}
    return parse(json.loads(p.read_text()), str(p))


def record_for(device: torch.device) -> DeviceRecord | None:
    """The record of the CUDA device ``device`` by its name, None where it was never measured."""
    records = load() if device.type == "cuda" else None
    # an empty table (the shipped one) answers without asking the driver: auto asks on every call
    return records.get(torch.cuda.get_device_name(device)) if records else None


def verified_on(device: torch.device) -> bool:
    """Whether the GPU tests passed on a device of this name (so the kernels need no opt-in)."""
    record = record_for(device)
    return record is not None and record.verified


def speedup(point: Point, training: bool) -> float:
    return point.train if training else point.fwd


def nearest(points: tuple[Point, ...], cell: str, dtype: str, B: int, H: int, training: bool) -> Point | None:
    """The point of ``cell`` and ``dtype`` nearest to (B, H) on a log2 scale, at most one octave
    away in each of B and H; of equally near ones the lowest speed-up for the pass in question
    (the cautious reading)."""

    def distance(p: Point) -> float:
        return max(abs(math.log2(p.B) - math.log2(B)), abs(math.log2(p.H) - math.log2(H)))

    near = [p for p in points if p.cell == cell and p.dtype == dtype and distance(p) <= 1.0]
    if not near:
        return None
    best = min(distance(p) for p in near)
    return min((p for p in near if distance(p) == best), key=lambda p: speedup(p, training))


def beats_cudnn(cfg: CellFamily, x: Tensor, training: bool) -> bool:
    """Whether a measurement on this device says the kernels run ``cfg`` on ``x`` (T, B, I) at
    least :data:`MARGIN` times faster than cuDNN, forward + backward when ``training``; in the dtype
    both run in (autocast's where it is on)."""
    record, cell, dtype = record_for(x.device), cell_key(cfg), _DTYPES.get(compute_dtype(x))
    if record is None or not record.verified or cell is None or dtype is None:
        return False
    point = nearest(record.points, cell, dtype, max(int(x.shape[1]), 1), cfg.hidden_size, training)
    return point is not None and speedup(point, training) >= MARGIN
