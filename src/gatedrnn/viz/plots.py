"""Static figures: ``gates.png`` (gate heatmaps over unit x character) and ``memory_span.png``
(influence heatmaps, a triangle or a band, and influence-vs-distance curves of several cells side
by side).

Both are drawn with matplotlib's Agg backend, so they need no display.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .page import GateRecord, activity_quantity, value_range  # noqa: E402
from .span import BEYOND, THRESHOLD, SpanResult  # noqa: E402


def informative_units(layer: Mapping[str, np.ndarray], k: int, output: str = "h") -> np.ndarray:
    """The k units whose ``output`` (the hidden state h, or :func:`~gatedrnn.viz.page.activity_quantity`'s
    stand-in where h is not recorded) varies most over the text (its std, (T, H) -> (k,)), most
    varying first: the units that react to the text rather than sit at a constant."""
    std = np.asarray(layer[output]).std(axis=0)
    return np.argsort(-std, kind="stable")[:k]


MAX_CHAR_TICKS = 200
"""Longest text whose heatmaps label every character; longer ones label word starts (a tick per
character of a 2000-character text is unreadable and took a minute to draw)."""

VISIBLE = {"\n": "\u21b5", " ": "\u2423", "\t": "\u21e5"}
"""Tick labels for characters that would otherwise be blank."""


@functools.cache
def _has_glyph(char: str) -> bool:
    """Whether the monospace font draws ``char`` (else matplotlib warns and draws a box)."""
    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties(family="monospace")))
    return char.isprintable() and font.get_char_index(ord(char)) != 0


def _tick_label(char: str) -> str:
    """``char`` as a tick label: a visible stand-in for blanks, U+FFFD (or ?) where the font lacks it."""
    return VISIBLE.get(char) or (char if _has_glyph(char) else "\ufffd" if _has_glyph("\ufffd") else "?")


def _word_starts(text: str, limit: int) -> list[int]:
    """Positions of the word starts of ``text``, every k-th so that at most ``limit`` remain."""
    starts = [i for i, c in enumerate(text) if not c.isspace() and (i == 0 or text[i - 1].isspace())]
    return starts[:: max(1, math.ceil(len(starts) / limit))]


def _word_label(text: str, i: int) -> str:
    """The word starting at ``i`` as a tick label (at most 12 characters, each drawable)."""
    return "".join(map(_tick_label, text[i:].split()[0][:12]))


def _char_ticks(ax, text: str) -> None:
    """Label the character axis: each character up to :data:`MAX_CHAR_TICKS`, else word starts,
    every k-th, at most MAX_CHAR_TICKS / 4 of them."""
    if len(text) <= MAX_CHAR_TICKS:
        ax.set_xticks(np.arange(len(text)))
        ax.set_xticklabels(
            [_tick_label(c) for c in text], fontsize=max(4, min(9, 900 // max(len(text), 1))), family="monospace"
        )
    else:
        starts = _word_starts(text, MAX_CHAR_TICKS // 4)
        ax.set_xticks(starts)
        ax.set_xticklabels([_word_label(text, i) for i in starts], fontsize=6, rotation=90, family="monospace")
    ax.tick_params(axis="x", length=0, pad=1)


def plot_gates(record: GateRecord, path: str | Path, units_per_layer: int = 16) -> Path:
    """Write ``gates.png``: one heatmap per (layer, quantity) of the most informative units.

    Rows are units (the ``units_per_layer`` with the largest std of h, or of its stand-in
    :func:`~gatedrnn.viz.page.activity_quantity`, labelled by index), columns
    the characters of the text, one panel per recorded name (the family's trace names); gates in
    [0, 1] use a sequential map on [0, 1], the rest a diverging map (on [-1, 1] for the candidates
    g, n, else +-max|value| of the shown units; see :func:`gatedrnn.viz.page.value_range`).
    """
    names, output = record.names, activity_quantity(record.cell_config, record.names)
    ranges = {n: value_range(n, [each[n] for each in record.layers]) for n in names}
    rows = [(k, n) for k in range(len(record.layers)) for n in names]
    T = len(record.text)
    width = min(max(8.0, 0.13 * T + 2.5), 40.0)
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(width, 1.0 + 0.16 * units_per_layer * len(rows) + 0.35 * len(rows)), squeeze=False
    )
    for ax, (k, name) in zip(axes[:, 0], rows):
        layer = record.layers[k]
        units = informative_units(layer, units_per_layer, output)
        values = np.asarray(layer[name])[:, units].T  # (units, T)
        bounds = ranges[name]
        if bounds is not None and bounds[0] == 0.0:
            im = ax.imshow(values, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            m = 1.0 if bounds is not None else max(float(np.abs(values).max()), 1e-12)
            im = ax.imshow(values, aspect="auto", cmap="RdBu", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_yticks(np.arange(len(units)))
        ax.set_yticklabels([str(u) for u in units], fontsize=5)
        ax.set_ylabel(f"layer {k}\n{name}", rotation=0, ha="right", va="center", fontsize=9)
        _char_ticks(ax, record.text)
        for t in record.unknown:
            ax.axvline(t, color="red", lw=0.8, ls="--")
        fig.colorbar(im, ax=ax, fraction=0.015, pad=0.005)
    axes[0, 0].set_title(
        f"{record.title or record.cell_config.title()}: gate values of the {units_per_layer} most active "
        f"units (rows, by std of {output}) per character (columns)"
        + ("; red dashes: characters outside the vocabulary" if len(record.unknown) else ""),
        fontsize=10,
        loc="left",
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


MAX_WORD_TICKS = 30
"""Most word labels on one axis of a memory-span heatmap (a panel is about 5 inches wide): every
word up to that, else every k-th word."""


def _word_ticks(ax, text: str, axis: str) -> None:
    """Tick word starts with the word, at most :data:`MAX_WORD_TICKS` of them (the character axes
    of the heatmaps)."""
    starts = _word_starts(text, MAX_WORD_TICKS)
    labels = [_word_label(text, i) for i in starts]
    if axis == "x":
        ax.set_xticks(starts)
        ax.set_xticklabels(labels, rotation=90, fontsize=6, family="monospace")
    else:
        ax.set_yticks(starts)
        ax.set_yticklabels(labels, fontsize=6, family="monospace")


def _relative_image(ax, rel: np.ndarray, **imshow):
    """Relative influences (NaN where undefined) on the heatmaps' log scale, 1e-4 to 1."""
    return ax.imshow(np.clip(rel, 1e-4, 1.0), norm=LogNorm(vmin=1e-4, vmax=1.0), cmap="magma", **imshow)


def _triangle(ax, r: SpanResult, marks: Sequence[tuple[str, slice, int]]):
    """J[t, s] / max J as a lower triangle (rows t = state, columns s = input), every distance."""
    T = len(r.text)
    J = r.triangle()
    rel = np.where(np.tril(np.ones((T, T), dtype=bool)), J / max(J.max(), 1e-30), np.nan)
    im = _relative_image(ax, rel, interpolation="nearest")
    ax.set_xlabel("input position s")
    ax.set_ylabel("state position t")
    _word_ticks(ax, r.text, "x")
    _word_ticks(ax, r.text, "y")
    for label, s, t in marks:
        ax.add_patch(plt.Rectangle((s.start - 0.5, t - 0.5), s.stop - s.start, 1.0, fill=False, ec="cyan", lw=1.5))
        ax.annotate(
            f"{label}: {r.relative(t, s):.1e}",
            (s.start, t),
            xytext=(s.start + 8, t - 12),
            color="cyan",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "color": "cyan"},
        )
    return im


