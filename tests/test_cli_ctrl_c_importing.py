"""A Ctrl-C while `fair-edge` is still importing its libraries (torch and the rest: seconds, before any command's
own Ctrl-C handling is in place) printed a Python traceback: the console script's ``from fair_edge.cli import main``
imported the whole command line. Now importing ``fair_edge.cli`` imports nothing heavy, and ``main`` imports the
rest itself: a KeyboardInterrupt there exits 130 with one line naming the command. Once the command runs, a
KeyboardInterrupt is its own to handle, as before. No real signal is sent: the import raises it."""

from __future__ import annotations

import builtins
import subprocess
import sys

import pytest

import fair_edge.cli

STOPPED_TRAIN = "error: stopped (Ctrl-C) before `fair-edge train` started; nothing was written\n"

# the console script's own two steps, in a fresh interpreter where importing torch is interrupted
CONSOLE_SCRIPT = """
import sys

class CtrlCOnTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlCOnTorch())
sys.argv = ["fair-edge", "-v", "train", "data"]
from fair_edge.cli import main
sys.exit(main())
"""


def interrupted_import(monkeypatch, module: str) -> None:
    """Importing ``module`` (``from module import ...``) raises KeyboardInterrupt, as a Ctrl-C there does."""
    real_import = builtins.__import__

    def ctrl_c_on(name, *args, **kwargs):
        if name == module:
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", ctrl_c_on)


def test_ctrl_c_while_importing_the_command_line_exits_130_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fair-edge", "train", "--help"])
    interrupted_import(monkeypatch, "fair_edge.cli.root")
    with pytest.raises(SystemExit) as stopped:
        fair_edge.cli.main()
    assert stopped.value.code == 130   # 128 + SIGINT, as a command stopped by Ctrl-C exits
    assert capsys.readouterr().err == STOPPED_TRAIN


@pytest.mark.parametrize("args, named", [([], "fair-edge"), (["--verbose"], "fair-edge"),
                                         (["-v", "demo", "--out", "x"], "`fair-edge demo`")])
def test_the_line_names_the_command_that_did_not_start(args, named):
    assert fair_edge.cli.stopped_importing(args) == f"stopped (Ctrl-C) before {named} started; nothing was written"


def test_a_ctrl_c_once_the_command_runs_is_the_commands_own(monkeypatch, capsys):
    """After the imports nothing changes: the command's KeyboardInterrupt goes on as raised (its own handling,
    typer's and Python's), without the import line."""
    import fair_edge.cli.root as root

    def command_interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(root, "main", command_interrupted)
    monkeypatch.setattr(sys, "argv", ["fair-edge", "train", "--help"])
    with pytest.raises(KeyboardInterrupt):
        fair_edge.cli.main()
    assert capsys.readouterr().err == ""


def test_the_console_script_interrupted_while_importing_torch_prints_no_traceback():
    """Before: "Traceback (most recent call last): ... KeyboardInterrupt" and the exit of a process killed by SIGINT."""
    done = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr, done.stdout) == (130, STOPPED_TRAIN, "")


def test_importing_the_package_imports_no_library_and_app_is_still_there():
    """What the console script imports first stays light (the window a Ctrl-C gets a traceback in); ``app`` is
    imported on first use."""
    code = ("import sys, fair_edge.cli as c; heavy = {'typer', 'torch', 'numpy', 'fair_edge.cli.root'} & "
            "set(sys.modules); print(sorted(heavy)); print(type(c.app).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split("\n")[:2] == ["[]", "Typer"], (done.stdout, done.stderr)
