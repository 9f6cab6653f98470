"""Cells with masks beside them, as Herlev: <class>/<n>.<ext> with <n>N.png (nucleus) and <n>C.png (cytoplasm); and
cells without masks (<class>/*.png|jpg|bmp|tif: classification only, their masks come from stage 1)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tools.layouts.files import (
    check_unique_stems,
    class_folders,
    files_by_lower_name,
    image_files,
    read_cell_files,
)
from tools.layouts.record import CellRecord
from utils.errors import UserError

DEFAULT_MASK_SUFFIXES = ("N.png", "C.png")  # the paired layout's nucleus and cytoplasm masks: <n>N.png, <n>C.png


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
