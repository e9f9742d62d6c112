"""Static figures: ``gates.png`` (gate heatmaps over unit x character) and ``memory_span.png``
(influence triangles and influence-vs-distance curves of several cells side by side).

Both are drawn with matplotlib's Agg backend, so they need no display.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .page import BOUNDED, GateRecord  # noqa: E402
from .span import THRESHOLD, SpanResult  # noqa: E402


def informative_units(layer: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    """The k units whose hidden state varies most over the text (std of h, (T, H) -> (k,)),
    most varying first: the units that react to the text rather than sit at a constant."""
    std = np.asarray(layer["h"]).std(axis=0)
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


def _char_ticks(ax, text: str) -> None:
    """Label the character axis: each character up to :data:`MAX_CHAR_TICKS`, else word starts,
    every k-th, at most MAX_CHAR_TICKS / 4 of them."""
    if len(text) <= MAX_CHAR_TICKS:
        ax.set_xticks(np.arange(len(text)))
        ax.set_xticklabels([_tick_label(c) for c in text], fontsize=max(4, min(9, 900 // max(len(text), 1))),
                           family="monospace")
    else:
        starts = [i for i, c in enumerate(text) if not c.isspace() and (i == 0 or text[i - 1].isspace())]
        step = math.ceil(len(starts) / (MAX_CHAR_TICKS // 4))
        starts = starts[::step]
        ax.set_xticks(starts)
        ax.set_xticklabels(["".join(map(_tick_label, text[i:].split()[0][:12])) for i in starts], fontsize=6,
                           rotation=90, family="monospace")
    ax.tick_params(axis="x", length=0, pad=1)


def plot_gates(record: GateRecord, path: str | Path, units_per_layer: int = 16) -> Path:
    """Write ``gates.png``: one heatmap per (layer, quantity) of the most informative units.

    Rows are units (the ``units_per_layer`` with the largest std of h, labelled by index), columns
    the characters of the text; sigmoid gates use a sequential map on [0, 1], the rest a diverging
    map (g, n on [-1, 1]; h, c on +-max|value| of the shown units).
    """
    names = [n for n in record.layers[0] if n in BOUNDED or n in ("c", "h")]
    rows = [(k, n) for k in range(len(record.layers)) for n in names]
    T = len(record.text)
    width = min(max(8.0, 0.13 * T + 2.5), 40.0)
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, 1.0 + 0.16 * units_per_layer * len(rows) + 0.35 * len(rows)),
                             squeeze=False)
    for ax, (k, name) in zip(axes[:, 0], rows):
        layer = record.layers[k]
        units = informative_units(layer, units_per_layer)
        values = np.asarray(layer[name])[:, units].T  # (units, T)
        if name in BOUNDED and BOUNDED[name][0] == 0.0:
            im = ax.imshow(values, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            m = 1.0 if name in BOUNDED else max(float(np.abs(values).max()), 1e-12)
            im = ax.imshow(values, aspect="auto", cmap="RdBu", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_yticks(np.arange(len(units)))
        ax.set_yticklabels([str(u) for u in units], fontsize=5)
        ax.set_ylabel(f"layer {k}\n{name}", rotation=0, ha="right", va="center", fontsize=9)
        _char_ticks(ax, record.text)
        for t in record.unknown:
            ax.axvline(t, color="red", lw=0.8, ls="--")
        fig.colorbar(im, ax=ax, fraction=0.015, pad=0.005)
    axes[0, 0].set_title(f"{record.title or record.cell.upper()}: gate values of the {units_per_layer} most active "
                         f"units (rows, by std of h) per character (columns)"
                         + ("; red dashes: characters outside the vocabulary" if len(record.unknown) else ""),
                         fontsize=10, loc="left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _word_ticks(ax, text: str, axis: str) -> None:
    """Tick each word start with the word (the character axes of a triangle heatmap)."""
    starts = [i for i, c in enumerate(text) if c not in " \n" and (i == 0 or text[i - 1] in " \n")]
    labels = [text[i:].split()[0] for i in starts]
    if axis == "x":
        ax.set_xticks(starts)
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
    else:
        ax.set_yticks(starts)
        ax.set_yticklabels(labels, fontsize=6)


def plot_memory_span(results: Sequence[SpanResult], path: str | Path,
                     marks: Sequence[tuple[str, slice, int]] = ()) -> Path:
    """Write ``memory_span.png``: per model a triangle heatmap of J[t, s] / max J for its hidden
    state h (log scale, rows t = state, columns s = input) and, below, the influence-vs-distance
    curves of every result (each normalised by its peak; an LSTM's cell state c dashed, in its h's
    colour) with the 1% line.

    ``marks``: (label, input positions, state position) pairs to highlight, e.g. ("John" at
    0..3, the state at the end of "hours"): a box on each triangle and a vertical line at their
    distance on the curves.
    """
    hidden = [r for r in results if r.quantity == "h"]
    n = len(hidden)
    fig = plt.figure(figsize=(max(5.0 * n + 1.0, 8.0), 9.5), layout="constrained")  # one model: room for the labels
    grid = fig.add_gridspec(2, n, height_ratios=[1.25, 1.0])
    heat_axes = []
    norm = LogNorm(vmin=1e-4, vmax=1.0)
    for j, r in enumerate(hidden):
        ax = fig.add_subplot(grid[0, j])
        heat_axes.append(ax)
        T = len(r.text)
        rel = np.where(np.tril(np.ones((T, T), dtype=bool)), r.J / max(r.J.max(), 1e-30), np.nan)
        im = ax.imshow(np.clip(rel, 1e-4, 1.0), norm=norm, cmap="magma", interpolation="nearest")
        ax.set_title(f"{r.label}: ||dh_t/dx_s|| / max", fontsize=10)
        ax.set_xlabel("input position s")
        ax.set_ylabel("state position t")
        _word_ticks(ax, r.text, "x")
        _word_ticks(ax, r.text, "y")
        for label, s, t in marks:
            ax.add_patch(plt.Rectangle((s.start - 0.5, t - 0.5), s.stop - s.start, 1.0, fill=False, ec="cyan", lw=1.5))
            ax.annotate(f"{label}: {r.relative(t, s):.1e}", (s.start, t), xytext=(s.start + 8, t - 12),
                        color="cyan", fontsize=8, arrowprops={"arrowstyle": "->", "color": "cyan"})
    fig.colorbar(im, ax=heat_axes, location="right", shrink=0.8, label="relative influence")
    ax = fig.add_subplot(grid[1, :])
    colours = {}
    for r in results:
        c = r.curve / max(r.curve.max(), 1e-30)
        span = f"{r.span}" if r.span is not None else f"> {len(r.text) - 1}"
        what = "||dc_t/dx_s||" if r.quantity == "c" else "||dh_t/dx_s||"
        model = r.label.removesuffix(f" {r.quantity}")
        line, = ax.semilogy(np.arange(len(c)), np.maximum(c, 1e-12), lw=1.8, color=colours.get(model),
                            ls="--" if r.quantity == "c" else "-",
                            label=f"{r.label}: {what} (below 1% from d = {span})")
        colours.setdefault(model, line.get_color())
    ax.axhline(THRESHOLD, color="gray", ls="--", lw=1)
    ax.text(0.5, THRESHOLD * 1.15, f"{THRESHOLD:.0%} of peak", color="gray", fontsize=8)
    for label, s, t in marks:
        ax.axvline(t - s.start, color="teal", ls=":", lw=1.2)
        ax.text(t - s.start + 0.5, 0.5, f"{label} (d = {t - s.start})", color="teal", fontsize=8, rotation=90, va="top")
    ax.set_ylim(1e-8, 1.5)
    ax.set_xlabel("distance d = t - s (characters)")
    ax.set_ylabel("mean_t influence of x_{t-d} on the state at t / peak")
    ax.set_title("influence of an input on the state d characters later", fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
