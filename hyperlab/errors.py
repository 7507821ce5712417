"""Errors a user can fix. The command line prints them in one line each and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a flag, a name): printed without a traceback, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration file is wrong: names the file, the key and what was expected."""

    def __init__(self, file: str | None, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems  # [(dotted key, what was expected / what is wrong)]
        where = f"{file}: " if file else ""
        lines = [f"{where}{key}: {msg}" if key else f"{where}{msg}" for key, msg in problems]
        super().__init__("\n".join(lines))
