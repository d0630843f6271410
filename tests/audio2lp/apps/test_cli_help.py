"""`--help` of every command and subcommand of `audio2lp` and `audio2lp-train`: found by walking their argparse
trees, so new commands are covered without touching this file. Each help exits with 0, has a description, and lists
every option of its parser with a non-empty help text."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys

import pytest

from audio2lp.apps import cli


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


def _all_parsers():
    """Every parser of `audio2lp` and of `audio2lp-train`."""
    from training.cli import build_parser as training_parser

    return [(("audio2lp",) + path, p) for path, p in walk(cli.build_parser())] + \
        [(("audio2lp-train",) + path, p) for path, p in walk(training_parser())]


PARSERS = _all_parsers()


def _help_text(path: tuple[str, ...]) -> tuple[int, str]:
    from training.cli import build_parser as training_parser

    out = io.StringIO()
    code = None
    build = cli.build_parser if path[0] == "audio2lp" else training_parser
    with contextlib.redirect_stdout(out):
        try:
            build().parse_args([*path[1:], "--help"])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue()


@pytest.mark.parametrize("path,parser", PARSERS, ids=[" ".join(p) for p, _ in PARSERS])
def test_help(path, parser):
    code, text = _help_text(path)
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


EXPECTED = {
    "audio2lp": [("speak",), ("motion",), ("drive",), ("edit",), ("export", "onnx"), ("weights", "convert"),
                 ("weights", "download"), ("weights", "import"),
                 ("doctor",), ("serve",), ("app",)],
    "audio2lp-train": [("prepare",), ("train",), ("lipsync",), ("lipsync-data",), ("default-motion",),
                       ("measure-motion",)],
}


def _argv(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """A command line that selects ``path``: its required positionals and options filled with placeholders."""
    argv = list(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        n = 2 if action.nargs in ("+", 2) else 1
        if not action.option_strings:
            argv += ["x"] * n
        elif action.required:
            argv += [action.option_strings[0]] + ["x"] * n
    return argv


def unreached(build, expected: list[tuple[str, ...]]) -> list[str]:
    """The problems that keep a command from running: an expected command the parser of ``build()`` lacks, or a
    command (every leaf of the tree) whose command line does not select a run function of its own."""
    found = dict(walk(build()))
    problems = [f"`{' '.join(path)}` is not a command" for path in expected if path not in found]
    for path, parser in found.items():
        if not path or any(True for _ in _subparsers(parser)):
            continue
        run = parser.get_default("run")
        if not callable(run):
            problems.append(f"`{' '.join(path)}` has no run function")
            continue
        args = build().parse_args(_argv(path, parser))
        if args.run is not run:
            problems.append(f"`{' '.join(path)}` runs {args.run!r}, not its own {run!r}")
    return problems


@pytest.mark.parametrize("program", sorted(EXPECTED))
def test_every_command_is_reached(program):
    """Each command of both programs is registered, and its command line selects its own run function."""
    from training.cli import build_parser as training_parser

    build = cli.build_parser if program == "audio2lp" else training_parser
    assert unreached(build, EXPECTED[program]) == []
    if program == "audio2lp":
        paths = {p[1:] for p, _ in PARSERS if p[0] == "audio2lp"}
        assert ("prepare",) not in paths and ("train",) not in paths  # training is audio2lp-train's


def test_the_reach_check_fails_on_an_unregistered_or_unwired_command(monkeypatch):
    """`test_every_command_is_reached` can fail: a command left out of cli.PARSERS, or one that sets no run
    function, is reported."""
    from audio2lp.apps import doctor, server

    without_doctor = [p for p in cli.PARSERS if p is not doctor.add_doctor_parser]
    monkeypatch.setattr(cli, "PARSERS", without_doctor)
    assert unreached(cli.build_parser, EXPECTED["audio2lp"]) == ["`doctor` is not a command"]
    monkeypatch.undo()

    def serve_without_run(sub):
        sub.add_parser("serve", help="serve", description="serve")

    monkeypatch.setattr(cli, "PARSERS", [serve_without_run if p is server.add_serve_parser else p
                                         for p in cli.PARSERS])
    assert unreached(cli.build_parser, EXPECTED["audio2lp"]) == ["`serve` has no run function"]


def test_console_help_runs():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "audio2lp", "--help"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0 and "speak" in r.stdout and "drive" in r.stdout
    r = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0 and "prepare" in r.stdout and "lipsync" in r.stdout
