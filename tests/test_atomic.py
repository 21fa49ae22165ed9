import os
import stat

import pytest

from torchkeep._atomic import atomic_path, atomic_write_bytes


def test_replaces_atomically_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left behind


def test_new_files_get_the_usual_mode_and_replacements_keep_theirs(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "new.bin"
        atomic_write_bytes(target, b"x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600
        target.chmod(0o640)
        atomic_write_bytes(target, b"y")
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_output_that_is_a_directory_or_unwritable_is_a_one_line_error(tmp_path):
    from torchkeep.errors import TorchkeepError, UsageError

    with pytest.raises(UsageError, match="is a directory"), atomic_path(tmp_path):
        pass
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TorchkeepError, match="cannot write the file here"), atomic_path(blocker / "sub" / "m.bin"):
        pass
