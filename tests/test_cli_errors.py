"""Command-line mistakes through the real entry point: one ``error:`` line plus the usage hint, exit code 2.

Each case runs ``osteoscope.cli.main`` in a subprocess, as the installed ``osteoscope`` script does, so the
exit code and everything printed are what a user sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAIN = "from osteoscope.cli import main; main()"


def run_cli(*args: str, script: str = MAIN) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize(
    ("args", "message", "usage"),
    [
        (["train", "--epoch", "2"], "No such option: --epoch", "osteoscope train"),
        (["evaluate"], "Missing argument 'run'", "osteoscope evaluate"),
        (["nosuch"], "No such command 'nosuch'", "osteoscope [OPTIONS] COMMAND"),
        (["train", "--epochs", "two"], "Invalid value for '--epochs'", "osteoscope train"),
        (["kfold", "--k", "1.5"], "Invalid value for '--k'", "osteoscope kfold"),
        (["localizer", "train", "--out", "x.pt"], "Missing option '--data'", "osteoscope localizer train"),
        (["masks", "ct"], "Missing argument 'dataset'", "osteoscope masks ct"),
        (["evaluate", "a", "b"], "unexpected extra argument", "osteoscope evaluate"),
    ],
)
def test_command_line_mistakes_are_one_error_line_and_the_usage(args: list[str], message: str, usage: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[1].startswith("Usage: ") and usage in lines[1] and "--help" in lines[1]


@pytest.mark.parametrize("args", [[], ["localizer"]])
def test_a_bare_command_group_prints_its_help(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Usage: osteoscope" in result.stdout + result.stderr
    assert "train" in result.stdout + result.stderr


def test_help_exits_zero() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0 and "--epochs" in result.stdout and "Traceback" not in result.stderr


def test_a_user_error_inside_a_command_is_one_line() -> None:
    result = run_cli("phantom", "no-such-task", "--out", "unused")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown task 'no-such-task'")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("reader", "message"),
    [("radiologist=0.8", "give NAME=SENSITIVITY,SPECIFICITY"), ("radiologist=0.8,1.4", "proportions in [0, 1]")],
)
def test_a_bad_reader_point_is_one_line(reader: str, message: str) -> None:
    study = REPO / "configs" / "studies" / "avnfh-ct.yaml"
    result = run_cli("study", str(study), "--reader", reader, "--out", "unused")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr


def test_an_internal_error_keeps_its_traceback(tmp_path: Path) -> None:
    """A bug (here a RuntimeError raised by the phantom generator) is not dressed up as a user error."""
    script = (
        "import osteoscope.phantoms as p\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('a bug in the generator')\n"
        "p.generate_phantom = broken\n" + MAIN
    )
    result = run_cli("phantom", "onfh-xray", "--out", str(tmp_path / "data"), "--n", "2", script=script)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "a bug in the generator" in result.stderr
    assert "error: " not in result.stderr
