"""The split manifest: train/val/test written once per data root, read by every script.

Split by group (a SIPaKMeD cluster image, a CRIC field, or a single cell elsewhere), stratified by class,
seeded. Only evaluate.py reads the test split.
"""
import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tools.config import check_named_file
from tools.layouts.record import CellRecord
from utils.console import say_once
from utils.errors import UserError
from utils.files import written_atomically

SPLITS = ("train", "val", "test")


def assign_splits(records: Sequence[CellRecord], fractions: Tuple[float, float, float], seed: int) -> Dict[str, str]:
    """Map group -> split. Per class, shuffled groups fill train, then val, then test up to their share of cells (a
    group holding several classes counts with its rarest one).

    A class with 3 groups or more always gets at least one in val and one in test (a class missing from test
    would be reported with an F1 of 0, or not at all); a class with fewer stays wholly in train, and
    write_manifest says so.
    """
    group_sizes: Dict[str, int] = defaultdict(int)
    group_labels: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        group_sizes[record.group] += 1
        group_labels[record.group][record.label] += 1
    class_sizes: Dict[str, int] = defaultdict(int)
    for label_counts in group_labels.values():
        for label, count in label_counts.items():
            class_sizes[label] += count
    groups_by_class: Dict[str, List[str]] = defaultdict(list)
    for group, label_counts in group_labels.items():
        # A group of several classes (a CRIC field: mostly NILM, a few abnormal cells) is dealt with its rarest class,
        # so that the rare classes' few fields spread over the splits; a group of one class is dealt with that class
        rarest_label = min(sorted(label_counts), key=class_sizes.get)
        groups_by_class[rarest_label].append(group)

    rng = np.random.default_rng(seed)
    assignment = {}
    bounds = np.cumsum(fractions)
    for label in sorted(groups_by_class):
        groups = sorted(groups_by_class[label])
        rng.shuffle(groups)
        total = sum(group_sizes[g] for g in groups)
        placed = 0
        for group in groups:
            # place the group by where its middle cell falls on the train | val | test line
            position = (placed + group_sizes[group] / 2) / total
            assignment[group] = SPLITS[min(int(np.searchsorted(bounds, position)), 2)]
            placed += group_sizes[group]
        if len(groups) >= len(SPLITS):
            fill_empty_splits(groups, assignment, [name for name, share in zip(SPLITS, fractions) if share > 0][1:])
    return assignment


def fill_empty_splits(groups: Sequence[str], assignment: Dict[str, str], wanted_splits: Sequence[str]) -> None:
    """Give each wanted split (val, test) one group where a small class left it none, taken from the one with the most."""
    for wanted in reversed(wanted_splits):
        if any(assignment[g] == wanted for g in groups):
            continue
        counts = {name: sum(assignment[g] == name for g in groups) for name in SPLITS}
        donor = max(("train", "val"), key=counts.get)
        assignment[[g for g in groups if assignment[g] == donor][-1]] = wanted


def classes_missing_from(records: Sequence[CellRecord], split_of: Dict[str, str]) -> Dict[str, List[str]]:
    """{"val": classes with no cell in val, "test": likewise}: too small to set cells aside (or kept wholly in train)."""
    labels = sorted({r.label for r in records})
    present = {name: {r.label for r in records if split_of[r.sample_id] == name} for name in ("val", "test")}
    return {name: [label for label in labels if label not in present[name]] for name in ("val", "test")}