def _band(ax, r: SpanResult, marks: Sequence[tuple[str, slice, int]]):
    """band[t, d] / max as an image over (state position t, distance d < W), d = 0 at the bottom;
    the corner d > t (no input that far back) left blank."""
    T, W = r.band.shape
    t, d = np.arange(T)[None, :], np.arange(W)[:, None]
    rel = np.where(d <= t, r.band.T / max(r.band.max(), 1e-30), np.nan)  # (W, T): rows d
    # antialiased: a long text has more positions than the panel has pixels
    im = _relative_image(ax, rel, interpolation="antialiased", origin="lower", aspect="auto")
    ax.set_xlabel("state position t")
    ax.set_ylabel(f"distance d = t - s (window: d < {W})")
    _word_ticks(ax, r.text, "x")
    for label, s, t in marks:
        near, far = t - (s.stop - 1), t - s.start
        rel_value = r.relative(t, s)
        if rel_value is None:
            ax.annotate(
                f"{label} (d = {near}..{far}): {BEYOND}",
                (t, W - 1),
                xytext=(0.02, 0.92),
                textcoords="axes fraction",
                color="cyan",
                fontsize=8,
                arrowprops={"arrowstyle": "->", "color": "cyan"},
            )
            continue
        ax.add_patch(plt.Rectangle((t - 0.5, near - 0.5), 1.0, far - near + 1, fill=False, ec="cyan", lw=1.5))
        ax.annotate(
            f"{label}: {rel_value:.1e}",
            (t, far),
            xytext=(0.02, 0.92),
            textcoords="axes fraction",
            color="cyan",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "color": "cyan"},
        )
    return im


