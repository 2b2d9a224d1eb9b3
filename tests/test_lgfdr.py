"""LGFDR on the CPU at tiny sizes: backbone weight checks, the pretrained file, a short train + eval,
checkpoint and bundle round trips, ONNX parity (FP32), FP16 casts, INT8 Q/DQ only in the network scope,
and the CPU backends on the bundle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import LGFDR_MODEL_KW
from export_fixtures import make_frames

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.training.evaluate import evaluate
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import load_bundle
from fair_edge.checksums import sha256_file
from fair_edge.errors import ConfigError
from fair_edge.models.backbones import BACKBONES
from fair_edge.models.lgfdr.model import LgfdrSettings
from fair_edge.models.lgfdr.train import LgfdrTrainConfig
from fair_edge.models.weights import WeightsError, load_backbone_weights, package_weights_file
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge.runtime.selection import select_backend

SETTINGS = LgfdrSettings(**LGFDR_MODEL_KW)   # the model of the session fixtures lgfdr_run / lgfdr_bundles (conftest)
MODEL = ModelSpec("lgfdr", PreprocessConfig(image_size=32), SETTINGS)


# ----------------------------------------------------------------------------- weight files
def _resnet18_file(tmp_path, name="resnet18-custom.pth"):
    torch.manual_seed(0)
    path = tmp_path / name
    torch.save(BACKBONES["resnet18"].build().state_dict(), path)
    return path


def test_user_weight_file_checked_by_sha256_and_architecture(tmp_path):
    path = _resnet18_file(tmp_path)
    digest = sha256_file(path)
    module = BACKBONES["resnet18"].build()
    with pytest.raises(WeightsError, match=f"SHA-256 {digest}.*not a published resnet18 weight file.*--backbone-sha256 {digest}"):
        load_backbone_weights(module, "resnet18", path)
    with pytest.raises(WeightsError, match=f"has SHA-256 {digest}; expected 0000"):
        load_backbone_weights(module, "resnet18", path, "0" * 64)
    source = load_backbone_weights(module, "resnet18", path, digest)
    assert source.sha256 == digest and torch.equal(module.conv1.weight, torch.load(path)["conv1.weight"])
    wide = BACKBONES["wide_resnet50_2"].build()
    with pytest.raises(WeightsError, match="does not fit a wide_resnet50_2 backbone.*shapes"):
        load_backbone_weights(wide, "wide_resnet50_2", path, digest)
    with pytest.raises(WeightsError, match="needs its ImageNet weight file"):
        load_backbone_weights(module, "resnet18", None)
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone_weights(module, "resnet18", tmp_path / "missing.pth")


def test_foreign_keys_and_non_weight_files_refused(tmp_path):
    state = BACKBONES["resnet18"].build().state_dict()
    state["decoder.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected \['decoder.weight'\]"):
        load_backbone_weights(BACKBONES["resnet18"].build(), "resnet18", tmp_path / "extra.pth", sha256_file(tmp_path / "extra.pth"))
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(WeightsError, match="not a PyTorch weight file"):
        load_backbone_weights(BACKBONES["resnet18"].build(), "resnet18", tmp_path / "notes.pth", sha256_file(tmp_path / "notes.pth"))


def test_packaged_efficientnet_lite0_weights_load_and_match_their_published_hash():
    path = package_weights_file("efficientnet_lite0")
    module = BACKBONES["efficientnet_lite0"].build()
    source = load_backbone_weights(module, "efficientnet_lite0", None)
    assert source.path == path and source.sha256.startswith("57934424")
    assert not torch.equal(module._conv_stem.weight, BACKBONES["efficientnet_lite0"].build()._conv_stem.weight)
    assert load_backbone_weights(module, "efficientnet_lite0", "random").path is None


def test_settings_validate():
    with pytest.raises(ConfigError, match="backbone must be one of efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet18, wide_resnet50_2; "
                                          "found 'vgg16'"):
        LgfdrSettings(backbone="vgg16")
    with pytest.raises(ConfigError, match=r"hidden must be >= 8 and divisible by heads \(4\); found 30\."):
        LgfdrSettings(hidden=30, heads=4)
    assert ModelSpec.from_dict(MODEL.to_dict()) == MODEL and MODEL.input_names == ("colour",)


@pytest.mark.parametrize("heads, layers", [(0, 2), (4, 0), (0, 0)])
def test_zero_heads_or_layers_is_a_config_error_not_a_division_by_zero(heads, layers):
    """`train --model lgfdr --heads 0` divided hidden by heads before checking heads (ZeroDivisionError)."""
    with pytest.raises(ConfigError, match=rf"heads and layers must be >= 1; found heads={heads}, layers={layers}\."):
        LgfdrSettings(heads=heads, layers=layers)


# ----------------------------------------------------------------------------- train, eval, bundle
def test_training_lowers_the_loss_and_writes_a_self_contained_checkpoint(lgfdr_run):
    final, out = lgfdr_run
    losses = [float(line.split(",")[2]) for line in (out / "loss.csv").read_text().splitlines()[1:]]
    assert losses[-1] < losses[0]
    ckpt = load_checkpoint(final)
    assert ckpt.model == MODEL and ckpt.train_state is None
    assert any(k.startswith("backbone.") for k in ckpt.state_dict) and ckpt.state_dict["feature_std"].shape == (176,)
    assert ckpt.data_summary["backbone_weights"]["sha256"].startswith("57934424")


def test_eval_separates_the_synthetic_defects(lgfdr_run, mvtec_dir, tmp_path):
    final, _ = lgfdr_run
    result = evaluate(final, load_dataset(mvtec_dir), tmp_path)
    print(f"LGFDR tiny: {result}")
    assert result["image_auroc"] >= 0.9 and result["pixel_auroc"] > 0.8
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "roc.png").is_file()


def test_int8_bundle_keeps_the_ranking(lgfdr_bundles):
    """(Round trip, parity and threshold of every bundle: tests/test_family_checks.py, for every family.)"""
    assert lgfdr_bundles["int8"].delta.score_spearman > 0.8


def test_one_graph_with_colour_input_and_fp16_casts(lgfdr_bundles):
    g = onnx.load(str(lgfdr_bundles["fp16"].bundle.onnx_path))
    assert [i.name for i in g.graph.input] == ["colour"] and [o.name for o in g.graph.output] == ["anomaly_map", "score"]
    inits = {t.name: t for t in g.graph.initializer}
    convs = [n for n in g.graph.node if n.op_type == "Conv" and n.name.startswith(("/backbone/", "/local_tower/"))]
    assert convs and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16 for n in convs)
    inits.update({n.output[0]: n.attribute[0].t for n in g.graph.node if n.op_type == "Constant"})
    smoothing = [n for n in g.graph.node if n.op_type == "Conv" and n.name.startswith("/scorer/")]
    assert smoothing and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in smoothing)


def test_int8_qdq_only_on_the_towers_and_srh(lgfdr_bundles):
    g = onnx.load(str(lgfdr_bundles["int8"].bundle.onnx_path))
    scope = ("/local_tower/", "/global_tower/", "/srh/")
    readers = {n.name: [c for c in g.graph.node if n.output[0] in c.input] for n in g.graph.node if n.op_type == "DequantizeLinear"}
    quantised_convs = {c.name for cs in readers.values() for c in cs if c.op_type == "Conv"}
    assert quantised_convs and all(name.startswith(scope) for name in quantised_convs)
    tower_convs = {n.name for n in g.graph.node if n.op_type == "Conv" and n.name.startswith("/local_tower/")}
    assert tower_convs <= quantised_convs
    backbone_convs = {n.name for n in g.graph.node if n.op_type == "Conv" and n.name.startswith("/backbone/")}
    assert backbone_convs and not backbone_convs & quantised_convs  # the frozen backbone stays float
    # a node outside the scope reads a dequantised tensor only where a convolution inside it reads the same
    # tensor (the feature taps, the towers' input): the scope decides what is quantised, nothing else is
    for cs in readers.values():
        if any(not c.name.startswith(scope) for c in cs):
            assert any(c.name.startswith(scope) and c.op_type == "Conv" for c in cs), [c.name for c in cs]
    scorer_convs = [n for n in g.graph.node if n.op_type == "Conv" and n.name.startswith("/scorer/")]
    assert scorer_convs and not {n.name for n in scorer_convs} & quantised_convs


# ----------------------------------------------------------------------------- the command line
def test_cli_train_eval_build_run_and_bench(mvtec_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from fair_edge.cli import app

    runner, out = CliRunner(), tmp_path / "run"
    invoke = lambda *args: runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})  # noqa: E731
    r = invoke("train", mvtec_dir, "--model", "lgfdr", "--image-size", "32", "--steps", "3", "--batch", "4",
               "--feature-noise", "0.3", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "training LGFDR on efficientnet_lite0" in r.output and load_checkpoint(out / "final.pt").settings.noise_std == 0.3
    r = invoke("eval", out / "final.pt", mvtec_dir, "--device", "cpu")
    assert r.exit_code == 0 and "image_auroc" in r.output, r.output
    r = invoke("build", out / "final.pt", "--int8", "--calib", mvtec_dir / "train" / "good", "--calib-images", "8",
               "--out", tmp_path / "bundle")
    assert r.exit_code == 0, r.output
    assert "LGFDR on efficientnet_lite0" in r.output and "inputs colour 3x32x32" in r.output
    r = invoke("run", "--bundle", tmp_path / "bundle", "--source", mvtec_dir / "test" / "blob", "--fps", "5",
               "--backend", "onnxruntime", "--out", tmp_path / "station")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "station" / "summary.json").read_text())
    verdicts = (tmp_path / "station" / "verdicts.jsonl").read_text().splitlines()
    assert summary["inspected"] == len(verdicts) >= 3 and summary["inference_errors"] == 0
    r = invoke("bench", "--synthetic-model", "lgfdr", "--image-size", "32", "--frames", "64x48", "--batches", "1",
               "--seconds", "0.3", "--warmup", "0.1", "--threads", "1", "--mode", "compute", "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b.json").read_text())["bundle"]["model"] == "LGFDR on efficientnet_lite0"


@pytest.mark.parametrize("args,message", [
    (["--model", "lgfdr", "--textures", "TEXTURES"], "--textures feeds FAIR's anomaly synthesis"),
    (["--model", "fair", "--backbone-weights", "w.pth"], "it is for --model lgfdr, --model patchcore"),
    (["--model", "lgfrd"], "Did you mean 'lgfdr'"),
    (["--model", "lgfdr", "--backbone", "resnet18"], "needs its ImageNet weight file"),
])
def test_cli_refuses_options_of_the_other_family(mvtec_dir, args, message):
    from typer.testing import CliRunner

    from fair_edge.cli import app

    args = [str(mvtec_dir / "train" / "good") if a == "TEXTURES" else a for a in args]
    r = CliRunner().invoke(app, ["train", str(mvtec_dir), "--image-size", "32", "--steps", "1", *args], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and message in r.output, r.output


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(lgfdr_run, tmp_path):
    pytest.importorskip("tensorrt")
    from fair_edge.calibration.frames import preprocess_frames
    from fair_edge.export.tensorrt import current_target
    from fair_edge.runtime.backends import OnnxRuntimeBackend
    from fair_edge.runtime.tensorrt import TensorRTBackend

    for precision, tol in (("fp32", 1e-3), ("fp16", 2e-2)):
        result = build_bundle(load_checkpoint(lgfdr_run[0]), tmp_path / precision, BuildOptions(precision, max_batch=4))
        b = load_bundle(tmp_path / precision, target=current_target())
        inputs = preprocess_frames(make_frames(3, seed=1), b.model)
        with TensorRTBackend.from_bundle(b) as backend:
            out = backend.infer({n: torch.from_numpy(a).cuda() for n, a in inputs.items()})
        ref = OnnxRuntimeBackend.from_bundle(b).infer(inputs)
        assert result.engine_built and all(np.abs(out[n] - ref[n]).max() < tol for n in ref)


def test_lgfdr_has_its_own_training_settings_and_reads_runs_saved_with_fairs():
    """LGFDR's runs saved FAIR's TrainConfig before LGFDR had its own: --resume still reads them."""
    from dataclasses import fields

    from fair_edge.models.fair.train import TrainConfig
    from fair_edge.models.lgfdr import train as lgfdr_train

    assert lgfdr_train.default_train_config() == LgfdrTrainConfig(lr=1e-3, epochs=100)
    assert not {"width", "amp", "synthesis"} & {f.name for f in fields(LgfdrTrainConfig)}
    old = {"width": 128, **TrainConfig(lr=1e-3, epochs=100, steps=40, seed=2).to_dict()}  # FAIR's then held a width
    assert LgfdrTrainConfig.from_dict(old) == LgfdrTrainConfig(steps=40, seed=2)
    with pytest.raises(ConfigError, match="lr must be > 0; found 0"):
        LgfdrTrainConfig(lr=0.0)


def test_bench_lgfdr_trains_fair_without_backbone_extras(mvtec_dir, tmp_path):
    """benchmarks/bench_lgfdr.py once passed backbone_weights= to FAIR's make_trainer (it takes no backbone
    extras): FAIR now trains there, and a backbone file given for FAIR is refused by name."""
    import importlib.util
    from pathlib import Path

    from fair_edge.models.fair.family import FairSettings

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lgfdr.py"
    spec = importlib.util.spec_from_file_location("bench_lgfdr", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fair = ModelSpec("fair", PreprocessConfig(image_size=32), FairSettings(width=8))
    final, timing = bench.train_for(fair, load_dataset(mvtec_dir), 0.0, tmp_path / "fair")
    assert load_checkpoint(final).model == fair and timing["steps"] == 0
    with pytest.raises(ConfigError, match="--backbone-weights is not used by FAIR width 8"):
        bench.train_for(fair, load_dataset(mvtec_dir), 0.0, tmp_path / "fair2", "random")


# ----------------------------------------------------------------------------- the training loop
def _normals(mvtec_dir, folder, n):
    """A folder of the fixture's first ``n`` normal training images (48 x 48 px)."""
    import shutil

    folder.mkdir()
    for path in sorted((mvtec_dir / "train" / "good").iterdir())[:n]:
        shutil.copy(path, folder / path.name)
    return folder


