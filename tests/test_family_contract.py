"""The family-neutral training contract: a third family defined here (its module + one registry entry,
nothing else) trains, builds and runs through the commands, and its settings and training settings are
`fair-edge train` options that reach its trainer; FAIR and LGFDR train the same weights through the contract
as through their trainers built by hand with the settings of before."""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fair_edge.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fair_edge.training.data import DatasetSplit, load_dataset
from fair_edge.training.pixels import load_images
from fair_edge.errors import ConfigError
from fair_edge.models.family import ModelFamily
from fair_edge.models.family import ColourInput
from fair_edge.models.registry import FAMILIES, ModelSpec
from fair_edge.models.tensors import COLOUR, TensorSpec
from fair_edge.models.training_contract import FamilyTrainer, config_from_options, settings_overrides
from fair_edge.preprocess import PreprocessConfig

from conftest import LGFDR_MODEL_KW, PATCHCORE_MODEL_KW


# ----------------------------------------------------------------------------- the third family
@dataclass(frozen=True)
class MeanColourSettings:
    """window: side of the box filter over the per-pixel colour distance, pixels."""

    window: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MeanColourSettings":
        return cls(int(data["window"]))


class MeanColourDetector(nn.Module):
    """anomaly_map = box-filtered |colour - mean normal colour| summed over RGB; score = its max."""

    def __init__(self, settings: MeanColourSettings, size: int) -> None:
        super().__init__()
        self.window = settings.window
        self.register_buffer("mean", torch.zeros(1, 3, size, size))

    def forward(self, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = F.avg_pool2d((colour - self.mean).abs().sum(1, keepdim=True), self.window, 1, self.window // 2,
                            count_include_pad=False)
        return amap, amap.flatten(1).amax(1)


class MeanColourFamily(ModelFamily):
    key = "meancolour"
    title = "MeanColour"
    summary = "distance to the mean normal image (a test family)"
    cli_help = "test family"
    training_module = __name__
    network_scope = ("/",)
    int8_scope = ("/nothing/",)

    def default_settings(self) -> MeanColourSettings:
        return MeanColourSettings()

    def settings_from_dict(self, data: Mapping[str, Any]) -> MeanColourSettings:
        return MeanColourSettings.from_dict(data)

    def inputs(self, preprocess: PreprocessConfig) -> tuple[TensorSpec, ...]:
        return (TensorSpec(COLOUR, 3, preprocess.image_size, "resized RGB frame in [0, 1]"),)

    def input_maker(self, preprocess: PreprocessConfig) -> nn.Module:
        return ColourInput()

    def build(self, settings: MeanColourSettings, preprocess: PreprocessConfig) -> nn.Module:
        return MeanColourDetector(settings, preprocess.image_size)

    def half(self, module: nn.Module) -> nn.Module:
        return module

    def describe(self, settings: MeanColourSettings) -> str:
        return f"MeanColour window {settings.window}"

    def tag(self, settings: MeanColourSettings) -> str:
        return f"meancolour-{settings.window}"


@dataclass(frozen=True)
class MeanFit:
    """batch: images per step of the mean. seed: unused. margin: added to the mean image (a flag test)."""

    batch: int = 4
    seed: int = 0
    margin: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MeanFit":
        return cls(**data)


class MeanFitter:
    fits_once = True
    use_amp = False
    keeps_resume_state = True   # run() writes last.pt beside final.pt
    stop_signals: tuple[int, ...] = ()   # one pass: no step boundary to stop at

    def __init__(self, split: DatasetSplit, model: ModelSpec, cfg: MeanFit, out_dir: Path, device) -> None:
        self.model, self.cfg, self.out = model, cfg, Path(out_dir)
        self.images = torch.from_numpy(load_images(split.train, model.preprocess.image_size)[0])
        self.batch, self.step, self.run_info = cfg.batch, 0, {}
        self.total_steps = -(-len(self.images) // cfg.batch)

    def resume(self) -> None:
        self.step = load_checkpoint(self.out / "last.pt").train_state["step"]

    def run(self, on_step=None) -> Path:
        for self.step in range(1, self.total_steps + 1):
            if on_step:
                on_step(self.step, self.total_steps, float("nan"), 1.0)
        module = self.model.build()
        module.mean.copy_(self.images.mean(0, keepdim=True) + self.cfg.margin)
        state = {"step": self.step, "config": self.cfg.to_dict(), "run": self.run_info}
        save_checkpoint(self.out / "last.pt", Checkpoint(self.model, module.state_dict(), {}, state))
        return save_checkpoint(self.out / "final.pt", Checkpoint(self.model, module.state_dict(), {"fit": "mean"}))


def default_train_config() -> MeanFit:
    return MeanFit()


def make_trainer(split, model, cfg, out_dir, device) -> MeanFitter:
    return MeanFitter(split, model, cfg, out_dir, device)


@pytest.fixture()
def third_family(monkeypatch):
    monkeypatch.setitem(FAMILIES, MeanColourFamily.key, MeanColourFamily())  # the one registry line


def _invoke(*args):
    return CliRunner().invoke(__import__("fair_edge.cli", fromlist=["app"]).app, [str(a) for a in args],
                              env={"COLUMNS": "200"})


def test_a_third_family_trains_builds_and_runs_through_the_commands(third_family, mvtec_dir, tmp_path):
    r = _invoke("train", mvtec_dir, "--model", "meancolour", "--image-size", 32, "--batch", 8, "--set", "window=5",
                "--out", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "fitting MeanColour window 5 on cpu: 16 images, one pass in 2 batches of 8" in r.output
    ckpt = load_checkpoint(tmp_path / "run" / "final.pt")
    assert ckpt.family == "meancolour" and ckpt.settings.window == 5
    r = _invoke("train", "--resume", "--out", tmp_path / "run", "--set", "window=3")
    assert r.exit_code == 2 and "--set window=3 (saved: 5)" in r.output, r.output
    r = _invoke("train", mvtec_dir, "--model", "meancolour", "--image-size", 32, "--steps", 5, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--steps does not apply to MeanColour window 3's training" in r.output, r.output
    assert "it is a setting of --model fair, --model lgfdr" in r.output
    r = _invoke("build", tmp_path / "run" / "final.pt", "--normal", mvtec_dir / "test" / "good", "--out", tmp_path / "b")
    assert r.exit_code == 0 and "MeanColour window 5" in r.output, r.output
    r = _invoke("run", "--bundle", tmp_path / "b", "--source", mvtec_dir / "test" / "blob", "--fps", 5,
                "--backend", "onnxruntime", "--out", tmp_path / "station")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "station" / "summary.json").read_text())
    verdicts = [json.loads(v) for v in (tmp_path / "station" / "verdicts.jsonl").read_text().splitlines()]
    assert summary["inspected"] == len(verdicts) == 6 and summary["inference_errors"] == 0
    assert sum(v["ng"] for v in verdicts) >= 5  # red blobs on a gray plate, far from the mean image


def test_a_third_family_is_a_tune_candidate(third_family):
    from fair_edge.training.tune_candidates import Candidate, default_candidates

    names = [c.name for c in default_candidates(Candidate("base", PreprocessConfig(image_size=64), 32, 10), 64)]
    assert names[:4] == ["base", "lgfdr", "patchcore", "meancolour"]
    assert Candidate("x", PreprocessConfig(image_size=64), 32, 10, family="meancolour").train_command("D") == \
        "fair-edge train D --model meancolour --image-size 64"


def test_a_third_familys_settings_are_train_options_that_reach_its_trainer(third_family, mvtec_dir, tmp_path):
    text = " ".join(_invoke("train", "--help").output.split())
    assert "--window <int> MeanColour: side of the box filter over the per-pixel colour distance, pixels " \
           "[default: 3]." in text, text
    assert "--margin <float> MeanColour: added to the mean image (a flag test) [default: 0]." in text
    assert "--batch <int> Images per step [default: fair 8, lgfdr 8, patchcore 8, meancolour 4]." in text
    r = _invoke("train", mvtec_dir, "--model", "meancolour", "--image-size", 32, "--window", 5, "--margin", 0.25,
                "--out", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 0 and "fitting MeanColour window 5 on cpu: 16 images, one pass in 4 batches of 4" in r.output, \
        r.output
    assert load_checkpoint(tmp_path / "run" / "final.pt").settings.window == 5
    assert load_checkpoint(tmp_path / "run" / "last.pt").train_state["config"] == {"batch": 4, "seed": 0, "margin": 0.25}
    r = _invoke("train", "--resume", "--out", tmp_path / "run", "--margin", 0.5)
    assert r.exit_code == 2 and "--margin 0.5 (saved: 0.25)" in r.output, r.output
    r = _invoke("train", mvtec_dir, "--model", "fair", "--window", 5, "--out", tmp_path / "fair")
    assert r.exit_code == 2 and "--window does not apply to FAIR width 128's training or model settings; it is a " \
        "setting of --model meancolour" in " ".join(r.output.split()), r.output
    # without --model, the one family that has every setting typed is trained, and the command says so
    r = _invoke("train", mvtec_dir, "--window", 5, "--image-size", 32, "--out", tmp_path / "inferred", "--device", "cpu")
    assert r.exit_code == 0 and "training MeanColour: the settings typed are its own (--model meancolour)" in r.output
    assert load_checkpoint(tmp_path / "inferred" / "final.pt").settings.window == 5


def test_every_familys_trainer_has_what_the_commands_set_on_it(third_family, mvtec_dir, tmp_path):
    """`train` sets ``stop_signals`` on a trainer and `tune` sets ``keeps_resume_state``, yet FamilyTrainer listed
    neither: a family could leave them out and the protocol would not say. Each registered family's trainer (the
    third one's too) has every member of the protocol, those two included."""
    assert {"keeps_resume_state", "stop_signals"} <= set(typing.get_type_hints(FamilyTrainer))
    small = {"fair": {"width": 8}, "lgfdr": LGFDR_MODEL_KW, "patchcore": PATCHCORE_MODEL_KW}
    for key, impl in FAMILIES.items():
        model = ModelSpec(key, PreprocessConfig(image_size=32), replace(impl.default_settings(), **small.get(key, {})))
        trainer = impl.training().make_trainer(load_dataset(mvtec_dir), model, impl.training().default_train_config(),
                                               tmp_path / key, torch.device("cpu"))
        assert isinstance(trainer, FamilyTrainer), key


def test_train_options_cover_every_scalar_setting_of_every_family():
    from fair_edge.cli.train import settings_flags
    from fair_edge.models.training_contract import FLAG_TYPES

    flags = {f.name: f for f in settings_flags()}
    for key, impl in FAMILIES.items():
        for settings in (impl.default_settings(), impl.training().default_train_config()):
            for name, value in asdict(settings).items():
                if isinstance(value, FLAG_TYPES) or (value is None and name == "steps"):
                    assert key in flags[name].families, (key, name)
                    assert dict(flags[name].defaults)[key] == value, (key, name)
    assert flags["noise_std"].aliases == ("--feature-noise",) and flags["width"].choices == (32, 64, 128)


def test_a_setting_that_clashes_is_refused_when_the_options_are_made():
    from fair_edge.models.training_contract import setting_flags

    @dataclass(frozen=True)
    class Clash:
        """width: a width that is text."""

        width: str = "wide"

        def to_dict(self) -> dict:
            return asdict(self)

    class ClashFamily(MeanColourFamily):
        key = "clash"

        def default_settings(self):
            return Clash()

    with pytest.raises(ConfigError, match="setting 'width' is a str in the clash family and a int in the fair family"):
        setting_flags({**FAMILIES, "clash": ClashFamily()})
    with pytest.raises(ConfigError, match="the meancolour family's setting 'window' has the name of a `fair-edge train` option"):
        setting_flags({"meancolour": MeanColourFamily()}, reserved=("window",))


def test_a_setting_lives_in_one_place_the_model_settings_or_the_training_settings():
    """A family whose training settings repeat a model setting (as FAIR's TrainConfig once repeated its width)
    is refused when the options are made; no registered family does."""
    from fair_edge.models.training_contract import config_fields, setting_flags

    @dataclass(frozen=True)
    class Twice:
        """window: box filter side. batch: images per step, here too."""

        window: int = 3
        batch: int = 4

        def to_dict(self) -> dict:
            return asdict(self)

    class TwiceFamily(MeanColourFamily):
        key = "twice"

        def default_settings(self):
            return Twice()

    with pytest.raises(ConfigError, match=r"the twice family has 'batch' in both its model settings \(Twice\) and "
                                          r"its training settings \(MeanFit\); a setting lives in one place"):
        setting_flags({"twice": TwiceFamily()})
    for key, impl in FAMILIES.items():
        assert not set(impl.setting_names()) & set(config_fields(impl.training().default_train_config())), key
    assert [f.families for f in setting_flags(FAMILIES) if f.name == "width"] == [("fair",)]


def test_options_and_settings_refusals():
    from fair_edge.models.fair.train import TrainConfig

    assert config_from_options(TrainConfig(), {"lr": 1e-3, "steps": None, "nope": 1}).lr == 1e-3
    with pytest.raises(ConfigError, match="--lr does not apply to X's training, whose settings are batch, seed"):
        config_from_options(MeanFit(), {"lr": 1e-3}, given=("lr",), family="X")
    impl = FAMILIES["patchcore"]
    assert settings_overrides(impl, ["reweight=no", "coreset_ratio=0.05", "bank_max=300"]) == \
        {"reweight": False, "coreset_ratio": 0.05, "bank_max": 300}
    with pytest.raises(ConfigError, match="Did you mean 'neighbours'"):
        settings_overrides(impl, ["neighbors=3"])
    with pytest.raises(ConfigError, match="expected a int"):
        settings_overrides(impl, ["bank_max=lots"])
    with pytest.raises(ConfigError, match="takes KEY=VALUE"):
        settings_overrides(impl, ["reweight"])
    fair = FAMILIES["fair"]  # a field of a nested group: GROUP.FIELD, the group's other fields kept
    got = settings_overrides(fair, ["scoring.k_color=0", "scoring.smooth=11"])
    assert got == {"scoring": {**fair.default_settings().scoring.to_dict(), "k_color": 0.0, "smooth": 11}}
    assert fair.settings_from_options(got).scoring.gms_c == fair.default_settings().scoring.gms_c
    with pytest.raises(ConfigError, match=r"scoring is a group of fair settings; set one of them, e.g. --set scoring\.k_color"):
        settings_overrides(fair, ["scoring=0"])
    with pytest.raises(ConfigError, match="Did you mean 'k_color'"):
        settings_overrides(fair, ["scoring.kcolor=0"])
    with pytest.raises(ConfigError, match="width has no fields"):
        settings_overrides(fair, ["width.x=1"])


# ----------------------------------------------------------------------------- FAIR and LGFDR unchanged
@pytest.mark.parametrize("family", ["fair", "lgfdr"])
def test_the_command_trains_the_same_weights_as_the_trainer_with_the_old_settings(family, mvtec_dir, tmp_path):
    """Same seed -> same weights, and the command's settings are those it built before the contract."""
    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.fair.synthesis import SynthesisConfig
    from fair_edge.models.lgfdr.model import LgfdrSettings
    from fair_edge.models.lgfdr.train import LgfdrTrainConfig
    from fair_edge.models.fair.train import TrainConfig

    pre = PreprocessConfig(image_size=32)
    old = {"fair": (TrainConfig(amp=True, synthesis=SynthesisConfig(texture_source="self")), FairSettings(width=32),
                    ["--width", 32]),
           "lgfdr": (LgfdrTrainConfig(lr=1e-3, epochs=100), LgfdrSettings(), [])}
    base, settings, flags = old[family]
    cfg = replace(base, batch=4, steps=2, save_every=500, seed=3)
    model = ModelSpec(family, pre, settings)
    by_hand = model.impl.training().make_trainer(load_dataset(mvtec_dir), model, cfg, tmp_path / "hand",
                                                 torch.device("cpu")).run()
    weights = []
    for run in ("a", "b"):
        r = _invoke("train", mvtec_dir, "--model", family, *flags, "--image-size", 32, "--steps", 2, "--batch", 4,
                    "--seed", 3, "--out", tmp_path / run, "--device", "cpu")
        assert r.exit_code == 0, r.output
        weights.append(load_checkpoint(tmp_path / run / "final.pt").state_dict)
    ref = load_checkpoint(by_hand).state_dict
    for state in weights:
        assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)
    saved = load_checkpoint(tmp_path / "a" / "last.pt").train_state["config"]
    assert saved == load_checkpoint(tmp_path / "hand" / "last.pt").train_state["config"] and saved["seed"] == 3


def test_nproc_relaunch_writes_repeated_set_options_back():
    import typer

    from fair_edge.cli import app
    from fair_edge.training.ddp import command_args

    train = typer.main.get_command(app).commands["train"]
    ctx = train.make_context("train", ["DATA", "--model", "patchcore", "--set", "a=1", "--set", "b=2", "--nproc", "2"])
    args = command_args(ctx, skip=("nproc",))
    i = args.index("--set")
    assert args[i:i + 4] == ["--set", "a=1", "--set", "b=2"] and args.count("--set") == 2
    ctx = train.make_context("train", ["DATA"])
    assert "--set" not in command_args(ctx)  # no --set given: nothing written (the relaunch used to pass '[]')


def test_width_is_asked_of_the_family_not_read_by_attribute():
    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.patchcore.model import PatchcoreSettings

    fair, lgfdr, patchcore = FAMILIES["fair"], FAMILIES["lgfdr"], FAMILIES["patchcore"]
    assert fair.settings_conflicts(FairSettings(width=8), {"width": 32}) == ["--width 32"]
    assert fair.settings_conflicts(FairSettings(width=32), {"width": 32, "backbone": None}) == []
    assert lgfdr.settings_conflicts(lgfdr.default_settings(), {"width": 32}) == ["--width 32"]
    assert fair.settings_flags(FairSettings(width=32)) == ["--width 32"] and fair.settings_flags(FairSettings()) == []
    assert patchcore.settings_flags(PatchcoreSettings(reweight=False, bank_max=300, taps=(0, 1))) == \
        ["--bank-max 300", "--no-reweight"]  # a tuple is no flag (--set)
    r = _invoke("build", "--model", "lgfdr", "--width", 32)
    assert r.exit_code == 2 and "--width is not a setting of LGFDR (--model lgfdr)" in " ".join(r.output.split()), r.output
    r = _invoke("bench", "--synthetic-model", "lgfdr", "--synthetic-width", 32)
    assert r.exit_code == 2 and "the lgfdr family has none" in r.output, r.output
