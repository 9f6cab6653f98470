"""Label images of an input screened by predict.py --fields (tools/fields/slide.py, step 4): PNG labels and an overlay
for an image that fits in memory, a tiled TIFF written strip by strip for a slide.
"""
from pathlib import Path
from typing import Dict

import numpy as np

from tools.fields.journal import SlideJournal
from tools.fields.plan import InputPlan
from utils.files import written_atomically


def write_labels(plan: InputPlan, journal: SlideJournal, output_dir: Path, class_names) -> None:
    """PNG labels and an overlay for an image that fits in memory; tiled TIFF labels, strip by strip, for a slide."""
    if plan.labels == "none":
        return
    stem = output_dir / plan.name
    if plan.labels == "png":
        from tools.fields.outputs import class_colours, label_images, overlay
        from utils.files import write_image

        numbered = [item for index in range(len(plan.blocks)) for item in journal.block_records(index)]
        cell_labels, nuc_labels = label_images(numbered, plan.reader.shape)
        write_image(stem.with_name(f"{stem.name}_cells.png"), cell_labels)
        write_image(stem.with_name(f"{stem.name}_nuclei.png"), nuc_labels)
        image = plan.reader.read(0, 0, *plan.reader.shape)
        colours = class_colours(class_names) if class_names else {}
        write_image(stem.with_name(f"{stem.name}_overlay.png"), overlay(image, [r for _, r in numbered], class_names, colours))
        return
    for kind in ("cells", "nuclei"):
        write_label_tiff(stem.with_name(f"{stem.name}_{kind}.tif"), plan, journal, kind == "nuclei")


LABEL_TILE_PX = 512


def write_label_tiff(path: Path, plan: InputPlan, journal: SlideJournal, nuclei: bool) -> None:
    """uint32 instance labels as a tiled, deflate-compressed TIFF; only the blocks that reach a strip are loaded."""
    import tifffile

    height, width = plan.reader.shape
    cache: Dict[int, list] = {}

    def tiles():
        for top in range(0, height, LABEL_TILE_PX):
            bottom = min(top + LABEL_TILE_PX, height)
            reaching = [i for i, (region, _) in enumerate(plan.blocks) if region[0] < bottom and region[2] > top]
            for index in list(cache):
                if index not in reaching:
                    del cache[index]
            for index in reaching:
                if index not in cache:
                    cache[index] = journal.block_records(index)
            from tools.fields.outputs import paint_labels

            labels = paint_labels([item for index in reaching for item in cache[index]], top, 0, bottom - top, width)[nuclei]
            for left in range(0, width, LABEL_TILE_PX):
                yield np.ascontiguousarray(labels[:, left:left + LABEL_TILE_PX])

    with written_atomically(path) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=(height, width), dtype=np.uint32, tile=(LABEL_TILE_PX, LABEL_TILE_PX),
                         compression="zlib", metadata=None)
