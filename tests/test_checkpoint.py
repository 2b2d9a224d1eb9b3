import pickle

import pytest
import torch

from fair_edge.models import checkpoint as checkpoint_module
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fair_edge.errors import CheckpointError
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.runs import find_latest_checkpoint
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.scoring import ScoringConfig
from fair_edge.models.fair.unet import UNet
from fair_edge.models.registry import ModelSpec

MODEL = ModelSpec("fair", PreprocessConfig(image_size=32, cutoff=8.0), FairSettings(8, ScoringConfig(smooth=5)))


def make(tmp_path, name="c.pt"):
    ckpt = Checkpoint(MODEL, UNet(8).state_dict(), {"name": "x"}, {"step": 3})
    return save_checkpoint(tmp_path / name, ckpt), ckpt


def test_round_trip(tmp_path):
    path, ckpt = make(tmp_path)
    loaded = load_checkpoint(path)
    assert loaded.model == ckpt.model and loaded.family == "fair" and loaded.settings.width == 8
    assert loaded.train_state == {"step": 3} and loaded.data_summary == {"name": "x"}
    detector = loaded.build_detector()
    amap, score = detector(torch.zeros(1, 1, 32, 32), torch.zeros(1, 3, 32, 32))
    assert amap.shape == (1, 1, 32, 32) and score.shape == (1,)
    assert not (tmp_path / "c.pt.tmp").exists()


def test_truncated_and_foreign_files(tmp_path):
    path, _ = make(tmp_path)
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fair-edge checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_weights_only_refuses_pickled_code(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as fh:
        torch.save({"format": "fair-edge-checkpoint", "x": Evil()}, fh, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "evil.pt")


def test_version_and_weight_mismatch(tmp_path):
    path, _ = make(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "v99.pt")
    payload["format_version"] = 2
    payload["settings"]["width"] = 16
    torch.save(payload, tmp_path / "w16.pt")
    with pytest.raises(CheckpointError, match="do not fit a FAIR width 16"):
        load_checkpoint(tmp_path / "w16.pt").build_detector()


def test_find_latest_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="fair-edge train DATA --width 32"):
        find_latest_checkpoint("w32", tmp_path, "fair-edge train DATA --width 32")
    make(tmp_path / "train-w32", "last.pt")
    assert find_latest_checkpoint("w32", tmp_path).name == "last.pt"
    make(tmp_path / "train-w32-b", "final.pt")
    assert find_latest_checkpoint("w32", tmp_path).parent.name == "train-w32-b"


def _flip_inside_largest_record(path):
    """Flip one byte in the middle of the largest record's data (a weight tensor); returns the record's name."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return info.filename


def test_a_flipped_byte_is_refused_naming_the_record(tmp_path):
    """torch.load does not check the zip records' CRC-32: one flipped bit in a weight loads and builds with an
    altered weight. load_checkpoint checks every record first and names the bad one and the fix."""
    path, _ = make(tmp_path)
    record = _flip_inside_largest_record(path)
    with pytest.raises(CheckpointError, match=rf"record {record} fails the CRC-32 check.*earlier checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_that_is_no_zip_still_loads(tmp_path):
    """torch.save's legacy (pre-zip) format has no CRCs to check: such a file is read as before."""
    _, ckpt = make(tmp_path)
    payload = {"format": "fair-edge-checkpoint", "format_version": 2, "fair_edge_version": "0",
               **ckpt.model.to_dict(), "state_dict": ckpt.state_dict, "data_summary": {}, "train_state": None}
    torch.save(payload, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert load_checkpoint(tmp_path / "legacy.pt").model == ckpt.model


@pytest.mark.parametrize("name, text", [
    ("loss.csv", "step,epoch,loss,lr,images_per_s,elapsed_s\n10,0,0.5,0.001,3.2,1.0\n"),  # tab completion in runs/x/
    ("station.yaml", "model:\n  bundle: bundles/x\nsource: cam0\n"),                     # the IndexError case
    ("notes.txt", "hello"),                                                              # 'h' was KeyError: 101
    ("settings.json", '{"width": 32}'),
])
def test_a_text_file_is_refused_naming_it_and_the_fix(tmp_path, name, text):
    """A text file given as CHECKPOINT is refused before torch.load (which raised IndexError or KeyError on
    some), naming the file, what it is and which file to pass."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CheckpointError, match=rf"{name} is not a checkpoint written by fair-edge train \(not a "
                                              rf"torch.save zip file; found a text file starting .*final.pt"):
        load_checkpoint(path)


def test_an_empty_file_and_a_foreign_zip_are_refused(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt is empty \(0 bytes\).*earlier checkpoint"):
        load_checkpoint(tmp_path / "empty.pt")
    import zipfile

    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    with pytest.raises(CheckpointError, match="archive.pt is not a checkpoint written by fair-edge train .*no data.pkl"):
        load_checkpoint(tmp_path / "archive.pt")


def test_refusals_never_suggest_loading_with_weights_only_false(tmp_path):
    """torch's weights-only error advises re-running torch.load with weights_only=False (which runs any code
    in the file): the CheckpointError keeps torch's reason and drops that advice."""
    with open(tmp_path / "evil.pt", "wb") as fh:
        torch.save({"format": "fair-edge-checkpoint", "x": Evil()}, fh, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"evil.pt is corrupt or was not written by fair-edge train") as info:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(info.value)
    assert "weights_only" not in message and "safe_globals" not in message and "\x1b" not in message
    assert "unsupported global" in message.lower()  # torch's reason: it names the refused object


