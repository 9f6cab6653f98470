"""tools/files.py: atomic replacement of a file."""
import os

import pytest

from utils.files import written_atomically


def test_written_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    with written_atomically(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # the real name is untouched until the block ends
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_written_atomically_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "model.pth"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with written_atomically(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_written_atomically_names_the_temporary_per_process(tmp_path):
    with written_atomically(tmp_path / "a.npz") as first:
        first.write_bytes(b"")
    assert str(os.getpid()) in first.name and first.parent == tmp_path
