"""Field-of-view readers: whole microscope fields with many touching or overlapping cells.

Every supported layout becomes a list of `FieldRecord`s; `load_field` turns one into a `FieldSample`.

Layouts (found at any depth below the data root; hidden files and folders and macOS `__MACOSX` are skipped):
  isbi2014  ISBI 2014 overlapping-cell challenge as plain PNGs: <name>.png with one 0/255 mask per cell,
            <name>_cellKK.png (masks of overlapping cells overlap), and/or <name>_nuclei.png, uint16 nucleus
            instance labels (0 = background). Synthetic fields have both; EDF fields have nuclei only.
  sipakmed  SIPaKMeD cluster images as fields: im_<Class>/im_<Class>/NNN.bmp with every NNN_cytMM.dat
            (cell border) and NNN_nucMM.dat (nucleus border), polygons of x,y in image coordinates.
  cric      CRIC Cervix: field images with CRIC's classifications.csv beside them, squamous cells marked by a point
            on the nucleus (tools/layouts/points.py); nuclei and cells are grown from the points (tools/fields/pseudo_masks.py).

The cell target is the WHOLE cell, as in tools.data_loader: a SIPaKMeD cell mask is its cytoplasm polygon OR
the nuclei that lie in it; an ISBI cell mask is stored that way already.
"""
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import ndimage

from tools.fields.pseudo_masks import point_targets
from tools.inputs import input_files
from tools.layouts.files import IMAGE_EXTENSIONS, read_dat_polygon
from tools.layouts.points import is_points_root, read_field_points
from tools.layouts.sipakmed import nucleus_owner
from utils.errors import UserError
from utils.preprocessing import (
    imread_unchanged,
    rasterize_polygons,
    read_image,
    read_mask,
    unreadable_reason,
)

FIELD_LAYOUTS = ("isbi2014", "sipakmed", "cric")
# Matched on the file stem without regard to case, as tools/layouts/files.py matches its names
ISBI_CELL_NAME = re.compile(r"^(?P<field>.+)_cell(?P<number>\d+)$", re.IGNORECASE)
ISBI_NUCLEI_NAME = re.compile(r"^(?P<field>.+)_nuclei$", re.IGNORECASE)
SIPAKMED_POLYGON_NAME = re.compile(r"^(?P<field>.+)_(?P<part>cyt|nuc)(?P<number>\d+)$", re.IGNORECASE)  # not CROPPED's NNN_MM_cyt
FieldKey = Tuple[Path, str]  # (folder, image stem): the files of one field lie beside its image
EXPECTED_LAYOUTS = (
    "isbi2014: <name>.png with <name>_cellKK.png masks and/or <name>_nuclei.png labels beside it; "
    "sipakmed: im_<Class>/im_<Class>/NNN.bmp with NNN_cytMM.dat / NNN_nucMM.dat beside it; "
    "cric: field images with CRIC's classifications.csv beside them"
)


@dataclass
class FieldRecord:
    """One field of view and where its annotations come from; everything after the readers uses only this."""

    field_id: str  # image path below the data root, without extension; unique
    image_path: Path
    group: str  # one field is one group: its cells never straddle a split
    cell_mask_paths: Tuple[Path, ...] = ()  # ISBI: one binary image per cell, in cell-number order
    cell_polygons: List[np.ndarray] = field(default_factory=list)  # SIPaKMeD: [N, 2] x, y in image coordinates
    nuc_polygons: List[np.ndarray] = field(default_factory=list)
    nuc_labels_path: Optional[Path] = None  # ISBI: integer nucleus instance labels
    label: Optional[str] = None  # SIPaKMeD: the class folder; ISBI: the image's folder (synthetic, edf), to stratify splits
    polygon_files: Tuple[Path, ...] = ()  # the .dat file of each cell polygon, then of each nucleus polygon
    points: Optional[np.ndarray] = None  # CRIC: float [N, 2] x, y of each marked nucleus's centre

    @property
    def sample_id(self) -> str:
        """The id the split manifest knows the field by (tools/splits.py treats fields as it treats cells)."""
        return self.field_id

    @property
    def has_cells(self) -> bool:
        """Whether cells are outlined (ISBI EDF fields annotate nuclei only)."""
        return bool(self.cell_mask_paths) or bool(self.cell_polygons) or self.points is not None

    @property
    def has_nuclei(self) -> bool:
        return self.nuc_labels_path is not None or bool(self.nuc_polygons) or self.points is not None


