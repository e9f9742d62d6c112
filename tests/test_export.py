"""ONNX export (gatedrnn.export): every configuration of the shared catalogue exported and run in
onnxruntime on other lengths and batch sizes, stacked and bidirectional, with and without initial
states; the refused inputs; int8 quantization; ``gatedrnn export``."""

from __future__ import annotations

import logging
import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from catalogue import LAYER_SHAPES, family_configurations
from gatedrnn import saved
from gatedrnn.cells import family_class, registered_families
from gatedrnn.cli import main
from gatedrnn.export import (
    INSTALL,
    ExportCheckError,
    check_onnx,
    export_onnx,
    exportable,
    quantize_int8,
    run_onnx,
    session,
)
from gatedrnn.viz.loading import shipped_path

pytest.importorskip("onnxruntime")

INPUT, HIDDEN = 3, 5
EXAMPLE = (7, 2)  # (T, B) traced with: above 1 and unlike every other size
OTHER = (11, 3)  # (T, B) run with


def _op_types(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _assert_close(got, expected) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(g), e, atol=1e-5, rtol=1e-5)


def _states(layer: gatedrnn.Recurrent, batch: int, generator: torch.Generator):
    """Random initial states for ``layer`` (a tensor for a one-state family, else a tuple)."""
    LD = layer.num_layers * layer.num_directions
    states = tuple(torch.randn(LD, batch, size, generator=generator) for size in layer.cell_config.state_sizes)
    if "m" in layer.cell_config.states:  # sLSTM: a normaliser n >= 1 once started, any stabiliser m
        states = tuple(s.abs() + 1 if name == "n" else s for name, s in zip(layer.cell_config.states, states))
    return states[0] if len(states) == 1 else states


GROUP = 5
"""Configurations exported together in one file: a family's are split into groups of at most this
many, so that the test workers share the LSTM's twenty."""


def _groups() -> list:
    """(family, its configurations' options) per group, as ``pytest.param``s."""
    params = []
    for family in registered_families():
        options = [o for name, o in family_configurations(hidden_size=HIDDEN) if name == family]
        for start in range(0, len(options), GROUP):
            label = f"{family}-{start // GROUP}" if len(options) > GROUP else family
            params.append(pytest.param(family, options[start : start + GROUP], id=label))
    return params


