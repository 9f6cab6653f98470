"""Behaviour of tools/demo_data.py: SIPaKMeD layout, determinism, geometry, crowded clusters, class differences, CLI."""
import itertools
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tools.demo_data import (
    PARAMS_FILE,
    SIPAKMED_CLASSES,
    dataset_params,
    is_crowded,
    main,
    make_demo_dataset,
)
from utils.errors import UserError

CLUSTERS = 2  # cluster 001 of each class is sparse, 002 crowded


def read_dat(path):
    """Tolerant reader: 'x,y' per line, any spacing, plain or scientific numbers, blank lines ignored."""
    points = [[float(v) for v in line.split(",")] for line in Path(path).read_text().splitlines() if line.strip()]
    return np.array(points, dtype=np.float64)


def class_dir(root, name):
    return root / name / name


def cells_of(root, name):
    """(cluster_stem, cell_no) for every cell listed by its cytoplasm .dat file."""
    matches = (re.fullmatch(r"(\d{3})_cyt(\d{2})\.dat", p.name) for p in class_dir(root, name).iterdir())
    return sorted((m[1], m[2]) for m in matches if m)


def inside(polygon, points, min_distance=0.0):
    contour = polygon.astype(np.float32)
    return all(cv2.pointPolygonTest(contour, (float(x), float(y)), True) >= min_distance for x, y in points)


def cluster_masks(root, name, cluster):
    """(image, cell masks, nucleus masks) of one cluster image, polygons rasterised with cv2.fillPoly, in cell order."""
    folder = class_dir(root, name)
    image = cv2.imread(str(folder / f"{cluster}.bmp"))

    def rasterise(path):
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(read_dat(path)).astype(np.int32)], 1)
        return mask.astype(bool)
    cells = [rasterise(p) for p in sorted(folder.glob(f"{cluster}_cyt*.dat"))]
    nuclei = [rasterise(p) for p in sorted(folder.glob(f"{cluster}_nuc*.dat"))]
    return image, cells, nuclei


def clusters_of(root, name, crowded):
    return sorted(c for c in {c for c, _ in cells_of(root, name)} if is_crowded(int(c) - 1) == crowded)


def pairs(items):
    return list(itertools.combinations(range(len(items)), 2))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", clusters_per_class=CLUSTERS, seed=0)


