"""Cases of the gate viewer that a mutation review of ``gatedrnn.viz`` found unpinned: each test
here fails on a wrong viewer that the rest of the suite (test_viz, test_browser, test_charlm)
passes.

- the memory span's edges: a curve exactly at 1% of its peak, one falling below only at the last
  distance, the window's edge (d = W) and a probe half inside the window, influence relative to
  the state's own strongest input (not absolute, not the text's strongest);
- a two-layer model: the span and the page's records are those of each layer, the top one measured;
- the page: the title HTML-escaped, the "activity" order is the std of h, the opening quantity,
  the gate ranges, unknown positions sorted once, unit scores of the wrong number of layers refused;
- gates.png and memory_span.png: red dashes at unknown characters, diverging map for g, a mark at
  exactly the window's distance, curves normalised to their peak, the triangle's probe label;
- the commands: a text of exactly 2000 characters and of 2 characters, ``--cell``, the LSTM page
  opening on the cell state's span, ``--probe`` with three words, the estimate's distance, the
  unknown count, a vocabulary of multi-character strings or one too short for the embedding (one
  error line), an unknown shipped cell, the demo's cell.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn

import gatedrnn
from gatedrnn.tasks.charlm import corpus_vocab
from gatedrnn.viz import commands, demo, plots
from gatedrnn.viz.charmodel import CharModel
from gatedrnn.viz.loading import UsageError, _vocab, shipped_path
from gatedrnn.viz.page import GateRecord, page_data, render_page
from gatedrnn.viz.span import BEYOND, mean_distance, measure_span, probe_positions, span_below, summary_lines
# the autouse fixture gives torch its thread count back after the commands set theirs
from test_viz import (  # noqa: F401
    SENTENCE, _keep_torch_threads, decay, embedded_data, full_per_unit, kept_figures, run_cli, saved_model, traced,
)


# --- span.py -------------------------------------------------------------------------------------

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


def test_relative_is_to_the_state_s_own_strongest_input_within_the_window():
    """relative(t, s) = band[t, t - s] / max_d band[t, d]: independent of a global scale, not
    divided by another state's larger peak; None at d = W and for a word partly beyond W."""
    T = 60
    J = decay(T, 0.9, scale=5.0)
    J[T - 1] *= 0.1  # the last state's inputs are weaker than the others'
    r = measure_span("m", "x" * T, J, window=20)
    t = T - 1
    assert r.relative(t, t - 3) == pytest.approx(0.9 ** 3)
    assert r.relative(t, t - 19) == pytest.approx(0.9 ** 19)
    assert r.relative(t, t - 20) is None  # d = W: not measured
    assert r.relative(t, slice(t - 21, t - 17)) is None  # d = 18..21: partly beyond the window


def test_summary_names_the_smallest_window_of_its_results():
    """Results measured with windows 30 and 50: the summary says distances 0..29."""
    T = len(SENTENCE)
    results = [measure_span("A", SENTENCE, decay(T, 0.5), window=30), measure_span("B", SENTENCE, decay(T, 0.5), window=50)]
    assert "distances 0..29 measured (--span-window 30)" in summary_lines(results)[0]


def test_triangle_keeps_the_diagonal():
    """J[t, t] (d = 0) is the strongest influence: the triangle's diagonal is the band's column 0."""
    T = 6
    r = measure_span("m", "abcdef", decay(T, 0.5))
    np.testing.assert_array_equal(np.diag(r.triangle()), r.band[:, 0])
    assert np.all(np.diag(r.triangle()) > 0)


def test_probe_words_are_whole_words_on_both_sides():
    """"John" inside "AJohn" is not the word John."""
    assert probe_positions("AJohn spent hours", "John", "hours") is None


# --- charmodel.py --------------------------------------------------------------------------------

def two_layer_char_model() -> CharModel:
    torch.manual_seed(0)
    vocab = corpus_vocab()
    rnn = gatedrnn.LSTM(4, 5, num_layers=2)
    model = nn.ModuleDict({"embedding": nn.Embedding(len(vocab) + 1, 4), "rnn": rnn, "head": nn.Linear(5, len(vocab) + 1)})
    return CharModel.from_module(model, vocab)


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


# --- page.py -------------------------------------------------------------------------------------

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
            GateRecord(text="ab", cell="rnn", layers=traced("rnn", "ab").layers, unit_scores={"s": [np.zeros(6)] * given})


# --- plots.py ------------------------------------------------------------------------------------

