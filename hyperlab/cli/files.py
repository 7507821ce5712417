"""Output paths given on the command line, checked before anything is written."""

from __future__ import annotations

from pathlib import Path

from hyperlab.errors import UserError


def check_out_folder(out: Path, flag: str, must_be_empty_of_checkpoints: bool = False) -> Path:
    """``out`` as a folder to write into: it may exist (as a folder) or be created in an existing one.
    With ``must_be_empty_of_checkpoints`` a folder holding another run's checkpoints is refused too
    (a new run would delete them)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: is a file; expected a folder")
    if not out.exists() and not out.parent.is_dir():
        raise UserError(f"{flag} {out}: its parent folder {out.parent} does not exist")
    if must_be_empty_of_checkpoints:
        from hyperlab.training.checkpoint import checkpoints

        found = checkpoints(out)
        if found:
            raise UserError(f"{flag} {out} holds checkpoints of an earlier run ({', '.join(p.name for p in found)}), "
                            "which this run would delete; choose an empty folder or remove them")
    return out


def check_out_file(out: Path, flag: str, suffixes: tuple[str, ...]) -> Path:
    """``out`` as a file to write: one of ``suffixes``, in an existing folder, not a folder itself."""
    if out.suffix not in suffixes:
        raise UserError(f"{flag} {out}: expected a {' or '.join(suffixes)} file name, "
                        f"got {out.suffix or 'no'} extension")
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a folder; expected a file name")
    if not out.parent.is_dir():
        raise UserError(f"{flag} {out}: its folder {out.parent} does not exist")
    return out
