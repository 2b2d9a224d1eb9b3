"""Held-out images by role: the files of a dataset (or a plain folder) that play training, held-out normal or
defective images for the commands that ask for them (build, fuse: ``images_for``), and the byte-identical copies
among them named in a warning (``warn_copies``, logged as ``fair_edge.training.data``'s: one logger for what
reading a dataset found).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

from fair_edge.errors import DataError
from fair_edge.image_folders import named_text
from fair_edge.training.data import DatasetSplit, load_dataset

log = logging.getLogger("fair_edge.training.data")   # the datasets' logger (see above)

COPIES_HASHED_BYTES = 2**30  # bytes hashed at most looking for byte-identical images among one role's files (1 GiB)
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
