"""Character corpora as memory-mapped token arrays with a vocabulary built from training text.

Every corpus is a sequence of symbols: characters (Unicode code points) or, for enwik8, bytes.
PTB's files separate characters by spaces and words by ``_``; the spaces are layout, not symbols,
so they are dropped and each end of line is kept as the symbol ``"\\n"`` (50 symbols, 5,017,482
training tokens). Symbols of the valid/test splits never seen in training map to one extra
``<unk>`` id, which exists only when some split needs it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperlab.data import sources
from hyperlab.data.download import RemoteFile, ensure_file
from hyperlab.data.paths import derived_dir, load_or_build, resolve_data_dir
from hyperlab.errors import UserError

SPLITS = ("train", "valid", "test")
UNK = "<unk>"
BUNDLED_TEXT = Path(__file__).parent / "bundled" / "tinyshakespeare_head.txt"
REPLACEMENT = "\ufffd"  # what decode() shows for the <unk> id


class CharCorpus:
    """A tokenised corpus: ``vocab`` (list of symbols, index = id), ``split(name)`` -> token ids.

    ``kind`` is ``"chars"`` (vocab entries are characters) or ``"bytes"`` (entries are the
    Latin-1 characters of byte values; ``decode`` joins the bytes and reads them as UTF-8).
    """

    def __init__(self, name: str, vocab: list[str], kind: str, splits: dict[str, np.ndarray],
                 unk_id: int | None):
        self.name, self.vocab, self.kind, self.unk_id = name, vocab, kind, unk_id
        self._splits = splits
        codes = [ord(s) for s in (vocab[:-1] if unk_id is not None else vocab)]
        self._codes = np.asarray(codes, dtype=np.int64)  # sorted: ids were assigned in code order

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids (including ``<unk>`` when present)."""
        return len(self.vocab)

    def split(self, name: str) -> np.ndarray:
        """Token ids of ``"train"``, ``"valid"`` or ``"test"`` (a read-only memmap)."""
        if name not in self._splits:
            raise UserError(f"corpus {self.name} has no split {name!r}; expected one of {SPLITS}")
        return self._splits[name]

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of ``text``; unseen symbols become ``<unk>`` or, without one, an error."""
        symbols = np.frombuffer(text.encode("utf-8"), np.uint8) if self.kind == "bytes" else _code_points(text)
        ids, known = _lookup(self._codes, symbols)
        if not known.all():
            if self.unk_id is None:
                unseen = sorted({chr(c) for c in symbols[~known].tolist()})
                raise UserError(f"symbols {unseen} are not in the vocabulary of corpus {self.name}")
            ids[~known] = self.unk_id
        return ids

    def decode(self, ids) -> str:
        """Text of a sequence of token ids (array, list or CPU tensor)."""
        flat = np.asarray(ids, dtype=np.int64).ravel().tolist()
        if self.kind == "bytes":
            table = [REPLACEMENT.encode() if i == self.unk_id else bytes([ord(s)])
                     for i, s in enumerate(self.vocab)]
            return b"".join(table[i] for i in flat).decode("utf-8", errors="replace")
        table = [REPLACEMENT if i == self.unk_id else s for i, s in enumerate(self.vocab)]
        return "".join(table[i] for i in flat)


def load_corpus(name_or_path: str | Path, data_dir: str | Path | None = None) -> CharCorpus:
    """Load ``"ptb"``, ``"enwik8"``, ``"text8"``, ``"tinyshakespeare"``, ``"bundled"`` or a
    path to a UTF-8 text file, downloading missing files and building token arrays once."""
    name = str(name_or_path)
    if name in RECIPES:
        recipe = RECIPES[name]
        folder = resolve_data_dir(data_dir) / recipe.folder
        paths = [ensure_file(remote, folder) for remote in recipe.files]
        return _cached_corpus(name, paths, folder, recipe.kind, lambda: recipe.read(paths))
    path = BUNDLED_TEXT if name == "bundled" else Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"unknown corpus {name!r}: expected one of {sorted(RECIPES) + ['bundled']} "
                        f"or the path of a UTF-8 text file")
    return _cached_corpus(name, [path], None, "chars", lambda: split_by_fraction(_text_file(path)))


def split_by_fraction(symbols: np.ndarray) -> dict[str, np.ndarray]:
    """Cut a sequence 90/5/5 into train/valid/test (100M symbols -> 90M/5M/5M)."""
    n = len(symbols)
    n_train, n_valid = n * 90 // 100, n * 5 // 100
    if n_valid == 0:
        raise UserError(f"a corpus needs at least 20 symbols for a 90/5/5 split, got {n}")
    return {"train": symbols[:n_train], "valid": symbols[n_train:n_train + n_valid],
            "test": symbols[n_train + n_valid:]}


def tokenise(symbols: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[int], bool]:
    """Map each split's symbol codes to ids of the sorted training symbols.

    Returns ``(ids per split, vocabulary codes, whether an <unk> id was needed)``; ids are
    uint8 when the vocabulary fits, else uint16.
    """
    codes = np.unique(symbols["train"])  # (V,) sorted
    looked_up = {split: _lookup(codes, s) for split, s in symbols.items()}
    needs_unk = not all(known.all() for _, known in looked_up.values())
    size = len(codes) + needs_unk
    if size > 65536:
        raise UserError(f"a vocabulary of {size} symbols is too large for a character corpus")
    dtype = np.uint8 if size <= 256 else np.uint16
    ids = {split: np.where(known, pos, len(codes)).astype(dtype) for split, (pos, known) in looked_up.items()}
    return ids, codes.tolist(), needs_unk


def _lookup(codes: np.ndarray, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # binary search in the sorted vocabulary: (N,) positions and (N,) "found" flags
    pos = np.searchsorted(codes, symbols).clip(max=max(len(codes) - 1, 0)).astype(np.int64)
    known = codes[pos] == symbols if len(codes) else np.zeros(len(symbols), bool)
    return pos, known


def _cached_corpus(name: str, paths: list[Path], folder: Path | None, kind: str,
                   read: Callable[[], dict[str, np.ndarray]]) -> CharCorpus:
    def build():
        ids, codes, needs_unk = tokenise(read())
        vocab = [chr(c) for c in codes] + ([UNK] if needs_unk else [])
        return ids, {"name": name, "kind": kind, "vocab": vocab,
                     "unk_id": len(codes) if needs_unk else None}

    cache_name = name if folder is not None else f"text-{paths[0].stem}"
    arrays, meta = load_or_build(derived_dir(cache_name, paths, folder), build)
    return CharCorpus(name, meta["vocab"], meta["kind"], {s: arrays[s] for s in SPLITS}, meta["unk_id"])


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), "<u4").astype(np.int64)


def _text_symbols(raw: bytes, source: Path) -> np.ndarray:
    if raw.isascii():  # fast path: bytes are code points (PTB, text8, Shakespeare)
        return np.frombuffer(raw, np.uint8)
    try:
        return _code_points(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{source}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def _text_file(path: Path) -> np.ndarray:
    return _text_symbols(path.read_bytes(), path)


def _zip_member(path: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, KeyError) as err:
        raise UserError(f"{path}: expected a zip archive holding {member!r} ({err})") from None


def _read_ptb(paths: list[Path]) -> dict[str, np.ndarray]:
    # "a e r _ b a n k \n": spaces are separators; '_' (word break) and '\n' are symbols
    return {split: _text_symbols(p.read_bytes().replace(b" ", b""), p) for split, p in zip(SPLITS, paths)}


@dataclass(frozen=True)
class _Recipe:
    folder: str  # under the data directory
    files: tuple[RemoteFile, ...]
    kind: str
    read: Callable[[list[Path]], dict[str, np.ndarray]]


RECIPES = {
    "ptb": _Recipe("ptb", tuple(sources.PTB_CHAR[s] for s in SPLITS), "chars", _read_ptb),
    "tinyshakespeare": _Recipe("tinyshakespeare", (sources.TINY_SHAKESPEARE,), "chars",
                               lambda paths: split_by_fraction(_text_file(paths[0]))),
    "text8": _Recipe("text8", (sources.TEXT8,), "chars",
                     lambda paths: split_by_fraction(_text_symbols(_zip_member(paths[0], "text8"), paths[0]))),
    "enwik8": _Recipe("enwik8", (sources.ENWIK8,), "bytes",
                      lambda paths: split_by_fraction(np.frombuffer(_zip_member(paths[0], "enwik8"), np.uint8))),
}
