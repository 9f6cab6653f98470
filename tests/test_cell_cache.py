"""The cell cache (tools/cell_cache.py, used by tools.data_loader.prepare_cells): a hit is bit-for-bit a fresh build,
and any data change rebuilds."""
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import tools.data_loader
from tools.cell_cache import cache_key
from tools.config import CELL_CACHE_ENV, data_parser
from tools.data_loader import prepare_cells
from tools.layouts.cells import read_records
from tools.masks import (
    PredictedMaskFiles,
    ground_truth_masks,
    mask_paths,
    write_mask_pairs,
)

SIZE = 32


def cache_files(cache_dir: Path):
    return sorted(cache_dir.glob("*.npz"))


def rewrite(path: Path, pixels: np.ndarray) -> None:
    """New content and a later mtime, as a re-export or an edit would leave it (even within one clock tick)."""
    stamp = path.stat().st_mtime_ns
    assert cv2.imwrite(str(path), pixels)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))


def assert_same_cells(a, b):
    assert a.images.dtype == b.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    if a.masks is None or b.masks is None:
        assert a.masks is None and b.masks is None
    else:
        assert a.masks.dtype == b.masks.dtype == np.uint8
        np.testing.assert_array_equal(a.masks, b.masks)


@pytest.fixture
def paired_copy(paired_root, tmp_path) -> Path:
    return Path(shutil.copytree(paired_root, tmp_path / "herlev"))


def export_ground_truth_as_predicted(records, masks_dir: Path) -> PredictedMaskFiles:
    """The ground truth written as main_segment.py writes its masks (with masks.json)."""
    write_mask_pairs(masks_dir, [(r, *ground_truth_masks(r, cv2.imread(str(r.image_path)).shape[:2])) for r in records])
    return PredictedMaskFiles(masks_dir)


@pytest.mark.parametrize("with_masks", [True, False])
def test_hit_returns_the_arrays_of_an_uncached_build(paired_root, tmp_path, with_masks):
    records, _ = read_records(paired_root)
    provider = ground_truth_masks if with_masks else None
    uncached = prepare_cells(records, SIZE, provider)
    built = prepare_cells(records, SIZE, provider, cache_dir=tmp_path)
    hit = prepare_cells(records, SIZE, provider, cache_dir=tmp_path)
    assert len(cache_files(tmp_path)) == 1
    assert_same_cells(built, uncached)
    assert_same_cells(hit, uncached)
    assert hit.records == records


def test_hit_decodes_nothing(paired_root, tmp_path, monkeypatch):
    records, _ = read_records(paired_root)
    built = prepare_cells(records, SIZE, cache_dir=tmp_path)

    def no_decoding(*_):
        raise AssertionError("a cache hit decoded a cell")

    monkeypatch.setattr(tools.data_loader, "load_sample", no_decoding)
    assert_same_cells(prepare_cells(records, SIZE, cache_dir=tmp_path), built)


def test_rewritten_image_is_rebuilt_and_shows(paired_copy, tmp_path):
    cache_dir = tmp_path / "cache"
    records, _ = read_records(paired_copy)
    before = prepare_cells(records, SIZE, cache_dir=cache_dir)
    image_path = records[0].image_path
    rewrite(image_path, 255 - cv2.imread(str(image_path)))

    records, _ = read_records(paired_copy)
    after = prepare_cells(records, SIZE, cache_dir=cache_dir)
    assert len(cache_files(cache_dir)) == 2
    assert not np.array_equal(after.images[0], before.images[0])
    np.testing.assert_array_equal(after.images[1:], before.images[1:])
    assert_same_cells(after, prepare_cells(records, SIZE))


def test_key_follows_every_file_a_cell_reads(paired_copy, demo_root, tmp_path):
    paired, _ = read_records(paired_copy)
    sipakmed_root = Path(shutil.copytree(demo_root, tmp_path / "sipakmed"))
    sipakmed, _ = read_records(sipakmed_root)
    touched = [paired[0].image_path, paired[0].cyt_mask_path, paired[0].nuc_mask_path, *sipakmed[0].polygon_files]
    assert sipakmed[0].polygon_files  # the crops' .dat boundaries
    for path in touched:
        records = paired if path.is_relative_to(paired_copy) else sipakmed
        before = cache_key(records, SIZE, ground_truth_masks)
        stamp = path.stat().st_mtime_ns
        os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
        assert cache_key(records, SIZE, ground_truth_masks) != before, path.name


