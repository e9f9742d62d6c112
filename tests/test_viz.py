"""The gate viewer's page generator, figures and memory-span analysis (no browser: see
test_browser.py)."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import gatedrnn
from gatedrnn.tasks.charlm import bits_per_char, corpus_vocab
from gatedrnn.viz import commands, demo, plots
from gatedrnn.viz.charmodel import CharModel, recurrent_step
from gatedrnn.viz.loading import SHIPPED, UsageError, _vocab, shipped_path
from gatedrnn.viz.page import GateRecord, page_data, render_page, write_gates_html
from gatedrnn.viz.plots import MAX_WORD_TICKS, _band, _word_ticks, informative_units, plot_gates, plot_memory_span
from gatedrnn.viz.span import (
    BEYOND,
    WINDOW,
    distance_curve,
    influence,
    mean_distance,
    measure_span,
    probe_positions,
    span_below,
    span_result,
    states,
    summary_lines,
    to_band,
    total_influence,
    word_positions,
)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The commands set torch's thread count for their process; give other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


SENTENCE = "John wanted to visit his friend's house, but he couldn't find the address. He spent hours searching for it."


CELLS = ("lstm", "gru", "rnn", "slstm", "mingru", "minlstm")

SHOWN = {
    "lstm": ("i", "f", "g", "o", "c", "h"),
    "gru": ("r", "z", "n", "h"),
    "rnn": ("h",),
    "slstm": ("i", "f", "z", "o", "c", "n", "m"),
    "mingru": ("z",),
    "minlstm": ("f", "i"),
}
"""What the viewer shows of each built-in cell."""

RETENTION = {
    "lstm": "mean f (retention)",
    "gru": "mean z (retention)",
    "slstm": "mean f (retention)",
    "mingru": "mean 1 - z (retention)",
    "minlstm": "mean f (retention)",
}


def traced(cell: str, text: str, hidden: int = 6, layers: int = 2) -> GateRecord:
    """A GateRecord from gatedrnn.inspect_gates on a small random module, one input per char (an
    sLSTM with one head per two units)."""
    torch.manual_seed(0)
    options = {"num_heads": hidden // 2} if cell == "slstm" else {}
    module = gatedrnn.Recurrent(cell, 3, hidden, num_layers=layers, **options)
    trace = gatedrnn.inspect_gates(module, torch.randn(len(text), 1, 3))
    per_layer = [{n: v[:, 0].detach().numpy() for n, v in trace.gates[(k, 0)].items()} for k in range(layers)]
    return GateRecord(text=text, cell=cell, layers=per_layer, cell_config=module.cell_config)


def embedded_data(html: str) -> dict:
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


@pytest.mark.parametrize("cell", CELLS)
def test_page_carries_every_gate_of_every_unit(cell):
    text = "ab\ncd e"
    record = traced(cell, text)
    data = embedded_data(render_page(record))
    assert data["text"] == list(text)
    assert data["names"] == list(SHOWN[cell])
    for k, layer in enumerate(record.layers):
        for name, values in layer.items():
            # stored unit-major (H, T), rounded to 4 digits
            np.testing.assert_allclose(np.array(data["layers"][k][name]), values.T, atol=1e-4)
    orders = set(data["scores"])
    assert {"activity (std of h)", "activity (std of c)", "activity (std of z)", "activity (std of f)"} & orders
    assert (RETENTION.get(cell) in orders) or cell == "rnn"


@pytest.mark.parametrize("cell", ["slstm", "mingru", "minlstm"])
def test_the_newer_cells_pages_describe_and_order_by_their_own_retention(cell):
    """The sLSTM's effective f' after stabilisation, the minGRU's 1 - z and the minLSTM's
    normalised f' order the units by retention; every shown name has the family's description
    (the sLSTM's n is its normaliser, not the GRU's candidate); the page opens on the memory."""
    record = traced(cell, "hello world")
    data = page_data(record)
    family = record.cell_config
    assert data["descriptions"] == {n: family.descriptions[n] for n in SHOWN[cell]}
    assert "normaliser" in data["descriptions"].get("n", "normaliser")
    kept = {"slstm": lambda v: v["f"], "mingru": lambda v: 1 - v["z"], "minlstm": lambda v: v["f"]}[cell]
    for k, layer in enumerate(record.layers):
        np.testing.assert_allclose(data["scores"][RETENTION[cell]][k], kept(layer).mean(0), atol=1e-4)
    assert data["initial"] == {"slstm": "c", "mingru": "z", "minlstm": "f"}[cell]
    assert data["title"] == f"gate viewer: {family.title()}" and family.title().lower() == cell


def test_retention_order_is_the_mean_forget_gate():
    record = traced("lstm", "hello world")
    scores = page_data(record)["scores"]["mean f (retention)"]
    np.testing.assert_allclose(scores[1], record.layers[1]["f"].mean(0), atol=1e-4)


def test_page_is_self_contained_and_escapes_the_text(tmp_path):
    text = 'x</script><script>alert(1)</script> "q" & <b>'
    path = write_gates_html(traced("gru", text), tmp_path / "sub" / "gates.html")
    html = path.read_text()
    # the only way out of the data block is a literal "</" which must not appear in the JSON
    assert html.count("</script>") == 2
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "@import" not in html and "fetch(" not in html
    assert embedded_data(html)["text"] == list(text)


def test_no_less_than_sign_reaches_the_data_block():
    """A title with "<!--<script" (a model's file name) would keep the HTML parser from ever
    closing the data block (the browser test shows the page then renders); every "<" of the
    JSON is written as its escape, which JSON reads back as the same character."""
    record = traced("lstm", "a<b")
    record.title = "<!--<script> model </script>"
    html = render_page(record)
    block = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert "<" not in block
    data = embedded_data(html)
    assert data["title"] == record.title and data["text"] == ["a", "<", "b"]


def test_unknown_positions_reach_the_page():
    record = traced("rnn", "a[b]")
    record.unknown = [1, 3]
    assert page_data(record)["unknown"] == [1, 3]


def test_bad_records_are_refused_with_what_was_expected():
    good = traced("lstm", "abc")
    with pytest.raises(ValueError, match="text is empty"):
        GateRecord(text="", cell="lstm", layers=good.layers)
    with pytest.raises(ValueError, match="cell must be one of"):
        GateRecord(text="abc", cell="mlp", layers=good.layers)
    with pytest.raises(ValueError, match=r"lacks \['c'\]"):
        GateRecord(text="abc", cell="lstm", layers=[{k: v for k, v in good.layers[0].items() if k != "c"}])
    with pytest.raises(ValueError, match=r"expected shape \(T=4, H\)"):
        GateRecord(text="abcd", cell="lstm", layers=good.layers)
    with pytest.raises(ValueError, match="outside the text"):
        GateRecord(text="abc", cell="lstm", layers=good.layers, unknown=[3])


def test_the_page_title_is_html_escaped():
    """A title (a model's file name) with "</title><script>" must not run as a script."""
    record = traced("rnn", "ab")
    record.title = "</title><script>alert(1)</script> & co"
    html = render_page(record)
    assert "<title>&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt; &amp; co</title>" in html
    assert html.count("<script") == 2


def test_page_orders_ranges_and_opening_quantity():
    """activity = std of h per unit; the page opens on c (LSTM) or h (GRU, RNN); sigmoid gates
    span [0, 1], g and n [-1, 1], states none."""
    for cell, initial in (("lstm", "c"), ("gru", "h"), ("rnn", "h")):
        record = traced(cell, "hello world")
        data = page_data(record)
        assert data["initial"] == initial
        np.testing.assert_allclose(data["scores"]["activity (std of h)"][1], record.layers[1]["h"].std(0), atol=1e-4)
    lstm, gru = page_data(traced("lstm", "ab"))["ranges"], page_data(traced("gru", "ab"))["ranges"]
    assert lstm == {"i": (0.0, 1.0), "f": (0.0, 1.0), "g": (-1.0, 1.0), "o": (0.0, 1.0), "c": None, "h": None}
    assert gru == {"r": (0.0, 1.0), "z": (0.0, 1.0), "n": (-1.0, 1.0), "h": None}


def test_unknown_positions_are_sorted_once_and_scores_need_every_layer():
    record = traced("rnn", "a[b]")
    record.unknown = [3, 1, 3]
    assert page_data(record)["unknown"] == [1, 3]
    for given in (1, 3):
        with pytest.raises(ValueError, match=f"expected 2 layers, got {given}"):
            GateRecord(
                text="ab", cell="rnn", layers=traced("rnn", "ab").layers, unit_scores={"s": [np.zeros(6)] * given}
            )


def test_informative_units_are_the_most_varying():
    h = np.zeros((5, 4))
    h[:, 2] = [0, 1, 0, 1, 0]
    h[:, 0] = [0, 0.1, 0, 0, 0]
    assert informative_units({"h": h}, 2).tolist() == [2, 0]


def test_gates_png_has_one_panel_per_layer_and_quantity(tmp_path):
    record = traced("lstm", SENTENCE[:30], hidden=20, layers=2)
    path = plot_gates(record, tmp_path / "gates.png", units_per_layer=8)
    with Image.open(path) as im:
        width, height = im.size
    assert width > 800 and height > 12 * 100  # 2 layers x 6 quantities stacked


# --- memory span -------------------------------------------------------------------------------


def decay(T: int, a: float, scale: float = 1.0) -> np.ndarray:
    """J[t, s, 0] = scale * a^(t - s) for s <= t, (T, T, 1): a per-unit influence that decays geometrically."""
    return scale * np.tril(a ** np.subtract.outer(np.arange(T), np.arange(T)).clip(0))[..., None]


def linear_step(a: float, W: torch.Tensor):
    """h_t = a h_{t-1} + x_t W: d h_t / d x_s = a^(t-s) W^T for s <= t, so J[t,s] = a^(t-s) ||W||_F."""
    return lambda x_t, h: a * h + x_t @ W


@pytest.mark.parametrize("window", [9, 20, 4], ids=["window=T", "window>T", "window<T"])
def test_influence_of_a_linear_recurrence_is_geometric(window):
    torch.manual_seed(0)
    T, D, H, a = 9, 3, 4, 0.5
    W = torch.randn(D, H, dtype=torch.float64)
    got = influence(
        linear_step(a, W),
        torch.randn(T, D, dtype=torch.float64),
        torch.zeros(H, dtype=torch.float64),
        {"h": slice(0, H)},
        window=window,
    )
    Wd = min(window, T)
    assert got.band["h"].shape == (T, Wd) and got.unit_sum["h"].shape == (Wd, H)
    t, d = np.arange(T)[:, None], np.arange(Wd)[None, :]
    np.testing.assert_allclose(got.band["h"], np.where(d <= t, a**d * torch.linalg.norm(W).item(), 0.0), rtol=1e-12)
    # unit k, distance d: T - d states, each a^d ||W[:, k]||
    np.testing.assert_allclose(got.unit_sum["h"], (T - d.T) * a**d.T * torch.linalg.norm(W, dim=0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(got.unit_curve("h")[2], a**2 * torch.linalg.norm(W, dim=0).numpy(), rtol=1e-12)


MODULES = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn": gatedrnn.RNN}

VARIANTS = [
    ("lstm", {}),
    ("gru", {}),
    ("rnn", {}),
    ("lstm", {"variant": "fgr"}),
    ("lstm", {"variant": "peephole"}),
    ("lstm", {"proj_size": 3}),
    ("lstm", {"zoneout": 0.3}),
    ("gru", {"layer_norm": True}),
    ("slstm", {"num_heads": 5}),
    ("slstm", {"num_heads": 1, "forget_gate": "exp"}),
    ("mingru", {}),
    ("minlstm", {}),
]


def two_layer_module(cell: str, **options):
    torch.manual_seed(1)
    layer = MODULES.get(cell, functools.partial(gatedrnn.Recurrent, cell))
    return layer(3, 5, num_layers=2, dtype=torch.float64, **options).eval()


def recorded(module, trace: gatedrnn.GateTrace, name: str, layer: int) -> torch.Tensor | None:
    """Layer ``layer``'s state ``name`` (T, H) as inspect_gates records it, or the module's output for
    the top layer's h where the family does not record h (sLSTM, minGRU, minLSTM); else None."""
    if name in trace.gates[(layer, 0)]:
        return trace.gates[(layer, 0)][name][:, 0]
    if name == module.cell_config.states[0] and layer == module.num_layers - 1:
        return trace.output[:, 0]
    return None


def checkable(module, groups) -> list:
    """The (name, layer) groups of recurrent_step that :func:`recorded` can check."""
    trace = gatedrnn.inspect_gates(module, torch.zeros(1, 1, 3, dtype=torch.float64))
    return [key for key in groups if recorded(module, trace, *key) is not None]


def full_per_unit(module, x: torch.Tensor, keys) -> np.ndarray:
    """J[t, s, k] (T, T, 5 len(keys)) from the full Jacobian of what inspect_gates records (the
    states named by ``keys``: (name, layer) pairs), by forward-mode autograd (torch.func.jacfwd)."""

    def fn(x):  # (T, D) -> (T, 5 len(keys))
        trace = gatedrnn.inspect_gates(module, x.unsqueeze(0 if module.batch_first else 1))  # (T, 1, H) each
        return torch.cat([recorded(module, trace, name, k) for name, k in keys], dim=-1)

    full = torch.func.jacfwd(fn)(x)  # (T, K, T, D)
    return full.detach().pow(2).sum(-1).sqrt().permute(0, 2, 1).numpy()  # (t, s, k)


@pytest.mark.parametrize("window", [7, 3, 1], ids=["every-distance", "window-3", "window-1"])
@pytest.mark.parametrize(
    "cell, options", VARIANTS, ids=[c + "".join(f"-{k}={v}" for k, v in o.items()) for c, o in VARIANTS]
)
def test_influence_matches_the_full_jacobian(cell, options, window):
    """Every layer's h (before any projection) and c, through recurrent_step, against the full
    Jacobian of the module's recorded states; with a window, the Jacobian's band d < window."""
    module = two_layer_module(cell, **options)
    x = torch.randn(7, 3, dtype=torch.float64)
    step, z0, groups = recurrent_step(module)
    keys = checkable(module, groups)
    assert ("h", 1) in keys
    expected = full_per_unit(module, x, keys)
    got = influence(step, x, z0, groups, window=window)
    for i, key in enumerate(keys):
        units = to_band(expected[..., 5 * i : 5 * (i + 1)], window)  # (T, W, 5)
        np.testing.assert_allclose(got.unit_sum[key], units.sum(0), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got.band[key], np.sqrt((units**2).sum(-1)), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "cell, options", VARIANTS, ids=[c + "".join(f"-{k}={v}" for k, v in o.items()) for c, o in VARIANTS]
)
def test_recurrent_step_runs_the_module(cell, options):
    """The flat one-step map's states are the module's: its output and every layer's recorded h, c."""
    module = two_layer_module(cell, **options)
    x = torch.randn(6, 3, dtype=torch.float64)
    step, z0, groups = recurrent_step(module)
    with torch.no_grad():
        zs = states(step, x, z0)[1:]  # (T, S)
        trace = gatedrnn.inspect_gates(module, x.unsqueeze(1))
    assert set(groups) == {(n, k) for n in module.cell_config.states for k in range(2)}
    for name, k in checkable(module, groups):
        rows = groups[(name, k)]
        torch.testing.assert_close(zs[:, rows], recorded(module, trace, name, k), rtol=1e-12, atol=1e-14)
    if not options.get("proj_size"):
        torch.testing.assert_close(zs[:, groups[("h", 1)]], trace.output[:, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("window", [0, -1, 2.5, True, "3"])
def test_bad_window_is_refused(window):
    with pytest.raises(ValueError, match=f"window must be an integer >= 1 .*got {re.escape(repr(window))}"):
        influence(linear_step(0.5, torch.eye(2)), torch.zeros(3, 2), torch.zeros(2), {"h": slice(0, 2)}, window=window)


def char_model_around(rnn: nn.Module, features: int, hidden: int) -> CharModel:
    """``rnn`` (input size ``features``, output size ``hidden``) between an embedding of the charlm
    vocabulary (and the unknown symbol) and a linear head."""
    vocab = corpus_vocab()
    model = nn.ModuleDict(
        {"embedding": nn.Embedding(len(vocab) + 1, features), "rnn": rnn, "head": nn.Linear(hidden, len(vocab) + 1)}
    )
    return CharModel.from_module(model, vocab)


def constructed_char_model(cell: str, hidden: int = 8, features: int = 4) -> CharModel:
    """A char model whose memory is known by construction.

    RNN: h_t = tanh(0.5 h_{t-1} + W x_t), so ||dh_t/dx_s|| <= 0.5^(t-s) ||W||: below 1% of the
    peak within about 7 characters. LSTM: forget gate sigmoid(8) = 0.9997 and no recurrent
    weights, so c_t keeps each small update i g for hundreds of steps and h_t = o_t tanh(c_t)
    still depends on it at the end of the sentence.
    """
    torch.manual_seed(0)
    rnn = {"lstm": gatedrnn.LSTM, "rnn": gatedrnn.RNN}[cell](features, hidden, batch_first=True)
    with torch.no_grad():
        for p in rnn.parameters():
            p.zero_()
        if cell == "rnn":
            rnn.weight_ih_l0.normal_(0.0, 0.5)
            rnn.weight_hh_l0.copy_(0.5 * torch.eye(hidden))
        else:
            H = hidden
            rnn.weight_ih_l0.normal_(0.0, 0.1)  # i, f, g, o rows: small input dependence
            rnn.bias_ih_l0[H : 2 * H] = 8.0  # f = sigmoid(8 + small)
    return char_model_around(rnn, features, hidden)


def test_span_is_causal_and_a_plain_rnn_forgets_sooner_than_an_lstm():
    (rnn,), _ = constructed_char_model("rnn").span(SENTENCE)
    (lstm, lstm_c), distances = constructed_char_model("lstm").span(SENTENCE)
    assert (lstm.label, lstm_c.label, lstm_c.quantity) == ("LSTM", "LSTM c", "c")
    assert set(distances) == {"h", "c"} and distances["c"][0].shape == (8,)
    T = len(SENTENCE)
    assert T < WINDOW
    for r in (rnn, lstm, lstm_c):
        assert r.band.shape == (T, T) and not r.windowed
        # causality: a state never depends on a later input; J[t, s] as a triangle
        assert np.all(r.triangle()[np.triu_indices(T, 1)] == 0.0)
        assert np.all(r.band[np.arange(T)[:, None] < np.arange(T)[None, :]] == 0.0)
        assert np.all(r.band[:, 0] > 0)
    assert rnn.span is not None and rnn.span <= 8
    assert lstm.span is None  # still above 1% of the peak at the far end of the sentence
    john, hours = word_positions(SENTENCE, "John"), word_positions(SENTENCE, "hours").stop - 1
    assert rnn.relative(hours, john) < 1e-20 < 1e-2 < lstm.relative(hours, john)


@pytest.mark.parametrize("window", [WINDOW, 25], ids=["text-inside-the-window", "window-25"])
def test_char_model_span_is_that_of_the_full_jacobian(window):
    """CharModel.span against the (T, T, H) analysis of the full Jacobian: identical when the text
    fits the window (what the viewer reported before the window), and its band d < 25 otherwise."""
    model, text = constructed_char_model("lstm"), SENTENCE[:60]
    ids, _ = model.encode(text)
    rnn = copy.deepcopy(model.rnn).double().eval()
    with torch.no_grad():
        x = model.embedding(ids).double()
    full = full_per_unit(rnn, x, [("h", 0), ("c", 0)])  # (T, T, 16)
    (h, c), distances = model.span(text, window=window)
    for got, per_unit in ((h, full[..., :8]), (c, full[..., 8:])):
        expected = measure_span(got.label, text, per_unit, got.quantity, window=window)
        assert got.window == min(window, len(text)) and got.windowed == (window < len(text))
        for name in ("band", "curve", "unit_mean_distance"):
            np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-10, atol=1e-14)
        assert got.span == expected.span and got.unit_span.tolist() == expected.unit_span.tolist()
        if window >= len(text):  # every distance: the curve of the (T, T) J, as before the window
            np.testing.assert_allclose(got.curve, distance_curve(total_influence(per_unit)), rtol=1e-10)
    np.testing.assert_allclose(distances["c"][0], c.unit_mean_distance, rtol=1e-12)


def two_layer_char_model() -> CharModel:
    torch.manual_seed(0)
    return char_model_around(gatedrnn.LSTM(4, 5, num_layers=2), features=4, hidden=5)


def test_a_two_layer_model_measures_and_records_each_layer():
    """The span results are the top layer's h and c; the per-layer distances are each layer's;
    record() gives each layer its own gates."""
    model, text = two_layer_char_model(), "It is a truth"
    ids, _ = model.encode(text)
    rnn = model.rnn.double().eval()
    model.embedding.double()
    with torch.no_grad():
        x = model.embedding(ids)
    full = full_per_unit(rnn, x, [("h", 0), ("h", 1), ("c", 1)])  # (T, T, 15)
    (h, c), distances = model.span(text)
    np.testing.assert_allclose(h.band, measure_span("", text, full[..., 5:10]).band, rtol=1e-10)
    np.testing.assert_allclose(c.band, measure_span("", text, full[..., 10:]).band, rtol=1e-10)
    np.testing.assert_allclose(distances["h"][0], measure_span("", text, full[..., :5]).unit_mean_distance, rtol=1e-10)
    np.testing.assert_allclose(distances["h"][1], h.unit_mean_distance, rtol=1e-10)
    record = model.record(text)
    trace = gatedrnn.inspect_gates(rnn, x.unsqueeze(1))
    for k in range(2):
        np.testing.assert_allclose(record.layers[k]["h"], trace.gates[(k, 0)]["h"][:, 0].detach().numpy(), rtol=1e-5)


def test_sampling_never_draws_the_unknown_symbol_and_takes_length_zero():
    """Greedy sampling with the unknown symbol's logit the largest still draws known characters;
    length 0 is allowed and draws nothing."""
    model = two_layer_char_model()
    with torch.no_grad():
        model.head.bias[0] = 1e6
    text = model.sample("It", 10, 0.0, None)
    assert len(text) == 10 and all(ch in model.vocab for ch in text)
    assert model.sample("It", 0, 0.8, torch.Generator().manual_seed(0)) == ""


def test_a_window_shorter_than_the_text_is_said_so():
    """Beyond the window nothing is measured: relative() says None, the span "> W-1 (window)" and
    the summary names the window and "beyond the window" for the probe."""
    T = len(SENTENCE)
    r = measure_span("LSTM", SENTENCE, decay(T, 0.97), window=50)
    john, hours = word_positions(SENTENCE, "John"), word_positions(SENTENCE, "hours").stop - 1
    assert r.window == 50 and r.windowed and r.span is None and r.curve.shape == (50,)
    assert r.relative(hours, john) is None  # distance 85..88 > 49
    assert r.relative(hours, slice(hours - 49, hours - 47)) == pytest.approx(0.97**48)  # d = 49, 48
    assert r.relative(hours, hours + 1) == 0.0  # a later input: no influence
    with pytest.raises(ValueError, match="needs every distance"):
        r.triangle()
    lines = summary_lines([r], probe=("John", "hours"))
    assert "distances 0..49 measured (--span-window 50)" in lines[0]
    assert lines[2].split()[1:4] == [">", "49", "(window)"] and lines[2].endswith(BEYOND)
    full = measure_span("LSTM", SENTENCE, decay(T, 0.97))
    assert full.span_text() == f"> {T - 1}" and "span-window" not in summary_lines([full])[0]


def test_relative_is_to_the_state_s_own_strongest_input_within_the_window():
    """relative(t, s) = band[t, t - s] / max_d band[t, d]: independent of a global scale, not
    divided by another state's larger peak; None at d = W and for a word partly beyond W."""
    T = 60
    J = decay(T, 0.9, scale=5.0)
    J[T - 1] *= 0.1  # the last state's inputs are weaker than the others'
    r = measure_span("m", "x" * T, J, window=20)
    t = T - 1
    assert r.relative(t, t - 3) == pytest.approx(0.9**3)
    assert r.relative(t, t - 19) == pytest.approx(0.9**19)
    assert r.relative(t, t - 20) is None  # d = W: not measured
    assert r.relative(t, slice(t - 21, t - 17)) is None  # d = 18..21: partly beyond the window


def test_band_heatmap_is_over_position_and_distance():
    import matplotlib.pyplot as plt

    text = (SENTENCE + " ") * 19  # 2071 characters
    T, W = len(text), 64
    band = np.where(np.arange(T)[:, None] >= np.arange(W)[None, :], 0.9 ** np.arange(W)[None, :], 0.0)
    r = span_result("GRU", text, band, band.sum(0)[:, None])
    fig, ax = plt.subplots()
    im = _band(ax, r, [("John", slice(0, 4), 88), ("far", slice(0, 4), 1000)])
    image = im.get_array()
    assert image.shape == (W, T)  # rows: distance d (origin at the bottom), columns: position t
    assert np.ma.is_masked(image[5, 3]) or np.isnan(image[5, 3])  # d > t: no input that far back
    np.testing.assert_allclose(image[10, 500], 0.9**10)
    assert "distance" in ax.get_ylabel() and "position" in ax.get_xlabel()
    assert any(BEYOND in t.get_text() for t in ax.texts)  # the "far" mark at d = 996..1000
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 0 < len(labels) <= MAX_WORD_TICKS and labels[0] == "John"
    plt.close(fig)


def test_word_ticks_thin_out_on_long_texts():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    _word_ticks(ax, SENTENCE, "x")
    assert len(ax.get_xticks()) == len(SENTENCE.split())  # every word of a short text
    _word_ticks(ax, (SENTENCE + " ") * 19, "y")
    ticks = ax.get_yticks()
    assert 0 < len(ticks) <= MAX_WORD_TICKS and all(((SENTENCE + " ") * 19)[int(t) - 1] == " " for t in ticks[1:])
    plt.close(fig)


def test_char_axis_labels_every_character_up_to_the_limit():
    fig, ax = plots.plt.subplots()
    plots._char_ticks(ax, "a" * plots.MAX_CHAR_TICKS)
    assert len(ax.get_xticks()) == plots.MAX_CHAR_TICKS
    plots.plt.close(fig)


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures plots.py would close, kept to look inside (closed at the end)."""
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    monkeypatch.undo()
    for fig in figures:
        plots.plt.close(fig)


def test_memory_span_png_of_a_windowed_text(tmp_path, kept_figures):
    text = (SENTENCE + " ") * 3
    T = len(text)
    results = [measure_span(n, text, decay(T, a), window=40) for n, a in [("RNN", 0.5), ("LSTM", 0.95)]]
    path = plot_memory_span(results, tmp_path / "memory_span.png", marks=[("John", slice(0, 4), 88)])
    with Image.open(path) as im:
        assert im.size[0] > 800 and im.size[1] > 800
    (fig,) = kept_figures
    renderer = fig.canvas.get_renderer()
    curves = fig.axes[-1]
    assert curves.get_title().startswith("influence of an input")
    beyond = [a for a in curves.texts if BEYOND in a.get_text()]
    assert [a.get_text() for a in beyond] == [f"John (d = 88): {BEYOND}"]
    inside, label = curves.get_window_extent(renderer), beyond[0].get_window_extent(renderer)
    assert inside.x0 <= label.x0 and label.x1 <= inside.x1 and inside.y0 <= label.y0 and label.y1 <= inside.y1
    legend = [t.get_text() for t in curves.get_legend().get_texts()]
    assert legend[1] == "LSTM: ||dh_t/dx_s|| (still above 1% at d = 39 (the window))", legend
    assert legend[0].endswith("(below 1% from d = 7)"), legend


def test_gates_png_marks_unknowns_and_draws_g_diverging(tmp_path, kept_figures):
    record = traced("lstm", "ab[cd", hidden=4, layers=1)
    record.unknown = [2]
    plots.plot_gates(record, tmp_path / "gates.png", units_per_layer=4)
    (fig,) = kept_figures
    heatmaps = [ax for ax in fig.axes if ax.get_ylabel().startswith("layer")]
    assert len(heatmaps) == 6
    for ax in heatmaps:
        assert [(line.get_xdata()[0], line.get_color(), line.get_linestyle()) for line in ax.lines] == [
            (2, "red", "--")
        ]
    g = next(ax for ax in heatmaps if ax.get_ylabel().endswith("\ng"))
    assert g.images[0].get_clim() == (-1.0, 1.0) and g.images[0].get_cmap().name == "RdBu"


def test_distance_curve_and_span():
    T, a = 40, 0.5
    J = decay(T, a)[..., 0]
    curve = distance_curve(J)
    np.testing.assert_allclose(curve, a ** np.arange(T))
    # 0.5^d < 0.01 first at d = 7 (0.5^6 = 0.0156)
    assert span_below(curve) == math.ceil(math.log(0.01) / math.log(a)) == 7
    assert span_below(np.ones(T)) is None
    # per column: a slower decay has the longer span, a flat column has none (-1)
    cols = np.stack([a ** np.arange(T), 0.9 ** np.arange(T), np.ones(T)], 1)
    assert span_below(cols).tolist() == [7, -1, -1]  # 0.9^39 = 0.016 still above


def test_span_edges_of_the_one_percent_rule():
    """A value exactly at 1% of the peak is not below it; a curve that falls below only at its
    last measured distance has that distance as its span, not None."""
    assert span_below(np.array([1.0, 0.5, 0.01, 0.001])) == 3
    assert span_below(np.array([1.0, 0.5, 0.2, 0.001])) == 3
    assert span_below(np.array([[1.0], [0.5], [0.2], [0.001]])).tolist() == [3]


def test_mean_distance_weights_each_distance_by_its_influence():
    """sum_d d c[d] / sum_d c[d]: distances start at 0."""
    assert mean_distance(np.array([1.0, 1.0])) == pytest.approx(0.5)
    assert mean_distance(np.array([0.0, 0.0, 2.0])) == pytest.approx(2.0)


def test_triangle_keeps_the_diagonal():
    """J[t, t] (d = 0) is the strongest influence: the triangle's diagonal is the band's column 0."""
    T = 6
    r = measure_span("m", "abcdef", decay(T, 0.5))
    np.testing.assert_array_equal(np.diag(r.triangle()), r.band[:, 0])
    assert np.all(np.diag(r.triangle()) > 0)


def test_summary_names_each_cell_and_the_probe():
    T = len(SENTENCE)
    results = [measure_span("RNN", SENTENCE, decay(T, 0.3)), measure_span("LSTM", SENTENCE, decay(T, 0.97))]
    lines = summary_lines(results, probe=("John", "hours"))
    assert results[0].span == 4 and results[1].span is None
    assert lines[2].split()[:2] == ["RNN", "4"] and lines[3].split()[:3] == ["LSTM", ">", str(T - 1)]
    hours = word_positions(SENTENCE, "hours").stop - 1
    # John's last character is at distance hours - 3 from the state at "hours"
    assert float(lines[3].split()[-1]) == pytest.approx(0.97 ** (hours - 3), rel=1e-2)


def test_summary_names_the_smallest_window_of_its_results():
    """Results measured with windows 30 and 50: the summary says distances 0..29."""
    T = len(SENTENCE)
    results = [
        measure_span("A", SENTENCE, decay(T, 0.5), window=30),
        measure_span("B", SENTENCE, decay(T, 0.5), window=50),
    ]
    assert "distances 0..29 measured (--span-window 30)" in summary_lines(results)[0]


def test_memory_span_png(tmp_path):
    T = len(SENTENCE)
    results = [measure_span(n, SENTENCE, decay(T, a)) for n, a in [("RNN", 0.5), ("LSTM", 0.95), ("GRU", 0.9)]]
    john, hours = word_positions(SENTENCE, "John"), word_positions(SENTENCE, "hours").stop - 1
    path = plot_memory_span(results, tmp_path / "memory_span.png", marks=[("John", john, hours)])
    with Image.open(path) as im:
        assert im.size[0] > 1200 and im.size[1] > 800


def test_memory_span_curves_and_marks(tmp_path, kept_figures):
    """Curves divided by their peak; a mark at distance exactly W is beyond the window; the band's
    x axis is the state position."""
    text = (SENTENCE + " ") * 2
    T = len(text)
    results = [measure_span("RNN", text, decay(T, 0.5, scale=7.0), window=40)]
    plots.plot_memory_span(results, tmp_path / "m.png", marks=[("edge", slice(100, 104), 140)])
    (fig,) = kept_figures
    curves = fig.axes[-1]
    line = next(ln for ln in curves.get_lines() if "||dh_t/dx_s||" in ln.get_label())
    assert max(line.get_ydata()) == pytest.approx(1.0)
    assert [t.get_text() for t in curves.texts if BEYOND in t.get_text()] == [f"edge (d = 40): {BEYOND}"]
    assert fig.axes[0].get_xlabel() == "state position t"


def test_triangle_labels_the_probe_with_the_word_s_strongest_input():
    T = len(SENTENCE)
    r = measure_span("LSTM", SENTENCE, decay(T, 0.95))
    john, hours = slice(0, 4), SENTENCE.index("hours") + 4
    fig, ax = plots.plt.subplots()
    plots._triangle(ax, r, [("John", john, hours)])
    assert [t.get_text() for t in ax.texts] == [f"John: {0.95 ** (hours - 3):.1e}"]
    plots.plt.close(fig)


def test_word_positions():
    assert word_positions(SENTENCE, "He") == slice(75, 77)
    assert word_positions(SENTENCE, "t", occurrence=1) == slice(12, 13)  # "wanted", then "to"
    with pytest.raises(ValueError, match="does not occur"):
        word_positions(SENTENCE, "Mary")


def test_probe_words_are_whole_words_on_both_sides():
    """ "John" inside "AJohn" is not the word John."""
    assert probe_positions("AJohn spent hours", "John", "hours") is None


# --- the commands: gatedrnn gates / sample on a small saved model ---------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny untrained charlm GRU saved in the exported form (<stem>.safetensors + <stem>.json)."""
    from safetensors.torch import save_file

    from gatedrnn.models import model_for_task
    from gatedrnn.tasks import make_task
    from gatedrnn.train import TrainConfig

    task = make_task("charlm")
    config = TrainConfig(task="charlm", cell="gru", hidden=12, embedding_dim=8)
    torch.manual_seed(0)
    model = model_for_task(task, "gru", hidden_size=12, embedding_dim=8)
    stem = tmp_path_factory.mktemp("model") / "tiny"
    save_file(model.state_dict(), str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps({"train": config.to_dict(), "task": task.describe()}))
    return stem.with_suffix(".safetensors")


def run_cli(*argv: str) -> int:
    from gatedrnn.viz.commands import add_subcommands

    parser = argparse.ArgumentParser(prog="gatedrnn")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_gates_command_writes_the_three_files(saved_model, tmp_path, capsys):
    text = SENTENCE + " [X]"
    assert run_cli("gates", text, "--model", str(saved_model), "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "3 character(s) outside GRU's vocabulary ('X' '[' ']')" in out
    assert re.search(r"^GRU\s+(\d+|> \d+)\s+[\d.]+\s+[\d.e+-]+$", out, re.M), out
    for name in ("gates.html", "gates.png", "memory_span.png"):
        assert (tmp_path / name).stat().st_size > 1000
    data = embedded_data((tmp_path / "gates.html").read_text())
    assert data["unknown"] == [len(text) - 3, len(text) - 2, len(text) - 1]
    assert list(data["scores"])[0] == "memory span of h (mean influence distance, chars)"


@pytest.mark.parametrize(
    "argv, message",
    [
        (("gates", "", "--model", "{model}"), "the text is empty"),
        (("gates", "   ", "--model", "{model}"), "the text is empty"),
        (("gates", "abc", "--model", "{tmp}/missing.safetensors"), "not found"),
        (("gates", "abc", "--model", "{tmp}/corrupt.safetensors"), "cannot read model"),
        (("gates", "abc", "--model", "{tmp}/nojson.safetensors"), "model config"),
        (("gates", "abc", "--model", "{tmp}/badjson.safetensors"), "is not valid JSON"),
        (("gates", "abc", "--model", "{model}", "--out", "{tmp}/corrupt.json"), "is a file: expected a directory"),
        (("gates", "abc", "--model", "{model}", "--out", "{tmp}/taken"), "taken/gates.png' is a directory"),
        (("gates", "abc", "--model", "{tmp}/adding.safetensors"), "trained on task 'adding'"),
        (("gates", "abc", "--model", "{tmp}"), "no checkpoint.json"),
        (
            ("gates", "abc", "--model", "{tmp}/novocab.safetensors"),
            "the model config has no task.vocab: expected the "
            "model's characters (a non-empty string or list of characters)",
        ),
        (
            ("gates", "abc", "--model", "{tmp}/intvocab.safetensors"),
            "the model config's task.vocab must be the model's "
            "characters (a non-empty string or list of characters), got int 5",
        ),
        (("gates", "abc", "--model", "{tmp}/repeatvocab.safetensors"), "task.vocab repeats the character(s) 'a'"),
        (
            ("gates", "a" * 2001, "--model", "{model}"),
            "the text has 2001 characters; `gatedrnn gates TEXT` takes at most 2000",
        ),
        (
            ("gates", "abc \udcff\udcfe def", "--model", "{model}"),
            "the text is not valid UTF-8: byte 0xff at character 4",
        ),
        (
            ("gates", "abc \ud800", "--model", "{model}"),
            "the text is not valid UTF-8: the lone surrogate U+D800 at character 4",
        ),
        (
            ("sample", "--model", "{model}", "--prompt", "It \udcff"),
            "the prompt is not valid UTF-8: byte 0xff at character 3",
        ),
        (("sample", "--model", "{model}", "--prompt", " "), "the prompt is empty"),
        (
            ("sample", "--model", "{model}", "--prompt", "a" * 2001),
            "the prompt has 2001 characters; `gatedrnn sample --prompt` takes at most 2000",
        ),
        (("sample", "--model", "{model}", "--prompt", "It", "--length", "-1"), "--length must be >= 0"),
        (
            ("sample", "--model", "{model}", "--prompt", "It", "--temperature", "-1"),
            "--temperature must be a finite number >= 0 (0 takes the most likely character), got -1.0",
        ),
        (
            ("sample", "--model", "{model}", "--prompt", "It", "--temperature", "nan"),
            "--temperature must be a finite number",
        ),
        (
            ("sample", "--model", "{model}", "--prompt", "It", "--temperature", "inf"),
            "--temperature must be a finite number",
        ),
    ],
    ids=[
        "empty",
        "blank",
        "missing",
        "corrupt",
        "no-json",
        "bad-json",
        "out-is-a-file",
        "output-is-a-dir",
        "other-task",
        "not-a-run",
        "no-vocab",
        "int-vocab",
        "repeated-vocab",
        "too-long",
        "not-utf8",
        "lone-surrogate",
        "prompt-not-utf8",
        "blank-prompt",
        "prompt-too-long",
        "negative-length",
        "negative-temperature",
        "nan-temperature",
        "inf-temperature",
    ],
)
def test_bad_input_gives_one_error_line(argv, message, saved_model, tmp_path, capsys):
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    (tmp_path / "corrupt.json").write_text(saved_model.with_suffix(".json").read_text())
    (tmp_path / "taken" / "gates.png").mkdir(parents=True)
    (tmp_path / "nojson.safetensors").write_bytes(saved_model.read_bytes())
    (tmp_path / "badjson.safetensors").write_bytes(saved_model.read_bytes())
    (tmp_path / "badjson.json").write_text('{"train": ')
    (tmp_path / "adding.safetensors").write_bytes(saved_model.read_bytes())
    meta = json.loads(saved_model.with_suffix(".json").read_text())
    (tmp_path / "adding.json").write_text(json.dumps({**meta, "task": {**meta["task"], "name": "adding"}}))
    for stem, vocab in [("novocab", None), ("intvocab", 5), ("repeatvocab", "a" + meta["task"]["vocab"][1:] + "a")]:
        (tmp_path / f"{stem}.safetensors").write_bytes(saved_model.read_bytes())
        task = {k: v for k, v in meta["task"].items() if k != "vocab"}
        (tmp_path / f"{stem}.json").write_text(
            json.dumps({**meta, "task": task if vocab is None else {**task, "vocab": vocab}})
        )
    argv = [a.format(model=saved_model, tmp=tmp_path) for a in argv]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_text_length_limits_are_inclusive(saved_model, tmp_path, capsys):
    """2000 characters are accepted; 2 characters get the memory span."""
    commands._check_text("a" * commands.MAX_TEXT, "gates")
    assert run_cli("gates", "ab", "--model", str(saved_model), "--out", str(tmp_path)) == 0
    assert "skipped" not in capsys.readouterr().out and (tmp_path / "memory_span.png").exists()


def test_sample_command_is_seeded(saved_model, capsys):
    assert run_cli("sample", "--model", str(saved_model), "--prompt", "It is", "--length", "30", "--seed", "3") == 0
    first = capsys.readouterr().out
    run_cli("sample", "--model", str(saved_model), "--prompt", "It is", "--length", "30", "--seed", "3")
    assert capsys.readouterr().out == first
    assert first.startswith("It is") and len(first) == len("It is") + 30 + 1  # print adds the newline


def test_a_vocabulary_saved_as_a_list_of_characters_loads_as_the_string(saved_model, tmp_path):
    from gatedrnn.viz.loading import load_char_model

    meta = json.loads(saved_model.with_suffix(".json").read_text())
    (tmp_path / "list.safetensors").write_bytes(saved_model.read_bytes())
    (tmp_path / "list.json").write_text(
        json.dumps({**meta, "task": {**meta["task"], "vocab": list(meta["task"]["vocab"])}})
    )
    assert load_char_model(tmp_path / "list.safetensors").vocab == meta["task"]["vocab"] == corpus_vocab()


def test_bad_vocabularies_and_cells_are_refused():
    with pytest.raises(UsageError, match="task.vocab must be the model's characters"):
        _vocab(["ab", "c"])
    with pytest.raises(UsageError, match=f"cell must be one of {', '.join(SHIPPED)}, got 'mlp'"):
        shipped_path("mlp")


def test_sampler_refuses_nan_and_inf_temperatures_and_takes_tiny_ones(saved_model):
    from gatedrnn.viz.loading import load_char_model

    model = load_char_model(saved_model)
    for temperature in (math.nan, math.inf, -0.5):
        with pytest.raises(ValueError, match=f"^temperature must be a finite number >= 0 .*, got {temperature}$"):
            model.sample("It", 5, temperature, torch.Generator().manual_seed(0))
    # a temperature so small that logits / temperature overflow is as greedy as temperature 0
    assert model.sample("It", 20, 1e-300, torch.Generator().manual_seed(0)) == model.sample("It", 20, 0.0, None)


def test_weights_that_do_not_match_their_config_are_refused(saved_model, tmp_path, capsys):
    meta = json.loads(saved_model.with_suffix(".json").read_text())
    (tmp_path / "wide.safetensors").write_bytes(saved_model.read_bytes())
    (tmp_path / "wide.json").write_text(json.dumps({**meta, "train": {**meta["train"], "hidden": 16}}))
    assert run_cli("gates", "abc", "--model", str(tmp_path / "wide.safetensors"), "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the weights do not match their config") and err.count("\n") == 1, err


def test_a_vocabulary_that_does_not_fit_the_embedding_is_one_error_line(saved_model, tmp_path, capsys):
    """The shapes agree with the config but the vocabulary has one character too few for the
    embedding: CharModel's ValueError becomes one error line, not a traceback."""
    meta = json.loads(saved_model.with_suffix(".json").read_text())
    (tmp_path / "short.safetensors").write_bytes(saved_model.read_bytes())
    (tmp_path / "short.json").write_text(
        json.dumps({**meta, "task": {**meta["task"], "vocab": meta["task"]["vocab"][:-1]}})
    )
    assert run_cli("gates", "abc", "--model", str(tmp_path / "short.safetensors"), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the weights do not match their config: the embedding has") and err.count("\n") == 1


def test_a_training_run_loads_and_exports_to_the_same_model(tmp_path):
    from gatedrnn.train import TrainConfig, train
    from gatedrnn.viz.loading import export_char_model, load_char_model

    run = tmp_path / "run"
    train(
        TrainConfig(
            task="charlm",
            cell="lstm",
            hidden=6,
            embedding_dim=4,
            steps=2,
            eval_every=0,
            out=str(run),
            progress=False,
            device="cpu",
        )
    )
    stem = tmp_path / "exported" / "lstm"
    path = export_char_model(run, stem, {"valid_bpc": 4.0}, "gatedrnn train ...")
    assert json.loads(stem.with_suffix(".json").read_text())["command"] == "gatedrnn train ..."
    from_run, exported = load_char_model(run), load_char_model(path)
    from_tensors = load_char_model(next(run.glob("checkpoint-*.safetensors")))  # the run's own file, as --model says
    a, b, c = from_run.record(SENTENCE), exported.record(SENTENCE), from_tensors.record(SENTENCE)
    for name in ("i", "f", "c", "h"):
        np.testing.assert_array_equal(a.layers[0][name], b.layers[0][name])
        np.testing.assert_array_equal(a.layers[0][name], c.layers[0][name])
    assert path.stat().st_mode & 0o044 == 0o044  # readable by every user once installed
    # only the model's tensors are shipped, not the optimiser's moments
    assert path.stat().st_size < 0.5 * next(run.glob("checkpoint-*.safetensors")).stat().st_size


# --- the shipped models and the real command line -------------------------------------------------


def test_cli_registers_the_viewer_commands_and_errors_exit_2(capsys):
    from gatedrnn.cli import main

    assert main(["gates", "", "--cell", "gru"]) == 2
    assert main(["sample", "--prompt", "It", "--threads", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0].startswith("error: the text is empty") and err[1] == "error: --threads must be a positive integer, got 0"
    )


@pytest.mark.parametrize("cell", SHIPPED)
def test_shipped_model_records_its_command_and_validation_bpc(cell):
    from importlib import resources

    from gatedrnn.tasks import make_task
    from gatedrnn.viz.loading import load_shipped, shipped_path

    meta = json.loads(shipped_path(cell).with_suffix(".json").read_text())
    assert meta["command"].startswith(f"gatedrnn train --task charlm --cell {cell} ")
    models_md = (resources.files("gatedrnn") / "pretrained" / "MODELS.md").read_text()
    assert meta["command"] in models_md and f"{meta['result']['valid_bpc']:.3f}" in models_md
    # the recorded bits per character is what these weights score on the validation windows
    model, task = load_shipped(cell), make_task("charlm", seq_len=meta["task"]["seq_len"])
    (batch,) = task.test_batches(torch.Generator(), task.test_size)
    with torch.no_grad():
        logits = model.head(model.rnn(model.embedding(batch.inputs))[0])
    assert float(task.loss(logits, batch)) / math.log(2) == pytest.approx(meta["result"]["valid_bpc"], abs=1e-3)
    assert meta["result"]["valid_bpc"] < bits_per_char(task.baseline)


def test_gates_on_the_tutorial_sentence_with_the_shipped_models(tmp_path, capsys):
    from gatedrnn.cli import main

    assert main(["gates", SENTENCE, "--out", str(tmp_path), "--span-window", "32"]) == 0
    out = capsys.readouterr().out
    rows = [line[:8].strip() for line in out.splitlines() if re.match(r"^(RNN|s?LSTM|GRU|min\w+)\s", line)]
    assert rows == ["RNN", "LSTM", "LSTM c", "GRU", "sLSTM", "sLSTM c", "minGRU", "minLSTM"], out
    data = embedded_data((tmp_path / "gates.html").read_text())
    assert data["cell"] == "lstm" and len(data["text"]) == len(SENTENCE) and data["unknown"] == []
    for name in ("gates.html", "gates.png", "memory_span.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_gates_uses_the_chosen_shipped_cell_and_an_lstm_page_opens_on_c(tmp_path, capsys):
    """--cell gru gives the GRU's page; the LSTM's page orders units first by the span of c."""
    assert run_cli("gates", "It is", "--cell", "gru", "--out", str(tmp_path / "g")) == 0
    assert embedded_data((tmp_path / "g" / "gates.html").read_text())["cell"] == "gru"
    assert run_cli("gates", "It is", "--out", str(tmp_path / "l")) == 0
    data = embedded_data((tmp_path / "l" / "gates.html").read_text())
    assert data["cell"] == "lstm" and list(data["scores"])[0].startswith("memory span of c ")


def test_sample_with_the_shipped_model_writes_austen_like_text(capsys):
    from gatedrnn.cli import main

    assert (
        main(["sample", "--cell", "lstm", "--prompt", "It is a truth", "--length", "200", "--temperature", "0.5"]) == 0
    )
    text = capsys.readouterr().out
    words = re.findall(r"[a-z]+", text.lower())
    common = {"the", "of", "and", "to", "a", "in", "her", "was", "she", "be", "he", "his", "had", "not", "that", "it"}
    assert len(words) > 20 and sum(w in common for w in words) > 0.2 * len(words), text


def test_probe_needs_both_whole_words_the_early_one_first():
    """A state never depends on a later input: "hours ... John" has no John -> hours to report."""
    assert probe_positions(SENTENCE, "John", "hours") == (slice(0, 4), SENTENCE.index("hours") + 4)
    assert probe_positions("He spent hours; then John left.", "John", "hours") is None
    assert probe_positions("Johnson spent hours", "John", "hours") is None
    assert probe_positions("C++ is fast", "C++", "fast") == (slice(0, 3), 10)  # a word's own punctuation
    assert probe_positions("the U.S. said", "U.S.", "said") == (slice(4, 8), 12)
    results = [measure_span("m", "hours, John", np.ones((11, 11, 2)))]
    assert "John -> hours" not in "\n".join(summary_lines(results, probe=("John", "hours")))


def test_probe_takes_exactly_two_words():
    with pytest.raises(argparse.ArgumentTypeError, match="got 'a,b,c'"):
        commands.parse_probe("a,b,c")


def test_sample_note_does_not_promise_a_page(saved_model, capsys):
    assert run_cli("sample", "--model", str(saved_model), "--prompt", "It \u00dc", "--length", "3") == 0
    err = capsys.readouterr().err
    assert "unknown symbol" in err and "page" not in err


def test_gates_reads_the_text_from_a_file_or_stdin(saved_model, tmp_path, monkeypatch, capsys):
    import io

    (tmp_path / "text.txt").write_bytes(b"It is a truth\nuniversally acknowledged")
    assert (
        run_cli(
            "gates", "--file", str(tmp_path / "text.txt"), "--model", str(saved_model), "--out", str(tmp_path / "a")
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out and (tmp_path / "a" / "gates.html").exists()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"abc \xff")))
    assert run_cli("gates", "--file", "-", "--model", str(saved_model), "--out", str(tmp_path / "b")) == 2
    assert "byte 0xff at character 4" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", None)
    assert run_cli("gates", "--file", "-", "--model", str(saved_model), "--out", str(tmp_path / "b")) == 2
    assert "standard input is closed" in capsys.readouterr().err
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfIt is")
    assert (
        run_cli("gates", "--file", str(tmp_path / "bom.txt"), "--model", str(saved_model), "--out", str(tmp_path / "d"))
        == 0
    )
    assert "vocabulary" not in capsys.readouterr().out  # the byte-order mark is not read as text
    for argv, message in [
        ((), "not neither"),
        (("abc", "--file", "x"), "not both"),
        (("--file", str(tmp_path / "missing.txt")), "cannot read --file"),
    ]:
        assert run_cli("gates", *argv, "--model", str(saved_model), "--out", str(tmp_path / "c")) == 2
        assert message in capsys.readouterr().err


def test_probe_names_the_words_to_measure(saved_model, tmp_path, capsys):
    text = "Anne walked to the sea and back"
    assert run_cli("gates", text, "--model", str(saved_model), "--out", str(tmp_path), "--probe", "Anne,sea") == 0
    out = capsys.readouterr().out
    assert "Anne -> sea (rel.)" in out and "John" not in out
    assert run_cli("gates", text, "--model", str(saved_model), "--out", str(tmp_path), "--probe", "sea,Anne") == 0
    out = capsys.readouterr().out
    assert "sea -> Anne" not in out.split("note: --probe")[0] and "no whole word 'sea' followed later by 'Anne'" in out
    with pytest.raises(SystemExit):
        run_cli("gates", text, "--probe", "Anne")
    assert "expected two words separated by a comma, e.g. John,hours, got 'Anne'" in capsys.readouterr().err


def test_gates_skips_the_span_of_a_single_character_and_removes_the_old_figure(saved_model, tmp_path, capsys):
    (tmp_path / "memory_span.png").write_bytes(b"an earlier text's figure")
    assert run_cli("gates", "x", "--model", str(saved_model), "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "memory span skipped: the text has 1 character(s), the analysis needs at least 2; removed the earlier" in out
    assert not (tmp_path / "memory_span.png").exists() and (tmp_path / "gates.png").exists()


def test_gates_measures_a_long_text_within_the_window(saved_model, tmp_path, capsys):
    """Past the old 400-character limit, with a window shorter than the text: the summary and the
    figure say how far was measured."""
    text = (
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. "
    ) * 4  # 460 characters
    assert (
        run_cli(
            "gates",
            text,
            "--model",
            str(saved_model),
            "--out",
            str(tmp_path),
            "--span-window",
            "40",
            "--probe",
            "It,wife",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"memory span on a {len(text)}-character text" in out
    assert "distances 0..39 measured (--span-window 40)" in out
    row = next(line for line in out.splitlines() if line.startswith("GRU "))
    assert re.match(r"^GRU\s+(\d+|> 39 \(window\))\s+[\d.]+\s+beyond the window$", row), row  # It .. wife: d > 100
    assert (tmp_path / "memory_span.png").stat().st_size > 1000


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_span_window_below_one_is_one_error_line(value, saved_model, tmp_path, capsys):
    assert run_cli("gates", "abc", "--model", str(saved_model), "--out", str(tmp_path), "--span-window", value) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --span-window must be a positive number of characters (distances 0..N-1 are measured), got {value}\n"
    )


def test_span_work_counts_the_window_s_matrix_products():
    """D S^2 sum_t min(t, W - 1): the LSTM's state is h and c (S = 16), 4 embedding features."""
    model = constructed_char_model("lstm")
    assert model.span_work(10, 4) == 4 * 16**2 * (0 + 1 + 2 + 3 * 7)
    assert model.span_work(10, 100) == 4 * 16**2 * 45  # every distance: sum_t t


def test_gates_prints_an_estimate_when_the_span_takes_long(saved_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(commands, "SPAN_RATE", 1.0)  # one multiply-add per second: a minute at once
    assert run_cli("gates", "abcdef", "--model", str(saved_model), "--out", str(tmp_path), "--span-window", "3") == 0
    out = capsys.readouterr().out
    assert "note: the memory span of 6 characters at distances below 3 takes" in out
    assert "multiply-adds for 1 model(s)" in out
    monkeypatch.setattr(commands, "SPAN_RATE", 1e10)
    assert run_cli("gates", "abcdef", "--model", str(saved_model), "--out", str(tmp_path)) == 0
    assert "multiply-adds" not in capsys.readouterr().out


def test_estimate_names_the_distances_measured_and_the_unknown_count(saved_model, tmp_path, monkeypatch, capsys):
    """A window longer than the text measures distances below the text's length; the note counts
    each unknown position ("XX" is 2)."""
    monkeypatch.setattr(commands, "SPAN_RATE", 1.0)
    assert run_cli("gates", "abXXef", "--model", str(saved_model), "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "at distances below 6 takes" in out and "note: 2 character(s) outside" in out


def test_gates_for_all_shipped_cells_writes_a_page_of_each_with_its_gates_and_states(tmp_path, capsys):
    """--cell all: one page and gates.png per shipped cell in --out/<cell>/, each showing its own
    gates and states (sLSTM i f z o c n m, minGRU z, minLSTM f i) and ordered by its memory span."""
    assert run_cli("gates", "It is a truth", "--cell", "all", "--out", str(tmp_path), "--span-window", "4") == 0
    out = capsys.readouterr().out
    assert (tmp_path / "memory_span.png").exists() and not (tmp_path / "gates.html").exists()
    for cell in SHIPPED:
        data = embedded_data((tmp_path / cell / "gates.html").read_text())
        assert data["cell"] == cell and data["names"] == list(SHOWN[cell])
        assert list(data["scores"])[0].startswith("memory span of ")
        assert (tmp_path / cell / "gates.png").stat().st_size > 10_000
        assert f"wrote {tmp_path / cell / 'gates.html'}" in out


def test_demo_shows_the_page_of_every_shipped_cell(tmp_path, monkeypatch, capsys):
    """After the comparison, the demo runs `gates` on the tutorial's sentence with every shipped cell."""
    calls = []
    monkeypatch.setattr(demo, "compare", lambda configs, out: ([], out / "curves.png"))
    monkeypatch.setattr(demo, "comparison_table", lambda summaries: [])
    monkeypatch.setattr(demo, "run_gates", lambda args: calls.append(args) or 0)
    parser = argparse.ArgumentParser()
    demo.add_demo_arguments(parser)
    assert demo.run_demo(parser.parse_args(["--out", str(tmp_path)])) == 0
    (args,) = calls
    assert (args.cell, args.model, args.text) == ("all", None, commands.TUTORIAL)
    out = capsys.readouterr().out
    assert "RNN, LSTM, GRU, sLSTM, minGRU, minLSTM" in out and "<cell> one of rnn, lstm, gru, slstm" in out