class Catalogue(nn.Module):
    """One single-layer network per configuration, each run on the same input from its own initial
    states: one export covers them all."""

    def __init__(self, family: str, configurations: list[dict]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(gatedrnn.Recurrent(family, INPUT, HIDDEN, **options) for options in configurations)

    def forward(self, x, states):
        return [layer(x, hx) for layer, hx in zip(self.layers, states)]

    def inputs(self, T: int, B: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(T, B, INPUT, generator=generator)
        return x, tuple(_states(layer, B, generator) for layer in self.layers)


@pytest.mark.slow
@pytest.mark.parametrize("family, configurations", _groups())
def test_every_configuration_runs_in_onnxruntime_on_other_sizes(family, configurations, tmp_path):
    """Each configuration is one ONNX operator (those its family maps to one) or one Scan, and
    gives PyTorch's outputs and final states within 1e-5 on another length and batch size."""
    model = Catalogue(family, configurations).eval()
    path = tmp_path / f"{family}.onnx"
    export_onnx(model, model.inputs(*EXAMPLE, seed=0), path, check=False)
    ops = _op_types(path)
    kernels = [family_class(family)(HIDDEN, **options).kernel("onnx") for options in configurations]
    native = [gatedrnn.export.ONNX_OPERATORS[k].op_type for k in kernels if k is not None]
    assert sorted(op for op in ops if op in ("LSTM", "GRU", "RNN")) == sorted(native)
    assert ops.count("Scan") == kernels.count(None)
    inputs = model.inputs(*OTHER, seed=1)
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(model(*inputs))
    _assert_close(run_onnx(session(path), inputs), expected)


def _export_forms(family: str) -> list[dict]:
    """The family's first catalogue configuration of each export form: an ONNX operator, a loop."""
    options = [o for name, o in family_configurations(hidden_size=HIDDEN) if name == family]
    native = [o for o in options if family_class(family)(HIDDEN, **o).kernel("onnx") is not None]
    loop = [o for o in options if family_class(family)(HIDDEN, **o).kernel("onnx") is None]
    return native[:1] + loop[:1]


@pytest.mark.slow
@pytest.mark.parametrize("family", registered_families())
def test_initial_states_of_one_layer_and_of_stacked_bidirectional_layers(family, tmp_path):
    """Streaming: each export form of the family, one layer one way and two layers both ways, from
    given initial states. The graph's states are (L*D, batch, size) with L*D fixed and the batch the
    input's; export_onnx's own check runs the graph on grown batch and length, and so does the test."""
    configurations = [{**options, **shape} for options in _export_forms(family) for shape in LAYER_SHAPES.values()]
    model = Catalogue(family, configurations).eval()
    path = tmp_path / f"{family}.onnx"
    export_onnx(model, model.inputs(*EXAMPLE, seed=0), path)  # checked on other sizes
    sess = session(path)
    x, *states = sess.get_inputs()
    length, batch, _ = x.shape
    assert isinstance(length, str) and isinstance(batch, str) and length != batch
    shapes = [
        (layer.num_layers * layer.num_directions, batch, size)
        for layer in model.layers
        for size in layer.cell_config.state_sizes
    ]
    assert [tuple(state.shape) for state in states] == shapes
    inputs = model.inputs(*OTHER, seed=1)
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(model(*inputs))
    _assert_close(run_onnx(sess, inputs), expected)


STACKED = [
    pytest.param("gru", {"reset_after": False}, True, id="gru-reset_before-operator-states"),
    pytest.param("lstm", {"variant": "peephole"}, False, id="lstm-peephole-operator-no-states"),
    pytest.param("mingru", {"mode": "sequential"}, True, id="mingru-loop-states"),
]


@pytest.mark.slow
@pytest.mark.parametrize("family, options, given_states", STACKED)
def test_stacked_bidirectional_batch_first(family, options, given_states, tmp_path):
    """Two bidirectional layers, batch first: export_onnx's own check compares onnxruntime with
    PyTorch on grown batch and length, and so does the test, from other states."""
    layer = gatedrnn.Recurrent(family, INPUT, HIDDEN, num_layers=2, bidirectional=True, batch_first=True, **options)
    layer.eval()
    generator = torch.Generator().manual_seed(0)
    T, B = EXAMPLE
    x = torch.randn(B, T, INPUT, generator=generator)
    args = (x, _states(layer, B, generator)) if given_states else (x,)
    path = tmp_path / "stacked.onnx"
    export_onnx(layer, args, path)
    T, B = OTHER
    x = torch.randn(B, T, INPUT, generator=generator)
    args = (x, _states(layer, B, generator)) if given_states else (x,)
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(layer(*args))
    _assert_close(run_onnx(session(path), args), expected)


def test_the_check_finds_a_graph_that_differs_from_the_model(tmp_path):
    gru = gatedrnn.GRU(INPUT, HIDDEN).eval()
    path = tmp_path / "gru.onnx"
    x = torch.randn(*EXAMPLE, INPUT)
    export_onnx(gru, x, path)
    with torch.no_grad():
        gru.weight_hh_l0.add_(0.1)
    with pytest.raises(ExportCheckError, match="differs from PyTorch's by up to"):
        check_onnx(gru, (x,), path)


def test_a_packed_sequence_is_refused(tmp_path):
    lstm = gatedrnn.LSTM(INPUT, HIDDEN).eval()
    packed = pack_padded_sequence(torch.randn(*EXAMPLE, INPUT), torch.tensor([7, 4]))
    with pytest.raises(TypeError, match="PackedSequence"):
        export_onnx(lstm, packed, tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="ONNX export takes a padded input tensor, got a PackedSequence"):
        exportable(lstm)(packed)


def test_a_reset_is_refused_rather_than_ignored(monkeypatch):
    """An exported graph has no reset input: the exportable layer and a layer under
    ``torch.onnx.export(..., dynamo=True)`` refuse one."""
    gru = gatedrnn.GRU(INPUT, HIDDEN).eval()
    x, reset = torch.randn(*EXAMPLE, INPUT), torch.zeros(EXAMPLE, dtype=torch.bool)
    with pytest.raises(ValueError, match="an exported graph has no reset input"):
        exportable(gru)(x, reset=reset)
    monkeypatch.setattr(gatedrnn.nn, "_onnx_dynamo_exporting", lambda: True)
    assert torch.equal(gru(x)[0], exportable(gru, native=False)(x)[0])
    with pytest.raises(ValueError, match="an exported graph has no reset input"):
        gru(x, reset=reset)


def test_zoneout_in_training_mode_is_refused(tmp_path):
    lstm = gatedrnn.LSTM(INPUT, HIDDEN, zoneout=0.1)
    with pytest.raises(ValueError, match=r"zoneout=0.1.*call model.eval\(\) before exporting"):
        export_onnx(lstm, torch.randn(*EXAMPLE, INPUT), tmp_path / "x.onnx")


def test_zoneout_in_evaluation_exports_its_expectation(tmp_path):
    """In eval mode zoneout mixes old and new states by its probability: a loop, not the operator."""
    lstm = gatedrnn.LSTM(INPUT, HIDDEN, zoneout=0.3).eval()
    path = tmp_path / "zoneout.onnx"
    export_onnx(lstm, torch.randn(*EXAMPLE, INPUT), path)  # checked on other sizes
    assert "Scan" in _op_types(path) and "LSTM" not in _op_types(path)


def test_without_native_operators_every_layer_is_a_loop(tmp_path):
    rnn = gatedrnn.RNN(INPUT, HIDDEN).eval()
    path = tmp_path / "rnn.onnx"
    export_onnx(rnn, torch.randn(*EXAMPLE, INPUT), path, native=False)  # checked on other sizes
    assert "Scan" in _op_types(path) and "RNN" not in _op_types(path)


@pytest.mark.parametrize(
    "family, options",
    [("lstm", {}), ("lstm", {"variant": "peephole"}), ("gru", {"reset_after": False}), ("slstm", {"num_heads": 5})],
    ids=["lstm", "lstm-peephole", "gru-reset-before", "slstm"],
)
def test_torch_onnx_export_of_the_model_as_it_is_keeps_the_length_dynamic(family, options, tmp_path):
    """``torch.onnx.export(model, dynamo=True)`` without :func:`export_onnx`: each layer is a loop
    whose graph runs on other lengths and batch sizes (layer norm there specialises the batch size:
    :func:`export_onnx` is the path for it)."""
    layer = gatedrnn.Recurrent(family, INPUT, HIDDEN, num_layers=2, **options).eval()
    x = torch.randn(EXAMPLE[0], 4, INPUT)  # a batch unlike the 2 layers too: no size is specialised
    dims = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    path = tmp_path / "direct.onnx"
    torch.onnx.export(layer, (x,), dynamo=True, dynamic_shapes=(dims,), verbose=False).save(str(path))
    assert "Scan" in _op_types(path)
    check_onnx(layer, (x,), path)  # the example, then other lengths and batch sizes


class _Tagger(nn.Module):
    """An LSTM inside a model: embedding, layer, head."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, INPUT)
        self.rnn = gatedrnn.LSTM(INPUT, HIDDEN, batch_first=True, **options)
        self.head = nn.Linear(HIDDEN, 11)

    def forward(self, ids):
        return self.head(self.rnn(self.embedding(ids))[0])


@pytest.mark.parametrize(
    "options, quantized_op",
    [({}, "DynamicQuantizeLSTM"), ({"layer_norm": True}, "MatMulInteger")],
    ids=["operator", "loop"],
)
def test_int8_weights_keep_the_results_close(options, quantized_op, tmp_path):
    """The LSTM operator has an int8 kernel; a loop's input projection and the head are int8
    matrix products."""
    model = _Tagger(**options).eval()
    ids = torch.randint(0, 11, (2, 7))
    export_onnx(model, ids, tmp_path / "fp32.onnx")
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    assert quantized_op in _op_types(tmp_path / "int8.onnx")
    ids = torch.randint(0, 11, (3, 12))
    (got,) = run_onnx(session(tmp_path / "int8.onnx"), (ids,))
    with torch.no_grad():
        expected = model(ids)
    assert (torch.from_numpy(got) - expected).abs().max() < 0.05


def test_export_onnx_prints_nothing(tmp_path, capsys, caplog):
    """A library call prints nothing and quantization logs no advice (the exporter's notes come once
    per process: the CLI test below checks them in a process of its own)."""
    caplog.set_level(logging.INFO)
    gru = gatedrnn.GRU(INPUT, HIDDEN).eval()
    program = export_onnx(gru, torch.randn(*EXAMPLE, INPUT), tmp_path / "gru.onnx")  # and checked
    assert isinstance(program, torch.onnx.ONNXProgram)
    caplog.clear()
    quantize_int8(tmp_path / "gru.onnx", tmp_path / "gru-int8.onnx")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert capsys.readouterr().out == ""


NAMED = [
    pytest.param("lstm", {}, True, ["input", "h_0", "c_0"], ["output", "h_n", "c_n"], id="lstm-states"),
    pytest.param(
        "lstm", {"num_layers": 2, "bidirectional": True}, False, ["input"], ["output", "h_n", "c_n"], id="lstm-2x2"
    ),
    pytest.param("gru", {}, True, ["input", "h_0"], ["output", "h_n"], id="gru-states"),
    pytest.param(
        "slstm",
        {"num_heads": 5},
        True,
        ["input", "h_0", "c_0", "n_0", "m_0"],
        ["output", "h_n", "c_n", "n_n", "m_n"],
        id="slstm-states",
    ),
    pytest.param(
        "lstm",
        {"variant": "fgr"},
        True,
        ["input", "h_0", "c_0", "gates_0"],
        ["output", "h_n", "c_n", "gates_n"],
        id="lstm-fgr-states",
    ),
]


def _layer_args(layer: gatedrnn.Recurrent, given_states: bool, T: int, B: int, seed: int) -> tuple:
    """(x,) or (x, initial states), x (T, B, I)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, INPUT, generator=generator)
    return (x, _states(layer, B, generator)) if given_states else (x,)


def _io_names(path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path)).graph
    return [value.name for value in graph.input], [value.name for value in graph.output]


