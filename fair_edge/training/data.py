"""Datasets: MVTec AD layout, VisA split CSV, a plain folder of normal images, and the ELPV demo set.

Every loader returns a ``DatasetSplit`` of ``Sample`` records (paths and labels only); pixels are
read by ``fair_edge.training.pixels`` (``read_image`` / ``read_mask``) when needed, so a bad file is reported by name
and skipped. Which images a folder holds is ``list_images`` (``fair_edge.image_folders``' rule with
``IMAGE_SUFFIXES``); the held-out images a command asks for by role are ``fair_edge.training.held_out``'s.
"""

from __future__ import annotations

import csv
import io
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fair_edge.errors import DataError, did_you_mean
from fair_edge.image_folders import (LEFT_OUT_FIX, NAMED_AT_MOST, SCANNED_AT_MOST, image_files, is_dataset_folder,
                                     is_hidden_name, left_out_images, left_out_text)
from fair_edge.image_folders import unread_text as _unread_text  # the folder replay's too; wrapped below
from fair_edge.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

GOOD_NAMES = ("good", "normal", "ok")  # names of normal images, compared lower-cased: MVTec test/ folders, VisA labels
VISA_GOOD_LABELS = (*GOOD_NAMES, "0")  # a VisA CSV label that means normal (lower-cased); any other label is a defect


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


# ----------------------------------------------------------------------------- image folders
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
                f"--category {shlex.quote(categories[0])}), or give the category folder ({path / categories[0]}).")
    return (f"{path} is an MVTec root with no category {category!r}{did_you_mean(category, categories)}; it holds "
            f"{shown}. Pass one of them to --category.")
