"""Memory span: how strongly the state at step t still depends on the input at an earlier step s.

For a recurrent map from inputs x_1..x_T (each a D-vector, here a character's embedding) to hidden
states h_1..h_T (each H units), the influence of input s on state t is the Jacobian norm

.. math::
    J_{t,s} = \\left\\lVert \\frac{\\partial h_t}{\\partial x_s} \\right\\rVert_F, \\qquad
    J_{t,s,k} = \\left\\lVert \\frac{\\partial h_{t,k}}{\\partial x_s} \\right\\rVert_2,

zero for s > t (causality). It is computed exactly with forward-mode autograd: one
Jacobian-vector product per input coordinate (T D of them, batched with ``torch.func.vmap``),
each a run of the model, so the model must be one whose forward is plain differentiable torch
code (gatedrnn's ``backend="reference"``).

The influence curve is the mean over t of J_{t, t-d} against the distance d; the memory span is
the distance from which on the curve stays below 1% of its peak. For one unit k the same is done
with J_{t,s,k}; its mean influence distance sum_d d c_k(d) / sum_d c_k(d) orders units in the
page.

Shapes: T steps, D input features, H units.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

THRESHOLD = 0.01
"""Fraction of the peak influence below which an input counts as forgotten."""


def influence(fn: Callable[[Tensor], Tensor], x: Tensor, positions_per_chunk: int = 16,
              resume: Callable[[int], Callable[[Tensor], Tensor]] | None = None,
              progress: str | None = None) -> np.ndarray:
    """Per-unit influence J[t, s, k] = ||d fn(x)[t, k] / d x[s]||_2 as a (T, T, H) array.

    Args:
        fn: maps x (T, D) to the states (T, H); must support ``torch.func.jvp`` and ``vmap``.
        x: the inputs (T, D), e.g. character embeddings.
        positions_per_chunk: input positions whose D tangents are pushed through at once (memory
            is about positions_per_chunk * D * T * H numbers).
        resume: optional; ``resume(s0)`` is a function of the inputs x[s0:] (T - s0, D) giving the
            states (T - s0, H) of steps s0..T-1, continuing from the state ``fn`` reaches after
            x[:s0]. A chunk of positions starting at s0 then runs only steps s0..T-1 (the tangents
            of earlier steps are zero), about half the work in all.
        progress: a label for a progress bar on stderr (tqdm, shown only on a terminal), or None.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (T, D) with T >= 1, got {tuple(x.shape)}")
    T, D = x.shape
    x = x.detach()
    with torch.no_grad():
        out = x.new_zeros(T, T, fn(x).shape[-1])  # (t, s, k)
        starts = range(0, T, positions_per_chunk)
        if progress:
            starts = tqdm(starts, desc=progress, unit="chunk", leave=False, disable=not sys.stderr.isatty())
        for s0 in starts:
            C = min(positions_per_chunk, T - s0)
            run, xs = (fn, x) if resume is None else (resume(s0), x[s0:])
            eye = torch.eye(C * D, dtype=x.dtype, device=x.device).view(C * D, C, D)
            tangents = torch.cat([eye.new_zeros(C * D, s0 - T + len(xs), D), eye,
                                  eye.new_zeros(C * D, T - s0 - C, D)], dim=1)  # (C*D, len(xs), D)
            tangent_out = torch.func.vmap(lambda v: torch.func.jvp(run, (xs,), (v,))[1])(tangents)
            norms = tangent_out.unflatten(0, (C, D)).pow(2).sum(1).sqrt()  # (C, len(xs), H): [s, t, k]
            out[T - len(xs):, s0:s0 + C] = norms.transpose(0, 1)
    return out.cpu().numpy()


def total_influence(per_unit: np.ndarray) -> np.ndarray:
    """J[t, s] = ||d h_t / d x_s||_F from the per-unit norms (T, T, H): a (T, T) array."""
    return np.sqrt((per_unit ** 2).sum(-1))


def distance_curve(J: np.ndarray) -> np.ndarray:
    """c[d] = mean over t >= d of J[t, t - d] for d = 0..T-1; J is (T, T) or (T, T, H)."""
    T = J.shape[0]
    return np.stack([np.diagonal(J, offset=-d, axis1=0, axis2=1).mean(-1) for d in range(T)])


def span_below(curve: np.ndarray, threshold: float = THRESHOLD) -> int | None:
    """Smallest distance from which on ``curve`` (along axis 0) stays below threshold * its peak.

    None when the curve is still above it at the largest measured distance (the span is longer
    than the text). For a (T, H) curve, returns per column (an array, -1 for None).
    """
    above = curve >= threshold * curve.max(axis=0)
    last = curve.shape[0] - 1 - np.argmax(above[::-1], axis=0)  # last distance still above
    span = np.where(last == curve.shape[0] - 1, -1, last + 1)
    if curve.ndim == 1:
        return None if span == -1 else int(span)
    return span


