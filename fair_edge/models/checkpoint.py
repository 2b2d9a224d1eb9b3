"""The checkpoint: one self-describing file with weights and every setting that defines the model.

Layout (a plain dict of tensors and primitives, so ``torch.load(weights_only=True)`` can read it):
  format, format_version (2), fair_edge_version,
  family: registry key ("fair", ...), family_version: int, settings: the family's settings dict,
  preprocess: PreprocessConfig dict, state_dict: the family's weights,
  data_summary: dict (where the normal images came from, how many),
  train_state: optional dict to resume exactly (step, optimizer, scheduler, RNG states),
  training_images: optional dict, the images the model was fitted on (``TrainingImages``): their names and a
  digest of each file's bytes, so that build and fuse refuse them as held-out images. Files written before it
  load with None (the check cannot be made).
Version 1 files (written before model families existed: ``width`` and ``scoring`` instead of
``family``/``settings``) are FAIR checkpoints and still load.
Files are written atomically and durably (temporary file, fsync'd, renamed over the old one, then its folder
fsync'd), so neither a crash nor a power cut leaves half a checkpoint or loses the last complete one; a write that
fails (a full disk: ``torch.save`` says "unexpected pos" or raises OSError; a disk remounted read-only mid-run)
removes its temporary file and is a CheckpointError naming the file, the cause and the fix (``disk.write_failure``),
for a training run with the command that resumes it from the last save.
Loading checks every record's CRC-32 in the zip container first (``_verify_crc``), so a file damaged later
(one flipped bit on a disk or in a copy) is refused instead of loading with altered weights; a file that is
no ``torch.save`` file at all (a loss.csv or YAML picked by tab completion) is refused before anything is unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

import fair_edge
from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.disk import create_temporary, discard_unfinished, fsync, write_failure
from fair_edge.models.registry import LEGACY_FAMILY, ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge.shell import shell_word

log = logging.getLogger(__name__)

FORMAT = "fair-edge-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DIGEST_BYTES = 8   # of each training image's SHA-256: 80 kB for 10 000 images; two different files share one by
                   # chance with probability about N x M / 2**64 (5e-12 for 10 000 training against 10 000 held out)
DIGEST_KIND = f"sha256[:{DIGEST_BYTES}] of the file bytes"
_CHUNK = 1 << 20
# errnos of a folder that cannot be opened or fsynced (a file system without it): the save goes on without that step
_UNSYNCABLE = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EBADF)


def file_digest(path: str | Path) -> bytes | None:
    """The first DIGEST_BYTES of the SHA-256 of the file's bytes, None when it cannot be read."""
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                sha.update(chunk)
    except OSError:
        return None
    return sha.digest()[:DIGEST_BYTES]


