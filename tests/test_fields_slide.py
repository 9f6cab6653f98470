"""tools/fields/slide.py: whole slides block by block, written in order, resumed, on a Dask cluster, and the same
cells as the fields they are made of. The models are tests/fake_field_models.py's thresholds, so that every
comparison has cells in it; predict.py with trained models is tests/test_fields_pipeline.py's."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from fake_field_models import CLASS_NAMES, fake_field_models, install

from tools.fields.journal import SlideJournal
from tools.fields.make_slide import make_slide
from tools.fields.slide import CallRule, InProcess, ModelSpec, Screening, ScreenSettings

BLOCK = 512
RULE = CallRule(min_cells=0, gallery=5)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run folder whose checkpoints are placeholders (their bytes make the fingerprint) and the spec naming them."""
    run = tmp_path_factory.mktemp("fake_run")
    for name in ("fields", "instances", "classification"):
        (run / f"{name}_best.pth").write_bytes(name.encode())
    spec = ModelSpec(str(run / "fields_best.pth"), str(run / "instances_best.pth"), str(run / "classification_best.pth"),
                     str(run / "onnx"))
    install(spec)
    return spec


@pytest.fixture(scope="module")
def slides(demo_root, tmp_path_factory):
    """Two 2048 px slides of the demo's five crowded clusters (other places), with their manifests."""
    folder = tmp_path_factory.mktemp("slides")
    fields = sorted(demo_root.glob("im_*/im_*/002.bmp"))
    made = [make_slide(fields, folder / f"slide{seed}.tiff", side=2048, mpp=0.5, quality=95, seed=seed) for seed in (0, 1)]
    return [folder / f"slide{seed}.tiff" for seed in (0, 1)], fields, made


def screen(spec, inputs, out, executor=None, settings=ScreenSettings(block=BLOCK), force=False) -> Screening:
    screening = Screening(spec, settings, RULE, out, fake_field_models(), CLASS_NAMES, force)
    screening.run([(Path(p), name) for p, name in inputs], executor or InProcess(), window=4)
    return screening


def cells_of(out: Path, name: str):
    with open(out / f"{name}_cells.csv", newline="") as table:
        return list(csv.DictReader(table))


def outputs_bytes(out: Path, names):
    return {name: ((out / f"{name}.geojson").read_bytes(), (out / f"{name}_cells.csv").read_bytes()) for name in names}


# ---------------------------------------------------------------- what a slide gives

def nucleus_centres(out: Path, name: str, dx: float = 0, dy: float = 0) -> np.ndarray:
    """[N, 2] x, y of every nucleus in an input's GeoJSON (the mean of its polygon's corners), shifted by dx, dy."""
    features = json.loads((out / f"{name}.geojson").read_text())["features"]
    return np.array([np.mean(f["nucleusGeometry"]["coordinates"][0][:-1], axis=0) + [dx, dy] for f in features])


def test_a_slide_gives_the_nuclei_of_the_fields_it_is_made_of(fake_run, slides, tmp_path):
    (slide, _), fields, (manifest, _) = slides
    inputs = [(slide, "slide")] + [(field, f"field{i}") for i, field in enumerate(fields)]
    screen(fake_run, inputs, tmp_path)
    on_slide = nucleus_centres(tmp_path, "slide")
    found = 0
    for index, placed in enumerate(manifest["fields"]):
        assert Path(placed["image"]) == fields[index].resolve()
        in_field = nucleus_centres(tmp_path, f"field{index}", placed["x"], placed["y"])
        inside = on_slide[(on_slide[:, 0] >= placed["x"]) & (on_slide[:, 0] < placed["x"] + placed["width"])
                          & (on_slide[:, 1] >= placed["y"]) & (on_slide[:, 1] < placed["y"] + placed["height"])]
        assert len(inside) == len(in_field)
        # JPEG tiles move a threshold's outline by a pixel or so: the same nucleus lies within 3 px
        assert all(np.hypot(*(inside - centre).T).min() <= 3.0 for centre in in_field)
        found += len(in_field)
    assert found >= 20 and found == len(on_slide)


