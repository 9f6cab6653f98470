"""Behaviour of tools/fields/segment.py (whole fields at inference) with fake numpy backends in place of trained models.

The fake field model marks dark pixels of the (normalised) tile it is given: nuclei are drawn darkest, cytoplasm
lighter, the background as light as the padding. The fake instance model answers every window with a disc of a
known radius around the marked nucleus. So each drawn disc cell must come back once, whole, wherever it lies.
"""
import tempfile
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
import tifffile
from hypothesis import example, given, settings

import tools.fields.segment
from tools.fields.models import FieldModels
from tools.fields.readers import open_field
from tools.fields.segment import (
    FieldCell,
    cell_crop,
    classify_cells,
    nucleus_instances,
    segment_field,
    stride_starts,
    tiled_probabilities,
    to_field_cell,
    window_cell,
)
from tools.inference import CellPipeline
from tools.layouts.sipakmed import CLUSTER_CROP_MARGIN
from utils.errors import UserError
from utils.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PAD_RGB, normalize_image, read_image

CELL_RADIUS, NUCLEUS_RADIUS = 12, 5  # a nucleus of 81 px: the median nucleus (FieldModels.nucleus_px 11)
LOGIT = 20.0


def disc(shape, centre, radius) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def grey_of(batch: np.ndarray) -> np.ndarray:
    """[B, 3, H, W] normalised RGB -> [B, H, W] grey 0..255 (the normalisation undone)."""
    rgb = batch[:, :3] * IMAGENET_STD[None, :, None, None] + IMAGENET_MEAN[None, :, None, None]
    return rgb.mean(axis=1) * 255


def fake_field_model(batch: np.ndarray) -> np.ndarray:
    """[B, 3, T, T] -> [B, 2, T, T] logits: foreground where darker than the background, nuclei where darkest."""
    grey = grey_of(batch)
    return np.stack([np.where(grey < 200, LOGIT, -LOGIT), np.where(grey < 80, LOGIT, -LOGIT)], axis=1).astype(np.float32)


class FakeInstanceModel:
    """[B, 4, S, S] -> [B, 2, S, S] logits: a disc of `radius` around the marked nucleus's centre, and that nucleus."""

    def __init__(self, radius: float):
        self.radius, self.calls = radius, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        outputs = np.full((len(batch), 2, *batch.shape[2:]), -LOGIT, np.float32)
        for output, item in zip(outputs, batch):
            marker = item[3] > 0.5
            centre = np.argwhere(marker).mean(axis=0).round()
            output[0][disc(marker.shape, centre, self.radius)] = LOGIT
            output[1][marker] = LOGIT
        return outputs


def fake_models(scale=1.0, window=32, tile=32) -> FieldModels:
    return FieldModels(fake_field_model, FakeInstanceModel(CELL_RADIUS), scale, tile, window, instance_size=window,
                       nucleus_px=2 * NUCLEUS_RADIUS + 1, batch_size=4)


# cells (row, col) of a 96 x 128 field; with block=64 the block borders run along row 64 and column 64
FIELD_SHAPE = (96, 128)
CENTRES = {
    "left of an overlapping pair": (20, 24),
    "right of an overlapping pair": (20, 44),
    "cell across both block borders": (60, 70),
    "nucleus on a block border": (64, 30),
    "cut by the image corner": (88, 118),
}


def draw_field(shape=FIELD_SHAPE, centres=CENTRES.values(), cell_radius=CELL_RADIUS, nucleus_radius=NUCLEUS_RADIUS,
               colours=None) -> np.ndarray:
    """uint8 RGB: background = the padding colour, each cell disc darkens what lies under it, nuclei darkest."""
    image = np.full((*shape, 3), PAD_RGB, np.int32)
    for index, centre in enumerate(centres):
        image[disc(shape, centre, cell_radius)] -= 60 if colours is None else colours[index]
    for centre in centres:
        image[disc(shape, centre, nucleus_radius)] = 40
    return np.clip(image, 0, 255).astype(np.uint8)


