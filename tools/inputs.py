"""Which files an input names, and the marker that keeps this project's own outputs from being read back.

Every expansion of files, folders and glob patterns into files goes through `input_files`: the cells and
fields predict.py is given, the training data roots (tools/layouts.py, tools/fields/layouts.py), the slides.
It yields each file once by its resolved path (a link and its target, or a folder reached twice through a
link, count once), follows links to folders but never around a loop, and leaves out

  - hidden files and folders (.DS_Store, macOS ._* files and __MACOSX/ folders),
  - folders this project writes its results into: `mark_output_dir` puts OUTPUT_MARKER in each, and
  - what earlier versions wrote without a marker (`is_earlier_output`): masks, overlays, label images and
    Grad-CAMs beside their predictions.csv / summary.json / masks.json / metrics.json, or in a group that
    only the project writes (<name>_cyt.png, <name>_nuc.png and <name>_overlay.png together).

Nothing here imports numpy, OpenCV or torch, so predict.py's start-up stays short.
"""
import fnmatch
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from tools.run_dir import check_writable
from utils.errors import UserError
from utils.files import written_atomically

OUTPUT_MARKER = ".cervical-cytology-outputs"  # hidden, so it is never an input itself
# The tables an output folder of an earlier version holds (predict.py, predict.py --fields, main_segment.py's mask
# export, evaluate.py); beside any of them the project's own image names are outputs
OUTPUT_TABLES = frozenset({"predictions.csv", "predictions.json", "summary.json", "masks.json", "metrics.json"})
OUTPUT_IMAGE_SUFFIXES = ("_cyt.png", "_nuc.png", "_overlay.png", "_gradcam.png", "_cells.png", "_nuclei.png")
EVALUATION_PLOTS = frozenset({"overlays.png", "confusion_matrix.png", "roc_curves.png", "reliability.png"})
# Per image X, the files only the project writes together: predict.py (cells), predict.py --fields
OUTPUT_GROUPS = (("_cyt.png", "_nuc.png", "_overlay.png"), ("_cells.png", "_nuclei.png", "_overlay.png"))
GLOB_CHARACTERS = "*?["

PathLike = Union[str, Path]


# ---------------------------------------------------------------- what is not an input

def is_hidden(path: PathLike) -> bool:
    """Dot files and folders, and the __MACOSX/ folder that macOS zips carry."""
    name = Path(path).name
    return name.startswith(".") or name == "__MACOSX"


def mark_output_dir(folder: PathLike, writer: Optional[str] = None) -> Path:
    """Create `folder` if needed and mark it as this project's output, so that no input expansion reads it back.

    Call it where a script creates a folder it writes results into (not a run folder, which may be the current
    folder above the data). Writing the marker also proves the folder writable.

    Args:
        folder: the output folder.
        writer: what wrote it, named in the marker (default: the running script's file name).

    Returns:
        the folder, as a Path.

    Raises:
        UserError: the folder cannot be created or written.
    """
    folder = Path(folder)
    check_writable(folder, "--output-dir (or --run-dir)")
    writer = writer or Path(sys.argv[0]).name or "python"
    with written_atomically(folder / OUTPUT_MARKER) as marker:  # torchrun's ranks may mark one folder at once
        marker.write_text(f"Written by {writer} (cervical cytology toolkit). Folders holding this file are "
                          f"never read as input; delete it if this folder should be.\n")
    return folder


def is_output_dir(folder: PathLike) -> bool:
    """Whether `folder` holds the marker of mark_output_dir."""
    return (Path(folder) / OUTPUT_MARKER).is_file()


def is_earlier_output(name: str, names_beside: Set[str]) -> bool:
    """Whether a file is a result of an earlier version, which wrote no marker.

    Args:
        name: the file's name.
        names_beside: the lower-case names of every file in its folder.
    """
    lower = name.lower()
    if names_beside & OUTPUT_TABLES:
        return lower.endswith(OUTPUT_IMAGE_SUFFIXES) or lower in EVALUATION_PLOTS
    suffix = next((s for s in OUTPUT_IMAGE_SUFFIXES if lower.endswith(s)), None)
    if suffix is None:
        return False
    stem = lower[:-len(suffix)]
    if any(all(stem + other in names_beside for other in group) for group in OUTPUT_GROUPS):
        return True
    # main_segment.py's masks of cell X: X_cyt.png and X_nuc.png, without the image X itself beside them
    return suffix in ("_cyt.png", "_nuc.png") and {stem + "_cyt.png", stem + "_nuc.png"} <= names_beside and not any(
        other.startswith(stem + ".") for other in names_beside)