def _run_by_name(path, inputs: list[str], args: tuple, outputs: list[str]) -> list:
    """onnxruntime fed ``{name: tensor}`` and asked for ``outputs`` by name, in that order."""
    tensors = torch.utils._pytree.tree_leaves(args)
    return session(path).run(outputs, {name: t.numpy() for name, t in zip(inputs, tensors, strict=True)})


@pytest.mark.parametrize("family, options, given_states, inputs, outputs", NAMED)
def test_a_layer_names_its_inputs_and_outputs_as_torch_nn_does(
    family, options, given_states, inputs, outputs, tmp_path
):
    """The graph of a layer takes "input" and the initial states given (their names, suffix _0) and
    returns "output" and every final state (suffix _n); a session fed and fetched by those names, the
    outputs asked for in reverse order, gives PyTorch's results on other sizes."""
    layer = gatedrnn.Recurrent(family, INPUT, HIDDEN, **options).eval()
    path = tmp_path / "layer.onnx"
    export_onnx(layer, _layer_args(layer, given_states, *EXAMPLE, seed=0), path)  # its check runs on the names
    assert _io_names(path) == (inputs, outputs)
    args = _layer_args(layer, given_states, *OTHER, seed=1)
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(layer(*args))
    _assert_close(_run_by_name(path, inputs, args, outputs[::-1])[::-1], expected)


