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

Texts: line ``k`` of a form's transcription (``ascii/**/<form>.txt``, the ``CSR:`` section, which follows
the lines as written) is the text of line file ``<form>-<k>``; a form whose transcription has a different
number of lines than it has line files gets no texts (counted), as does a form without a transcription.
"""

from __future__ import annotations

import hashlib
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
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
    ``scale`` is the offsets' divisor (a sample times ``scale`` is in the tablet's units); ``texts`` and
    ``names`` are each line's transcription ("" if none) and file name (``a01-000u-01``)."""

    points: np.ndarray
    starts: np.ndarray
    valid: np.ndarray
    scale: float
    counts: dict
    texts: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    def lines(self, split: str) -> list[np.ndarray]:
        """The lines of ``"train"`` or ``"valid"``, each (T, 3) (views of the memory-mapped array)."""
        return [self.points[self.starts[i]:self.starts[i + 1]] for i in self._indices(split)]

    def line_texts(self, split: str) -> list[str]:
        """The transcriptions of ``lines(split)``, in the same order ("" where there is none)."""
        return [self.texts[i] for i in self._indices(split)]

    def _indices(self, split: str) -> np.ndarray:
        if split not in ("train", "valid"):
            raise UserError(f"IAM-OnDB has the splits 'train' and 'valid', not {split!r}")
        return np.flatnonzero(self.valid if split == "valid" else ~self.valid)


def load_strokes(data_dir: str | Path | None = None) -> StrokeData:
    """IAM-OnDB's lines, prepared and cached on first use (see the module docstring)."""
    folder = resolve_data_dir(data_dir) / FOLDER
    source = _source(folder)
    if source.is_dir():
        sources = sorted(source.rglob("*.xml")) + sorted((source.parent / "ascii").rglob("*.txt"))
    else:
        sources = [source]
    target = derived_dir("iam-ondb", sources, folder)
    arrays, meta = load_or_build(target, lambda: _build(source))
    return StrokeData(arrays["points"], arrays["starts"], arrays["valid"].astype(bool), float(meta["scale"]),
                      meta["counts"], tuple(meta["texts"]), tuple(meta["names"]))


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


def _files(source: Path) -> Iterator[tuple[str, str, bytes]]:
    """(kind, name, bytes) of every line file (kind "line", name ``a01-000u-01``) and transcription
    (kind "text", name ``a01-000u``); an archive is read in one pass, in its own order."""
    if source.is_dir():
        for path in source.rglob("*.xml"):
            yield "line", path.stem, path.read_bytes()
        for path in (source.parent / "ascii").rglob("*.txt"):
            yield "text", path.stem, path.read_bytes()
        return
    found = False
    with tarfile.open(source, mode="r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            if "lineStrokes/" in member.name and member.name.endswith(".xml"):
                found = True
                yield "line", Path(member.name).stem, archive.extractfile(member).read()
            elif "ascii/" in member.name and member.name.endswith(".txt"):
                yield "text", Path(member.name).stem, archive.extractfile(member).read()
    if not found:
        raise UserError(f"{source}: no lineStrokes/**.xml in this archive")


def transcription(text: bytes) -> list[str]:
    """The lines of a form's transcription: the non-empty lines after ``CSR:`` (none if it has no such
    section)."""
    _, csr, after = text.decode("latin-1").partition("CSR:")
    return [line.strip() for line in after.splitlines() if line.strip()] if csr else []


def parse_line(xml: bytes) -> np.ndarray:
    """(T, 3) int32 ``(x, y, end_of_stroke)`` of one line file's points, in the tablet's units."""
    strokes = ET.fromstring(xml).find("StrokeSet")
    if strokes is None:
        raise ValueError("no StrokeSet")
    rows = []
    for stroke in strokes.iter("Stroke"):
        points = [(int(p.get("x")), int(p.get("y"))) for p in stroke.iter("Point")]
        rows.extend((x, y, int(i == len(points) - 1)) for i, (x, y) in enumerate(points))
    if not rows:
        raise ValueError("no points")
    return np.asarray(rows, dtype=np.int32)


def offsets(points: np.ndarray) -> np.ndarray:
    """Absolute points (T, 3) -> offsets (T, 3) float: each point minus the one before (the first: 0)."""
    out = points.astype(np.float64)
    out[1:, :2] = np.diff(points[:, :2], axis=0)
    out[0, :2] = 0.0
    return out


def is_valid_form(line_name: str) -> bool:
    """Whether a line's form (``a01-000u`` of ``a01-000u-03``) is on the validation side."""
    return int(hashlib.sha256(_form(line_name).encode()).hexdigest(), 16) % 100 < VALID_PERCENT


def _build(source: Path) -> tuple[dict[str, np.ndarray], dict]:
    parsed, forms, malformed = {}, {}, 0
    line_files = Counter()  # line files per form, parsed or not
    for kind, name, data in _files(source):
        if kind == "text":
            forms[name] = transcription(data)
            continue
        line_files[_form(name)] += 1
        try:
            parsed[name] = parse_line(data)
        except (ET.ParseError, ValueError, TypeError):
            malformed += 1
    names = sorted(name for name, points in parsed.items() if len(points) >= MIN_POINTS)
    if not names:
        raise UserError(f"{source}: no line with at least {MIN_POINTS} points")
    lines = [offsets(parsed[name]) for name in names]
    valid = np.asarray([is_valid_form(name) for name in names], dtype=bool)
    texts = [_text(name, forms, line_files) for name in names]
    train_offsets = np.concatenate([line[:, :2] for line, v in zip(lines, valid) if not v])
    scale = float(train_offsets.std())
    points = np.concatenate(lines).astype(np.float32)
    points[:, :2] /= scale
    starts = np.cumsum([0] + [len(line) for line in lines]).astype(np.int64)
    counts = {"lines": len(lines), "train_lines": int((~valid).sum()), "valid_lines": int(valid.sum()),
              "points": int(len(points)), "dropped_short": len(parsed) - len(names),
              "skipped_malformed": malformed, "with_text": sum(map(bool, texts)),
              "forms_text_mismatched": sum(1 for form, text in forms.items()
                                           if line_files[form] and len(text) != line_files[form])}
    meta = {"scale": scale, "counts": counts, "texts": texts, "names": names}
    return {"points": points, "starts": starts, "valid": valid.astype(np.uint8)}, meta


def _form(line_name: str) -> str:
    return line_name.rsplit("-", 1)[0]


def _text(line_name: str, forms: dict[str, list[str]], line_files: Counter) -> str:
    """Line ``k``'s text of its form's transcription, when the transcription has one line per line file."""
    form, number = line_name.rsplit("-", 1)
    text = forms.get(form, [])
    if len(text) != line_files[form] or not number.isdigit() or not 1 <= int(number) <= len(text):
        return ""
    return text[int(number) - 1]
