"""The gate viewer page in a real headless browser (Debian's chromium driven by Playwright).

Skipped, with the reason, where Playwright or a chromium binary is missing; ``.ci/run`` installs
both (``apt-get install -y chromium``, ``pip install playwright``) so CI runs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gatedrnn.viz.page import GateRecord, write_gates_html

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("GATEDRNN_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
if CHROMIUM is None:
    pytest.skip(
        "no chromium binary on PATH (apt-get install -y chromium, or set GATEDRNN_CHROMIUM)", allow_module_level=True
    )

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TEXT = (
    "John wanted to visit his friend's house, but he couldn't find the address.\nHe spent hours searching for it. [X]"
)
UNKNOWN = [TEXT.index("["), TEXT.index("X"), TEXT.index("]")]


def lstm_record() -> GateRecord:
    """A two-layer LSTM record whose values are known: unit u's forget gate is u / (H - 1)
    everywhere except on vowels, where it is 1 - u / (H - 1)."""
    T, H = len(TEXT), 8
    rng = np.random.default_rng(0)
    vowel = np.array([c in "aeiou" for c in TEXT])[:, None]
    ramp = np.broadcast_to(np.arange(H) / (H - 1), (T, H))
    f = np.where(vowel, 1 - ramp, ramp)
    layer = {
        "i": rng.uniform(size=(T, H)),
        "f": f,
        "g": rng.uniform(-1, 1, (T, H)),
        "o": rng.uniform(size=(T, H)),
        "c": rng.normal(size=(T, H)) * 3,
    }
    layer["h"] = layer["o"] * np.tanh(layer["c"])
    span = (np.arange(H) * 3 % H).astype(float)  # a "memory span" per unit: 0 3 6 1 4 7 2 5
    return GateRecord(
        text=TEXT,
        cell="lstm",
        layers=[layer, {k: -v for k, v in layer.items()}],
        unknown=UNKNOWN,
        unit_scores={"memory span": [span, span[::-1]]},
        title="browser test",
    )


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path):
    path = write_gates_html(lstm_record(), tmp_path / "gates.html")
    pg = browser.new_page(viewport={"width": 1200, "height": 700})
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.goto(path.resolve().as_uri())
    pg.wait_for_selector("body[data-rendered]")
    yield pg
    pg.close()
    assert errors == [], f"console errors: {errors}"
    assert [u for u in requests if not u.startswith("file://")] == [], "the page tried to reach the network"


def test_a_title_that_opens_an_html_comment_still_renders(browser, tmp_path):
    """ "<!--<script" inside the data block would leave it unclosed, and the page blank."""
    record = lstm_record()
    record.title = "<!--<script> a model's name"
    pg = browser.new_page()
    pg.goto(write_gates_html(record, tmp_path / "gates.html").resolve().as_uri())
    pg.wait_for_selector("body[data-rendered]", timeout=10_000)
    assert pg.eval_on_selector_all("#text .ch", "els => els.length") == len(TEXT)
    pg.close()


def colours(pg) -> list[str]:
    return pg.eval_on_selector_all("#text .ch", "els => els.map(e => getComputedStyle(e).backgroundColor)")


def test_one_element_per_character_with_unknowns_marked(page):
    chars = page.eval_on_selector_all("#text .ch", "els => els.map(e => e.textContent)")
    assert len(chars) == len(TEXT)
    assert chars[TEXT.index("\n")] == "\u21b5" and chars[0] == "J"
    marked = page.eval_on_selector_all("#text .ch.unk", "els => els.map(e => Number(e.dataset.t))")
    assert marked == UNKNOWN
    assert "outside the model's vocabulary" in page.inner_text("#unknown-note")


def test_forget_gate_colours_follow_the_values(page):
    page.select_option("#order", "__index")
    page.select_option("#quantity", "f")
    page.select_option("#unit", "0")
    # unit 0: f = 0 on consonants (white), 1 on vowels (full blue)
    c = colours(page)
    assert c[TEXT.index("J")] == "rgb(255, 255, 255)"
    assert c[TEXT.index("o")] == "rgb(33, 102, 172)"
    page.select_option("#unit", "7")
    swapped = colours(page)
    assert swapped[TEXT.index("J")] == "rgb(33, 102, 172)" and swapped[TEXT.index("o")] == "rgb(255, 255, 255)"


def test_changing_unit_gate_or_layer_changes_colours(page):
    assert page.input_value("#quantity") == "c"  # an LSTM page opens on the cell state
    before = colours(page)
    page.click("#next")
    after_unit = colours(page)
    assert after_unit != before
    page.select_option("#quantity", "f")
    after_gate = colours(page)
    assert after_gate != after_unit
    page.select_option("#layer", "1")
    assert colours(page) != after_gate
    assert page.get_attribute("body", "data-rendered").startswith("1/f/")


def test_retention_order_puts_the_highest_mean_forget_gate_first(page):
    page.select_option("#order", "mean f (retention)")
    units = page.eval_on_selector_all("#unit option", "els => els.map(e => Number(e.value))")
    f = lstm_record().layers[0]["f"].mean(0)
    assert units == sorted(range(8), key=lambda u: (-round(f[u], 4), u))
    assert page.input_value("#unit") == str(units[0])


def test_page_opens_on_the_given_order_longest_span_first(page):
    assert page.input_value("#order") == "memory span"
    units = page.eval_on_selector_all("#unit option", "els => els.map(e => Number(e.value))")
    assert units == [5, 2, 7, 4, 1, 6, 3, 0]  # spans 7, 6, 5, ..., 0
    assert page.input_value("#unit") == "5"
    page.select_option("#layer", "1")
    # layer 1's spans are reversed: 5 2 7 4 1 6 3 0
    assert page.eval_on_selector_all("#unit option", "els => els.map(e => Number(e.value))") == [2, 5, 0, 3, 6, 1, 4, 7]


def test_hover_shows_every_gate_value(page):
    page.select_option("#order", "__index")
    page.select_option("#unit", "3")
    t = TEXT.index("v")
    page.hover(f"#text .ch >> nth={t}")
    tip = page.locator("#tooltip")
    assert tip.is_visible()
    rows = page.eval_on_selector_all(
        "#tooltip tr", "els => els.map(e => [e.dataset.name, e.querySelector('.value').textContent])"
    )
    layer = lstm_record().layers[0]
    assert [name for name, _ in rows] == ["i", "f", "g", "o", "c", "h"]
    for name, shown in rows:
        assert float(shown) == pytest.approx(layer[name][t, 3], abs=1e-3)
    assert f"position {t}" in tip.inner_text()
    page.hover(f"#text .ch >> nth={UNKNOWN[1]}")
    assert "not in vocabulary" in tip.inner_text()


SITE = Path(os.environ.get("GATEDRNN_SITE", Path(__file__).parents[1] / "site"))
TUTORIAL_PAGE = SITE / "generated" / "tutorial" / "plot_gates_tutorial.html"


def test_built_tutorial_page_shows_its_figures_and_rendered_math(browser):
    """The documentation site's tutorial page (built by ``make docs``; ``.ci/run`` builds it, then
    runs this test with GATEDRNN_REQUIRE_SITE=1) opens from the file system with every figure
    loaded, its math typeset by the site's own MathJax, and no request leaving the site."""
    if not TUTORIAL_PAGE.exists():
        message = f"no built site at {SITE} (make docs builds it)"
        if os.environ.get("GATEDRNN_REQUIRE_SITE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    pg = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    requests: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("request", lambda r: requests.append(r.url))
    pg.goto(TUTORIAL_PAGE.resolve().as_uri(), wait_until="load")
    # MathJax typesets asynchronously: every math element of the page becomes an SVG container
    pg.wait_for_function(
        "() => document.querySelectorAll('.math').length > 0 && [...document.querySelectorAll('.math')]"
        ".every(e => e.querySelector('mjx-container svg'))",
        timeout=30_000,
    )
    figures = pg.eval_on_selector_all(
        "img.sphx-glr-single-img, img.sphx-glr-multi-img", "els => els.map(e => [e.naturalWidth, e.src])"
    )
    maths = pg.eval_on_selector_all(".math mjx-container", "els => els.length")
    pg.close()
    assert len(figures) >= 8, f"expected the tutorial's figures, found {len(figures)}"
    assert all(width > 0 for width, _ in figures), f"figures that did not load: {figures}"
    assert maths >= 10, f"expected the tutorial's equations typeset, found {maths}"
    assert errors == [], f"page errors: {errors}"
    assert [u for u in requests if not u.startswith("file://")] == [], "the page tried to reach the network"


def newer_record(cell: str) -> GateRecord:
    """What inspect_gates records of a small random one-layer sLSTM, minGRU or minLSTM on TEXT."""
    import torch

    import gatedrnn

    torch.manual_seed(0)
    module = gatedrnn.Recurrent(cell, 3, 8)
    trace = gatedrnn.inspect_gates(module, torch.randn(len(TEXT), 1, 3))
    layer = {n: v[:, 0].detach().numpy() for n, v in trace.gates[(0, 0)].items()}
    return GateRecord(text=TEXT, cell=cell, layers=[layer], cell_config=module.cell_config)


@pytest.mark.parametrize(
    "cell, shown, opens_on, retention",
    [
        ("slstm", ["i", "f", "z", "o", "c", "n", "m"], "c", "mean f (retention)"),
        ("mingru", ["z"], "z", "mean 1 - z (retention)"),
        ("minlstm", ["f", "i"], "f", "mean f (retention)"),
    ],
)
def test_the_newer_cells_pages_show_their_gates_and_states(browser, tmp_path, cell, shown, opens_on, retention):
    """sLSTM i f z o c n m, minGRU z, minLSTM f i: the page offers, colours and lists exactly these,
    opens on the memory and orders units by the family's own retention."""
    record = newer_record(cell)
    pg = browser.new_page(viewport={"width": 1200, "height": 700})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(write_gates_html(record, tmp_path / "gates.html").resolve().as_uri())
    pg.wait_for_selector("body[data-rendered]")
    assert pg.eval_on_selector_all("#quantity option", "els => els.map(e => e.value)") == shown
    assert pg.input_value("#quantity") == opens_on
    assert pg.inner_text("#title") == f"gate viewer: {record.cell_config.title()}"
    assert retention in pg.eval_on_selector_all("#order option", "els => els.map(e => e.value)")
    coloured = set()
    for name in shown:
        pg.select_option("#quantity", name)
        coloured.add(tuple(colours(pg)))
    assert len(coloured) == len(shown)  # each quantity colours the text its own way
    pg.hover(f"#text .ch >> nth={TEXT.index('v')}")
    rows = pg.eval_on_selector_all("#tooltip tr", "els => els.map(e => e.dataset.name)")
    assert rows == shown
    pg.close()
    assert errors == []