def folder_entries(folder: Path) -> Tuple[List[Path], List[Path]]:
    """(subfolders, files) directly in `folder`, by name, without hidden ones, marked folders and earlier outputs."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        raise UserError(f"{folder}: folder cannot be read ({error.strerror}); fix its permissions or leave it out")
    lower_names = {name.lower() for name in names}
    subfolders, files = [], []
    for name in names:
        path = folder / name
        if is_hidden(name):
            continue
        if path.is_dir():
            if not is_output_dir(path):
                subfolders.append(path)
        elif path.is_file() and not is_earlier_output(name, lower_names):  # a broken link or a link loop is neither
            files.append(path)
    return subfolders, files


def check_not_output(folder: Path, text: str) -> None:
    if is_output_dir(folder):
        raise UserError(f"{text}: this folder holds outputs of this project ({OUTPUT_MARKER} in it), which are never "
                        f"read as input; pass the folder of the input images, or delete {folder / OUTPUT_MARKER} if "
                        f"it is input data")


# ---------------------------------------------------------------- walking

def files_below(folder: Path, max_depth: Optional[int] = None,
                enter: Callable[[Path], bool] = lambda folder: True) -> Iterator[Path]:
    """Every file below `folder` down to max_depth levels (1: its own files; None: all), depth first by name.

    A folder is entered once by its resolved path, which ends any loop of links; `enter(subfolder)` may refuse more.
    """
    entered: Set[str] = set()
    stack = [(folder, 1)]
    while stack:
        current, depth = stack.pop()
        real = os.path.realpath(current)
        if real in entered:
            continue
        entered.add(real)
        folders, files = folder_entries(current)
        yield from files
        if max_depth is None or depth < max_depth:
            stack += [(sub, depth + 1) for sub in reversed(folders) if enter(sub)]


def glob_matches(pattern: Sequence[str], parts: Sequence[str], partial: bool = False) -> bool:
    """Whether path parts match glob pattern parts (`**`: any number of folders, `*` `?` `[..]` within a name);
    partial: or may still match deeper down."""
    if not pattern:
        return not parts
    if not parts:
        return partial or all(part == "**" for part in pattern)
    if pattern[0] == "**":
        return glob_matches(pattern[1:], parts, partial) or glob_matches(pattern, parts[1:], partial)
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and glob_matches(pattern[1:], parts[1:], partial)


def split_pattern(text: str) -> Tuple[Path, List[str]]:
    """(the folder before the first part with a wildcard, the pattern's parts from there on)."""
    parts = Path(text).parts
    first = next(index for index, part in enumerate(parts) if any(c in part for c in GLOB_CHARACTERS))
    return Path(*parts[:first]), list(parts[first:])


def pattern_files(text: str, suffixes: Optional[Tuple[str, ...]]) -> List[Path]:
    """The files a glob pattern matches, and every file below a folder it matches (as glob.glob, then a walk)."""
    base, pattern = split_pattern(text)
    if not base.is_dir():
        return []
    check_not_output(base, text)

    def matched(path: Path) -> bool:  # the path itself, or a folder above it below base
        parts = path.relative_to(base).parts
        return any(glob_matches(pattern, parts[:end]) for end in range(1, len(parts) + 1))

    def enter(folder: Path) -> bool:
        return matched(folder) or glob_matches(pattern, folder.relative_to(base).parts, partial=True)

    return [path for path in files_below(base, None, enter) if matched(path) and has_suffix(path, suffixes)]


def has_suffix(path: Path, suffixes: Optional[Tuple[str, ...]]) -> bool:
    return suffixes is None or path.suffix.lower() in suffixes


def expand_one(text: str, suffixes: Optional[Tuple[str, ...]], max_depth: Optional[int]) -> List[Path]:
    path = Path(text)
    if path.is_file():
        return [path]  # named: taken whatever its name says
    if path.is_dir():
        check_not_output(path, text)
        return [found for found in files_below(path, max_depth) if has_suffix(found, suffixes)]
    if any(c in text for c in GLOB_CHARACTERS):
        return pattern_files(text, suffixes)
    return []


def input_files(inputs: Sequence[PathLike], suffixes: Optional[Sequence[str]] = None, max_depth: Optional[int] = None,
                required: bool = True) -> List[Path]:
    """Expand files, folders and glob patterns into files, each once by its resolved path, in the order given.

    Args:
        inputs: file paths (taken as they are, whatever their suffix), folders (walked) and glob patterns
            (`slides/**/*.tif`; a folder the pattern matches is walked).
        suffixes: keep only the files of folders and patterns with one of these suffixes, in any case
            (e.g. (".png", ".tif")); None: every file.
        max_depth: folder levels walked below a named folder (1: only the files in it); None: all.
        required: an input that yields no file is a UserError naming it (most likely a typo).

    Returns:
        the files as found (under the name they were reached by, not resolved), each input's in name order.

    Raises:
        UserError: an input yields nothing (when required), names a folder this project wrote into, or a folder
            cannot be read.
    """
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    found: Dict[str, Path] = {}
    for item in inputs:
        files = expand_one(str(item), wanted, max_depth)
        if required and not files:
            raise UserError(f"{item}: {nothing_found(str(item), wanted)}; check the path")
        for path in files:
            found.setdefault(os.path.realpath(path), path)
    return list(found.values())


def nothing_found(text: str, suffixes: Optional[Tuple[str, ...]]) -> str:
    kinds = f"{'/'.join(s.lstrip('.') for s in suffixes)} " if suffixes else ""
    if Path(text).is_dir():
        return f"no {kinds}file in this folder (hidden files and this project's outputs are left out)"
    if any(c in text for c in GLOB_CHARACTERS):
        return f"no {kinds}file matches this pattern"
    return "not a file or folder" if Path(text).exists() else "no such file or folder"  # a device, a pipe
