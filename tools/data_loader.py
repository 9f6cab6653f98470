"""Dataset readers: every supported folder layout becomes a list of `CellRecord`s.

Layouts:
  sipakmed  SIPaKMeD as distributed: im_<Class>/im_<Class>/NNN.bmp cluster images with
            NNN_cytMM.dat / NNN_nucMM.dat polygons, and CROPPED/NNN_MM.bmp cells with
            NNN_MM_cyt.dat / NNN_MM_nuc.dat. Cells of one cluster image share a group.
  paired    <class>/<n>.<ext> with masks <n>N.png (nucleus) and <n>C.png (cytoplasm), as Herlev.
  labels    <class>/*.png|jpg|bmp|tif without masks: classification only, masks come from stage 1.

The cytoplasm target everywhere is the WHOLE CELL (cytoplasm OR nucleus): Herlev stores the
cytoplasm without the nucleus, SIPaKMeD's cytoplasm polygon is the cell border, and the union
makes both mean the same thing.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tools.errors import UserError
from utils.preprocessing import rasterize_polygons, read_image, read_mask

LAYOUTS = ("sipakmed", "paired", "labels")
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
CLUSTER_CROP_MARGIN = 10  # pixels of context kept around a cell cut out of a cluster image


@dataclass
class CellRecord:
    """One cell image and where its masks come from; everything after the readers uses only this."""

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

    @property
    def has_masks(self) -> bool:
        return self.cyt_mask_path is not None or bool(self.cyt_polygons)


@dataclass
class CellSample:
    image: np.ndarray  # uint8 RGB [H, W, 3]
    cell_mask: Optional[np.ndarray]  # bool [H, W], cytoplasm + nucleus
    nuc_mask: Optional[np.ndarray]  # bool [H, W]


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
        points.append((x, y))
    if len(points) < 3:
        raise UserError(f"{path}: a polygon needs at least 3 points, found {len(points)}; fix or remove the file")
    return np.asarray(points, dtype=np.float32)


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


# ---------------------------------------------------------------- layout readers

def class_folders(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def sipakmed_inner_folder(class_folder: Path) -> Path:
    inner = class_folder / class_folder.name
    return inner if inner.is_dir() else class_folder


def read_sipakmed_cropped(root: Path) -> List[CellRecord]:
    records = []
    for class_folder in class_folders(root):
        crops = sipakmed_inner_folder(class_folder) / "CROPPED"
        if not crops.is_dir():
            continue
        for image_path in image_files(crops):
            cluster_id = image_path.stem.split("_")[0]
            cyt_file, nuc_file = (crops / f"{image_path.stem}_{part}.dat" for part in ("cyt", "nuc"))
            if not cyt_file.exists():
                raise UserError(f"{image_path}: no {cyt_file.name} beside it; every SIPaKMeD crop needs its cytoplasm boundary")
            nuc_files = [nuc_file] if nuc_file.exists() else []
            records.append(CellRecord(
                sample_id=image_path.relative_to(root).with_suffix("").as_posix(), image_path=image_path,
                label=class_folder.name, group=f"{class_folder.name}/{cluster_id}",
                cyt_polygons=[read_dat_polygon(cyt_file)], nuc_polygons=[read_dat_polygon(f) for f in nuc_files],
                polygon_files=(cyt_file, *nuc_files),
            ))
    return records


def nucleus_owner(nuc_polygon: np.ndarray, cyt_polygons: Sequence[np.ndarray]) -> Optional[int]:
    """Index of the cell polygon that contains the nucleus centroid (cluster files number them independently)."""
    import cv2

    centroid = tuple(float(v) for v in nuc_polygon.mean(axis=0))
    for index, cyt_polygon in enumerate(cyt_polygons):
        if cv2.pointPolygonTest(cyt_polygon.reshape(-1, 1, 2), centroid, False) >= 0:
            return index
    return None


def read_sipakmed_clusters(root: Path) -> List[CellRecord]:
    """One record per _cytNN.dat, cut out of its cluster image with a margin; polygons move with the crop."""
    records = []
    for class_folder in class_folders(root):
        folder = sipakmed_inner_folder(class_folder)
        for image_path in image_files(folder):
            cyt_files = sorted(folder.glob(f"{image_path.stem}_cyt*.dat"))
            nuc_files = sorted(folder.glob(f"{image_path.stem}_nuc*.dat"))
            cyt_polygons = [read_dat_polygon(f) for f in cyt_files]
            nuclei_by_cell: Dict[int, List[Tuple[np.ndarray, Path]]] = {}
            for nuc_file in nuc_files:
                nuc_polygon = read_dat_polygon(nuc_file)
                owner = nucleus_owner(nuc_polygon, cyt_polygons)
                if owner is not None:
                    nuclei_by_cell.setdefault(owner, []).append((nuc_polygon, nuc_file))
            for index, (cyt_polygon, cyt_file) in enumerate(zip(cyt_polygons, cyt_files)):
                x0, y0 = np.floor(cyt_polygon.min(axis=0)).astype(int) - CLUSTER_CROP_MARGIN
                x1, y1 = np.ceil(cyt_polygon.max(axis=0)).astype(int) + CLUSTER_CROP_MARGIN + 1
                x0, y0 = max(x0, 0), max(y0, 0)  # the far edges are clipped once the image size is known
                offset = np.array([x0, y0], dtype=np.float32)
                nuclei = nuclei_by_cell.get(index, [])
                records.append(CellRecord(
                    sample_id=f"{image_path.relative_to(root).with_suffix('').as_posix()}_{cyt_file.stem.split('_cyt')[-1]}",
                    image_path=image_path, label=class_folder.name, group=f"{class_folder.name}/{image_path.stem}",
                    cyt_polygons=[cyt_polygon - offset], nuc_polygons=[p - offset for p, _ in nuclei],
                    polygon_files=(cyt_file, *(f for _, f in nuclei)), crop_box=(int(x0), int(y0), int(x1), int(y1)),
                ))
    return records


def read_paired(root: Path, nuc_suffix: str = "N.png", cyt_suffix: str = "C.png") -> List[CellRecord]:
    records = []
    for class_folder in class_folders(root):
        for image_path in image_files(class_folder):
            if image_path.name.endswith((nuc_suffix, cyt_suffix)):
                continue
            nuc_path = class_folder / f"{image_path.stem}{nuc_suffix}"
            cyt_path = class_folder / f"{image_path.stem}{cyt_suffix}"
            missing = [p.name for p in (nuc_path, cyt_path) if not p.exists()]
            if missing:
                raise UserError(f"{image_path}: missing mask {', '.join(missing)} beside it; add it or remove the image")
            records.append(CellRecord(
                sample_id=image_path.relative_to(root).with_suffix("").as_posix(), image_path=image_path,
                label=class_folder.name, group=f"{class_folder.name}/{image_path.stem}",
                cyt_mask_path=cyt_path, nuc_mask_path=nuc_path,
            ))
    return records


def read_labels_only(root: Path) -> List[CellRecord]:
    return [
        CellRecord(sample_id=p.relative_to(root).with_suffix("").as_posix(), image_path=p,
                   label=folder.name, group=f"{folder.name}/{p.stem}")
        for folder in class_folders(root) for p in image_files(folder)
    ]


def detect_layout(root: Path, nuc_suffix: str = "N.png") -> str:
    """Name the layout of a data root from what its class folders hold."""
    folders = class_folders(root)
    if any((sipakmed_inner_folder(f) / "CROPPED").is_dir() or any(sipakmed_inner_folder(f).glob("*_cyt*.dat")) for f in folders):
        return "sipakmed"
    images = [p for f in folders for p in image_files(f)]
    if any(p.name.endswith(nuc_suffix) for p in images):
        return "paired"
    if images:
        return "labels"
    raise UserError(
        f"{root}: no known data layout found. Expected one of: sipakmed (im_<Class>/im_<Class>/*.bmp with "
        f"*_cytNN.dat, or CROPPED/*_cyt.dat), paired (<class>/<n>.bmp with <n>N.png and <n>C.png), "
        f"labels (<class>/*.png|jpg|bmp|tif). Point --data-root at the folder that holds the class folders"
    )


def read_records(root: Path, layout: str = "auto", sipakmed_source: str = "cropped",
                 nuc_suffix: str = "N.png", cyt_suffix: str = "C.png") -> Tuple[List[CellRecord], str]:
    """Read every cell of a data root. Returns (records sorted by sample_id, the layout used)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data root does not exist or is not a folder; pass --data-root PATH")
    layout = detect_layout(root, nuc_suffix) if layout == "auto" else layout
    if layout == "sipakmed":
        records = read_sipakmed_cropped(root) if sipakmed_source == "cropped" else read_sipakmed_clusters(root)
    elif layout == "paired":
        records = read_paired(root, nuc_suffix, cyt_suffix)
    elif layout == "labels":
        records = read_labels_only(root)
    else:
        raise UserError(f"unknown layout {layout!r}; choose one of: auto, {', '.join(LAYOUTS)}")
    if not records:
        raise UserError(f"{root}: the {layout} layout found no cells (sipakmed source: {sipakmed_source}); check --data-root and --layout")
    empty = [f.name for f in class_folders(root) if not any(r.label == f.name for r in records)]
    if empty:
        raise UserError(f"{root}: class folder(s) {', '.join(empty)} hold no usable images; add images or remove the folder")
    return sorted(records, key=lambda r: r.sample_id), layout


