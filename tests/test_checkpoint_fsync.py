"""A checkpoint survives a power cut: its bytes are fsync'd before the rename that replaces the previous last.pt, and
its folder after it (the rename lives in the folder). Without them a power cut shortly after a save can leave an empty
or partial last.pt in place of the last complete one (ext4 delayed allocation, most SD cards and eMMC of a Jetson)."""

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from fair_edge.errors import CheckpointError
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.unet import UNet
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig

MODEL = ModelSpec("fair", PreprocessConfig(image_size=32), FairSettings(8))


def checkpoint(step: int) -> Checkpoint:
    return Checkpoint(MODEL, UNet(8).state_dict(), {"name": "x"}, {"step": step})


def saved_to(f) -> Path:
    """The file a ``torch.save(obj, f)`` writes: ``f`` itself when it is a path, else the open file's path (its
    ``/proc/self/fd`` link: save_checkpoint saves through the temporary it opened)."""
    return Path(f) if isinstance(f, (str, os.PathLike)) else Path(os.readlink(f"/proc/self/fd/{f.fileno()}"))


def untagged(name: str) -> str:
    """A temporary's name without the random tag that makes it one writer's own (``disk.temporary_name``):
    ``.1a2b3c4d.last.pt.tmp`` -> ``last.pt.tmp``; any other name as it is."""
    return re.sub(r"^\.[0-9a-f]{8}\.(.+\.tmp)$", r"\1", name)


def recording(monkeypatch, fsync=None) -> list[tuple]:
    """Record, in order, each os.fsync (of a "file" or a "folder", with its inode) and os.replace (names, the
    temporary's ``untagged``, inode of the file moved). ``fsync``: called instead of the real one for the fd, when
    given."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync_recorded(fd):
        st = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        return (fsync or real_fsync)(fd)

    def replace_recorded(src, dst):
        events.append(("replace", untagged(Path(src).name), Path(dst).name, os.stat(src).st_ino))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync_recorded)
    monkeypatch.setattr(os, "replace", replace_recorded)
    return events


def test_the_file_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "run" / "last.pt", checkpoint(1))
    events = recording(monkeypatch)
    path = save_checkpoint(tmp_path / "run" / "last.pt", checkpoint(2))
    written, folder = path.stat().st_ino, path.parent.stat().st_ino
    assert events == [("fsync", "file", written), ("replace", "last.pt.tmp", "last.pt", written),
                      ("fsync", "folder", folder)]
    assert load_checkpoint(path).train_state == {"step": 2}


def test_a_failed_fsync_keeps_the_previous_checkpoint_and_leaves_no_tmp(tmp_path, monkeypatch):
    """A disk error while the bytes are forced out (EIO): the previous last.pt is left in place, not replaced by a
    file that may not be on the disk; the error names the file and the resume command, as any failed save does."""
    path = save_checkpoint(tmp_path / "last.pt", checkpoint(1))

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    recording(monkeypatch, broken)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last\.pt \(Input/output error\)"):
        save_checkpoint(path, checkpoint(2), resume="`fair-edge train --resume --out run`")
    monkeypatch.undo()
    assert load_checkpoint(path).train_state == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temporary left


def test_a_file_system_that_cannot_fsync_a_folder_still_saves(tmp_path, monkeypatch):
    """Some network mounts refuse fsync on a folder (EINVAL): the file is on the disk already, the save goes on."""
    real_fsync = os.fsync

    def no_folder_sync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    events = recording(monkeypatch, no_folder_sync)
    path = save_checkpoint(tmp_path / "last.pt", checkpoint(3))
    assert [e[:2] for e in events] == [("fsync", "file"), ("replace", "last.pt.tmp"), ("fsync", "folder")]
    assert load_checkpoint(path).train_state == {"step": 3}
