"""CPU benchmark of one recurrent layer: torch.nn (native kernels), gatedrnn's reference loop, a plain
autograd time loop of the same cell, and the fused CPU backend (``cpu``: its compiled loops where
they apply; ``cpu-py``: the same backend with them switched off, its Python loops), side by side
in one process.

    python benchmarks/cpu.py                   # every row: the targets first, the grid last
    python benchmarks/cpu.py --quick           # a fast smoke run (small sizes, 1 repeat)
    python benchmarks/cpu.py --rows targets,memory --threads 2 --repeats 7

Every row times its providers interleaved (A B C D, A B C D, ...) and reports medians in ms, with
ratios against torch.nn. Rows (``--rows``): ``targets`` (the speed targets at B=32, H=256),
``memory`` (peak training memory per variant against torch.nn.LSTM), ``penalty`` (a training step
with a gradient penalty through the recurrence), ``linear`` (T=128 against
T=1024), ``stream`` (cells called one step at a time), ``auto`` (torch.nn's kernels against the cpu
backend for the plain cells, which ``auto`` chooses between), ``packed`` (the same for the plain
GRU on packed batches of unequal lengths, which torch's kernel shortens step by step and the cpu
backend masks), ``stack`` (the same for the plain GRU with 2 layers and/or both directions) and ``grid`` (B x
T x H for ``--cells``).

Memory is measured two ways, both for one forward+backward at B=32, H=256, T=256:

- ``saved``: bytes of the distinct storages autograd keeps for the backward pass (a
  ``saved_tensors_hooks`` count, exact and noise-free); this is what grows with T;
- ``peak``: growth of the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) during that call, in a fresh child process per provider after a
  small warm-up, so it includes every temporary of both passes and the gradients.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gatedrnn
from gatedrnn.backends.cpu import compiled
from gatedrnn.backends.reference import recurrent_weights

CELLS = {  # --cells names -> (gatedrnn module, its keywords); torch.nn's class of the same name runs the plain cell
    "lstm": (gatedrnn.LSTM, {}),
    "lstm-ln": (gatedrnn.LSTM, {"layer_norm": True}),
    "gru": (gatedrnn.GRU, {}),
    "gru-ln": (gatedrnn.GRU, {"layer_norm": True}),
    "gru-ra0": (gatedrnn.GRU, {"reset_after": False}),
    "gru-ra0-ln": (gatedrnn.GRU, {"reset_after": False, "layer_norm": True}),
    **{f"lstm-{v}": (gatedrnn.LSTM, {"variant": v}) for v in gatedrnn.LSTM_VARIANTS if v != "vanilla"},
    "lstm-fgr-ln": (gatedrnn.LSTM, {"variant": "fgr", "layer_norm": True}),
}


@dataclass(frozen=True)
class Case:
    cell: str
    B: int
    T: int
    H: int
    shortest: int = 0
    """Packed input, lengths spread evenly from T down to this; 0: every sequence T long, unpacked."""
    layers: int = 1
    bidirectional: bool = False

    @property
    def module(self) -> type[torch.nn.Module]:
        """gatedrnn's module class of this cell (torch.nn's of the same name is its plain cell)."""
        return CELLS[self.cell][0]

    @property
    def plain(self) -> Case:
        """The same case with the plain cell of the same module (no keywords), which torch.nn runs."""
        cell = next(name for name, (module, kw) in CELLS.items() if module is self.module and not kw)
        return Case(cell, self.B, self.T, self.H, self.shortest, self.layers, self.bidirectional)

    @property
    def label(self) -> str:
        lengths = f" lengths {self.T}..{self.shortest}" if self.shortest else ""
        stack = (f" L={self.layers}" if self.layers > 1 else "") + (" bi" if self.bidirectional else "")
        return f"{self.cell}{stack} B={self.B} T={self.T} H={self.H}{lengths}"

    @property
    def stack(self) -> dict:
        """The layers' keywords (torch.nn's and ours)."""
        return {"num_layers": self.layers, "bidirectional": self.bidirectional}

    def model_input(self, x: torch.Tensor) -> torch.Tensor | PackedSequence:
        """x (T, B, H) as the layer takes it: packed with this case's lengths, or as it is."""
        if not self.shortest:
            return x
        lengths = torch.linspace(self.T, self.shortest, self.B).round().long()
        return pack_padded_sequence(x, lengths, enforce_sorted=False)