def full_mask(cell: FieldCell, part: np.ndarray, shape) -> np.ndarray:
    x0, y0, x1, y1 = cell.box
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = part
    return mask


def expected_box(centre, radius, shape):
    row, col = centre
    return (max(col - radius, 0), max(row - radius, 0), min(col + radius + 1, shape[1]), min(row + radius + 1, shape[0]))


def by_nucleus(cells, centres, shape):
    """{centre: the found cells whose nucleus's centroid lies within 2 px of it}."""
    found = {centre: [] for centre in centres}
    for cell in cells:
        nucleus_centre = np.argwhere(full_mask(cell, cell.nuc_mask, shape)).mean(axis=0)
        for centre in centres:
            if np.abs(nucleus_centre - centre).max() <= 2:
                found[centre].append(cell)
    return found


# ---------------------------------------------------------------- segment_field

@pytest.mark.parametrize("block", [2048, 64, 40])
def test_segment_field_finds_every_cell_once_and_whole_across_block_borders(block):
    image = draw_field()
    reads = []

    def read(top, left, bottom, right):
        reads.append((bottom - top, right - left))
        return image[top:bottom, left:right]

    models = fake_models()
    cells = segment_field(read, FIELD_SHAPE, models, block=block)
    assert len(cells) == len(CENTRES)
    found = by_nucleus(cells, CENTRES.values(), FIELD_SHAPE)
    for name, centre in CENTRES.items():
        assert len(found[centre]) == 1, f"{name}: found {len(found[centre])} times"
        (cell,) = found[centre]
        assert cell.box == expected_box(centre, CELL_RADIUS, FIELD_SHAPE), name
        assert np.array_equal(full_mask(cell, cell.cell_mask, FIELD_SHAPE), disc(FIELD_SHAPE, centre, CELL_RADIUS)), name
        assert np.array_equal(full_mask(cell, cell.nuc_mask, FIELD_SHAPE), disc(FIELD_SHAPE, centre, NUCLEUS_RADIUS)), name
        assert cell.cell_mask.shape == cell.nuc_mask.shape == (cell.box[3] - cell.box[1], cell.box[2] - cell.box[0])
        assert cell.score > 0.99
    halo = models.window // 2 + 8
    assert max(max(side) for side in reads) <= block + 2 * halo  # memory follows the block, not the field


def test_segment_field_at_half_scale_brings_cells_back_to_field_pixels():
    shape, centres = (128, 160), [(40, 40), (40, 80), (90, 120)]
    image = draw_field(shape, centres, cell_radius=2 * CELL_RADIUS, nucleus_radius=2 * NUCLEUS_RADIUS)
    cells = segment_field(lambda t, l, b, r: image[t:b, l:r], shape, fake_models(scale=0.5), block=80)
    found = by_nucleus(cells, centres, shape)
    assert len(cells) == len(centres) and all(len(found[centre]) == 1 for centre in centres)
    for centre in centres:
        (cell,) = found[centre]
        truth = disc(shape, centre, 2 * CELL_RADIUS)
        mask = full_mask(cell, cell.cell_mask, shape)
        assert (mask & truth).sum() / (mask | truth).sum() > 0.9
        assert np.abs(np.array(cell.box) - expected_box(centre, 2 * CELL_RADIUS, shape)).max() <= 2


@pytest.mark.parametrize("block", [2048, 64])
def test_segment_field_drops_the_cells_whose_nucleus_the_border_cuts_unless_asked(block):
    cut_nuclei = [(4, 90), (50, 124)]  # nuclei cut by the top and by the right border
    centres = [*CENTRES.values(), *cut_nuclei]
    image = draw_field(centres=centres)
    read = lambda t, l, b, r: image[t:b, l:r]  # noqa: E731
    kept = segment_field(read, FIELD_SHAPE, fake_models(), block=block)
    assert sorted(by_nucleus(kept, centres, FIELD_SHAPE)[c] != [] for c in centres) == [False] * 2 + [True] * len(CENTRES)
    # "cut by the image corner": only its cell is cut
    assert all(by_nucleus(kept, cut_nuclei, FIELD_SHAPE)[c] == [] for c in cut_nuclei)
    everything = segment_field(read, FIELD_SHAPE, fake_models(), block=block, keep_edge_cells=True)
    assert len(everything) == len(centres) and all(len(cells) == 1
                                                   for cells in by_nucleus(everything, centres, FIELD_SHAPE).values())


