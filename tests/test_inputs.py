"""tools/inputs.py: each file once by its resolved path, loops of links ended, this project's outputs never inputs."""
import os
import time
from pathlib import Path

import pytest

from tools.inputs import OUTPUT_MARKER, folder_entries, input_files, is_earlier_output, mark_output_dir
from utils.errors import UserError

IMAGES = (".png", ".bmp", ".tif")


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def relative(paths, root: Path):
    return [Path(p).relative_to(root).as_posix() for p in paths]


def test_a_folder_link_back_to_its_parent_yields_each_file_once(tmp_path):
    """The reported case: DIR/back -> DIR made 'DIR/**/*.BMP' find one image 41 times (once per level of links)."""
    touch(tmp_path / "1.BMP", tmp_path / "sub" / "2.BMP")
    (tmp_path / "back").symlink_to(tmp_path)
    (tmp_path / "sub" / "up").symlink_to(tmp_path)
    assert relative(input_files([f"{tmp_path}/**/*.BMP"]), tmp_path) == ["1.BMP", "sub/2.BMP"]
    assert relative(input_files([tmp_path], IMAGES), tmp_path) == ["1.BMP", "sub/2.BMP"]


def test_many_loops_end_at_once(tmp_path):
    """Five links back in every folder would make glob.glob's ** walk 5^40 paths: each folder is entered once."""
    touch(tmp_path / "a.png")
    for index in range(5):
        (tmp_path / f"loop{index}").symlink_to(tmp_path)
    started = time.perf_counter()
    assert relative(input_files([f"{tmp_path}/**/*.png", tmp_path]), tmp_path) == ["a.png"]
    assert time.perf_counter() - started < 5


def test_links_to_one_file_and_repeated_inputs_count_once_under_the_first_name(tmp_path):
    touch(tmp_path / "cells" / "a.png", tmp_path / "elsewhere" / "b.png")
    (tmp_path / "cells" / "same_as_a.png").symlink_to(tmp_path / "cells" / "a.png")
    (tmp_path / "cells" / "linked").symlink_to(tmp_path / "elsewhere")  # a link to a folder is followed
    found = input_files([tmp_path / "cells", tmp_path / "cells" / "a.png", f"{tmp_path}/elsewhere/*.png"], IMAGES)
    assert relative(found, tmp_path) == ["cells/a.png", "cells/linked/b.png"]


def test_broken_links_and_link_loops_of_files_are_no_files(tmp_path):
    touch(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "x.png").symlink_to(tmp_path / "y.png")
    (tmp_path / "y.png").symlink_to(tmp_path / "x.png")
    assert relative(input_files([tmp_path], IMAGES), tmp_path) == ["a.png"]
    with pytest.raises(UserError, match="gone.png: no such file or folder; check the path"):
        input_files([tmp_path / "gone.png"])


def test_marked_output_folders_are_skipped_wherever_they_lie(tmp_path):
    touch(tmp_path / "in" / "cell.png", tmp_path / "in" / "preds" / "cell_overlay.png", tmp_path / "in" / "preds" / "x.png")
    marked = mark_output_dir(tmp_path / "in" / "preds", writer="predict.py")
    assert marked == tmp_path / "in" / "preds" and "predict.py" in (marked / OUTPUT_MARKER).read_text()
    (tmp_path / "in" / "link_to_preds").symlink_to(marked)
    assert relative(input_files([tmp_path / "in"], IMAGES), tmp_path) == ["in/cell.png"]
    assert relative(input_files([f"{tmp_path}/in/**/*.png"]), tmp_path) == ["in/cell.png"]
    assert folder_entries(tmp_path / "in")[0] == []  # not a class folder either


def test_naming_a_marked_folder_says_what_it_is(tmp_path):
    mark_output_dir(tmp_path / "preds")
    touch(tmp_path / "preds" / "cell_overlay.png")
    for text in (tmp_path / "preds", f"{tmp_path}/preds/*.png"):
        with pytest.raises(UserError, match="holds outputs of this project.*pass the folder of the input images"):
            input_files([text])
    assert input_files([tmp_path / "preds" / "cell_overlay.png"]) == [tmp_path / "preds" / "cell_overlay.png"]  # named


def test_mark_output_dir_refuses_a_folder_it_cannot_write(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match="output folder cannot be written.*pass a writable --output-dir"):
        mark_output_dir(tmp_path / "afile" / "out")


