"""A genuine output folder of predict.py --fields for the review station's tests: a generated 2048 px slide and
one plain field screened by the real pipeline with tests/fake_field_models.py's models (thresholds)."""
import shutil
from pathlib import Path

from fake_field_models import CLASS_NAMES, fake_field_models, install

from tools.fields.make_slide import make_slide
from tools.fields.slide import CallRule, InProcess, ModelSpec, Screening, ScreenSettings

GALLERY = 6


def screened_output(demo_root: Path, folder: Path) -> Path:
    """folder/out: `slide` (a pyramidal JPEG TIFF, 0.5 um/px) and `field` (a PNG), screened; returns folder/out."""
    fields = sorted(demo_root.glob("im_*/im_*/002.bmp"))
    make_slide(fields, folder / "slide.tiff", side=2048, mpp=0.5, quality=90, seed=0)
    shutil.copy(fields[0], folder / "field.bmp")
    for name in ("fields", "instances", "classification"):
        (folder / f"{name}.pth").write_bytes(name.encode())
    spec = ModelSpec(*(str(folder / f"{name}.pth") for name in ("fields", "instances", "classification")), str(folder))
    install(spec)
    screening = Screening(spec, ScreenSettings(block=512), CallRule(min_cells=10, gallery=GALLERY), folder / "out",
                          fake_field_models(), CLASS_NAMES)
    screening.run([(folder / "slide.tiff", "slide"), (folder / "field.bmp", "field")], InProcess(), window=2)
    return folder / "out"
