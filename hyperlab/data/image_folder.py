"""A folder of labelled images, for offline smoke runs (e.g. the shared CIFAR-10 stand-in).

An image's split is the first ``train``/``valid``/``test`` component of its path, inside the
folder or inside a ``.zip`` in it. Its label is given by a CSV of ``file,label`` rows in a folder
above it (Kaggle's ``trainLabels.csv``; a header row is skipped), else by its parent folder's
name (``test/cat/0001.jpg``). Class ids are the sorted label names, which for CIFAR-10 is the
official order. Images are decoded with Pillow to RGB and must all have the same square size.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from hyperlab.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
SPLIT_NAMES = ("train", "valid", "test")


def read_image_folder(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Decode every image under ``folder`` into ``{<split>_x: (N,H,W,3) uint8, <split>_y: (N,) int64}``
    plus ``{"class_names": [...]}``; train and test must be present."""
    entries = _image_entries(folder)  # [(name, split, source)]
    csv_labels = _csv_labels(folder)
    labelled = [(name, split, source, _label_of(name, split, csv_labels)) for name, split, source in entries]
    found = {split for _, split, _, _ in labelled}
    if not {"train", "test"} <= found:
        raise UserError(f"{folder}: expected images under train/ and test/ folders (or in zips of them), "
                        f"found splits {sorted(found)}")
    class_names = sorted({label for *_, label in labelled})
    class_id = {name: i for i, name in enumerate(class_names)}
    arrays = {}
    for split in SPLIT_NAMES:
        rows = sorted((r for r in labelled if r[1] == split), key=lambda r: _natural_key(r[0]))
        if rows:
            arrays[f"{split}_x"] = _decode_all(folder, [(name, source) for name, _, source, _ in rows])
            arrays[f"{split}_y"] = np.array([class_id[label] for *_, label in rows], dtype=np.int64)
    return arrays, {"class_names": class_names}


def _image_entries(folder: Path) -> list[tuple[str, str, tuple]]:
    # [(name relative to folder, split, (file path,) or (zip path, member))]
    sources = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or "derived" in rel.parts:
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            sources.append((rel.as_posix(), (path,)))
        elif path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if PurePosixPath(m).suffix.lower() in IMAGE_SUFFIXES]
            sources += [(f"{rel.as_posix()}/{m}", (path, m)) for m in members]
    entries = []
    for name, source in sources:
        split = next((part for part in PurePosixPath(name).parts if part in SPLIT_NAMES), None)
        if split is not None:
            entries.append((name, split, source))
    return entries


def _csv_labels(folder: Path) -> dict[str, dict[str, str]]:
    # {csv's folder (posix, relative): {file name or stem: label}}
    tables = {}
    for path in sorted(folder.rglob("*.csv")):
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f) if len(row) >= 2]
        table = {}
        for file, label, *_ in rows:
            table[file.strip()] = table[PurePosixPath(file.strip()).stem] = label.strip()
        tables[path.parent.relative_to(folder).as_posix()] = table
    return tables


def _label_of(name: str, split: str, csv_labels: dict[str, dict[str, str]]) -> str:
    path = PurePosixPath(name)
    for base, table in csv_labels.items():
        if (base == "." or name.startswith(base + "/")) and (path.name in table or path.stem in table):
            return table.get(path.name) or table[path.stem]
    if path.parent.name in SPLIT_NAMES or path.parent.name == "":
        raise UserError(f"image {name} has no label: list it in a CSV of file,label rows or put it "
                        f"in a folder named after its class (e.g. {split}/<class>/{path.name})")
    return path.parent.name


def _decode_all(folder: Path, items: list[tuple[str, tuple]]) -> np.ndarray:
    from PIL import Image  # heavy import, needed only when a folder is decoded (once, then cached)

    archives: dict[Path, zipfile.ZipFile] = {}  # each zip opened once, not once per member
    images = []
    try:
        for _, source in items:
            if len(source) == 1:
                data = source[0].read_bytes()
            else:
                if source[0] not in archives:
                    archives[source[0]] = zipfile.ZipFile(source[0])
                data = archives[source[0]].read(source[1])
            with Image.open(io.BytesIO(data)) as image:
                images.append(np.asarray(image.convert("RGB")))
    finally:
        for archive in archives.values():
            archive.close()
    shapes = {im.shape for im in images}
    if len(shapes) != 1 or images[0].shape[0] != images[0].shape[1]:
        raise UserError(f"{folder}: images must all have one square size, found {sorted(shapes)[:5]}")
    return np.stack(images)  # (N, H, W, 3)


def _natural_key(name: str):
    # "train/2.png" before "train/10.png", as Kaggle's numbering intends
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
