"""What `--help` and the README tell a new user holds: defaults shown, one name per setting, the
station file's fields listed from the settings classes, `-v` anywhere, plain progress lines in logs."""

import re
import time
from pathlib import Path
from types import SimpleNamespace

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
from fair_edge.models.fair.train import TrainConfig

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
    from fair_edge.models.lgfdr.train import LgfdrTrainConfig

    text = help_text("train")
    flat = " ".join(text.split())  # --lr and --epochs depend on the model family: each default is named
    for flag, value in (("--width", FairSettings.width), ("--batch", TrainConfig.batch),
                        ("--save-every", TrainConfig.save_every)):
        assert re.search(rf"{flag} .*\[default: {re.escape(str(value))}\]", text), flag
    assert f"--lr <float> FAIR / LGFDR: learning rate (Adam as the paper; the demo uses 1e-3 for its short run) " \
           f"[default: fair {TrainConfig.lr:g}, lgfdr {LgfdrTrainConfig.lr:g}]." in flat, "--lr"
    assert f"[default: fair {TrainConfig.epochs}, lgfdr {LgfdrTrainConfig.epochs}]" in flat, "--epochs"
    assert "[default: runs/train-{tag}, the tag naming the family's settings: fair: w128, lgfdr: " \
           "lgfdr-efficientnet_lite0, patchcore: patchcore-efficientnet_lite0]" in flat and "frequency-index units" in flat


def test_train_offers_width_once_from_the_model_settings():
    """FAIR's width is a model setting only (TrainConfig has none): one --width, FairSettings' text and default."""
    from dataclasses import fields

    flat = " ".join(help_text("train").split())
    assert flat.count("--width") == 1 and "width" not in {f.name for f in fields(TrainConfig)}
    assert (f"--width <int> FAIR: UNet base width c: 32 (fastest), 64 or 128 (the paper's) (one of 32, 64, 128) "
            f"[default: {FairSettings.width}].") in flat


def test_help_names_every_registered_family_and_says_what_the_commands_do():
    """The family lists come from the registry (the old texts said 'train FAIR anomaly detectors', 'FAIR (default)
    or LGFDR', 'LGFDR by default' for a PatchCore demo, 'UNet' for every family's --fp16 / --int8)."""
    from fair_edge.demo.config import DEMO_MODEL
    from fair_edge.models.registry import FAMILIES, TRAIN_FAMILY

    titles = [impl.title for impl in FAMILIES.values()]
    root = " ".join(help_text().split())
    assert "train anomaly detectors (" + ", ".join(titles[:-1]) + " and " + titles[-1] + ") from normal images" in root
    train = " ".join(help_text("train").split())
    assert f"{FAMILIES[TRAIN_FAMILY].title} (default)" in train and all(t in train.split("(--model)")[0] for t in titles)
    demo = " ".join(help_text("demo").split())
    assert f"({FAMILIES[DEMO_MODEL].title} by default, or " in demo and "LGFDR by default" not in demo
    assert all(f"{key} (" in demo for key in FAMILIES)
    build = " ".join(help_text("build").split())
    assert "UNet in float16" not in build and "UNet convs" not in build and "bundle-w{width}" not in build
    for key, impl in FAMILIES.items():
        assert f"{impl.tag(impl.default_settings())} ({key})" in build, key
    assert "The model's network in float16 (" + ", ".join(titles[:-1]) + " or " + titles[-1] + ")" in build
    evaluate = " ".join(help_text("eval").split())
    assert "'elpv' / 'elpv:mono' / 'elpv:poly'" in evaluate


def test_readme_exit_codes_name_every_code_the_station_returns():
    from fair_edge.station import run as station_run

    readme = " ".join(README.read_text().split())
    paragraph = readme.split("**Exit codes** of `fair-edge run`:")[1].split("###")[0]
    codes = {v for k, v in vars(station_run).items() if k.startswith("EXIT_")}
    assert codes == {0, 3, 4}
    for code in sorted(codes | {2}):
        assert f"{code} " in paragraph and f"; {code} " in paragraph or paragraph.startswith(f" {code} "), code
    assert "4 rejects were due but a reject sink delivered none of them" in paragraph


def test_station_reference_has_every_section_of_the_station_file():
    from dataclasses import fields

    sections = yaml.safe_load(station_reference())
    expected = {f.name for f in fields(StationConfig)} - {"threshold", "roi", "source_file"} | {"decision"}
    assert set(sections) == expected and {"console", "mqtt"} <= set(sections)


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


def test_plain_progress_lines_every_interval(monkeypatch):
    """The timer thread prints a line every interval while a step is slow (no update comes), and a last line at
    the end. The test waits for the lines (two per step), never for a time; the lines' clock is faked
    (cli_common's ``time.monotonic``: 12.5 s a step), so elapsed and left are exact however slow the machine."""
    clock = [1000.0]
    monkeypatch.setattr(cli_common, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    out = Console(file=open("/dev/null", "w"), record=True, width=200)
    progress = cli_common.PlainProgress(out, ("loss",), every_s=0.05)

    def shown(prefix: str) -> int:
        return sum(line.startswith(prefix) for line in out.export_text(clear=False).splitlines())

    with progress:
        task = progress.add_task("train", total=100, loss="")
        for step in range(1, 6):
            clock[0] += 12.5
            progress.update(task, completed=step * 10, loss=f"loss {1 / step:.4f}")
            deadline = time.monotonic() + 10   # a bound for a hung timer thread, not a timing claim
            while shown(f"train {step * 10}/100 ") < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert shown(f"train {step * 10}/100 ") >= 2, out.export_text(clear=False)
    lines = out.export_text().splitlines()
    assert len(lines) >= 11, lines   # two (or more) per step while it lasted, plus the last one
    assert lines[-1] == "train 50/100 (50%) loss 0.2000 | 1:02 elapsed, about 1:02 left", lines[-1]


def test_train_in_a_log_prints_progress_lines(mvtec_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_common, "PROGRESS_EVERY_S", 0.01)
    result = CliRunner().invoke(app, ["train", str(mvtec_dir), "--width", "32", "--image-size", "32", "--steps", "3",
                                      "--batch", "4", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"^train 3/3 \(100%\) loss \d\.\d{4} [\d.]+ img/s \| 0:\d\d elapsed$", result.output, re.M), result.output
