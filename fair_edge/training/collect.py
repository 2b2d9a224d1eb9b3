"""From the line back to training: keep the useful frames, skip the rest and count why.

A frame is skipped when it is
- *badly exposed*: mean gray level below ``dark_mean`` or above ``bright_mean``, or more than
  ``clipped_share`` of its pixels at 0..2 or 253..255;
- *blurred*: variance of the Laplacian of its gray image (scaled to at most 256 px) below
  ``blur_min`` (a sharp product photo gives hundreds; motion blur or a lost focus a few units);
- a *near-duplicate*: its 32 x 32 gray thumbnail differs from one of the last ``memory`` kept
  frames by less than ``duplicate_diff`` gray levels on average (a stopped belt repeats a part).

``fair-edge collect`` saves camera frames into a training folder; ``export_reviewed`` turns the
parts reviewed in the console into an MVTec-style folder: false rejects are normal parts the
model got wrong, the most useful images to train on (``train/good``); confirmed defects and
misses go to ``test/defect`` for evaluation. A reviewed part is a label a person gave: it is
exported whatever the quality checks would say of its image (a sharp cracked cell can have a low
Laplacian variance); only a missing or unreadable image keeps it out, and that is counted. Exporting again
into the same folder after a label changed moves the part: each reviewed part is in the folder of its
newest label only (``remove_contradicting_exports``), never a confirmed defect left among the normals. What an
operator labelled is not lost by exporting again: an earlier copy in the newest label's folder is replaced only
by a new copy written in full, and kept (and counted as kept) when the part's image is gone or unreadable now.
A row of reviews.jsonl becomes file names (RUN_CAMERA_SEQ.png) and a path read (its image), so only rows as the
console writes them are exported (``review_problem``: a run id, a camera name, a part number, an image inside the
station's output folder); any other row (written by hand or by someone else, ``../`` in a field) is refused, nothing
done for it, and named in the export's summary and log, and no file outside the dataset folder is ever written or
removed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from fair_edge.errors import DataError
from fair_edge.training.collect_leftovers import PART_STALE_S, PART_SUFFIX, remove_empty_pngs, remove_stale_parts
from fair_edge.images import encode_image, gray_2d, read_stored, write_png
from fair_edge.station.views import NAME as CAMERA_NAME   # a camera name a station file may give

log = logging.getLogger(__name__)

SKIP_REASONS = ("badly_exposed", "blurred", "duplicate", "unreadable")
# review label -> folder of the exported dataset
REVIEW_FOLDERS = {"false_reject": "train/good", "defect": "test/defect", "miss": "test/defect"}
# the run ids the station writes in reviews.jsonl (``records.new_run_id``: 20261129T134000Z-3f2a; a console without
# a recorder names its run by its start second alone, ``console.feed.StationFeed``): the runs a review row may name
RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z(?:-[0-9a-f]{4})?")
SHOWN_CHARS = 80   # of a refused row's field, in a message
REFUSED_NAMED = 10   # rows refused that an export's summary names one by one (the rest: counted)


@dataclass(frozen=True)
class QualitySettings:
    """Limits of ``frame_problem`` (gray levels 0..255; see the module docstring)."""

    dark_mean: float = 25.0
    bright_mean: float = 230.0
    clipped_share: float = 0.25
    blur_min: float = 15.0
    duplicate_diff: float = 2.0
    memory: int = 50


def _gray(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 gray of an (H, W, 3) BGR, (H, W, 1) or (H, W) uint8 frame."""
    image = gray_2d(image)
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _is_gray_or_bgr(image: np.ndarray) -> bool:
    """True for the frames ``frame_problem`` reads: (H, W), (H, W, 1) or (H, W, 3); a 2- or 4-channel frame (a
    camera's raw packed format, BGRA) is not one."""
    return image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))


