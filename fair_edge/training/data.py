"""Datasets: MVTec AD layout, VisA split CSV, a plain folder of normal images, and the ELPV demo set.

Every loader returns a ``DatasetSplit`` of ``Sample`` records (paths and labels only); pixels are
read by ``read_image`` / ``read_mask`` when needed, so a bad file is reported by name and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from fair_edge.errors import ConfigError, DataError, did_you_mean
from fair_edge.image_folders import (LEFT_OUT_FIX, NAMED_AT_MOST, SCANNED_AT_MOST, image_files, is_dataset_folder,
                                     is_hidden_name, left_out_images, left_out_text, named_text)
from fair_edge.image_folders import unread_text as _unread_text  # the folder replay's too; wrapped below
from fair_edge.image_size import stored_size
from fair_edge.images import read_image as read_image_unchecked  # the check asked for below
from fair_edge.images import read_mask_pixels
from fair_edge.preprocess import IMAGE_SUFFIXES, check_frame
from fair_edge.tiling import tile_layout

log = logging.getLogger(__name__)

GOOD_NAMES = ("good", "normal", "ok")  # names of normal images, compared lower-cased: MVTec test/ folders, VisA labels
VISA_GOOD_LABELS = (*GOOD_NAMES, "0")  # a VisA CSV label that means normal (lower-cased); any other label is a defect
COPIES_HASHED_BYTES = 2**30  # bytes hashed at most looking for byte-identical images among one role's files (1 GiB)


def is_good_name(name: str) -> bool:
    """True when a test folder name or a CSV label means normal: one of GOOD_NAMES in any case ("OK", "Good")."""
    return name.strip().lower() in GOOD_NAMES


@dataclass(frozen=True)
class Sample:
    """One image. label: 0 normal, 1 defective. mask: path of its ground-truth mask, if any."""

    path: Path
    label: int = 0
    defect_type: str = "good"
    mask: Path | None = None


@dataclass
class DatasetSplit:
    """Training (normal only) and test samples of one product. layout: what it was read as, "mvtec", "visa",
    "elpv" or "folder" (a plain folder of normal images: training only); "" when made otherwise (tune's split)."""

    name: str
    train: list[Sample]
    test: list[Sample] = field(default_factory=list)
    layout: str = ""

    @property
    def has_masks(self) -> bool:
        """True when every defective test image has a mask (pixel metrics on all of them)."""
        defects = [s for s in self.test if s.label == 1]
        return bool(defects) and all(s.mask is not None for s in defects)

    @property
    def has_any_masks(self) -> bool:
        """True when at least one defective test image has a mask (pixel metrics on those that have one)."""
        return any(s.mask is not None for s in self.test if s.label == 1)

    @property
    def missing_masks(self) -> list[Sample]:
        """The defective test images without a ground-truth mask."""
        return [s for s in self.test if s.label == 1 and s.mask is None]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "train_images": len(self.train),
            "test_normal": sum(1 for s in self.test if s.label == 0),
            "test_defective": sum(1 for s in self.test if s.label == 1),
            "has_masks": self.has_masks,
        }


