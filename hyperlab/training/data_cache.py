"""Datasets loaded once per process: a search sizes hundreds of suggestions against one corpus."""

from __future__ import annotations

import functools


def corpus(dataset: str, data_dir: str | None = None):
    """The ``CharCorpus`` of ``dataset``, loaded once per (dataset, data directory)."""
    from hyperlab.data import resolve_data_dir

    return _corpus(dataset, str(resolve_data_dir(data_dir)))


def images(dataset: str, data_dir: str | None = None):
    """The ``ImageData`` of ``dataset``, loaded once per (dataset, data directory)."""
    from hyperlab.data import resolve_data_dir

    return _images(dataset, str(resolve_data_dir(data_dir)))


def strokes(dataset: str, data_dir: str | None = None):
    """The ``StrokeData`` of IAM-OnDB (``dataset: iam_ondb``), loaded once per data directory."""
    from hyperlab.data import resolve_data_dir

    return _strokes(str(resolve_data_dir(data_dir)))


def data_shape(task: str, dataset: str, data_dir: str | None = None):
    """What the model learns from the data: the corpus's ``vocab_size`` or the ``num_classes`` (nothing
    for handwriting: a pen point is always (dx, dy, end_of_stroke))."""
    from hyperlab.models import DataShape

    if task == "charlm":
        return DataShape(vocab_size=corpus(dataset, data_dir).vocab_size)
    if task == "handwriting":
        return DataShape()
    return DataShape(num_classes=images(dataset, data_dir).num_classes)


@functools.lru_cache(maxsize=4)
def _corpus(dataset: str, data_dir: str):
    from hyperlab.data import load_corpus

    return load_corpus(dataset, data_dir)


@functools.lru_cache(maxsize=1)
def _strokes(data_dir: str):
    from hyperlab.data import load_strokes

    return load_strokes(data_dir)


@functools.lru_cache(maxsize=2)
def _images(dataset: str, data_dir: str):
    from hyperlab.data import load_images

    return load_images(dataset, data_dir)
