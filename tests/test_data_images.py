"""Image datasets (MNIST, CIFAR-10, folders of labelled images) and deterministic batches."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from hyperlab.data import ImageBatches, load_images
from hyperlab.data import images as images_module
from hyperlab.data.image_batches import channel_stats, crop_and_flip
from hyperlab.data.images import read_idx
from hyperlab.errors import UserError

from conftest import pin_stand_in

pytestmark = pytest.mark.usefixtures("private_cache")


def test_mnist_is_split_55k_5k_10k_with_the_known_labels(shared_data):
    ds = load_images("mnist", shared_data("mnist"))
    assert [len(s[0]) for s in (ds.train, ds.valid, ds.test)] == [55_000, 5_000, 10_000]
    assert ds.train[0].shape[1:] == (28, 28, 1) and ds.train[0].dtype == np.uint8
    assert (ds.num_classes, ds.channels, ds.image_size) == (10, 1, 28)
    assert ds.train[1][:5].tolist() == [5, 0, 4, 1, 9] and int(ds.test[1][0]) == 7
    # the validation set is the tail of the training file: read its labels another way
    with gzip.open(shared_data("mnist") / "mnist" / "train-labels-idx1-ubyte.gz") as file:
        raw = file.read()
    assert ds.valid[1].tolist() == list(raw[8 + 55_000:])
    assert ds.mean[0] == pytest.approx(0.1307, abs=2e-4)  # the well-known MNIST mean, on 55k


def test_idx_reader_decodes_header_and_payload(tmp_path):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in values.shape)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(header + values.tobytes()))
    assert np.array_equal(read_idx(path), values)


def _cifar_stand_in(folder) -> dict[str, np.ndarray]:
    """A generated archive with the official layout, 5 x 4 training rows + 4 test rows; returns the rows."""
    rng = np.random.default_rng(0)
    rows = {name: rng.integers(0, 256, (4, 3072), dtype=np.uint8)
            for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    folder.mkdir(parents=True)
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, data in rows.items():
            blob = pickle.dumps({b"data": data, b"labels": list(range(4))})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return rows


def test_cifar10_batches_become_hwc_images_split_off_the_tail(tmp_path, monkeypatch):
    rows = _cifar_stand_in(tmp_path / "data" / "cifar10")
    pin_stand_in(monkeypatch, "cifar10", tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz")
    monkeypatch.setitem(images_module.VALID_SIZE, "cifar10", 4)
    ds = load_images("cifar10", tmp_path / "data")
    assert [len(s[0]) for s in (ds.train, ds.valid, ds.test)] == [16, 4, 4]
    # pixel (h, w) of channel c is byte c*1024 + h*32 + w of a row
    assert ds.train[0][5, 7, 9, 2] == rows["data_batch_2"][1, 2 * 1024 + 7 * 32 + 9]
    assert ds.valid[0][0, 31, 0, 1] == rows["data_batch_5"][0, 1024 + 31 * 32]
    assert ds.test[1].tolist() == [0, 1, 2, 3] and ds.num_classes == 10


class _RunsCode:
    """Pickled, it calls os.system: what a tampered archive would hold instead of arrays."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_archive_holding_code_is_refused_not_run(tmp_path, monkeypatch):
    """Even an archive that passes its sha256 (pinned here to the tampered one) is unpickled to arrays only."""
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    pin_stand_in(monkeypatch, "cifar10", folder / "cifar-10-python.tar.gz")
    with pytest.raises(UserError, match=r"not a CIFAR-10 python archive \(refusing to unpickle posix\.system"):
        load_images("cifar10", tmp_path / "data")
    assert not marker.exists()


def test_a_tampered_cifar_archive_fails_its_checksum_before_it_is_read(tmp_path):
    _cifar_stand_in(tmp_path / "data" / "cifar10")  # not the official archive: its sha256 differs
    with pytest.raises(UserError, match="does not match the published sha256 of cifar-10-python.tar.gz"):
        load_images("cifar10", tmp_path / "data")
    assert not (tmp_path / "data" / "cifar10" / "derived").exists()


def test_shared_cifar10_folder_reads_pngs_with_csv_labels_and_a_zip_of_class_folders(shared_data):
    ds = load_images("cifar10_folder", shared_data("cifar10"))
    assert [len(s[0]) for s in (ds.train, ds.valid, ds.test)] == [180, 20, 10_000]
    assert ds.class_names[6] == "frog" and ds.train[1][:5].tolist() == [6, 9, 9, 4, 1]  # trainLabels.csv
    assert np.bincount(ds.test[1]).tolist() == [1000] * 10
    png = shared_data("cifar10") / "cifar10" / "train_first200" / "train" / "1.png"
    first = np.asarray(Image.open(png).convert("RGB"))
    assert np.array_equal(ds.train[0][0], first)  # lossless PNG, read in file-number order


