"""SIGTERM to `fair-edge train` (kill, timeout, systemctl stop, a batch scheduler) stops it as Ctrl-C does: the step in
flight finishes, last.pt is saved at that step boundary, the resume command is printed, exit 143 (128 + SIGTERM).

It killed the run at once (exit 143, no word, no last.pt: every step since the last --save-every was lost). The
in-process tests send the signal only where a handler is installed, so on code without one they fail instead of
ending pytest; one child process shows the real exit status."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]  # the child imports this tree's fair_edge, not an installed one
FAMILY_ARGS = {"fair": ["--model", "fair", "--width", "32"],
               "lgfdr": ["--model", "lgfdr", "--backbone-weights", "random", "--hidden", "16", "--heads", "2",
                         "--layers", "1"]}
TRAINER_CLASS = {"fair": "fair_edge.models.fair.train.Trainer", "lgfdr": "fair_edge.models.lgfdr.train.LgfdrTrainer"}


def train_argv(data: Path, family: str, out: Path, steps: int = 4) -> list[str]:
    return ["train", str(data), *FAMILY_ARGS[family], "--image-size", "32", "--steps", str(steps), "--batch", "4",
            "--save-every", "1000", "--device", "cpu", "--out", str(out)]


def sigterm_if_handled(unhandled: list[str]) -> None:
    """Send SIGTERM to this process if a Python handler will take it; else note that it would have killed pytest."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        unhandled.append("SIGTERM had its default action (the process would have been killed)")
        return
    signal.raise_signal(signal.SIGTERM)


def sigterm_during_step(monkeypatch, family: str, at_step: int) -> list[str]:
    """Make the trainer of ``family`` receive SIGTERM during step ``at_step`` (1-based), while the step is in flight.
    Returns the list in which a SIGTERM that had no handler is noted (it is then not sent)."""
    module_name, class_name = TRAINER_CLASS[family].rsplit(".", 1)
    trainer_class = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    real_step, unhandled = trainer_class.train_step, []

    def step_then_sigterm(self, step: int) -> float:
        loss = real_step(self, step)
        if step + 1 == at_step:
            sigterm_if_handled(unhandled)  # the handler runs here, before the step (and its bookkeeping) ends
        return loss

    monkeypatch.setattr(trainer_class, "train_step", step_then_sigterm)
    return unhandled


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("family", ["fair", "lgfdr"])
def test_sigterm_saves_last_pt_at_the_step_boundary_and_prints_the_resume_command(mvtec_dir, tmp_path, monkeypatch,
                                                                                    family):
    out = tmp_path / "run"
    unhandled = sigterm_during_step(monkeypatch, family, at_step=2)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(app, train_argv(mvtec_dir, family, out), env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert not unhandled, unhandled
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert f"stopped by SIGTERM after step 2; state saved to {out / 'last.pt'}." in text
    assert f"Resume with: fair-edge train --resume --out {out}" in text and "Traceback" not in text
    assert load_checkpoint(out / "last.pt").train_state["step"] == 2 and not (out / "final.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the run put the previous handler back

    monkeypatch.undo()
    command = shlex.split(result.output.split("Resume with:")[1].strip().splitlines()[0])
    resumed = CliRunner().invoke(app, command[1:], env={"COLUMNS": "400"})  # the printed command, as given
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed {out / 'last.pt'} at step 2 of 4" in " ".join(resumed.output.split())
    assert load_checkpoint(out / "final.pt").data_summary["steps"] == 4


def test_a_stop_signal_requests_one_stop_and_a_second_sigterm_is_ignored():
    """The first SIGINT or SIGTERM asks for the stop (naming the signal); a second SIGTERM (systemd and torchrun may
    both send one) does not cut the save short, a second Ctrl-C still stops at once; the handlers are put back."""
    from fair_edge.training.loop import STOP_SIGNALS, signals_request_stop

    asked, before = [], {s: signal.getsignal(s) for s in STOP_SIGNALS}
    unhandled: list[str] = []
    with signals_request_stop(asked.append, STOP_SIGNALS):
        sigterm_if_handled(unhandled)
        sigterm_if_handled(unhandled)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert not unhandled and asked == [signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_sigterm_during_a_patchcore_fit_says_nothing_was_saved(mvtec_dir, tmp_path, monkeypatch):
    """A PatchCore fit has no step to save at: SIGTERM ends it as Ctrl-C does, saying so, with exit 143 (it was
    killed without a word)."""
    from fair_edge.models.patchcore.train import PatchcoreFitter

    real_features, unhandled = PatchcoreFitter.features, []

    def features_then_sigterm(self, on_step):
        def on_batch(*args):
            on_step(*args)
            sigterm_if_handled(unhandled)
        return real_features(self, on_batch)

    monkeypatch.setattr(PatchcoreFitter, "features", features_then_sigterm)
    result = CliRunner().invoke(app, ["train", str(mvtec_dir), "--model", "patchcore", "--image-size", "32",
                                      "--set", "embed_dim=16", "--device", "cpu", "--out", str(tmp_path / "run")],
                                env={"COLUMNS": "400"})
    assert not unhandled, unhandled
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert ("stopped by SIGTERM: PatchCore fits in one pass; nothing was saved; run the same command again"
            in " ".join(result.output.split()))
    assert not (tmp_path / "run" / "final.pt").exists()


SIGTERM_TRAIN = r'''
"""`fair-edge train ARGS` (FAIR) that receives SIGTERM during its 2nd step, as from `kill` or `systemctl stop`."""
import os
import signal
import sys

from fair_edge.cli import app
from fair_edge.models.fair.train import Trainer

real_step = Trainer.train_step


def step_then_sigterm(self, step):
    loss = real_step(self, step)
    if step == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return loss


Trainer.train_step = step_then_sigterm
app(sys.argv[1:], prog_name="fair-edge")
'''


def test_sigterm_to_a_training_process_exits_143_with_last_pt_and_the_resume_line(mvtec_dir, tmp_path):
    script, out = tmp_path / "train_child.py", tmp_path / "run"
    script.write_text(SIGTERM_TRAIN)
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    r = subprocess.run([sys.executable, str(script), *train_argv(mvtec_dir, "fair", out)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "COLUMNS": "400", "PYTHONPATH": path,
                                                    "OMP_NUM_THREADS": "1"})
    assert r.returncode == 128 + signal.SIGTERM, (r.returncode, r.stderr)
    assert f"Resume with: fair-edge train --resume --out {out}" in r.stderr and "Traceback" not in r.stderr
    assert load_checkpoint(out / "last.pt").train_state["step"] == 2
