"""Long-lag experiments: seeded batch generators with their own loss and success criterion.

Every task follows the protocol in :mod:`gatedrnn.tasks.base`. Task classes register themselves
with the :func:`register` decorator; every module of this package is imported the first time the
registry is read, so a new task family is one new file here and nothing else.

    >>> from gatedrnn.tasks import make_task
    >>> task = make_task("adding", seq_len=100)
    >>> batch = task.sample(32, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from .base import (
    Batch,
    LastStepClassification,
    LastStepRegression,
    Task,
    check_number,
    check_positive,
    last_step,
    one_hot,
    step_mask,
)

_REGISTRY: dict[str, type[Task]] = {}
_discovered = False


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` available as ``--task cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(
            f"task name {cls.name!r} is registered twice: {_REGISTRY[cls.name].__qualname__} and {cls.__qualname__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def task_names() -> list[str]:
    """Registered task names, sorted."""
    _discover()
    return sorted(_REGISTRY)


def task_class(name: str) -> type[Task]:
    """The class registered under ``name``; ValueError listing the known names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(task_names())}")
    return _REGISTRY[name]


def task_options(name: str) -> dict[str, object]:
    """The keyword arguments a task takes, with their defaults (``seq_len`` included)."""
    signature = inspect.signature(task_class(name).__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name != "self" and p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def make_task(name: str, seq_len: int | None = None, **options: object) -> Task:
    """Build task ``name``; ``seq_len=None`` keeps the task's published default length."""
    cls = task_class(name)
    known = task_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"task {name!r} has no option {', '.join(unknown)}; its options are {', '.join(sorted(known))}"
        )
    if seq_len is not None:
        options["seq_len"] = seq_len
    return cls(**options)


__all__ = [
    "Batch",
    "Task",
    "LastStepRegression",
    "LastStepClassification",
    "check_number",
    "check_positive",
    "last_step",
    "one_hot",
    "step_mask",
    "register",
    "task_names",
    "task_class",
    "task_options",
    "make_task",
]