@dataclass
class FieldSample:
    """One decoded field at its own resolution."""

    image: np.ndarray  # uint8 RGB [H, W, 3]
    cell_masks: Optional[List[np.ndarray]]  # bool [H, W] per cell, whole cell; masks may overlap
    nuc_labels: Optional[np.ndarray]  # int32 [H, W] nucleus instances, 0 = background
    nuc_owner: Optional[Dict[int, Optional[int]]] = None  # SIPaKMeD: nucleus label -> index in cell_masks or None
    foreground: Optional[np.ndarray] = None  # points: uint8 [H, W] cell target, UNKNOWN where the points do not tell
    nuc_unsure: Optional[np.ndarray] = None  # points: bool [H, W], where the grown nuclei's borders may be wrong


# ---------------------------------------------------------------- finding files

def visible_files(root: Path) -> List[Path]:
    """Every file below `root` (tools/inputs.input_files: each once, no hidden files, no outputs of this project)."""
    return input_files([root], required=False)


def field_images(files: Sequence[Path], extensions: Sequence[str]) -> Dict[FieldKey, Path]:
    """(folder, stem) -> image path for every image file; two images of one stem in a folder are ambiguous."""
    images: Dict[FieldKey, Path] = {}
    for path in files:
        if path.suffix.lower() not in extensions:
            continue
        key = (path.parent, path.stem)
        if key in images:
            raise UserError(f"{path}: {images[key].name} beside it has the same name; keep one of the two")
        images[key] = path
    return images


def image_of(key: FieldKey, images: Dict[FieldKey, Path], annotation: Path) -> Path:
    if key not in images:
        raise UserError(f"{annotation}: no image {key[1]}.<png|bmp|tif|jpg> beside it for this annotation; "
                        f"add the field image or remove its annotation files")
    return images[key]


