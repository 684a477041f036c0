"""The report's Classes section, rendered by a real headless Chromium: a real 50-class study's
report, its DOM after load (the section, 50 legible labels on each axis, every thumbnail decoded)
and a screenshot (its size, and the heat map's colours on it).

Chromium comes from Debian's package (``.ci/ensure-chromium`` installs it). Where it is missing the
test skips, saying so, except in CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tlsearch.report import write_report
from tlsearch.search import run_study

CLASSES = 50
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: what the page reports after its load event, written into the DOM for --dump-dom to carry out
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.querySelectorAll("#classes img")];
  const boxes = sel => [...document.querySelectorAll(sel)].map(e => e.getBoundingClientRect());
  const overlaps = bs => bs.slice(1).filter((b, i) => b.top < bs[i].bottom - 0.5 && b.left < bs[i].right - 0.5).length;
  const rows = boxes("#confusion text.row-label"), cols = boxes("#confusion text.col-label");
  const svg = document.querySelector("#confusion svg").getBoundingClientRect();
  const section = document.querySelector("#classes").getBoundingClientRect();
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    rowLabels: rows.length, colLabels: cols.length,
    rowOverlaps: overlaps(rows), colOverlaps: overlaps(cols.map(b => ({top: b.left, bottom: b.right, left: b.top, right: b.bottom}))),
    minFont: Math.min(...[...document.querySelectorAll("#confusion text.row-label")].map(e => parseFloat(getComputedStyle(e).fontSize))),
    svgWidth: svg.width, sectionWidth: section.width,
    cells: document.querySelectorAll("#confusion rect title").length,
  });
  document.body.appendChild(probe);
});
</script>"""

#: the report with only its Classes section shown, at the top (headless screenshots ignore #anchors)
ONLY_CLASSES = "<style>body > section:not(#classes), nav, h1, .sub { display: none; }</style>"


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    reason = f"no headless browser on PATH ({', '.join(BROWSERS)}); .ci/ensure-chromium installs Debian's"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _run_browser(browser: str, *args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # CI containers run as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _label(i: int) -> str:
    """Class names of realistic, uneven lengths, one of them not ASCII."""
    names = ["cat", "golden_retriever", "sea_urchin", "café_crème", "red-tailed_hawk", "ox"]
    return f"{i:02d}_{names[i % len(names)]}"


def _data(root: Path) -> Path:
    """50 class folders of small PNGs, each class its own hue (train 3, val 3 per class)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 3)):
        for c in range(CLASSES):
            folder = root / split / _label(c)
            folder.mkdir(parents=True)
            colour = np.array(colorsys.hsv_to_rgb(c / CLASSES, 0.8, 0.9)) * 255
            for k in range(n):
                pixels = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    data = _data(root / "data")
    study = {
        "name": "fifty",
        "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": 32},
        "space": {
            "backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}},
            "head": ["linear"],
            "freezing": ["linear_probe"],
        },
        "training": {"epochs": 1, "batch_size": 32},
        "search": {"n_trials": 1, "seed": 0},
        "export": {"enabled": False},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    run_study(root / "study.yaml", out_dir=root / "run", progress=False)
    return write_report(root / "run", out=root / "report.html").html


@pytest.mark.slow
def test_the_classes_section_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    """Bugs caught: thumbnails that do not decode (bad base64, wrong MIME type), labels missing or
    drawn over each other at 50 classes, a heat map wider than the page, cells without tooltips."""
    browser = chromium()
    html = report.read_text(encoding="utf-8")
    assert '<section id="classes">' in html
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _run_browser(
        browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "p1"
    ).stdout
    assert '<section id="classes">' in dom and 'href="#classes"' in dom
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    facts = json.loads(dom[start : dom.index("</pre>", start)].replace("&quot;", '"'))
    assert facts["rowLabels"] == CLASSES and facts["colLabels"] == CLASSES
    assert facts["rowOverlaps"] == 0 and facts["colOverlaps"] == 0, facts
    assert facts["minFont"] >= 9, facts  # legible
    assert facts["cells"] == CLASSES * CLASSES
    assert 0 < facts["svgWidth"] <= facts["sectionWidth"], facts
    assert facts["images"] == 12 and facts["decoded"] == 12, facts
    for i in (0, 3, 49):  # every label is in the page as text (the café one escaped correctly)
        assert f">{_label(i)}</text>" in dom


@pytest.mark.slow
def test_a_screenshot_of_the_classes_section_shows_the_heat_map(report: Path, tmp_path: Path) -> None:
    """Bug caught: a blank or unstyled page (e.g. the SVG not drawn): the screenshot must hold the
    heat map's blue diagonal and red confusions."""
    browser = chromium()
    shot, page = tmp_path / "classes.png", tmp_path / "classes.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</head>", ONLY_CLASSES + "</head>"), "utf-8")
    _run_browser(
        browser,
        f"--screenshot={shot}",
        "--window-size=1200,1400",
        "--virtual-time-budget=10000",
        page.as_uri(),
        profile=tmp_path / "p2",
    )
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (1400, 1200)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    assert (image.min(axis=2) < 240).mean() > 0.05  # not blank
    assert ((b - r > 60) & (b > 100)).sum() > 500  # the blue diagonal
    assert ((r - b > 60) & (r - g > 60)).sum() > 200  # red confusions
