"""Image datasets as uint8 arrays (N, H, W, C) with int64 labels, split train/valid/test.

MNIST: LeCun's gzipped IDX files, 55k/5k/10k (the last 5k training images validate).
CIFAR-10: the official python batches, 45k/5k/10k (the last 5k training images validate).
A folder of labelled images (``"cifar10_folder"`` = ``<data dir>/cifar10``, or any path): see
``hyperlab.data.image_folder``.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hyperlab.data import sources
from hyperlab.data.download import ensure_file
from hyperlab.data.image_batches import channel_stats
from hyperlab.data.image_folder import read_image_folder
from hyperlab.data.paths import derived_dir, load_or_build, resolve_data_dir
from hyperlab.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
VALID_SIZE = {"mnist": 5000, "cifar10": 5000}
Split = tuple[np.ndarray, np.ndarray]  # images uint8 (N, H, W, C), labels int64 (N,)


@dataclass(frozen=True)
class ImageData:
    """Three splits of labelled images plus what a model needs to know about them.

    ``mean`` and ``std`` are per-channel statistics of the training images on the [0, 1] scale;
    pass them to every ``ImageBatches`` of this dataset so all splits are normalised alike.
    """

    name: str
    train: Split
    valid: Split
    test: Split
    class_names: list[str]
    mean: np.ndarray = field(repr=False)  # (C,) float32
    std: np.ndarray = field(repr=False)  # (C,) float32

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.train[0].shape[3]

    @property
    def image_size(self) -> int:
        """Side length in pixels (images are square)."""
        return self.train[0].shape[1]


def load_images(name_or_path: str | Path, data_dir: str | Path | None = None) -> ImageData:
    """Load ``"mnist"``, ``"cifar10"``, ``"cifar10_folder"`` or a folder of labelled images."""
    name = str(name_or_path)
    root = resolve_data_dir(data_dir)
    if name == "mnist":
        return _mnist(root / "mnist")
    if name == "cifar10":
        return _cifar10(root / "cifar10")
    folder = root / "cifar10" if name == "cifar10_folder" else Path(name).expanduser()
    if not folder.is_dir():
        raise UserError(f"unknown image dataset {name!r}: expected 'mnist', 'cifar10', "
                        f"'cifar10_folder' (needs {root / 'cifar10'}) or a folder of labelled images")
    return _folder(name, folder, in_data_dir=name == "cifar10_folder")


def make_image_data(name: str, splits: dict[str, Split], class_names: list[str]) -> ImageData:
    """Assemble an ImageData, computing the per-channel statistics of the training images."""
    train = splits["train"][0]
    for split, (images, labels) in splits.items():
        if images.ndim != 4 or len(images) != len(labels) or images.shape[1:] != train.shape[1:]:
            raise UserError(f"{name}: split {split} has images {images.shape} and labels {labels.shape}; "
                            f"expected (N, {', '.join(map(str, train.shape[1:]))}) and (N,)")
    mean, std = channel_stats(train)
    return ImageData(name, splits["train"], splits["valid"], splits["test"], class_names, mean, std)


def hold_out_last(images: np.ndarray, labels: np.ndarray, n_valid: int) -> tuple[Split, Split]:
    """Split training data into (train, valid): the last ``n_valid`` examples validate."""
    cut = len(images) - n_valid
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped) as a uint8 array: magic 0x0000 08 <ndim>, big-endian int32 dims."""
    with gzip.open(path) as file:
        raw = file.read()
    if raw[:3] != b"\x00\x00\x08":
        raise UserError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist(folder: Path) -> ImageData:
    files = {name: ensure_file(remote, folder) for name, remote in sources.MNIST.items()}

    def read(prefix: str) -> Split:  # images (N, 28, 28, 1), labels (N,)
        images = read_idx(files[f"{prefix}-images-idx3-ubyte.gz"])[..., None]
        return images, read_idx(files[f"{prefix}-labels-idx1-ubyte.gz"]).astype(np.int64)

    train, valid = hold_out_last(*read("train"), VALID_SIZE["mnist"])
    return make_image_data("mnist", {"train": train, "valid": valid, "test": read("t10k")},
                           [str(d) for d in range(10)])


def _cifar10(folder: Path) -> ImageData:
    archive = ensure_file(sources.CIFAR10, folder)
    arrays, _ = load_or_build(derived_dir("cifar10", [archive], folder), lambda: (_read_cifar_tar(archive), {}))
    train, valid = hold_out_last(arrays["train_x"], arrays["train_y"], VALID_SIZE["cifar10"])
    return make_image_data("cifar10", {"train": train, "valid": valid, "test": (arrays["test_x"], arrays["test_y"])},
                           CIFAR10_CLASSES)


def _read_cifar_tar(archive: Path) -> dict[str, np.ndarray]:
    try:
        batches = _cifar_batches(archive)
    except (pickle.UnpicklingError, tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{archive}: not a CIFAR-10 python archive ({err})") from None
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    if sorted(batches) != sorted(train_names + ["test_batch"]):
        raise UserError(f"{archive}: expected cifar-10-batches-py/data_batch_1..5 and test_batch, "
                        f"found {sorted(batches)}")

    def stack(names):  # rows of 3072 = 3 planes of 32x32 -> (N, 32, 32, 3)
        data = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
        return data.transpose(0, 2, 3, 1), np.concatenate([batches[n][b"labels"] for n in names]).astype(np.int64)

    train_x, train_y = stack(train_names)
    test_x, test_y = stack(["test_batch"])
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain data (dicts, lists, bytes, numbers) and numpy arrays, nothing else: a pickle
    that names any other callable is refused instead of run."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # protocol 2's bytes (the official archive's)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds arrays only")
        return super().find_class(module, name)


def _cifar_batches(archive: Path) -> dict[str, dict]:
    batches = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            stem = Path(member.name).name
            if stem.startswith(("data_batch_", "test_batch")) and member.isfile():
                with tar.extractfile(member) as file:  # sha256-checked, and unpickled to arrays only
                    batches[stem] = _ArraysOnly(file, encoding="bytes").load()
    return batches


def _folder(name: str, folder: Path, in_data_dir: bool) -> ImageData:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "derived" not in p.relative_to(folder).parts)
    target = derived_dir(f"folder-{folder.name}", files, folder if in_data_dir else None)
    arrays, meta = load_or_build(target, lambda: read_image_folder(folder))
    splits = {s: (arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in ("train", "test")}
    if "valid_x" in arrays:
        splits["valid"] = (arrays["valid_x"], arrays["valid_y"])
    else:  # no valid/ images: the last tenth of train validates
        splits["train"], splits["valid"] = hold_out_last(*splits["train"], max(1, len(splits["train"][0]) // 10))
    return make_image_data(name, splits, meta["class_names"])