def build(case: Case, provider: str) -> torch.nn.Module:
    """The module a provider runs: torch.nn's plain cell of the same size, or gatedrnn's cell."""
    torch.manual_seed(0)
    module, kw = CELLS[case.cell]
    if provider == "torch":
        return getattr(torch.nn, module.__name__)(case.H, case.H, **case.stack)
    backend = {"default": "auto", "loop": "reference", "cpu-py": "cpu"}.get(provider, provider)
    return module(case.H, case.H, backend=backend, **case.stack, **kw)


def plain_loop(module: torch.nn.Module, x: torch.Tensor):
    """What a user writes without a fused kernel: the cell's step function in a Python loop over
    time, autograd recording every operation (layer 0, one direction, no masking); each step
    projects its own input, as a cell called step by step does."""
    cfg = module.cell_config
    w = module.layer_weights(0, 0)
    recurrent = recurrent_weights(w)
    state = cfg.initial_carry(tuple(x.new_zeros(x.shape[1], s) for s in cfg.state_sizes))
    outputs = []
    for t in range(x.shape[0]):
        state, _ = cfg.step(cfg.input_projection(x[t], w), state, recurrent)
        outputs.append(state[0])
    return torch.stack(outputs), state


def call(case: Case, provider: str, train: bool, penalty: bool = False) -> Callable[[], None]:
    """A closure running one forward (no grad) or forward+backward of ``provider`` on ``case``;
    with ``penalty`` a training step with a gradient penalty: the weights' gradients taken with
    ``create_graph``, their squared norm added to the loss, and the backward pass of that."""
    module = build(case, provider)
    x = case.model_input(torch.randn(case.T, case.B, case.H))
    run = (lambda: plain_loop(module, x)) if provider == "loop" else (lambda: module(x))
    if provider == "cpu-py":
        run = _without_compiled_loop(run)

    def forward_backward():
        module.zero_grad(set_to_none=True)
        out, _ = run()
        (out.data if isinstance(out, PackedSequence) else out).sum().backward()

    def forward():
        with torch.no_grad():
            run()

    def penalised():
        module.zero_grad(set_to_none=True)
        out, _ = run()
        out = out.data if isinstance(out, PackedSequence) else out
        grads = torch.autograd.grad(out.pow(2).sum(), list(module.parameters()), create_graph=True)
        (out.sum() + sum(g.pow(2).sum() for g in grads)).backward()

    return penalised if penalty else forward_backward if train else forward


def _without_compiled_loop(run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with the CPU backend's compiled loops switched off (its Python loops run)."""

    def python_loop():
        previous = os.environ.get(compiled.ENV)
        os.environ[compiled.ENV] = "0"
        try:
            return run()
        finally:
            if previous is None:
                del os.environ[compiled.ENV]
            else:
                os.environ[compiled.ENV] = previous

    return python_loop


@dataclass
class Row:
    label: str
    providers: list[str]
    train: bool
    case_of: Callable[[str], Case]
    penalty: bool = False
    times: dict[str, list[float]] = field(default_factory=dict)

    @property
    def pass_name(self) -> str:
        return "penalty" if self.penalty else "fwd+bwd" if self.train else "fwd"

    def run(self, repeats: int) -> None:
        fns = {p: call(self.case_of(p), p, self.train, self.penalty) for p in self.providers}
        for fn in fns.values():  # warm-up: allocator, thread pool, lazy init
            fn()
        self.times = {p: [] for p in fns}
        for _ in range(repeats):
            for p, fn in fns.items():
                gc.collect()
                start = time.perf_counter()
                fn()
                self.times[p].append(time.perf_counter() - start)

    def median_ms(self, provider: str) -> float:
        return 1e3 * statistics.median(self.times[provider])


def print_rows(title: str, rows: list[Row], baseline: str = "torch") -> None:
    providers = list(dict.fromkeys(p for r in rows for p in r.providers))
    print(f"\n### {title}\n")
    head = ["case", "pass"] + [f"{p} ms" for p in providers] + [f"{baseline}/{p}" for p in providers if p != baseline]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r.label, r.pass_name]
        cells += [f"{r.median_ms(p):.1f}" if p in r.times else "" for p in providers]
        if baseline in r.times:
            cells += [
                f"{r.median_ms(baseline) / r.median_ms(p):.2f}x" if p in r.times else ""
                for p in providers
                if p != baseline
            ]
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def fixed(case: Case) -> Callable[[str], Case]:
    return lambda provider: case


