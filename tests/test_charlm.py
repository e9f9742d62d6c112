"""The character-level language-modelling task, its shipped corpus and the char model helpers."""

from __future__ import annotations

import hashlib
import math
import re
from importlib import resources

import pytest
import torch
from torch import nn

import gatedrnn
from gatedrnn.tasks import make_task, task_options
from gatedrnn.tasks.charlm import CORPUS_FILES, UNKNOWN, bits_per_char, corpus_texts, corpus_vocab, decode, encode
from gatedrnn.viz.charmodel import CharModel

DATA = resources.files("gatedrnn") / "data"


@pytest.fixture(scope="module")
def task():
    return make_task("charlm", seq_len=64)


def test_corpus_files_match_the_recorded_checksums_and_licence():
    sources = DATA.joinpath("SOURCES.md").read_text()
    assert "public domain" in sources and "MIT" in sources and "r-cran-janeaustenr" in sources
    for name in CORPUS_FILES:
        digest = hashlib.sha256(DATA.joinpath(name).read_bytes()).hexdigest()
        assert re.search(rf"{digest}\s+{re.escape(name)}", sources), f"{name}: checksum not recorded in SOURCES.md"


def test_corpus_is_prose_with_paragraphs_unwrapped():
    pride, persuasion = corpus_texts()
    assert pride.startswith("PRIDE AND PREJUDICE")
    assert (
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife." in pride
    )
    assert "Sir Walter Elliot, of Kellynch Hall" in persuasion
    # lines are paragraphs now: no printed 70-column wraps left
    assert max(len(line) for line in pride.split("\n")) > 500


def test_vocabulary_and_encoding():
    vocab = corpus_vocab()
    assert vocab == "".join(sorted(set(vocab))) and len(vocab) == 77
    ids, unknown = encode("Jo[h]n", vocab)
    assert unknown == [2, 4] and ids[2] == 0 and ids[4] == 0
    assert decode(ids, vocab) == f"Jo{UNKNOWN}h{UNKNOWN}n"
    text = "John wanted to visit his friend's house."
    assert decode(encode(text, vocab)[0], vocab) == text


def test_task_is_registered_with_its_options(task):
    assert set(task_options("charlm")) == {"seq_len", "valid_fraction", "target_bpc"}
    assert task.vocab_size == task.input_size == task.output_size == 78
    assert task.describe()["vocab"] == corpus_vocab()


def test_samples_are_next_character_windows(task):
    batch = task.sample(8, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == batch.targets.shape == (8, 64) and batch.inputs.dtype == torch.int64
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    again = task.sample(8, torch.Generator().manual_seed(0))
    assert torch.equal(batch.inputs, again.inputs)
    train = decode(task.splits["train"], task.vocab)
    assert decode(batch.inputs[0], task.vocab) in train


def test_validation_text_is_held_out(task):
    train = decode(task.splits["train"], task.vocab)
    batches = list(task.test_batches(torch.Generator(), 200))
    assert sum(len(b) for b in batches) == task.test_size
    for window in (batches[0].inputs[0], batches[-1].inputs[-1], batches[1].inputs[7]):
        assert decode(window, task.vocab) not in train
    # fixed: the same windows every time, whatever the generator
    again = list(task.test_batches(torch.Generator().manual_seed(5), 200))
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(batches, again))
    # each novel gives its last 10% to validation
    assert 0.09 < len(task.splits["test"]) / (len(task.splits["train"]) + len(task.splits["test"])) < 0.11


def test_loss_is_cross_entropy_and_bpc(task):
    batch = task.sample(4, torch.Generator().manual_seed(1))
    uniform = torch.zeros(4, 64, task.vocab_size)
    assert task.loss(uniform, batch).item() == pytest.approx(math.log(task.vocab_size))
    assert bits_per_char(math.log(2.0)) == pytest.approx(1.0)
    perfect = torch.full((4, 64, task.vocab_size), -30.0).scatter(2, batch.targets.unsqueeze(-1), 30.0)
    assert task.correct(perfect, batch).all() and not task.correct(uniform, batch).any()
    assert task.measures(uniform, batch)["bpc"] == pytest.approx(torch.full((4,), math.log2(task.vocab_size)))
    assert task.solved(loss=1.4 * math.log(2), accuracy=0.0) and not task.solved(loss=1.6 * math.log(2), accuracy=1.0)


def test_baseline_is_the_unigram_entropy(task):
    # no model without memory beats the unigram frequencies; English text has about 4-4.5 bits of it
    assert 4.0 < bits_per_char(task.baseline) < 4.6
    uniform_loss = math.log(task.vocab_size)
    assert task.baseline < uniform_loss


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="valid_fraction must be in"):
        make_task("charlm", valid_fraction=0.7)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        make_task("charlm", seq_len=0)
    with pytest.raises(ValueError, match="split must be"):
        make_task("charlm").sample(2, torch.Generator(), split="valid")


# --- the char model as the viewer and `gatedrnn sample` use it ----------------------------------


def tiny_model(cell: str = "gru") -> CharModel:
    torch.manual_seed(0)
    vocab = corpus_vocab()
    rnn = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn": gatedrnn.RNN}[cell](8, 12, batch_first=True)
    model = nn.ModuleDict(
        {"embedding": nn.Embedding(len(vocab) + 1, 8), "rnn": rnn, "head": nn.Linear(12, len(vocab) + 1)}
    )
    return CharModel.from_module(model, vocab)


def test_sampling_is_seeded_and_stepwise_equals_a_full_rerun():
    model = tiny_model()
    draw = lambda seed, t=1.0: model.sample("Elizabeth ", 40, t, torch.Generator().manual_seed(seed))  # noqa: E731
    text = draw(0)
    assert len(text) == 40 and text == draw(0) and text != draw(1)
    assert UNKNOWN not in text
    # temperature 0 is greedy: each character is the argmax given the whole prefix, rerun from scratch
    greedy = draw(0, 0.0)
    prefix = "Elizabeth "
    for ch in greedy[:5]:
        ids, _ = model.encode(prefix)
        logits = model.head(model.rnn(model.embedding(ids).unsqueeze(0))[0][0, -1])
        assert decode([int(logits[1:].argmax()) + 1], model.vocab) == ch
        prefix += ch


def test_bits_per_char_matches_the_task_loss():
    model = tiny_model("lstm")
    text = "It is a truth universally acknowledged."
    ids, _ = model.encode(text)
    logits = model.head(model.rnn(model.embedding(ids[:-1]).unsqueeze(0))[0])
    nats = torch.nn.functional.cross_entropy(logits[0], ids[1:]).item()
    assert model.bits_per_char(text) == pytest.approx(nats / math.log(2), rel=1e-5)


def test_char_model_refuses_a_mismatched_vocabulary():
    model = tiny_model()
    with pytest.raises(ValueError, match="embedding has 78 rows but the vocabulary has 3 characters"):
        CharModel.from_module(nn.ModuleList([model.embedding, model.rnn, model.head]), "abc")
    with pytest.raises(ValueError, match="text is empty"):
        model.record("")