# ----------------------------------------------------------------------------- pixels
def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 BGR, as ``images.read_image`` gives it, and a DataError naming it when it
    is a damaged JPEG (``images.decode_file``'s ``check_damage``): the reader of train, eval, tune, build's and
    fuse's calibration and rules check, which must not learn or judge garbage pixels. The station's readers (folder
    replay, console) read without the check (it points the process's stderr at a file while a JPEG decodes)."""
    return read_image_unchecked(path, check_damage=True)


def read_mask(path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask as (H, W) bool, checking it matches the image's (H, W).

    A pixel is a defect pixel when its stored value is nonzero (the MVTec rule), at the file's own bit depth: a
    16-bit mask holding 0 / 1 or 0 / 255 (a uint16 label array saved as PNG) is read at 16 bits, not cut to its
    high byte (which made it all normal). A colour mask is reduced to its luminance (0.299 R + 0.587 G + 0.114 B,
    rounded, at its depth) first, so a defect pixel is one whose luminance is nonzero, as before. A transparent
    pixel (alpha 0, an RGBA or grey + alpha mask) is never a defect pixel, whatever colour it holds.
    As ``read_image``, an orientation tag (EXIF or TIFF) is ignored, so the mask lies on the pixels its image has
    (``images.read_mask_pixels``, the reader of the station's ROI and zone masks too).
    A mask with no defect pixel at all is read as it is and logged as a warning naming it (its defective image
    then adds no defect pixel or region to the pixel metrics).
    Raises DataError naming the mask when it is missing, empty, unreadable or too large (``images.decode_file``)."""
    if not Path(path).is_file():
        raise DataError(f"mask {path} is missing or unreadable.")
    defect = read_mask_pixels(path, "mask")
    if defect.shape != tuple(image_shape):
        raise DataError(
            f"mask {path} is {defect.shape[1]}x{defect.shape[0]} but its image is {image_shape[1]}x{image_shape[0]}; "
            "masks must have the image's size."
        )
    if not defect.any():
        _warn_empty_mask(path)
    return defect


def _warn_empty_mask(path: Path) -> None:
    """Log that the ground-truth mask ``path`` marks no defect pixel, and what to do about it."""
    log.warning("ground-truth mask %s marks no defect pixel (every pixel reads as 0); its defective image adds no "
                "defect pixel or region to the pixel metrics. Draw the defect in it (any nonzero value marks a defect "
                "pixel), or remove the mask (VisA: clear its mask column) to list the image as missing its mask.",
                path)


def read_frame(path: str | Path, tiling=None) -> np.ndarray:
    """``read_image``, then the checks a model input needs: at least 2 x 2 pixels and, for a tiled model
    (``tiling``: a ``fair_edge.tiling.TilingConfig``), room for one tile (in its region of interest).

    Raises DataError naming the file, its size and the fix, so train and eval skip it as an unreadable file.
    """
    image = read_image(path)
    try:
        check_frame(image)
        if tiling is not None:
            tile_layout(tuple(image.shape[:2]), tiling, tiling.tile)
    except ConfigError as exc:
        h, w = image.shape[:2]
        raise DataError(f"{path} ({w} x {h} px) cannot be a model input: {exc} Remove the file from the dataset "
                        "or replace it with a full-size image of the part.") from exc
    return image


_Item = TypeVar("_Item", Sample, Path)   # what read_frames is given, and gives back with each frame


def read_frames(items: Sequence[_Item], tiling=None, *, what: str = "images",
                progress: Callable[[], None] | None = None) -> Iterator[tuple[_Item, np.ndarray]]:
    """(item, frame) for each of ``items`` (``Sample`` records or image paths) whose file ``read_frame`` reads,
    in order, frame (H, W, 3) uint8 BGR; the others (unreadable, truncated, under 2 x 2 px, or too small for one
    tile of ``tiling``, a ``fair_edge.tiling.TilingConfig`` or None) are skipped with a warning naming each, and
    a count once all were read. The one skip rule of every command that reads a list of images (training, build,
    fuse, rules check): a frame is read only as it is asked for, so a replay holds one at a time.

    progress: called once per item, read or skipped. what: the images' role for the refusal ("--normal images").
    Raises DataError naming the first file and its problem when none could be read."""
    skipped, read, first_problem = 0, 0, ""
    for item in items:
        try:
            frame = read_frame(_path_of(item), tiling)
        except DataError as exc:
            skipped += 1
            first_problem = first_problem or str(exc)
            log.warning("skipping %s", exc)
        else:
            read += 1
            yield item, frame
        if progress is not None:
            progress()
    if skipped:
        log.warning("skipped %d unreadable or undersized image(s) of %d", skipped, len(items))
    if not read:
        raise DataError(f"none of the {len(items)} {what} could be read (first: {_path_of(items[0]) if items else '-'}"
                        f"{f'; {first_problem}' if first_problem else ''}).")


def _path_of(item: Sample | Path) -> Path:
    return item.path if isinstance(item, Sample) else Path(item)


def list_images(folder: str | Path, hint: str = "") -> list[Path]:
    """Sorted image files directly inside ``folder`` (``folder_images``: hidden files, such as a macOS
    AppleDouble ``._NAME.png`` beside each image, are not images; image files of another format, subfolders holding
    images and broken links are left out with a warning). Raises DataError if missing or empty: "FOLDER holds no
    images", naming the subfolders and broken links it left out (``unread_text``), then ``hint`` (a sentence)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist.")
    files = folder_images(folder)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}){unread_text(folder)}.{hint}")
    return files


def folder_images(folder: Path) -> list[Path]:
    """The images of ``folder`` that a command reads (``image_folders.image_files`` with ``IMAGE_SUFFIXES``), sorted
    by name. Image files it leaves out for their suffix (``image_folders.left_out_images``: a ``.pgm``, a ``.gif``)
    are logged once, as a warning counting them and naming the first few; other files (a ``README.txt``) are not.
    When it holds images, the subfolders holding images and the broken links it leaves out (``unread_text``) are
    logged once, as one warning; when it holds none, its caller's refusal names them. Raises OSError when the
    folder cannot be read."""
    files = image_files(folder, IMAGE_SUFFIXES)
    left_out = left_out_images(folder, IMAGE_SUFFIXES)
    if left_out:
        _warn_left_out(folder, left_out)
    unread = unread_text(folder) if files else ""
    if unread:
        log.warning("%s: %d image(s) read%s.", folder, len(files), unread)
    return files


def _warn_left_out(folder: Path, left_out: list[Path]) -> None:
    """Log the image files of ``folder`` that are not read for their suffix: a count and the first names."""
    log.warning("%s: %s. %s.", folder, left_out_text(left_out, IMAGE_SUFFIXES),
                LEFT_OUT_FIX[0].upper() + LEFT_OUT_FIX[1:])


def unread_text(folder: Path) -> str:
    """What a listing of ``folder`` leaves out that may be images, for a message: "; not read: lot2/ (25 images):
    ... flatten them ... or pass the subfolder; 3 broken link(s): img1.png -> /mnt/nas/img1.png ...". "" when there
    is nothing of the kind (or the folder cannot be read). ``fair_edge.image_folders.unread_text`` with
    ``IMAGE_SUFFIXES`` and this module's SCANNED_AT_MOST (entries one subfolder's image count visits)."""
    return _unread_text(folder, IMAGE_SUFFIXES, SCANNED_AT_MOST)


# ----------------------------------------------------------------------------- layouts
def _mvtec(root: Path, need_train: bool = True) -> DatasetSplit:
    """need_train False (eval): train/good may be missing or empty (the split then has no training images).
    test/: one folder per type (``mvtec_test_types``: hidden, NAS and empty folders are skipped)."""
    good = root / "train" / "good"
    if need_train or (good.is_dir() and image_files(good, IMAGE_SUFFIXES)):
        train = [Sample(p) for p in list_images(good)]
    else:
        train = []
    test: list[Sample] = []
    for type_dir, files in mvtec_test_types(root / "test"):
        if is_good_name(type_dir.name):
            test.extend(Sample(p) for p in files)
            continue
        masks = mask_files(root / "ground_truth" / type_dir.name)
        test.extend(Sample(p, 1, type_dir.name, mask_of(p, masks)) for p in files)
    return DatasetSplit(root.name, train, test, "mvtec")


def mask_files(folder: Path) -> dict[str, list[Path]]:
    """The files directly inside an MVTec ``ground_truth/<type>`` folder by lower-cased name (hidden ones left
    out), each name's files sorted; {} when the folder is missing or cannot be read (its images then have no mask,
    as before)."""
    found: dict[str, list[Path]] = {}
    try:
        files = sorted(p for p in folder.iterdir() if not is_hidden_name(p.name) and p.is_file())
    except OSError:
        return {}
    for p in files:
        found.setdefault(p.name.lower(), []).append(p)
    return found


def mask_of(image: Path, masks: dict[str, list[Path]]) -> Path | None:
    """The ground-truth mask of the test image ``image`` among ``masks`` (``mask_files``): ``<stem>_mask.png``,
    its name compared case-insensitively (``000.PNG`` -> ``000_mask.PNG`` or ``000_mask.png``), as the image's
    suffix is; of names equal but for case the exact one, else the first sorted. None when there is none."""
    name = f"{image.stem}_mask.png"
    found = masks.get(name.lower(), [])
    exact = [p for p in found if p.name == name]
    return (exact or found or [None])[0]


def mvtec_test_types(test_dir: Path) -> list[tuple[Path, list[Path]]]:
    """(folder, its image files) for each type folder of an MVTec ``test/`` folder (good, crack, ...), sorted by
    name. Hidden and NAS folders are left out (``is_dataset_folder``); a folder that holds no image (a stray
    ``test/scratch``) is skipped with a warning naming it, so it stops neither training (which never reads test/)
    nor eval (which reports on the other types). [] when ``test_dir`` is not a folder."""
    if not test_dir.is_dir():
        return []
    types = []
    for folder in sorted(d for d in test_dir.iterdir() if d.is_dir() and is_dataset_folder(d.name)):
        files = folder_images(folder)
        if files:
            types.append((folder, files))
        else:
            log.warning("skipping the test folder %s: it holds no images (%s)%s; put that type's test images "
                        "there, or remove the folder", folder, ", ".join(IMAGE_SUFFIXES), unread_text(folder))
    return types


def _visa_rows(csv_path: Path) -> tuple[list[str], list[dict]]:
    """The header and rows of a VisA split CSV, read as UTF-8 (a leading byte-order mark, as Excel's "CSV UTF-8"
    writes, is dropped). Raises DataError naming the file, the first byte that is not UTF-8 and the fix."""
    raw = csv_path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} "
                        "cannot be decoded (a Latin-1 or Windows code-page file?). Save the CSV as UTF-8 "
                        "(Excel: \"CSV UTF-8\").") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _visa(csv_path: Path, category: str | None, need_train: bool = True) -> DatasetSplit:
    columns, rows = _visa_rows(csv_path)
    needed = {"object", "split", "label", "image"}
    if not rows or not needed <= set(columns):
        found = ", ".join(repr(c) for c in columns) or "none"
        raise DataError(f"{csv_path}: expected a VisA split CSV with columns {sorted(needed)} (+ mask) and at least "
                        f"one row; found columns {found} and {len(rows)} row(s).")
    objects = sorted({r["object"] for r in rows})
    if category is None and len(objects) > 1:
        raise DataError(f"{csv_path} holds {len(objects)} products ({', '.join(objects)}); pick one with --category.")
    category = category or objects[0]
    if category not in objects:
        raise DataError(f"category {category!r} is not in {csv_path}; it has {', '.join(objects)}.")
    base = _visa_base(csv_path, category, [r["image"] for r in rows if r["object"] == category and r["image"]])
    train, test, bad_train = [], [], []
    for line, r in enumerate(rows, start=2):  # line 1 is the header
        if r["object"] != category:
            continue
        bad = (r["label"] or "").strip().lower() not in VISA_GOOD_LABELS
        mask = base / r["mask"] if bad and r.get("mask") else None
        sample = Sample(base / r["image"], int(bad), "anomaly" if bad else "good", mask)
        is_train = (r["split"] or "").strip().lower() == "train"
        if is_train and bad:
            bad_train.append(f"line {line} ({r['image']}, label {r['label']!r})")
        (train if is_train else test).append(sample)
    if bad_train:
        raise DataError(_visa_bad_train_message(csv_path, bad_train))
    if not train and need_train:
        raise DataError(f"{csv_path}: category {category!r} has no 'train' rows.")
    return DatasetSplit(category, train, test, "visa")


