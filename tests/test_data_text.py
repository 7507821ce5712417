"""Character corpora and truncated-BPTT stream batching."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperlab.data import StreamBatches, load_corpus
from hyperlab.data.text import split_by_fraction
from hyperlab.errors import UserError

from conftest import pin_stand_in

pytestmark = pytest.mark.usefixtures("private_cache")


def test_ptb_has_the_published_token_counts_and_50_symbols(shared_data, private_cache):
    corpus = load_corpus("ptb", shared_data("ptb"))
    assert [p.name[:4] for p in private_cache.iterdir()] == ["ptb-"]  # read-only source: cached aside
    assert [len(corpus.split(s)) for s in ("train", "valid", "test")] == [5_017_482, 393_042, 442_423]
    assert corpus.vocab_size == 50 and corpus.unk_id is None
    assert "\n" in corpus.vocab and "_" in corpus.vocab and " " not in corpus.vocab
    train = corpus.split("train")
    assert isinstance(train, np.memmap) and train.dtype == np.uint8
    assert int((train == corpus.vocab.index("\n")).sum()) == 42_068  # one end-of-line per line
    first_line = (shared_data("ptb") / "ptb" / "ptb.char.train.txt").open().readline()
    assert corpus.decode(train[:len(first_line) // 2 + 1]) == first_line.replace(" ", "")


def test_stream_batches_follow_every_stream_contiguously():
    tokens = np.arange(1003, dtype=np.uint16)  # token value = its position, so positions are visible
    batch_size, seq_len = 4, 7
    batches = StreamBatches(tokens, batch_size, seq_len)
    stream_len = 1003 // 4  # 250: the last 3 tokens are dropped
    assert len(batches) == (stream_len - 1) // seq_len == 35
    for i in (0, 1, 17, 34):
        x, y = batches[i]
        assert x.dtype == torch.int64 and x.shape == (4, 7)
        expected = [[b * stream_len + i * seq_len + t for t in range(seq_len)] for b in range(batch_size)]
        assert x.tolist() == expected
        assert (y == x + 1).all()  # y is the next token of every x
    stitched = torch.cat([batches[i][0] for i in range(len(batches))], dim=1)  # (B, 35*T)
    assert stitched[2].tolist() == list(range(2 * stream_len, 2 * stream_len + 35 * seq_len))
    for i in range(len(batches) - 1):  # batch i+1 starts where batch i's targets end
        assert (batches[i + 1][0][:, 0] == batches[i][1][:, -1]).all()
    with pytest.raises(IndexError):
        batches[35]


def test_random_access_equals_sequential_reading():
    tokens = np.random.default_rng(0).integers(0, 50, size=5000).astype(np.uint8)
    batches = StreamBatches(tokens, 8, 20)
    sequential = list(batches)
    for i in np.random.default_rng(1).permutation(len(batches)):
        x, y = batches[int(i)]
        assert torch.equal(x, sequential[i][0]) and torch.equal(y, sequential[i][1])


def test_a_split_too_short_names_itself_and_the_batch_keys():
    with pytest.raises(UserError) as caught:
        StreamBatches(np.zeros(100, np.uint8), batch_size=10, seq_len=10, name="the valid split of ptb")
    assert str(caught.value) == (
        "the valid split of ptb: 100 tokens are too few for one batch of data.batch_size=10 streams of "
        "data.seq_len=10+1 tokens (needs at least 110); lower data.batch_size or data.seq_len")
    assert len(StreamBatches(np.zeros(110, np.uint8), batch_size=10, seq_len=10)) == 1  # the bound is exact


def test_bundled_text_round_trips_through_encode_and_decode():
    corpus = load_corpus("bundled")
    valid = corpus.split("valid")
    text = corpus.decode(valid[:2000])
    assert len(text) == 2000
    assert np.array_equal(corpus.encode(text), np.asarray(valid[:2000], dtype=np.int64))
    n = sum(len(corpus.split(s)) for s in ("train", "valid", "test"))
    assert len(corpus.split("train")) == n * 90 // 100 and len(valid) == n * 5 // 100
    with pytest.raises(UserError, match="not in the vocabulary"):
        corpus.encode("price: 5€")


def test_unseen_characters_map_to_unk_and_wide_vocabularies_use_uint16(tmp_path):
    # 300 distinct letters in training; the held-out tail holds one letter training never saw
    alphabet = "".join(chr(0x400 + k) for k in range(300))
    text = alphabet * 6 + "Ω" * 100 + alphabet[:100]  # train 1800 | valid 100 x Ω | test 100
    path = tmp_path / "wide.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.vocab_size == 301 and corpus.vocab[-1] == "<unk>" and corpus.unk_id == 300
    assert corpus.split("train").dtype == np.uint16
    held_out = np.concatenate([corpus.split("valid"), corpus.split("test")])
    assert int((held_out == 300).sum()) == 100  # every Ω
    assert corpus.encode("ΩЀ").tolist() == [300, 0]
    assert corpus.decode([0, 300, 1]) == "Ѐ\ufffdЁ"


def test_corpus_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcd" * 100)
    first = load_corpus(path)
    assert first.vocab == ["a", "b", "c", "d"]
    os.utime(path, ns=(1, 1))  # same content, new stamp: a new cache key, same tokens
    assert np.array_equal(load_corpus(path).split("train"), first.split("train"))
    path.write_text("xyz" * 100)
    assert load_corpus(path).vocab == ["x", "y", "z"]


def test_two_files_of_equal_name_size_and_time_get_their_own_arrays(tmp_path):
    """The cache is keyed on the resolved path and the content: neither a second corpus.txt with the same
    size and modification time nor the same file rewritten in place reads the other's tokens."""
    one, two = tmp_path / "a" / "corpus.txt", tmp_path / "b" / "corpus.txt"
    for path, text in ((one, "abcd" * 100), (two, "wxyz" * 100)):
        path.parent.mkdir()
        path.write_text(text)
        os.utime(path, ns=(10**18, 10**18))
    assert load_corpus(one).vocab == ["a", "b", "c", "d"]
    assert load_corpus(two).vocab == ["w", "x", "y", "z"]
    one.write_text("efgh" * 100)  # same size, then the old time stamp back
    os.utime(one, ns=(10**18, 10**18))
    assert load_corpus(one).vocab == ["e", "f", "g", "h"]


