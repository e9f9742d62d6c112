"""Loading character-level models: a run directory of ``gatedrnn train --task charlm``, or the
small exported form shipped in ``gatedrnn/pretrained/``.

The exported form is two files with one stem: ``<stem>.safetensors`` (the model's state dict,
nothing else: no optimiser moments, so a third of a checkpoint's size) and ``<stem>.json``
(``{"train": TrainConfig, "task": task.describe(), "result": {...}, "command": "..."}``), the run's
``config.json`` plus how it was made. :func:`export_char_model` writes it from a run directory::

    python -m gatedrnn.viz.loading RUN_DIR src/gatedrnn/pretrained/lstm

Everything is read with :mod:`json` and :mod:`safetensors` (nothing is unpickled). Any problem
(missing file, corrupt file, a model of another task) raises :class:`UsageError` with one line
saying what was expected and what was found.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import checkpoint
from ..models import ModelConfig, SequenceModel
from ..tasks.charlm import bits_per_char
from .charmodel import CharModel

CELLS = ("rnn", "lstm", "gru")
"""Cells of the shipped models, in the order the figures show them."""

SHIPPED_DIR = "pretrained"
"""The package directory of the shipped models (not ``models/``: that name is the module
:mod:`gatedrnn.models`)."""


class UsageError(ValueError):
    """Bad input from the command line: printed as one ``error:`` line, never a traceback."""


def shipped_path(cell: str) -> Path:
    """Where the model shipped for ``cell`` lives (``gatedrnn/pretrained/<cell>.safetensors``)."""
    if cell not in CELLS:
        raise UsageError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    return Path(str(resources.files("gatedrnn") / SHIPPED_DIR / f"{cell}.safetensors"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"model config {str(path)!r} not found (it belongs beside the weights)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"model config {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("train"), dict) or not isinstance(meta.get("task"), dict):
        raise UsageError(f"model config {str(path)!r} lacks the 'train' and 'task' sections gatedrnn train writes")
    return meta


def _read_files(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, model tensors) of a run directory, its checkpoint.json or checkpoint tensors file
    (``checkpoint-<step>.safetensors``, read with the run's config.json), or an exported
    .safetensors."""
    if not path.exists():
        raise UsageError(f"model {str(path)!r} not found: expected a .safetensors file with its .json beside it, "
                         "or the run directory of `gatedrnn train --task charlm`")
    try:
        if path.is_dir() or path.name == checkpoint.POINTER:
            run = path if path.is_dir() else path.parent
            if not checkpoint.exists(run):
                raise UsageError(f"{str(run)!r} has no {checkpoint.POINTER}: not a finished `gatedrnn train` run")
            return _read_json(run / "config.json"), checkpoint.load(run).model
        if path.suffix != ".safetensors":
            raise UsageError(f"model {str(path)!r}: expected a .safetensors file or a run directory")
        if _is_checkpoint_tensors(path):
            return _read_json(path.parent / "config.json"), checkpoint.model_tensors(load_file(str(path)))
        return _read_json(path.with_suffix(".json")), load_file(str(path))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, checkpoint.CheckpointError) as e:
        raise UsageError(f"cannot read model {str(path)!r}: {e}") from None


def _is_checkpoint_tensors(path: Path) -> bool:
    """Whether ``path`` is a run's checkpoint tensors file (no exported .json beside it, the run's
    config.json in its directory)."""
    return (path.name.startswith("checkpoint-") and not path.with_suffix(".json").exists()
            and (path.parent / "config.json").is_file())


def char_model_from(meta: dict[str, Any], tensors: dict[str, torch.Tensor], name: str | None = None) -> CharModel:
    """Rebuild the :class:`SequenceModel` a charlm run trained and wrap it as a :class:`CharModel`."""
    train, task = meta["train"], meta["task"]
    if task.get("name") != "charlm" or "vocab" not in task:
        raise UsageError(f"the model was trained on task {task.get('name')!r}; the gate viewer and sampler need a "
                         "character-level model (`gatedrnn train --task charlm`)")
    try:
        config = ModelConfig(cell=train["cell"], input_size=task["input_size"], output_size=task["output_size"],
                             hidden_size=train["hidden"], num_layers=train["layers"], variant=train["variant"],
                             forget_bias=train["forget_bias"], vocab_size=task["vocab_size"],
                             embedding_dim=train["embedding_dim"])
        model = SequenceModel(config)
        model.load_state_dict(tensors)
        return CharModel.from_module(model.eval(), task["vocab"], name)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"the weights do not match their config: {first}") from None


def load_char_model(path: str | Path) -> CharModel:
    """A :class:`CharModel` from a run directory, its ``checkpoint.json`` or an exported
    ``.safetensors`` (see the module docstring)."""
    return char_model_from(*_read_files(Path(path)))


def load_shipped(cell: str) -> CharModel:
    """The char-level model shipped with gatedrnn for ``cell`` (``rnn``, ``lstm`` or ``gru``)."""
    path = shipped_path(cell)
    if not path.exists():
        raise UsageError(f"the shipped {cell} model is missing ({path}); reinstall gatedrnn or pass --model PATH")
    return load_char_model(path)


def export_char_model(run: str | Path, stem: str | Path, result: dict[str, Any], command: str) -> Path:
    """Write ``<stem>.safetensors`` (model tensors only) and ``<stem>.json`` from a finished
    charlm run directory; ``result`` and ``command`` record how it was made. Returns the
    .safetensors path."""
    meta, tensors = _read_files(Path(run))
    char_model_from(meta, tensors)  # refuse to export what could not be loaded back
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(stem.with_suffix(".safetensors")))
    # safetensors writes owner-only files; shipped files must be readable by every user
    stem.with_suffix(".safetensors").chmod(0o644)
    stem.with_suffix(".json").write_text(json.dumps({**meta, "result": result, "command": command}, indent=2) + "\n")
    return stem.with_suffix(".safetensors")


def main(argv: list[str]) -> int:
    """``python -m gatedrnn.viz.loading RUN_DIR STEM [COMMAND]``: export a run, recording its
    validation bits per character (from summary.json) and the command that trained it."""
    if len(argv) not in (2, 3):
        print("usage: python -m gatedrnn.viz.loading RUN_DIR STEM ['TRAIN COMMAND']", file=sys.stderr)
        return 2
    run = Path(argv[0])
    try:
        summary = json.loads((run / "summary.json").read_text())
        result = {"valid_bpc": round(bits_per_char(summary["final_loss"]), 4), "steps": summary["steps"],
                  "sequences": summary["sequences"], "seconds": summary["seconds"]}
        path = export_char_model(run, argv[1], result, argv[2] if len(argv) == 3 else "")
    except (UsageError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.with_suffix('.json')}: validation {result['valid_bpc']} bits per character")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