def _visa_base(csv_path: Path, category: str, images: list[str]) -> Path:
    """The folder a VisA CSV's image paths are relative to: the CSV's own folder or the one above it (VisA keeps
    ``split_csv/`` beside the category folders), whichever more of ``images`` (category ``category``'s image
    column, as written) exist under; the CSV's own folder when as many exist under both. Every row counts, so one
    image deleted or moved (the first row's, say) does not send the others to the wrong folder. Raises DataError
    naming both folders when none of them exists under either."""
    folders = (csv_path.parent, csv_path.parent.parent)
    found = [sum(1 for name in images if (folder / name).exists()) for folder in folders]
    if not any(found):
        raise DataError(f"{csv_path}: none of the {len(images)} images of category {category!r} exists: expected "
                        f"their paths (column 'image', first {(images or [''])[0]!r}) relative to the CSV's folder "
                        f"{folders[0]} or the folder above it, {folders[1]}; neither holds them. Put the CSV where "
                        "its paths start (VisA: split_csv/ in the dataset's root, beside the category folders), "
                        "or fix the paths in its image column.")
    return folders[0] if found[0] >= found[1] else folders[1]


def _visa_bad_train_message(csv_path: Path, rows: list[str]) -> str:
    """The refusal of train rows labelled anomalous: training takes normal images only."""
    shown = "; ".join(rows[:NAMED_AT_MOST]) + (f"; and {len(rows) - NAMED_AT_MOST} more"
                                                      if len(rows) > NAMED_AT_MOST else "")
    return (f"{csv_path}: {len(rows)} 'train' row(s) labelled anomalous: {shown}. Training takes normal images "
            f"only (labels {', '.join(VISA_GOOD_LABELS)}, any case). Move those rows to the test split "
            "(split=test), or relabel them 'normal' if the images are normal, or use a split CSV whose train "
            "rows are all normal (VisA's 1cls.csv).")