def test_given_names_are_the_files_and_a_container_keeps_the_exporters(tmp_path):
    """Names given name the first inputs and outputs, the others keep the exporter's; a module around
    the layers keeps the exporter's names unless given; a name the exporter had given another value
    of the graph is the file's all the same (that value renamed, the graph valid)."""
    lstm = gatedrnn.LSTM(INPUT, HIDDEN).eval()
    args = _layer_args(lstm, True, *EXAMPLE, seed=0)
    path = tmp_path / "lstm.onnx"
    export_onnx(lstm, args, path, input_names=("x", "h"), output_names=["y"])
    inputs, outputs = _io_names(path)
    assert inputs[:2] == ["x", "h"] and outputs[0] == "y" and len(inputs) == len(outputs) == 3
    model = _Tagger(layer_norm=True).eval()
    ids = torch.randint(0, 11, (2, 7))
    export_onnx(model, ids, tmp_path / "tagger.onnx", check=False)
    inputs, outputs = _io_names(tmp_path / "tagger.onnx")
    assert inputs == ["ids"] and outputs != ["output"]  # the exporter's: forward's argument, an operation's
    graph = onnx.load(str(tmp_path / "tagger.onnx")).graph
    internal = next(name for node in graph.node for name in node.output if name not in {o.name for o in graph.output})
    export_onnx(model, ids, tmp_path / "named.onnx", input_names=["tokens"], output_names=[internal])  # checked
    assert _io_names(tmp_path / "named.onnx") == (["tokens"], [internal])
    onnx.checker.check_model(onnx.load(str(tmp_path / "named.onnx")), full_check=True)
    ids = torch.randint(0, 11, (3, 12))
    with torch.no_grad():
        expected = model(ids)
    _assert_close(_run_by_name(tmp_path / "named.onnx", ["tokens"], (ids,), [internal]), [expected])


