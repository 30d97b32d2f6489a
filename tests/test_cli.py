import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rcic import cli


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for add in cli.COMMANDS:
        assert "  " + add.__name__.removeprefix("_add_").replace("_", "-") in out


@pytest.mark.parametrize(
    "command", [a.__name__.removeprefix("_add_").replace("_", "-") for a in cli.COMMANDS]
)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out.split()) > 30  # explains itself, not just a usage line


def test_check_passes_on_synthetic_and_reports_bad_input(tiny_screen, tmp_path, capsys):
    assert cli.main(["check", "--data", str(tiny_screen)]) == 0
    assert "[FAIL]" not in capsys.readouterr().out
    assert cli.main(["check", "--data", str(tmp_path)]) == 2
    assert "no metadata.csv" in capsys.readouterr().err


def test_console_script_runs(tiny_screen):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rcic.cli",
            "check",
            "--data",
            str(tiny_screen),
            "--images",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "0 problem file(s)" in out.stdout


def test_errors_are_one_line_with_traceback_under_verbose(tmp_path, capsys):
    bad = ["train", "--data", str(tmp_path)]  # no --store, no --out: an rcic error
    assert cli.main(bad) == 2
    err = capsys.readouterr().err
    assert "rcic train: error: train needs --store, --out" in err and "Traceback" not in err
    assert cli.main(["-v", *bad]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_is_not_hidden_as_a_message(monkeypatch):
    """Only rcic's own errors become one-line messages: anything else propagates."""
    from rcic.data import metadata

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(metadata, "load_metadata", broken)
    with pytest.raises(ValueError, match="internal bug"):
        cli.main(["check", "--data", "."])


def test_python_example_in_the_docs_runs(tmp_path, monkeypatch, capsys):
    """The "From Python" example of docs/plates.md, as written there."""
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "plates.md").read_text()
    section = page.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/plates.md", "exec"), {})
    out = capsys.readouterr().out
    assert "id_code" in out and "sirna" in out


def test_import_rcic_is_light_and_exposes_the_entry_points():
    code = (
        "import sys, rcic; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
        "import rcic as r; f = r.make_submission; print(r.__version__, f.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "make_submission" in out.stdout


def test_importing_the_command_line_imports_nothing_heavy():
    """Each command imports what it needs when it runs: `import rcic.cli` (every `rcic` start)
    loads neither numpy, pandas nor torch."""
    code = "import sys, rcic.cli; print(sorted({'numpy', 'pandas', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _list_options():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.option_strings and action.nargs in ("+", "*"):
                yield name, action


def test_every_list_option_adds_when_repeated():
    """`submit --logits A --logits B` ensembles A and B (a repeated flag once replaced the list)."""
    found = dict.fromkeys(
        ("submit --logits", "submit --weights", "profiles --table", "pseudo --fractions"), False
    )
    for command, action in _list_options():
        assert isinstance(action, argparse._ExtendAction), f"{command} {action.option_strings}"
        found[f"{command} {action.option_strings[0]}"] = True
    assert all(found.values()), found
    parse = cli.build_parser().parse_args
    args = parse(
        [
            "submit",
            "--logits",
            "a.npz",
            "--logits",
            "b.npz",
            "c.npz",
            "--data",
            "m",
            "--out",
            "s.csv",
            "--weights",
            "1",
            "--weights",
            "2",
            "3",
        ]
    )
    assert args.logits == [Path("a.npz"), Path("b.npz"), Path("c.npz")]
    assert args.weights == [1.0, 2.0, 3.0]
    pseudo = ["pseudo", "--run", "r", "--data", "d", "--store", "s", "--out", "o"]
    assert parse([*pseudo, "--fractions", "0.2", "--fractions", "0.5"]).fractions == [0.2, 0.5]
    assert parse(pseudo).fractions is None  # pseudo_rounds' own default


def test_version_is_the_installed_one(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"rcic {version('rcic')}"


def test_old_spellings_of_the_dataset_folder_work_with_a_warning(tiny_screen, tmp_path, caplog):
    """--data in every command; check's positional folder and submit's --metadata are kept for one
    release, each with a deprecation warning, and a command without any is refused by name."""
    from rcic.inference.logitsfile import write_logits

    assert cli.main(["check", str(tiny_screen)]) == 0
    assert "deprecated: use --data" in caplog.text
    caplog.clear()
    assert cli.main(["check", "--data", str(tiny_screen)]) == 0
    assert "deprecated" not in caplog.text
    test = pd.read_csv(tiny_screen / "test.csv")
    logits = write_logits(tmp_path / "l.npz", test.id_code, np.zeros((len(test), 1139), "float32"))
    outs = []
    for flag in ("--metadata", "--data"):
        out = tmp_path / flag.strip("-") / "s.csv"
        assert (
            cli.main(["submit", "--logits", str(logits), flag, str(tiny_screen), "--out", str(out)])
            == 0
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert "--metadata" in caplog.text and "deprecated" in caplog.text
    assert cli.main(["prepare", "--out", str(tmp_path / "store")]) == 2
    assert cli.main(["check", "--data", str(tiny_screen), str(tmp_path)]) == 2  # two folders
    caplog.clear()
    assert (
        cli.main(
            [
                "submit",
                "--logits",
                str(logits),
                "--data",
                str(tiny_screen),
                "--out",
                str(tmp_path / "x.csv"),
                "--stages",
                "ensemble,groups,assign",
            ]
        )
        == 0
    )
    assert "--stages assign is deprecated" in caplog.text
    # the spellings of 0.1.0: --mode logits is --combine mean, assign is hungarian
    base = ["submit", "--logits", str(logits), "--data", str(tiny_screen), "--calibrate", "off"]
    out = {k: tmp_path / f"{k}.csv" for k in ("old", "new")}
    caplog.clear()
    old = ["--mode", "logits", "--well-method", "assign", "--out", str(out["old"])]
    assert cli.main([*base, *old]) == 0
    assert "--mode logits is deprecated: use --combine mean" in caplog.text
    assert "'assign' is deprecated: use 'hungarian'" in caplog.text
    new = ["--combine", "mean", "--well-method", "hungarian", "--out", str(out["new"])]
    assert cli.main([*base, *new]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out["old"]), pd.read_csv(out["new"]))
