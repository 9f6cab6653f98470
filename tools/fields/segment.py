"""Whole fields of view at inference: find every cell, separate touching and overlapping ones, link each nucleus
to its cell, and classify each cell as the single-cell crops are classified.

segment_field works block by block (default 2048 px of the field), each block with a halo of half a cell
window around it, so memory follows the block size, not the image size, and a cell on a block border
comes out whole: a cell belongs to the block that holds its nucleus's centre, and its window reaches into
the halo. In a block:
  1. the field model is tiled over the block (tiles of INFERENCE_TILE_PX overlap by a quarter of a training tile;
     each pixel is taken from the tile where it lies furthest from the edge) giving foreground and nucleus
     probabilities;
  2. nuclei become instances (threshold, then a watershed on the distance to the background splits
     touching nuclei);
  3. the instance model predicts each nucleus's whole cell in a window around it: overlapping cells each
     keep their whole outline.
The two models and how they are loaded (ONNX Runtime or PyTorch): tools/fields/models.py.
"""
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import ndimage

from tools.fields.geometry import crop_padded, shrunk_window, window_corner, window_input
from tools.fields.models import FieldModels
from tools.inference import CellPipeline, batched, sigmoid
from tools.layouts.points import centred_box
from tools.layouts.sipakmed import CLUSTER_CROP_MARGIN
from utils.preprocessing import PAD_RGB, fill_holes, largest_component, normalize_image

# Nucleus instances, relative to the run's median nucleus (its diameter at the model scale: FieldModels.nucleus_px).
# Tuned on the ISBI 2014 fields (EDF nucleus F1 at IoU 0.5 0.80 -> 0.90 on the run's train fields, 0.82 -> 0.92 on
# its held-out ones, synthetic 0.97 -> 1.00): the looser values of before cut elongated nuclei in two and kept debris.
NUCLEUS_THRESHOLD = 0.7  # nucleus probability: at 0.5 the field model's nuclei are ~20% larger than the annotated ones
MIN_NUCLEUS_SHARE = 0.32  # blobs under this share of the median nucleus's area are debris or inflammatory-cell fragments
# A block's nucleus probabilities reach this many median nucleus diameters beyond its core: a nucleus whose centre lies
# in the core comes out whole up to 6 median diameters across (dysplastic nuclei reach 3-4), and the halo beyond it,
# which only the cell windows read, costs no field-model time
NUCLEUS_MARGIN = 3
# Side of the field model's tiles at inference (model px; the ONNX graph takes any multiple of 32). Larger tiles overlap
# less (512: 1.31x the pixels instead of 1.78x) but, measured on the 8 ISBI EDF fields (docs/experiments-fields.md),
# found fewer nuclei of the test field (edf07 F1 0.954 at 256, 0.892 at 384, 0.896 at 512) and took longer on
# 1024 px fields: the training side it is
INFERENCE_TILE_PX = 256


@dataclass
class FieldCell:
    """One cell found in a field, in field (native) pixels."""

    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 of the cell's bounding box, x1/y1 exclusive
    cell_mask: np.ndarray  # bool [y1 - y0, x1 - x0], the whole cell
    nuc_mask: np.ndarray  # bool, same box: its nucleus
    score: float  # mean cell probability inside the mask
    probs: Optional[np.ndarray] = None  # class probabilities, when classified
    measurements: dict = field(default_factory=dict)


# ---------------------------------------------------------------- 1. tiled field model