ELPV_KINDS = ("mono", "poly")
BUILTIN_DATASETS = ("elpv",) + tuple(f"elpv:{kind}" for kind in ELPV_KINDS)  # dataset specs of the ELPV cells


def elpv_split(kind: str = "mono", test_fraction: float = 0.2, seed: int = 0) -> DatasetSplit:
    """ELPV solar cells (package ``elpv-dataset``, CC BY-NC-SA 4.0): probability-0 cells of one kind
    split into train / good test (deterministic), probability-1 cells as defects. No masks."""
    try:
        import elpv_dataset
    except ImportError as exc:
        raise DataError("the ELPV demo data needs the `elpv-dataset` package: pip install elpv-dataset") from exc
    root = Path(elpv_dataset.__file__).parent / "data"
    good, bad = [], []
    for line in (root / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == kind:
            prob = float(parts[1])
            if prob == 0.0:
                good.append(root / parts[0])
            elif prob == 1.0:
                bad.append(root / parts[0])
    if not good:
        raise DataError(f"ELPV has no {kind!r} cells; use 'mono' or 'poly'.")
    order = np.random.default_rng(seed).permutation(len(good))
    n_test = int(round(len(good) * test_fraction))
    test_good = [Sample(good[i]) for i in sorted(order[:n_test])]
    train = [Sample(good[i]) for i in sorted(order[n_test:])]
    return DatasetSplit(f"elpv-{kind}", train, test_good + [Sample(p, 1, "defective") for p in bad], "elpv")


def load_dataset(spec: str | Path, category: str | None = None, *, need_train: bool = True) -> DatasetSplit:
    """Find the layout of ``spec`` and list its samples.

    spec: ``elpv`` / ``elpv:mono`` / ``elpv:poly``; an MVTec category folder (has train/good);
    a VisA split CSV file; or a plain folder of normal images (training only).
    need_train: False for a command that reads the test split only (eval): an MVTec folder then needs only its
    test/ folder (train/good may be missing or empty), a VisA category no 'train' rows.
    """
    text = str(spec)
    if text.startswith("elpv"):
        return elpv_split(text.partition(":")[2] or "mono")
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _visa(path, category, need_train)
    if path.exists() and not path.is_dir():
        raise DataError(
            f"dataset {path} is a file ({path.suffix or 'no suffix'}), not a dataset folder: give an MVTec category "
            "folder (with train/good), a VisA split CSV (.csv), a folder of normal images, or 'elpv' for the "
            "built-in demo data.")
    if not path.is_dir():
        raise DataError(
            f"dataset {path} does not exist. Give an MVTec category folder (with train/good), "
            "a VisA split CSV, a folder of normal images, or 'elpv' for the built-in demo data."
        )
    for root in (path, path / category) if category else (path,):
        if (root / "train" / "good").is_dir() or (not need_train and (root / "test").is_dir()):
            return _mvtec(root, need_train)
    categories = mvtec_categories(path, need_train)
    if categories:
        raise DataError(_mvtec_root_message(path, category, categories))
    hint = case_variant_hint(path)
    if (path / "test").is_dir() and not image_files(path, IMAGE_SUFFIXES):
        raise DataError(f"{path} has a test/ folder but no train/good folder: training needs normal images in "
                        f"{path / 'train' / 'good'}; add them there, or give a folder of normal images.{hint}")
    return DatasetSplit(path.name, [Sample(p) for p in list_images(path, hint)], layout="folder")


def case_variant_hint(path: Path) -> str:
    """" It has Train/Good: ..." when ``path`` holds a train/good folder spelt in another case (found on a
    case-sensitive file system only, where MVTec's lower-case train/good is then missing); "" otherwise."""
    variant = path
    for part in ("train", "good"):
        try:
            found = sorted(p for p in variant.iterdir() if p.name.lower() == part and p.is_dir())
        except OSError:
            return ""
        if not found:
            return ""
        variant = found[0]
    if variant == path / "train" / "good":
        return ""
    shown = variant.relative_to(path).as_posix()
    return (f" It has {shown}: an MVTec dataset's folders are read in lower case (train/good, test/); rename "
            f"{variant} to {path / 'train' / 'good'}.")


def mvtec_categories(path: Path, need_train: bool = True) -> list[str]:
    """The subfolders of ``path`` laid out as MVTec categories (train/good, or test/ when ``need_train`` is
    False), sorted: non-empty when ``path`` is an MVTec root (e.g. mvtec_ad/ holding bottle/, cable/, ...)."""
    def is_category(folder: Path) -> bool:
        return (folder / "train" / "good").is_dir() or (not need_train and (folder / "test").is_dir())

    return sorted(p.name for p in path.iterdir() if p.is_dir() and not is_hidden_name(p.name) and is_category(p))


def _mvtec_root_message(path: Path, category: str | None, categories: list[str]) -> str:
    """The refusal for an MVTec root given without --category, or with one it does not hold."""
    shown = ", ".join(categories[:20]) + (f" and {len(categories) - 20} more" if len(categories) > 20 else "")
    if category is None:
        return (f"{path} is an MVTec root holding the categories {shown}: pick one with --category NAME (e.g. "
                f"--category {categories[0]}), or give the category folder ({path / categories[0]}).")
    return (f"{path} is an MVTec root with no category {category!r}{did_you_mean(category, categories)}; it holds "
            f"{shown}. Pass one of them to --category.")


IMAGE_ROLES = ("train", "normal", "defect")
# the option that takes each held-out role (build, fuse), and what its images are, for messages
ROLE_FLAGS = {"normal": "--normal", "defect": "--defects"}
ROLE_WORDS = {"normal": "held-out normal images", "defect": "defective images"}
ROLE_FOLDERS = {"normal": "a folder of normal images that training did not see",
                "defect": "a folder of defective images"}
TEST_SPLITS = {"mvtec": "MVTec: a test/ folder with test/good and test/<defect type>", "visa": "VisA: rows with split "
               "'test'"}


def images_for(spec: str | Path, role: str, category: str | None = None) -> list[Path]:
    """The image files of ``spec`` that play ``role``, for commands that ask for normal (or defect) images.

    spec: anything ``load_dataset`` accepts. A plain folder gives all its images whatever the role;
    a dataset gives, for role "train", its training images (normal, e.g. INT8 calibration), for "normal" its
    held-out normal test images (the decision threshold), for "defect" its defective test images. Raises
    DataError when the dataset has none of that role: a dataset without a test split has no held-out images,
    and its training images are never taken for them. Byte-identical held-out files are named in a warning
    (``warn_copies``).
    """
    if role not in IMAGE_ROLES:
        raise ValueError(f"role must be one of {IMAGE_ROLES}; found {role!r}")
    split = load_dataset(spec, category)
    if split.layout == "folder":
        chosen = split.train
    elif role != "train" and not split.test:
        raise DataError(_no_test_split_message(spec, category, split, role))
    else:
        chosen = {"train": split.train, "normal": [s for s in split.test if s.label == 0],
                  "defect": [s for s in split.test if s.label == 1]}[role]
    if not chosen:
        raise DataError(f"dataset {spec} has no {role} images; pass a folder of them instead.")
    paths = [s.path for s in chosen]
    if role in ROLE_WORDS:
        warn_copies(paths, f"{ROLE_FLAGS[role]} {spec}", ROLE_WORDS[role])
    return paths


def _no_test_split_message(spec: str | Path, category: str | None, split: DatasetSplit, role: str) -> str:
    """The refusal of a dataset without a test split given for held-out images (``role`` "normal" or "defect")."""
    where = f"dataset {spec}" + (f" (category {category})" if category else "")
    layout = TEST_SPLITS.get(split.layout, "")
    return (f"{ROLE_FLAGS[role]}: {where} has no test split{f' ({layout})' if layout else ''}: its {len(split.train)} "
            f"images are its training images, not {ROLE_WORDS[role]}. Pass {ROLE_FOLDERS[role]} to "
            f"{ROLE_FLAGS[role]}, or add the dataset's test split and pass the dataset.")


def warn_copies(paths: Sequence[Path], given: str, what: str) -> None:
    """Log one warning naming the byte-identical files among ``paths`` (``byte_identical_groups``): each group is one
    image, however many copies, so it adds nothing a single file would not. given: the option and its value
    ("--normal data/dup"); what: the images' role ("held-out normal images")."""
    groups = byte_identical_groups(paths)
    if not groups:
        return
    copies = sum(len(g) - 1 for g in groups)
    shown = named_text(" = ".join(p.name for p in g[:3]) + (f" = ... ({len(g)} files)" if len(g) > 3 else "")
                       for g in groups)
    log.warning("%s: %d of the %d %s are byte-identical copies of another of them (%d distinct images): %s. Copies "
                "of one image count as one image; replace them with images of other parts, or remove them.", given,
                copies, len(paths), what, len(paths) - copies, shown)


def byte_identical_groups(paths: Sequence[Path], hashed_at_most: int = COPIES_HASHED_BYTES) -> list[list[Path]]:
    """The groups (2 or more paths each, in ``paths`` order) of files with the same bytes, by first member. Files are
    grouped by size (os.stat) and only those sharing a size are hashed (SHA-256), at most ``hashed_at_most`` bytes in
    all: files past it are not compared. A file that cannot be read is left out (its reader names it)."""
    by_size: dict[int, list[Path]] = {}
    for path in paths:
        try:
            by_size.setdefault(os.stat(path).st_size, []).append(path)
        except OSError:
            continue
    by_hash: dict[bytes, list[Path]] = {}
    hashed = 0
    for size, same_size in by_size.items():
        if len(same_size) < 2 or size == 0:
            continue
        for path in same_size:
            if hashed + size > hashed_at_most:
                break
            try:
                by_hash.setdefault(hashlib.sha256(Path(path).read_bytes()).digest(), []).append(path)
            except OSError:
                continue
            hashed += size
    order = {path: i for i, path in enumerate(paths)}
    return sorted((sorted(g, key=order.get) for g in by_hash.values() if len(g) > 1), key=lambda g: order[g[0]])


def load_images(samples: list[Sample], size: int, *, tiling=None, progress=None,
                rows: int | None = None) -> tuple[np.ndarray, list[Sample]]:
    """Read and resize samples to colour model images, skipping unreadable files (and images too small to be a
    model input or to hold one tile) with a warning naming each, and a count (``read_frames``).

    tiling: None, or a ``fair_edge.tiling.TilingConfig``: each image then gives its tiles (each resized
    to ``size``), in ``FrameTiler.split`` order. rows: the model images ``samples`` give, when the caller counted
    them (``model_image_count``); counted here otherwise: the buffer is allocated once at that size. Returns
    (images (N, 3, size, size) float32 RGB in [0, 1], N = images read (times tiles per image), the samples that
    were read).
    """
    from fair_edge.preprocess import resize_frame
    from fair_edge.tiling import FrameTiler

    tiler = FrameTiler(tiling, size)
    images, kept = ImageBuffer(model_image_count(samples, tiling) if rows is None else rows), []
    for sample, frame in read_frames(samples, tiling, progress=progress):
        tiles, _ = tiler.split([frame])
        for tile in tiles:
            images.append(resize_frame(tile, size))
        kept.append(sample)
    return images.array(), kept


def model_image_count(samples: Sequence[Sample], tiling=None) -> int:
    """The model images ``load_images`` makes of ``samples``: one a sample untiled (``tiling`` None); tiled (a
    ``fair_edge.tiling.TilingConfig``), every file's own tiles (``image_tiles``: from its header, no pixel
    decoded), so frames of several sizes are counted as they will be read. What the PatchCore fit's memory
    estimate counts, and ``load_images`` allocates."""
    if tiling is None:
        return len(samples)
    return sum(image_tiles(s.path, tiling) for s in samples)


def image_tiles(path: Path, tiling) -> int:
    """The tiles of ``tiling`` (a ``fair_edge.tiling.TilingConfig``) the image file ``path`` gives: ``tile_layout``
    on its size as stored, read from its header (``image_size.stored_size``, a few bytes) or, where the header does
    not say, from its decoded frame (``read_frame``); 0 for a file training skips (unreadable, or too small for
    one tile of its region)."""
    size = stored_size(path)
    try:
        if size is None:
            size = read_frame(path, tiling).shape[:2]
        return tile_layout(tuple(size), tiling, tiling.tile).count
    except (DataError, ConfigError):
        return 0


class ImageBuffer:
    """Model images filled into one preallocated (rows, 3, S, S) array as they are read, so the training set is
    held once, not as a list and then its ``np.stack`` copy (twice the memory at the fit's largest moment).
    rows: the model images expected (``model_image_count``: a tiled folder's tiles counted file by file, from
    the headers). Files that give more than that (a header that said less than the decoder found) grow it by half,
    a copy; skipped files leave rows unused."""

    def __init__(self, rows: int) -> None:
        self.rows, self.count, self._data = max(1, rows), 0, None

    def append(self, image: np.ndarray) -> None:
        """Add one model image ((3, S, S) float32) after those added before."""
        if self._data is None:
            self._data = np.empty((self.rows, *image.shape), image.dtype)
        elif self.count == len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data[:max(1, len(self._data) // 2)])])
        self._data[self.count] = image
        self.count += 1

    def array(self) -> np.ndarray:
        """(count, 3, S, S), contiguous: the buffer's filled part (a view: skipped files leave their unused rows
        behind it, never a second copy of the images)."""
        return self._data[:self.count]