def test_a_slide_writes_geojson_csv_summary_and_report_that_agree(fake_run, slides, tmp_path):
    (slide, _), _, _ = slides
    screening = screen(fake_run, [(slide, "slide")], tmp_path)
    collection = json.loads((tmp_path / "slide.geojson").read_text())
    rows = cells_of(tmp_path, "slide")
    summary = json.loads((tmp_path / "slide_summary.json").read_text())
    assert len(collection["features"]) == len(rows) == summary["cells"] > 0
    assert len({feature["id"] for feature in collection["features"]}) == len(rows)
    assert [int(row["id"]) for row in rows] == list(range(1, len(rows) + 1))
    assert sum(summary["counts"].values()) == len(rows) and summary["call"] in ("NILM", "abnormal")
    probabilities = [cell["abnormal_probability"] for cell in summary["most_suspicious"]]
    assert len(probabilities) == RULE.gallery and probabilities == sorted(probabilities, reverse=True)
    assert summary["mpp"] == 0.5 and all("x_um" in cell for cell in summary["most_suspicious"])
    assert 0 < summary["tissue"]["share"] < 0.6  # the glass between the clusters is skipped
    report = (tmp_path / "slide_report.html").read_text()
    assert report.count("<img") == 1 + RULE.gallery and summary["call"] in report
    assert not list(tmp_path.glob(".*.partial"))  # the journal is gone once the slide is finished
    assert screening.summaries["slide"]["outputs"]["report"] == "slide_report.html"


def test_labels_as_tiled_tiff_hold_every_cell_by_its_number(fake_run, slides, tmp_path):
    import tifffile

    (slide, _), _, _ = slides
    screen(fake_run, [(slide, "slide")], tmp_path, settings=ScreenSettings(block=BLOCK, labels="tiff"))
    cell_labels = tifffile.imread(tmp_path / "slide_cells.tif")
    nuc_labels = tifffile.imread(tmp_path / "slide_nuclei.tif")
    rows = cells_of(tmp_path, "slide")
    assert cell_labels.shape == (2048, 2048) and cell_labels.dtype == np.uint32
    assert set(np.unique(nuc_labels)) - {0} == {int(row["id"]) for row in rows}
    for row in rows[:10]:  # each cell's nucleus lies inside its own box
        ys, xs = np.nonzero(nuc_labels == int(row["id"]))
        assert xs.min() >= int(row["x0"]) and xs.max() < int(row["x1"]) and ys.min() >= int(row["y0"])


# ---------------------------------------------------------------- interrupted, finished, changed

