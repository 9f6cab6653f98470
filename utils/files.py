"""Writing files so that a crash or a concurrent writer never leaves a half-written file under the real name."""
import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on leaving the block it replaces `path` in one rename.

    The temporary name carries the process id, since torchrun's ranks (or two runs) may write the same
    file at once. When the block raises, `path` is left as it was and the temporary file is removed.
    """
    path = Path(path)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()  # left only when the block raised


def file_sha1(path: Path) -> str:
    """Hex sha1 of a file's bytes: what a derived file (masks, an ONNX export) remembers of its source."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def write_image(path: Path, image) -> str:
    """Write a mask [H, W] (8- or 16-bit) or an RGB image [H, W, 3] as PNG/BMP/TIFF by extension; returns the path."""
    import cv2

    from utils.errors import UserError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), pixels):
        raise UserError(f"{path}: could not be written; check the free space and the output folder")
    return str(path)