def target_rows(quick: bool) -> list[tuple[str, list[Row]]]:
    B, H = (4, 32) if quick else (32, 256)
    Ts = (16,) if quick else (128, 256)
    sections = []
    for cell in ("lstm", "gru"):
        sections.append(
            (
                f"{cell}: default backend vs torch.nn (target >= 0.95x)",
                [Row(Case(cell, B, T, H).label, ["torch", "default"], True, fixed(Case(cell, B, T, H))) for T in Ts],
            )
        )
    ln = [
        Row(
            Case("lstm-ln", B, T, H).label,
            ["torch", "loop", "cpu-py", "cpu"],
            True,
            _torch_plain(Case("lstm-ln", B, T, H)),
        )
        for T in Ts
    ]
    sections.append(
        (
            "layer-norm LSTM: cpu vs plain autograd loop (target loop/cpu >= 1.8x at T=128, 5x at T=256) "
            "and vs torch.nn.LSTM (target torch/cpu >= 0.6x)",
            ln,
        )
    )
    peep = [
        Row(
            Case("lstm-peephole", B, T, H).label,
            ["torch", "cpu-py", "cpu"],
            True,
            _torch_plain(Case("lstm-peephole", B, T, H)),
        )
        for T in Ts
    ]
    sections.append(("peephole LSTM vs torch.nn.LSTM (target >= 0.7x)", peep))
    variants = [
        Row(Case(c, B, Ts[0], H).label, ["torch", "cpu-py", "cpu"], True, _torch_plain(Case(c, B, Ts[0], H)))
        for c in CELLS
        if c.startswith("lstm-") and c not in ("lstm-ln", "lstm-peephole")
    ]
    sections.append(("other variants vs torch.nn.LSTM (information)", variants))
    grus = [
        Row(Case(c, B, Ts[0], H).label, ["torch", "cpu-py", "cpu"], True, _torch_plain(Case(c, B, Ts[0], H)))
        for c in ("gru-ln", "gru-ra0", "gru-ra0-ln")
    ]
    sections.append(("GRU variants torch.nn lacks vs torch.nn.GRU (information)", grus))
    return sections


def _torch_plain(case: Case) -> Callable[[str], Case]:
    """torch runs the plain cell of the case's module; the others the case's cell."""
    return lambda provider: case.plain if provider == "torch" else case


def linear_rows(quick: bool) -> list[Row]:
    B, H = (4, 32) if quick else (32, 256)
    Ts = (16, 128) if quick else (128, 1024)
    rows = []
    for cell, provider in (("lstm", "torch"), ("lstm-ln", "cpu"), ("lstm-peephole", "cpu"), ("lstm-ln", "loop")):
        for T in Ts:
            case = Case(cell, B, T, H)
            rows.append(Row(f"{case.label} [{provider}]", [provider], True, fixed(case)))
    return rows


