"""The single-cell family: any cell data root, its layout detected or named, read into CellRecords
(read_records), and which of its classes are normal."""
import os
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tools.config import unknown_name
from tools.inputs import check_not_output
from tools.layouts.files import (
    IMAGE_EXTENSIONS,
    class_folders,
    files_by_lower_name,
    image_files,
)
from tools.layouts.paired import (
    DEFAULT_MASK_SUFFIXES,
    is_mask_name,
    read_labels_only,
    read_paired,
)
from tools.layouts.points import NORMAL_CLASS, is_points_root, read_cric_cells
from tools.layouts.record import CellRecord
from tools.layouts.review import read_review_points
from tools.layouts.sipakmed import (
    read_sipakmed_clusters,
    read_sipakmed_cropped,
    sipakmed_inner_folder,
)
from utils.errors import UserError

LAYOUTS = ("sipakmed", "paired", "labels", "cric", "review")


def suffixes_beside_images(root: Path) -> List[str]:
    """The endings of the files named after an image beside them (<n>N.png beside <n>.bmp: N.png), most common first."""
    counts: Counter = Counter()
    for folder in class_folders(root):
        files = list(files_by_lower_name(folder).values())
        stems = {p.stem.lower() for p in files if p.suffix.lower() in IMAGE_EXTENSIONS}
        for path in files:
            counts.update(path.name[cut:] for cut in range(1, len(path.stem)) if path.name[:cut].lower() in stems)
    return [suffix for suffix, _ in counts.most_common(8)]


def check_mask_suffixes(root: Path, layout: str, nuc_suffix: str, cyt_suffix: str) -> None:
    """Mask suffixes that no file has would make a paired root labels-only (its masks trained as cells), or every mask
    missing: name the endings the files have."""
    custom = (nuc_suffix, cyt_suffix) != DEFAULT_MASK_SUFFIXES
    if layout != "paired" and not (layout == "labels" and custom):
        return
    found = suffixes_beside_images(root)
    for flag, suffix in (("--nuc-suffix", nuc_suffix), ("--cyt-suffix", cyt_suffix)):
        if suffix.lower() not in {s.lower() for s in found}:
            raise UserError(f"{root}: {flag}: {unknown_name(suffix, found, 'mask suffix')}; pass the ending of the mask "
                            f"files' names (any case), or --layout labels to train without masks")

def has_boundary_files(folder: Path) -> bool:
    return any(re.fullmatch(r".*_cyt\d*\.dat", name) for name in files_by_lower_name(folder))


def detect_layout(root: Path, nuc_suffix: str = "N.png") -> str:
    """Name the layout of a data root from what its class folders hold."""
    if is_points_root(root):
        return "cric"
    folders = class_folders(root)
    if any((sipakmed_inner_folder(f) / "CROPPED").is_dir() or has_boundary_files(sipakmed_inner_folder(f)) for f in folders):
        return "sipakmed"
    images = [p for f in folders for p in image_files(f)]
    if any(is_mask_name(p.name, (nuc_suffix,)) for p in images):
        return "paired"
    if images:
        return "labels"
    raise UserError(
        f"{root}: no known data layout found (expected one of: sipakmed: im_<Class>/im_<Class>/*.bmp with "
        f"*_cytNN.dat, or CROPPED/*_cyt.dat; paired: <class>/<n>.bmp with <n>N.png and <n>C.png; "
        f"labels: <class>/*.png|jpg|bmp|tif; cric: field images with classifications.csv; review, named with --layout "
        f"review: review.py --export-points' folder); point --data-root at the folder that holds the class folders"
    )


def read_records(root: Path, layout: str = "auto", sipakmed_source: str = "cropped", nuc_suffix: str = "N.png",
                 cyt_suffix: str = "C.png", skip_bad: bool = False) -> Tuple[List[CellRecord], str]:
    """Read every cell of a data root. Returns (records sorted by sample_id, the layout used).

    A cell whose boundary or mask files are bad stops the run; under skip_bad it is kept with its `problem`.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data root does not exist or is not a folder; pass --data-root PATH")
    check_not_output(root, str(root))
    layout = detect_layout(root, nuc_suffix) if layout == "auto" else layout
    check_mask_suffixes(root, layout, nuc_suffix, cyt_suffix)
    if layout == "sipakmed":
        read_sipakmed = read_sipakmed_cropped if sipakmed_source == "cropped" else read_sipakmed_clusters
        records = read_sipakmed(root, skip_bad)
    elif layout == "paired":
        records = read_paired(root, nuc_suffix, cyt_suffix, skip_bad)
    elif layout == "labels":
        records = read_labels_only(root, (nuc_suffix, cyt_suffix))
    elif layout == "cric":
        records = read_cric_cells(root)
    elif layout == "review":
        records = read_review_points(root)
    else:
        raise UserError(f"unknown layout {layout!r}; choose one of: auto, {', '.join(LAYOUTS)}")
    if not records:
        raise UserError(f"{root}: the {layout} layout found no cells (sipakmed source: {sipakmed_source}); "
                        f"check --data-root and --layout")
    # class folders that hold no cell: points layouts have none
    empty = [] if layout in ("cric", "review") else \
        [f.name for f in class_folders(root) if not any(r.label == f.name for r in records)]
    if empty:
        raise UserError(f"{root}: class folder(s) {', '.join(empty)} hold no usable images; add images or remove the folder")
    records = sorted(records, key=lambda r: r.sample_id)
    check_each_cell_once(records)
    return records, layout


def check_each_cell_once(records: Sequence[CellRecord]) -> None:
    """One image reached under two names (a link to it, or to its folder, from another folder) would count as two
    cells, perhaps of two classes, one of them in train and the other in test. (In one folder a link to a file
    beside it is left out by the listing itself.)"""
    seen: Dict[tuple, CellRecord] = {}
    for record in records:
        if record.problem is not None:
            continue  # left out anyway; a bad cluster image's cells all share its path and no crop box
        # cells of one cluster image (its polygon file), or of one CRIC field (its cell id: two windows may coincide)
        cell = None if record.crop_box is None else record.polygon_files[0].name if record.polygon_files else record.sample_id
        other = seen.setdefault((os.path.realpath(record.image_path), record.crop_box, cell), record)
        if other is not record:
            classes = f" of classes {other.label} and {record.label}" if other.label != record.label else ""
            raise UserError(f"{record.image_path}: the same file as {other.image_path} (one is a link to the other or to "
                            f"its folder), so it would count as two cells{classes}; remove the link")


# SIPaKMeD's normal cells and Bethesda's NILM; Herlev's are the classes named normal_*
SIPAKMED_NORMAL = ("im_Superficial-Intermediate", "im_Parabasal", "im_Metaplastic")
KNOWN_NORMAL = (*SIPAKMED_NORMAL, NORMAL_CLASS)


def normal_class_names(class_names: Sequence[str], chosen: Optional[Sequence[str]] = None) -> List[str]:
    """The normal classes for the normal-vs-abnormal metrics: `chosen`, else normal_*, SIPaKMeD's normal classes and
    NILM."""
    if chosen is not None:
        return list(chosen)
    return [c for c in class_names if c.lower().startswith("normal") or c in KNOWN_NORMAL]
