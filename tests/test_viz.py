"""The gate viewer's page generator, figures and memory-span analysis (no browser: see
test_browser.py)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

import gatedrnn
from torch import nn

from gatedrnn.tasks.charlm import bits_per_char, corpus_vocab
from gatedrnn.viz.charmodel import CharModel
from gatedrnn.viz.page import GateRecord, page_data, render_page, write_gates_html
from gatedrnn.viz.plots import informative_units, plot_gates, plot_memory_span
from gatedrnn.viz import commands
from gatedrnn.viz.span import (distance_curve, influence, measure_span, probe_positions, span_below, summary_lines,
                               total_influence, word_positions)

@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The commands set torch's thread count for their process; give other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


SENTENCE = "John wanted to visit his friend's house, but he couldn't find the address. He spent hours searching for it."


def traced(cell: str, text: str, hidden: int = 6, layers: int = 2) -> GateRecord:
    """A GateRecord from gatedrnn.inspect_gates on a small random module, one input per char."""
    torch.manual_seed(0)
    module = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn": gatedrnn.RNN}[cell](3, hidden, num_layers=layers)
    trace = gatedrnn.inspect_gates(module, torch.randn(len(text), 1, 3))
    per_layer = [{n: v[:, 0].detach().numpy() for n, v in trace.gates[(k, 0)].items()} for k in range(layers)]
    return GateRecord(text=text, cell=cell, layers=per_layer)


def embedded_data(html: str) -> dict:
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_page_carries_every_gate_of_every_unit(cell):
    text = "ab\ncd e"
    record = traced(cell, text)
    data = embedded_data(render_page(record))
    assert data["text"] == list(text)
    assert data["names"] == list(gatedrnn.config.TRACE_NAMES[cell])
    for k, layer in enumerate(record.layers):
        for name, values in layer.items():
            # stored unit-major (H, T), rounded to 4 digits
            np.testing.assert_allclose(np.array(data["layers"][k][name]), values.T, atol=1e-4)
    orders = set(data["scores"])
    assert "activity (std of h)" in orders
    assert ({"lstm": "mean f (retention)", "gru": "mean z (retention)"}.get(cell) in orders) or cell == "rnn"


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

def linear_recurrence(a: float, W: torch.Tensor):
    """h_t = a h_{t-1} + x_t W: d h_t / d x_s = a^(t-s) W^T for s <= t, so J[t,s] = a^(t-s) ||W||_F."""
    def fn(x):
        h, out = torch.zeros(W.shape[1], dtype=x.dtype), []
        for t in range(x.shape[0]):
            h = a * h + x[t] @ W
            out.append(h)
        return torch.stack(out)
    return fn


def test_influence_of_a_linear_recurrence_is_geometric():
    torch.manual_seed(0)
    T, D, H, a = 9, 3, 4, 0.5
    W = torch.randn(D, H, dtype=torch.float64)
    per_unit = influence(linear_recurrence(a, W), torch.randn(T, D, dtype=torch.float64), positions_per_chunk=4)
    assert per_unit.shape == (T, T, H)
    J = total_influence(per_unit)
    t, s = np.tril_indices(T)
    np.testing.assert_allclose(J[t, s], a ** (t - s) * torch.linalg.norm(W).item(), rtol=1e-12)
    assert np.all(J[np.triu_indices(T, 1)] == 0)
    np.testing.assert_allclose(per_unit[4, 2], a ** 2 * torch.linalg.norm(W, dim=0).numpy(), rtol=1e-12)


@pytest.mark.parametrize("resumed", [False, True], ids=["full-runs", "resumed-runs"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_influence_matches_the_full_jacobian(cell, resumed):
    torch.manual_seed(1)
    module = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn": gatedrnn.RNN}[cell](
        3, 5, num_layers=2, dtype=torch.float64, backend="reference")
    fn = lambda x, hx=None: module(x.unsqueeze(1), hx)[0].squeeze(1)  # noqa: E731  (T, D) -> (T, H)
    x = torch.randn(7, 3, dtype=torch.float64)

    def resume(start):
        hx = module(x[:start].unsqueeze(1))[1] if start else None
        return lambda suffix: fn(suffix, hx)

    full = torch.autograd.functional.jacobian(fn, x)  # (T, H, T, D)
    expected = full.pow(2).sum(-1).sqrt().permute(0, 2, 1).numpy()  # (t, s, k)
    got = influence(fn, x, positions_per_chunk=3, resume=resume if resumed else None)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


def constructed_char_model(cell: str, hidden: int = 8, features: int = 4) -> CharModel:
    """A char model whose memory is known by construction.

    RNN: h_t = tanh(0.5 h_{t-1} + W x_t), so ||dh_t/dx_s|| <= 0.5^(t-s) ||W||: below 1% of the
    peak within about 7 characters. LSTM: forget gate sigmoid(8) = 0.9997 and no recurrent
    weights, so c_t keeps each small update i g for hundreds of steps and h_t = o_t tanh(c_t)
    still depends on it at the end of the sentence.
    """
    torch.manual_seed(0)
    vocab = corpus_vocab()
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
            rnn.bias_ih_l0[H:2 * H] = 8.0  # f = sigmoid(8 + small)
    model = nn.ModuleDict({"embedding": nn.Embedding(len(vocab) + 1, features), "rnn": rnn,
                           "head": nn.Linear(hidden, len(vocab) + 1)})
    return CharModel.from_module(model, vocab)


def test_span_is_causal_and_a_plain_rnn_forgets_sooner_than_an_lstm():
    (rnn,), _ = constructed_char_model("rnn").span(SENTENCE)
    (lstm, lstm_c), distances = constructed_char_model("lstm").span(SENTENCE)
    assert (lstm.label, lstm_c.label, lstm_c.quantity) == ("LSTM", "LSTM c", "c")
    assert set(distances) == {"h", "c"} and distances["c"][0].shape == (8,)
    T = len(SENTENCE)
    for r in (rnn, lstm, lstm_c):
        # causality: a state never depends on a later input
        assert np.all(r.J[np.triu_indices(T, 1)] == 0.0)
        assert np.all(np.diag(r.J) > 0)
    assert rnn.span is not None and rnn.span <= 8
    assert lstm.span is None  # still above 1% of the peak at the far end of the sentence
    john, hours = word_positions(SENTENCE, "John"), word_positions(SENTENCE, "hours").stop - 1
    assert rnn.relative(hours, john) < 1e-20 < 1e-2 < lstm.relative(hours, john)


def test_distance_curve_and_span():
    T, a = 40, 0.5
    J = np.tril(a ** np.subtract.outer(np.arange(T), np.arange(T)).clip(0))
    curve = distance_curve(J)
    np.testing.assert_allclose(curve, a ** np.arange(T))
    # 0.5^d < 0.01 first at d = 7 (0.5^6 = 0.0156)
    assert span_below(curve) == math.ceil(math.log(0.01) / math.log(a)) == 7
    assert span_below(np.ones(T)) is None
    # per column: a slower decay has the longer span, a flat column has none (-1)
    cols = np.stack([a ** np.arange(T), 0.9 ** np.arange(T), np.ones(T)], 1)
    assert span_below(cols).tolist() == [7, -1, -1]  # 0.9^39 = 0.016 still above


def test_summary_names_each_cell_and_the_probe():
    T = len(SENTENCE)
    fast = np.tril(0.3 ** np.subtract.outer(np.arange(T), np.arange(T)).clip(0))[..., None]
    slow = np.tril(0.97 ** np.subtract.outer(np.arange(T), np.arange(T)).clip(0))[..., None]
    results = [measure_span("RNN", SENTENCE, fast), measure_span("LSTM", SENTENCE, slow)]
    lines = summary_lines(results, probe=("John", "hours"))
    assert results[0].span == 4 and results[1].span is None
    assert lines[2].split()[:2] == ["RNN", "4"] and lines[3].split()[:3] == ["LSTM", ">", str(T - 1)]
    hours = word_positions(SENTENCE, "hours").stop - 1
    # John's last character is at distance hours - 3 from the state at "hours"
    assert float(lines[3].split()[-1]) == pytest.approx(0.97 ** (hours - 3), rel=1e-2)


def test_memory_span_png(tmp_path):
    T = len(SENTENCE)
    decay = lambda a: np.tril(a ** np.subtract.outer(np.arange(T), np.arange(T)).clip(0))[..., None]  # noqa: E731
    results = [measure_span(n, SENTENCE, decay(a)) for n, a in [("RNN", 0.5), ("LSTM", 0.95), ("GRU", 0.9)]]
    john, hours = word_positions(SENTENCE, "John"), word_positions(SENTENCE, "hours").stop - 1
    path = plot_memory_span(results, tmp_path / "memory_span.png", marks=[("John", john, hours)])
    with Image.open(path) as im:
        assert im.size[0] > 1200 and im.size[1] > 800


def test_word_positions():
    assert word_positions(SENTENCE, "He") == slice(75, 77)
    assert word_positions(SENTENCE, "t", occurrence=1) == slice(12, 13)  # "wanted", then "to"
    with pytest.raises(ValueError, match="does not occur"):
        word_positions(SENTENCE, "Mary")


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
    import argparse

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


@pytest.mark.parametrize("argv, message", [
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
    (("gates", "abc", "--model", "{tmp}/novocab.safetensors"), "the model config has no task.vocab: expected the "
     "model's characters (a non-empty string or list of characters)"),
    (("gates", "abc", "--model", "{tmp}/intvocab.safetensors"), "the model config's task.vocab must be the model's "
     "characters (a non-empty string or list of characters), got int 5"),
    (("gates", "abc", "--model", "{tmp}/repeatvocab.safetensors"), "task.vocab repeats the character(s) 'a'"),
    (("gates", "a" * 2001, "--model", "{model}"), "the text has 2001 characters; `gatedrnn gates TEXT` takes at most 2000"),
    (("gates", "abc \udcff\udcfe def", "--model", "{model}"), "the text is not valid UTF-8: byte 0xff at character 4"),
    (("gates", "abc \ud800", "--model", "{model}"), "the text is not valid UTF-8: the lone surrogate U+D800 at "
     "character 4"),
    (("sample", "--model", "{model}", "--prompt", "It \udcff"), "the prompt is not valid UTF-8: byte 0xff at character 3"),
    (("sample", "--model", "{model}", "--prompt", " "), "the prompt is empty"),
    (("sample", "--model", "{model}", "--prompt", "a" * 2001),
     "the prompt has 2001 characters; `gatedrnn sample --prompt` takes at most 2000"),
    (("sample", "--model", "{model}", "--prompt", "It", "--length", "-1"), "--length must be >= 0"),
    (("sample", "--model", "{model}", "--prompt", "It", "--temperature", "-1"),
     "--temperature must be a finite number >= 0 (0 takes the most likely character), got -1.0"),
    (("sample", "--model", "{model}", "--prompt", "It", "--temperature", "nan"), "--temperature must be a finite number"),
    (("sample", "--model", "{model}", "--prompt", "It", "--temperature", "inf"), "--temperature must be a finite number"),
], ids=["empty", "blank", "missing", "corrupt", "no-json", "bad-json", "out-is-a-file", "output-is-a-dir", "other-task", "not-a-run",
        "no-vocab", "int-vocab", "repeated-vocab", "too-long", "not-utf8", "lone-surrogate", "prompt-not-utf8",
        "blank-prompt", "prompt-too-long", "negative-length", "negative-temperature", "nan-temperature",
        "inf-temperature"])
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
        (tmp_path / f"{stem}.json").write_text(json.dumps({**meta, "task": task if vocab is None else {**task, "vocab": vocab}}))
    argv = [a.format(model=saved_model, tmp=tmp_path) for a in argv]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


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
    (tmp_path / "list.json").write_text(json.dumps({**meta, "task": {**meta["task"], "vocab": list(meta["task"]["vocab"])}}))
    assert load_char_model(tmp_path / "list.safetensors").vocab == meta["task"]["vocab"] == corpus_vocab()


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


def test_a_training_run_loads_and_exports_to_the_same_model(tmp_path):
    from gatedrnn.train import TrainConfig, train
    from gatedrnn.viz.loading import export_char_model, load_char_model

    run = tmp_path / "run"
    train(TrainConfig(task="charlm", cell="lstm", hidden=6, embedding_dim=4, steps=2, eval_every=0,
                      out=str(run), progress=False, device="cpu"))
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
    assert err[0].startswith("error: the text is empty") and err[1] == "error: --threads must be a positive integer, got 0"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
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

    assert main(["gates", SENTENCE, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line[:8].strip() for line in out.splitlines() if re.match(r"^(RNN|LSTM|GRU)\s", line)]
    assert rows == ["RNN", "LSTM", "LSTM c", "GRU"], out
    data = embedded_data((tmp_path / "gates.html").read_text())
    assert data["cell"] == "lstm" and len(data["text"]) == len(SENTENCE) and data["unknown"] == []
    for name in ("gates.html", "gates.png", "memory_span.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_sample_with_the_shipped_model_writes_austen_like_text(capsys):
    from gatedrnn.cli import main

    assert main(["sample", "--cell", "lstm", "--prompt", "It is a truth", "--length", "200", "--temperature", "0.5"]) == 0
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


def test_gates_removes_the_memory_span_figure_it_does_not_redraw(saved_model, tmp_path, monkeypatch, capsys):
    (tmp_path / "memory_span.png").write_bytes(b"an earlier text's figure")
    monkeypatch.setattr(commands, "MAX_SPAN_TEXT", 3)
    assert run_cli("gates", "abcd", "--model", str(saved_model), "--out", str(tmp_path)) == 0
    assert "memory span skipped" in capsys.readouterr().out
    assert not (tmp_path / "memory_span.png").exists() and (tmp_path / "gates.html").exists()


def test_sample_note_does_not_promise_a_page(saved_model, capsys):
    assert run_cli("sample", "--model", str(saved_model), "--prompt", "It \u00dc", "--length", "3") == 0
    err = capsys.readouterr().err
    assert "unknown symbol" in err and "page" not in err


def test_gates_reads_the_text_from_a_file_or_stdin(saved_model, tmp_path, monkeypatch, capsys):
    import io

    (tmp_path / "text.txt").write_bytes("It is a truth\nuniversally acknowledged".encode())
    assert run_cli("gates", "--file", str(tmp_path / "text.txt"), "--model", str(saved_model),
                   "--out", str(tmp_path / "a")) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "a" / "gates.html").exists()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"abc \xff")))
    assert run_cli("gates", "--file", "-", "--model", str(saved_model), "--out", str(tmp_path / "b")) == 2
    assert "byte 0xff at character 4" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", None)
    assert run_cli("gates", "--file", "-", "--model", str(saved_model), "--out", str(tmp_path / "b")) == 2
    assert "standard input is closed" in capsys.readouterr().err
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfIt is")
    assert run_cli("gates", "--file", str(tmp_path / "bom.txt"), "--model", str(saved_model),
                   "--out", str(tmp_path / "d")) == 0
    assert "vocabulary" not in capsys.readouterr().out  # the byte-order mark is not read as text
    for argv, message in [((), "not neither"), (("abc", "--file", "x"), "not both"),
                          (("--file", str(tmp_path / "missing.txt")), "cannot read --file")]:
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


def test_gates_skips_the_span_of_a_single_character(saved_model, tmp_path, capsys):
    assert run_cli("gates", "x", "--model", str(saved_model), "--out", str(tmp_path)) == 0
    assert "memory span skipped: the text has 1 character(s), the analysis takes 2 to 400" in capsys.readouterr().out
    assert not (tmp_path / "memory_span.png").exists() and (tmp_path / "gates.png").exists()