def test_the_idx_and_cifar_readers_close_every_file_they_open(tmp_path, monkeypatch):
    opened = []

    def recorded(open_file):
        def wrapper(*args, **kwargs):
            opened.append(open_file(*args, **kwargs))
            return opened[-1]
        return wrapper
    monkeypatch.setattr(gzip, "open", recorded(gzip.open))
    monkeypatch.setattr(tarfile.TarFile, "extractfile", recorded(tarfile.TarFile.extractfile))
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])))
    assert read_idx(path).tolist() == [7, 8, 9]
    _cifar_stand_in(tmp_path / "cifar10")
    arrays = images_module._read_cifar_tar(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    assert arrays["train_x"].shape == (20, 32, 32, 3)
    assert len(opened) == 1 + 6 and [f.closed for f in opened] == [True] * 7  # the IDX file, six batches


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_a_generated_folder_of_labelled_images(tmp_path):
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "train").mkdir()
    for k in range(4):  # train/<k+1>.png labelled by labels.csv
        (tmp_path / "train" / f"{k + 1}.png").write_bytes(_png(pictures[k]))
    (tmp_path / "labels.csv").write_text("id,label\n1,dog\n2,cat\n3,dog\n4,cat\n")
    (tmp_path / "valid" / "cat").mkdir(parents=True)
    (tmp_path / "valid" / "cat" / "a.png").write_bytes(_png(pictures[4]))
    with zipfile.ZipFile(tmp_path / "test.zip", "w") as archive:
        archive.writestr("test/dog/x.png", _png(pictures[5]))
        archive.writestr("test/cat/y.png", _png(pictures[6]))
    ds = load_images(tmp_path)
    assert ds.class_names == ["cat", "dog"]
    assert ds.train[1].tolist() == [1, 0, 1, 0] and np.array_equal(ds.train[0], pictures[:4])
    assert ds.valid[1].tolist() == [0] and np.array_equal(ds.valid[0][0], pictures[4])
    assert ds.test[1].tolist() == [0, 1] and np.array_equal(ds.test[0], pictures[[6, 5]])


def test_an_unlabelled_image_is_a_user_error(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "1.png").write_bytes(_png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(UserError, match=r"(train|test)/1.png has no label"):
        load_images(tmp_path)


def _toy_images(n=40, size=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n, dtype=np.int64)


def test_batches_are_a_pure_function_of_seed_epoch_and_index():
    images, labels = _toy_images()
    batches = ImageBatches(images, labels, batch_size=16, augment=True, seed=3)
    assert len(batches) == 3  # 16 + 16 + 8
    resumed = ImageBatches(images, labels, batch_size=16, augment=True, seed=3)
    for epoch, index in [(0, 0), (2, 1), (0, 2)]:
        x, y = batches.get(epoch, index)
        x2, y2 = resumed.get(epoch, index)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 6, 6) and y.dtype == torch.int64
    seen = [torch.cat([batches.get(e, i)[1] for i in range(3)]).sort().values.tolist() for e in (0, 1)]
    assert seen == [list(range(40))] * 2  # each epoch visits every example once
    assert batches.get(0, 0)[1].tolist() != batches.get(1, 0)[1].tolist()  # reshuffled per epoch
    other_seed = ImageBatches(images, labels, batch_size=16, augment=True, seed=4)
    assert other_seed.get(0, 0)[1].tolist() != batches.get(0, 0)[1].tolist()


def test_normalisation_inverts_to_the_stored_pixels():
    images, labels = _toy_images()
    batches = ImageBatches(images, labels, 40, augment=False, seed=0, shuffle=False)
    x, y = batches.get(0, 0)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5 and (x.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-4
    mean = torch.from_numpy(batches.mean.reshape(1, 3, 1, 1))
    std = torch.from_numpy(batches.std.reshape(1, 3, 1, 1))
    restored = ((x * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(restored, images) and y.tolist() == list(range(40))


def test_channel_stats_from_histograms_equal_the_direct_computation():
    images, _ = _toy_images(n=50, size=5)
    mean, std = channel_stats(images, chunk=7)  # chunks that do not divide N
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    assert np.allclose(mean, pixels.mean(0), atol=1e-6) and np.allclose(std, pixels.std(0), atol=1e-6)


def test_crop_and_flip_do_what_they_claim():
    images, _ = _toy_images(n=2)
    centre, flip = np.array([4, 4]), np.array([False, True])
    out = crop_and_flip(images, centre, centre, flip, pad=4)
    assert np.array_equal(out[0], images[0])  # centred crop, no flip: unchanged
    assert np.array_equal(out[1], images[1][:, ::-1])  # centred crop, flipped: mirrored columns
    corner = crop_and_flip(images, np.array([0, 0]), np.array([0, 8]), np.array([False, False]), pad=4)
    assert np.array_equal(corner[0, 4:, 4:], images[0, :2, :2]) and not corner[0, :4].any()
    assert np.array_equal(corner[1, 4:, :2], images[1, :2, 4:]) and not corner[1, :, 2:].any()


def test_augmented_images_are_padded_crops_or_their_mirror_images():
    images, labels = _toy_images(n=16)
    batches = ImageBatches(images, labels, 16, augment=True, seed=0, shuffle=False, mean=[0, 0, 0], std=[1, 1, 1])
    x, y = batches.get(0, 0)
    augmented = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    changed = 0
    for k in range(16):  # reference: every crop offset and flip, by plain slicing
        padded = np.pad(images[k], ((4, 4), (4, 4), (0, 0)))
        candidates = [c for dy in range(9) for dx in range(9) for c in
                      (padded[dy:dy + 6, dx:dx + 6], padded[dy:dy + 6, dx:dx + 6][:, ::-1])]
        assert any(np.array_equal(augmented[k], c) for c in candidates)
        changed += not np.array_equal(augmented[k], images[k])
    assert changed >= 12  # only 1 of 162 draws is the identity


def test_batch_errors_name_the_split_and_the_key():
    images, labels = _toy_images(n=10)
    with pytest.raises(UserError) as caught:
        ImageBatches(images, labels, 16, augment=False, seed=0, drop_last=True, name="the train split of cifar10")
    assert str(caught.value) == ("the train split of cifar10: 10 images are too few for one batch of "
                                 "data.batch_size=16; lower data.batch_size")
    assert len(ImageBatches(images, labels, 10, augment=False, seed=0, drop_last=True)) == 1  # the bound is exact
    with pytest.raises(UserError) as caught:
        ImageBatches(images, labels[:9], 0, augment=False, seed=-1)
    assert str(caught.value) == ("the images: data.batch_size must be >= 1, got 0; seed must be >= 0, got -1; "
                                 "10 images but 9 labels")
