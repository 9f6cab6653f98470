"""Folder layouts of single-cell data: every supported layout becomes a list of `CellRecord`s.

Layouts:
  sipakmed  SIPaKMeD as distributed: im_<Class>/im_<Class>/NNN.bmp cluster images with
            NNN_cytMM.dat / NNN_nucMM.dat polygons, and CROPPED/NNN_MM.bmp cells with
            NNN_MM_cyt.dat / NNN_MM_nuc.dat. Cells of one cluster image share a group.
  paired    <class>/<n>.<ext> with masks <n>N.png (nucleus) and <n>C.png (cytoplasm), as Herlev.
  labels    <class>/*.png|jpg|bmp|tif without masks: classification only, masks come from stage 1.
  review    review.py --export-points' folder: the cells a reviewer accepted or relabelled (tools/review/points.py),
            masks from stage 1; named with --layout review, never detected.

File names are matched without regard to case (10N.PNG is 10's nucleus mask). Folders are listed by
tools/inputs.py: each file once, and never hidden files and folders (.DS_Store, macOS ._* and __MACOSX/)
or what this project wrote. Everything after the readers uses only CellRecord; decoding is
tools/data_loader.py's.
"""
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import cv2
import numpy as np

from tools.config import unknown_name
from tools.inputs import check_not_output, folder_entries, input_files
from utils.errors import UserError
from utils.preprocessing import read_image

LAYOUTS = ("sipakmed", "paired", "labels", "review")
DEFAULT_MASK_SUFFIXES = ("N.png", "C.png")  # the paired layout's nucleus and cytoplasm masks: <n>N.png, <n>C.png
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_COORDINATE = 1e6  # px; a polygon point further out belongs to no image
CLUSTER_CROP_MARGIN = 10  # pixels of context kept around a cell cut out of a cluster image
SKIP_BAD_HINT = "or pass --skip-bad to leave bad cells out"


@dataclass
class CellRecord:
    """One cell image and where its masks come from."""

    sample_id: str  # image path relative to the data root, without extension; unique
    image_path: Path
    label: str
    group: str  # cells of one group always land in the same split
    cyt_mask_path: Optional[Path] = None
    nuc_mask_path: Optional[Path] = None
    cyt_polygons: List[np.ndarray] = field(default_factory=list)  # [N, 2] x, y in image coordinates
    nuc_polygons: List[np.ndarray] = field(default_factory=list)
    polygon_files: Tuple[Path, ...] = ()  # for error messages
    crop_box: Optional[Tuple[int, int, int, int]] = None  # x0, y0, x1, y1 inside image_path
    problem: Optional[str] = None  # under --skip-bad: the error that makes this cell unusable (raised when it is loaded)

    @property
    def has_masks(self) -> bool:
        return self.cyt_mask_path is not None or bool(self.cyt_polygons)

    def load_image(self) -> np.ndarray:
        """The cell's RGB image [H, W, 3]: its file, or its box of a cluster image."""
        image = read_image(self.image_path)
        if self.crop_box is not None:
            x0, y0, x1, y1 = self.crop_box
            image = image[y0:y1, x0:x1]  # slicing clips the far edges at the image border
        return image


# ---------------------------------------------------------------- folders and files

def class_folders(root: Path) -> List[Path]:
    """The folders directly in root, not hidden, not this project's output; a link to another one stays (two classes
    sharing files are refused by check_each_cell_once)."""
    return folder_entries(root)[0]


def image_files(folder: Path) -> List[Path]:
    return input_files([folder], IMAGE_EXTENSIONS, max_depth=1, required=False)


def files_by_lower_name(folder: Path) -> Dict[str, Path]:
    return {p.name.lower(): p for p in input_files([folder], max_depth=1, required=False)}


def check_unique_stems(images: Sequence[Path]) -> None:
    """Two images of one name but for the extension would be one cell id twice (and one mask pair for both)."""
    counts = Counter((p.parent, p.stem.lower()) for p in images)
    twice = [p for p in images if counts[(p.parent, p.stem.lower())] > 1]
    if twice:
        raise UserError(f"{twice[0]} and {twice[1].name}: one cell stored twice under two extensions; "
                        f"keep one of them")


# ---------------------------------------------------------------- bad cells

T = TypeVar("T")


