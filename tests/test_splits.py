"""Behaviour of tools/splits.py: grouped, stratified, seeded split manifests, written once and checked on read."""
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from tools.layouts.record import CellRecord
from tools.splits import (
    SPLITS,
    assign_splits,
    chosen_manifest,
    load_split,
    read_manifest,
    write_manifest,
)
from utils.errors import UserError

FRACTIONS = (0.7, 0.15, 0.15)


def synthetic_records(groups_per_class=(60, 40, 80), max_group_size=4, seed=0):
    """Records of 3 classes; each group (cluster image) holds 1..max_group_size cells of its class."""
    rng = np.random.default_rng(seed)
    records = []
    for class_index, n_groups in enumerate(groups_per_class):
        label = f"class{class_index}"
        for group_index in range(n_groups):
            group = f"{label}/{group_index:03d}"
            for cell in range(int(rng.integers(1, max_group_size + 1))):
                sample_id = f"{group}_{cell:02d}"
                records.append(CellRecord(sample_id, Path(f"{sample_id}.bmp"), label, group))
    return sorted(records, key=lambda r: r.sample_id)


@pytest.fixture(scope="module")
def records():
    return synthetic_records()


def test_every_group_gets_exactly_one_split(records):
    assignment = assign_splits(records, FRACTIONS, seed=0)
    assert set(assignment) == {r.group for r in records}
    assert set(assignment.values()) == set(SPLITS)
    # through the manifest: the cells of one group never land in two splits
    by_group = defaultdict(set)
    for record in records:
        by_group[record.group].add(assignment[record.group])
    assert all(len(splits) == 1 for splits in by_group.values())
    assert max(Counter(r.group for r in records).values()) > 1  # the check is not vacuous


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_proportions_are_about_70_15_15_per_class(records, seed):
    assignment = assign_splits(records, FRACTIONS, seed)
    for label in sorted({r.label for r in records}):
        cells = [r for r in records if r.label == label]
        counts = Counter(assignment[r.group] for r in cells)
        shares = [counts[s] / len(cells) for s in SPLITS]
        # groups are indivisible (up to 4 cells here), so allow a few cells of slack
        slack = 6 / len(cells)
        for share, wanted in zip(shares, FRACTIONS):
            assert abs(share - wanted) <= slack, (label, shares)


def test_other_fractions_are_followed(records):
    assignment = assign_splits(records, (0.5, 0.25, 0.25), seed=3)
    counts = Counter(assignment[r.group] for r in records)
    assert abs(counts["train"] / len(records) - 0.5) < 0.05
    assert abs(counts["val"] / len(records) - 0.25) < 0.05


def test_groups_of_mixed_labels_get_one_split_each():
    records = [CellRecord(f"g/{i}", Path(f"{i}.bmp"), "a" if i < 3 else "b", "g") for i in range(4)]
    records += [CellRecord(f"h{i}", Path(f"h{i}.bmp"), "b", f"h{i}") for i in range(10)]
    assignment = assign_splits(records, FRACTIONS, seed=0)
    assert set(assignment) == {"g"} | {f"h{i}" for i in range(10)}


def test_fields_of_many_cells_are_dealt_by_their_rarest_class():
    """CRIC-like fields: 20 common cells each, 8 fields also hold one rare cell. Dealt by majority, the rare fields
    could all land in train; dealt by their rarest class they reach every split."""
    records = []
    for field in range(40):
        labels = ["common"] * 20 + (["rare"] if field % 5 == 0 else [])
        records += [CellRecord(f"f{field:02d}/{i}", Path(f"f{field:02d}.jpg"), label, f"f{field:02d}")
                    for i, label in enumerate(labels)]
    for seed in range(5):
        assignment = assign_splits(records, FRACTIONS, seed)
        assert {assignment[f"f{field:02d}"] for field in range(0, 40, 5)} == set(SPLITS)


def test_same_seed_same_assignment_other_seed_other(records):
    assert assign_splits(records, FRACTIONS, 5) == assign_splits(records, FRACTIONS, 5)
    assert assign_splits(records, FRACTIONS, 5) != assign_splits(records, FRACTIONS, 6)
    # independent of the order the records come in
    assert assign_splits(records[::-1], FRACTIONS, 5) == assign_splits(records, FRACTIONS, 5)


def test_same_seed_same_manifest_file(tmp_path, records):
    for name, seed in (("a.json", 4), ("b.json", 4), ("c.json", 5)):
        write_manifest(tmp_path / name, records, tmp_path, "sipakmed", FRACTIONS, seed)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()


