"""IAM-OnDB pen strokes as Graves (2013) prepares them, cached as compact arrays.

The user's copy goes under ``<data dir>/iam-ondb/``: either the folders ``lineStrokes/`` (and ``ascii/``)
as IAM distributes them, or one archive holding them (``*.tar.xz``, ``*.tar.gz``, ``*.tar``, possibly under
a top folder such as ``data/``). IAM-OnDB needs registration and may not be redistributed, so there is no
download.

Each line (one XML file of strokes, each a list of pen points) becomes a sequence of points
``(dx, dy, end_of_stroke)``: the pen's offset from the previous point (the first point's is 0), and 1 on
the last point of each stroke. Lines with fewer than ``MIN_POINTS`` points are dropped, as the paper does;
files that do not parse, or hold no points, are skipped and counted. Offsets are divided by one standard
deviation of the training set's offsets (both axes together; stored with the arrays), so the model sees
unit-scale inputs and a sample is scaled back by it.

Validation lines: every line of the forms (one writer's session, ``a01-000u``) whose name hashes into
the first ``VALID_PERCENT`` of 100 buckets; the split is deterministic and no form has lines on both
sides. (IAM-OnDB's writer table is not part of ``lineStrokes/``, so forms stand in for writers.)
"""

from __future__ import annotations

import hashlib
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperlab.data.paths import derived_dir, load_or_build, resolve_data_dir
from hyperlab.errors import UserError

MIN_POINTS = 300
VALID_PERCENT = 5
FOLDER = "iam-ondb"
REGISTER = "https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database"
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class StrokeData:
    """Lines of pen offsets: ``points`` (N, 3) float32 ``(dx, dy, end_of_stroke)`` of every kept line end
    to end, line ``i`` is ``points[starts[i]:starts[i + 1]]``; ``valid`` marks the validation lines;
    ``scale`` is the offsets' divisor (a sample times ``scale`` is in the tablet's units)."""

    points: np.ndarray
    starts: np.ndarray
    valid: np.ndarray
    scale: float
    counts: dict

    def lines(self, split: str) -> list[np.ndarray]:
        """The lines of ``"train"`` or ``"valid"``, each (T, 3) (views of the memory-mapped array)."""
        if split not in ("train", "valid"):
            raise UserError(f"IAM-OnDB has the splits 'train' and 'valid', not {split!r}")
        keep = self.valid if split == "valid" else ~self.valid
        return [self.points[self.starts[i]:self.starts[i + 1]] for i in np.flatnonzero(keep)]


def load_strokes(data_dir: str | Path | None = None) -> StrokeData:
    """IAM-OnDB's lines, prepared and cached on first use (see the module docstring)."""
    folder = resolve_data_dir(data_dir) / FOLDER
    source = _source(folder)
    sources = sorted(source.rglob("*.xml")) if source.is_dir() else [source]
    target = derived_dir("iam-ondb", sources, folder)
    arrays, meta = load_or_build(target, lambda: _build(source))
    return StrokeData(arrays["points"], arrays["starts"], arrays["valid"].astype(bool), float(meta["scale"]),
                      meta["counts"])


def _source(folder: Path) -> Path:
    """The ``lineStrokes`` folder or the archive that holds it."""
    if (folder / "lineStrokes").is_dir():
        return folder / "lineStrokes"
    archives = sorted(p for p in folder.glob("*") if p.name.endswith(ARCHIVE_SUFFIXES)) if folder.is_dir() else []
    if archives:
        return archives[0]
    raise UserError(f"IAM-OnDB not found in {folder}: put its lineStrokes/ folder (lineStrokes-all.tar.gz, "
                    f"unpacked; ascii/ beside it for the texts) or that archive there. The database needs a "
                    f"free registration at {REGISTER} and may not be redistributed, so hyperlab cannot download it")


def _line_files(source: Path) -> Iterator[tuple[str, bytes]]:
    """(line name, XML bytes) of every line file, in name order."""
    if source.is_dir():
        for path in sorted(source.rglob("*.xml")):
            yield path.stem, path.read_bytes()
        return
    with tarfile.open(source) as archive:
        members = sorted((m for m in archive if m.isfile() and "lineStrokes/" in m.name and m.name.endswith(".xml")),
                         key=lambda m: m.name)
        if not members:
            raise UserError(f"{source}: no lineStrokes/**.xml in this archive")
        for member in members:
            yield Path(member.name).stem, archive.extractfile(member).read()


def parse_line(xml: bytes) -> np.ndarray:
    """(T, 3) int64 ``(x, y, end_of_stroke)`` of one line file's points, in the tablet's units."""
    strokes = ET.fromstring(xml).find("StrokeSet")
    if strokes is None:
        raise ValueError("no StrokeSet")
    rows = []
    for stroke in strokes.iter("Stroke"):
        points = [(int(p.get("x")), int(p.get("y"))) for p in stroke.iter("Point")]
        rows.extend((x, y, int(i == len(points) - 1)) for i, (x, y) in enumerate(points))
    if not rows:
        raise ValueError("no points")
    return np.asarray(rows, dtype=np.int64)


def offsets(points: np.ndarray) -> np.ndarray:
    """Absolute points (T, 3) -> offsets (T, 3) float: each point minus the one before (the first: 0)."""
    out = points.astype(np.float64)
    out[1:, :2] = np.diff(points[:, :2], axis=0)
    out[0, :2] = 0.0
    return out


def is_valid_form(line_name: str) -> bool:
    """Whether a line's form (``a01-000u`` of ``a01-000u-03``) is on the validation side."""
    form = line_name.rsplit("-", 1)[0]
    return int(hashlib.sha256(form.encode()).hexdigest(), 16) % 100 < VALID_PERCENT


def _build(source: Path) -> tuple[dict[str, np.ndarray], dict]:
    lines, valid, malformed, short = [], [], 0, 0
    for name, xml in _line_files(source):
        try:
            points = parse_line(xml)
        except (ET.ParseError, ValueError, TypeError):
            malformed += 1
            continue
        if len(points) < MIN_POINTS:
            short += 1
            continue
        lines.append(offsets(points))
        valid.append(is_valid_form(name))
    if not lines:
        raise UserError(f"{source}: no line with at least {MIN_POINTS} points")
    valid = np.asarray(valid, dtype=bool)
    train_offsets = np.concatenate([line[:, :2] for line, v in zip(lines, valid) if not v])
    scale = float(train_offsets.std())
    points = np.concatenate(lines).astype(np.float32)
    points[:, :2] /= scale
    starts = np.cumsum([0] + [len(line) for line in lines]).astype(np.int64)
    counts = {"lines": len(lines), "train_lines": int((~valid).sum()), "valid_lines": int(valid.sum()),
              "points": int(len(points)), "dropped_short": short, "skipped_malformed": malformed}
    return {"points": points, "starts": starts, "valid": valid.astype(np.uint8)}, {"scale": scale, "counts": counts}