def all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_matches_sipakmed(dataset):
    assert sorted(p.name for p in dataset.iterdir() if p.is_dir()) == sorted(SIPAKMED_CLASSES)
    total_cells = 0
    for name in SIPAKMED_CLASSES:
        folder = class_dir(dataset, name)
        assert sorted(p.name for p in folder.glob("*.bmp")) == [f"{i:03d}.bmp" for i in range(1, CLUSTERS + 1)]
        cells = cells_of(dataset, name)
        assert cells, f"{name} has no cells"
        for cluster, cell in cells:
            assert (folder / f"{cluster}_nuc{cell}.dat").is_file()
            for suffix in (".bmp", "_cyt.dat", "_nuc.dat"):
                assert (folder / "CROPPED" / f"{cluster}_{cell}{suffix}").is_file()
        # cell numbers run 01..n within each cluster, and nothing unmatched is left over
        for cluster in {c for c, _ in cells}:
            numbers = [int(n) for c, n in cells if c == cluster]
            assert numbers == list(range(1, len(numbers) + 1))
        assert len(list(folder.glob("*_nuc*.dat"))) == len(cells)
        assert len(list((folder / "CROPPED").glob("*.bmp"))) == len(cells)
        assert len(list((folder / "CROPPED").glob("*.dat"))) == 2 * len(cells)
        image = cv2.imread(str(folder / "001.bmp"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (288, 384, 3) and image.dtype == np.uint8
        total_cells += len(cells)
    summary = json.loads((dataset / PARAMS_FILE).read_text())
    assert summary["counts"] == {"classes": 5, "cluster_images": 5 * CLUSTERS, "crowded_cluster_images": 5,
                                 "cells": total_cells}


def test_same_seed_same_bytes_other_seed_other_images(dataset, tmp_path):
    assert all_files(make_demo_dataset(tmp_path / "again", clusters_per_class=CLUSTERS, seed=0)) == all_files(dataset)
    other = make_demo_dataset(tmp_path / "other", clusters_per_class=CLUSTERS, seed=1)
    name = SIPAKMED_CLASSES[0]
    first, second = (cv2.imread(str(class_dir(root, name) / "001.bmp")) for root in (dataset, other))
    assert not np.array_equal(first, second)


def test_dat_files_include_the_quirks_a_reader_must_tolerate(dataset):
    texts = [p.read_text() for p in dataset.rglob("*.dat")]
    assert any("e+" in t for t in texts)
    assert any(", " in t for t in texts)
    assert any(t.endswith("\n\n") for t in texts)
    assert sum(t == t.strip() + "\n" and "e+" not in t and ", " not in t for t in texts) > len(texts) / 2


def test_polygons_are_inside_their_image_and_nucleus_inside_cell(dataset):
    for name in SIPAKMED_CLASSES:
        folder = class_dir(dataset, name)
        for cluster, cell in cells_of(dataset, name):
            height, width = cv2.imread(str(folder / f"{cluster}.bmp")).shape[:2]
            crop_h, crop_w = cv2.imread(str(folder / "CROPPED" / f"{cluster}_{cell}.bmp")).shape[:2]
            pairs = [(read_dat(folder / f"{cluster}_cyt{cell}.dat"), read_dat(folder / f"{cluster}_nuc{cell}.dat"),
                      width, height),
                     (read_dat(folder / "CROPPED" / f"{cluster}_{cell}_cyt.dat"),
                      read_dat(folder / "CROPPED" / f"{cluster}_{cell}_nuc.dat"), crop_w, crop_h)]
            for cyt, nuc, w, h in pairs:
                for polygon in (cyt, nuc):
                    assert 24 <= len(polygon) <= 64
                    assert polygon.min() >= 0 and (polygon[:, 0] <= w - 1).all() and (polygon[:, 1] <= h - 1).all()
                assert inside(cyt, nuc, min_distance=0.5), f"{name} {cluster}_{cell}: nucleus leaves the cell"


def test_crowded_clusters_are_every_third_from_002():
    assert [k + 1 for k in range(12) if is_crowded(k)] == [2, 5, 8, 11]
    assert [k + 1 for k in range(4) if is_crowded(k, crowded_every=2)] == [2, 4]
    assert all(is_crowded(k, crowded_every=1) for k in range(4))
    assert not any(is_crowded(k, crowded_every=0) for k in range(4))
    with pytest.raises(UserError, match="crowded_every"):
        dataset_params(2, (2, 4), (384, 288), 0, crowded_every=-1)


def test_cells_in_a_sparse_cluster_do_not_overlap(dataset):
    for name in SIPAKMED_CLASSES:
        folder = class_dir(dataset, name)
        for cluster in clusters_of(dataset, name, crowded=False):
            polygons = [read_dat(p) for p in sorted(folder.glob(f"{cluster}_cyt*.dat"))]
            for i, a in enumerate(polygons):
                for b in polygons[i + 1:]:
                    assert not inside(a, b[:1]) and not inside(b, a[:1])  # neither contains the other
                    assert not any(inside(a, [p]) for p in b) and not any(inside(b, [p]) for p in a)
            _, cells, _ = cluster_masks(dataset, name, cluster)
            assert all(not (cells[i] & cells[j]).any() for i, j in pairs(cells))


def test_crowded_cluster_is_a_clump_of_touching_and_overlapping_cells(dataset):
    for name in SIPAKMED_CLASSES:
        [cluster] = clusters_of(dataset, name, crowded=True)
        _, cells, _ = cluster_masks(dataset, name, cluster)
        assert len(cells) >= 4, f"{name} {cluster}: a clump of {len(cells)} cells"
        overlaps = {(i, j): np.count_nonzero(cells[i] & cells[j]) for i, j in pairs(cells)}
        assert max(overlaps.values()) > 0, f"{name} {cluster}: no two cells overlap"
        for (i, j), shared in overlaps.items():  # overlap is controlled: no cell is mostly under another
            assert shared <= 0.5 * min(cells[i].sum(), cells[j].sum()), f"{name} {cluster}: cells {i + 1}, {j + 1}"
        for i, cell in enumerate(cells):  # every cell touches (within 3 px) or overlaps another one
            grown = cv2.dilate(cell.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            assert any((grown & other).any() for j, other in enumerate(cells) if j != i), \
                f"{name} {cluster}: cell {i + 1} touches no other"


def test_every_nucleus_is_inside_its_own_cell_and_under_no_other(dataset):
    for name in SIPAKMED_CLASSES:
        for cluster in {c for c, _ in cells_of(dataset, name)}:
            _, cells, nuclei = cluster_masks(dataset, name, cluster)
            assert len(nuclei) == len(cells)
            for i, nucleus in enumerate(nuclei):
                area = np.count_nonzero(nucleus)
                assert np.count_nonzero(nucleus & cells[i]) >= 0.95 * area, f"{name} {cluster}: nucleus {i + 1}"
                for j, cell in enumerate(cells):
                    if j != i:
                        where = f"{name} {cluster}: nucleus {i + 1} and cell {j + 1}"
                        assert np.count_nonzero(nucleus & cell) <= 0.05 * area, f"{where}: nucleus under the cell"
                        assert not (nucleus & nuclei[j]).any(), f"{where}: the nuclei overlap"


def test_overlapping_translucent_cells_look_darker(dataset):
    name = "im_Superficial-Intermediate"  # the most translucent cytoplasm
    [cluster] = clusters_of(dataset, name, crowded=True)
    image, cells, nuclei = cluster_masks(dataset, name, cluster)
    brightness = image.astype(np.float32).sum(axis=2)
    any_nucleus = np.any(nuclei, axis=0)
    compared = 0
    for i, j in pairs(cells):  # cell j is painted over cell i
        shared = cells[i] & cells[j] & ~any_nucleus
        if np.count_nonzero(shared) < 100:
            continue
        only_j = cells[j] & ~np.any([c for k, c in enumerate(cells) if k != j], axis=0) & ~any_nucleus
        assert brightness[shared].mean() < brightness[only_j].mean() - 10, f"cells {i + 1}, {j + 1}"
        compared += 1
    assert compared, "no two cells overlap by 100 px or more"


def test_crop_coordinates_are_cluster_coordinates_minus_crop_offset(dataset):
    for name in SIPAKMED_CLASSES:
        folder = class_dir(dataset, name)
        for cluster, cell in cells_of(dataset, name):
            cluster_image = cv2.imread(str(folder / f"{cluster}.bmp"))
            crop = cv2.imread(str(folder / "CROPPED" / f"{cluster}_{cell}.bmp"))
            scores = cv2.matchTemplate(cluster_image.astype(np.float32), crop.astype(np.float32), cv2.TM_SQDIFF)
            x0, y0 = cv2.minMaxLoc(scores)[2]  # TM_SQDIFF is float-summed, so confirm the match exactly
            crop_h, crop_w = crop.shape[:2]
            assert np.array_equal(cluster_image[y0:y0 + crop_h, x0:x0 + crop_w], crop)
            for kind in ("cyt", "nuc"):
                in_cluster = read_dat(folder / f"{cluster}_{kind}{cell}.dat")
                in_crop = read_dat(folder / "CROPPED" / f"{cluster}_{cell}_{kind}.dat")
                np.testing.assert_allclose(in_crop, in_cluster - [x0, y0], atol=1e-6)


def test_classes_differ_in_size_and_nucleus_to_cell_ratio(dataset):
    cell_area, nc_ratio = {}, {}
    for name in SIPAKMED_CLASSES:
        folder = class_dir(dataset, name)
        areas = [(cv2.contourArea(read_dat(folder / f"{c}_cyt{n}.dat").astype(np.float32)),
                  cv2.contourArea(read_dat(folder / f"{c}_nuc{n}.dat").astype(np.float32)))
                 for c, n in cells_of(dataset, name)]
        cell_area[name] = np.mean([cyt for cyt, _ in areas])
        nc_ratio[name] = np.mean([nuc / cyt for cyt, nuc in areas])
    assert nc_ratio["im_Parabasal"] > 3 * nc_ratio["im_Superficial-Intermediate"]
    assert max(cell_area, key=cell_area.get) == "im_Superficial-Intermediate"


def test_cli_skips_a_complete_dataset_and_force_regenerates(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--clusters-per-class", "1", "--seed", "3"]
    assert main(argv) == 0
    assert re.fullmatch(rf"wrote 5 classes, 5 cluster images, \d+ cells to {re.escape(str(out))}\n",
                        capsys.readouterr().out)
    marker = out / SIPAKMED_CLASSES[0] / "marker"
    marker.write_text("left by the test")

    assert main(argv) == 0
    assert "skipping" in capsys.readouterr().out
    assert marker.exists()

    assert main(argv + ["--seed", "4"]) == 0  # other parameters: regenerated without --force
    assert "wrote" in capsys.readouterr().out and not marker.exists()

    marker.write_text("left by the test")
    assert main(argv + ["--seed", "4", "--force"]) == 0
    assert "wrote" in capsys.readouterr().out and not marker.exists()


def test_refuses_to_overwrite_a_folder_that_is_not_a_demo_dataset(tmp_path, capsys):
    (tmp_path / "real" / "im_Parabasal").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "real"), "--clusters-per-class", "1"])
    assert exit_info.value.code == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "real" / "im_Parabasal").is_dir()
