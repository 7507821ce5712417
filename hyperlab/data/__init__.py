"""Datasets: character corpora for truncated BPTT and image datasets, with download-and-verify.

    corpus = load_corpus("ptb", data_dir)              # CharCorpus: vocab, split(), encode(), decode()
    batches = StreamBatches(corpus.split("train"), batch_size=128, seq_len=100)
    x, y = batches[i]                                  # int64 (B, T); y is x shifted by one token

    ds = load_images("cifar10", data_dir)              # ImageData: train/valid/test, num_classes, ...
    batches = ImageBatches(*ds.train, batch_size=128, augment=True, seed=0, mean=ds.mean, std=ds.std)
    x, y = batches.get(epoch, i)                       # float32 (B, C, H, W), int64 (B,)

    pens = load_strokes(data_dir)                      # StrokeData: IAM-OnDB lines of (dx, dy, end_of_stroke)
    lines = pens.lines("train")                        # list of float32 (T, 3), offsets / pens.scale
    points, mask = StrokeBatches(lines, 32, seed=0, augment=True, max_points=700).get(epoch, i)  # (B, T, 3), (B, T)
"""

from hyperlab.data.download import RemoteFile, ensure_file
from hyperlab.data.image_batches import ImageBatches
from hyperlab.data.images import ImageData, load_images
from hyperlab.data.paths import resolve_data_dir
from hyperlab.data.streams import StreamBatches
from hyperlab.data.stroke_batches import StrokeBatches
from hyperlab.data.strokes import StrokeData, load_strokes
from hyperlab.data.text import CharCorpus, load_corpus

__all__ = [
    "CharCorpus", "ImageBatches", "ImageData", "RemoteFile", "StreamBatches", "StrokeBatches", "StrokeData",
    "ensure_file", "load_corpus", "load_images", "load_strokes", "resolve_data_dir",
]
