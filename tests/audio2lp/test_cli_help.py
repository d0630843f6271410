"""`--help` of every command and subcommand: found by walking the argparse tree of `audio2lp.cli.build_parser()`,
so new commands are covered without touching this file. Each help exits with 0, has a description, and lists
every option of its parser with a non-empty help text."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys

import pytest

from audio2lp import cli


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield action


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the parser and every sub-parser below it."""
    yield path, parser
    for action in _subparsers(parser):
        for name, sub in action.choices.items():
            yield from walk(sub, path + (name,))


def _extra_parsers() -> argparse.ArgumentParser:
    """Commands written for issue 7 that may not be registered in cli.PARSERS yet."""
    from audio2lp import doctor, server, weights_store

    p = argparse.ArgumentParser(prog="audio2lp", description="unregistered commands")
    sub = p.add_subparsers(dest="command")
    doctor.add_doctor_parser(sub)
    server.add_serve_parser(sub)
    wsub = sub.add_parser("weights", help="weights", description="weights").add_subparsers(dest="weights_command")
    weights_store.add_weights_download_parser(wsub)
    weights_store.add_weights_import_parser(wsub)
    return p


def _all_parsers():
    main = list(walk(cli.build_parser()))
    seen = {path for path, _ in main}
    extra = [(path, p) for path, p in walk(_extra_parsers()) if path and path not in seen
             and path != ("weights",)]
    return [(path, p, False) for path, p in main] + [(path, p, True) for path, p in extra]


PARSERS = _all_parsers()


def _help_text(parser: argparse.ArgumentParser, path: tuple[str, ...], extra: bool) -> tuple[int, str]:
    out = io.StringIO()
    code = None
    with contextlib.redirect_stdout(out):
        try:
            if extra:
                parser.parse_args(["--help"])
            else:
                cli.build_parser().parse_args([*path, "--help"])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue()


@pytest.mark.parametrize("path,parser,extra", PARSERS, ids=[" ".join(p) or "audio2lp" for p, _, _ in PARSERS])
def test_help(path, parser, extra):
    code, text = _help_text(parser, path, extra)
    assert code == 0
    assert parser.description and parser.description.strip(), f"`{' '.join(path)}` has no description"
    flat = " ".join(text.split())
    assert " ".join(parser.description.split())[:60] in flat
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # each subcommand's one-line help
                assert choice.help and choice.help.strip(), f"subcommand {choice.dest} of {path} has no help"
                assert choice.dest in text
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and str(action.help).strip(), f"`{' '.join(path)}`: {name} has no help text"
        for opt in action.option_strings:
            assert opt in text, f"`{' '.join(path)} --help` does not mention {opt}"
        if not action.option_strings:
            assert (action.metavar or action.dest) in text


def test_every_command_is_reached():
    paths = {p for p, _, _ in PARSERS}
    for expected in [("speak",), ("drive",), ("weights",), ("weights", "convert"), ("doctor",), ("serve",),
                     ("weights", "download"), ("weights", "import")]:
        assert expected in paths


def test_console_help_runs():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "audio2lp", "--help"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0 and "speak" in r.stdout and "drive" in r.stdout