def print_linearity(rows: list[Row]) -> None:
    print("\n### time per step, T=short vs T=long (target: ratio ~1, no cliff)\n")
    print("| cell [provider] | short T ms/step | long T ms/step | long/short |")
    print("|---|---|---|---|")
    for short, long in zip(rows[::2], rows[1::2]):
        p = short.providers[0]
        a = short.median_ms(p) / short.case_of(p).T
        b = long.median_ms(p) / long.case_of(p).T
        print(f"| {short.label.split(' T=')[0]} [{p}] | {a:.3f} | {b:.3f} | {b / a:.2f} |")


def grid_rows(cells: list[str], quick: bool) -> list[Row]:
    sizes = [(b, t, h) for b in (1, 32) for t in (64, 256) for h in (128, 256, 512)]
    if quick:
        sizes = [(1, 8, 16), (4, 16, 32)]
    rows = []
    for cell in cells:
        for B, T, H in sizes:
            case = Case(cell, B, T, H)
            for train in (False, True):
                rows.append(Row(case.label, ["torch", "reference", "loop", "cpu"], train, _torch_plain(case)))
    return rows


def auto_rows(quick: bool) -> list[Row]:
    """The cells torch.nn computes, torch.nn's kernel against the cpu backend and the default: the
    measurements behind what ``auto`` picks on the CPU (:func:`gatedrnn.backends.choose`)."""
    sizes = [(b, t, h) for b in (1, 8, 32) for t in (1, 16, 128) for h in (64, 256, 512)]
    if quick:
        sizes = [(1, 1, 16), (4, 16, 32)]
    return [
        Row(Case(cell, B, T, H).label, ["torch", "cpu", "default"], train, fixed(Case(cell, B, T, H)))
        for cell in ("gru", "lstm")
        for B, T, H in sizes
        for train in (False, True)
    ]