def test_an_interrupted_run_continues_to_the_same_bytes(fake_run, slides, tmp_path, monkeypatch):
    (slide, _), _, _ = slides
    screen(fake_run, [(slide, "slide")], tmp_path / "whole")
    appended = []
    original = SlideJournal.append

    def append_then_stop(self, block, records):
        if len(appended) == 3:
            raise KeyboardInterrupt
        appended.append(block)
        original(self, block, records)

    monkeypatch.setattr(SlideJournal, "append", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        screen(fake_run, [(slide, "slide")], tmp_path / "resumed")
    progress = json.loads((tmp_path / "resumed" / ".slide.partial" / "progress.json").read_text())
    assert progress["done"] == 3 and progress["blocks"] > 6
    with open(tmp_path / "resumed" / ".slide.partial" / "cells.csv", "a") as csv_file:
        csv_file.write("half a row of a block cut off mid-write")
    monkeypatch.setattr(SlideJournal, "append", original)
    screen(fake_run, [(slide, "slide")], tmp_path / "resumed")
    assert outputs_bytes(tmp_path / "resumed", ["slide"]) == outputs_bytes(tmp_path / "whole", ["slide"])


def test_a_run_stopped_while_finishing_a_slide_finishes_it_the_same(fake_run, slides, tmp_path, monkeypatch):
    from tools.fields import slide as slide_module

    (slide, _), _, _ = slides
    screen(fake_run, [(slide, "slide")], tmp_path / "whole")
    monkeypatch.setattr(slide_module, "write_labels", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # after the GeoJSON and the CSV moved into place, before the summary
        screen(fake_run, [(slide, "slide")], tmp_path / "resumed")
    assert (tmp_path / "resumed" / "slide.geojson").exists() and not (tmp_path / "resumed" / "slide_summary.json").exists()
    monkeypatch.undo()
    screen(fake_run, [(slide, "slide")], tmp_path / "resumed")
    assert outputs_bytes(tmp_path / "resumed", ["slide"]) == outputs_bytes(tmp_path / "whole", ["slide"])
    assert (tmp_path / "resumed" / "slide_summary.json").exists() and not list((tmp_path / "resumed").glob(".*.partial"))


KILLED_RUN = """
import sys, time
sys.path[:0] = {paths!r}
from pathlib import Path
from fake_field_models import CLASS_NAMES, fake_field_models, install
from tools.fields import slide
spec = slide.ModelSpec(*{spec!r})
install(spec)
screen_block = slide.screen_block
def slowly(job):
    time.sleep({delay})
    return screen_block(job)
slide.screen_block = slowly
screening = slide.Screening(spec, slide.ScreenSettings(block={block}), slide.CallRule(min_cells=0, gallery=5),
                            Path({out!r}), fake_field_models(), CLASS_NAMES)
screening.run([(Path({slide_path!r}), "slide")], slide.InProcess(), window=4)
"""


def run_script(tmp_path, spec, slide_path, out, delay) -> subprocess.Popen:
    script = tmp_path / f"screen_{delay}.py"
    paths = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]
    script.write_text(KILLED_RUN.format(paths=paths, spec=tuple(vars(spec).values()), delay=delay, block=BLOCK,
                                        out=str(out), slide_path=str(slide_path)))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_run_killed_half_way_continues_to_the_same_bytes(fake_run, slides, tmp_path):
    """SIGKILL (no clean-up at all) when half of the blocks are written, then the same command again."""
    (slide, _), _, _ = slides
    screen(fake_run, [(slide, "slide")], tmp_path / "whole")
    out = tmp_path / "killed"
    process = run_script(tmp_path, fake_run, slide, out, delay=0.3)
    progress_file, deadline = out / ".slide.partial" / "progress.json", time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            progress = json.loads(progress_file.read_text())
        except (OSError, ValueError):
            progress = {"done": 0, "blocks": 1}
        if progress["done"] >= progress["blocks"] // 2 > 0:
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "slide.geojson").exists() and (out / ".slide.partial").is_dir()
    resumed = run_script(tmp_path, fake_run, slide, out, delay=0)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert outputs_bytes(out, ["slide"]) == outputs_bytes(tmp_path / "whole", ["slide"])


def test_a_finished_slide_is_skipped_unless_forced_and_redone_when_settings_change(fake_run, slides, tmp_path, capsys):
    (slide, _), _, _ = slides
    screen(fake_run, [(slide, "slide")], tmp_path)
    first = (tmp_path / "slide.geojson").stat().st_mtime_ns
    screen(fake_run, [(slide, "slide")], tmp_path)
    assert "screened before" in capsys.readouterr().out
    assert (tmp_path / "slide.geojson").stat().st_mtime_ns == first  # not written again
    assert (tmp_path / "slide_summary.json").exists() and (tmp_path / "slide_report.html").exists()
    screen(fake_run, [(slide, "slide")], tmp_path, force=True)
    assert (tmp_path / "slide.geojson").stat().st_mtime_ns != first
    screen(fake_run, [(slide, "slide")], tmp_path, settings=ScreenSettings(block=BLOCK, keep_edge_cells=True))
    assert "screened before" not in capsys.readouterr().out