@pytest.mark.parametrize(
    "names, error, message",
    [
        ({"input_names": "input"}, TypeError, "expected input_names as a list of str, got 'input'"),
        ({"output_names": ["output", 1]}, TypeError, r"expected output_names as a list of str, got \['output', 1\]"),
        ({"input_names": ["input", ""]}, ValueError, "expected non-empty input_names"),
        ({"output_names": ["y", "h", "y"]}, ValueError, r"expected distinct output_names.*\(repeated: \['y'\]\)"),
        ({"input_names": ["x"], "output_names": ["x"]}, ValueError, r"no name in common, got \['x'\] in both"),
    ],
    ids=["a-str", "not-str", "empty", "duplicate", "input-and-output"],
)
def test_bad_names_are_refused_before_the_export(names, error, message, tmp_path):
    gru = gatedrnn.GRU(INPUT, HIDDEN).eval()
    with pytest.raises(error, match=message):
        export_onnx(gru, torch.randn(*EXAMPLE, INPUT), tmp_path / "gru.onnx", **names)
    assert not (tmp_path / "gru.onnx").exists()


def test_more_names_than_inputs_or_outputs_are_refused(tmp_path):
    """The exporter would drop the extra names: refused, saying how many the graph has, no file
    written; the check's runner refuses another number of tensors than the graph's inputs."""
    lstm = gatedrnn.LSTM(INPUT, HIDDEN).eval()
    x = torch.randn(*EXAMPLE, INPUT)
    path = tmp_path / "lstm.onnx"
    with pytest.raises(ValueError, match=r"expected at most 1 input_names \(one per graph input\), got 2"):
        export_onnx(lstm, x, path, input_names=["input", "h_0"])
    with pytest.raises(ValueError, match=r"expected at most 3 output_names \(one per graph output\), got 4"):
        export_onnx(lstm, x, path, output_names=["output", "h_n", "c_n", "extra"])
    assert not path.exists()
    export_onnx(lstm, x, path)
    with pytest.raises(ValueError, match=r"expected 1 tensors for the graph's inputs \['input'\], got 2"):
        run_onnx(session(path), (x, torch.zeros(1, EXAMPLE[1], HIDDEN)))


