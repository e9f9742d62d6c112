"""Checkpoints that survive ``kill -9`` and never unpickle.

A checkpoint is two files in the run directory:

- ``checkpoint-<step>.safetensors``: every tensor (model parameters under ``model/``, optimiser
  state tensors under ``optim/<param index>/<name>``);
- ``checkpoint.json``: the step, the optimiser's non-tensor state, the RNG states (torch, numpy,
  python and the data generator's, as JSON-safe lists), free-form ``extra`` data, and the name of
  the tensors file it belongs to.

Writing order makes every moment safe: the tensors go to a temporary file that is
``os.replace``-d into place, then the JSON likewise, then older tensor files are deleted. A kill
before the JSON's replace leaves the previous JSON pointing at the previous, still present tensors
file; a kill after it leaves the new pair. Loading reads JSON with :mod:`json` and tensors with
:func:`safetensors.torch.load_file`, so a checkpoint cannot run code (no ``torch.load``).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

POINTER = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, truncated or not what :func:`save` writes."""


@dataclass
class Checkpoint:
    """What :func:`load` returns: the step, the model tensors, the optimiser state (ready for
    ``optimizer.load_state_dict``), the RNG states and the caller's ``extra`` dict."""

    step: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    extra: dict[str, Any]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace the file ``path`` with ``text`` at once: a reader, or a run killed midway, sees the
    old file or the new one, never a part."""
    _atomic_write(Path(path), lambda p: p.write_text(text))


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """torch, numpy, python and ``generator`` RNG states as JSON-safe lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "generator": generator.get_state().tolist(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimiser state_dict -> (tensors keyed ``optim/<index>/<name>``, JSON-safe rest)."""
    tensors, plain = {}, {}
    for index, entries in state["state"].items():
        plain[str(index)] = {}
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain[str(index)][key] = value
    return tensors, {"state": plain, "param_groups": state["param_groups"]}


def _join_optimizer(tensors: dict[str, Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` into ``directory`` (see the module docstring); returns
    the path of ``checkpoint.json``."""
    directory = Path(directory)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_plain = _split_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensor_file = f"checkpoint-{step:09d}.safetensors"
    _atomic_write(directory / tensor_file, lambda p: save_file(tensors, str(p)))
    meta = {
        "step": step,
        "tensors": tensor_file,
        "optimizer": optim_plain,
        "rng": rng_state(generator),
        "extra": extra or {},
    }
    pointer = directory / POINTER
    atomic_write_text(pointer, json.dumps(meta))
    # Older tensor files, and temporary files left by a write that was killed, are garbage now.
    _remove_tensor_files(directory, keep=tensor_file)
    return pointer


def _remove_tensor_files(directory: Path, keep: str | None = None) -> None:
    """Delete the tensors files and the temporary files of killed writes in ``directory``, all
    but the one named ``keep``."""
    for old in [*directory.glob("checkpoint-*.safetensors"), *directory.glob("checkpoint*.tmp")]:
        if old.name != keep:
            old.unlink(missing_ok=True)


def model_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model's state dict from a checkpoint's tensors file (its ``model/`` entries)."""
    return {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}


def exists(directory: str | Path) -> bool:
    return (Path(directory) / POINTER).is_file()


def saved_step(directory: str | Path) -> int | None:
    """The step of the checkpoint in ``directory`` as its JSON names it (None if unreadable)."""
    try:
        return int(_pointer(directory)["step"])
    except (OSError, ValueError, TypeError, KeyError, OverflowError):
        return None


def saved_extra(directory: str | Path) -> dict[str, Any] | None:
    """The ``extra`` dict of the checkpoint in ``directory``, read from its JSON alone (None if
    unreadable): what a resumed run reads its settings from before loading any tensor."""
    try:
        extra = _pointer(directory)["extra"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return extra if isinstance(extra, dict) else None


def _pointer(directory: str | Path) -> Any:
    return json.loads((Path(directory) / POINTER).read_text())


def clear(directory: str | Path) -> None:
    """Delete the checkpoint files in ``directory`` (a run starting afresh there: a checkpoint of
    the run it replaces must not be resumed with the new run's config)."""
    directory = Path(directory)
    (directory / POINTER).unlink(missing_ok=True)
    _remove_tensor_files(directory)


def load(directory: str | Path) -> Checkpoint:
    """Read the last complete checkpoint in ``directory`` (tensors on the CPU); raises
    :class:`CheckpointError` saying what is wrong when the files are missing or damaged."""
    directory = Path(directory)
    pointer = directory / POINTER
    try:
        meta = json.loads(pointer.read_text())
        if not isinstance(meta, dict):
            raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
        tensor_path = directory / str(meta["tensors"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"cannot read {pointer}: {_reason(e)}") from e
    try:
        tensors = load_file(str(tensor_path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read {tensor_path} (named by {pointer}): {_reason(e)}") from e
    model = model_tensors(tensors)
    optim = {k: v for k, v in tensors.items() if k.startswith("optim/")}
    try:
        return Checkpoint(
            step=int(meta["step"]),
            model=model,
            optimizer=_join_optimizer(optim, meta["optimizer"]),
            rng=dict(meta["rng"]),
            extra=dict(meta["extra"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{pointer} is not a checkpoint gatedrnn wrote: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    """An exception as a short clause: a missing key says so, others their type and message."""
    if isinstance(error, KeyError):
        return f"it has no {error.args[0]!r} entry"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    return f"{type(error).__name__}: {error}"
