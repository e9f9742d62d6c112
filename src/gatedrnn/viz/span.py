"""Memory span: how strongly the state at step t still depends on the input at an earlier step s.

For a recurrent map from inputs x_1..x_T (each a D-vector, here a character's embedding) to states
z_1..z_T (S numbers: every layer's carried states, e.g. h, and c for an LSTM; h, c, n, m for an
sLSTM), the influence of input s on unit k of a
state at t is

.. math::
    J_{t,s,k} = \\left\\lVert \\frac{\\partial z_{t,k}}{\\partial x_s} \\right\\rVert_2, \\qquad
    J_{t,s} = \\left\\lVert \\frac{\\partial h_t}{\\partial x_s} \\right\\rVert_F
            = \\Big(\\sum_{k \\in h} J_{t,s,k}^2\\Big)^{1/2},

zero for s > t (causality). It is computed exactly, in the inputs' dtype (float64 for the viewer),
from the chain rule through the one-step map z_t = F(x_t, z_{t-1}):

.. math::
    G_{t,t} = B_t = \\frac{\\partial F}{\\partial x}(x_t, z_{t-1}) \\in R^{S \\times D}, \\qquad
    G_{t,s} = A_t G_{t-1,s}, \\quad A_t = \\frac{\\partial F}{\\partial z}(x_t, z_{t-1}) \\in R^{S \\times S},

where G_{t,s} = dz_t / dx_s. A_t and B_t come from ``torch.func.jacrev`` of F at the states of one
forward pass, batched over blocks of steps with ``vmap``; then one pass over t keeps the G_{t,t-d}
of the distances d = t - s < W (the window) and advances them all with one matrix product per
step. Distances of W and more are not measured. Cost: T min(T, W) D S^2 multiply-adds; memory:
the window's tangents W D S, a block of Jacobians, and the aggregates below; no (T, T, S) array.

What is kept (the band and the per-unit sums; :class:`Influence`):

- ``band[t, d] = J_{t, t-d}`` for a group of rows (e.g. the top layer's h), (T, W);
- ``unit_sum[d, k] = sum_t J_{t, t-d, k}``, (W, K), so that the per-unit influence curve is
  ``unit_sum[d] / (T - d)`` (T - d states have an input d steps back).

The influence curve is the mean over t of J_{t, t-d} against the distance d; the memory span is
the distance from which on the curve stays below 1% of its peak. For one unit k the same is done
with J_{t,s,k}; its mean influence distance sum_d d c_k(d) / sum_d c_k(d) orders units in the
page. With a window shorter than the text, these cover distances d < W.

Shapes: T steps, D input features, S state numbers (K of them in one group), W window.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

THRESHOLD = 0.01
"""Fraction of the peak influence below which an input counts as forgotten."""

WINDOW = 256
"""Default window W: influence is measured for distances d = t - s < W characters. The shipped
models' spans are 7 to 75 characters (docs/gates.md), far inside it."""

JACOBIAN_BLOCK_NUMBERS = 2**20
"""Numbers in one block of per-step Jacobians (A_t, B_t) computed at once (8 MB in float64; 14 steps
of the shipped LSTM). Larger blocks were no faster and their intermediates grow with them."""


@dataclass
class Influence:
    """The aggregates of J[t, s, k] over the band of distances d = t - s < W (module docstring).

    Attributes:
        steps: T.
        band: group -> (T, W) array, ``band[t, d]`` = the Frobenius norm of d z_t[group] / d x_{t-d}
            (zero for d > t), for the groups asked for as ``totals``.
        unit_sum: group -> (W, K) array, ``unit_sum[d, k]`` = sum over t of J[t, t-d, k].
    """

    steps: int
    band: dict[Hashable, np.ndarray]
    unit_sum: dict[Hashable, np.ndarray]

    def unit_curve(self, group: Hashable) -> np.ndarray:
        """(W, K): mean over t of J[t, t-d, k], each distance divided by its own count T - d."""
        return per_distance_mean(self.unit_sum[group], self.steps)


def states(step: Callable[[Tensor, Tensor], Tensor], x: Tensor, z0: Tensor) -> Tensor:
    """z_0..z_T (T + 1, S) of z_t = step(x_t, z_{t-1}) from z_0 = ``z0``, x (T, D)."""
    zs = [z0]
    for x_t in x:
        zs.append(step(x_t, zs[-1]))
    return torch.stack(zs)


def step_jacobians(step: Callable[[Tensor, Tensor], Tensor], x: Tensor, zs: Tensor) -> tuple[Tensor, Tensor]:
    """B_t = d step / d x (n, S, D) and A_t = d step / d z (n, S, S) at (x_t, z_{t-1}) for the n
    rows of x (n, D) and the states before them zs (n, S).

    Reverse mode (S vector-Jacobian products per step, batched by ``vmap``): for the shipped LSTM,
    ``jacfwd`` under ``vmap`` took about 3 times as long at its best block size, with 700 MB more of
    intermediates."""
    return torch.func.vmap(torch.func.jacrev(step, argnums=(0, 1)))(x, zs)