def packed_rows(quick: bool) -> list[Row]:
    """The plain GRU on packed batches, lengths from T down to T/2 or to 1: torch.nn.GRU's kernel
    runs only the live sequences of each step, the cpu backend every step of every sequence. Then
    the plain LSTM, which the default runs on torch's kernel: its cost of taking a packed input."""
    sizes = [(b, t, h, s) for b in (8, 32) for t in (16, 128) for h in (64, 256) for s in (t // 2, 1)]
    lstm_sizes = [(8, 16, 64, 1), (8, 128, 64, 1), (32, 128, 256, 1)]
    if quick:
        sizes = lstm_sizes = [(4, 16, 32, 1)]
    rows = [
        Row(Case("gru", B, T, H, s).label, ["torch", "cpu", "default"], train, fixed(Case("gru", B, T, H, s)))
        for B, T, H, s in sizes
        for train in (False, True)
    ]
    return rows + [
        Row(Case("lstm", B, T, H, s).label, ["torch", "default"], train, fixed(Case("lstm", B, T, H, s)))
        for B, T, H, s in lstm_sizes
        for train in (False, True)
    ]


def stack_rows(quick: bool) -> list[Row]:
    """The plain GRU stacked (2 layers), bidirectional, and both: ``auto``'s measurements were
    of one layer, one direction, and torch's kernel runs a whole stack in one call."""
    sizes = [(32, 16, 64), (32, 16, 256), (32, 128, 64), (32, 128, 256), (8, 128, 256)]
    stacks = [(2, False), (1, True), (2, True)]
    if quick:
        sizes, stacks = [(4, 16, 32)], [(2, True)]
    return [
        Row(case.label, ["torch", "cpu", "default"], train, fixed(case))
        for L, bi in stacks
        for B, T, H in sizes
        for case in [Case("gru", B, T, H, layers=L, bidirectional=bi)]
        for train in (False, True)
    ]


def penalty_rows(quick: bool) -> list[Row]:
    """A training step with a gradient penalty on the weights (second derivatives through the
    recurrence): the cpu backend replays the layer on the reference loop for it."""
    B, T, H = (4, 8, 16) if quick else (32, 64, 128)
    cells = [
        ("gru", ["torch", "reference", "cpu", "default"]),
        ("lstm-peephole", ["reference", "cpu", "default"]),
        ("lstm-ln", ["reference", "cpu", "default"]),
    ]
    return [
        Row(Case(cell, B, T, H).label, providers, True, fixed(Case(cell, B, T, H)), penalty=True)
        for cell, providers in cells
    ]


def stream_rows(quick: bool, repeats: int) -> None:
    """Cells called one step at a time with carried state (inference), per step in µs."""
    steps, H = (20, 32) if quick else (500, 256)
    print(f"\n### single-step streaming: {steps} steps, carried state, no grad (target: gatedrnn <= torch.nn)\n")
    print("| cell | B | torch.nn.LSTMCell µs/step | gatedrnn µs/step | torch/gatedrnn |")
    print("|---|---|---|---|---|")
    for variant in ("vanilla", "peephole"):
        for B in (1, 32):
            torch.manual_seed(0)
            cells = {"torch": torch.nn.LSTMCell(H, H), "ours": gatedrnn.LSTMCell(H, H, variant=variant)}
            xs = torch.randn(steps, B, H)
            times: dict[str, list[float]] = {k: [] for k in cells}
            for r in range(repeats + 1):
                for k, cell in cells.items():
                    state = (torch.zeros(B, H), torch.zeros(B, H))
                    with torch.no_grad():
                        start = time.perf_counter()
                        for x in xs:
                            state = cell(x, state)
                        elapsed = time.perf_counter() - start
                    if r > 0:
                        times[k].append(elapsed)
            a, b = (1e6 * statistics.median(times[k]) / steps for k in ("torch", "ours"))
            print(f"| LSTMCell {variant} | {B} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


def saved_bytes(case: Case, provider: str) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass of one forward."""
    module = build(case, provider)
    x = torch.randn(case.T, case.B, case.H)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = plain_loop(module, x) if provider == "loop" else module(x)
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params and ptr != x.untyped_storage().data_ptr())


def _vm(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def peak_child(cell: str, provider: str, B: int, T: int, H: int) -> None:
    """(In a child process.) Print the peak RSS growth of one forward+backward."""
    case = Case(cell, B, T, H)
    call(Case(cell, B, 2, H), provider, True)()  # load kernels and pools outside the measurement
    fn = call(case, provider, True)
    gc.collect()
    base = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    print(_vm("VmHWM") - base)


def peak_bytes(case: Case, provider: str, threads: int) -> int | None:
    cmd = [
        sys.executable,
        __file__,
        "--threads",
        str(threads),
        "--peak-child",
        case.cell,
        provider,
        str(case.B),
        str(case.T),
        str(case.H),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return int(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"(peak measurement failed for {case.label} {provider}: {result.stderr.strip()[-200:]})")
        return None


def memory_rows(quick: bool, threads: int) -> None:
    B, T, H = (4, 32, 32) if quick else (32, 256, 256)
    print(f"\n### training memory, B={B} T={T} H={H} (target: every variant <= 1.5x torch.nn.LSTM)\n")
    print("| cell [provider] | saved MiB | saved / torch | peak MiB | peak / torch |")
    print("|---|---|---|---|---|")
    base = Case("lstm", B, T, H)
    ref_saved, ref_peak = saved_bytes(base, "torch"), peak_bytes(base, "torch", threads)
    entries = [("lstm", "torch"), ("lstm", "cpu")] + [(c, "cpu") for c in CELLS if c.startswith("lstm-")]
    entries += [
        ("lstm-ln", "cpu-py"),
        ("lstm-peephole", "cpu-py"),
        ("lstm-ln", "loop"),
        ("gru", "torch"),
        ("gru", "cpu"),
        ("gru-ln", "cpu"),
        ("gru-ra0-ln", "cpu"),
        ("gru-ln", "cpu-py"),
    ]
    for cell, provider in entries:
        case = Case(cell, B, T, H)
        baseline = case == base and provider == "torch"
        saved = ref_saved if baseline else saved_bytes(case, provider)
        peak = ref_peak if baseline else peak_bytes(case, provider, threads)
        peak_s = "n/a" if peak is None or ref_peak is None else f"{peak / 2**20:.1f} | {peak / ref_peak:.2f}x"
        print(f"| {cell} [{provider}] | {saved / 2**20:.1f} | {saved / ref_saved:.2f}x | {peak_s} |")
        sys.stdout.flush()


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    loop = compiled.unavailable_reason() or f"built for {torch.backends.cpu.get_cpu_capability()}"
    return (
        f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} intra-op "
        f"thread(s), Python {platform.python_version()}, load average at start {load[0]:.2f}; "
        f"compiled loops: {loop}"
    )


ROWS = ("targets", "memory", "linear", "stream", "auto", "packed", "stack", "penalty", "grid")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)} (default all)")
    parser.add_argument("--cells", default="lstm,lstm-ln", help=f"grid cells, from {', '.join(CELLS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per provider and row (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 repeat: a smoke run")
    parser.add_argument("--peak-child", nargs=5, metavar=("CELL", "PROVIDER", "B", "T", "H"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peak_child:
        cell, provider, *sizes = args.peak_child
        peak_child(cell, provider, *map(int, sizes))
        return
    rows = set(args.rows.split(","))
    unknown = rows - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}: expected one of {', '.join(ROWS)}")
    cells = args.cells.split(",")
    if set(cells) - set(CELLS):
        parser.error(f"unknown cells {sorted(set(cells) - set(CELLS))}: expected some of {', '.join(CELLS)}")
    repeats = 1 if args.quick else args.repeats
    print(
        f"## CPU benchmark\n\nMachine: {machine()}\n\nMedians of {repeats} interleaved calls per provider; "
        "`torch` is torch.nn's plain cell of the same size, `default` gatedrnn with backend='auto', "
        "`reference` its reference backend, `loop` a plain autograd time loop of the same cell, `cpu` the "
        "fused CPU backend, `cpu-py` the same with its compiled loops off. Ratios are torch's time over the "
        "provider's (> 1: faster than torch.nn)."
    )
    if "targets" in rows:
        for title, section in target_rows(args.quick):
            for r in section:
                r.run(repeats)
            print_rows(title, section)
    if "memory" in rows:
        memory_rows(args.quick, args.threads)
    if "linear" in rows:
        lin = linear_rows(args.quick)
        for r in lin:
            r.run(repeats)
        print_linearity(lin)
    if "stream" in rows:
        stream_rows(args.quick, repeats)
    if "auto" in rows:
        table = auto_rows(args.quick)
        for r in table:
            r.run(repeats)
        print_rows("auto: torch.nn's kernels, the cpu backend and the default, for the cells torch.nn computes", table)
    if "packed" in rows:
        table = packed_rows(args.quick)
        for r in table:
            r.run(repeats)
        print_rows("packed: batches of unequal lengths (the plain GRU; the plain LSTM on torch's kernel)", table)
    if "stack" in rows:
        table = stack_rows(args.quick)
        for r in table:
            r.run(repeats)
        print_rows("stack: the plain GRU with 2 layers and/or both directions", table)
    if "penalty" in rows:
        table = penalty_rows(args.quick)
        for r in table:
            r.run(repeats)
        print_rows(
            "penalty: a training step with a gradient penalty through the recurrence (plain GRU)",
            [r for r in table if "torch" in r.providers],
        )
        print_rows(
            "penalty: the same for variants torch.nn lacks, against the reference backend",
            [r for r in table if "torch" not in r.providers],
            baseline="reference",
        )
    if "grid" in rows:
        grid = grid_rows(cells, args.quick)
        for r in grid:
            r.run(repeats)
        print_rows("grid: torch.nn, reference, plain loop and cpu backend", grid)


if __name__ == "__main__":
    main()
