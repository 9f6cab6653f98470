"""tools/fields/report.py: the slide's page says its call and rule, shows its counts, thumbnail and gallery, and a
real browser (headless Chromium) loads every picture of it."""
import html
import re
import shutil
import subprocess

import pytest
from fake_field_models import CLASS_NAMES, fake_field_models, install

from tools.fields.make_slide import make_slide
from tools.fields.slide import CallRule, InProcess, ModelSpec, Screening, ScreenSettings

GALLERY = 7
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# as the machine's notes say: no network, no first-run chores, a fresh profile
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    fields = sorted(demo_root.glob("im_*/im_*/002.bmp"))
    make_slide(fields, folder / "slide.tiff", side=2048, mpp=0.25, quality=90, seed=0)
    for name in ("fields", "instances", "classification"):
        (folder / f"{name}.pth").write_bytes(name.encode())
    spec = ModelSpec(*(str(folder / f"{name}.pth") for name in ("fields", "instances", "classification")), str(folder))
    install(spec)
    screening = Screening(spec, ScreenSettings(block=512), CallRule(min_cells=10, gallery=GALLERY), folder / "out",
                          fake_field_models(), CLASS_NAMES)
    screening.run([(folder / "slide.tiff", "slide")], InProcess(), window=2)
    return folder / "out" / "slide_report.html", screening.summaries["slide"]


def test_the_page_states_the_call_the_rule_the_counts_and_the_gallery_in_order(report):
    path, summary = report
    page = path.read_text()
    assert f">{summary['call']}</span>" in page and f"Rule: {html.escape(summary['rule'])}" in page
    assert summary["rule"].startswith("'unsatisfactory' under 10 cells")
    for name, count in summary["counts"].items():
        assert re.search(rf"{name}</th><td>{count}</td>", page)
    assert page.count("data:image/jpeg;base64,") == 1 + GALLERY  # the thumbnail, then the gallery
    ranks = [int(r) for r in re.findall(r"<b>(\d+)\. ", page)]
    probabilities = [float(p) for p in re.findall(r"p=([0-9.]+)", page)]
    assert ranks == list(range(1, GALLERY + 1)) and probabilities == sorted(probabilities, reverse=True)
    first = summary["most_suspicious"][0]
    assert f"x {first['x_um']:.1f}, y {first['y_um']:.1f} &micro;m" in page  # microns beside pixels


CHECK = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.broken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
});</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's chromium)")
def test_headless_chromium_loads_every_picture_of_the_page(report, tmp_path):
    path, _ = report
    checked = tmp_path / "checked.html"
    checked.write_text(path.read_text().replace("</body>", CHECK))
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert f'data-images="{1 + GALLERY}"' in dom and 'data-broken="0"' in dom, dom[:500]
    screenshot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,900",
                    f"--screenshot={screenshot}", path.as_uri()], capture_output=True, timeout=120)
    import cv2

    picture = cv2.imread(str(screenshot))
    assert picture is not None and picture.shape[:2] == (900, 1200) and picture.std() > 10  # drawn, not blank
