"""Bad input gets a ValueError/TypeError saying what was expected and what was given."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn import _checks as check


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(hidden_size=0), ValueError, "hidden_size must be a positive integer, got 0"),
        (dict(hidden_size=-3), ValueError, "hidden_size must be a positive integer, got -3"),
        (dict(hidden_size=4.0), TypeError, "hidden_size must be an int, got float"),
        (dict(input_size=0), ValueError, "input_size must be a positive integer, got 0"),
        (dict(num_layers=0), ValueError, "num_layers must be a positive integer, got 0"),
        (dict(dropout=1.5), ValueError, r"dropout must be in \[0, 1\], got 1.5"),
        (dict(dropout=-0.1), ValueError, r"dropout must be in \[0, 1\], got -0.1"),
        (dict(proj_size=8), ValueError, r"proj_size must be 0 \(no projection\) or in \[1, hidden_size=8\), got 8"),
        (dict(proj_size=-1), ValueError, "proj_size must be 0"),
        (dict(zoneout=1.5), ValueError, r"zoneout must be in \[0, 1\], got 1.5"),
        (dict(recurrent_dropout=1.0), ValueError, r"recurrent_dropout must be in \[0, 1\), got 1.0"),
        pytest.param(dict(bias="yes"), TypeError, r"bias should be of type bool \(True or False\), got: str \('yes'\)"),
        pytest.param(dict(bias=2), TypeError, r"bias should be of type bool \(True or False\), got: int \(2\)"),
        (dict(backend="cuda"), ValueError, "unknown backend 'cuda': expected one of 'auto', 'torch', 'reference'"),
        (dict(variant="nfg", forget_bias=1.0), ValueError, "forget_bias=1.0 needs a forget gate"),
        (dict(bias=False, forget_bias=1.0), ValueError, "forget_bias=1.0 needs bias=True"),
        (dict(hidden_size=True), TypeError, r"hidden_size must be an int, got bool \(True\)"),
        (dict(forget_bias=True), TypeError, r"forget_bias must be a number or None, got bool \(True\)"),
    ],
)
def test_constructor_rejects(kwargs, error, pattern):
    args = dict(input_size=3, hidden_size=8) | kwargs
    with pytest.raises(error, match=pattern):
        gatedrnn.LSTM(**args)


def test_rnn_nonlinearity_and_gru_options():
    with pytest.raises(ValueError, match="unknown nonlinearity 'sigmoid'; expected one of 'tanh', 'relu'"):
        gatedrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="reset_after must be a bool"):
        gatedrnn.GRU(3, 4, reset_after="no")
    with pytest.raises(ValueError, match="variant 'fgr'.*use gatedrnn.LSTM"):
        gatedrnn.LSTMCell(3, 4, variant="fgr")


@pytest.fixture
def lstm():
    return gatedrnn.LSTM(3, 4, num_layers=2, bidirectional=True)


def test_input_dims(lstm):
    with pytest.raises(
        ValueError, match=r"expected input to be 3-D \(T, B, input_size\).*got 4-D input of shape \(2, 3, 4, 3\)"
    ):
        lstm(torch.randn(2, 3, 4, 3))
    with pytest.raises(ValueError, match="got 1-D"):
        lstm(torch.randn(3))


def test_input_size(lstm):
    with pytest.raises(ValueError, match=r"input.size\(-1\) == input_size = 3, got 5 \(input shape \(6, 2, 5\)\)"):
        lstm(torch.randn(6, 2, 5))


def test_input_type_and_dtype(lstm):
    with pytest.raises(TypeError, match="expected input to be a Tensor, got list"):
        lstm([[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="floating-point tensor of dtype torch.float32, got dtype torch.int64"):
        lstm(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"input has dtype torch.float64 but the parameters are torch.float32"):
        lstm(torch.randn(5, 2, 3, dtype=torch.float64))


def test_state_shapes_for_each_layer_direction_and_batch(lstm):
    x = torch.randn(5, 2, 3)
    good_h, good_c = torch.zeros(4, 2, 4), torch.zeros(4, 2, 4)
    with pytest.raises(
        ValueError,
        match=r"expected h_0 of shape \(num_layers \* num_directions, batch, hidden_size\) = "
        r"\(4, 2, 4\), got \(2, 2, 4\)",
    ):
        lstm(x, (torch.zeros(2, 2, 4), good_c))
    with pytest.raises(ValueError, match=r"expected c_0 of shape .* = \(4, 2, 4\), got \(4, 3, 4\)"):
        lstm(x, (good_h, torch.zeros(4, 3, 4)))
    with pytest.raises(ValueError, match=r"expected h_0 of shape .* for unbatched input = \(4, 4\), got \(4, 1, 4\)"):
        lstm(torch.randn(5, 3), (torch.zeros(4, 1, 4), torch.zeros(4, 1, 4)))
    proj = gatedrnn.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"batch, proj_size\) = \(1, 2, 2\), got \(1, 2, 4\)"):
        proj(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))


def test_lstm_state_must_be_a_pair(lstm):
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError, match=r"expected hx to be a tuple \(h_0, c_0\) of two tensors, got Tensor"):
        lstm(x, torch.zeros(4, 2, 4))
    with pytest.raises(TypeError, match="got a tuple of length 3"):
        lstm(x, (torch.zeros(4, 2, 4),) * 3)
    with pytest.raises(TypeError, match="expected hx to be a Tensor h_0, got a tuple"):
        gatedrnn.GRU(3, 4)(x, (torch.zeros(1, 2, 4),))


def test_state_dtype_mismatch(lstm):
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError, match="c_0 has dtype torch.float64 but the parameters are torch.float32"):
        lstm(x, (torch.zeros(4, 2, 4), torch.zeros(4, 2, 4, dtype=torch.float64)))


def test_packed_input_checked():
    m = gatedrnn.GRU(3, 4, layer_norm=True)
    packed = pack_padded_sequence(torch.randn(5, 2, 6), torch.tensor([5, 2]))
    with pytest.raises(
        ValueError, match=r"PackedSequence data of shape \(sum of lengths, input_size=3\), got \(7, 6\)"
    ):
        m(packed)


def test_cell_errors():
    cell = gatedrnn.LSTMCell(3, 4)
    with pytest.raises(
        ValueError, match=r"expected input of shape \(batch, input_size=3\) or \(input_size,\), got \(2, 5\)"
    ):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"expected c of shape \(batch, hidden_size\) = \(2, 4\), got \(2, 5\)"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 5)))
    with pytest.raises(TypeError, match=r"expected hx to be a tuple \(h, c\)"):
        cell(torch.randn(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"expected h of shape \(batch, hidden_size\) = \(2, 4\), got \(3, 4\)"):
        cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(TypeError, match=r"c has dtype torch.float64 but the parameters are torch.float32"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64)))


def test_gru_and_rnn_cell_errors():
    """A cell's state is one tensor: a tuple, a wrong shape or dtype is refused, not passed to torch's kernel."""
    for cell in (gatedrnn.GRUCell(3, 4), gatedrnn.RNNCell(3, 4)):
        with pytest.raises(TypeError, match=r"expected hx to be a Tensor, got a tuple"):
            cell(torch.randn(2, 3), (torch.zeros(2, 4),))
        with pytest.raises(ValueError, match=r"expected hx of shape \(batch, hidden_size\) = \(2, 4\), got \(2, 3\)"):
            cell(torch.randn(2, 3), torch.zeros(2, 3))
        with pytest.raises(TypeError, match=r"input has dtype torch.float64 but the parameters are torch.float32"):
            cell(torch.randn(2, 3, dtype=torch.float64), torch.zeros(2, 4))
        with pytest.raises(TypeError, match=r"expected input to be a floating-point tensor"):
            cell(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 4))


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: gatedrnn.MinGRU(4, 8, mode="x"),
            "minGRU: expected mode to be one of 'auto', 'parallel', 'sequential', got 'x'",
        ),
        (
            lambda: gatedrnn.Recurrent("minlstm", 4, 8, activation="relu"),
            "minLSTM: expected activation to be one of 'g', 'identity', got 'relu'",
        ),
        (
            lambda: gatedrnn.Recurrent("gru", 4, 8, foo=1),
            "GRU: unknown option(s) foo; the family 'gru' takes: layer_norm, reset_after, eps",
        ),
    ],
    ids=["mingru-mode", "minlstm-activation", "gru-option"],
)
def test_a_family_s_option_error_names_the_cell_not_its_class(build, message):
    """The cell as the user names it (minGRU, GRU), never the Python class that implements it."""
    with pytest.raises((ValueError, TypeError)) as refused:
        build()
    assert str(refused.value) == message


def test_backend_that_cannot_run_the_config():
    with pytest.raises(ValueError, match="backend='torch' runs only what torch.nn computes.*variant='peephole'"):
        gatedrnn.LSTM(3, 4, variant="peephole", backend="torch")(torch.randn(2, 1, 3))
    m = gatedrnn.LSTM(3, 4)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        m.backend = "fast"
    assert m.backend == "auto", "a rejected assignment leaves the backend unchanged"


def test_a_cell_refuses_a_backend_that_runs_whole_sequences():
    """The cpu and triton backends fuse a whole sequence: a cell naming one is refused (it used to
    run the reference step instead), and a rejected assignment leaves the backend as it was."""
    for name in ("cpu", "triton"):
        with pytest.raises(
            ValueError,
            match=rf"LSTMCell: backend '{name}' runs whole sequences.*'auto', 'torch', "
            rf"'reference' \(gatedrnn.LSTM\(..., backend='{name}'\)",
        ):
            gatedrnn.LSTMCell(3, 4, backend=name)
    cell = gatedrnn.GRUCell(3, 4, backend="reference")
    with pytest.raises(ValueError, match="GRUCell: backend 'cpu' runs whole sequences"):
        cell.backend = "cpu"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        cell.backend = "fast"
    assert cell.backend == "reference"


@pytest.mark.parametrize(
    "cls,kw", [(gatedrnn.LSTM, {}), (gatedrnn.LSTM, {"variant": "cifg"}), (gatedrnn.GRU, {}), (gatedrnn.RNN, {})]
)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_empty_batch_and_zero_length_sequences(cls, kw, bidirectional):
    m = cls(3, 4, num_layers=2, bidirectional=bidirectional, **kw)
    D = 2 if bidirectional else 1
    out, state = m(torch.randn(0, 2, 3))
    h = state[0] if isinstance(state, tuple) else state
    assert out.shape == (0, 2, 4 * D) and h.shape == (2 * D, 2, 4) and torch.equal(h, torch.zeros_like(h))
    out, state = m(torch.randn(6, 0, 3))
    h = state[0] if isinstance(state, tuple) else state
    assert out.shape == (6, 0, 4 * D) and h.shape == (2 * D, 0, 4)
    h0 = torch.randn(2 * D, 2, 4)
    hx = (h0, torch.randn(2 * D, 2, 4)) if cls is gatedrnn.LSTM else h0
    _, state = m(torch.randn(0, 2, 3), hx)
    assert torch.equal(state[0] if isinstance(state, tuple) else state, h0), "zero steps leave the state as given"


def test_dropout_one_is_taken_as_torch_nn_takes_it():
    """dropout=1 drops every lower layer's output, as in torch.nn."""
    torch.manual_seed(0)
    ours = gatedrnn.LSTM(3, 4, num_layers=2, bidirectional=True, dropout=1.0)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, dropout=1.0)
    theirs.load_state_dict(ours.state_dict())
    assert ours.bidirectional is True and ours.dropout == 1.0
    x = torch.randn(5, 2, 3)
    for mode in (True, False):
        a, b = ours.train(mode)(x), theirs.train(mode)(x)
        assert torch.allclose(a[0], b[0], atol=1e-6) and all(
            torch.allclose(s, t, atol=1e-6) for s, t in zip(a[1], b[1])
        )


