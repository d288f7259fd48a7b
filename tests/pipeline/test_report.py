"""`pipeline report`: content, escaping of untrusted text, and the page in headless Chromium."""
import base64
import io
import re

import numpy as np
import pytest
from click.testing import CliRunner
from tests.helpers.stores import UNUSED, build_truth_store, console_problems, needs_chromium, screenshot
from PIL import Image

from pipeline.cli import cli
from pipeline.explain.report import build_report
from stores.catalog import Catalog


@pytest.fixture(scope="module")
def evil(tmp_path_factory, tiny_model):
    """The demo store, with an attribute and a class name that are HTML/JS."""
    root = tmp_path_factory.mktemp("evil")
    ts = build_truth_store(root, tiny_model, per_class=2, n_crops=30, crop_min=0.5, evil=True)
    # a faithfulness run with a synthetic scorer so the report has curves (no re-encoding needed here)
    from pipeline.explain.faithfulness import faithfulness

    with Catalog(ts.root) as cat:
        faithfulness(cat, None, steps=4, scorer=lambda b, t: b.reshape(len(b), -1).mean(1) / 255.0, progress=False)
        res = build_report(cat, out=root / "report.html")
    return ts, res


def test_untrusted_text_is_escaped(evil):
    ts, res = evil
    html = res.path.read_text(encoding="utf-8")
    assert "<script" not in html.lower()  # no script element at all, ours or injected
    assert "<img src=x" not in html
    assert "<b>bold</b>" not in html
    # ... and the texts are there, escaped, so people can still read them
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; &amp; &#34;quotes&#34;" in html
    assert "evil &lt;b&gt;bold&lt;/b&gt; class" in html
    # self-contained: every picture is a data URI, nothing is fetched
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert "default-src 'none'" in html  # CSP: even a missed escape could not run or load anything


def test_report_content(evil):
    ts, res = evil
    html = res.path.read_text(encoding="utf-8")
    assert res.images == len(ts.images) == 8
    # the wrong prediction comes first, with why it is not the true class: the boosted colour
    # (built into the store) is reason 1, and the printed gap is the stored score gap
    first = html.index('class="card')
    assert html[first:first + 80].startswith('class="card wrong"')
    card = html[first:html.index('class="card', first + 10)]
    why = re.search(r"<b>Why blue square and not red circle</b> \(([^)]*)\): blue square over red circle by "
                    r"\+([\d.]+): (.*?) \+([\d.]+) tipped it", card, re.S)  # reason 1: what tipped the decision
    assert why and "true class" in why.group(1) and why.group(3).startswith("blue colour vs ")
    with Catalog(ts.root, read_only=True) as cat:
        gap = cat.query("SELECT max(score) FILTER (WHERE c.name = 'blue square') - max(score) FILTER (WHERE c.name = "
                        "'red circle') FROM predictions JOIN classes c USING (class_id) WHERE image_id = ?",
                        [ts.wrong_image_id]).fetchone()[0]
        n_contrasts = cat.query("SELECT count(DISTINCT (image_id, other_class_id)) FROM contrast_terms").fetchone()[0]
    assert float(why.group(2)) == pytest.approx(gap, abs=1e-4)
    assert "attribute of red circle (true)" in card  # the true class's own attributes
    assert html[first:].count("<b>Why ") == n_contrasts >= len(ts.images)  # one panel per stored contrast
    assert "87.5%" in html  # 7 of 8 right
    assert "global part" in html and "local part" in html
    assert html.count("<figure>") == 8 * 5  # image, class map and 3 attribute maps per image
    assert "Never-used descriptors in this run: <b>1</b>" in html and UNUSED in html
    with Catalog(ts.root, read_only=True) as cat:  # never the strongest attribute of a prediction, against a loop
        rows = cat.query("SELECT image_id, class_id, attr_id, mass, similarity FROM alignments WHERE run_id = ? AND mass > 0",
                         [res.run_id]).fetchall()
        preds = set(cat.query("SELECT image_id, class_id FROM predictions WHERE run_id = ? AND rank = 1",
                              [res.run_id]).fetchall())
    contrib: dict = {}
    for i, c, a, m, f in rows:
        contrib.setdefault((i, c), {}).setdefault(a, 0.0)
        contrib[(i, c)][a] += m * f
    led = {min(v, key=lambda a: (-v[a], a)) for k, v in contrib.items() if k in preds}
    n_never_top = len({r_[2] for r_ in rows} - led)
    assert f"never led a prediction (candidates to drop or reword): <b>{n_never_top}</b>" in html
    assert "deletion" in html and "random_deletion" in html  # the faithfulness table
    assert "of <b>crop-boxes</b> maps against" in html  # it names the map kind it measured
    # the plots are real PNGs
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)" alt="(?:per-class accuracy|deletion and insertion curves)"', html):
        im = Image.open(io.BytesIO(base64.b64decode(uri)))
        assert im.size[0] > 200 and im.size[1] > 100


def test_report_cli_and_errors(evil, tmp_path):
    ts, _ = evil
    out = tmp_path / "r.html"
    r = CliRunner().invoke(cli, ["report", "--store", str(ts.root), "-o", str(out), "--limit", "2", "--run", str(ts.run_id),
                                 "--plot", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    assert "2 images" in r.output and out.is_file()
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["run1-accuracy.png", "run1-faithfulness.png"]
    assert all(Image.open(tmp_path / "plots" / p).size[0] > 200 for p in pngs)
    r = CliRunner().invoke(cli, ["report", "--store", str(ts.root), "--run", "42"])
    assert r.exit_code == 1 and "No run 42" in r.output


@needs_chromium
def test_report_in_headless_chromium(evil, tmp_path):
    ts, res = evil
    png = tmp_path / "report.png"
    err = screenshot(res.path, png)
    assert png.is_file(), err[-2000:]
    assert console_problems(err) == []
    shot = np.asarray(Image.open(png).convert("RGB"))
    assert shot.shape[:2] == (1600, 1200)
    # the heatmaps are on screen: many distinct saturated colours (the rest of the page is
    # greys, white and a few flat accent colours)
    hsv = np.asarray(Image.fromarray(shot).convert("HSV")).reshape(-1, 3)
    saturated = shot.reshape(-1, 3)[(hsv[:, 1] > 80) & (hsv[:, 2] > 60)]
    assert len(np.unique(saturated, axis=0)) > 300
    # heatmap hues from both ends of the colormap: blue-ish and red/orange-ish pixels
    hue = hsv[(hsv[:, 1] > 80) & (hsv[:, 2] > 60), 0].astype(int)
    assert ((hue > 140) & (hue < 190)).sum() > 2000 and ((hue < 25) | (hue > 240)).sum() > 2000


@needs_chromium
def test_console_check_catches_page_errors(tmp_path):
    """The check above is only worth something if it sees errors: feed it a broken page."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><p>x</p><script>nosuchfunction();</script></body></html>')
    err = screenshot(bad, tmp_path / "bad.png", size="400,300")
    problems = console_problems(err)
    assert problems and any("nosuchfunction" in p for p in problems)
