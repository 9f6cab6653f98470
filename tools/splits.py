"""The split manifest: train/val/test written once per data root, read by every script.

Split by group (a SIPaKMeD cluster image, or a single cell elsewhere), stratified by class,
seeded. Only evaluate.py reads the test split.
"""
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tools.data_loader import CellRecord, read_records
from tools.datasets import check_cells, report_skipped
from tools.errors import UserError
from tools.files import written_atomically

SPLITS = ("train", "val", "test")


def default_manifest_path(output_dir: Path, data_root: Path) -> Path:
    """One manifest per data root, kept under the run folder (data roots are often read-only)."""
    root = Path(data_root).resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    return Path(output_dir) / "splits" / f"{root.name}-{digest}.json"


def assign_splits(records: Sequence[CellRecord], fractions: Tuple[float, float, float], seed: int) -> Dict[str, str]:
    """Map group -> split. Per class, shuffled groups fill train, then val, then test up to their share of cells."""
    group_sizes: Dict[str, int] = defaultdict(int)
    group_labels: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        group_sizes[record.group] += 1
        group_labels[record.group][record.label] += 1
    groups_by_class: Dict[str, List[str]] = defaultdict(list)
    for group, label_counts in group_labels.items():
        majority_label = max(sorted(label_counts), key=label_counts.get)
        groups_by_class[majority_label].append(group)

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
    return assignment


def write_manifest(path: Path, records: Sequence[CellRecord], data_root: Path, layout: str,
                   fractions: Tuple[float, float, float], seed: int) -> None:
    assignment = assign_splits(records, fractions, seed)
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
        raise UserError(f"{path}: group {leaking[0]} appears in several splits ({len(leaking)} groups leak); delete the manifest to re-split")


def load_split(records: Sequence[CellRecord], manifest_path: Path, data_root: Path, layout: str,
               fractions: Tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0) -> Dict[str, List[CellRecord]]:
    """Read the manifest (writing it first if this data root has none) and group the records by split."""
    if not manifest_path.exists():
        write_manifest(manifest_path, records, data_root, layout, fractions, seed)
        print(f"wrote split manifest {manifest_path}")
    split_of = read_manifest(manifest_path, records)
    return {split: [r for r in records if split_of[r.sample_id] == split] for split in SPLITS}


@dataclass
class DatasetSplit:
    records: List[CellRecord]  # every usable cell of the data root (under --skip-bad the bad ones are left out)
    layout: str
    by_split: Dict[str, List[CellRecord]]  # "train" / "val" / "test" -> usable cells


def usable_cells(records: Sequence[CellRecord], args) -> List[CellRecord]:
    """Decode every cell once, up front: the first bad one stops the run, or under --skip-bad is left out and reported."""
    skip_bad = getattr(args, "skip_bad", False)
    usable, skipped = check_cells(records, skip_bad)
    if skip_bad:
        report_skipped(skipped, args.output_dir)
    return usable


def open_split(args) -> DatasetSplit:
    """Read the data root named by the data flags and its split manifest (made on first use); check every cell."""
    records, layout = read_records(args.data_root, args.layout, args.sipakmed_source, args.nuc_suffix, args.cyt_suffix,
                                   getattr(args, "skip_bad", False))
    manifest_path = args.split_file or default_manifest_path(args.output_dir, args.data_root)
    # The manifest is about the files present, bad cells included: skipping one does not move the others to
    # another split, and once it is fixed it comes back in the split it had.
    by_split = load_split(records, manifest_path, args.data_root, layout, seed=args.split_seed)
    usable = usable_cells(records, args)
    kept = {r.sample_id for r in usable}
    by_split = {name: [r for r in cells if r.sample_id in kept] for name, cells in by_split.items()}
    for name in ("train", "val"):
        if not by_split[name]:
            skipped = f", {len(records) - len(usable)} skipped as bad" if len(usable) < len(records) else ""
            raise UserError(f"{manifest_path}: the {name} split is empty ({len(usable)} usable cells in all{skipped}); add data")
    return DatasetSplit(usable, layout, by_split)


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