def _trainer(data, out, cfg, pre=MODEL.preprocess):
    from fair_edge.models.lgfdr.train import LgfdrTrainer

    return LgfdrTrainer(load_dataset(data), ModelSpec("lgfdr", pre, SETTINGS), cfg, out, torch.device("cpu"))


def test_tiled_training_counts_batch_and_epochs_in_tiles(mvtec_dir, tmp_path, caplog):
    """--tile: 4 images of 48 px in 24 px tiles are 16 feature maps; batch and step budget were taken from the 4
    images (batch 4, 3 steps for 3 epochs of batch 8: 12 of the 16 tiles ever trained) instead of the 16 tiles."""
    from fair_edge.tiling import TilingConfig

    tiled = PreprocessConfig(image_size=32, tiling=TilingConfig(24))
    trainer = _trainer(_normals(mvtec_dir, tmp_path / "four", 4), tmp_path / "run", LgfdrTrainConfig(batch=8, epochs=3),
                       tiled)
    assert (len(trainer.images), trainer.batch, trainer.total_steps) == (16, 8, 3 * 16 // 8)
    assert trainer.data_summary["train_tiles"] == 16 and trainer.data_summary["train_images_used"] == 4
    with caplog.at_level("WARNING"):
        small = _trainer(_normals(mvtec_dir, tmp_path / "two", 2), tmp_path / "run2", LgfdrTrainConfig(batch=16),
                         tiled)
    assert small.batch == 8 and "only 8 training tiles: batch reduced from 16 to 8" in caplog.text


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_ctrl_c_mid_step_saves_at_the_step_boundary_and_resume_is_exact(mvtec_dir, tmp_path):
    """A real SIGINT raised right after the third optimizer step (the step is still in flight): LGFDR caught the
    KeyboardInterrupt and saved the updated weights as step 2, so --resume repeated step 3. Now the step finishes,
    last.pt is step 3, and resuming gives the uninterrupted run's weights exactly."""
    import signal

    from fair_edge.training.loop import TrainingInterrupted

    cfg = LgfdrTrainConfig(batch=4, steps=6, save_every=100, log_every=1)
    full = _trainer(mvtec_dir, tmp_path / "full", cfg)
    full.run()
    stopped = _trainer(mvtec_dir, tmp_path / "stopped", cfg)
    real_step, calls = stopped.optimizer.step, []

    def step_then_ctrl_c(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C now; the handler runs before the step ends
        return result

    stopped.optimizer.step = step_then_ctrl_c
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        stopped.run()
    assert info.value.step == 3 and load_checkpoint(tmp_path / "stopped" / "last.pt").train_state["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler  # the run put the previous handler back
    resumed = _trainer(mvtec_dir, tmp_path / "stopped", cfg)
    resumed.resume()
    resumed.run()
    for a, b in zip(full.params, resumed.params):
        assert torch.equal(a, b)


def test_loss_csv_lr_is_the_rate_the_logged_step_trained_with(mvtec_dir, tmp_path):
    """The lr column was read after scheduler.step(): step 2, the last at 1e-3 before the milestone, showed 0.0002."""
    import csv

    cfg = LgfdrTrainConfig(batch=4, lr=1e-3, steps=4, lr_milestones=(0.5,), save_every=100, log_every=1)
    _trainer(mvtec_dir, tmp_path, cfg).run()  # milestone at step 2: steps 1-2 train at 1e-3, steps 3-4 at 2e-4
    with (tmp_path / "loss.csv").open() as fh:
        assert [float(row["lr"]) for row in csv.DictReader(fh)] == pytest.approx([1e-3, 1e-3, 2e-4, 2e-4])
