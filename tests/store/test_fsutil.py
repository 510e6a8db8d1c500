import pytest

from mailwright import fsutil


def test_rename_noreplace_moves_and_never_replaces(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"first")
    fsutil.rename_noreplace(str(a), str(b))
    assert not a.exists() and b.read_bytes() == b"first"
    c.write_bytes(b"second")
    with pytest.raises(FileExistsError):
        fsutil.rename_noreplace(str(c), str(b))
    assert b.read_bytes() == b"first" and c.read_bytes() == b"second"


def test_rename_noreplace_fallback_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "_libc", None)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x")
    b.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        fsutil.rename_noreplace(str(a), str(b))
    assert b.read_bytes() == b"keep"
    fsutil.rename_noreplace(str(a), str(tmp_path / "c"))
    assert (tmp_path / "c").read_bytes() == b"x" and not a.exists()