@dataclass(frozen=True)
class TrainingImages:
    """The images a model was fitted on, so that images asked for as held out (``build --normal``) can be checked.

    names: each image's path as training found it (for messages). digests: (N, DIGEST_BYTES) uint8, the start of
    the SHA-256 of each file's bytes. File bytes, not decoded pixels: the same file has the same digest on every
    machine and OpenCV build (a JPEG decoder may differ in the last bit between the training machine and a Jetson),
    and nothing is decoded to make it; a copy, a renamed file or the same folder is recognised, a re-encoded copy
    (another compression level or format) is not. Files that cannot be read are left out (nothing was fitted on
    them)."""

    names: tuple[str, ...]
    digests: torch.Tensor

    @classmethod
    def of_files(cls, paths: Iterable[str | Path]) -> "TrainingImages":
        """The record of the files ``paths`` (each read once, whole)."""
        return cls.of_digests((p, file_digest(p)) for p in paths)

    @classmethod
    def of_digests(cls, found: Iterable[tuple[str | Path, bytes | None]]) -> "TrainingImages":
        """The record of files already hashed: (path, ``file_digest`` of it) pairs; a None digest (a file that
        cannot be read) is left out."""
        kept = [(str(p), d) for p, d in found if d is not None]
        rows = np.frombuffer(b"".join(d for _, d in kept), np.uint8).reshape(len(kept), DIGEST_BYTES)
        return cls(tuple(name for name, _ in kept), torch.from_numpy(rows.copy()))

    def digest_set(self) -> set[bytes]:
        """The DIGEST_BYTES-byte digests of the record, as a set (``bytes`` each)."""
        return {bytes(row) for row in self.digests.numpy()}

    def to_payload(self) -> dict:
        """Plain containers and one tensor, as ``torch.load(weights_only=True)`` reads them."""
        return {"digest": DIGEST_KIND, "names": list(self.names), "digests": self.digests}

    @classmethod
    def from_payload(cls, payload: Any) -> "TrainingImages | None":
        """The record a checkpoint holds; None for one written before it was kept (or with another digest)."""
        if not isinstance(payload, dict) or payload.get("digest") != DIGEST_KIND:
            return None
        names, digests = payload.get("names"), payload.get("digests")
        if not isinstance(names, list) or not isinstance(digests, torch.Tensor) or digests.dtype != torch.uint8 \
                or tuple(digests.shape) != (len(names), DIGEST_BYTES):
            raise ConfigError(f"training_images must hold one {DIGEST_BYTES}-byte digest per name; found "
                              f"{type(digests).__name__} for {type(names).__name__} names")
        return cls(tuple(map(str, names)), digests)

    def found_among(self, paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
        """(path, the training image it is) for each of ``paths`` whose bytes are those of a training image, in
        ``paths`` order: each file is read once, whole."""
        keys = self.digests.numpy().view(">u8").ravel().tolist()
        trained = dict(zip(keys, self.names))
        found = []
        for path in paths:
            digest = file_digest(path)
            key = int.from_bytes(digest, "big") if digest is not None else None
            if key in trained:
                found.append((Path(path), trained[key]))
        return found


@dataclass
class Checkpoint:
    """model: family, settings and pre-processing. state_dict: the family's weights (``ModelFamily.weights``).
    training_images: the images it was fitted on (``TrainingImages``); None for a checkpoint that does not say."""

    model: ModelSpec
    state_dict: dict
    data_summary: dict = field(default_factory=dict)
    train_state: dict | None = None
    training_images: TrainingImages | None = None

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.model.preprocess

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def settings(self) -> Any:
        return self.model.settings

    def build_detector(self, device: str | torch.device = "cpu") -> nn.Module:
        """The family's module with these weights, in eval mode, on ``device``."""
        return self.model.build(self.state_dict, device)


def save_checkpoint(path: str | Path, ckpt: Checkpoint, *, resume: str | None = None) -> Path:
    """Write ``ckpt`` to ``path`` atomically and durably (``_write_placed``: a temporary of its own beside it,
    fsync'd, renamed to ``path``; then the folder fsync'd: ``_sync_placed``, a failure of that last step is a logged
    warning, the checkpoint being in place). Returns the path. A failed write (a full or read-only disk) leaves no
    temporary and raises CheckpointError naming ``path``, the cause by errno (with the free space of a full disk)
    and the fix (``disk.write_failure``), then what to run (``_then_run``).
    resume: for a training run writing into ``path``'s folder, the command that continues it from its last.pt
    (``training.loop.resume_hint``, quoted), e.g. "`fair-edge train --resume --out runs/a`"."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fair_edge_version": fair_edge.__version__,
        **ckpt.model.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "data_summary": ckpt.data_summary,
        "train_state": ckpt.train_state,
        "training_images": ckpt.training_images.to_payload() if ckpt.training_images is not None else None,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_placed(payload, path)
    except (OSError, RuntimeError) as exc:   # torch.save: RuntimeError ("unexpected pos ...", "strerror: ...")
        raise CheckpointError(f"cannot write checkpoint {path} ({_write_reason(exc)}): {_then_run(path, exc, resume)}."
                              ) from exc
    _sync_placed(path)
    return path


def _write_placed(payload: dict, path: Path) -> None:
    """``torch.save`` ``payload`` into a temporary file of its own beside ``path`` (``disk.create_temporary``:
    ``.1a2b3c4d.NAME.tmp``, a new name per write, so two writers of one checkpoint never write into the same file and
    a leftover of a killed write is never reused), fsync it, and rename it over ``path``. Saved through the open file,
    not by name: torch.save names the records in the file after the file it is given, and a random name would make
    two saves of one checkpoint differ (a bundle's weights.pt, hence its model id). On any failure (Ctrl-C included)
    the temporary is removed (``disk.discard_unfinished``) and the error raised as it came."""
    fd, tmp = create_temporary(path)
    try:
        with open(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())   # its bytes on the disk before the rename puts it in place
        os.replace(tmp, path)
    except BaseException:
        discard_unfinished(tmp, "checkpoint")
        raise


def _sync_placed(path: Path) -> None:
    """fsync the folder of ``path``, a checkpoint just renamed into place (``_fsync_folder``); a failure is logged
    as a warning, not raised: the checkpoint is written and in place, only its folder entry may not survive a
    power cut (and there is no temporary left to discard)."""
    try:
        _fsync_folder(path.parent)
    except OSError as exc:
        log.warning("checkpoint %s is written, but its folder %s could not be synced (%s): the checkpoint may not "
                    "survive a power cut until the system syncs it; check the disk if this repeats.",
                    path, path.parent, exc)


def _fsync_folder(folder: Path) -> None:
    """fsync ``folder`` (``disk.fsync``), so the rename just made in it survives a power cut (the file's name lives
    in its folder). A file system that cannot sync a folder (EINVAL, e.g. some network mounts; no folder handles on
    Windows) is skipped: the file itself is on the disk already."""
    try:
        fsync(folder)
    except OSError as exc:
        if exc.errno not in _UNSYNCABLE:
            raise


def _then_run(path: Path, exc: Exception, resume: str | None) -> str:
    """The fix of a failed write of ``path`` and what to run after it. A training run (``resume`` given) whose folder
    holds a last.pt (the last save, intact: the failed write never replaced it) is resumed with ``resume``: a plain
    run again is refused there (the folder holds a run), and another --out would not hold that last.pt, so only
    the disk's own fix is given. Otherwise (nothing saved yet, or no training run): fix, then run again."""
    last = path.parent / "last.pt"
    if resume is not None and last.is_file():
        return f"{write_failure(path.parent, exc, None)}, then resume with {resume} ({last}, the last save, is intact)"
    return f"{write_failure(path.parent, exc)}, then run again"


def _write_reason(exc: Exception) -> str:
    """A failed write in one line of at most 200 characters: the OSError's reason, or torch's error."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _model_spec(payload: dict) -> ModelSpec:
    """The model of a version-2 payload, or of a version-1 (FAIR, pre-family) one."""
    if payload["format_version"] == 1:
        legacy = {"width": payload["width"], "scoring": payload["scoring"]}
        payload = {**payload, "family": LEGACY_FAMILY, "family_version": 1, "settings": legacy}
    return ModelSpec.from_dict(payload)


_FIX = "Use an earlier checkpoint from the same folder or train again."
_FOREIGN_FIX = "Pass the final.pt (or last.pt) that `fair-edge train` wrote in its output folder, e.g. runs/NAME/final.pt."
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch.save's pre-zip format pickles this first
_HEAD_BYTES = 64


def _describe_head(head: bytes) -> str:
    """What a file that is no checkpoint looks like, from its first bytes: 'a text file starting 'step,epoch,...''
    or 'a binary file'."""
    for cut in range(4):  # the head may end inside a multi-byte UTF-8 character
        try:
            text = head[: len(head) - cut].decode("utf-8").removeprefix("\ufeff")
            break
        except UnicodeDecodeError:
            continue
    else:
        return "a binary file"
    if not all(c.isprintable() or c in "\t\r\n" for c in text):
        return "a binary file"
    first = text.strip().splitlines()[0] if text.strip() else text
    return f"a text file starting {first[:40]!r}"


def _check_container(path: Path) -> None:
    """CheckpointError unless ``path`` can be a ``torch.save`` file: empty files, files that are neither a zip
    (``torch.save``'s format) nor torch's legacy pre-zip format (a loss.csv, a YAML or an image picked by tab
    completion), and zips without the record ``torch.save`` writes. A zip file whose records fail their
    CRC-32 check (``_verify_crc``) is refused naming the record. A truncated zip is left to ``torch.load``."""
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was never completely written. {_FIX}")
    if zipfile.is_zipfile(path):
        _verify_crc(path)
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise CheckpointError(f"{path} is not a checkpoint written by fair-edge train (a zip file, but not "
                                      f"one torch.save wrote: it has no data.pkl record). {_FOREIGN_FIX}")
        return
    if head.startswith(b"PK\x03\x04") or _LEGACY_MAGIC in head[:32]:
        return  # a zip cut short (torch.load says so) or torch's legacy format (no CRCs to check)
    raise CheckpointError(f"{path} is not a checkpoint written by fair-edge train (not a torch.save zip file; "
                          f"found {_describe_head(head)}). {_FOREIGN_FIX}")


def _verify_crc(path: Path) -> None:
    """CheckpointError naming the first record of the zip container (``torch.save``'s format) whose CRC-32
    differs from the one recorded when it was written; a damaged zip directory raises BadZipFile."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its record {bad} fails the CRC-32 check (the file changed after it "
            f"was written: a disk or copy error). {_FIX}"
        )


def _load_reason(exc: Exception) -> str:
    """torch.load's error in a few words, without its advice to load with ``weights_only=False`` or to allowlist
    the refused object (either would run code the file holds: fair-edge never does). At most 200 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of its advice with terminal codes
    text = text.split("WeightsUnpickler error:", 1)[-1]  # what the weights-only unpickler refused
    kept = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line.lower()
            and "weights only" not in line.lower() and not line.strip().startswith("Check the documentation")]
    reason = re.split(r"\s+Please\b", " ".join(kept))[0]
    if len(reason) > 200:  # whole sentences where they fit
        reason = reason[:200][: reason[:200].rfind(". ") + 1] or reason[:200]
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _read_payload(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``; any failure is a CheckpointError naming the file."""
    try:
        _check_container(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except (PermissionError, IsADirectoryError) as exc:  # the file is fine, this user cannot read it
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror}. Check its permissions.") from exc
    except pickle.UnpicklingError as exc:  # weights_only refused an object: never retried with code execution
        raise CheckpointError(
            f"checkpoint {path} is corrupt or was not written by fair-edge train: it holds something other than "
            f"tensors and plain values ({_load_reason(exc)}), and fair-edge never loads code from a checkpoint. "
            f"{_FIX}"
        ) from exc
    except Exception as exc:  # torch.load raises many types for damaged files (RuntimeError, EOFError, KeyError...)
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_load_reason(exc)}). {_FIX}") from exc


def _folder_given(path: Path) -> str:
    """The refusal for a folder given as a checkpoint file: a bundle (bundle.json), a fused bundle (fusion.json),
    a training run (final.pt in it) or another folder, each with its fix."""
    if (path / "bundle.json").is_file() or (path / "fusion.json").is_file():
        word = shell_word(path)
        kind, use = (("a bundle", f"`fair-edge run --bundle {word}` or `fair-edge bench {word}`")
                     if (path / "bundle.json").is_file() else ("a fused bundle", f"`fair-edge run --bundle {word}`"))
        return (f"checkpoint {path} is {kind} folder, not a checkpoint file: this command reads the .pt file "
                "`fair-edge train` wrote (e.g. runs/NAME/final.pt), the one the bundle was built from. Give that "
                f"file; to run the bundle itself use {use}.")
    runs = sorted(p.name for p in path.glob("*.pt"))
    found = f"; it holds {', '.join(runs[:5])}: give one, e.g. {path / runs[0]}" if runs else (
        "; give the .pt file `fair-edge train DATA --out DIR` wrote (DIR/final.pt)")
    return f"checkpoint {path} is a folder, not a checkpoint file{found}."


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; raises CheckpointError naming the problem."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(_folder_given(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Train one with `fair-edge train DATA --out DIR`.")
    payload = _read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fair-edge checkpoint (no '{FORMAT}' marker).")
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this fair-edge ({fair_edge.__version__}) reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}. Use the fair-edge release that wrote it, or retrain."
        )
    weights = payload.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"checkpoint {path} has an invalid field: state_dict must map weight names to tensors, "
                              f"found {type(weights).__name__}. {_FIX}")
    try:
        return Checkpoint(
            model=_model_spec(payload),
            state_dict=weights,
            data_summary=payload.get("data_summary") or {},
            train_state=payload.get("train_state"),
            training_images=TrainingImages.from_payload(payload.get("training_images")),
        )
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path} is missing or has an invalid field: {exc}") from exc