def test_gates_png_marks_unknowns_and_draws_g_diverging(tmp_path, kept_figures):
    record = traced("lstm", "ab[cd", hidden=4, layers=1)
    record.unknown = [2]
    plots.plot_gates(record, tmp_path / "gates.png", units_per_layer=4)
    (fig,) = kept_figures
    heatmaps = [ax for ax in fig.axes if ax.get_ylabel().startswith("layer")]
    assert len(heatmaps) == 6
    for ax in heatmaps:
        assert [(line.get_xdata()[0], line.get_color(), line.get_linestyle()) for line in ax.lines] == [(2, "red", "--")]
    g = next(ax for ax in heatmaps if ax.get_ylabel().endswith("\ng"))
    assert g.images[0].get_clim() == (-1.0, 1.0) and g.images[0].get_cmap().name == "RdBu"


def test_char_axis_labels_every_character_up_to_the_limit():
    fig, ax = plots.plt.subplots()
    plots._char_ticks(ax, "a" * plots.MAX_CHAR_TICKS)
    assert len(ax.get_xticks()) == plots.MAX_CHAR_TICKS
    plots.plt.close(fig)


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


# --- commands.py, loading.py, demo.py --------------------------------------------------------------

def test_text_length_limits_are_inclusive(saved_model, tmp_path, capsys):
    """2000 characters are accepted; 2 characters get the memory span."""
    commands._check_text("a" * commands.MAX_TEXT, "gates")
    assert run_cli("gates", "ab", "--model", str(saved_model), "--out", str(tmp_path)) == 0
    assert "skipped" not in capsys.readouterr().out and (tmp_path / "memory_span.png").exists()


def test_gates_uses_the_chosen_shipped_cell_and_an_lstm_page_opens_on_c(tmp_path, capsys):
    """--cell gru gives the GRU's page; the LSTM's page orders units first by the span of c."""
    assert run_cli("gates", "It is", "--cell", "gru", "--out", str(tmp_path / "g")) == 0
    assert embedded_data((tmp_path / "g" / "gates.html").read_text())["cell"] == "gru"
    assert run_cli("gates", "It is", "--out", str(tmp_path / "l")) == 0
    data = embedded_data((tmp_path / "l" / "gates.html").read_text())
    assert data["cell"] == "lstm" and list(data["scores"])[0].startswith("memory span of c ")


def test_probe_takes_exactly_two_words():
    with pytest.raises(argparse.ArgumentTypeError, match="got 'a,b,c'"):
        commands.parse_probe("a,b,c")


def test_estimate_names_the_distances_measured_and_the_unknown_count(saved_model, tmp_path, monkeypatch, capsys):
    """A window longer than the text measures distances below the text's length; the note counts
    each unknown position ("XX" is 2)."""
    monkeypatch.setattr(commands, "SPAN_RATE", 1.0)
    assert run_cli("gates", "abXXef", "--model", str(saved_model), "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "at distances below 6 takes" in out and "note: 2 character(s) outside" in out


def test_bad_vocabularies_and_cells_are_refused():
    with pytest.raises(UsageError, match="task.vocab must be the model's characters"):
        _vocab(["ab", "c"])
    with pytest.raises(UsageError, match="cell must be one of rnn, lstm, gru, got 'mlp'"):
        shipped_path("mlp")


def test_demo_shows_the_lstm_page(tmp_path, monkeypatch, capsys):
    """After the comparison, the demo runs `gates` on the tutorial's sentence with the LSTM."""
    calls = []
    monkeypatch.setattr(demo, "compare", lambda configs, out: ([], out / "curves.png"))
    monkeypatch.setattr(demo, "comparison_table", lambda summaries: [])
    monkeypatch.setattr(demo, "run_gates", lambda args: calls.append(args) or 0)
    parser = argparse.ArgumentParser()
    demo.add_demo_arguments(parser)
    assert demo.run_demo(parser.parse_args(["--out", str(tmp_path)])) == 0
    (args,) = calls
    assert (args.cell, args.model, args.text) == ("lstm", None, commands.TUTORIAL)


def test_a_vocabulary_that_does_not_fit_the_embedding_is_one_error_line(saved_model, tmp_path, capsys):
    """The shapes agree with the config but the vocabulary has one character too few for the
    embedding: CharModel's ValueError becomes one error line, not a traceback."""
    import json

    meta = json.loads(saved_model.with_suffix(".json").read_text())
    (tmp_path / "short.safetensors").write_bytes(saved_model.read_bytes())
    (tmp_path / "short.json").write_text(json.dumps({**meta, "task": {**meta["task"], "vocab": meta["task"]["vocab"][:-1]}}))
    assert run_cli("gates", "abc", "--model", str(tmp_path / "short.safetensors"), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the weights do not match their config: the embedding has") and err.count("\n") == 1