def test_segment_field_of_an_empty_field_finds_no_cell():
    image = np.full((*FIELD_SHAPE, 3), PAD_RGB, np.uint8)
    models = fake_models()
    assert segment_field(lambda t, l, b, r: image[t:b, l:r], FIELD_SHAPE, models, block=64) == []
    assert models.instances.calls == 0


# ---------------------------------------------------------------- its steps

def test_tiled_probabilities_of_a_pixelwise_model_equal_the_whole_image_answer():
    rng = np.random.default_rng(0)
    for shape in [(70, 90), (20, 24)]:  # not a multiple of the tile; smaller than one tile
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        probs = tiled_probabilities(image, fake_models(tile=32))
        whole = 1 / (1 + np.exp(-fake_field_model(normalize_image(image)[None])))
        assert probs.shape == (2, *shape)
        assert np.allclose(probs, whole[0], atol=1e-5)


def test_tiled_probabilities_take_each_pixel_from_the_tile_whose_centre_is_nearest(monkeypatch):
    tile, shape = 32, (70, 90)
    monkeypatch.setattr(tools.fields.segment, "INFERENCE_TILE_PX", tile)  # tiles of the training side
    distance_to_centre = np.maximum(*np.abs(np.mgrid[0:tile, 0:tile] - (tile - 1) / 2))

    def centre_distance_model(batch):  # logit = minus the distance to the tile's centre (chessboard)
        assert batch.shape[2:] == (tile, tile)
        return np.broadcast_to(-distance_to_centre, (len(batch), 2, tile, tile)).astype(np.float32)

    models = fake_models(tile=tile)
    models.field = centre_distance_model
    probs = tiled_probabilities(np.zeros((*shape, 3), np.uint8), models)
    nearest = np.full(shape, np.inf)
    for top in stride_starts(shape[0], tile, tile * 3 // 4):
        for left in stride_starts(shape[1], tile, tile * 3 // 4):
            nearest[top:top + tile, left:left + tile] = np.minimum(nearest[top:top + tile, left:left + tile],
                                                                   distance_to_centre[:shape[0] - top, :shape[1] - left])
    assert np.allclose(probs[0], 1 / (1 + np.exp(nearest)), atol=1e-6)
    assert nearest[8:-8, 8:-8].max() <= tile / 2 - 4  # away from the image's border no pixel comes from a tile's edge


def test_large_inference_tiles_overlap_less_and_answer_as_training_tiles_do_for_a_pixelwise_model(monkeypatch):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    sides = []

    def pixelwise(batch):
        sides.append(batch.shape[2:])
        return fake_field_model(batch)

    models = fake_models(tile=32)
    models.field = pixelwise
    monkeypatch.setattr(tools.fields.segment, "INFERENCE_TILE_PX", 512)
    large = tiled_probabilities(image, models)  # one 320 x 224 tile
    monkeypatch.setattr(tools.fields.segment, "INFERENCE_TILE_PX", 32)
    small = tiled_probabilities(image, models)
    assert sides[0] == (320, 224) and len(sides) > 20 and all(side == (32, 32) for side in sides[1:])
    assert np.allclose(large, small, atol=1e-6)


def test_nucleus_instances_split_two_touching_nuclei_and_drop_debris():
    shape = (40, 60)
    first, second = disc(shape, (20, 20), 6), disc(shape, (20, 31), 6)  # 11 px apart: they touch
    assert (first & second).any()
    debris = np.zeros(shape, bool)
    debris[2:7, 50:57] = True  # 35 px: under a third of a median nucleus of 13 px across (133 px)
    labels = nucleus_instances((first | second | debris).astype(np.float32), nucleus_px=13)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert labels[debris].max() == 0
    for nucleus in (first, second):
        values, counts = np.unique(labels[nucleus], return_counts=True)
        assert counts.max() / nucleus.sum() > 0.85 and values[counts.argmax()] > 0
    assert labels[20, 20] != labels[20, 31]
    assert np.array_equal(labels > 0, first | second)  # every nucleus pixel is kept
    # the sizes follow the run's nuclei: next to median nuclei of 22 px across (380 px), one of 113 px is debris
    assert nucleus_instances(first.astype(np.float32), nucleus_px=22).max() == 0


def test_window_cell_keeps_the_field_models_nucleus_and_the_instance_models_cell():
    shape = (40, 40)
    cell_prob = disc(shape, (20, 20), 14).astype(np.float32)
    nuc_prob = disc(shape, (20, 20), 7).astype(np.float32)  # the instance model's nucleus: looser than the marker
    marker = disc(shape, (20, 20), 5)
    cell, nucleus, score = window_cell(cell_prob, nuc_prob, marker)
    assert np.array_equal(cell, disc(shape, (20, 20), 14)) and score == 1.0
    assert np.array_equal(nucleus, marker)


def test_to_field_cell_clips_the_window_at_the_image_border():
    window = np.ones((12, 12), bool)
    nucleus = np.zeros((12, 12), bool)
    nucleus[4:8, 4:8] = True
    # a block region whose corner is (row 10, col 20) of the field, 40 x 50; the window reaches above and right of it
    cell = to_field_cell(window, nucleus, 0.8, (-4, 44), (10, 20, 50, 70), 1.0, (40, 50))
    assert cell.box == (64, 10, 70, 18)  # x0, y0 in the field; rows -4..-1 and columns 50.. cut off
    assert cell.cell_mask.shape == (8, 6) and cell.cell_mask.all()
    assert np.array_equal(cell.nuc_mask, nucleus[4:, :6]) and cell.score == 0.8
    assert to_field_cell(window, nucleus, 0.8, (-20, 0), (0, 0, 40, 50), 1.0, (40, 50)) is None  # wholly outside


# ---------------------------------------------------------------- reading fields

def test_open_field_reads_a_tiff_by_regions(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    cases = {"rgb.tif": rgb, "grey.tiff": rgb[..., 1], "rgba.tif": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])}
    for name, pixels in cases.items():
        tifffile.imwrite(tmp_path / name, pixels)
        read, shape, whole = open_field(tmp_path / name)
        assert whole is None and shape == (60, 80)  # mapped, not decoded
        expected = rgb if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
        assert np.array_equal(read(0, 0, 60, 80), expected), name
        assert np.array_equal(read(13, 7, 41, 66), expected[13:41, 7:66]), name
    tifffile.imwrite(tmp_path / "zlib.tif", rgb, compression="zlib")  # not mappable: its strips are decoded by region
    read, shape, whole = open_field(tmp_path / "zlib.tif")
    assert whole is None and np.array_equal(read(5, 5, 20, 30), rgb[5:20, 5:30])
    cv2.imwrite(str(tmp_path / "field.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    read, shape, whole = open_field(tmp_path / "field.png")
    assert np.array_equal(whole, rgb) and shape == (60, 80)


def test_segment_field_reads_a_mapped_tiff_as_it_reads_the_image_in_memory(tmp_path):
    image = draw_field()
    tifffile.imwrite(tmp_path / "field.tif", image)
    read, shape, _ = open_field(tmp_path / "field.tif")
    from_disk = segment_field(read, shape, fake_models(), block=64)
    in_memory = segment_field(lambda t, l, b, r: image[t:b, l:r], FIELD_SHAPE, fake_models(), block=64)
    assert sorted(cell.box for cell in from_disk) == sorted(cell.box for cell in in_memory)
    assert len(from_disk) == len(CENTRES)


# ---------------------------------------------------------------- classification

def test_cell_crop_is_the_box_plus_margin_with_the_masks_in_place():
    image = draw_field()
    cell = FieldCell((10, 8, 20, 16), np.ones((8, 10), bool), np.zeros((8, 10), bool), 1.0)
    crop, cell_mask, nuc_mask = cell_crop(lambda t, l, b, r: image[t:b, l:r], FIELD_SHAPE, cell)
    assert np.array_equal(crop, image[0:16 + CLUSTER_CROP_MARGIN, 0:20 + CLUSTER_CROP_MARGIN])  # clipped at the top-left
    assert cell_mask.sum() == 80 and cell_mask[8:16, 10:20].all() and not nuc_mask.any()


def test_cell_crop_in_a_window_is_centred_on_the_nucleus_and_cuts_the_cell_to_it():
    image = draw_field()
    nucleus = np.zeros((30, 40), bool)
    nucleus[10:14, 20:24] = True  # centre (x, y) = (10 + 21.5, 20 + 11.5) in the field
    cell = FieldCell((10, 20, 50, 50), np.ones((30, 40), bool), nucleus, 1.0)
    crop, cell_mask, nuc_mask = cell_crop(lambda t, l, b, r: image[t:b, l:r], FIELD_SHAPE, cell, window=16)
    assert crop.shape[:2] == (16, 16)
    assert np.array_equal(crop, image[24:40, 24:40])  # the 16 px square around (31.5, 31.5)
    assert nuc_mask.sum() == 16 and nuc_mask[6:10, 6:10].all()
    assert cell_mask.all()  # the cell is larger than the window: cut to it


def test_classify_cells_sets_each_cells_probabilities_from_its_own_crop():
    # two cells, one reddish and one bluish; the fake classifier says "red" where the cell mask is redder than blue
    centres = [(30, 30), (30, 90)]
    image = draw_field((60, 128), centres, colours=[np.array([0, 90, 90]), np.array([90, 90, 0])])
    cells = segment_field(lambda t, l, b, r: image[t:b, l:r], (60, 128), fake_models())
    assert len(cells) == 2

    def classifier(batch):  # [V * B, 5, S, S] -> [V * B, 2] logits: (blue, red) inside the cell mask
        mask = batch[:, 3] > 0.5
        mean = [np.array([channel[m].mean() for channel, m in zip(batch[:, index], mask)]) for index in (2, 0)]
        return 4 * np.stack(mean, axis=1).astype(np.float32)

    pipeline = CellPipeline(None, 0, classifier, 32, ["blue", "red"])
    classify_cells(lambda t, l, b, r: image[t:b, l:r], (60, 128), cells, pipeline, batch_size=1)
    for cell in cells:
        assert cell.probs.shape == (2,) and np.isclose(cell.probs.sum(), 1.0)
    left, right = sorted(cells, key=lambda cell: cell.box[0])
    assert left.probs[1] > 0.9 and right.probs[0] > 0.9


# ---------------------------------------------------------------- generated hostile fields (tests/hostile.py)

@settings(max_examples=hostile.examples(40))
@given(hostile.images(max_side=30))
@example(hostile.GeneratedImage(np.array([[[127, 53]]], np.uint8), ".tif"))  # mapped: cv2.error on 2 channels
@example(hostile.GeneratedImage(np.zeros((3, 5, 4), np.uint8), ".tif", planar=True))  # mapped as 3 x 5, 4 wide
def test_generated_fields_open_as_every_reader_reads_them(image):
    """Whatever open_field maps by regions reads as the whole image does, or both refuse the file in one line."""
    with tempfile.TemporaryDirectory() as folder:
        path = image.write(Path(folder) / "field")
        try:
            whole = read_image(path)
        except UserError:
            with pytest.raises(UserError, match=str(path)):
                open_field(path)
            return
        read, shape, _ = open_field(path)
        assert shape == whole.shape[:2] and np.array_equal(read(0, 0, *shape), whole)