def _outcome(call) -> Exception | None:
    """What ``call()`` raised, None if nothing."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 (the class is what is compared)
        return error
    return None


def _raised(call) -> Exception:
    error = _outcome(call)
    assert error is not None, "no error raised"
    return error


_LAYER_MISTAKES = {
    "input size": lambda m, hx: m(torch.randn(5, 2, 7)),
    "packed input size": lambda m, hx: m(pack_padded_sequence(torch.randn(5, 2, 7), [5, 3])),
    "2-D state for batched input": lambda m, hx: m(torch.randn(5, 2, 3), hx(2, 4)),
    "3-D state for unbatched input": lambda m, hx: m(torch.randn(5, 3), hx(1, 1, 4)),
    "state batch": lambda m, hx: m(torch.randn(5, 2, 3), hx(1, 3, 4)),
    "state layers": lambda m, hx: m(torch.randn(5, 2, 3), hx(2, 2, 4)),
    "state size": lambda m, hx: m(torch.randn(5, 2, 3), hx(1, 2, 5)),
    "input dtype": lambda m, hx: m(torch.randn(5, 2, 3, dtype=torch.float64)),
    "integer input": lambda m, hx: m(torch.ones(5, 2, 3, dtype=torch.long)),
    "state dtype": lambda m, hx: m(torch.randn(5, 2, 3), hx(1, 2, 4, dtype=torch.float64)),
    "input device": lambda m, hx: m(torch.randn(5, 2, 3, device="meta")),
}


def _compare_with_torch_nn(name: str, mistake) -> BaseException:
    """Make ``mistake(module, hx)`` with torch.nn's module ``name`` and with ours (``hx(*shape)``
    builds a state of that shape, an (h, c) pair for the LSTM), and check that ours is an instance
    of the class torch.nn raised; returns ours."""

    def hx(*shape, **kw):
        h = torch.zeros(*shape, **kw)
        return (h, torch.zeros(*shape, **kw)) if name.startswith("LSTM") else h

    theirs = _raised(lambda: mistake(getattr(torch.nn, name)(3, 4), hx))
    ours = _raised(lambda: mistake(getattr(gatedrnn, name)(3, 4), hx))
    assert isinstance(theirs, (RuntimeError, ValueError)), f"torch.nn raised {theirs!r}"
    assert isinstance(ours, type(theirs)), f"torch.nn raised {type(theirs).__name__}, we raised {ours!r}"
    assert isinstance(ours, (ValueError, TypeError))
    assert "expected" in str(ours) or "but the parameters" in str(ours), str(ours)
    return ours


@pytest.mark.parametrize("mistake", list(_LAYER_MISTAKES))
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_a_bad_call_raises_an_error_of_the_class_torch_nn_raises(name, mistake):
    """Code written against torch.nn catches our errors as it caught torch's: where torch.nn
    raises a RuntimeError (sizes, shapes, devices) or a ValueError (the input's dtype), ours is one
    too, besides being the ValueError or TypeError that says what was expected."""
    _compare_with_torch_nn(name, _LAYER_MISTAKES[mistake])


_CELL_MISTAKES = {
    "input size": lambda c, hx: c(torch.randn(2, 7)),
    "state shape": lambda c, hx: c(torch.randn(2, 3), hx(3, 4)),
    "input dtype": lambda c, hx: c(torch.randn(2, 3, dtype=torch.float64), hx(2, 4)),
    "state dtype": lambda c, hx: c(torch.randn(2, 3), hx(2, 4, dtype=torch.float64)),
}


@pytest.mark.parametrize("mistake", list(_CELL_MISTAKES))
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_a_bad_step_raises_an_error_of_the_class_torch_nn_raises(name, mistake):
    _compare_with_torch_nn(name, _CELL_MISTAKES[mistake])


@pytest.mark.parametrize("dropout", [True, "0.1", torch.tensor(0.1)], ids=["bool", "str", "tensor"])
def test_a_dropout_that_is_not_a_number_is_the_value_error_torch_nn_raises(dropout):
    theirs = _raised(lambda: torch.nn.LSTM(3, 4, dropout=dropout))
    ours = _raised(lambda: gatedrnn.LSTM(3, 4, dropout=dropout))
    assert isinstance(theirs, ValueError) and isinstance(ours, (ValueError, TypeError))
    assert "dropout must be a number" in str(ours)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_numpy_hyperparameters_are_taken():
    """A sweep's numpy integers (np.random.choice) size a module as Python's do, and a cell takes a
    numpy bool; a layer's bool arguments take Python bools only, as torch.nn's
    (test_a_bool_argument_is_taken_or_refused_as_torch_nn_does)."""
    module = gatedrnn.LSTM(np.int64(3), np.int64(4), num_layers=np.int64(2), bidirectional=True, proj_size=np.int64(2))
    assert (module.input_size, module.hidden_size, module.num_layers, module.proj_size) == (3, 4, 2, 2)
    assert all(type(v) is int for v in (module.input_size, module.hidden_size, module.num_layers, module.proj_size))
    assert module(torch.randn(5, 2, 3))[0].shape == (5, 2, 4)
    cell = gatedrnn.GRUCell(np.int64(3), np.int64(4), bias=np.bool_(False))
    assert cell.bias is False and cell.bias_ih is None and cell(torch.randn(2, 3)).shape == (2, 4)


BOOL_VALUES = {
    "True": True,
    "False": False,
    "0": 0,
    "1": 1,
    "2": 2,
    "np.True_": np.True_,
    "np.False_": np.False_,
    "np.int64(0)": np.int64(0),
    "np.int64(1)": np.int64(1),
    "1.0": 1.0,
    "0.0": 0.0,
    "'yes'": "yes",
    "''": "",
    "None": None,
}
"""What a user may pass for a bool argument: Python and numpy bools and ints, floats, strings, None."""

LAYERS, CELLS = ("LSTM", "GRU", "RNN"), ("LSTMCell", "GRUCell", "RNNCell")
BOOL_ARGUMENTS = [(name, argument) for name in LAYERS for argument in ("bias", "batch_first", "bidirectional")]
BOOL_ARGUMENTS += [(name, "bias") for name in CELLS]


def _build_and_run(library, name: str, argument: str, value: object):
    """``library.<name>(3, 4, <argument>=value)`` run on a batch (torch.nn's layers refuse a
    ``bidirectional`` that is not a bool only in forward); returns the module."""
    module = getattr(library, name)(3, 4, **{argument: value})
    module(torch.randn(2, 3) if name.endswith("Cell") else torch.randn(5, 2, 3))
    return module


@pytest.mark.parametrize(
    "name, argument, value",
    [
        pytest.param(name, argument, value, id=f"{name}-{argument}-{value_id}")
        for name, argument in BOOL_ARGUMENTS
        for value_id, value in BOOL_VALUES.items()
    ],
)
def test_a_bool_argument_is_taken_or_refused_as_torch_nn_does(name, argument, value):
    """A layer's bias, batch_first and bidirectional and a cell's bias: what torch.nn's module
    builds and runs with ours does too, with the same parameters; what torch.nn refuses (when
    built or in forward) ours refuses with an error of the same class."""
    theirs = _outcome(lambda: _build_and_run(torch.nn, name, argument, value))
    ours = _outcome(lambda: _build_and_run(gatedrnn, name, argument, value))
    if theirs is None:
        assert ours is None, f"torch.nn took {argument}={value!r}, we raised {ours!r}"
        made = (getattr(library, name)(3, 4, **{argument: value}) for library in (torch.nn, gatedrnn))
        assert set(next(made).state_dict()) == set(next(made).state_dict())
    else:
        assert isinstance(ours, type(theirs)), f"torch.nn raised {theirs!r}, we raised {ours!r}"


def test_a_message_names_a_numpy_type_with_its_module():
    """numpy 2's bool is called ``bool`` too: "should be of type bool, got: bool" would say nothing."""
    assert (check.type_name(True), check.type_name(torch.ones(1)), check.type_name(np.int64(1))) == (
        "bool",
        "Tensor",
        "numpy.int64",
    )
    assert check.type_name(np.True_) in ("numpy.bool", "numpy.bool_")  # numpy 2, numpy 1
    given = rf"{re.escape(check.type_name(np.True_))} \({re.escape(repr(np.True_))}\)"
    with pytest.raises(TypeError, match=rf"got: {given}"):
        gatedrnn.GRU(3, 4, batch_first=np.True_)


@pytest.mark.parametrize("value", BOOL_VALUES.values(), ids=BOOL_VALUES.keys())
@pytest.mark.parametrize("argument", ["bias", "batch_first", "bidirectional"])
def test_layer_flag_takes_what_torch_nn_layers_run_with(argument, value):
    """_checks.layer_flag: a Python bool is taken as it is; anything else is the TypeError torch.nn's
    GRU raises (when built, or for bidirectional in forward), saying what was expected and given."""
    theirs = _outcome(lambda: _build_and_run(torch.nn, "GRU", argument, value))
    if theirs is None:
        assert check.layer_flag("GRU", argument, value) is value
    else:
        assert isinstance(theirs, TypeError)
        given = re.escape(check.type_name(value))
        expected = rf"GRU: {argument} should be of type bool \(True or False\), got: {given} \("
        with pytest.raises(TypeError, match=expected):
            check.layer_flag("GRU", argument, value)


@pytest.mark.parametrize("value", BOOL_VALUES.values(), ids=BOOL_VALUES.keys())
def test_cell_bias_takes_what_torch_nn_cells_take(value):
    """_checks.cell_bias: any value, biases where torch.nn's cell builds them (by the value's truth)."""
    theirs = torch.nn.GRUCell(3, 4, bias=value)
    assert check.cell_bias(value) is (theirs.bias_ih is not None)


def test_cell_bias_without_a_truth_value_raises_what_torch_nn_raises():
    theirs = _raised(lambda: torch.nn.RNNCell(3, 4, bias=torch.ones(2)))
    assert isinstance(_raised(lambda: check.cell_bias(torch.ones(2))), type(theirs))


def test_dropout_on_a_single_layer_warns_as_torch_nn_does():
    with pytest.warns(
        UserWarning,
        match=r"dropout option adds dropout after all but last recurrent layer.*"
        r"got dropout=0.5 and num_layers=1",
    ):
        gatedrnn.GRU(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gatedrnn.GRU(3, 4, num_layers=2, dropout=0.5)
