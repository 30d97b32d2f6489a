"""The manual cannot drift from the code: every command line in README.md and docs/cli.md runs on
the tiny screen (placeholders filled in, training cut to 1 epoch; a line that needs the full demo
or several processes is checked with --help)."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from rcic import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/cli.md")
HELP_ONLY = ("demo",)  # minutes on the demo screen: test_demo_report.py runs its quick form


def _command_lines(page: str) -> list[list[str]]:
    """The `rcic ...` lines of a page's code blocks, one block after another."""
    text = (ROOT / page).read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    out = []
    for block in blocks:
        lines = [line.split("#")[0].strip() for line in block.splitlines()]
        out.append([line for line in lines if line.startswith("rcic ")])
    return [b for b in out if b]


def _fill(line: str, where: dict[str, Path]) -> list[str]:
    """A documented line as arguments: optional parts in [...] dropped (a training line gets
    epochs=1 in their place), placeholders replaced by folders of this test, the demo preset by
    the tiny one."""
    line = re.sub(r"\[[^\]]*\]", "", line).replace("--preset demo", "--preset tiny")
    args = shlex.split(line)[1:]
    if args[0] == "train":
        args.append("epochs=1")
    out = []
    for a in args:
        for name, path in where.items():
            a = re.sub(rf"\b{name}\b", str(path), a)
        out.append(a)
    return out


def test_every_documented_command_runs(tmp_path, monkeypatch):
    """Both pages in turn, on one tiny screen: a line the first page already ran (the same
    arguments once filled in) is not run again; the chain of commands shares its run folder across
    pages, other blocks get their own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    done = set()
    for page in PAGES:
        for k, block in enumerate(_command_lines(page)):
            here = tmp_path / (
                "chain" if block[0].startswith("rcic synth") else f"{Path(page).stem}-{k}"
            )
            here.mkdir(exist_ok=True)
            where = {
                "RUN_OR_DEMO_DIR": here / "run",
                "DATA": tmp_path / "data",
                "STORE": tmp_path / "store",
                "CELLS": here / "cells",
                "ALIGNED": here / "aligned",
                "RUN": here / "run",
            }
            for line in block:
                args = _fill(line, where)
                if tuple(args) in done:
                    continue
                done.add(tuple(args))
                if args[0] in HELP_ONLY:
                    with pytest.raises(SystemExit) as stop:
                        cli.main([args[0], "--help"])
                    assert stop.value.code == 0, line
                    continue
                if args[0] == "synth" and (tmp_path / "data").exists():
                    shutil.rmtree(tmp_path / "data")
                assert cli.main(args) == 0, f"{page}: {line}\n-> {args}"


def test_every_option_is_listed_once():
    """docs/cli.md's option table names every option the commands take (hidden old spellings
    aside), each in one row, with the commands that take it."""
    import argparse

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    taken: dict[str, set[str]] = {}
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.help != argparse.SUPPRESS:
                for flag in action.option_strings:
                    if flag.startswith("--") and flag != "--help":
                        taken.setdefault(flag, set()).add(name)
    rows = re.findall(r"^\| `(--[\w-]+)` \| ([^|]*) \|", (ROOT / "docs/cli.md").read_text(), re.M)
    listed = [flag for flag, _ in rows]
    assert sorted(listed) == sorted(taken), set(listed) ^ set(taken)
    assert len(listed) == len(set(listed))
    for flag, commands in rows:
        assert set(commands.split(", ")) == taken[flag], flag
