"""Download-and-verify: missing-file errors, sha256 checks, atomic placement, pinned digests."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from hyperlab.data import RemoteFile, ensure_file, resolve_data_dir, sources
from hyperlab.data.download import sha256_of
from hyperlab.errors import UserError

UNREACHABLE = "http://127.0.0.1:9/x"  # discard port: refused at once, no network needed


def test_a_missing_file_names_itself_its_folder_and_its_url(tmp_path):
    folder = tmp_path / "data" / "ptb"
    remote = RemoteFile("ptb.char.train.txt", (UNREACHABLE,), "0" * 64)
    with pytest.raises(UserError) as err:
        ensure_file(remote, folder)
    message = str(err.value)
    assert "ptb.char.train.txt is missing from " + str(folder) in message
    assert UNREACHABLE in message and str(folder / "ptb.char.train.txt") in message
    assert list(tmp_path.iterdir()) == []  # no partial file and no folder it made left behind


def test_a_checksum_mismatch_is_rejected_and_leaves_nothing(tmp_path):
    source = tmp_path / "upstream" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(b"tampered bytes")
    folder = tmp_path / "data"
    remote = RemoteFile("blob.bin", (source.as_uri(),), hashlib.sha256(b"original bytes").hexdigest())
    with pytest.raises(UserError, match="sha256 mismatch for blob.bin") as err:
        ensure_file(remote, folder)
    assert "discarded" in str(err.value)
    assert not folder.exists()


def test_a_verified_download_is_kept_and_then_used_without_the_network(tmp_path):
    payload = b"\x00\x01 hyper" * 1000
    source = tmp_path / "upstream.bin"
    source.write_bytes(payload)
    remote = RemoteFile("blob.bin", (UNREACHABLE, source.as_uri()), hashlib.sha256(payload).hexdigest())
    path = ensure_file(remote, tmp_path / "data")  # the first mirror fails, the second serves
    assert path.read_bytes() == payload and sorted(os.listdir(path.parent)) == ["blob.bin"]
    offline = RemoteFile("blob.bin", (UNREACHABLE,), remote.sha256)
    assert ensure_file(offline, tmp_path / "data") == path


def test_a_present_file_is_verified_before_it_is_used(tmp_path):
    """A file already in the data folder that does not match its sha256 (tampered with, truncated) is
    refused and left as it is; the error says how to get the real one."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "blob.bin").write_bytes(b"tampered bytes")
    remote = RemoteFile("blob.bin", (UNREACHABLE,), hashlib.sha256(b"original bytes").hexdigest())
    with pytest.raises(UserError, match=r"blob\.bin does not match the published sha256.*not read.*Remove it"):
        ensure_file(remote, folder)
    assert (folder / "blob.bin").read_bytes() == b"tampered bytes"


def test_a_read_only_data_dir_is_reported_and_left_untouched(tmp_path):
    readonly = tmp_path / "shared"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        with pytest.raises(UserError, match="read-only"):
            ensure_file(RemoteFile("a.txt", (UNREACHABLE,), "0" * 64), readonly / "enwik8")
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERLAB_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("HYPERLAB_DATA_DIR")
    assert resolve_data_dir() == Path.home() / ".cache" / "hyperlab" / "data"


def _all_remote_files() -> list[RemoteFile]:
    return [*sources.PTB_CHAR.values(), *sources.MNIST.values(), sources.TINY_SHAKESPEARE,
            sources.ENWIK8, sources.TEXT8, sources.CIFAR10]


def test_every_source_pins_a_sha256_and_a_web_url():
    for remote in _all_remote_files():
        assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256), remote.name
        assert remote.urls and all(u.startswith(("https://", "http://")) for u in remote.urls)


@pytest.mark.parametrize("folder, remotes", [
    ("ptb", list(sources.PTB_CHAR.values())),
    ("mnist", list(sources.MNIST.values())),
    ("tinyshakespeare", [sources.TINY_SHAKESPEARE]),
])
def test_pinned_digests_match_the_shared_copies(shared_data, folder, remotes):
    for remote in remotes:
        assert sha256_of(shared_data(folder) / folder / remote.name) == remote.sha256
