"""A folder fsync that fails (EIO) after ``os.replace`` put the new checkpoint in place is not a failed save: the
checkpoint is there; a warning says its folder entry may not survive a power cut. It was reported as "cannot write
checkpoint", after trying to discard a tmp already renamed away."""

import errno
import logging
import os
import stat

from fair_edge.models.checkpoint import load_checkpoint, save_checkpoint
from test_checkpoint_fsync import checkpoint


def test_a_folder_fsync_failing_after_the_rename_warns_and_keeps_the_new_checkpoint(tmp_path, monkeypatch, caplog):
    path = save_checkpoint(tmp_path / "last.pt", checkpoint(1))
    real_fsync = os.fsync

    def folder_eio(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", folder_eio)
    with caplog.at_level(logging.WARNING, logger="fair_edge.models.checkpoint"):
        assert save_checkpoint(path, checkpoint(2)) == path
    monkeypatch.undo()
    assert load_checkpoint(path).train_state == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temporary left
    assert f"checkpoint {path} is written, but its folder {tmp_path} could not be synced" in caplog.text
    assert "Input/output error" in caplog.text and "power cut" in caplog.text
