"""Loading character-level models: a run directory of ``gatedrnn train --task charlm``, or the
small exported form shipped in ``gatedrnn/pretrained/``.

The exported form is two files with one stem: ``<stem>.safetensors`` (the model's state dict,
nothing else: no optimiser moments, so a third of a checkpoint's size) and ``<stem>.json``
(``{"train": TrainConfig, "task": task.describe(), "result": {...}, "command": "..."}``), the run's
``config.json`` plus how it was made. :func:`export_char_model` writes it from a run directory::

    python -m gatedrnn.viz.loading RUN_DIR src/gatedrnn/pretrained/lstm

Everything is read with :mod:`json` and :mod:`safetensors` (nothing is unpickled). Any problem
(missing file, corrupt file, a model of another task) raises :class:`gatedrnn.errors.UsageError`
with one line saying what was expected and what was found.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import USAGE_EXIT_CODE, UsageError, print_error
from ..saved import SavedModelError, rebuild, shorten
from ..saved import read as read_saved
from ..tasks.charlm import bits_per_char
from .charmodel import CharModel

SHIPPED = ("rnn", "lstm", "gru", "slstm", "mingru", "minlstm")
"""The cell families of the models shipped in :data:`SHIPPED_DIR` (their files' stems), in the
order the figures and tables show them. A model of any other family is loaded from its run
(``--model``)."""

SHIPPED_DIR = "pretrained"
"""The package directory of the shipped models (not ``models/``: that name is the module
:mod:`gatedrnn.models`)."""


def shipped_path(cell: str) -> Path:
    """Where the model shipped for ``cell`` lives (``gatedrnn/pretrained/<cell>.safetensors``)."""
    if cell not in SHIPPED:
        raise UsageError(
            f"cell must be one of {', '.join(SHIPPED)}, got {cell!r} (the shipped models; a model "
            "of another family: --model PATH)"
        )
    return Path(str(resources.files("gatedrnn") / SHIPPED_DIR / f"{cell}.safetensors"))


def _read_files(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, model tensors) saved at ``path``, any form :func:`gatedrnn.saved.read` takes."""
    try:
        saved = read_saved(path, what="the run directory of `gatedrnn train --task charlm`")
    except SavedModelError as e:
        raise UsageError(str(e)) from None
    return saved.meta, saved.tensors


def char_model_from(meta: dict[str, Any], tensors: dict[str, torch.Tensor], name: str | None = None) -> CharModel:
    """Rebuild the :class:`SequenceModel` a charlm run trained and wrap it as a :class:`CharModel`."""
    task = meta["task"]
    if task.get("name") != "charlm":
        raise UsageError(
            f"the model was trained on task {task.get('name')!r}; the gate viewer and sampler need a "
            "character-level model (`gatedrnn train --task charlm`)"
        )
    vocab = _vocab(task.get("vocab"))
    try:
        return CharModel.from_module(rebuild(meta, tensors), vocab, name)
    except SavedModelError as e:
        raise UsageError(str(e)) from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"the weights do not match their config: {e}") from None


def _vocab(vocab: object) -> str:
    """The model config's ``task.vocab`` (the characters of ids 1..V-1) as a string: it must be a
    non-empty string, or list of one-character strings, without repeats."""
    expected = "the model's characters (a non-empty string or list of characters)"
    if vocab is None:
        raise UsageError(
            f"the model config has no task.vocab: expected {expected}, as `gatedrnn train --task charlm` records it"
        )
    chars = list(vocab) if isinstance(vocab, (str, list)) else []
    if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise UsageError(
            f"the model config's task.vocab must be {expected}, got {type(vocab).__name__} {shorten(repr(vocab), 40)}"
        )
    repeated = sorted(c for c, n in Counter(chars).items() if n > 1)
    if repeated:
        raise UsageError(f"the model config's task.vocab repeats the character(s) {' '.join(map(repr, repeated))}")
    return "".join(chars)


def load_char_model(path: str | Path) -> CharModel:
    """A :class:`CharModel` from a run directory, its ``checkpoint.json`` or an exported
    ``.safetensors`` (see the module docstring)."""
    return char_model_from(*_read_files(Path(path)))


def load_shipped(cell: str) -> CharModel:
    """The char-level model shipped with gatedrnn for ``cell`` (one of :data:`SHIPPED`)."""
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
        return USAGE_EXIT_CODE
    run = Path(argv[0])
    try:
        summary = json.loads((run / "summary.json").read_text())
        result = {
            "valid_bpc": round(bits_per_char(summary["final_loss"]), 4),
            "steps": summary["steps"],
            "sequences": summary["sequences"],
            "seconds": summary["seconds"],
        }
        path = export_char_model(run, argv[1], result, argv[2] if len(argv) == 3 else "")
    except (UsageError, OSError, KeyError, json.JSONDecodeError) as e:
        return print_error(str(e))
    print(f"wrote {path} and {path.with_suffix('.json')}: validation {result['valid_bpc']} bits per character")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