def test_bad_names_and_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown corpus 'ptbb'"):
        load_corpus("ptbb")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café ".encode("latin-1") * 10)
    with pytest.raises(UserError, match="latin1.txt: not UTF-8"):
        load_corpus(latin1)


def test_ninety_five_five_split_of_100m_symbols_is_90m_5m_5m():
    lazily = np.broadcast_to(np.uint8(0), (100_000_000,))  # no memory behind it
    assert [len(v) for v in split_by_fraction(lazily).values()] == [90_000_000, 5_000_000, 5_000_000]


def _zipped(folder: Path, member: str, payload: bytes) -> None:
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / f"{member}.zip", "w") as archive:
        archive.writestr(member, payload)


def test_enwik8_stand_in_is_split_90_5_5_by_bytes(tmp_path, monkeypatch):
    # a generated 4,000-byte stand-in with multi-byte UTF-8, not the real enwik8
    words = ["<page>", "Zürich", "naïve", "[[link]]", "東京", "&amp;", "\n"]
    payload = " ".join(words[k] for k in np.random.default_rng(0).integers(0, 7, 2000)).encode()[:4000]
    _zipped(tmp_path / "data" / "enwik8", "enwik8", payload)
    pin_stand_in(monkeypatch, "enwik8", tmp_path / "data" / "enwik8" / "enwik8.zip")
    corpus = load_corpus("enwik8", tmp_path / "data")
    assert corpus.kind == "bytes"
    assert len(list((tmp_path / "data" / "enwik8" / "derived").iterdir())) == 1  # writable: cached beside
    assert [len(corpus.split(s)) for s in ("train", "valid", "test")] == [3600, 200, 200]
    assert corpus.vocab_size == len(set(payload[:3600])) + (corpus.unk_id is not None)
    assert corpus.decode(corpus.split("train")) == payload[:3600].decode("utf-8", errors="replace")


def test_text8_stand_in_is_split_90_5_5_by_characters(tmp_path, monkeypatch):
    # a generated 2,000-character stand-in over text8's alphabet (a-z and space)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    payload = "".join(letters[np.random.default_rng(0).integers(0, 27, 2000)]).encode()
    _zipped(tmp_path / "data" / "text8", "text8", payload)
    pin_stand_in(monkeypatch, "text8", tmp_path / "data" / "text8" / "text8.zip")
    corpus = load_corpus("text8", tmp_path / "data")
    assert [len(corpus.split(s)) for s in ("train", "valid", "test")] == [1800, 100, 100]
    assert corpus.vocab == sorted(set(payload[:1800].decode()))
    assert corpus.decode(corpus.split("test")) == payload[1900:].decode()
