"""The one atomic writer: a file appears whole or not at all, and leaves no temporary behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reverie.workloads.store.atomic import replacing, write_atomic


def test_text_and_bytes_replace_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "result.json"
    write_atomic(target, "old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "eval.json"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash before the rename")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_the_file_gets_the_usual_permissions_not_those_of_a_private_temporary(tmp_path: Path) -> None:
    target = tmp_path / "latest"
    write_atomic(target, "step-00000001")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