def with_skip_hint(error: UserError) -> UserError:
    """The same one-cell error, its advice extended by the way past it."""
    return UserError(f"{error}, {SKIP_BAD_HINT}")


def read_cell_files(read: Callable[[], T], skip_bad: bool) -> Tuple[Optional[T], Optional[str]]:
    """Run the reading of one cell's files: (result, None), or under --skip-bad (None, the error) for a bad cell.

    Without --skip-bad the error stops the run. With it the cell is still recorded, so the split manifest
    keeps describing the files present, and it is left out when the cells are checked.
    """
    try:
        return read(), None
    except UserError as error:
        if not skip_bad:
            raise with_skip_hint(error) from None
        return None, str(error)


# ---------------------------------------------------------------- .dat polygons

def read_dat_polygon(path: Path) -> np.ndarray:
    """Read a SIPaKMeD boundary file: one `x,y` per line (decimals, scientific notation, spaces allowed)."""
    points = []
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
        try:
            x, y = (float(p) for p in parts)
        except ValueError:
            raise UserError(f"{path}:{line_number}: expected 'x,y' numbers, found {line.strip()[:40]!r}; fix or remove the file")
        if not (np.isfinite(x) and np.isfinite(y)):
            raise UserError(f"{path}:{line_number}: point is not a finite number; fix or remove the file")
        if max(abs(x), abs(y)) > MAX_COORDINATE:  # beyond float32's whole pixels, and any crop box's int range
            raise UserError(f"{path}:{line_number}: point ({x:g}, {y:g}) lies beyond any image; fix or remove the file")
        points.append((x, y))
    if len(points) < 3:
        raise UserError(f"{path}: a polygon needs at least 3 points, found {len(points)}; fix or remove the file")
    polygon = np.asarray(points, dtype=np.float32)
    if cv2.contourArea(polygon) < 1:
        raise UserError(f"{path}: the polygon encloses less than a pixel (its points lie on a line or on one spot); "
                        f"fix or remove the file")
    return polygon


def check_polygons_inside(polygons: Sequence[np.ndarray], files: Sequence[Path], shape: Tuple[int, int]) -> None:
    height, width = shape
    slack = 1.0  # boundary points on the last pixel edge are fine
    for polygon, path in zip(polygons, files):
        xs, ys = polygon[:, 0], polygon[:, 1]
        if xs.min() < -slack or ys.min() < -slack or xs.max() > width - 1 + slack or ys.max() > height - 1 + slack:
            raise UserError(
                f"{path}: points reach ({xs.min():.0f}..{xs.max():.0f}, {ys.min():.0f}..{ys.max():.0f}) outside its "
                f"{width}x{height} image; the coordinates may belong to another image (for SIPaKMeD crops try "
                f"--sipakmed-source clusters)"
            )


# ---------------------------------------------------------------- SIPaKMeD

def sipakmed_inner_folder(class_folder: Path) -> Path:
    inner = class_folder / class_folder.name
    return inner if inner.is_dir() else class_folder


CropPolygons = Tuple[List[np.ndarray], List[np.ndarray], Tuple[Path, ...]]  # cytoplasm, nuclei, their files


def read_crop_polygons(image_path: Path, files: Dict[str, Path]) -> CropPolygons:
    cyt_file, nuc_file = (files.get(f"{image_path.stem}_{part}.dat".lower()) for part in ("cyt", "nuc"))
    if cyt_file is None:
        raise UserError(f"{image_path}: no {image_path.stem}_cyt.dat beside it; every SIPaKMeD crop needs its cytoplasm boundary")
    nuc_files = [nuc_file] if nuc_file is not None else []
    return [read_dat_polygon(cyt_file)], [read_dat_polygon(f) for f in nuc_files], (cyt_file, *nuc_files)


def read_sipakmed_cropped(root: Path, skip_bad: bool = False) -> List[CellRecord]:
    records = []
    for class_folder in class_folders(root):
        crops = sipakmed_inner_folder(class_folder) / "CROPPED"
        if not crops.is_dir():
            continue
        files = files_by_lower_name(crops)
        for image_path in image_files(crops):
            cluster_id = image_path.stem.split("_")[0]
            polygons, problem = read_cell_files(lambda: read_crop_polygons(image_path, files), skip_bad)
            cyt_polygons, nuc_polygons, polygon_files = polygons or ([], [], ())
            records.append(CellRecord(
                sample_id=image_path.relative_to(root).with_suffix("").as_posix(), image_path=image_path,
                label=class_folder.name, group=f"{class_folder.name}/{cluster_id}",
                cyt_polygons=cyt_polygons, nuc_polygons=nuc_polygons, polygon_files=polygon_files, problem=problem,
            ))
    return records


