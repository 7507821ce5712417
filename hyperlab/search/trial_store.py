"""Each trial's latest checkpoint on the search's storage, by Optuna trial number: the one thing a
trial needs to continue, wherever and whenever it restarts (a retry on another node, a resumed driver,
a trial adopted after a crash).

Layout under the experiment (a local folder or ``s3://...``, through pyarrow's filesystems)::

    trials/00003/checkpoint-40/{model.pt, trainer.pt, config.yaml}
    trials/00003/LATEST            # "checkpoint-40": written last, in one piece

A new checkpoint is uploaded whole, then ``LATEST`` names it, then older ones are deleted: a reader
always finds a complete checkpoint, and a trial keeps one (its final one, once it is done).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.fs

from hyperlab.search import storage

LATEST = "LATEST"


class TrialCheckpoints:
    def __init__(self, experiment_uri: str):
        self.root = f"{experiment_uri.rstrip('/')}/trials"

    def folder(self, number: int) -> str:
        return f"{self.root}/{number:05d}"

    def latest_name(self, number: int) -> str | None:
        data = storage.read_bytes(f"{self.folder(number)}/{LATEST}")
        return data.decode().strip() if data else None

    def fetch_latest(self, number: int, into: Path, files: tuple[str, ...] | None = None) -> Path | None:
        """Download trial ``number``'s latest checkpoint (or only its ``files``) into ``into/<its name>``;
        None when it has none."""
        name = self.latest_name(number)
        if name is None:
            return None
        target = into / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        fs, path = storage.filesystem(f"{self.folder(number)}/{name}")
        local = pyarrow.fs.LocalFileSystem()
        for source, destination in ([(path, str(target))] if files is None else
                                    [(f"{path}/{file}", str(target / file)) for file in files]):
            pyarrow.fs.copy_files(source, destination, source_filesystem=fs, destination_filesystem=local)
        return target

    def publish(self, number: int, checkpoint: Path) -> None:
        """Upload a checkpoint folder as trial ``number``'s latest; delete the ones before it."""
        fs, folder = storage.filesystem(self.folder(number))
        fs.create_dir(f"{folder}/{checkpoint.name}", recursive=True)
        pyarrow.fs.copy_files(str(checkpoint), f"{folder}/{checkpoint.name}",
                              source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
        storage.write_bytes(f"{self.folder(number)}/{LATEST}", checkpoint.name.encode())
        for info in fs.get_file_info(pyarrow.fs.FileSelector(folder)):
            if info.type == pyarrow.fs.FileType.Directory and info.base_name != checkpoint.name:
                fs.delete_dir(info.path)

    def checkpoint_uri(self, number: int) -> str | None:
        """Where trial ``number``'s latest checkpoint lies (for the record), None when it has none."""
        name = self.latest_name(number)
        return f"{self.folder(number)}/{name}" if name else None
