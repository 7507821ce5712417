"""Files beside a search's Ray experiment (the early-stopping state, the trials' checkpoints), on a local
disk or on shared storage such as ``s3://`` alike, through pyarrow's filesystems (the ones Ray uses)."""

from __future__ import annotations

import os

import pyarrow.fs


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """pyarrow's filesystem for ``uri`` (a local path or ``s3://...``; an S3-compatible server through
    ``$AWS_ENDPOINT_URL``) and the path in it."""
    return pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))



def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def read_bytes(uri: str) -> bytes | None:
    """The file's bytes, None if there is no such file."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.readall()
    except FileNotFoundError:
        return None


def delete(uri: str) -> None:
    """Remove a file if it is there."""
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def write_bytes(uri: str, data: bytes) -> None:
    """Write the whole file at once: a local file through a temporary name and a rename, an object
    store in one upload, so that a reader never sees half of it."""
    fs, path = filesystem(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)