def manifest_sha1(path: Path) -> str:
    """Short content hash of a manifest: checkpoints keep it, so a run cannot resume on another split."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


def write_manifest(path: Path, records: Sequence[CellRecord], data_root: Path, layout: str,
                   fractions: Tuple[float, float, float], seed: int, assignment: Optional[Dict[str, str]] = None) -> None:
    """Write the manifest of `records`; assignment (group -> split) defaults to assign_splits(records, fractions, seed)."""
    assignment = assignment or assign_splits(records, fractions, seed)
    manifest = {
        "data_root": str(Path(data_root).resolve()), "layout": layout, "seed": seed, "fractions": list(fractions),
        "samples": [{"id": r.sample_id, "label": r.label, "group": r.group, "split": assignment[r.group]} for r in records],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(path) as tmp_path:  # torchrun's ranks all write it
        tmp_path.write_text(json.dumps(manifest, indent=1))


def read_manifest(path: Path, records: Sequence[CellRecord]) -> Dict[str, str]:
    """Map sample_id -> split, after checking that the manifest still describes these records."""
    try:
        manifest = json.loads(Path(path).read_text())
        split_of = {s["id"]: s["split"] for s in manifest["samples"]}
        group_of = {s["id"]: s["group"] for s in manifest["samples"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: split manifest cannot be read ({error}); delete it to make a new split")
    check_groups_disjoint(path, split_of, group_of)
    current = {r.sample_id for r in records}
    gone, new = sorted(set(split_of) - current), sorted(current - set(split_of))
    if gone or new:
        examples = ", ".join((gone + new)[:3])
        raise UserError(
            f"{path}: split manifest no longer matches the data ({len(gone)} listed cells are gone, {len(new)} cells "
            f"are new, e.g. {examples}); delete it to re-split, or restore the data it was made from"
        )
    return split_of


def check_groups_disjoint(path: Path, split_of: Dict[str, str], group_of: Dict[str, str]) -> None:
    splits_of_group: Dict[str, set] = defaultdict(set)
    for sample_id, split in split_of.items():
        splits_of_group[group_of[sample_id]].add(split)
    leaking = sorted(g for g, s in splits_of_group.items() if len(s) > 1)
    if leaking:
        raise UserError(f"{path}: group {leaking[0]} appears in several splits ({len(leaking)} groups leak); "
                        f"delete the manifest to re-split")


def chosen_manifest(split_file: Optional[Path], default: Path) -> Path:
    """The manifest to split by: --split-file, which must exist (a mistyped one would silently make a new split,
    and with it another test set), else `default`, the run's own, made on first use."""
    if split_file is None:
        return default
    check_named_file(split_file, "split manifest", f"pass an existing manifest to --split-file, or leave the flag out to "
                                                   f"split into {Path(default).parent} on first use", [Path(default).parent])
    return Path(split_file)


def load_split(records: Sequence[CellRecord], manifest_path: Path, data_root: Path, layout: str,
               fractions: Tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
               split_by: Optional[Sequence[CellRecord]] = None) -> Dict[str, List[CellRecord]]:
    """Read the manifest (writing it first if this data root has none) and group the records by split.

    split_by: other records of the same groups whose split these follow (a CRIC root's cells, for its fields), so
    that the two manifests of one data root put each group in the same split.
    """
    if not manifest_path.exists():
        assignment = assign_splits(split_by, fractions, seed) if split_by is not None else None
        write_manifest(manifest_path, records, data_root, layout, fractions, seed, assignment)
        print(f"wrote split manifest {manifest_path}")
    split_of = read_manifest(manifest_path, records)
    for name, missing in classes_missing_from(records, split_of).items():
        if missing:
            say_once(f"note: {manifest_path.name}: class(es) {', '.join(missing)} have no cell in the {name} split (too few "
                     f"cells or cluster images to set some aside); their {name} scores are not measured and macro "
                     f"averages leave them out")
    return {split: [r for r in records if split_of[r.sample_id] == split] for split in SPLITS}


def group_folds(records: Sequence[CellRecord], num_folds: int, seed: int) -> List[List[CellRecord]]:
    """Split records into folds by group, each class's groups dealt round-robin after a seeded shuffle."""
    groups_by_label: Dict[str, List[str]] = defaultdict(list)
    for record in records:
        if record.group not in groups_by_label[record.label]:
            groups_by_label[record.label].append(record.group)
    rng = np.random.default_rng(seed)
    fold_of: Dict[str, int] = {}
    offset = 0
    for label in sorted(groups_by_label):
        groups = sorted(groups_by_label[label])
        rng.shuffle(groups)
        for index, group in enumerate(groups):
            fold_of.setdefault(group, (offset + index) % num_folds)
        offset += len(groups)  # the next class starts where this one stopped, so fold sizes stay even
    return [[r for r in records if fold_of[r.group] == fold] for fold in range(num_folds)]


def cross_validation_manifests(records: Sequence[CellRecord], data_root: Path, layout: str, num_folds: int, seed: int,
                               out_dir: Path, val_share: float = 0.15) -> List[Path]:
    """One manifest per fold of a grouped, stratified K-fold cross-validation: fold k is its test split, and of the
    other folds a stratified val_share is its val split (model selection, calibration), the rest its train split.

    Every cell is tested exactly once over the folds. Returns the manifest paths, fold 0 first.
    """
    paths = []
    for fold, test_cells in enumerate(group_folds(records, num_folds, seed)):
        test_groups = {r.group for r in test_cells}
        rest = [r for r in records if r.group not in test_groups]
        assignment = {**assign_splits(rest, (1 - val_share, val_share, 0.0), seed), **dict.fromkeys(test_groups, "test")}
        path = Path(out_dir) / f"fold{fold}.json"
        write_manifest(path, records, data_root, layout, (1 - val_share, val_share, 0.0), seed, assignment)
        paths.append(path)
    return paths