def _span_words(r: SpanResult) -> str:
    """The curve's legend words for its span: "below 1% from d = 17", or "still above 1% at d = 49
    (the window)" when the curve never falls below it at the distances measured."""
    if r.span is not None:
        return f"below 1% from d = {r.span}"
    return f"still above 1% at d = {r.window - 1}" + (" (the window)" if r.windowed else "")


HEATMAPS_PER_ROW = 3
"""Most memory-span heatmaps side by side; the six shipped models take two rows."""


def plot_memory_span(
    results: Sequence[SpanResult], path: str | Path, marks: Sequence[tuple[str, slice, int]] = ()
) -> Path:
    """Write ``memory_span.png``: per model a heatmap of the relative influence on its hidden state
    h (log scale; at most :data:`HEATMAPS_PER_ROW` in a row) and, below, the influence-vs-distance
    curves of every result (each normalised by its peak; a cell state c dashed, in its h's colour)
    with the 1% line.

    The heatmap is J[t, s] / max J as a triangle (rows t = state, columns s = input) when every
    distance was measured (text no longer than the window), else the band J[t, t - d] / max over
    (x: state position t, y: distance d < W), which stays readable at any length.

    ``marks``: (label, input positions, state position) pairs to highlight, e.g. ("John" at
    0..3, the state at the end of "hours"): a box on each heatmap (or "beyond the window") and a
    vertical line at their distance on the curves.
    """
    hidden = [r for r in results if r.quantity == "h"]
    columns = min(len(hidden), HEATMAPS_PER_ROW)
    rows = math.ceil(len(hidden) / columns)
    # one model: room for the labels
    fig = plt.figure(figsize=(max(5.0 * columns + 1.0, 8.0), 5.3 * rows + 4.2), layout="constrained")
    grid = fig.add_gridspec(rows + 1, columns, height_ratios=[1.25] * rows + [1.0])
    heat_axes = []
    for j, r in enumerate(hidden):
        ax = fig.add_subplot(grid[j // columns, j % columns])
        heat_axes.append(ax)
        im = (_band if r.windowed else _triangle)(ax, r, marks)
        ax.set_title(f"{r.label}: ||dh_t/dx_s|| / max", fontsize=10)
    fig.colorbar(im, ax=heat_axes, location="right", shrink=0.8, label="relative influence")
    ax = fig.add_subplot(grid[rows, :])
    colours = {}
    for r in results:
        c = r.curve / max(r.curve.max(), 1e-30)
        what = f"||d{r.quantity}_t/dx_s||"
        model = r.label.removesuffix(f" {r.quantity}")
        (line,) = ax.semilogy(
            np.arange(len(c)),
            np.maximum(c, 1e-12),
            lw=1.8,
            color=colours.get(model),
            ls="-" if r.quantity == "h" else "--",
            label=f"{r.label}: {what} ({_span_words(r)})",
        )
        colours.setdefault(model, line.get_color())
    ax.axhline(THRESHOLD, color="gray", ls="--", lw=1)
    ax.text(0.5, THRESHOLD * 1.15, f"{THRESHOLD:.0%} of peak", color="gray", fontsize=8)
    window = max(r.window for r in results)
    for label, s, t in marks:
        d = t - s.start
        if d < window:
            ax.axvline(d, color="teal", ls=":", lw=1.2)
            ax.text(d + 0.5, 0.5, f"{label} (d = {d})", color="teal", fontsize=8, rotation=90, va="top")
        else:
            ax.text(
                0.99,
                0.5,
                f"{label} (d = {d}): {BEYOND}",
                color="teal",
                fontsize=8,
                ha="right",
                va="top",
                transform=ax.transAxes,
            )
    ax.set_ylim(1e-8, 1.5)
    ax.set_xlabel(
        "distance d = t - s (characters)" + (f"; measured for d < {window}" if any(r.windowed for r in results) else "")
    )
    ax.set_ylabel("mean_t influence of x_{t-d} on the state at t / peak")
    ax.set_title("influence of an input on the state d characters later", fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