def test_write_read_round_trip(tmp_path, records):
    path = tmp_path / "splits" / "manifest.json"
    write_manifest(path, records, tmp_path / "data", "paired", FRACTIONS, seed=2)
    assert not list(path.parent.glob("*.tmp"))
    manifest = json.loads(path.read_text())
    assert manifest["layout"] == "paired" and manifest["seed"] == 2 and manifest["fractions"] == list(FRACTIONS)
    assert manifest["data_root"] == str((tmp_path / "data").resolve())
    assert len(manifest["samples"]) == len(records)
    split_of = read_manifest(path, records)
    assignment = assign_splits(records, FRACTIONS, seed=2)
    assert split_of == {r.sample_id: assignment[r.group] for r in records}


def edit_manifest(path, edit):
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_read_refuses_a_group_in_two_splits(tmp_path, records):
    path = tmp_path / "m.json"
    write_manifest(path, records, tmp_path, "sipakmed", FRACTIONS, seed=0)
    group = Counter(r.group for r in records).most_common(1)[0][0]

    def leak(manifest):
        cells = [s for s in manifest["samples"] if s["group"] == group]
        cells[0]["split"] = "test" if cells[0]["split"] != "test" else "train"

    edit_manifest(path, leak)
    with pytest.raises(UserError, match=rf"m\.json: group {group} appears in several splits"):
        read_manifest(path, records)


def test_read_refuses_a_manifest_of_other_files(tmp_path, records):
    path = tmp_path / "m.json"
    write_manifest(path, records, tmp_path, "sipakmed", FRACTIONS, seed=0)
    extra = CellRecord("class0/new_cell", Path("new.bmp"), "class0", "class0/new")
    with pytest.raises(UserError, match=r"no longer matches.*0 listed cells are gone, 1 cells are new.*new_cell"):
        read_manifest(path, records + [extra])
    with pytest.raises(UserError, match=r"1 listed cells are gone, 0 cells are new"):
        read_manifest(path, records[1:])


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"samples": [{"id": "x"}]}'])
def test_read_refuses_a_broken_manifest(tmp_path, records, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(UserError, match=r"broken\.json: split manifest cannot be read"):
        read_manifest(path, records)


def test_load_split_writes_the_manifest_only_once(tmp_path, records, capsys):
    path = tmp_path / "splits" / "data.json"
    first = load_split(records, path, tmp_path, "sipakmed", seed=0)
    assert "wrote split manifest" in capsys.readouterr().out
    content, mtime = path.read_bytes(), path.stat().st_mtime_ns
    second = load_split(records, path, tmp_path, "sipakmed", seed=99)  # another seed does not re-split
    assert "wrote" not in capsys.readouterr().out
    assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime
    assert {s: [r.sample_id for r in first[s]] for s in SPLITS} == {s: [r.sample_id for r in second[s]] for s in SPLITS}
    # the three splits partition the records
    ids = [r.sample_id for s in SPLITS for r in first[s]]
    assert sorted(ids) == sorted(r.sample_id for r in records)


@pytest.mark.parametrize("groups", [3, 4, 5, 8])
def test_a_class_of_three_groups_or_more_gets_val_and_test(groups):
    """A class missing from test would go unscored; 3 groups are enough for one in each split."""
    records = synthetic_records(groups_per_class=(60, groups), max_group_size=1)
    for seed in range(10):
        assignment = assign_splits(records, FRACTIONS, seed)
        small = [assignment[r.group] for r in records if r.label == "class1"]
        assert set(small) == set(SPLITS), (groups, seed, small)
        assert small.count("train") >= groups - 2


def test_a_class_of_fewer_groups_stays_in_train():
    records = synthetic_records(groups_per_class=(60, 1), max_group_size=3)
    assignment = assign_splits(records, FRACTIONS, seed=0)
    assert {assignment[r.group] for r in records if r.label == "class1"} == {"train"}


def test_a_split_file_must_exist_and_a_typo_names_the_manifests_there(tmp_path):
    run_splits = tmp_path / "run" / "splits"
    run_splits.mkdir(parents=True)
    (run_splits / "herlev-1a2b3c4d.json").write_text("{}")
    default = run_splits / "herlev-1a2b3c4d.json"
    assert chosen_manifest(None, tmp_path / "run" / "splits" / "new.json") == tmp_path / "run" / "splits" / "new.json"
    assert chosen_manifest(default, tmp_path / "other.json") == default
    with pytest.raises(UserError, match=r"herlev-1a2b3c4.json: no such file, unknown split manifest 'herlev-1a2b3c4.json'; "
                                        r"did you mean herlev-1a2b3c4d.json\? .*; pass an existing manifest to --split-file"):
        chosen_manifest(run_splits / "herlev-1a2b3c4.json", default)
    assert not (run_splits / "herlev-1a2b3c4.json").exists()  # no new split made under the mistyped name
