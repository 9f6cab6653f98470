"""predict.py --fields on slides: one clear line for each bad input or failure, and nothing finished is lost.
The models are tests/fake_field_models.py's thresholds (installed in place of the run's)."""
import errno
import json

import pytest
from fake_field_models import FakeClassifier, fake_field_models

import predict
from tools.fields import journal, slide
from tools.fields.make_slide import make_slide


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A run folder with placeholder checkpoints; the fake models stand in for them."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("fields", "instances", "classification"):
        (run / "checkpoints" / f"{name}_best.pth").write_bytes(name.encode())
    monkeypatch.setattr(slide, "loaded_models", lambda spec: (fake_field_models(), FakeClassifier()))
    return run


@pytest.fixture(scope="module")
def slides(demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    fields = sorted(demo_root.glob("im_*/im_*/002.bmp"))
    make_slide(fields, folder / "with_mpp.tiff", side=2048, mpp=0.5, quality=90, seed=0)
    make_slide(fields[:2], folder / "without_mpp.tiff", side=1024, mpp=0, quality=90, seed=1)
    return folder


def predict_fields(inputs, run_dir, out, *flags):
    return predict.main([*map(str, inputs), "--fields", "--run-dir", str(run_dir), "--output-dir", str(out),
                         "--block-size", "512", "--min-cells", "0", *flags])


def test_a_damaged_slide_is_one_line_and_the_others_are_finished(run_dir, slides, tmp_path, capsys):
    broken = tmp_path / "broken.tiff"
    data = (slides / "with_mpp.tiff").read_bytes()
    broken.write_bytes(data[:len(data) // 2])
    assert predict_fields([broken, slides / "without_mpp.tiff"], run_dir, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("skipped")] == [
        line for line in err.splitlines() if "broken.tiff" in line and "truncated or damaged" in line]
    assert "Traceback" not in err and "tifffile" not in err  # the library's own log stays quiet
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [name.split("/")[-1] for name in summary["fields"]] == ["without_mpp"]
    assert summary["settings"]["failed"][0]["file"] == str(broken)


def test_slides_without_microns_per_pixel_are_said_once(run_dir, slides, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(slide, "loaded_models", lambda spec: (fake_field_models(mpp=0.5), FakeClassifier()))
    inputs = [slides / "without_mpp.tiff", slides / "with_mpp.tiff", slides / "without_mpp_too.tiff"]
    inputs[2].write_bytes(inputs[0].read_bytes())
    assert predict_fields(inputs, run_dir, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert out.count("no microns per pixel in its metadata") == 1 and "without_mpp.tiff" in out
    summaries = json.loads((tmp_path / "out" / "summary.json").read_text())["fields"]
    assert summaries["without_mpp"]["mpp"] is None and summaries["with_mpp"]["mpp"] == 0.5


def test_without_microns_per_pixel_on_either_side_nothing_is_said_per_slide(run_dir, slides, tmp_path, capsys):
    assert predict_fields([slides / "without_mpp.tiff"], run_dir, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "no microns per pixel" not in out and out.count("training data had no --mpp") == 1


def test_mpp_flag_overrides_the_metadata(run_dir, slides, tmp_path):
    assert predict_fields([slides / "without_mpp.tiff"], run_dir, tmp_path / "out", "--mpp", "0.3") == 0
    assert json.loads((tmp_path / "out" / "without_mpp_summary.json").read_text())["mpp"] == 0.3


def test_an_unreachable_scheduler_is_one_line(run_dir, slides, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tools.fields.cluster.CONNECT_SECONDS", 1)  # the product waits 10 s
    with pytest.raises(SystemExit) as stop:
        predict_fields([slides / "with_mpp.tiff"], run_dir, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--scheduler tcp://127.0.0.1:9: no Dask scheduler answered" in err


def test_a_full_disk_mid_slide_is_one_line_and_the_same_command_finishes_it(run_dir, slides, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    assert predict_fields([slides / "with_mpp.tiff"], run_dir, whole) == 0
    appended = []
    append_to = journal.SlideJournal.append_to

    def disk_fills(self, name, text):
        appended.append(name)
        if len(appended) == 7:  # the csv of the fourth block
            raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / name))
        return append_to(self, name, text)

    monkeypatch.setattr(journal.SlideJournal, "append_to", disk_fills)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        predict_fields([slides / "with_mpp.tiff"], run_dir, out)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("blocks")]  # tqdm
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: disk full writing")
    assert "holds 3 of" in err[0] and "the same command continues from there" in err[0]
    monkeypatch.setattr(journal.SlideJournal, "append_to", append_to)
    assert predict_fields([slides / "with_mpp.tiff"], run_dir, out) == 0
    assert "continuing after block 3" in capsys.readouterr().out
    for name in ("with_mpp.geojson", "with_mpp_cells.csv"):
        assert (out / name).read_bytes() == (whole / name).read_bytes()