def is_isbi_annotation(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and bool(
        ISBI_CELL_NAME.match(path.stem) or ISBI_NUCLEI_NAME.match(path.stem))


def is_sipakmed_polygon(path: Path) -> bool:
    return path.suffix.lower() == ".dat" and bool(SIPAKMED_POLYGON_NAME.match(path.stem))


# ---------------------------------------------------------------- layout readers

def isbi_annotations(files: Sequence[Path]) -> Tuple[Dict[FieldKey, List[Tuple[int, Path]]], Dict[FieldKey, Path]]:
    """(cell masks as (number, path) per field, nucleus label image per field) among `files`."""
    cells: Dict[FieldKey, List[Tuple[int, Path]]] = defaultdict(list)
    nuclei: Dict[FieldKey, Path] = {}
    for path in files:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if match := ISBI_CELL_NAME.match(path.stem):
            cells[(path.parent, match["field"])].append((int(match["number"]), path))
        elif match := ISBI_NUCLEI_NAME.match(path.stem):
            key = (path.parent, match["field"])
            if key in nuclei:
                raise UserError(f"{path}: {nuclei[key].name} beside it labels the same field; keep one of the two")
            nuclei[key] = path
    return cells, nuclei


def read_isbi2014(root: Path) -> List[FieldRecord]:
    """Every ISBI 2014-style field below `root`: images with _cellKK masks and/or a _nuclei label image beside them.

    Images without any annotation beside them are not fields and are left out.
    """
    root = Path(root)
    files = visible_files(root)
    cells, nuclei = isbi_annotations(files)
    annotated_folders = {folder for folder, _ in (*cells, *nuclei)}
    images = field_images([p for p in files if p.parent in annotated_folders and not is_isbi_annotation(p)],
                          IMAGE_EXTENSIONS)
    records = []
    for key in sorted(set(cells) | set(nuclei)):
        annotation = sorted(cells[key])[0][1] if key in cells else nuclei[key]
        image_path = image_of(key, images, annotation)
        field_id = image_path.relative_to(root).with_suffix("").as_posix()
        records.append(FieldRecord(
            field_id=field_id, image_path=image_path, group=field_id, label=image_path.parent.name,
            cell_mask_paths=tuple(path for _, path in sorted(cells.get(key, []))),
            nuc_labels_path=nuclei.get(key)))
    return records


def read_sipakmed_fields(root: Path) -> List[FieldRecord]:
    """Every SIPaKMeD cluster image below `root` with its NNN_cytMM.dat / NNN_nucMM.dat polygons.

    The class is the name of the folder that holds the image (im_<Class>); the group, `<class>/<NNN>`, is the
    one tools.data_loader gives the cells of this cluster image, so field and cell splits can agree.
    """
    root = Path(root)
    files = visible_files(root)
    polygon_files: Dict[FieldKey, Dict[str, List[Tuple[int, Path]]]] = defaultdict(lambda: {"cyt": [], "nuc": []})
    for path in files:
        if is_sipakmed_polygon(path):
            match = SIPAKMED_POLYGON_NAME.match(path.stem)
            polygon_files[(path.parent, match["field"])][match["part"].lower()].append((int(match["number"]), path))
    images = field_images([p for p in files if p.parent in {folder for folder, _ in polygon_files}], IMAGE_EXTENSIONS)
    records = []
    for key in sorted(polygon_files):
        cyt_files = [path for _, path in sorted(polygon_files[key]["cyt"])]
        nuc_files = [path for _, path in sorted(polygon_files[key]["nuc"])]
        image_path = image_of(key, images, (cyt_files + nuc_files)[0])
        label = image_path.parent.name
        records.append(FieldRecord(
            field_id=image_path.relative_to(root).with_suffix("").as_posix(), image_path=image_path,
            group=f"{label}/{image_path.stem}", label=label,
            cell_polygons=[read_dat_polygon(f) for f in cyt_files], nuc_polygons=[read_dat_polygon(f) for f in nuc_files],
            polygon_files=(*cyt_files, *nuc_files)))
    return records


def read_cric_fields(root: Path) -> List[FieldRecord]:
    """Every field of a CRIC-style folder (tools/layouts/points.py), with its marked nuclei; the field is its own group."""
    return [FieldRecord(field_id=field.field_id, image_path=field.image_path, group=field.field_id,
                        label="abnormal" if set(field.labels) - {"NILM"} else "NILM", points=field.points)
            for field in read_field_points(Path(root))]


FIELD_READERS = {"isbi2014": read_isbi2014, "sipakmed": read_sipakmed_fields, "cric": read_cric_fields}


def detect_field_layout(root: Path) -> Optional[str]:
    """'cric' when a CRIC classifications.csv lies in `root`, 'sipakmed' when SIPaKMeD cluster polygons lie below it,
    else 'isbi2014' when ISBI masks do, else None."""
    if is_points_root(root):
        return "cric"
    files = visible_files(Path(root))
    if any(is_sipakmed_polygon(p) for p in files):
        return "sipakmed"
    if any(is_isbi_annotation(p) for p in files):
        return "isbi2014"
    return None


def read_fields(root: Path, layout: str = "auto", check: bool = True) -> Tuple[List[FieldRecord], str]:
    """Read every field of a data root.

    Args:
        root: folder holding the fields at any depth.
        layout: 'auto', or one of FIELD_LAYOUTS.
        check: decode every field once now (`load_field`), so that an unreadable file, a mask of the wrong
            size or a non-integer label image stops the run here rather than halfway through training.

    Returns:
        (records sorted by field_id, the layout used).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data root does not exist or is not a folder; pass --data-root PATH")
    if layout == "auto":
        layout = detect_field_layout(root)
        if layout is None:
            raise UserError(f"{root}: no fields found (expected {EXPECTED_LAYOUTS}); point --data-root at the folder "
                            f"that holds them")
    if layout not in FIELD_READERS:
        raise UserError(f"unknown field layout {layout!r}; choose one of: auto, {', '.join(FIELD_LAYOUTS)}")
    records = sorted(FIELD_READERS[layout](root), key=lambda r: r.field_id)
    if not records:
        raise UserError(f"{root}: the {layout} layout found no fields (expected {EXPECTED_LAYOUTS}); check --data-root "
                        f"and --layout")
    if check:
        for record in records:
            # a point-marked field's targets are grown when it is prepared; its points were checked when read
            load_field(record) if record.points is None else read_image(record.image_path)
    return records, layout


# ---------------------------------------------------------------- loading one field

def read_nucleus_labels(path: Path, shape: Tuple[int, int]) -> np.ndarray:
    """Read a nucleus instance label image as int32 [H, W] (0 = background), every instance solid.

    A label image that holds a single foreground value in several separate blobs is a binary mask saved in its
    place; its blobs become the instances, since one nucleus in pieces across the field is not what it meant.
    """
    labels = imread_unchanged(path)  # keeps 16-bit labels 16-bit
    if labels is None or labels.size == 0:
        raise UserError(f"{path}: cannot read this nucleus label image, {unreadable_reason(path)}; replace or remove it")
    if labels.ndim != 2:
        raise UserError(f"{path}: nucleus labels have {labels.shape[2]} channels; save them as one grey integer "
                        f"channel (0 = background, 1..N = nuclei), e.g. a 16-bit PNG")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: nucleus labels hold {labels.dtype} values, not integers; save them as an integer "
                        f"image (0 = background, 1..N = nuclei), e.g. a 16-bit PNG")
    if labels.shape != tuple(shape):
        raise UserError(f"{path}: nucleus labels are {labels.shape[1]}x{labels.shape[0]} but the field image is "
                        f"{shape[1]}x{shape[0]}; relabel at the image's size or remove the file")
    if len(np.unique(labels)) == 2:
        _, labels = cv2.connectedComponents((labels > 0).astype(np.uint8), connectivity=8)
    return filled_instances(labels.astype(np.int32))


def filled_instances(labels: np.ndarray) -> np.ndarray:
    """Each instance with its holes filled: nuclei are solid, and some annotators draw only their outline
    (half of the ISBI 2014 EDF label images here are rings, which as masks would be a quarter of each nucleus)."""
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            region = labels[box]
            region[ndimage.binary_fill_holes(region == index) & (region == 0)] = index
    return labels


def read_cell_mask(path: Path, shape: Tuple[int, int]) -> np.ndarray:
    mask = read_mask(path, shape)
    if not mask.any():
        raise UserError(f"{path}: the cell mask is empty (no foreground pixel); outline the cell or remove the file")
    return mask


def check_field_polygons(record: FieldRecord, shape: Tuple[int, int]) -> None:
    """Polygons reaching outside the image belong to another image; drawing them would make garbage masks."""
    height, width = shape
    slack = 1.0  # points on the last pixel edge are fine
    for polygon, path in zip(record.cell_polygons + record.nuc_polygons, record.polygon_files):
        (x0, y0), (x1, y1) = polygon.min(axis=0), polygon.max(axis=0)
        if x0 < -slack or y0 < -slack or x1 > width - 1 + slack or y1 > height - 1 + slack:
            raise UserError(f"{path}: points reach ({x0:.0f}..{x1:.0f}, {y0:.0f}..{y1:.0f}) outside the {width}x{height} "
                            f"image {record.image_path.name}; the polygon belongs to another image, fix or remove it")


PolygonAnnotations = Tuple[Optional[List[np.ndarray]], Optional[np.ndarray], Optional[Dict[int, Optional[int]]]]


def polygon_annotations(record: FieldRecord, shape: Tuple[int, int]) -> PolygonAnnotations:
    """(whole-cell masks, nucleus labels with polygon k as label k + 1, nucleus owners) drawn from SIPaKMeD polygons."""
    check_field_polygons(record, shape)
    nuc_masks = [rasterize_polygons([p], shape) for p in record.nuc_polygons]
    # Cluster files number nuclei and cells independently: a nucleus belongs to the cell around its centroid
    nuc_owner = {k + 1: nucleus_owner(p, record.cell_polygons) for k, p in enumerate(record.nuc_polygons)}
    cell_masks = [rasterize_polygons([p], shape) for p in record.cell_polygons]
    for nuc_label, owner in nuc_owner.items():
        if owner is not None:
            cell_masks[owner] |= nuc_masks[nuc_label - 1]
    nuc_labels = None
    if nuc_masks:
        nuc_labels = np.zeros(shape, np.int32)
        for nuc_label, nuc_mask in enumerate(nuc_masks, start=1):
            nuc_labels[nuc_mask] = nuc_label  # SIPaKMeD nuclei do not overlap; if they did, the later one wins
    return cell_masks or None, nuc_labels, nuc_owner or None


def load_field(record: FieldRecord) -> FieldSample:
    """Decode one field and its annotations at the image's own resolution.

    Returns:
        FieldSample with image uint8 RGB [H, W, 3] (grey ISBI images become RGB), cell_masks (None when cells
        are not annotated), nuc_labels int32 [H, W] (None when nuclei are not annotated) and, for polygon
        layouts, nuc_owner.
    """
    image = read_image(record.image_path)
    shape = image.shape[:2]
    if record.points is not None:
        nuc_labels, nuc_unsure, cell_masks, foreground = point_targets(image, record.points)
        return FieldSample(image, cell_masks, nuc_labels, {k + 1: k for k in range(len(cell_masks))}, foreground, nuc_unsure)
    if record.cell_polygons or record.nuc_polygons:
        return FieldSample(image, *polygon_annotations(record, shape))
    cell_masks = [read_cell_mask(p, shape) for p in record.cell_mask_paths] or None
    nuc_labels = read_nucleus_labels(record.nuc_labels_path, shape) if record.nuc_labels_path else None
    return FieldSample(image=image, cell_masks=cell_masks, nuc_labels=nuc_labels)