def frame_problem(image: np.ndarray, q: QualitySettings) -> str:
    """"" for a usable frame, else "badly_exposed" or "blurred". image: (H, W, 3) BGR, or (H, W) / (H, W, 1) gray
    uint8."""
    gray = _gray(image)
    mean = float(gray.mean())
    clipped = float(((gray <= 2) | (gray >= 253)).mean())
    if mean < q.dark_mean or mean > q.bright_mean or clipped > q.clipped_share:
        return "badly_exposed"
    scale = min(1.0, 256.0 / max(gray.shape))
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    if float(cv2.Laplacian(small, cv2.CV_64F).var()) < q.blur_min:
        return "blurred"
    return ""


NAME_TRIES = 1000  # names tried for one new frame (STEM.png, STEM-2.png, ...) before a DataError
# errno of os.link on a file system without hard links (FAT / exFAT USB sticks: EPERM; some shares: ENOTSUP)
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _create_empty(path: Path) -> None:
    """Create ``path`` as an empty file, FileExistsError when it exists (O_EXCL: never opens an existing one)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def reserve_new_png(folder: Path, stem: str, tries: int = NAME_TRIES,
                    take: Callable[[Path], None] = _create_empty) -> Path:
    """The first name of ``folder`` that ``take(path)`` claims without replacing a file: ``STEM.png``, or when that
    exists ``STEM-2.png``, ``STEM-3.png``, ... ``take`` raises FileExistsError when the name is taken and makes the
    file otherwise, in one step no other writer can come between (a second collect into the same folder, started in
    the same second or after the clock stepped back); by default an empty file (O_EXCL), ``write_new_png`` links
    its finished PNG there. An existing file is never opened or replaced. Raises DataError naming the folder when
    it cannot be written or ``tries`` names are all taken."""
    for n in range(1, tries + 1):
        path = folder / (f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        try:
            take(path)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise DataError(f"could not create {path} ({exc.strerror or exc}); expected a folder this user can "
                            "write, with free space") from None
    raise DataError(f"could not save a frame as {folder / stem}.png: it and {tries - 1} next names "
                    f"({stem}-2.png ... {stem}-{tries}.png) are taken; expected a new name free; collect into a new "
                    "folder")


def write_part(folder: Path, stem: str, data: bytes) -> Path:
    """``data`` written in full to a new hidden file ``.STEM.XXXXXXXXXXXXXXXX.part`` of ``folder`` (``PART_SUFFIX``:
    a name no image listing takes; random hex, created with O_EXCL, mode 0o666 less the umask as for any file
    written); returns its path. Raises DataError naming the file (removed) when it cannot be written."""
    part = folder / f".{stem}.{secrets.token_hex(8)}{PART_SUFFIX}"
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise DataError(f"could not create {part} ({exc.strerror or exc}); expected a folder this user can write, "
                        "with free space") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except BaseException as exc:
        _remove_part(part)
        if isinstance(exc, OSError):
            raise DataError(f"could not write {part} ({exc.strerror or exc}); expected a folder with free "
                            "space") from None
        raise
    return part


def _remove_part(part: Path) -> None:
    """Remove the part file ``part`` if it is there; a failure is logged (a hidden part file harms no listing)."""
    try:
        part.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the part file %s (%s); it is hidden and no image, delete it by hand", part,
                    exc.strerror or exc)


def _link_or_move(part: Path, path: Path) -> None:
    """Give the finished file ``part`` the new name ``path``: a hard link (FileExistsError when ``path`` exists;
    the whole file appears at once). Where the file system has no hard links (``NO_HARD_LINKS``), ``path`` is
    created empty (O_EXCL) and ``part`` renamed over it: a crash between the two leaves that empty file."""
    try:
        os.link(part, path)
    except OSError as exc:   # FileExistsError (EEXIST) included: the name is taken
        if exc.errno not in NO_HARD_LINKS:
            raise
        _create_empty(path)
        try:
            os.replace(part, path)
        except BaseException:
            path.unlink(missing_ok=True)   # the empty file created just above, never another writer's
            raise


def write_new_png(folder: Path, stem: str, image: np.ndarray) -> Path:
    """Write ``image`` ((H, W, 3) or (H, W) uint8) as a new PNG in ``folder`` under the first free name
    (``reserve_new_png``: never over an existing file) and returns its path. Written whole to a hidden part file
    first (``write_part``), then linked to its name (``_link_or_move``), so the PNG appears complete or not at all:
    a crash leaves no empty or partial ``.png``, at most the hidden part file, which no image listing takes. The
    part file is removed, also on any error. Raises DataError when it cannot be encoded or written."""
    part = write_part(folder, stem, encode_image(image, ".png"))
    try:
        return reserve_new_png(folder, stem, take=lambda path: _link_or_move(part, path))
    finally:
        _remove_part(part)


class Collector:
    """Writes kept frames as PNG into ``folder`` and counts every decision (``counts``).

    Each kept frame is a new file ``PREFIX + NAME.png`` (``write_new_png``): one already there, from an earlier
    or a concurrent collect into the same folder, is never replaced; the frame takes the next free name
    (``PREFIX + NAME-2.png``). At the start it removes what an earlier collect killed while saving left in ``folder``
    (``collect_leftovers``, by ``clock``: s since the epoch): its part files, counted in ``parts_removed``, and its
    empty reserved PNGs, listed in ``empty_pngs_removed``; a warning names both. ``replace=True``
    (``export_reviewed``, where one name is one reviewed part) writes over a file of the same name instead, whole
    (``images.write_png``), and leaves such files alone."""

    def __init__(self, folder: Path, quality: QualitySettings = QualitySettings(), prefix: str = "",
                 replace: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.folder, self.quality, self.prefix, self.replace = Path(folder), quality, prefix, replace
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"could not create the output folder {self.folder} ({exc.strerror or exc}); expected a "
                            "folder this user can write, or a path where one can be created") from None
        self.parts_removed, self.empty_pngs_removed = (0, []) if replace else self._remove_leftovers(clock)
        self.counts: Counter[str] = Counter({k: 0 for k in ("saved", *SKIP_REASONS)})
        self._thumbs: deque[np.ndarray] = deque(maxlen=quality.memory)

    def _remove_leftovers(self, clock: Callable[[], float]) -> tuple[int, list[Path]]:
        """(part files removed, empty PNGs removed) of what a killed collect left in the folder, each said in a
        warning."""
        parts, empty = remove_stale_parts(self.folder, clock), remove_empty_pngs(self.folder, clock)
        if parts:
            log.warning("%s: removed %d part file(s) (.NAME.XXXXXXXXXXXXXXXX.part, unchanged for over %g s) that a "
                        "collect killed while saving frames had left", self.folder, parts, PART_STALE_S)
        if empty:
            shown = ", ".join(p.name for p in empty[:5]) + (", ..." if len(empty) > 5 else "")
            log.warning("%s: removed %d empty PNG(s) (%s; unchanged for over %g s), names a collect killed while "
                        "saving frames had reserved: no image, and train would have met them as unreadable",
                        self.folder, len(empty), shown, PART_STALE_S)
        return parts, empty

    def add(self, image: np.ndarray | None, name: str, checked: bool = True) -> str:
        """Keep or skip one frame; returns "saved" or the reason it was skipped.
        checked: False keeps any readable image (a reviewed part: a person labelled it)."""
        if image is None or image.dtype != np.uint8 or not _is_gray_or_bgr(image):
            return self._count("unreadable")
        problem = frame_problem(image, self.quality) if checked else ""
        if problem:
            return self._count(problem)
        thumb = cv2.resize(_gray(image), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        if checked and any(float(np.abs(thumb - t).mean()) < self.quality.duplicate_diff for t in self._thumbs):
            return self._count("duplicate")
        if self.replace:
            write_png(self.folder / f"{self.prefix}{name}.png", image)
        else:
            write_new_png(self.folder, f"{self.prefix}{name}", image)
        self._thumbs.append(thumb)
        return self._count("saved")

    def _count(self, what: str) -> str:
        self.counts[what] += 1
        return what


def latest_reviews(entries: list[dict]) -> dict[tuple[str, str, int], dict]:
    """The newest review of each view, keyed by (run, camera, seq) (camera "" with one camera: each camera of
    several numbers its own frames). ``entries``: rows ``review_problem`` passed."""
    out: dict[tuple[str, str, int], dict] = {}
    for e in entries:
        out[(e["run"], e.get("camera") or "", e["seq"])] = e
    return out


def review_problem(entry: dict, station_output: Path) -> str:
    """Why a row of ``reviews.jsonl`` is not one the console writes, so an export must not act on it; "" for one it
    does. Its fields become file names and paths (``export_name``: RUN_CAMERA_SEQ.png under the dataset folder; the
    image read), so a row written by hand or by someone else with ``../`` or ``/`` in them would write or delete
    files anywhere: ``run`` a run id the station writes (``RUN_ID``), ``camera`` absent or a camera name a station
    file may give (``CAMERA_NAME``), ``seq`` a whole number >= 0, ``label`` text, ``image`` absent or a path that
    stays inside ``station_output`` (the console's ``review/RUN_SEQ_LABEL.png``), links followed."""
    run, camera, seq, label = (entry.get(k) for k in ("run", "camera", "seq", "label"))
    if not isinstance(run, str) or not RUN_ID.fullmatch(run):
        return f"run {_shown(run)} is not a run id the station writes (e.g. 20261129T134000Z-3f2a)"
    if camera not in (None, "") and not (isinstance(camera, str) and CAMERA_NAME.fullmatch(camera)):
        return f"camera {_shown(camera)} is not a camera name (1-32 letters, digits, '_' or '-')"
    if type(seq) is not int or seq < 0:
        return f"seq {_shown(seq)} is not a part number (a whole number >= 0)"
    if not isinstance(label, str):
        return f"label {_shown(label)} is not a review label (text: {', '.join(REVIEW_FOLDERS)})"
    return image_problem(entry.get("image"), station_output)


def image_problem(image: object, station_output: Path) -> str:
    """Why a review row's ``image`` is no image of the station's output folder: "" when absent (no image to export)
    or a relative path that stays inside ``station_output`` once ``..`` and links are resolved."""
    if image is None or image == "":
        return ""
    if not isinstance(image, str) or "\0" in image:
        return f"image {_shown(image)} is not a path"
    root = Path(station_output).resolve()
    try:
        inside = (root / image).resolve().is_relative_to(root)
    except (OSError, RuntimeError, ValueError):   # a link loop, a name the OS refuses
        inside = False
    return "" if inside else f"image {_shown(image)} is not inside the station's output folder {root}"


def _shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with "..." (a field of a row written by hand may be
    megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def accepted_reviews(entries: list[dict], station_output: Path) -> tuple[list[dict], list[str]]:
    """(the rows of ``reviews.jsonl`` an export acts on, one line per row refused: ``row N (who W, label L): why``,
    N counting the file's whole rows from 1; ``review_problem``). A refused row is never acted on, and each is
    named: an operator's label is never left out without a word."""
    accepted, refused = [], []
    for number, entry in enumerate(entries, 1):
        problem = review_problem(entry, station_output)
        if problem:
            who, label = _shown(entry.get("who")), _shown(entry.get("label"))
            refused.append(f"row {number} (who {who}, label {label}): {problem}")
        else:
            accepted.append(entry)
    return accepted, refused


def refused_summary(refused: list[str], named: int = REFUSED_NAMED) -> str:
    """The rows an export refused (``accepted_reviews``' lines) in words: how many, and the first ``named`` of them
    (a file flooded with rows would make a message of megabytes), e.g. "1 review row of reviews.jsonl refused (not
    as the console writes it; nothing done for it): row 3 (who 'x', label 'defect'): run '../x' is not ..."."""
    shown = "; ".join(refused[:named]) + (f"; and {len(refused) - named} more" if len(refused) > named else "")
    return (f"{_n(len(refused), 'review row', 'review rows')} of reviews.jsonl refused (not as the console writes "
            f"{'it' if len(refused) == 1 else 'them'}; nothing done for {'it' if len(refused) == 1 else 'them'}): "
            f"{shown}")


def inside_dest(dest: Path, path: Path) -> Path:
    """``path``, a file an export writes or removes, when it stays inside the dataset folder ``dest`` once ``..``
    and links are resolved; else DataError naming both (a link placed in ``dest``: remove it)."""
    root = Path(dest).resolve()
    try:
        inside = Path(path).resolve().is_relative_to(root)
    except (OSError, RuntimeError, ValueError):
        inside = False
    if not inside:
        raise DataError(f"{path}: expected a file inside the dataset folder {root}, found a path leading out of it "
                        "(a link?); remove the link or export into a new folder")
    return path


def export_reviewed(station_output: Path, dest: Path) -> dict:
    """Copy the image of every reviewed part (``STATION_OUTPUT/reviews.jsonl``) into ``dest`` (MVTec
    layout, see REVIEW_FOLDERS); no quality or duplicate check (a review is a label a person gave).
    Exporting again into the same ``dest``: a new copy replaces the one in the newest label's folder only once
    written in full; when the image is gone or unreadable now the earlier copy there is kept; a copy in a
    folder the newest label contradicts is removed (``remove_contradicting_exports``), so each part is in the
    folder of its newest label only.
    Returns {"dest", "no_image": reviewed parts whose image is gone, "kept": parts without a new copy (image
    gone or unreadable) whose earlier copy in their label's folder was kept, "moved": parts whose copy in another
    folder was removed and that are in their label's folder now, "removed": parts whose copy in another folder
    was removed and that have no copy in their label's folder (no image to export), FOLDER: {"saved",
    "unreadable"}, "refused": one line per row of reviews.jsonl the station would not have written, nothing done for
    it (``accepted_reviews``: a run, camera or image naming a path, e.g. ``../``), "summary": the counts in words, and
    the rows refused}. Every file written or removed is checked to stay inside ``dest`` (``inside_dest``)."""
    from fair_edge.console.journal import REVIEWS, Journal

    station_output, dest = Path(station_output), Path(dest)
    rows, refused = accepted_reviews(Journal(station_output / REVIEWS).read(), station_output)
    if refused:
        log.warning("%s: %s", station_output / REVIEWS, refused_summary(refused))
    reviews = latest_reviews(rows)
    if not reviews:
        raise DataError(f"{station_output / REVIEWS} holds no reviews"
                        + (f" the station wrote ({refused_summary(refused)})" if refused else "")
                        + "; review parts in the console first")
    collectors = {folder: Collector(inside_dest(dest, dest / folder), replace=True)
                  for folder in sorted(set(REVIEW_FOLDERS.values()))}
    tally: Counter[str] = Counter({k: 0 for k in ("no_image", "kept", "moved", "removed")})
    for key, entry in sorted(reviews.items()):
        tally.update(export_part(station_output, dest, key, entry, collectors))
    counts = {k: {"saved": c.counts["saved"], "unreadable": c.counts["unreadable"]} for k, c in collectors.items()}
    summary = reviewed_summary(counts, tally["no_image"], tally["moved"], tally["kept"], tally["removed"])
    if refused:
        summary += f"; {refused_summary(refused)}"
    return {"dest": str(dest), **tally, **counts, "refused": refused, "summary": summary}


def export_part(station_output: Path, dest: Path, key: tuple[str, str, int], entry: dict,
                collectors: dict[str, Collector]) -> list[str]:
    """Export one reviewed part (``key`` = (run, camera, seq), ``entry`` its newest review) into its label's folder
    of ``dest``, then remove its copies from the other folders. Returns what happened beyond a plain save, each of
    "no_image", "kept", "moved", "removed" at most once (see ``export_reviewed``)."""
    name = export_name(*key)
    folder = REVIEW_FOLDERS.get(entry["label"])
    events: list[str] = []
    in_place = False
    if folder is not None:
        copy = inside_dest(dest, dest / folder / f"{name}.png")
        image_path = station_output / entry["image"] if entry.get("image") else None
        written = False
        if image_path is None or not image_path.is_file():
            events.append("no_image")
        else:
            written = collectors[folder].add(read_stored(image_path, "reviewed image"), name, checked=False) == "saved"
        if not written and copy.is_file():
            events.append("kept")
        in_place = written or "kept" in events
    if remove_contradicting_exports(name, folder, dest):
        events.append("moved" if in_place else "removed")
    return events


def export_name(run: str, camera: str, seq: int) -> str:
    """The file stem of a reviewed part in an export (camera left out with one camera)."""
    return f"{run}_{camera}_{seq:08d}" if camera else f"{run}_{seq:08d}"


def remove_contradicting_exports(name: str, folder: str | None, dest: Path) -> list[str]:
    """Delete the earlier exports ``NAME.png`` of one reviewed part from those of ``dest``'s label folders
    (REVIEW_FOLDERS) that are not ``folder``, its newest label's (None: a label without a folder, every copy goes),
    so that a review changed from false_reject to defect does not leave the part among the training normals.
    The copy in ``folder`` itself is left to ``export_part``. Returns the folders a copy was removed from."""
    removed = []
    for other in sorted(set(REVIEW_FOLDERS.values()) - {folder}):
        path = Path(dest) / other / f"{name}.png"
        if path.is_file() and inside_dest(dest, path):
            path.unlink()
            removed.append(other)
    return removed


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def reviewed_summary(counts: dict[str, dict[str, int]], no_image: int, moved: int = 0, kept: int = 0,
                     removed: int = 0) -> str:
    """``export_reviewed``'s counts in words, e.g. '1 false reject to train/good, 3 defects and misses
    to test/defect; 1 reviewed part without an image, 1 earlier export kept (no new image to replace it),
    1 reviewed part moved (its label changed since an earlier export)'."""
    kinds = {"train/good": ("false reject", "false rejects"), "test/defect": ("defect or miss", "defects and misses")}
    parts = [f"{_n(c['saved'], *kinds.get(folder, ('part', 'parts')))} to {folder}" for folder, c in counts.items()]
    text = ", ".join(parts)
    unreadable = sum(c["unreadable"] for c in counts.values())
    extra = [_n(n, f"reviewed part {why}", f"reviewed parts {why}")
             for n, why in ((no_image, "without an image"), (unreadable, "with an unreadable image")) if n]
    if kept:
        extra.append(_n(kept, "earlier export kept (no new image to replace it)",
                        "earlier exports kept (no new image to replace them)"))
    extra += [_n(n, f"reviewed part {why}", f"reviewed parts {why}")
              for n, why in ((moved, "moved (its label changed since an earlier export)"),
                             (removed, "removed from an earlier label's folder (no image to export under the new "
                                       "label)")) if n]
    return text + ("; " + ", ".join(extra) if extra else "")


def collect_from_source(source, collector: Collector, max_saved: int | None = None, every: int = 1,
                        max_read: int | None = None, stop=None) -> int:
    """Read an opened frame source (``fair_edge.cameras.open_source``) into ``collector``: every
    ``every``-th frame is considered, until the source ends, ``max_saved`` frames are kept,
    ``max_read`` frames were read, or ``stop`` (a threading.Event) is set. Returns frames read."""
    from fair_edge.cameras import EndOfStream, FrameMissed

    read = 0
    while (stop is None or not stop.is_set()) and (max_read is None or read < max_read):
        if max_saved is not None and collector.counts["saved"] >= max_saved:
            break
        try:
            frame = source.read()
        except EndOfStream:
            break
        except FrameMissed:
            continue
        read += 1
        if (read - 1) % every == 0:
            collector.add(frame.image, f"{frame.seq:08d}")
    return read