@pytest.mark.slow
def test_cli_exports_a_shipped_model_and_its_int8_form(tmp_path):
    """In a process of its own (the exporter's and onnxruntime's messages come once per process): the
    output is the command's own lines, nothing on stderr, the folders of both files created."""
    out, int8 = tmp_path / "new" / "gru.onnx", tmp_path / "other" / "gru-int8.onnx"
    command = [sys.executable, "-m", "gatedrnn", "export", "--shipped", "gru", "--out", str(out), "--int8", str(int8)]
    ran = subprocess.run(command, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        f"wrote {out} (checked in onnxruntime against PyTorch on other batch sizes and lengths)",
        f"wrote {int8} (int8 weights)",
    ]
    assert ran.stderr == ""
    assert "GRU" in _op_types(out) and "MatMulInteger" in _op_types(int8)
    assert _io_names(out) == (["input"], ["output", "h_n"])
    shipped = saved.read(shipped_path("gru"))
    model = saved.rebuild(shipped.meta, shipped.tensors).eval()
    ids = torch.randint(1, 78, (3, 20))
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(model(ids))
    _assert_close(run_onnx(session(out), (ids,)), expected)


def test_cli_export_needs_one_model(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "give either MODEL" in capsys.readouterr().err


def _without_onnxruntime():
    raise ImportError("No module named 'onnxruntime'")


def test_cli_int8_without_onnxruntime_fails_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gatedrnn.export, "_onnxruntime", _without_onnxruntime)
    out, int8 = tmp_path / "gru.onnx", tmp_path / "gru-int8.onnx"
    assert main(["export", "--shipped", "gru", "--out", str(out), "--int8", str(int8)]) == 2
    error = capsys.readouterr().err
    assert "onnx, onnxscript and onnxruntime must be installed (No module named 'onnxruntime')" in error
    assert INSTALL in error and INSTALL == 'pip install "gatedrnn[onnx]"'
    assert not out.exists() and not int8.exists()


def test_cli_without_onnxruntime_exports_and_says_it_did_not_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gatedrnn.export, "_onnxruntime", _without_onnxruntime)
    monkeypatch.setattr(gatedrnn.export, "check_onnx", lambda *args: pytest.fail("checked without onnxruntime"))
    out = tmp_path / "gru.onnx"
    assert main(["export", "--shipped", "gru", "--out", str(out)]) == 0
    expected = f"wrote {out} (not checked against PyTorch: onnxruntime is not installed; {INSTALL})"
    assert capsys.readouterr().out.splitlines() == [expected]
    assert "GRU" in _op_types(out)


def test_cli_no_check_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gatedrnn.export, "check_onnx", lambda *args: pytest.fail("checked with --no-check"))
    out = tmp_path / "gru.onnx"
    assert main(["export", "--shipped", "gru", "--out", str(out), "--no-check"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {out} (not checked against PyTorch: --no-check)"]


def test_the_library_names_the_extra_before_any_work(tmp_path, monkeypatch):
    def without_onnxscript():
        raise ImportError("No module named 'onnxscript'")

    gru = gatedrnn.GRU(INPUT, HIDDEN).eval()
    export_onnx(gru, torch.randn(*EXAMPLE, INPUT), tmp_path / "served.onnx")
    monkeypatch.setattr(gatedrnn.export, "_exporter_packages", without_onnxscript)
    assert session(tmp_path / "served.onnx") is not None  # serving needs onnxruntime alone
    with pytest.raises(
        ImportError, match=r"onnx and onnxscript must be installed \(No module named 'onnxscript'\)"
    ) as e:
        export_onnx(gru, torch.randn(*EXAMPLE, INPUT), tmp_path / "gru.onnx")
    assert str(e.value).endswith(INSTALL) and not (tmp_path / "gru.onnx").exists()
    monkeypatch.undo()
    monkeypatch.setattr(gatedrnn.export, "_onnxruntime", _without_onnxruntime)
    for call in (lambda: session(tmp_path / "gru.onnx"), lambda: quantize_int8(tmp_path / "a", tmp_path / "b")):
        with pytest.raises(ImportError, match=r"onnxruntime must be installed \(No module named 'onnxruntime'\)") as e:
            call()
        assert str(e.value).endswith(INSTALL)
