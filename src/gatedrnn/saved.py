"""Trained models on disk: read one back, whichever of its three forms it was saved in.

- a run directory of ``gatedrnn train`` (or its ``checkpoint.json``): the run's ``config.json``
  and the model tensors of its last checkpoint;
- one of a run's ``checkpoint-<step>.safetensors`` files, read with the run's ``config.json``;
- an exported pair ``<stem>.safetensors`` (the model's state dict only) + ``<stem>.json`` (the
  run's config plus how it was made), as :func:`gatedrnn.viz.loading.export_char_model` writes
  and ``gatedrnn/pretrained/`` ships.

The config (``meta``) is ``{"train": TrainConfig fields, "task": task.describe(), "family":
where the cell family came from, ...}``; from it :func:`rebuild` makes the
:class:`~gatedrnn.models.SequenceModel` the tensors belong to, first importing the module of a
user's family that is not registered (:func:`gatedrnn.models.require_family`). Every file is read
with :mod:`json` and :mod:`safetensors` (nothing is unpickled); any problem raises
:class:`SavedModelError` with one line saying what was expected and what was found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from . import checkpoint
from .models import FamilyNotFoundError, ModelConfig, SequenceModel, require_family


class SavedModelError(ValueError):
    """A saved model that cannot be read or rebuilt (missing, damaged, or not what gatedrnn writes)."""


@dataclass
class SavedModel:
    """What :func:`read` returns.

    Attributes:
        meta: ``{"train": {...}, "task": {...}, "family": {...}}`` (no ``"family"`` in runs saved before
            families were recorded) and, for an exported pair, ``"result"`` and ``"command"``.
        tensors: the model's state dict (CPU tensors).
        step: the optimiser step the weights are from (None when the files do not say).
        source: the path it was read from.
    """

    meta: dict[str, Any]
    tensors: dict[str, Tensor]
    step: int | None
    source: Path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise SavedModelError(f"model config {str(path)!r} not found (it belongs beside the weights)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SavedModelError(f"model config {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("train"), dict) or not isinstance(meta.get("task"), dict):
        raise SavedModelError(f"model config {str(path)!r} lacks the 'train' and 'task' sections gatedrnn train writes")
    return meta


def read(path: str | Path, what: str = "the run directory of `gatedrnn train`") -> SavedModel:
    """The config and model tensors saved at ``path`` (see the module docstring for the forms);
    ``what`` names the run directory a caller expects, for the error when ``path`` is missing."""
    path = Path(path)
    if not path.exists():
        raise SavedModelError(
            f"model {str(path)!r} not found: expected a .safetensors file with its .json beside it, or {what}"
        )
    try:
        if path.is_dir() or path.name == checkpoint.POINTER:
            run = path if path.is_dir() else path.parent
            if not checkpoint.exists(run):
                raise SavedModelError(f"{str(run)!r} has no {checkpoint.POINTER}: not a finished `gatedrnn train` run")
            saved = checkpoint.load(run)
            return SavedModel(_read_json(run / "config.json"), saved.model, saved.step, path)
        if path.suffix != ".safetensors":
            raise SavedModelError(f"model {str(path)!r}: expected a .safetensors file or a run directory")
        if _is_checkpoint_tensors(path):
            step = path.stem.removeprefix("checkpoint-")
            return SavedModel(
                _read_json(path.parent / "config.json"),
                checkpoint.model_tensors(load_file(str(path))),
                int(step) if step.isdigit() else None,
                path,
            )
        meta = _read_json(path.with_suffix(".json"))
        result = meta.get("result")
        step = result.get("steps") if isinstance(result, dict) else None
        return SavedModel(meta, load_file(str(path)), step if isinstance(step, int) else None, path)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, checkpoint.CheckpointError) as e:
        raise SavedModelError(f"cannot read model {str(path)!r}: {e}") from None


def _is_checkpoint_tensors(path: Path) -> bool:
    """Whether ``path`` is a run's checkpoint tensors file (no exported .json beside it, the run's
    config.json in its directory)."""
    return (
        path.name.startswith("checkpoint-")
        and not path.with_suffix(".json").exists()
        and (path.parent / "config.json").is_file()
    )


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (the cut marked "...") for an error line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(error: Exception, limit: int = 600) -> str:
    """``error``'s message on one line, its lines joined (load_state_dict names the missing and
    unexpected keys and the mismatched shapes on the lines after its first), cut at ``limit``
    characters."""
    return shorten(
        " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__, limit
    )


def rebuild(meta: dict[str, Any], tensors: dict[str, Tensor]) -> SequenceModel:
    """The :class:`SequenceModel` ``meta`` describes, holding ``tensors``, in eval mode.

    Only the structure comes from the config (cell, variant, family options, sizes, embedding); the
    initial gate biases it was trained from do not matter, the tensors replace them. A cell family
    that is not registered is imported from where ``meta["family"]`` says it came from."""
    train, task = meta["train"], meta["task"]
    if isinstance(train.get("cell"), str):
        try:
            require_family(train["cell"], meta.get("family"))
        except FamilyNotFoundError as e:
            raise SavedModelError(str(e)) from None
    try:
        config = ModelConfig(
            cell=train["cell"],
            input_size=task["input_size"],
            output_size=task["output_size"],
            hidden_size=train["hidden"],
            num_layers=train["layers"],
            variant=train["variant"],
            vocab_size=task["vocab_size"],
            embedding_dim=train["embedding_dim"],
            family_options=dict(train.get("family_options") or {}),
        )
        model = SequenceModel(config)
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise SavedModelError(f"the weights do not match their config: {_one_line(e)}") from None
    return model.eval()