@pytest.mark.parametrize("names,taken", [
    # predict.py of an earlier version, written into the input folder itself (no marker then)
    (["cell.png", "cell_cyt.png", "cell_nuc.png", "cell_overlay.png", "cell_gradcam.png", "predictions.csv"], ["cell.png"]),
    # a subfolder of an earlier predict.py output (<name> = a/cell): no table beside, the group gives it away
    (["cell_cyt.png", "cell_nuc.png", "cell_overlay.png"], []),
    # predict.py --fields: label images and overlay beside summary.json
    (["f.png", "f_cells.png", "f_nuclei.png", "f_overlay.png", "summary.json", "cells.csv"], ["f.png"]),
    # main_segment.py's exported masks (their image lies in the data root, not here)
    (["3_cyt.png", "3_nuc.png"], []),
    # evaluate.py's plots
    (["overlays.png", "roc_curves.png", "metrics.json", "report.html", "cell.png"], ["cell.png"]),
    # data, not outputs: ISBI 2014 nuclei beside their field, masks named _cyt/_nuc beside their image
    (["f.png", "f_nuclei.png", "f_cell01.png"], ["f.png", "f_cell01.png", "f_nuclei.png"]),
    (["3.bmp", "3_cyt.png", "3_nuc.png"], ["3.bmp", "3_cyt.png", "3_nuc.png"]),
], ids=["predict_flat", "predict_subfolder", "fields", "mask_export", "evaluate", "isbi", "paired_suffixes"])
def test_what_earlier_versions_wrote_is_left_out(tmp_path, names, taken):
    touch(*(tmp_path / name for name in names))
    assert sorted(relative(input_files([tmp_path], IMAGES, required=False), tmp_path)) == sorted(taken)
    assert all(is_earlier_output(name, {n.lower() for n in names}) == (name not in taken)
               for name in names if name.endswith(".png"))


def test_glob_patterns_match_as_globs_do(tmp_path, monkeypatch):
    touch(tmp_path / "a.png", tmp_path / "b.PNG", tmp_path / "s" / "c.png", tmp_path / "s" / "t" / "d.png",
          tmp_path / "s" / "notes.txt", tmp_path / ".hidden" / "e.png", tmp_path / "s" / "._c.png")
    assert relative(input_files([f"{tmp_path}/*.png"]), tmp_path) == ["a.png"]  # case counts, as in glob
    assert relative(input_files([f"{tmp_path}/*/*.png"]), tmp_path) == ["s/c.png"]
    assert relative(input_files([f"{tmp_path}/**/*.png"]), tmp_path) == ["a.png", "s/c.png", "s/t/d.png"]
    assert relative(input_files([f"{tmp_path}/s*"], IMAGES), tmp_path) == ["s/c.png", "s/t/d.png"]  # a folder: walked
    monkeypatch.chdir(tmp_path)
    assert [p.as_posix() for p in input_files(["s/*.png", "*.png"])] == ["s/c.png", "a.png"]  # relative as given


def test_max_depth_one_lists_a_single_folder(tmp_path):
    touch(tmp_path / "a.png", tmp_path / "s" / "b.png")
    assert relative(input_files([tmp_path], IMAGES, max_depth=1), tmp_path) == ["a.png"]


def test_an_input_that_yields_nothing_is_named(tmp_path):
    touch(tmp_path / "notes.txt", tmp_path / ".x.png")
    with pytest.raises(UserError, match=f"{tmp_path}: no png/bmp/tif file in this folder .*; check the path"):
        input_files([tmp_path], IMAGES)
    with pytest.raises(UserError, match=r"\*.jpg: no png/bmp/tif file matches this pattern; check the path"):
        input_files([f"{tmp_path}/*.jpg"], IMAGES)
    assert input_files([tmp_path], IMAGES, required=False) == []
    with pytest.raises(UserError, match="/dev/null: not a file or folder; check the path"):
        input_files(["/dev/null"])


def test_an_unreadable_folder_is_named(tmp_path, monkeypatch):
    touch(tmp_path / "a.png")
    real_listdir = os.listdir

    def listdir(path):
        if Path(path) == tmp_path:
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(UserError, match="folder cannot be read .Permission denied.; fix its permissions"):
        input_files([tmp_path])