# ---------------------------------------------------------------- loading one sample

MaskProvider = Callable[[CellRecord, Tuple[int, int]], Tuple[np.ndarray, np.ndarray]]


def ground_truth_masks(record: CellRecord, shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(cell mask, nucleus mask) as bool [H, W] for a record with masks or polygons."""
    if record.cyt_mask_path is not None:
        nuc_mask = read_mask(record.nuc_mask_path, shape)
        return read_mask(record.cyt_mask_path, shape) | nuc_mask, nuc_mask
    if not record.cyt_polygons:
        raise UserError(f"{record.image_path}: this cell has no ground-truth masks; use --mask-source predicted")
    files = record.polygon_files
    check_polygons_inside(record.cyt_polygons + record.nuc_polygons, files, shape)
    nuc_mask = rasterize_polygons(record.nuc_polygons, shape)
    return rasterize_polygons(record.cyt_polygons, shape) | nuc_mask, nuc_mask


def load_image(record: CellRecord) -> np.ndarray:
    image = read_image(record.image_path)
    if record.crop_box is not None:
        x0, y0, x1, y1 = record.crop_box
        image = image[y0:y1, x0:x1]  # slicing clips the far edges at the image border
    return image


def load_sample(record: CellRecord, mask_provider: Optional[MaskProvider] = ground_truth_masks) -> CellSample:
    """Decode one cell at its own resolution; polygons are drawn at these coordinates, before any resize."""
    image = load_image(record)
    if mask_provider is None:
        return CellSample(image, None, None)
    cell_mask, nuc_mask = mask_provider(record, image.shape[:2])
    return CellSample(image, cell_mask, nuc_mask)