def nucleus_owner(nuc_polygon: np.ndarray, cyt_polygons: Sequence[np.ndarray]) -> Optional[int]:
    """Index of the cell polygon that contains the nucleus centroid (cluster files number them independently)."""
    centroid = tuple(float(v) for v in nuc_polygon.mean(axis=0))
    for index, cyt_polygon in enumerate(cyt_polygons):
        if cv2.pointPolygonTest(cyt_polygon.reshape(-1, 1, 2), centroid, False) >= 0:
            return index
    return None


def cluster_cell_record(root: Path, label: str, image_path: Path, cyt_file: Path, **fields) -> CellRecord:
    return CellRecord(
        sample_id=f"{image_path.relative_to(root).with_suffix('').as_posix()}_{cyt_file.stem.split('_cyt')[-1]}",
        image_path=image_path, label=label, group=f"{label}/{image_path.stem}", **fields)


def read_cluster_cells(root: Path, label: str, image_path: Path, cyt_files: Sequence[Path],
                       nuc_files: Sequence[Path]) -> List[CellRecord]:
    """The cells of one cluster image, each cut out with a margin; polygons move with the crop."""
    cyt_polygons = [read_dat_polygon(f) for f in cyt_files]
    nuclei_by_cell: Dict[int, List[Tuple[np.ndarray, Path]]] = {}
    for nuc_file in nuc_files:
        nuc_polygon = read_dat_polygon(nuc_file)
        owner = nucleus_owner(nuc_polygon, cyt_polygons)
        if owner is not None:
            nuclei_by_cell.setdefault(owner, []).append((nuc_polygon, nuc_file))
    records = []
    for index, (cyt_polygon, cyt_file) in enumerate(zip(cyt_polygons, cyt_files)):
        x0, y0 = np.floor(cyt_polygon.min(axis=0)).astype(int) - CLUSTER_CROP_MARGIN
        x1, y1 = np.ceil(cyt_polygon.max(axis=0)).astype(int) + CLUSTER_CROP_MARGIN + 1
        x0, y0 = max(x0, 0), max(y0, 0)  # the far edges are clipped once the image size is known
        offset = np.array([x0, y0], dtype=np.float32)
        nuclei = nuclei_by_cell.get(index, [])
        records.append(cluster_cell_record(
            root, label, image_path, cyt_file, cyt_polygons=[cyt_polygon - offset],
            nuc_polygons=[p - offset for p, _ in nuclei], polygon_files=(cyt_file, *(f for _, f in nuclei)),
            crop_box=(int(x0), int(y0), int(x1), int(y1))))
    return records


def cluster_polygon_files(files: Dict[str, Path], image_path: Path, part: str) -> List[Path]:
    """NNN_cytMM.dat (part 'cyt') or NNN_nucMM.dat files of one cluster image among its folder's `files`
    (files_by_lower_name), whatever their case."""
    pattern = re.compile(rf"{re.escape(image_path.stem.lower())}_{part}\d+\.dat")
    return sorted(p for name, p in files.items() if pattern.fullmatch(name))


def read_sipakmed_clusters(root: Path, skip_bad: bool = False) -> List[CellRecord]:
    """One record per _cytNN.dat of every cluster image."""
    records = []
    for class_folder in class_folders(root):
        folder = sipakmed_inner_folder(class_folder)
        files = files_by_lower_name(folder)
        for image_path in image_files(folder):
            cyt_files = cluster_polygon_files(files, image_path, "cyt")
            nuc_files = cluster_polygon_files(files, image_path, "nuc")
            label = class_folder.name
            cells, problem = read_cell_files(lambda: read_cluster_cells(root, label, image_path, cyt_files, nuc_files), skip_bad)
            # Nuclei are matched to cells across the whole image, so one bad file leaves every cell of it in doubt
            records.extend(cells if problem is None else
                           [cluster_cell_record(root, label, image_path, f, problem=problem) for f in cyt_files])
    return records


# ---------------------------------------------------------------- paired and labels-only

def is_mask_name(name: str, suffixes: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(s.lower() for s in suffixes))


