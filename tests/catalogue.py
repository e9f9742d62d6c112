"""The shared catalogue of layer configurations that drives every backend's equivalence tests.

Every registered family contributes its :meth:`~gatedrnn.CellFamily.configurations` (for the LSTM every
variant with and without layer norm, and the projection; both GRU forms; both RNN nonlinearities), so a
family is covered by registering it before the tests are collected. Each backend's tests take the
configurations it runs: :func:`configurations` filters by the family's kernels.
"""

from __future__ import annotations

import pytest

from gatedrnn.cells import family_class, registered_families

LAYER_SHAPES = {
    "1": dict(num_layers=1, bidirectional=False),
    "2-bi": dict(num_layers=2, bidirectional=True),
}
"""Layer shapes: one layer one way, and a stacked bidirectional one."""


def _label(name: str, options: dict) -> str:
    return "-".join([name] + [f"{k}={v}" for k, v in options.items()])


def family_configurations(backend: str | None = None, hidden_size: int = 5) -> list[tuple[str, dict]]:
    """(family name, options) for every registered family's configurations; with ``backend``, only those
    the family names a kernel of that backend for (``"reference"`` and ``"generic"`` run all)."""
    cases = []
    for name in registered_families():
        cls = family_class(name)
        for options in cls.configurations():
            cfg = cls(hidden_size, **options)
            if backend in (None, "reference", "generic") or cfg.kernel(backend) is not None:
                cases.append((name, options))
    return cases


def configurations(backend: str | None = None, hidden_size: int = 5) -> list:
    """:func:`family_configurations` as ``pytest.param``s with readable ids."""
    return [
        pytest.param(name, options, id=_label(name, options))
        for name, options in family_configurations(backend, hidden_size)
    ]


def layer_shapes() -> list:
    """:data:`LAYER_SHAPES` as ``pytest.param``s."""
    return [pytest.param(shape, id=label) for label, shape in LAYER_SHAPES.items()]
