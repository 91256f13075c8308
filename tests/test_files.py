"""Atomic writes: whole or absent, and readable as any file created there would be (mkstemp's 0600 would make
every dataset, model and table its owner's alone, so a colleague or a container's user could not read them)."""

import os
import stat
from pathlib import Path

import pytest

from leakhunter.files import atomic_path, write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_a_new_file_gets_the_umask_and_a_rewritten_one_keeps_its_mode(tmp_path, umask_022):
    fresh = tmp_path / "scores.csv"
    write_atomic(fresh, "file,status\n")
    assert mode(fresh) == 0o644
    fresh.chmod(0o640)
    write_atomic(fresh, "file,status\na.wav,ok\n")
    assert mode(fresh) == 0o640 and fresh.read_text() == "file,status\na.wav,ok\n"
    os.umask(0o077)
    write_atomic(tmp_path / "private.json", "{}")
    assert mode(tmp_path / "private.json") == 0o600
    os.umask(0o277)  # a mode without owner-write is given at the rename, so the writer can still write
    with atomic_path(tmp_path / "read_only.csv") as temporary:
        assert mode(temporary) & 0o200
        temporary.write_text("x")
    assert mode(tmp_path / "read_only.csv") == 0o400


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "best.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["best.pth"]


def test_an_exported_model_is_readable_by_others(binary_export):
    checkpoint, report = binary_export  # written by this process, whose umask lets others read what it creates
    umask = os.umask(0o022)
    os.umask(umask)
    if umask & 0o044:
        pytest.skip("this process's umask keeps files from others")
    for path in (Path(report.output), checkpoint):
        assert mode(path) & 0o044 == 0o044, (path, oct(mode(path)))
