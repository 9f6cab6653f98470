"""Write a whole-slide image for tests, the demo and benchmarks: real fields of view pasted on glass at known offsets.

    python -m tools.fields.make_slide ../shared/data/isbi2014/edf/edf0?.png --side 40000 --out slides/edf8.tiff
    python -m tools.fields.make_slide 'data/demo/*/*/002.bmp' --side 8192 --count 4 --out slides/demo.tiff

No scanner slide can be downloaded here, so slides are made as scanners write them: a pyramidal, tiled (512 px),
JPEG-compressed BigTIFF with levels 1/4/16 and the microns per pixel in the resolution tags (pixels per
centimetre). OpenSlide opens it as `generic-tiff` and reports `openslide.mpp-x`; tifffile reads it as well.
The glass is the fields' own background colour (the mode of their grey values) with a little sensor noise.

Beside the slide, <slide>.json (the manifest) says where each field lies, so that a field's annotation
(ISBI 2014's <field>_nuclei.png) maps to slide coordinates: slide pixel (y + r, x + c) is field pixel (r, c).
"""
import argparse
import json
import math
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from tools.config import HelpFormatter, checked, non_negative_float, positive_int
from utils.errors import UserError, exit_on_user_error
from utils.files import written_atomically
from utils.preprocessing import read_image

TILE_PX = 512  # tile side: what scanners and OpenSlide's generic-tiff use
LEVEL_DOWNSAMPLES = (1, 4, 16)  # pyramid levels; offsets are multiples of the largest, so every level is exact
GLASS_NOISE = 1.0  # standard deviation of the glass's grey values (a scanner's noise; 0 for flat glass)
FIELD_GAP_PX = 64  # at least this much glass between two fields


coverage_share = checked(float, lambda v: 0 < v <= 1, "a share of the slide above 0, at most 1")


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python -m tools.fields.make_slide '../shared/data/isbi2014/edf/edf0?.png' --side 40000 "
                    "--out slides/edf8.tiff\n" + __doc__.split("\n\n")[2].replace("\n", " "), formatter_class=HelpFormatter)
    parser.add_argument("fields", nargs="+", help="field images to place (PNG, BMP, ...; quoted globs are expanded)")
    parser.add_argument("--out", type=Path, required=True, help="the slide to write (.tiff); the manifest goes beside it (.json)")
    parser.add_argument("--side", type=int, default=40000, help="slide width and height in px (level 0)")
    parser.add_argument("--count", type=positive_int, default=None,
                        help="fields to place (the given ones in turn; default: each once, or as --coverage needs)")
    parser.add_argument("--coverage", type=coverage_share, default=None,
                        help="share of the slide to cover with fields, e.g. 0.05 (instead of --count)")
    parser.add_argument("--mpp", type=non_negative_float, default=0.25,
                        help="microns per pixel written into the resolution tags (0.25: a 40x scan); 0 writes none")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the tiles")
    parser.add_argument("--seed", type=int, default=0, help="where the fields land and the glass's noise")
    args = parser.parse_args(argv)
    if args.side < TILE_PX or args.side % LEVEL_DOWNSAMPLES[-1]:
        parser.error(f"--side must be at least {TILE_PX} and a multiple of {LEVEL_DOWNSAMPLES[-1]}")
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be within 1..100")
    if args.out.suffix.lower() not in (".tif", ".tiff"):
        parser.error(f"--out {args.out}: a slide is a TIFF; name it .tiff")
    return args


def expand(patterns: Sequence[str]) -> List[Path]:
    import glob

    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise UserError(f"{pattern}: no such file; check the path")
        paths += [Path(p) for p in matches]
    return paths


def glass_colour(images: Sequence[np.ndarray]) -> np.ndarray:
    """The fields' background: per channel, the median over fields of each field's most common value."""
    modes = [[np.bincount(image[..., c].ravel(), minlength=256).argmax() for c in range(3)] for image in images]
    return np.median(np.array(modes), axis=0).astype(np.uint8)


