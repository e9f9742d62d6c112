"""The viewer's command-line commands: ``gatedrnn gates``, ``gatedrnn sample`` and ``gatedrnn demo``.

Each command is a function of the parsed arguments that returns the exit code; bad input (empty
text, a missing or unreadable model, impossible options) is reported as one ``error:`` line on
stderr with exit code 2, never a traceback. :func:`add_subcommands` declares their arguments on
an ``argparse`` sub-parser set, so ``cli.py`` registers all three in one call.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from ..errors import UsageError, print_error
from .charmodel import check_sample_options
from .loading import SHIPPED, load_char_model, load_shipped
from .page import write_gates_html
from .plots import plot_gates, plot_memory_span
from .span import WINDOW, probe_positions, summary_lines

TUTORIAL = "John wanted to visit his friend's house, but he couldn't find the address. He spent hours searching for it."
"""The sentence the LSTM tutorial explains gates with."""

PROBE = ("John", "hours")
"""The tutorial's claim: has the state at "hours" lost "John"?"""

MAX_TEXT = 2000
"""Longest text the page accepts (the page stores every gate of every unit at every character)."""

MIN_SPAN_TEXT = 2
"""Shortest text the memory-span analysis runs on: one character has no distance to measure."""

SPAN_RATE = 1e10
"""Multiply-adds per second of the memory span's matrix products on one thread of a loaded
2-core CPU machine (the three shipped models on 2000 characters: 1.5e12 in 145 s)."""

SPAN_NOTE_SECONDS = 60
"""Expected analysis time (at :data:`SPAN_RATE`) above which ``gatedrnn gates`` prints an estimate."""


def set_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads. The commands default to 1: their matrix products are
    small, and on a loaded 2-core machine a second thread made the memory-span analysis 8x
    slower (79 s against 9.5 s), as ``gatedrnn train`` found for training steps."""
    if threads <= 0:
        raise UsageError(f"--threads must be a positive integer, got {threads}")
    torch.set_num_threads(threads)


def add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads (default 1: fastest for these small networks on a shared machine)",
    )


TEXT_ARGUMENTS = {
    "gates": ("the text", "`gatedrnn gates TEXT`", f'gatedrnn gates "{TUTORIAL[:30]}..."'),
    "sample": ("the prompt", "`gatedrnn sample --prompt`", 'gatedrnn sample --prompt "It is a truth"'),
}
"""Per command that reads user text: how the text is called, the option that takes it, an example."""


def _check_text(text: str, command: str) -> None:
    """UsageError unless ``text``, given to ``command`` (a key of :data:`TEXT_ARGUMENTS`), is
    non-blank, valid UTF-8 and at most :data:`MAX_TEXT` characters."""
    what, option, example = TEXT_ARGUMENTS[command]
    if not text or not text.strip():
        raise UsageError(f"{what} is empty: give the characters to run the model on, e.g. {example}")
    _check_utf8(text, what)
    if len(text) > MAX_TEXT:
        raise UsageError(f"{what} has {len(text)} characters; {option} takes at most {MAX_TEXT}")


def _check_utf8(text: str, what: str) -> None:
    """UsageError naming the first undecodable byte when ``text`` holds surrogates: Python's
    ``surrogateescape`` stand-ins for bytes of the command line (or a file) that are not UTF-8,
    which the page cannot store and matplotlib cannot draw."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        found = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"the lone surrogate U+{code:04X}"
        raise UsageError(
            f"{what} is not valid UTF-8: {found} at character {e.start} (counting from 0); give {what} in UTF-8"
        ) from None


def _model_from_args(args: argparse.Namespace):
    return load_char_model(args.model) if args.model else load_shipped(args.cell)


def _unknown_note(model, text: str, marked: bool = True) -> str | None:
    """The note naming the characters of ``text`` outside the model's vocabulary (None if none);
    ``marked``: say that the page and gates.png mark them (``gates``, not ``sample``)."""
    _, unknown = model.encode(text)
    if not unknown:
        return None
    chars = " ".join(sorted({repr(text[t]) for t in unknown}))
    return (
        f"note: {len(unknown)} character(s) outside {model.name}'s vocabulary ({chars}) are read as its "
        "unknown symbol" + (" and marked in the page and the figure" if marked else "")
    )


OUTPUTS = ("gates.html", "gates.png", "memory_span.png")
"""The files ``gatedrnn gates`` writes into ``--out``."""


