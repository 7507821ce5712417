"""``hyperlab --help`` and every command's help: a user's description, examples, a version, and a help
string for every option and argument (read off the real parser, then off the real command line)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from hyperlab import __version__
from hyperlab.cli import COMMANDS, build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_a_help_string():
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == set(COMMANDS)
    missing = []
    for name, command in {"hyperlab": parser, **commands}.items():
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_lists_every_option_with_its_help_and_the_version_prints():
    parser = build_parser()
    top = subprocess.run([sys.executable, "-m", "hyperlab.cli", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "maps the trade-offs of HyperNetworks" in top.stdout  # for users, not developers
    assert "examples:" in top.stdout and all(name in top.stdout for name in COMMANDS)
    for name, command in _subparsers(parser).items():
        shown = subprocess.run([sys.executable, "-m", "hyperlab.cli", name, "--help"], capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        text = " ".join(shown.stdout.split())
        for action in command._actions:
            if action.help in (None, argparse.SUPPRESS):
                continue
            for option in action.option_strings or [action.metavar or action.dest]:
                assert option in text, (name, option)
            assert " ".join(action.help.split()).split("%")[0][:40] in text, (name, action.help)
    version = subprocess.run([sys.executable, "-m", "hyperlab.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"hyperlab {__version__}"