def place_fields(shapes: Sequence[Tuple[int, int]], side: int, rng: np.random.Generator) -> List[Tuple[int, int]]:
    """(y, x) of each field: distinct cells of a grid as large as the largest field plus a gap, then a random shift
    within its cell, on multiples of the coarsest level's downsample. Fields never overlap one another."""
    step = LEVEL_DOWNSAMPLES[-1]
    cell = max(max(h, w) for h, w in shapes) + FIELD_GAP_PX
    per_side = side // cell
    if per_side ** 2 < len(shapes):
        raise UserError(f"{len(shapes)} fields of up to {cell - FIELD_GAP_PX} px do not fit on a {side} px slide; "
                        f"give a larger --side or fewer fields")
    chosen = rng.choice(per_side ** 2, size=len(shapes), replace=False)
    offsets = []
    for index, (h, w) in zip(chosen, shapes):
        row, col = divmod(int(index), per_side)
        dy, dx = (int(rng.integers(0, cell - FIELD_GAP_PX - extent + 1)) for extent in (h, w))
        offsets.append(((row * cell + dy) // step * step, (col * cell + dx) // step * step))
    return offsets


def level_tiles(images: Sequence[np.ndarray], offsets: Sequence[Tuple[int, int]], side: int, downsample: int,
                glass: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    """The tiles of one level, row by row: glass with noise, and the part of every field that falls in the tile."""
    small = [image if downsample == 1 else cv2.resize(image, (max(1, image.shape[1] // downsample),
                                                             max(1, image.shape[0] // downsample)),
                                                      interpolation=cv2.INTER_AREA) for image in images]
    placed = [(y // downsample, x // downsample, field) for (y, x), field in zip(offsets, small)]
    length = side // downsample
    for top in range(0, length, TILE_PX):
        for left in range(0, length, TILE_PX):
            rng = np.random.default_rng((seed, downsample, top, left))
            noise = rng.normal(0, GLASS_NOISE, (TILE_PX, TILE_PX, 1)) if GLASS_NOISE else 0
            tile = np.clip(glass + noise, 0, 255).astype(np.uint8)
            for y, x, field in placed:
                y0, x0 = max(y, top), max(x, left)
                y1, x1 = min(y + field.shape[0], top + TILE_PX), min(x + field.shape[1], left + TILE_PX)
                if y1 > y0 and x1 > x0:
                    tile[y0 - top:y1 - top, x0 - left:x1 - left] = field[y0 - y:y1 - y, x0 - x:x1 - x]
            yield tile


def write_slide(path: Path, images: Sequence[np.ndarray], offsets: Sequence[Tuple[int, int]], side: int, mpp: float,
                quality: int, seed: int = 0) -> np.ndarray:
    """Write the pyramidal JPEG TIFF; returns the glass colour used."""
    import tifffile

    glass = glass_colour(images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path) as tmp_path, tifffile.TiffWriter(tmp_path, bigtiff=True) as tif:
            for downsample in LEVEL_DOWNSAMPLES:
                length = side // downsample
                resolution = {} if not mpp else dict(resolution=(1e4 / (mpp * downsample),) * 2, resolutionunit="CENTIMETER")
                tif.write(level_tiles(images, offsets, side, downsample, glass, seed), shape=(length, length, 3),
                          dtype=np.uint8, tile=(TILE_PX, TILE_PX), compression="jpeg", compressionargs={"level": quality},
                          photometric="rgb", subfiletype=0 if downsample == 1 else 1, metadata=None, maxworkers=2,
                          **resolution)
    except OSError as error:  # no such folder can be made, no room left: nothing half-written stays (written_atomically)
        raise UserError(f"{path}: cannot be written ({error.strerror or error}); choose another --out or free space") from None
    return glass


def annotation_of(field: Path) -> str:
    """The field's nucleus annotation when it has one (ISBI 2014: <field>_nuclei.png beside it), else ''."""
    candidate = field.with_name(f"{field.stem}_nuclei.png")
    return str(candidate.resolve()) if candidate.is_file() else ""


def manifest(path: Path, fields: Sequence[Path], images, offsets, side: int, mpp: float, glass) -> dict:
    return {"slide": path.name, "shape": [side, side], "mpp": mpp or None, "glass_rgb": [int(v) for v in glass],
            "fields": [{"image": str(field.resolve()), "annotation": annotation_of(field), "y": y, "x": x,
                        "height": image.shape[0], "width": image.shape[1]}
                       for field, image, (y, x) in zip(fields, images, offsets)]}


def make_slide(sources: Sequence[Path], out: Path, side: int, count: Optional[int] = None,
               coverage: Optional[float] = None, mpp: float = 0.25, quality: int = 90, seed: int = 0) -> dict:
    """Write the slide and its manifest (module docstring); returns the manifest.

    Args:
        sources: field images, placed in turn until `count` (default: each once, or as many as `coverage` needs).
        coverage: share of the slide to cover, instead of `count`.
        mpp: microns per pixel for the resolution tags; 0 writes none.
    """
    images = {path: read_image(path) for path in sources}
    mean_area = np.mean([image.shape[0] * image.shape[1] for image in images.values()])
    count = count or (math.ceil(coverage * side ** 2 / mean_area) if coverage else len(sources))
    fields = [sources[i % len(sources)] for i in range(count)]
    offsets = place_fields([images[f].shape[:2] for f in fields], side, np.random.default_rng(seed))
    glass = write_slide(out, [images[f] for f in fields], offsets, side, mpp, quality, seed)
    described = manifest(out, fields, [images[f] for f in fields], offsets, side, mpp, glass)
    with written_atomically(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(described, indent=1))
    return described


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    described = make_slide(expand(args.fields), args.out, args.side, args.count, args.coverage, args.mpp, args.quality,
                           args.seed)
    covered = sum(f["height"] * f["width"] for f in described["fields"]) / args.side ** 2
    print(f"wrote {args.out} ({args.side} x {args.side} px, {len(described['fields'])} fields covering {covered:.1%}, "
          f"{args.out.stat().st_size / 1e6:.1f} MB) and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