def test_a_journal_of_other_settings_is_started_afresh(fake_run, slides, tmp_path, monkeypatch, capsys):
    (slide, _), _, _ = slides
    monkeypatch.setattr(SlideJournal, "close", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        screen(fake_run, [(slide, "slide")], tmp_path)
    monkeypatch.undo()
    screen(fake_run, [(slide, "slide")], tmp_path, settings=ScreenSettings(block=1024))
    assert "other models or settings: started afresh" in capsys.readouterr().out
    screen(fake_run, [(slide, "slide")], tmp_path / "fresh", settings=ScreenSettings(block=1024))
    assert outputs_bytes(tmp_path, ["slide"]) == outputs_bytes(tmp_path / "fresh", ["slide"])


# ---------------------------------------------------------------- many slides, many workers

def test_two_slides_on_a_local_dask_cluster_give_the_serial_bytes(fake_run, slides, tmp_path):
    from distributed import Client, LocalCluster

    from tools.fields.cluster import ClusterExecutor

    paths, _, _ = slides
    inputs = [(paths[0], "slide0"), (paths[1], "slide1")]
    screen(fake_run, inputs, tmp_path / "serial")
    preload = tmp_path / "install_fakes.py"
    preload.write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parent.parent)]!r}
        from fake_field_models import install
        from tools.fields.slide import ModelSpec
        install(ModelSpec(*{tuple(vars(fake_run).values())!r}))
        """))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, preload=[str(preload)],
                      worker_dashboard_address=None) as cluster:
        client = Client(cluster)
        workers = {info["id"] for info in client.scheduler_info()["workers"].values()}
        assert len(workers) == 2
        screen(fake_run, inputs, tmp_path / "cluster", executor=ClusterExecutor(client))
    assert outputs_bytes(tmp_path / "cluster", ["slide0", "slide1"]) == outputs_bytes(tmp_path / "serial", ["slide0", "slide1"])


# ---------------------------------------------------------------- scale from microns

def test_a_slide_scanned_at_twice_the_resolution_reaches_the_models_at_the_training_scale(slides, tmp_path):
    """Models trained at 0.5 um/px; the same fields scanned at 0.25 um/px (twice the pixels) give the same nuclei,
    at twice the pixel coordinates."""
    import cv2

    _, fields, _ = slides
    doubled = []
    for index, field in enumerate(fields):
        image = cv2.imread(str(field))
        doubled.append(tmp_path / f"doubled{index}.png")
        cv2.imwrite(str(doubled[-1]), cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))
    coarse = make_slide(fields, tmp_path / "coarse.tiff", side=2048, mpp=0.5, quality=95, seed=4)
    fine = make_slide(doubled, tmp_path / "fine.tiff", side=4096, mpp=0.25, quality=95, seed=4)
    for name in ("fields", "instances", "classification"):
        (tmp_path / f"{name}.pth").write_bytes(name.encode())
    spec = ModelSpec(*(str(tmp_path / f"{name}.pth") for name in ("fields", "instances", "classification")), str(tmp_path))
    install(spec, mpp=0.5)
    screening = Screening(spec, ScreenSettings(block=BLOCK), RULE, tmp_path / "out", fake_field_models(mpp=0.5), CLASS_NAMES)
    screening.run([(tmp_path / "coarse.tiff", "coarse"), (tmp_path / "fine.tiff", "fine")], InProcess(), window=4)
    assert screening.summaries["coarse"]["scale"] == 1.0 and screening.summaries["fine"]["scale"] == 0.5
    in_coarse, in_fine = nucleus_centres(tmp_path / "out", "coarse"), nucleus_centres(tmp_path / "out", "fine")
    assert len(in_coarse) >= 20 and len(in_fine) == len(in_coarse)
    for placed_coarse, placed_fine in zip(coarse["fields"], fine["fields"]):
        shift = np.array([placed_fine["x"] / 2 - placed_coarse["x"], placed_fine["y"] / 2 - placed_coarse["y"]])
        for centre in in_fine[(in_fine[:, 0] >= placed_fine["x"]) & (in_fine[:, 0] < placed_fine["x"] + placed_fine["width"])
                              & (in_fine[:, 1] >= placed_fine["y"]) & (in_fine[:, 1] < placed_fine["y"] + placed_fine["height"])]:
            assert np.hypot(*(in_coarse - (centre / 2 - shift)).T).min() <= 3.0  # in coarse pixels