def mean_distance(curve: np.ndarray) -> np.ndarray:
    """Influence-weighted mean distance sum_d d c[d] / sum_d c[d] (per column for 2-d curves)."""
    d = np.arange(curve.shape[0]).reshape((-1,) + (1,) * (curve.ndim - 1))
    return (d * curve).sum(0) / np.maximum(curve.sum(0), 1e-30)


@dataclass
class SpanResult:
    """Memory-span measurements of one model on one text.

    Attributes:
        label: the model's name in tables and figures (e.g. ``"LSTM"``, ``"LSTM c"``).
        text: the input, length T.
        J: (T, T) total influence ||d h_t / d x_s||_F (rows t, columns s); of the cell state
            c_t instead of h_t when ``quantity`` is ``"c"``.
        curve: (T,) mean influence at each distance.
        span: distance below 1% of the peak from then on, None if beyond the text.
        unit_mean_distance: (H,) each unit's influence-weighted mean distance.
        unit_span: (H,) each unit's 1% span, -1 where beyond the text.
        quantity: the state measured, ``"h"`` or (LSTM) ``"c"``.
    """

    label: str
    text: str
    J: np.ndarray
    curve: np.ndarray
    span: int | None
    unit_mean_distance: np.ndarray
    unit_span: np.ndarray
    quantity: str = "h"

    def relative(self, t: int, s: int | slice) -> float:
        """Influence of input(s) s on state t relative to the largest influence on state t."""
        row = self.J[t, : t + 1]
        return float(np.max(self.J[t, s]) / max(row.max(), 1e-30))


def measure_span(label: str, text: str, per_unit: np.ndarray, quantity: str = "h") -> SpanResult:
    """Summarise the per-unit influence (T, T, H) on one state (``quantity``) of a model on ``text``."""
    J = total_influence(per_unit)
    curve = distance_curve(J)
    unit_curves = distance_curve(per_unit)  # (T, H)
    return SpanResult(label, text, J, curve, span_below(curve), mean_distance(unit_curves),
                      span_below(unit_curves), quantity)


def word_positions(text: str, word: str, occurrence: int = 0) -> slice:
    """Character positions of the ``occurrence``-th appearance of ``word`` in ``text``."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.find(word, start + 1)
        if start < 0:
            raise ValueError(f"{word!r} does not occur {occurrence + 1} time(s) in the text")
    return slice(start, start + len(word))


def _whole_word(word: str) -> str:
    """A pattern for ``word`` not inside a longer word (lookarounds rather than ``\\b``, which
    never matches beside a word's own punctuation: "C++", "U.S.")."""
    return rf"(?<!\w){re.escape(word)}(?!\w)"


def probe_positions(text: str, early: str, late: str) -> tuple[slice, int] | None:
    """(positions of the first whole word ``early``, position of the last character of the first
    whole word ``late`` after it), or None when the text lacks them in that order: a state never
    depends on a later input, so in "hours ... John" there is nothing to measure."""
    first = re.search(_whole_word(early), text)
    second = first and re.compile(_whole_word(late)).search(text, first.end())
    return (slice(first.start(), first.end()), second.end() - 1) if second else None


def summary_lines(results: list[SpanResult], probe: tuple[str, str] | None = None) -> list[str]:
    """The printed table: per model the 1% span, the mean distance and, if ``probe = (early,
    late)`` words occur in that order (:func:`probe_positions`), the influence of the early word on
    the state at the late word's last character, relative to that state's strongest input."""
    T = len(results[0].text)
    found = probe and probe_positions(results[0].text, *probe)
    head = f"{'state':<8} {'span<1% (chars)':>16} {'mean distance':>14}"
    if found:
        early, late = probe
        head += f" {early + ' -> ' + late + ' (rel.)':>22}"
    lines = [f"memory span on a {T}-character text: distance from which ||dh_t/dx_s|| (LSTM c: ||dc_t/dx_s||) "
             f"stays below {THRESHOLD:.0%} of its peak", head]
    for r in results:
        span = f"> {T - 1}" if r.span is None else str(r.span)
        line = f"{r.label:<8} {span:>16} {mean_distance(r.curve):>14.1f}"
        if found:
            line += f" {r.relative(found[1], found[0]):>22.2e}"
        lines.append(line)
    return lines