def tiled_probabilities(image: np.ndarray, models: FieldModels, tissue: Optional[np.ndarray] = None,
                        area: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
    """Flip-free foreground and nucleus probabilities [2, H, W] of an image at the model scale.

    Tiles are INFERENCE_TILE_PX a side (or the area's side, rounded up to 32, when it is smaller; never smaller
    than the training tiles), laid flush over `area` (top, left, bottom, right; default: the whole image) and
    overlapping by a quarter of a training tile; each output pixel comes from the tile whose centre is nearest, so
    no pixel is taken from within an eighth of a training tile of a tile's edge, where the model sees little
    context. A tile reads the image around the area as its context. With `tissue` (bool [H, W]), a tile whose own
    pixels (those nearer its centre than any other's) hold no tissue is not run. Probabilities stay 0 where no
    tile ran.
    """
    height, width = image.shape[:2]
    top, left, bottom, right = area or (0, 0, height, width)
    side = max(models.tile, INFERENCE_TILE_PX)
    tile_h, tile_w = (max(models.tile, min(side, -(-length // 32) * 32)) for length in (bottom - top, right - left))
    overlap = models.tile // 4
    rows = [top + start for start in stride_starts(bottom - top, tile_h, tile_h - overlap)]
    cols = [left + start for start in stride_starts(right - left, tile_w, tile_w - overlap)]
    corners = [(row, col) for row in rows for col in cols]
    if tissue is not None:
        owned_rows, owned_cols = owned_spans(rows, tile_h, top, bottom), owned_spans(cols, tile_w, left, right)
        corners = [(row, col) for (row, rows_owned), (col, cols_owned) in
                   ((r, c) for r in zip(rows, owned_rows) for c in zip(cols, owned_cols))
                   if tissue[rows_owned, cols_owned].any()]
    probs = np.zeros((2, height, width), np.float32)
    best = np.full((height, width), np.inf, np.float32)  # distance of each pixel to the centre of the tile it came from
    yy, xx = np.mgrid[0:tile_h, 0:tile_w].astype(np.float32)
    centre_distance = np.maximum(np.abs(yy - (tile_h - 1) / 2), np.abs(xx - (tile_w - 1) / 2))
    per_batch = max(1, models.batch_size * models.tile ** 2 // (tile_h * tile_w))  # the pixels of a training batch
    for chunk in batched(corners, per_batch):
        batch = np.stack([normalize_image(crop_padded(image, row, col, (tile_h, tile_w), PAD_RGB)) for row, col in chunk])
        outputs = sigmoid(models.field(batch))  # [B, 2, tile_h, tile_w]
        for (row, col), output in zip(chunk, outputs):
            rows_in, cols_in = slice(row, min(row + tile_h, bottom)), slice(col, min(col + tile_w, right))
            h, w = rows_in.stop - row, cols_in.stop - col
            closer = centre_distance[:h, :w] < best[rows_in, cols_in]
            best[rows_in, cols_in][closer] = centre_distance[:h, :w][closer]
            probs[:, rows_in, cols_in][:, closer] = output[:, :h, :w][:, closer]
    return probs


def owned_spans(starts: Sequence[int], tile: int, low: int, high: int) -> List[slice]:
    """Along one axis, the pixels each tile owns: those nearer its centre than any other tile's (low..high)."""
    centres = [start + tile / 2 for start in starts]
    bounds = [low] + [int(np.ceil((a + b) / 2)) for a, b in zip(centres, centres[1:])] + [high]
    return [slice(a, max(a, b)) for a, b in zip(bounds, bounds[1:])]


def stride_starts(length: int, tile: int, step: int) -> List[int]:
    starts = list(range(0, max(length - tile, 0) + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


# ---------------------------------------------------------------- 2. nuclei

def nucleus_instances(nuc_prob: np.ndarray, nucleus_px: float) -> np.ndarray:
    """int32 [H, W] nucleus labels: the thresholded map, touching nuclei split by a distance-transform watershed.

    nucleus_px: the median nucleus's diameter in these pixels. Watershed markers are distance-transform peaks at
    least a median nucleus's radius apart and half as deep; blobs under MIN_NUCLEUS_SHARE of its area are dropped.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    radius = max(1, round(nucleus_px / 2))
    whole = fill_holes(nuc_prob > NUCLEUS_THRESHOLD)
    labels = np.zeros(whole.shape, np.int32)
    rows, cols = np.nonzero(whole.any(axis=1))[0], np.nonzero(whole.any(axis=0))[0]
    if rows.size == 0:
        return labels
    # the work below is done in the nuclei's bounding box and a ring of background (the same distances): a block of
    # a slide is mostly glass
    box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
    mask = whole[box]
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=radius, threshold_abs=radius / 2,
                           labels=ndimage.label(mask)[0], exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    found = watershed(-distance, markers, mask=mask)
    # a component without a peak (too thin for one) is still a nucleus
    unmarked, count = ndimage.label(mask & (found == 0))
    found[unmarked > 0] = unmarked[unmarked > 0] + found.max()
    sizes = np.bincount(found.ravel())
    found[sizes[found] < MIN_NUCLEUS_SHARE * np.pi * (nucleus_px / 2) ** 2] = 0
    labels[box] = relabel(found)
    return labels


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in order of appearance, 0 kept as background."""
    values = np.unique(labels)
    lookup = np.zeros(values.max() + 1, np.int32)
    lookup[values[values > 0]] = np.arange(1, (values > 0).sum() + 1)
    return lookup[labels]


# ---------------------------------------------------------------- 3. cells

def nucleus_centres(labels: np.ndarray) -> List[Tuple[int, np.ndarray]]:
    """(label, centroid (row, col)) of every nucleus, labels 1..N all present (nucleus_instances renumbers them)."""
    rows, cols = np.nonzero(labels)
    found = labels[rows, cols]
    count = np.bincount(found, minlength=labels.max() + 1).astype(np.float64)
    centre_rows = np.bincount(found, weights=rows, minlength=len(count)) / np.maximum(count, 1)
    centre_cols = np.bincount(found, weights=cols, minlength=len(count)) / np.maximum(count, 1)
    return [(label, np.array([centre_rows[label], centre_cols[label]])) for label in range(1, len(count)) if count[label]]


def cell_windows(image: np.ndarray, labels: np.ndarray, nuclei: Sequence[Tuple[int, np.ndarray]],
                 models: FieldModels) -> Iterator[Tuple[int, Tuple[int, int], np.ndarray, np.ndarray, np.ndarray]]:
    """Per nucleus: (label, the window's top-left corner, its bool marker, cell probability, nucleus probability),
    the last three [window, window] around the nucleus's centre."""
    window, size = models.window, models.instance_size
    for chunk in batched(list(nuclei), models.batch_size):
        corners = [window_corner(centre, window) for _, centre in chunk]
        markers = [crop_padded(labels, top, left, window, 0) == label for (label, _), (top, left) in zip(chunk, corners)]
        inputs = [window_input(*shrunk_window(crop_padded(image, top, left, window, PAD_RGB), marker.astype(np.uint8), size))
                  for (top, left), marker in zip(corners, markers)]
        outputs = sigmoid(models.instances(np.stack(inputs)))
        for (label, _), corner, marker, output in zip(chunk, corners, markers, outputs):
            back = [cv2.resize(channel, (window, window), interpolation=cv2.INTER_LINEAR) for channel in output]
            yield label, corner, marker, back[0], back[1]


def window_cell(cell_prob: np.ndarray, nuc_prob: np.ndarray,
                nucleus: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray, float]]:
    """(cell mask, nucleus mask, score) in a window: the cell's component that holds its nucleus, solid.

    The nucleus returned is the field model's (`nucleus`, the marker): the instance model's nucleus head only helps
    find the cell's component, since its nuclei are looser (Dice with the annotated nuclei 0.86 against 0.92 on the
    ISBI 2014 synthetic fields, 0.85 against 0.90 on EDF).
    """
    cell = cell_prob > 0.5
    marked = (nuc_prob > 0.5) | nucleus
    components, count = ndimage.label(cell | marked)
    owner = np.bincount(components[marked & (components > 0)]).argmax() if (marked & (components > 0)).any() else 0
    if owner == 0:
        return None
    cell = fill_holes(components == owner)
    nucleus = fill_holes(largest_component(nucleus & cell))
    return cell, nucleus, float(cell_prob[cell].mean())


# ---------------------------------------------------------------- a whole field, block by block

def block_origins(length: int, block: int) -> List[int]:
    return list(range(0, length, block))


def segment_field(read: Callable[[int, int, int, int], np.ndarray], shape: Tuple[int, int], models: FieldModels,
                  block: int = 2048, keep_edge_cells: bool = False) -> List[FieldCell]:
    """Every cell of a field.

    Args:
        read: (top, left, bottom, right) in field pixels -> uint8 RGB of that region (clipped to the field).
        shape: (height, width) of the field in its own pixels.
        models: the field and instance models.
        block: side of a block in field pixels; memory grows with (block + a cell window)^2, not the field.
        keep_edge_cells: also return the cells whose nucleus the field's border cuts (nucleus_on_edge).

    Returns:
        the cells, in field pixels, each once.
    """
    halo = int(np.ceil(models.window / models.scale / 2)) + 8  # field px around a block: any cell of it fits
    cells = []
    for top in block_origins(shape[0], block):
        for left in block_origins(shape[1], block):
            region = (max(top - halo, 0), max(left - halo, 0),
                      min(top + block + halo, shape[0]), min(left + block + halo, shape[1]))
            core = (top, left, min(top + block, shape[0]), min(left + block, shape[1]))
            cells += segment_block(read(*region), region, core, models)
    return cells if keep_edge_cells else [cell for cell in cells if not nucleus_on_edge(cell, shape)]


def nucleus_on_edge(cell: FieldCell, shape: Tuple[int, int]) -> bool:
    """Whether the field's border cuts the cell's nucleus. Such a cell's nuclear size, shape and grade cannot be
    measured: ISBI 2014's EDF annotation leaves these nuclei out (none of its 274 touches the border), as
    CellProfiler drops objects on the border by default. On the ISBI fields dropping them turned 8 false
    positives and 2 true ones into nothing (EDF nucleus F1 held out 0.910 -> 0.924)."""
    rows, cols = np.nonzero(cell.nuc_mask)
    if rows.size == 0:
        return False
    x0, y0 = cell.box[:2]
    return bool(y0 + rows.min() == 0 or x0 + cols.min() == 0 or y0 + rows.max() == shape[0] - 1
                or x0 + cols.max() == shape[1] - 1)


def to_model_scale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def segment_block(image: np.ndarray, region: Tuple[int, int, int, int], core: Tuple[int, int, int, int],
                  models: FieldModels, scale: Optional[float] = None, tissue: Optional[np.ndarray] = None) -> List[FieldCell]:
    """The cells whose nucleus centre lies in `core` (field px), found in `image` = the field's `region`.

    scale: field px -> model px (default: the training fields' scale, models.scale); tissue: bool [H, W] of the
    region, False where the field model need not run (glass).
    """
    scale = scale or models.scale
    scaled = to_model_scale(image, scale)
    area = nucleus_area(region, core, scale, scaled.shape[:2], models.nucleus_px)
    if tissue is not None:
        tissue = cv2.resize(tissue.astype(np.uint8), scaled.shape[1::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
        area = bounding_box(tissue, area)
        if area is None:
            return []
    probs = tiled_probabilities(scaled, models, tissue, area)
    labels = nucleus_instances(probs[1], models.nucleus_px)
    nuclei = []
    for label, centre in nucleus_centres(labels):
        row, col = region[0] + centre[0] / scale, region[1] + centre[1] / scale
        if core[0] <= row < core[2] and core[1] <= col < core[3]:
            nuclei.append((label, centre))
    cells = []
    for label, corner, marker, cell_prob, nuc_prob in cell_windows(scaled, labels, nuclei, models):
        found = window_cell(cell_prob, nuc_prob, marker)
        if found is not None:
            cells.append(to_field_cell(*found, corner, region, scale, image.shape[:2]))
    return [cell for cell in cells if cell is not None]


def nucleus_area(region, core, scale: float, shape: Tuple[int, int], nucleus_px: float) -> Tuple[int, int, int, int]:
    """Where a block needs nucleus probabilities (model px of its region): its core and NUCLEUS_MARGIN median nuclei
    around it, so that every nucleus whose centre lies in the core is whole; the rest of the halo is only read by
    the cell windows."""
    margin = int(np.ceil(NUCLEUS_MARGIN * nucleus_px))
    top, left = (int(np.floor((core[i] - region[i]) * scale)) - margin for i in (0, 1))
    bottom, right = (int(np.ceil((core[i + 2] - region[i]) * scale)) + margin for i in (0, 1))
    return max(top, 0), max(left, 0), min(bottom, shape[0]), min(right, shape[1])


def bounding_box(mask: np.ndarray, within: Tuple[int, int, int, int]) -> Optional[Tuple[int, int, int, int]]:
    """(top, left, bottom, right) of the mask's pixels inside `within`, or None when there are none."""
    top, left, bottom, right = within
    part = mask[top:bottom, left:right]
    rows, cols = np.nonzero(part.any(axis=1))[0], np.nonzero(part.any(axis=0))[0]
    if rows.size == 0:
        return None
    return top + rows[0], left + cols[0], top + rows[-1] + 1, left + cols[-1] + 1


def to_field_cell(cell: np.ndarray, nucleus: np.ndarray, score: float, window_corner: Tuple[int, int],
                  region: Tuple[int, int, int, int], scale: float, region_shape: Tuple[int, int]) -> Optional[FieldCell]:
    """A window's cell brought back to field pixels, cropped to its bounding box and to the region."""
    rows, cols = np.nonzero(cell)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    cell, nucleus = cell[y0:y1, x0:x1], nucleus[y0:y1, x0:x1]
    top, left = window_corner[0] + y0, window_corner[1] + x0  # in the region at the model scale
    if scale != 1.0:
        top, left = int(round(top / scale)), int(round(left / scale))
        size = (max(1, round(cell.shape[1] / scale)), max(1, round(cell.shape[0] / scale)))
        cell, nucleus = (cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
                         for mask in (cell, nucleus))
    # the window may reach past the image (it was padded there): keep what lies inside
    clip_top, clip_left = max(-top, 0), max(-left, 0)
    clip_bottom = max(top + cell.shape[0] - region_shape[0], 0)
    clip_right = max(left + cell.shape[1] - region_shape[1], 0)
    cell = cell[clip_top:cell.shape[0] - clip_bottom, clip_left:cell.shape[1] - clip_right]
    nucleus = nucleus[clip_top:nucleus.shape[0] - clip_bottom, clip_left:nucleus.shape[1] - clip_right]
    if not cell.any():
        return None
    top, left = top + clip_top, left + clip_left
    box = (region[1] + left, region[0] + top, region[1] + left + cell.shape[1], region[0] + top + cell.shape[0])
    return FieldCell(box, cell, nucleus & cell, score)


# ---------------------------------------------------------------- classification of the cells

def cell_crop(read: Callable, shape: Tuple[int, int], cell: FieldCell,
              window: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cell cut out as its classifier's training cells were, with its masks: its box plus CLUSTER_CROP_MARGIN
    (SIPaKMeD cluster cells), or with `window` the square of that side around its nucleus's centre, shifted inside
    the field (CRIC's points: tools/layouts/points.centred_box)."""
    x0, y0, x1, y1 = cell.box
    if window:
        rows, cols = np.nonzero(cell.nuc_mask if cell.nuc_mask.any() else cell.cell_mask)
        left, top, right, bottom = centred_box((x0 + cols.mean(), y0 + rows.mean()), (shape[1], shape[0]), window)
    else:
        top, left = max(y0 - CLUSTER_CROP_MARGIN, 0), max(x0 - CLUSTER_CROP_MARGIN, 0)
        bottom, right = min(y1 + CLUSTER_CROP_MARGIN, shape[0]), min(x1 + CLUSTER_CROP_MARGIN, shape[1])
    image = read(top, left, bottom, right)
    masks = [np.zeros(image.shape[:2], bool) for _ in range(2)]
    # the cell's box clipped to the crop (a window may cut a large cell)
    inner_top, inner_left = max(y0, top), max(x0, left)
    inner_bottom, inner_right = min(y1, bottom), min(x1, right)
    for full, part in zip(masks, (cell.cell_mask, cell.nuc_mask)):
        full[inner_top - top:inner_bottom - top, inner_left - left:inner_right - left] = \
            part[inner_top - y0:inner_bottom - y0, inner_left - x0:inner_right - x0]
    return image, masks[0], masks[1]


def classify_cells(read: Callable, shape: Tuple[int, int], cells: List[FieldCell], pipeline: CellPipeline,
                   batch_size: int = 16) -> None:
    """Set each cell's class probabilities with the single-cell classifier (stage 2)."""
    for chunk in batched(cells, batch_size):
        crops = [cell_crop(read, shape, cell, pipeline.cell_window) for cell in chunk]
        predictions = pipeline.predict([image for image, _, _ in crops], [(cell, nuc) for _, cell, nuc in crops])
        for cell, prediction in zip(chunk, predictions):
            cell.probs = prediction.probs
