"""`fair-edge train` shows the whole fit, not just its steps: in a log (nohup, systemd) plain progress lines keep
coming through PatchCore's coreset (after its backbone pass; 354 s of a 498 s fit on 4 700 images printed nothing)
and LGFDR's feature pass before its first step, each phase with its own count and time left.

The lines' clock is faked (cli_common's ``time.monotonic``), and the tests wait for the timer thread's lines (an
event set after each tick), never for a time, so elapsed and left are exact on a loaded machine."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import fair_edge.cli.common as cli_common
import fair_edge.models.lgfdr.train as lgfdr_train
import fair_edge.models.patchcore.train as patchcore_train
from fair_edge.cli import app
from fair_edge.models.patchcore.model import PatchcoreSettings
from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.data import load_dataset

TICK_BOUND_S = 30.0   # a bound for a hung timer thread, not a timing claim


class Ticks:
    """Counts the plain progress display's timer ticks (``PlainProgress._print_all`` of unfinished tasks)."""

    def __init__(self, monkeypatch) -> None:
        self.count, self.changed = 0, threading.Condition()
        original = cli_common.PlainProgress._print_all

        def counted(progress, unfinished_only: bool) -> None:
            original(progress, unfinished_only)
            if unfinished_only:
                with self.changed:
                    self.count += 1
                    self.changed.notify_all()

        monkeypatch.setattr(cli_common.PlainProgress, "_print_all", counted)
        monkeypatch.setattr(cli_common, "PROGRESS_EVERY_S", 0.01)

    def wait_two(self) -> bool:
        """True once two more ticks have printed (the second one's lines were all made after this call)."""
        with self.changed:
            target = self.count + 2
            return self.changed.wait_for(lambda: self.count >= target, timeout=TICK_BOUND_S)


@pytest.fixture
def clock(monkeypatch):
    """The progress lines' clock, in seconds, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(cli_common, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def train(*args) -> str:
    result = CliRunner().invoke(app, ["train", *map(str, args), "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_plain_lines_keep_coming_through_the_patchcore_coreset(mvtec_dir, tmp_path, monkeypatch, clock):
    """16 images at 64 px: 1024 patches, a coreset of 768 rows. The coreset reports every 256 rows; at 256, 30 s
    (faked) after it began, the timer prints its line, with the coreset's own time left, while it still runs."""
    ticks, seen = Ticks(monkeypatch), []
    real_coreset = patchcore_train.greedy_coreset

    def slow_coreset(features, count, seed=0, on_progress=None, **kw):
        def at(done: int, total: int) -> None:
            if done == 256:
                clock[0] += 30.0
            if on_progress is not None:
                on_progress(done, total)
            if done == 256:
                seen.append(ticks.wait_two())

        return real_coreset(features, count, seed=seed, on_progress=at, **kw)

    monkeypatch.setattr(patchcore_train, "greedy_coreset", slow_coreset)
    output = train(mvtec_dir, "--model", "patchcore", "--image-size", 64, "--batch", 4, "--set", "coreset_ratio=0.75",
                   "--set", "embed_dim=16", "--out", tmp_path / "pc")
    assert "coreset 256/768 (33%) | 0:30 elapsed, about 1:00 left\n" in output, output   # a tick's line, mid-coreset
    assert "one pass in 4 batches of 4, then a coreset of 768 of its 1024 patch features" in output, output
    assert seen == [True], output
    lines = output.splitlines()
    assert "pass 4/4 (100%)" in output and lines.index("coreset 768/768 (100%) | 0:30 elapsed") > 0, output


def test_plain_lines_keep_coming_through_the_lgfdr_feature_pass(mvtec_dir, tmp_path, monkeypatch, clock):
    """LGFDR computes every image's features before its first step (27 s at the demo's size, no line): now a
    "features" task counts images, 4 a chunk here, 10 s (faked) each."""
    ticks, seen = Ticks(monkeypatch), []
    monkeypatch.setattr(lgfdr_train, "FEATURE_CHUNK", 4)
    real_features = lgfdr_train.LgfdrDetector.features
    calls = []

    def slow_features(detector, images):
        calls.append(len(images))
        if len(calls) == 2:   # the first chunk's 4 images are reported done
            seen.append(ticks.wait_two())
        clock[0] += 10.0
        return real_features(detector, images)

    monkeypatch.setattr(lgfdr_train.LgfdrDetector, "features", slow_features)
    output = train(mvtec_dir, "--model", "lgfdr", "--image-size", 32, "--steps", 1, "--batch", 4, "--out", tmp_path / "lg")
    assert "features 4/16 (25%) | 0:10 elapsed, about 0:30 left\n" in output, output
    assert seen == [True], output
    assert "features 16/16 (100%) | 0:40 elapsed" in output and "loading 16/16 (100%)" in output, output
    assert output.index("features 16/16") < output.index("training LGFDR on"), output


def test_patchcore_fitter_reports_each_phase(mvtec_dir, tmp_path):
    """on_progress(phase, done, total): the images read, then in run() the coreset's rows (every 256 and the last)
    and the neighbour table, each from 0 to its total."""
    reports = []
    model = ModelSpec("patchcore", PreprocessConfig(image_size=64), PatchcoreSettings(embed_dim=16, coreset_ratio=0.75))
    fitter = PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=8), tmp_path, torch.device("cpu"),
                             on_progress=lambda *report: reports.append(report))
    assert reports == [("loading", i, 16) for i in range(17)]
    fitter.run()
    coreset = [done for phase, done, total in reports if phase == "coreset" and total == 768]
    assert coreset[0] == 0 and {256, 512} <= set(coreset) and coreset[-1] == 768, reports
    assert reports[-2:] == [("neighbours", 0, 768), ("neighbours", 768, 768)], reports


def test_a_finished_task_stops_its_clock_and_the_ticks_say_the_work_goes_on(clock):
    """Between tasks (or after the last, before the command ends) a tick still prints: the last finished task's line,
    its clock stopped when it finished, and how long since."""
    out = Console(file=open("/dev/null", "w"), record=True, width=200)
    progress = cli_common.PlainProgress(out, (), every_s=10.0)
    task = progress.add_task("pass", total=4)
    clock[0] += 20.0
    progress.update(task, completed=4)
    clock[0] += 15.0
    progress._print_all(unfinished_only=True)
    assert out.export_text().splitlines() == ["pass 4/4 (100%) | 0:20 elapsed; still working, 0:15 since"]
    progress.add_task("loading", total=None)
    clock[0] += 10.0
    progress._print_all(unfinished_only=True)
    assert out.export_text().splitlines() == ["loading | 0:10 elapsed"]