def test_a_field_of_the_wrong_type_is_refused(tmp_path):
    """tiling saved as a string (not a dict) raised AttributeError instead of a CheckpointError."""
    path, _ = make(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["preprocess"]["tiling"] = "abc"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt is missing or has an invalid field"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("weights", [[1, 2], {"w": "not a tensor"}, None])
def test_weights_that_are_not_a_mapping_of_tensors_are_refused(tmp_path, weights):
    """A state_dict saved as a list reached the family's build and raised a TypeError there."""
    path, _ = make(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = weights
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt has an invalid field: state_dict must map weight names to "
                                              r"tensors, found (list|dict|NoneType)"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos\n31499392 vs 31499284")])
def test_a_full_disk_is_one_error_naming_the_file_and_free_space_and_leaves_no_tmp(tmp_path, monkeypatch, failure):
    """`train`, `build`, `tune` on a full disk: torch.save's RuntimeError ("unexpected pos", as torch reports ENOSPC)
    or OSError was a raw traceback, and the half-written last.pt.tmp stayed, filling the disk further. Now: one
    CheckpointError naming the file, the free space on its disk and the fix; no .tmp left."""
    import shutil
    from collections import namedtuple

    def short_write(payload, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise failure

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 << 20, 97 << 20, 3 << 20))
    with pytest.raises(CheckpointError) as err:
        make(tmp_path)
    message = str(err.value)
    assert message.startswith(f"cannot write checkpoint {tmp_path / 'c.pt'} (") and "\n" not in message
    assert f"3.0 MB free on the disk of {tmp_path}" in message and "choose an --out on another disk" in message
    assert list(tmp_path.iterdir()) == []   # no c.pt.tmp


@pytest.mark.parametrize("failure", [
    OSError(30, "Read-only file system"),
    RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: Read-only file system")])
def test_a_read_only_disk_says_read_only_not_free_space_and_warns_of_no_tmp(tmp_path, monkeypatch, caplog, failure):
    """A disk remounted read-only mid-training (ext4 errors=remount-ro, the Ubuntu/JetPack default): the save said
    "Free space on that disk" (the disk had plenty), and warned "could not remove the unfinished checkpoint c.pt.tmp
    (Read-only file system): delete it" about a file that was never made (unlinking even a missing file fails with
    EROFS there). Now it says read-only and how to fix it, and nothing about a .tmp. torch reports this case as a
    RuntimeError with the text only (no errno)."""
    import logging
    from pathlib import Path

    def read_only(target):   # the first write a read-only disk refuses: making the temporary file
        raise failure

    def unlink(self, missing_ok=False):   # as on a read-only mount, even for a missing file
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(checkpoint_module, "create_temporary", read_only)
    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError) as err:
        make(tmp_path)
    message = str(err.value)
    assert message.startswith(f"cannot write checkpoint {tmp_path / 'c.pt'} (") and "\n" not in message
    assert f"{tmp_path} is on a read-only file system. Choose an --out on a writable disk, or remount that disk " \
           "read-write, then run again." in message, message
    assert "Free space" not in message and "MB free" not in message
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