def _prepare_out(out: Path) -> None:
    """Create ``out`` and check, before the analysis, that it is a writable directory in which
    none of :data:`OUTPUTS` is a directory: a UsageError naming the path otherwise (not after
    minutes of memory-span analysis)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file: expected a directory (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {str(out)!r}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into --out {str(out)!r}: permission denied")
    for name in OUTPUTS:
        if (out / name).is_dir():
            raise UsageError(f"{str(out / name)!r} is a directory: expected a file gatedrnn gates can replace")


def span_figure(results, text: str, out: Path, probe: tuple[str, str] = PROBE) -> tuple[Path, list[str]]:
    """Draw ``memory_span.png`` in ``out`` for the span results of several models on ``text`` and
    return its path and the printed summary; marks the distance from the word ``probe[0]`` to the
    word ``probe[1]`` (default the tutorial's "John" -> "hours") when both occur in that order."""
    found = probe_positions(text, *probe)
    marks = [(f"{probe[0]} -> {probe[1]}", *found)] if found else []
    return plot_memory_span(results, out / "memory_span.png", marks=marks), summary_lines(results, probe=probe)


def parse_probe(value: str) -> tuple[str, str]:
    """``--probe EARLY,LATE``: two words, the earlier one first (argparse type)."""
    words = tuple(w.strip() for w in value.split(","))
    if len(words) != 2 or not all(words) or any(c.isspace() for w in words for c in w):
        raise argparse.ArgumentTypeError(f"expected two words separated by a comma, e.g. John,hours, got {value!r}")
    return words


def read_text(args: argparse.Namespace) -> str:
    """The text of ``gatedrnn gates``: the TEXT argument or the file ``--file`` names (``-``: standard
    input), read as UTF-8 (a leading byte-order mark dropped) with undecodable bytes kept for
    :func:`_check_utf8` to name."""
    if (args.text is None) == (getattr(args, "file", None) is None):
        raise UsageError(
            "give the text either as TEXT or with --file PATH, not " + ("both" if args.text is not None else "neither")
        )
    if args.text is not None:
        return args.text
    if args.file == "-":
        if sys.stdin is None:
            raise UsageError("--file -: standard input is closed; give the text as TEXT or --file PATH")
        return sys.stdin.buffer.read().decode("utf-8-sig", errors="surrogateescape")
    try:
        return Path(args.file).read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise UsageError(f"cannot read --file {args.file!r}: {e.strerror or e}") from None


def _check_span_window(window: int) -> None:
    """UsageError unless ``--span-window`` is a positive number of characters."""
    if window < 1:
        raise UsageError(
            f"--span-window must be a positive number of characters (distances 0..N-1 are measured), got {window}"
        )


def _span_estimate(models, length: int, window: int) -> str | None:
    """A note with the expected time of the memory span on ``length`` characters when it exceeds
    :data:`SPAN_NOTE_SECONDS` at :data:`SPAN_RATE`, else None."""
    work = sum(m.span_work(length, window) for m in models)
    seconds = work / SPAN_RATE
    if seconds <= SPAN_NOTE_SECONDS:
        return None
    return (
        f"note: the memory span of {length} characters at distances below {min(window, length)} takes "
        f"{work:.1e} multiply-adds for {len(models)} model(s): about {seconds / 60:.0f} min on one thread of a "
        f"loaded 2-core machine (a shorter --span-window is faster)"
    )


ALL_CELLS = "all"
"""``--cell all``: a page and gates.png for each shipped model, in ``--out/<cell>/``."""


def _shown(args: argparse.Namespace) -> tuple[list, list]:
    """(the models whose memory span is measured, those that get a page): the --model alone, or
    every shipped model and the --cell one (all of them for ``--cell all``)."""
    if args.model:
        models = [load_char_model(args.model)]
        return models, models
    models = [load_shipped(c) for c in SHIPPED]
    return models, models if args.cell == ALL_CELLS else [models[SHIPPED.index(args.cell)]]


def _page_dirs(out: Path, shown: list) -> list[Path]:
    """Where each shown model's page and gates.png go: ``out`` for one model, ``out/<cell>`` for several."""
    return [out] if len(shown) == 1 else [out / m.cell for m in shown]


def run_gates(args: argparse.Namespace) -> int:
    """``gatedrnn gates TEXT | --file PATH [--model PATH [--family-module PATH_OR_MODULE] | --cell
    rnn|lstm|gru|slstm|mingru|minlstm|all] [--out DIR] [--probe EARLY,LATE] [--span-window N]``:
    write gates.html and gates.png for one model (for ``--cell all``, one of each per shipped model
    in ``--out/<cell>/``) and memory_span.png (the given model, or the six shipped ones side by
    side), print the memory-span summary and where the files are. A model of a user's cell family
    shows that family's gates and states. The family must be found: one of an installed module is
    imported from the module the run records; one defined in a file is not (a saved run names the
    file but never executes it): give that file with --family-module."""
    start = time.perf_counter()
    out, probe = Path(args.out), getattr(args, "probe", None)
    window = getattr(args, "span_window", WINDOW)
    try:
        set_threads(args.threads)
        _check_span_window(window)
        text = read_text(args)
        _check_text(text, "gates")
        models, shown = _shown(args)
        dirs = _page_dirs(out, shown)
        for where in [out, *dirs]:
            _prepare_out(where)
        records = [m.record(text) for m in shown]
        note = _unknown_note(shown[0], text)
        if note:
            print(note)
        figure = None
        if len(text) >= MIN_SPAN_TEXT:
            note = _span_estimate(models, len(text), window)
            if note:
                print(note, flush=True)
            spans = [m.span(text, window) for m in models]
            for model, record in zip(shown, records):
                record.unit_scores = {
                    f"memory span of {name} (mean influence distance, chars)": distances
                    for name, distances in reversed(spans[models.index(model)][1].items())
                }
            figure, lines = span_figure([r for results, _ in spans for r in results], text, out, probe or PROBE)
            print("\n".join(lines))
            if probe and not probe_positions(text, *probe):
                print(
                    f"note: --probe {','.join(probe)}: the text has no whole word {probe[0]!r} followed later by "
                    f"{probe[1]!r}, so no influence between them is reported"
                )
        else:
            stale = out / "memory_span.png"
            removed = stale.exists()
            if removed:  # an earlier text's figure must not sit beside this text's page
                stale.unlink()
            print(
                f"note: memory span skipped: the text has {len(text)} character(s), the analysis needs at least "
                f"{MIN_SPAN_TEXT}" + (f"; removed the earlier {stale}" if removed else "")
            )
        written = [
            (m, write_gates_html(r, where / "gates.html"), plot_gates(r, where / "gates.png"))
            for m, r, where in zip(shown, records, dirs)
        ]
    except UsageError as e:
        return print_error(str(e))
    except OSError as e:
        return print_error(f"cannot write {(e.filename or args.out)!r}: {e.strerror or e}")
    for model, page, png in written:
        print(
            f"wrote {page} ({model.name}: {len(text)} characters, {model.rnn.num_layers} layer(s) x "
            f"{model.rnn.hidden_size} units; open it in a browser)"
        )
        print(f"wrote {png}")
    if figure:
        print(f"wrote {figure}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    """``gatedrnn sample [--model PATH | --cell C] --prompt TEXT [--temperature] [--length]``:
    print the prompt followed by generated characters."""
    try:
        set_threads(args.threads)
        _check_sample_options(args.length, args.temperature)
        _check_text(args.prompt, "sample")
        model = _model_from_args(args)
        note = _unknown_note(model, args.prompt, marked=False)
        if note:
            print(note, file=sys.stderr)
        text = model.sample(args.prompt, args.length, args.temperature, torch.Generator().manual_seed(args.seed))
    except UsageError as e:
        return print_error(str(e))
    print(args.prompt + text)
    return 0


def _check_sample_options(length: int, temperature: float) -> None:
    """The sampler's own checks, as UsageErrors naming the command-line options."""
    try:
        check_sample_options(length, temperature, prefix="--")
    except ValueError as e:
        raise UsageError(str(e)) from None


def _model_options(p: argparse.ArgumentParser, every: bool = False) -> None:
    """--model or --cell (``every``: --cell also takes ``all``, the six shipped models)."""
    from ..cli import REBUILT_FAMILY, add_family_module_option

    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        metavar="PATH",
        help="a char-level model saved by `gatedrnn train --task charlm` "
        "(its .safetensors file or the run directory), of any cell family",
    )
    which.add_argument(
        "--cell",
        choices=SHIPPED + ((ALL_CELLS,) if every else ()),
        default="lstm",
        help="use the model shipped with gatedrnn for this cell (default: lstm)"
        + (f"; {ALL_CELLS}: a page for each, in --out/<cell>/" if every else ""),
    )
    add_family_module_option(
        p, f"the one that registers the cell family of --model, if it is not built in ({REBUILT_FAMILY})"
    )


def add_subcommands(subparsers) -> None:
    """Declare ``gates``, ``sample`` and ``demo`` on an argparse sub-parser set; each parser's
    ``func`` default is the function to call with the parsed arguments."""
    from .demo import add_demo_arguments, run_demo

    p = subparsers.add_parser(
        "gates", help="gate viewer page, gate heatmaps and memory span of a text", description=run_gates.__doc__
    )
    p.add_argument("text", nargs="?", help="the text to run the model on (or --file)")
    p.add_argument("--file", metavar="PATH", help="read the text from a UTF-8 file instead (- : standard input)")
    _model_options(p, every=True)
    p.add_argument("--out", default="gates_out", metavar="DIR", help="output directory (default: gates_out)")
    p.add_argument(
        "--probe",
        type=parse_probe,
        metavar="EARLY,LATE",
        help="report how much the state at the word LATE depends on the earlier word EARLY "
        "(default: John,hours, when the text has them)",
    )
    p.add_argument(
        "--span-window",
        type=int,
        default=WINDOW,
        metavar="N",
        help=f"measure the memory span for distances below N characters (default {WINDOW}); its "
        "cost grows as T min(T, N) for T characters; a text no longer than N is measured in full",
    )
    add_threads_option(p)
    p.set_defaults(func=run_gates)

    p = subparsers.add_parser("sample", help="generate text with a char-level model", description=run_sample.__doc__)
    _model_options(p)
    p.add_argument("--prompt", required=True, help="text the model reads before generating")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = most likely (default 0.8)")
    p.add_argument("--length", type=int, default=300, help="characters to generate (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler (default 0)")
    add_threads_option(p)
    p.set_defaults(func=run_sample)

    p = subparsers.add_parser(
        "demo",
        help="the main job in a few CPU minutes: long-lag comparison, then the gate "
        "viewer and memory span on the tutorial's sentence",
        description=run_demo.__doc__,
    )
    add_demo_arguments(p)
    p.set_defaults(func=run_demo)