def test_removed_file_changes_the_key(paired_copy):
    records, _ = read_records(paired_copy)
    before = cache_key(records, SIZE, ground_truth_masks)
    records[0].nuc_mask_path.unlink()
    assert cache_key(records, SIZE, ground_truth_masks) != before


def test_each_size_has_its_own_file(paired_root, tmp_path):
    records, _ = read_records(paired_root)
    small = prepare_cells(records, SIZE, cache_dir=tmp_path)
    large = prepare_cells(records, 2 * SIZE, cache_dir=tmp_path)
    assert len(cache_files(tmp_path)) == 2
    assert small.images.shape[1:3] == (SIZE, SIZE) and large.images.shape[1:3] == (2 * SIZE, 2 * SIZE)
    assert_same_cells(prepare_cells(records, SIZE, cache_dir=tmp_path), small)


def test_reexported_predicted_masks_are_rebuilt(paired_root, tmp_path):
    records, _ = read_records(paired_root)
    provider = export_ground_truth_as_predicted(records, tmp_path / "masks")
    cache_dir = tmp_path / "cache"
    before = prepare_cells(records, SIZE, provider, cache_dir=cache_dir)
    assert before.masks[0, 1].any()
    nuc_path = mask_paths(provider.masks_dir, records[0])[1]
    rewrite(nuc_path, np.zeros_like(cv2.imread(str(nuc_path), cv2.IMREAD_GRAYSCALE)))

    after = prepare_cells(records, SIZE, provider, cache_dir=cache_dir)
    assert len(cache_files(cache_dir)) == 2
    assert not after.masks[0, 1].any()
    np.testing.assert_array_equal(after.masks[1:], before.masks[1:])


def test_mask_sources_have_their_own_keys(paired_root, tmp_path):
    records, _ = read_records(paired_root)
    keys = {cache_key(records, SIZE, provider) for provider in (
        ground_truth_masks, None, export_ground_truth_as_predicted(records, tmp_path / "a"),
        export_ground_truth_as_predicted(records, tmp_path / "b"))}
    assert len(keys) == 4


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_cache_file_is_rebuilt_quietly(paired_root, tmp_path, capsys, damage):
    records, _ = read_records(paired_root)
    built = prepare_cells(records, SIZE, cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    content = path.read_bytes()
    path.write_bytes({"truncated": content[:len(content) // 2], "garbage": b"not a cache" * 100, "empty": b""}[damage])
    capsys.readouterr()

    assert_same_cells(prepare_cells(records, SIZE, cache_dir=tmp_path), built)
    assert capsys.readouterr().err.count("warning") == 0
    assert path.read_bytes() == content  # written again, whole


def test_no_cache_dir_writes_nothing(paired_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    session_cache = Path(os.environ[CELL_CACHE_ENV])
    cached_before = list(session_cache.rglob("*"))
    records, _ = read_records(paired_root)
    prepare_cells(records, SIZE, cache_dir=None)
    assert list(tmp_path.iterdir()) == []
    assert list(session_cache.rglob("*")) == cached_before


def test_provider_without_cache_key_is_not_cached(paired_root, tmp_path):
    records, _ = read_records(paired_root)
    in_memory = {r.sample_id: ground_truth_masks(r, cv2.imread(str(r.image_path)).shape[:2]) for r in records}
    cells = prepare_cells(records, SIZE, lambda record, shape: in_memory[record.sample_id], cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert_same_cells(cells, prepare_cells(records, SIZE))


def test_unwritable_cache_dir_warns_once_and_goes_on(paired_root, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cache_dir = blocker / "cells"  # a folder under a file cannot be made, even by root
    records, _ = read_records(paired_root)
    first = prepare_cells(records, SIZE, cache_dir=cache_dir)
    second = prepare_cells(records, SIZE, cache_dir=cache_dir)
    assert_same_cells(first, prepare_cells(records, SIZE))
    assert_same_cells(second, first)
    err = capsys.readouterr().err
    assert err.count("warning: cell cache") == 1 and str(blocker) in err
    assert list(tmp_path.iterdir()) == [blocker]  # no temporary file left behind


def test_cache_dir_flag(monkeypatch, tmp_path):
    parse = lambda *argv: data_parser().parse_args(list(argv)).cache_dir  # noqa: E731
    assert parse("--cache-dir", "none") is None
    assert parse("--cache-dir", str(tmp_path)) == tmp_path
    monkeypatch.setenv(CELL_CACHE_ENV, str(tmp_path / "env"))
    assert parse() == tmp_path / "env"
    monkeypatch.delenv(CELL_CACHE_ENV)
    assert parse() == Path.home() / ".cache" / "cervical-cytology" / "cells"