def influence(
    step: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    z0: Tensor,
    groups: Mapping[Hashable, slice],
    window: int = WINDOW,
    totals: Iterable[Hashable] | None = None,
    progress: str | None = None,
) -> Influence:
    """The band and per-unit sums of J[t, s, k] = ||d z_t[k] / d x_s||_2 for t - s < ``window``.

    Args:
        step: the one-step map z_t = step(x_t, z_{t-1}), (D,), (S,) -> (S,); plain torch code that
            ``torch.func.jacrev`` and ``vmap`` can differentiate.
        x: the inputs (T, D), e.g. character embeddings.
        z0: the state before x_1, (S,).
        groups: name -> the slice of state rows measured together (e.g. one layer's h).
        window: W >= 1; distances 0..W-1 are measured (every distance when W >= T).
        totals: the groups whose band is kept (default every group).
        progress: a label for a progress bar on stderr (tqdm, shown only on a terminal), or None.

    Returns:
        An :class:`Influence` with W' = min(W, T) distances.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (T, D) with T >= 1, got {tuple(x.shape)}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be an integer >= 1 (distances 0..window-1 are measured), got {window!r}")
    T, D = x.shape
    W = min(window, T)
    totals = set(groups) if totals is None else set(totals)
    x = x.detach()
    with torch.no_grad():
        zs = states(step, x, z0.detach())  # (T + 1, S)
        S = zs.shape[1]
        band = {g: x.new_zeros(T, W) for g in groups if g in totals}
        unit_sum = {g: x.new_zeros(W, rows.stop - rows.start) for g, rows in groups.items()}
        # rows (d, j): d z_t / d x_{t-d}[j], d = 0..W-1, for the current t; and the next step's
        tangents, advanced = x.new_zeros(W * D, S), x.new_zeros(W * D, S)
        block = int(np.clip(JACOBIAN_BLOCK_NUMBERS // (S * (S + D)), 1, T))
        bar = tqdm(total=T, desc=progress, unit="char", leave=False, disable=not (progress and sys.stderr.isatty()))
        for t0 in range(0, T, block):
            t1 = min(t0 + block, T)
            B, A = step_jacobians(step, x[t0:t1], zs[t0:t1])
            for i in range(len(A)):
                t = t0 + i
                kept = min(t, W - 1)  # earlier inputs still inside the window after this step
                torch.matmul(tangents[: kept * D], A[i].T, out=advanced[D : (kept + 1) * D])
                advanced[:D] = B[i].T
                tangents, advanced = advanced, tangents
                n = kept + 1
                norms = torch.linalg.vector_norm(tangents[: n * D].view(n, D, S), dim=1)  # (n, S): J[t, t-d, k]
                for g, rows in groups.items():
                    unit_sum[g][:n] += norms[:, rows]
                    if g in band:
                        band[g][t, :n] = torch.linalg.vector_norm(norms[:, rows], dim=1)
            bar.update(len(A))
        bar.close()
    return Influence(
        T, {g: b.cpu().numpy() for g, b in band.items()}, {g: u.cpu().numpy() for g, u in unit_sum.items()}
    )


def total_influence(per_unit: np.ndarray) -> np.ndarray:
    """J = ||d h_t / d x_s||_F from the per-unit norms over the last axis: (T, T, H) -> (T, T), or
    a band (T, W, H) -> (T, W)."""
    return np.sqrt((per_unit**2).sum(-1))


def to_band(J: np.ndarray, window: int | None = None) -> np.ndarray:
    """(T, T, ...) indexed [t, s] -> (T, W', ...) indexed [t, d] with d = t - s < W' = min(window, T)
    (zero for d > t); ``window=None`` keeps every distance."""
    T = J.shape[0]
    W = T if window is None else min(window, T)
    t, d = np.arange(T)[:, None], np.arange(W)[None, :]
    inside = (t >= d).reshape((T, W) + (1,) * (J.ndim - 2))
    return np.where(inside, J[t, np.maximum(t - d, 0)], 0.0)


def per_distance_mean(sums: np.ndarray, steps: int) -> np.ndarray:
    """sums[d] / (T - d) for sums over t of something at distance d, (W, ...): the T - d states
    t >= d are the ones with an input d steps back."""
    W = sums.shape[0]
    return sums / (steps - np.arange(W)).reshape((W,) + (1,) * (sums.ndim - 1))


def band_curve(band: np.ndarray) -> np.ndarray:
    """c[d] = mean over the T - d states t >= d of band[t, d]; band (T, W, ...) -> (W, ...)."""
    return per_distance_mean(band.sum(0), band.shape[0])


def distance_curve(J: np.ndarray, window: int | None = None) -> np.ndarray:
    """c[d] = mean over t >= d of J[t, t - d] for d < min(window, T); J is (T, T) or (T, T, H)."""
    return band_curve(to_band(J, window))


def span_below(curve: np.ndarray, threshold: float = THRESHOLD) -> int | None:
    """Smallest distance from which on ``curve`` (along axis 0) stays below threshold * its peak.

    None when the curve is still above it at the largest measured distance (the span is longer
    than the text, or than the window). For a (W, H) curve, returns per column (an array, -1 for
    None).
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
    """Memory-span measurements of one model on one text, for distances below the window.

    Attributes:
        label: the model's name in tables and figures (e.g. ``"LSTM"``, ``"LSTM c"``).
        text: the input, length T.
        band: (T, W) total influence, ``band[t, d]`` = ||d h_t / d x_{t-d}||_F (zero for d > t), W =
            min(window, T) distances; of the cell state c_t instead of h_t when ``quantity`` is ``"c"``.
        curve: (W,) mean influence at each distance.
        span: distance below 1% of the peak from then on, None if beyond the largest measured
            distance W - 1 (beyond the text, or beyond the window when it is shorter).
        unit_mean_distance: (H,) each unit's influence-weighted mean distance (over d < W).
        unit_span: (H,) each unit's 1% span, -1 where beyond W - 1.
        quantity: the state measured, ``"h"`` or (LSTM) ``"c"``.
    """

    label: str
    text: str
    band: np.ndarray
    curve: np.ndarray
    span: int | None
    unit_mean_distance: np.ndarray
    unit_span: np.ndarray
    quantity: str = "h"

    @property
    def window(self) -> int:
        """W: the number of distances measured (0..W-1)."""
        return self.band.shape[1]

    @property
    def windowed(self) -> bool:
        """True when the window is shorter than the text: distances W..T-1 were not measured."""
        return self.window < len(self.text)

    def span_text(self) -> str:
        """The span as printed: a number, "> T-1" beyond the text, "> W-1 (window)" beyond the window."""
        if self.span is not None:
            return str(self.span)
        return f"> {self.window - 1}" + (" (window)" if self.windowed else "")

    def triangle(self) -> np.ndarray:
        """J[t, s] (T, T), rows t, columns s (zero for s > t); only when every distance was measured."""
        if self.windowed:
            raise ValueError(
                f"the triangle J[t, s] needs every distance: the window has {self.window} of {len(self.text)}"
            )
        T = len(self.text)
        t, s = np.arange(T)[:, None], np.arange(T)[None, :]
        return np.where(s <= t, self.band[t, np.maximum(t - s, 0)], 0.0)

    def relative(self, t: int, s: int | slice) -> float | None:
        """Influence of input(s) s on state t relative to the largest measured influence on state t
        (its inputs at distances < W); 0 for inputs after t. None when an input of s lies W or more
        steps before t: beyond the window, not measured."""
        d = t - np.atleast_1d(np.arange(len(self.text))[s])
        if np.any(d >= self.window):
            return None
        row = self.band[t, : min(t + 1, self.window)]
        values = self.band[t, d[d >= 0]]
        return float((values.max() if len(values) else 0.0) / max(row.max(), 1e-30))


def span_result(label: str, text: str, band: np.ndarray, unit_sum: np.ndarray, quantity: str = "h") -> SpanResult:
    """Summarise the band (T, W) and per-unit sums (W, H) of one state (``quantity``) of a model on
    ``text`` (as :func:`influence` returns them)."""
    curve, unit_curves = band_curve(band), per_distance_mean(unit_sum, len(text))
    return SpanResult(
        label, text, band, curve, span_below(curve), mean_distance(unit_curves), span_below(unit_curves), quantity
    )


def measure_span(
    label: str, text: str, per_unit: np.ndarray, quantity: str = "h", window: int | None = None
) -> SpanResult:
    """:func:`span_result` from a full per-unit influence (T, T, H) (small texts, tests), keeping
    the distances below ``window`` (default all)."""
    units = to_band(per_unit, window)  # (T, W, H)
    return span_result(label, text, total_influence(units), units.sum(0), quantity)


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


BEYOND = "beyond the window"
"""What the summary and the figure say for a probe whose distance was not measured."""


def summary_lines(results: list[SpanResult], probe: tuple[str, str] | None = None) -> list[str]:
    """The printed table: per model the 1% span, the mean distance and, if ``probe = (early,
    late)`` words occur in that order (:func:`probe_positions`), the influence of the early word on
    the state at the late word's last character, relative to that state's strongest input
    (:meth:`SpanResult.relative`; "beyond the window" when not measured)."""
    T = len(results[0].text)
    found = probe and probe_positions(results[0].text, *probe)
    head = f"{'state':<8} {'span<1% (chars)':>16} {'mean distance':>14}"
    if found:
        early, late = probe
        head += f" {early + ' -> ' + late + ' (rel.)':>22}"
    window = min(r.window for r in results)
    others = "".join(f" ({q}: ||d{q}_t/dx_s||)" for q in dict.fromkeys(r.quantity for r in results) if q != "h")
    lines = [
        f"memory span on a {T}-character text: distance from which ||dh_t/dx_s||{others} "
        f"stays below {THRESHOLD:.0%} of its peak"
        + (f"; distances 0..{window - 1} measured (--span-window {window})" if window < T else ""),
        head,
    ]
    for r in results:
        line = f"{r.label:<8} {r.span_text():>16} {mean_distance(r.curve):>14.1f}"
        if found:
            rel = r.relative(found[1], found[0])
            line += f" {BEYOND if rel is None else format(rel, '.2e'):>22}"
        lines.append(line)
    return lines