def paired_mask_files(images: Sequence[Path], suffixes: Sequence[str] = DEFAULT_MASK_SUFFIXES) -> set:
    """The images that are another image's paired-layout mask (<n>N.png beside <n>.bmp): not cells themselves."""
    stems = {(p.parent, p.stem.lower()) for p in images}
    return {p for p in images for suffix in suffixes
            if p.name.lower().endswith(suffix.lower()) and (p.parent, p.name[:-len(suffix)].lower()) in stems}


def check_masks_beside(image_path: Path, mask_paths: Dict[str, Optional[Path]]) -> None:
    missing = [name for name, path in mask_paths.items() if path is None]
    if missing:
        raise UserError(f"{image_path}: missing mask {', '.join(missing)} beside it; add it or remove the image")


def read_paired(root: Path, nuc_suffix: str = "N.png", cyt_suffix: str = "C.png", skip_bad: bool = False) -> List[CellRecord]:
    records = []
    for class_folder in class_folders(root):
        files = files_by_lower_name(class_folder)
        images = [p for p in image_files(class_folder) if not is_mask_name(p.name, (nuc_suffix, cyt_suffix))]
        check_unique_stems(images)
        for image_path in images:
            masks = {f"{image_path.stem}{suffix}": files.get(f"{image_path.stem}{suffix}".lower())
                     for suffix in (nuc_suffix, cyt_suffix)}
            nuc_path, cyt_path = masks.values()
            _, problem = read_cell_files(lambda: check_masks_beside(image_path, masks), skip_bad)
            records.append(CellRecord(
                sample_id=image_path.relative_to(root).with_suffix("").as_posix(), image_path=image_path,
                label=class_folder.name, group=f"{class_folder.name}/{image_path.stem}",
                cyt_mask_path=cyt_path, nuc_mask_path=nuc_path, problem=problem,
            ))
    return records


def read_labels_only(root: Path, mask_suffixes: Sequence[str] = DEFAULT_MASK_SUFFIXES) -> List[CellRecord]:
    """Every image of every class folder, but the masks of a paired layout (a paired root read without its masks)."""
    records = []
    for folder in class_folders(root):
        images = image_files(folder)
        masks = paired_mask_files(images, (*mask_suffixes, *DEFAULT_MASK_SUFFIXES))
        images = [p for p in images if p not in masks]
        check_unique_stems(images)
        records += [CellRecord(sample_id=p.relative_to(root).with_suffix("").as_posix(), image_path=p,
                               label=folder.name, group=f"{folder.name}/{p.stem}") for p in images]
    return records


# ---------------------------------------------------------------- any layout

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
        f"labels: <class>/*.png|jpg|bmp|tif; review, named with --layout review: review.py --export-points' folder); "
        f"point --data-root at the folder that holds the class folders"
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
    elif layout == "review":
        from tools.review.points import read_review_points

        records = read_review_points(root)
    else:
        raise UserError(f"unknown layout {layout!r}; choose one of: auto, {', '.join(LAYOUTS)}")
    if not records:
        raise UserError(f"{root}: the {layout} layout found no cells (sipakmed source: {sipakmed_source}); check --data-root and --layout")
    empty = [f.name for f in class_folders(root) if not any(r.label == f.name for r in records)] if layout != "review" else []
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
        cell = record.polygon_files[0].name if record.crop_box is not None else None  # cells of one cluster image
        other = seen.setdefault((os.path.realpath(record.image_path), record.crop_box, cell), record)
        if other is not record:
            classes = f" of classes {other.label} and {record.label}" if other.label != record.label else ""
            raise UserError(f"{record.image_path}: the same file as {other.image_path} (one is a link to the other or to "
                            f"its folder), so it would count as two cells{classes}; remove the link")


# SIPaKMeD's normal cells; Herlev's are the classes named normal_*
SIPAKMED_NORMAL = ("im_Superficial-Intermediate", "im_Parabasal", "im_Metaplastic")


def normal_class_names(class_names: Sequence[str], chosen: Optional[Sequence[str]] = None) -> List[str]:
    """The normal classes for the normal-vs-abnormal metrics: `chosen`, else normal_* and SIPaKMeD's normal classes."""
    if chosen is not None:
        return list(chosen)
    return [c for c in class_names if c.lower().startswith("normal") or c in SIPAKMED_NORMAL]
