"""SIPaKMeD as distributed: im_<Class>/im_<Class>/NNN.bmp cluster images with NNN_cytMM.dat / NNN_nucMM.dat polygons,
and CROPPED/NNN_MM.bmp cells with NNN_MM_cyt.dat / NNN_MM_nuc.dat. Cells of one cluster image share a group."""
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from tools.layouts.files import (
    class_folders,
    files_by_lower_name,
    image_files,
    read_cell_files,
    read_dat_polygon,
)
from tools.layouts.record import CellRecord
from utils.errors import UserError

CLUSTER_CROP_MARGIN = 10  # pixels of context kept around a cell cut out of a cluster image


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
