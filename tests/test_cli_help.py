"""What `--help` and the README tell a new user holds: defaults shown, one name per setting, the
station file's fields listed from the settings classes, `-v` anywhere, plain progress lines in logs."""

import re
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import fair_edge.cli.common as cli_common
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE
from fair_edge.cli import app
from fair_edge.models.fair.family import FairSettings
from fair_edge.station.config import StationConfig
from fair_edge.station.doc import station_reference
from fair_edge.training.train import TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ("train", "eval", "build", "run", "bench", "demo", "install-service")


def help_text(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_defaults_and_no_type_noise_on_flags(command):
    text = help_text(command)
    assert "[default: " in text or command == "run"  # run's defaults are the station file's, listed below
    assert "<bool>" not in text
    assert not re.search(r"\s\.\s*$", text, re.M), "a help line ends in ' .': bracketed text was eaten"


def test_train_help_defaults_come_from_the_settings():
    text = help_text("train")
    flat = " ".join(text.split())  # --lr and --epochs depend on the model family: each default is named
    for flag, value in (("--width", FairSettings.width), ("--batch", TrainConfig.batch),
                        ("--save-every", TrainConfig.save_every)):
        assert re.search(rf"{flag} .*\[default: {re.escape(str(value))}\]", text), flag
    assert re.search(rf"--lr .*LGFDR: AdamW .*\[default: {re.escape(f'{TrainConfig.lr:g}')}\]", flat), "--lr"
    assert re.search(rf"--epochs .*LGFDR 100\) \[default: {TrainConfig.epochs}\]", flat), "--epochs"
    assert "(LGFDR: runs/train-lgfdr-{backbone}) [default: runs/train-w{width}]" in flat and "frequency-index units" in flat


def test_one_name_and_one_default_for_the_false_reject_rate():
    for command in ("eval", "build"):
        text = " ".join(help_text(command).split())
        assert "--false-reject-rate <float>" in text and f"[default: {DEFAULT_FALSE_REJECT_RATE}]" in text, command
        assert "--frr" not in text
    assert "0.5 %" in " ".join(help_text("demo").split())  # the demo says why it asks for another rate


def test_old_frr_flag_still_works(trained, mvtec_dir, tmp_path):
    final, _ = trained
    result = CliRunner().invoke(app, ["eval", str(final), str(mvtec_dir), "--frr", "0.1", "--device", "cpu",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "deprecated" in result.output
    assert re.search(r"^eval 12/12 \(100%\) \| \d:\d\d elapsed$", result.output, re.M), result.output  # a log line


def test_bench_synthetic_width_is_checked_like_train():
    result = CliRunner().invoke(app, ["bench", "--synthetic-width", "48"])
    assert result.exit_code == 2 and "--synthetic-width must be one of 32, 64, 128; found 48" in result.output


def test_verbose_after_the_command():
    for args in (["-v", "bench", "--synthetic-width", "48"], ["bench", "--synthetic-width", "48", "-v"],
                 ["bench", "-v", "--synthetic-width", "48"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "found 48" in result.output, (args, result.output)


def test_readme_lists_every_command():
    text = README.read_text()
    for command in COMMANDS:
        assert f"| `fair-edge {command}" in text, command


def test_station_reference_is_complete_and_loads_back_to_the_defaults():
    assert StationConfig.from_dict(yaml.safe_load(station_reference())) == StationConfig()
    run_help = help_text("run")
    for line in station_reference().splitlines():
        assert line.strip() in run_help, line
    readme = README.read_text()
    block = readme.split("<!-- station-reference:start -->")[1].split("<!-- station-reference:end -->")[0]
    assert block.strip() == f"```yaml\n{station_reference()}\n```"


def test_readme_station_example_loads_and_needs_no_missing_file():
    readme = README.read_text()
    example = readme.split("### The station file")[1].split("```yaml\n")[1].split("```")[0]
    cfg = StationConfig.from_dict(yaml.safe_load(example))
    assert cfg.roi is None and cfg.bundle == Path("runs/bundle-w32-int8")


def test_readme_installs_cpu_torch_before_anything_else():
    readme = README.read_text()
    cpu = readme.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert cpu < readme.index('pip install -e ".[demo,plc]" && fair-edge demo') < readme.index(
        'pip install -e ".[test]" && pytest -q')


def test_exit_codes_documented_alike():
    readme = " ".join(README.read_text().split())
    run_help = " ".join(help_text("run").split())
    for text in ("2 the station could not start", "a camera that cannot be opened", "3 the station faulted"):
        assert text in readme and text in run_help, text


def test_plain_progress_lines_every_interval():
    out = Console(file=open("/dev/null", "w"), record=True, width=200)
    progress = cli_common.PlainProgress(out, ("loss",), every_s=0.05)
    with progress:
        task = progress.add_task("train", total=100, loss="")
        for step in range(1, 6):
            progress.update(task, completed=step * 10, loss=f"loss {1 / step:.4f}")
            time.sleep(0.06)
    lines = out.export_text().splitlines()
    assert len(lines) >= 4, lines  # about one per 0.05 s, plus the last one
    assert re.fullmatch(r"train 50/100 \(50%\) loss 0\.2000 \| 0:00 elapsed, about 0:0\d left", lines[-1]), lines[-1]


def test_train_in_a_log_prints_progress_lines(mvtec_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_common, "PROGRESS_EVERY_S", 0.01)
    result = CliRunner().invoke(app, ["train", str(mvtec_dir), "--width", "32", "--image-size", "32", "--steps", "3",
                                      "--batch", "4", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"^train 3/3 \(100%\) loss \d\.\d{4} [\d.]+ img/s \| 0:\d\d elapsed$", result.output, re.M), result.output
