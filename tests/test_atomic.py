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


def test_a_writer_that_replaces_the_temporary_file_still_gives_the_usual_mode(tmp_path):
    # safetensors' save_file writes its own private (0600) temporary and renames it over the path it is given
    import torch
    from safetensors.torch import save_file

    import torchkeep
    from torchkeep.models import build

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, os.fspath(tmp))
        torchkeep.save(build("cifar10_cnn", 10, in_channels=1, input_size=8), tmp_path / "m.safetensors")
        for name in ("w.safetensors", "m.safetensors"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)
