"""PatchCore on the CPU at tiny sizes: the coreset and the bank search against brute force, the
paper's re-weighting, a fit on the generated plate with eval, and the exported graph against PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PATCHCORE_MODEL_KW

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.errors import ConfigError
from fair_edge.training.evaluate import evaluate
from fair_edge.models.patchcore.coreset import bank_neighbours, greedy_coreset
from fair_edge.models.patchcore.model import NearestBank, PatchcoreSettings, channel_pooling, memory_bytes
from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter, bank_size
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig

SETTINGS = PatchcoreSettings(**PATCHCORE_MODEL_KW)   # the model of patchcore_run / patchcore_bundles (conftest)
MODEL = ModelSpec("patchcore", PreprocessConfig(image_size=32), SETTINGS)


# ----------------------------------------------------------------------------- pieces against brute force
def _farthest_point_reference(x: np.ndarray, count: int, first: int) -> list[int]:
    chosen = [first]
    for _ in range(count - 1):
        d = np.min(((x[:, None, :] - x[None, chosen, :]) ** 2).sum(-1), axis=1)
        chosen.append(int(np.argmax(d)))
    return chosen


def test_greedy_coreset_is_farthest_point_selection():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64).float()
    got = greedy_coreset(x, 40, seed=1).tolist()
    assert got == _farthest_point_reference(x.double().numpy(), 40, got[0]) and len(set(got)) == 40
    # the covering radius shrinks against a random subset of the same size
    def radius(idx):
        return torch.cdist(x, x[idx]).min(1).values.max()
    assert radius(torch.tensor(got)) < radius(torch.randperm(300, generator=torch.Generator().manual_seed(0))[:40])
    assert greedy_coreset(x, 500).tolist() == list(range(300))


def test_projected_coreset_keeps_the_full_features_rows():
    x = torch.randn(2000, 512, generator=torch.Generator().manual_seed(0))
    idx = greedy_coreset(x, 100, seed=0)
    assert idx.shape == (100,) and len(set(idx.tolist())) == 100 and int(idx.max()) < 2000


def test_bank_search_and_neighbour_table_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    bank, patches = torch.randn(50, 8, generator=gen), torch.randn(2, 30, 8, generator=gen)
    table = bank_neighbours(bank, 4, chunk=16)
    brute = torch.cdist(bank, bank).argsort(1)[:, :4]
    assert torch.equal(table[:, 0], torch.arange(50)) and torch.equal(table, brute)
    memory = NearestBank(bank, table)
    distance, index = memory(patches)
    ref = torch.cdist(patches, bank[None].expand(2, -1, -1))
    torch.testing.assert_close(distance, ref.min(-1).values, atol=1e-5, rtol=1e-5)
    assert torch.equal(index, ref.argmin(-1))
    # eq. 7: w = 1 - exp(|m - m*|) / sum over N_b(m*) of exp(|m - n|)
    p, nn = patches[0, 0], int(index[0, 0])
    d = torch.stack([torch.dist(p, bank[j]) for j in table[nn]])
    expected = 1 - torch.exp(d[0]) / torch.exp(d).sum()
    torch.testing.assert_close(memory.reweight(p[None], index[0, :1]), expected[None], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 7, 50, 97, 1000, 1009])
@pytest.mark.parametrize("batch", [1, 3])
def test_grouped_bank_search_matches_brute_force_in_torch_and_onnx(rows, batch, tmp_path):
    # rows 7, 97, 1009 (primes): groups of 3, 10, 32 columns and a last group of 1, 7, 17 (1009 = 31 x 32 + 17);
    # rows 50, 1000: groups of 5 and 25 columns, the divisors nearest sqrt(rows)
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(rows)
    bank, patches = torch.randn(rows, 16, generator=gen), torch.randn(batch, 40, 16, generator=gen)
    memory = NearestBank(bank, torch.zeros(rows, 1, dtype=torch.int64)).eval()
    expected = {1: (1, 1), 2: (1, 2), 7: (3, 3), 50: (5, 10), 97: (10, 10), 1000: (25, 40), 1009: (32, 32)}[rows]
    assert (memory.group, memory.groups) == expected
    ref = torch.cdist(patches, bank[None].expand(batch, -1, -1))
    distance, index = memory(patches)
    torch.testing.assert_close(distance, ref.min(-1).values, atol=1e-5, rtol=1e-5)
    assert torch.equal(index, ref.argmin(-1))

    path = tmp_path / "search.onnx"
    torch.onnx.export(memory, (patches[:1],), str(path), dynamo=False, opset_version=17, input_names=["patches"],
                      output_names=["distance", "index"], dynamic_axes={"patches": {0: "batch"}})
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "MatMul" in ops and not ops & {"Loop", "If", "Scan"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_distance, onnx_index = session.run(None, {"patches": patches.numpy()})
    np.testing.assert_allclose(onnx_distance, distance.numpy(), atol=1e-5, rtol=1e-5)
    assert np.array_equal(onnx_index, index.numpy())


def test_channel_pooling_is_adaptive_average_pooling():
    x = torch.randn(5, 40)
    for out in (16, 64):
        torch.testing.assert_close(x @ channel_pooling(40, out).T, F.adaptive_avg_pool1d(x[:, None], out)[:, 0])


def test_settings_validate_and_bank_size_follows_ratio_and_cap():
    with pytest.raises(ConfigError, match="coreset_ratio must be in"):
        PatchcoreSettings(coreset_ratio=0)
    with pytest.raises(ConfigError, match="embed_dim must be even"):
        PatchcoreSettings(embed_dim=33)
    with pytest.raises(ConfigError, match="protobuf's 2 GB limit"):
        PatchcoreSettings(bank_max=200_000, embed_dim=2048)
    assert PatchcoreSettings().bank_bytes == 10_000 * (128 * 4 + 4 + 9 * 8 + 8)  # 5.96 MB: bank, norms, tables
    for rows in (1, 7, 1009, 10_000):   # what the settings and the facts count is what the search module holds
        bank = NearestBank(torch.zeros(rows, 16), torch.zeros(rows, 3, dtype=torch.long))
        held = sum(b.numel() * b.element_size() for b in bank.buffers())
        assert memory_bytes(rows, 16, 3) == held, rows
    assert bank_size(1000, PatchcoreSettings(coreset_ratio=0.1)) == 100
    assert bank_size(10**6, PatchcoreSettings()) == PatchcoreSettings().bank_max
    assert bank_size(3, PatchcoreSettings(coreset_ratio=0.01)) == 1
    assert ModelSpec.from_dict(MODEL.to_dict()) == MODEL


# ----------------------------------------------------------------------------- fit, eval, graph
def test_one_pass_fills_a_coreset_bank_of_the_ratio(patchcore_run):
    final, out, steps = patchcore_run
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 16 images, batch 4: one pass, no optimisation steps
    ckpt = load_checkpoint(final)
    patches = 16 * (32 // 8) ** 2
    assert ckpt.model == MODEL and ckpt.train_state is None
    assert ckpt.state_dict["memory.bank_t"].shape == (32, math.ceil(0.25 * patches))
    assert ckpt.state_dict["memory.neighbours"].shape == (math.ceil(0.25 * patches), 9)
    assert ckpt.data_summary["bank_rows"] == 64 and ckpt.data_summary["fit_seconds"]["patches"] == patches
    assert load_checkpoint(out / "last.pt").train_state["step"] == 4
    assert torch.equal(ckpt.build_detector().memory.bank_t, ckpt.state_dict["memory.bank_t"])


def test_eval_separates_the_synthetic_defects(patchcore_run, mvtec_dir, tmp_path):
    result = evaluate(patchcore_run[0], load_dataset(mvtec_dir), tmp_path)
    print(f"PatchCore tiny: {result}")
    assert result["image_auroc"] >= 0.95 and result["pixel_auroc"] > 0.9


def test_resume_of_a_finished_fit_rewrites_final_from_last(patchcore_run, mvtec_dir):
    _, out, _ = patchcore_run
    fitter = PatchcoreFitter(load_dataset(mvtec_dir), MODEL, FitConfig(batch=4), out, torch.device("cpu"))
    fitter.resume()
    assert fitter.step == fitter.total_steps
    final = fitter.run(lambda *a: pytest.fail("a finished fit must not pass over the data again"))
    assert torch.equal(load_checkpoint(final).state_dict["memory.bank_t"],
                       load_checkpoint(out / "last.pt").state_dict["memory.bank_t"])


# ----------------------------------------------------------------------------- bundles: the whole detector in one graph
def _initializers(g):
    inits = {t.name: t for t in g.graph.initializer}
    inits.update({n.output[0]: n.attribute[0].t for n in g.graph.node if n.op_type == "Constant"})
    return inits


def test_one_graph_holds_backbone_bank_search_upsampling_and_blur(patchcore_bundles):
    import onnx

    for precision in ("fp32", "fp16"):
        g = onnx.load(str(patchcore_bundles[precision].bundle.onnx_path))
        inits = _initializers(g)
        assert [i.name for i in g.graph.input] == ["colour"] and [o.name for o in g.graph.output] == ["anomaly_map", "score"]
        banks = [t for t in g.graph.initializer if t.name == "memory.bank_t"]
        assert len(banks) == 1 and list(banks[0].dims) == [32, 64] and banks[0].data_type == onnx.TensorProto.FLOAT
        assert sum(t.dims == [32, 64] or list(t.dims) == [64, 32] for t in g.graph.initializer) == 1  # stored once
        search = [n for n in g.graph.node if n.op_type == "MatMul" and "memory.bank_t" in n.input]
        assert len(search) == 1 and search[0].name.startswith("/memory/")
        assert {"TopK", "Resize", "Softmax", "GatherElements"} <= {n.op_type for n in g.graph.node}
        blur = [n for n in g.graph.node if n.op_type == "Conv" and not n.name.startswith(("/backbone/", "/patches/"))]
        # sigma 1: 2 * ceil(2) + 1 = 5 taps, a column Conv then a row Conv (the separable Gaussian)
        assert [list(inits[n.input[1]].dims) for n in blur] == [[1, 1, 5, 1], [1, 1, 1, 5]]
        assert all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in blur)
        backbone = [n for n in g.graph.node if n.op_type == "Conv" and n.name.startswith("/backbone/")]
        want = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT
        assert backbone and all(inits[n.input[1]].data_type == want for n in backbone)


def test_int8_quantises_the_backbone_after_the_fine_tap_only_and_keeps_the_bank_float(patchcore_bundles):
    import onnx

    g = onnx.load(str(patchcore_bundles["int8"].bundle.onnx_path))
    readers = {n.name: [c for c in g.graph.node if n.output[0] in c.input] for n in g.graph.node if n.op_type == "DequantizeLinear"}
    quantised = {c.name for cs in readers.values() for c in cs if c.op_type == "Conv"}
    late = {n.name for n in g.graph.node if n.op_type == "Conv"
            and n.name.startswith(tuple(f"/backbone/_blocks.{i}/" for i in range(5, 11)))}
    assert late and quantised == late  # blocks 5-10 make the stride-16 tap; blocks 0-4 and the stem stay float
    assert not any(c.op_type in ("MatMul", "TopK") for cs in readers.values() for c in cs)
    bank = next(t for t in g.graph.initializer if t.name == "memory.bank_t")
    assert bank.data_type == onnx.TensorProto.FLOAT


def test_bundles_state_the_memory_bank(patchcore_bundles):
    """(Round trip, parity and threshold of every bundle: tests/test_family_checks.py, for every family.)"""
    import json

    for result in patchcore_bundles.values():
        facts = json.loads((result.bundle.root / "bundle.json").read_text())["facts"]["memory_bank"]
        assert facts == {"rows": 64, "dim": 32, "neighbours": 9, "mb": round((64 * 32 * 4 + 64 * 4 + 64 * 9 * 8 + 64 * 8) / 1e6, 3)}


# ----------------------------------------------------------------------------- the command line
def test_cli_train_eval_build_run_bench_and_fuse(mvtec_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from fair_edge.cli import app

    runner, out = CliRunner(), tmp_path / "run"
    invoke = lambda *args: runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})  # noqa: E731
    r = invoke("train", mvtec_dir, "--model", "patchcore", "--image-size", 32, "--batch", 4, "--set", "coreset_ratio=0.5",
               "--set", "embed_dim=16", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "fitting PatchCore on efficientnet_lite0 on cpu: 16 images, one pass in 4 batches of 4" in r.output
    assert "pass 4/4" in r.output and "loss" not in r.output  # the progress bar counts batches; nothing is optimised
    assert "coreset 128/128 (100%)" in r.output and "neighbours 128/128 (100%)" in r.output, r.output
    ckpt = load_checkpoint(out / "final.pt")
    assert ckpt.settings.coreset_ratio == 0.5 and ckpt.state_dict["memory.bank_t"].shape == (16, 128)
    r = invoke("train", "--resume", "--out", out)
    assert r.exit_code == 0 and "at step 4 of 4" in r.output, r.output  # a finished fit: final.pt again, no pass
    assert torch.equal(load_checkpoint(out / "final.pt").state_dict["memory.bank_t"], ckpt.state_dict["memory.bank_t"])
    r = invoke("train", mvtec_dir, "--model", "patchcore", "--lr", "0.1", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--lr does not apply to PatchCore on efficientnet_lite0's training" in r.output
    r = invoke("eval", out / "final.pt", mvtec_dir, "--device", "cpu")
    assert r.exit_code == 0 and "image_auroc" in r.output, r.output
    for precision in ("--fp16", "--int8"):
        r = invoke("build", out / "final.pt", precision, "--calib", mvtec_dir / "train" / "good", "--calib-images", 8,
                   "--normal", mvtec_dir / "test" / "good", "--out", tmp_path / f"bundle{precision}")
        assert r.exit_code == 0, r.output
        assert "PatchCore on efficientnet_lite0" in r.output and "memory bank" in r.output and "rows 128, dim 16" in r.output
    r = invoke("run", "--bundle", tmp_path / "bundle--int8", "--source", mvtec_dir / "test" / "blob", "--fps", 5,
               "--backend", "onnxruntime", "--out", tmp_path / "station")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "station" / "summary.json").read_text())
    verdicts = [json.loads(v) for v in (tmp_path / "station" / "verdicts.jsonl").read_text().splitlines()]
    assert summary["inspected"] == len(verdicts) == 6 and summary["inference_errors"] == 0
    assert sum(v["ng"] for v in verdicts) >= 5
    r = invoke("fuse", tmp_path / "bundle--fp16", tmp_path / "bundle--int8", "--normal", mvtec_dir,   # its test/good
               "--out", tmp_path / "fused")
    assert r.exit_code == 0 and f"m1: {tmp_path / 'bundle--int8'}: PatchCore on efficientnet_lite0" in r.output, r.output
    r = invoke("bench", "--synthetic-model", "patchcore", "--image-size", 32, "--frames", "64x48", "--batches", 1,
               "--seconds", 0.3, "--warmup", 0.1, "--threads", 1, "--mode", "compute", "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "b.json").read_text())["bundle"]
    assert info["model"] == "PatchCore on efficientnet_lite0"
    assert info["facts"]["memory_bank"]["rows"] == PatchcoreSettings().bank_max  # a random bank of the largest size
    assert "memory bank: rows 10000, dim 128" in r.output


def test_tune_fits_a_patchcore_candidate(mvtec_dir, tmp_path):
    from pathlib import Path

    from fair_edge.training.tune import tune
    from fair_edge.training.tune_candidates import Candidate, TuneSettings

    pre = PreprocessConfig(image_size=32)
    rows = tune(load_dataset(mvtec_dir), [Candidate("patchcore", pre, 8, None, family="patchcore")], tmp_path,
                TuneSettings(budget_s=600, batch=4), data_name="plate")
    assert rows[0].status == "done" and rows[0].proxy_auroc > 0.5
    ckpt = load_checkpoint(Path(rows[0].checkpoint))
    assert ckpt.family == "patchcore" and ckpt.data_summary["bank_rows"] > 0
    import json

    chosen = json.loads((tmp_path / "tune.json").read_text())["chosen"]
    assert chosen["family"] == "patchcore" and chosen["train_command"] == "fair-edge train plate --model patchcore --image-size 32"


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(patchcore_run, tmp_path):
    pytest.importorskip("tensorrt")
    from export_fixtures import make_frames

    from fair_edge.calibration.frames import preprocess_frames
    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.export.bundle import load_bundle
    from fair_edge.export.tensorrt import current_target
    from fair_edge.runtime.backends import OnnxRuntimeBackend
    from fair_edge.runtime.tensorrt import TensorRTBackend

    ckpt = load_checkpoint(patchcore_run[0])
    for precision, tol in (("fp32", 1e-3), ("fp16", 2e-2), ("int8", 5e-2)):
        calib = make_frames(8, seed=100) if precision == "int8" else None
        result = build_bundle(ckpt, tmp_path / precision, BuildOptions(precision, max_batch=4), calib_frames=calib)
        b = load_bundle(tmp_path / precision, target=current_target())
        inputs = preprocess_frames(make_frames(3, seed=1, defect=True), b.model)
        with TensorRTBackend.from_bundle(b) as backend:
            out = backend.infer({n: torch.from_numpy(a).cuda() for n, a in inputs.items()})
        ref = OnnxRuntimeBackend.from_bundle(b).infer(inputs)
        scale = float(np.abs(ref["anomaly_map"]).max())
        assert result.engine_built and all(np.abs(out[n] - ref[n]).max() < tol * max(scale, 1.0) for n in ref), precision


# ----------------------------------------------------------------------------- taps, windows and top-k are settings
def test_taps_windows_and_top_k_validate_with_expected_and_found():
    with pytest.raises(ConfigError, match=r"taps must be two or three of .* finest first.*found \(2, 1\)"):
        PatchcoreSettings(taps=(2, 1))
    with pytest.raises(ConfigError, match=r"local_windows must be 1 to 3 distinct odd sizes.*found \(2,\)"):
        PatchcoreSettings(local_windows=(2,))
    with pytest.raises(ConfigError, match=r"embed_dim must divide by len\(taps\) x len\(local_windows\) = 4.*embed_dim=34"):
        PatchcoreSettings(embed_dim=34, local_windows=(1, 3))
    with pytest.raises(ConfigError, match=r"= 3 .*embed_dim=128 with taps=\(0, 1, 2\)"):
        PatchcoreSettings(taps=(0, 1, 2))
    for bad in ((1,), (0, 1, 2, 2), (1, 3)):
        with pytest.raises(ConfigError, match="taps must be two or three"):
            PatchcoreSettings(taps=bad)
    with pytest.raises(ConfigError, match="score_top_k must be in 1..65536 map pixels; found 0"):
        PatchcoreSettings(score_top_k=0)
    with pytest.raises(ConfigError, match=r"position_weight must be in \[0, 10000\] \(0 = off\); found -1"):
        PatchcoreSettings(position_weight=-1.0)
    # a checkpoint written before these were settings loads with the defaults; JSON lists become tuples
    newer = ("taps", "local_windows", "score_top_k", "position_weight")
    old = {k: v for k, v in PatchcoreSettings().to_dict().items() if k not in newer}
    assert PatchcoreSettings.from_dict(old) == PatchcoreSettings()
    assert PatchcoreSettings().taps == (1, 2) and PatchcoreSettings().local_windows == (3,)
    assert PatchcoreSettings.from_dict({"taps": [0, 2], "local_windows": [1, 3]}).local_windows == (1, 3)


def test_a_window_changes_the_features_and_two_windows_concatenate_them():
    from fair_edge.models.patchcore.model import PatchFeatures

    gen = torch.Generator().manual_seed(0)
    fine, coarse = torch.randn(1, 8, 8, 8, generator=gen), torch.randn(1, 12, 4, 4, generator=gen)
    one, three = PatchFeatures((8, 12), 16, (1,)), PatchFeatures((8, 12), 16, (3,))
    both = PatchFeatures((8, 12), 32, (1, 3))
    f1, f3, f13 = one(fine, coarse), three(fine, coarse), both(fine, coarse)
    assert f1.shape == f3.shape == (1, 16, 8, 8) and f13.shape == (1, 32, 8, 8)
    assert (f1 - f3).abs().max() > 0.1
    torch.testing.assert_close(f13, torch.cat([f1, f3], 1))  # window-major blocks: [fine w1, coarse w1, fine w3, ...]
    torch.testing.assert_close(f1[:, :8], F.conv2d(fine, channel_pooling(8, 8)[:, :, None, None]))  # window 1: no pooling


def test_the_local_average_counts_its_zero_padding_by_default():
    """Issue #27: a 3 x 3 window at the map's corner sees 4 map pixels and 5 of zero padding. Counted (the default,
    PyTorch's and the paper's), a map of ones averages 4/9 there; excluded (the family before #27), 1."""
    from fair_edge.models.patchcore.model import PatchFeatures

    fine, coarse = torch.ones(1, 2, 6, 6), torch.ones(1, 2, 3, 3)
    counted = PatchFeatures((2, 2), None, (3,))(fine, coarse)
    excluded = PatchFeatures((2, 2), None, (3,), local_pad="excluded")(fine, coarse)
    assert PatchcoreSettings().local_pad == "counted"
    assert counted[0, 0, 0, 0].item() == pytest.approx(4 / 9) and counted[0, 0, 0, 1].item() == pytest.approx(6 / 9)
    assert counted[0, 0, 2, 2].item() == pytest.approx(1.0)  # inside: no padding in the window
    torch.testing.assert_close(excluded[:, :2], torch.ones(1, 2, 6, 6))
    assert counted.shape == (1, 4, 6, 6)  # channel_reduction "none": both taps' channels whole


def test_plain_patchcore_settings_and_old_checkpoints_say_what_they_were_fitted_with(caplog):
    from fair_edge.models.patchcore.model import BANK_LIMIT, PLAIN
    from fair_edge.models.registry import FAMILIES

    plain = PatchcoreSettings(**PLAIN)
    assert plain.feature_dim == 40 + 112 and plain.bank_max == BANK_LIMIT  # Lite0's stride-8 and stride-16 taps whole
    assert plain.input_stats == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert PatchcoreSettings().input_stats[0] == pytest.approx((127 / 255,) * 3)  # Lite0's own: (pixel - 127) / 128
    assert PatchcoreSettings(channel_reduction="none", local_windows=(1, 3)).feature_dim == 2 * 152
    with pytest.raises(ConfigError, match="local_pad must be one of counted, excluded; found 'zero'"):
        PatchcoreSettings(local_pad="zero")
    with pytest.raises(ConfigError, match="channel_reduction must be one of grouped, none"):
        PatchcoreSettings(channel_reduction="pca")
    # a checkpoint's settings without local_pad were fitted with the padding excluded, and the load says so
    old = {k: v for k, v in PatchcoreSettings().to_dict().items() if k != "local_pad"}
    with caplog.at_level("WARNING"):
        loaded = FAMILIES["patchcore"].settings_from_dict(old)
    assert loaded.local_pad == "excluded" and "local_pad=excluded" in caplog.text and "fit it again" in caplog.text
    caplog.clear()
    assert FAMILIES["patchcore"].settings_from_dict(PatchcoreSettings().to_dict()).local_pad == "counted"
    assert caplog.text == ""


def _maps_against_own_bank(settings, backbone, normal, *frames):
    """A detector with the stand-in ``backbone`` and a bank of ``normal``'s (1, 3, S, S) own patch features:
    (those features (1, D, h, h), then each frame's anomaly map (S, S))."""
    from fair_edge.models.patchcore.model import PatchcoreDetector

    det = PatchcoreDetector(settings, normal.shape[-1]).eval()
    det.backbone = backbone
    with torch.no_grad():
        f = det.patch_features(normal)
        bank = f.flatten(2)[0].t()
        det.set_bank(bank, bank_neighbours(bank, 4))
        return (f, *(det(frame)[0][0, 0] for frame in frames))


def test_position_channels_keep_a_match_near_its_place():
    """A frame whose top and bottom halves swap places matches the normal frame's bank patch for patch when
    position is off (the same textures, elsewhere); with position_weight the swapped halves are far from it."""
    gen = torch.Generator().manual_seed(0)
    normal = torch.rand(1, 3, 128, 128, generator=gen)
    normal[:, :, 64:] = normal[:, :, 64:] * 0.3 + 0.6  # two different textures, top and bottom
    swapped = torch.roll(normal, 64, dims=2)

    class PooledPixels(torch.nn.Module):  # stands in for the backbone: the frame averaged at strides 4, 8, 16
        def forward(self, x):
            return [F.avg_pool2d(x, s).repeat(1, c // 3 + 1, 1, 1)[:, :c] for s, c in ((4, 24), (8, 40), (16, 112))]

    maps = {}
    for weight in (0.0, 30.0):
        settings = PatchcoreSettings(embed_dim=32, reweight=False, smooth_sigma=0.0, position_weight=weight)
        f, *maps[weight] = _maps_against_own_bank(settings, PooledPixels(), normal, swapped, normal)
        assert f.shape == (1, settings.feature_dim, 16, 16) and settings.feature_dim == 32 + 2 * (weight > 0)
    torch.testing.assert_close(f[0, -2:, 3, 5], torch.tensor([5 * 30 / 15, 3 * 30 / 15]))  # (x, y) of row 3, column 5
    off_swapped, off_normal = maps[0.0]
    on_swapped, on_normal = maps[30.0]
    assert off_normal.max() < 0.05 and on_normal.max() < 0.05  # the normal frame is its own bank (float32 cancellation)
    # rows away from the seams (rows 4-11 of the 16-row grid: 32-96 px) find their texture with position off ...
    assert on_swapped[32:96].mean() > 30 * off_swapped[32:96].mean()  # ... and are far from it with position on


def test_settings_round_trip_through_a_checkpoint_and_the_cli_set(tmp_path):
    from fair_edge.models.checkpoint import Checkpoint, save_checkpoint
    from fair_edge.models.registry import FAMILIES
    from fair_edge.models.training_contract import settings_overrides

    got = settings_overrides(FAMILIES["patchcore"], ["taps=0,2", "local_windows=1,3", "score_top_k=16", "position_weight=100"])
    assert got == {"taps": (0, 2), "local_windows": (1, 3), "score_top_k": 16, "position_weight": 100.0}
    with pytest.raises(ConfigError, match="expected comma-separated integers"):
        settings_overrides(FAMILIES["patchcore"], ["taps=a,b"])
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32), PatchcoreSettings(embed_dim=32, **got))
    detector = model.build(device=torch.device("cpu"))
    path = save_checkpoint(tmp_path / "c.pt", Checkpoint(model, model.impl.weights(detector), {}))
    back = load_checkpoint(path)
    assert back.model == model and back.settings.local_windows == (1, 3) and back.settings.taps == (0, 2)
    assert back.build_detector().patches.windows == (1, 3) and back.settings.position_weight == 100.0


@pytest.fixture(scope="module")
def multiscale_bundle(mvtec_dir, tmp_path_factory):
    from export_fixtures import make_frames

    from fair_edge.export.build import BuildOptions, build_bundle

    # every non-default construction at once: taps, windows, top-k, colour, position, the padding excluded,
    # ImageNet statistics and both taps' channels whole
    settings = PatchcoreSettings(embed_dim=32, coreset_ratio=0.25, smooth_sigma=1.0, taps=(0, 2),
                                 local_windows=(1, 3), score_top_k=8, position_weight=50.0, local_pad="excluded",
                                 normalisation="imagenet", channel_reduction="none", colour_weight=25.0)
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32), settings)
    out = tmp_path_factory.mktemp("patchcore-multiscale")
    final = PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=8), out / "fit", torch.device("cpu")).run()
    ckpt = load_checkpoint(final)
    return ckpt, build_bundle(ckpt, out / "fp32", BuildOptions("fp32", max_batch=4, engine=False),
                              calib_frames=make_frames(8, seed=100), normal_frames=make_frames(8, seed=5))


def test_non_default_settings_export_with_parity_and_top_k_score(multiscale_bundle):
    from export_fixtures import make_frames

    from fair_edge.runtime.selection import select_backend

    ckpt, result = multiscale_bundle
    assert ckpt.settings.local_windows == (1, 3) and result.bundle.model == ckpt.model
    assert ckpt.data_summary["coreset_ratio_effective"] == 0.25 and ckpt.data_summary["bank_capped"] is False
    # taps at strides 4 + 16: the patch grid is 32 / 4 = 8 per side, so 16 images x 64 patches x 0.25
    # channels whole (24 + 112 per window, two windows), colour_weight's three and position_weight's two: 272 + 5
    assert ckpt.state_dict["memory.bank_t"].shape == (277, 16 * 64 // 4)
    assert result.parity_max_abs <= 1e-4
    frames = make_frames(3, seed=7, defect=True)
    ort_maps, ort_scores = select_backend(result.bundle, "onnxruntime").infer_frames(frames)
    torch_maps, torch_scores = select_backend(result.bundle, "torch-cpu").infer_frames(frames)
    np.testing.assert_allclose(ort_maps, torch_maps, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_scores, torch_scores, atol=1e-4, rtol=0)
    # score_top_k=8: the mean of the 8 highest map pixels, times the re-weighting (w <= 1), is below the max
    top = np.sort(torch_maps.reshape(3, -1), axis=1)[:, -8:].mean(1)
    assert np.all(torch_scores <= top + 1e-5) and np.all(top < torch_maps.reshape(3, -1).max(1))


def test_three_taps_add_the_coarsest_block_on_the_finest_grid_and_export_with_parity(mvtec_dir, tmp_path):
    """taps (0, 1, 2): each tap's block is its local average pooled to embed_dim / 3 channels, the coarser two
    upsampled to the stride-4 grid; the fitted model exports with ONNX parity."""
    import torch.nn.functional as F
    from export_fixtures import make_frames

    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.models.patchcore.model import PatchFeatures, channel_pooling

    g = torch.Generator().manual_seed(0)
    taps = [torch.randn(2, c, n, n, generator=g) for c, n in ((24, 8), (40, 4), (112, 2))]
    features = PatchFeatures((24, 40, 112), 48, (3,))(*taps)
    assert features.shape == (2, 48, 8, 8)
    coarsest = F.interpolate(F.avg_pool2d(taps[2], 3, 1, 1), size=(8, 8), mode="bilinear", align_corners=False)
    expected = torch.einsum("oc,bchw->bohw", channel_pooling(112, 16), coarsest)
    torch.testing.assert_close(features[:, 32:], expected, rtol=1e-5, atol=1e-6)

    settings = PatchcoreSettings(embed_dim=48, coreset_ratio=0.25, taps=(0, 1, 2))
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32), settings)
    final = PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=8), tmp_path / "fit", torch.device("cpu")).run()
    ckpt = load_checkpoint(final)
    assert ckpt.settings.taps == (0, 1, 2) and ckpt.state_dict["memory.bank_t"].shape[0] == 48
    result = build_bundle(ckpt, tmp_path / "fp32", BuildOptions("fp32", max_batch=2, engine=False),
                          calib_frames=make_frames(4, seed=100), normal_frames=make_frames(4, seed=5))
    assert result.parity_max_abs <= 1e-4


def test_a_capped_coreset_says_so():
    from fair_edge.models.patchcore.train import bank_cap_facts

    s = PatchcoreSettings(bank_max=10_000)
    assert bank_cap_facts(385_024, bank_size(385_024, s), s) == {"coreset_ratio_effective": 0.02597, "bank_capped": True}
    assert bank_cap_facts(96_256, bank_size(96_256, s), s) == {"coreset_ratio_effective": 0.1, "bank_capped": False}


def test_flipped_views_validate_and_fill_the_bank_with_mirrored_normals(mvtec_dir, tmp_path):
    """bank_flips fits the bank on each training image and its flipped views: a training image turned upside down
    is in a four-view bank patch for patch (its map ~ 0), while a bank of the images as they are finds it far."""
    from fair_edge.models.patchcore.model import flipped_views

    with pytest.raises(ConfigError, match="bank_flips must be one of none, left-right, left-right\\+up-down; found 'rot90'"):
        PatchcoreSettings(bank_flips="rot90")
    with pytest.raises(ConfigError, match="bank_flips='left-right' needs position_weight=0 \\(found 100\\)"):
        PatchcoreSettings(bank_flips="left-right", position_weight=100.0)
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    views = flipped_views(x, "left-right+up-down")
    assert [v.shape for v in views] == [x.shape] * 4 and torch.equal(views[0], x)
    assert torch.equal(views[1][..., 0], x[..., 4]) and torch.equal(views[2][:, :, 0], x[:, :, 3])
    assert torch.equal(views[3][:, :, 0, 0], x[:, :, 3, 4]) and len(flipped_views(x, "none")) == 1

    maps, patches = {}, {}
    for flips in ("none", "left-right+up-down"):
        settings = PatchcoreSettings(embed_dim=32, coreset_ratio=1.0, smooth_sigma=0.0, reweight=False, bank_flips=flips)
        model = ModelSpec("patchcore", PreprocessConfig(image_size=32), settings)
        fitter = PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=4), tmp_path / flips, torch.device("cpu"))
        first = fitter.images[:4].clone()  # the fit frees its images after the backbone pass
        ckpt = load_checkpoint(fitter.run())
        assert ckpt.settings.bank_flips == flips  # the checkpoint (and so bundle.json) says how the bank was fitted
        patches[flips] = ckpt.data_summary["fit_seconds"]["patches"]
        with torch.no_grad():
            maps[flips] = fitter.detector(torch.flip(first, (2,)))[0]
    assert patches["left-right+up-down"] == 4 * patches["none"] == 4 * 16 * (32 // 8) ** 2
    assert maps["left-right+up-down"].amax() < 0.05  # float32 cancellation of |a|^2 - 2ab + |b|^2
    assert maps["none"].amax(dim=(1, 2, 3)).min() > 1.0


def test_colour_channels_see_a_tint_that_keeps_brightness():
    """colour_weight appends each patch's chromaticity: a backbone that sees only brightness finds a tinted region
    (grey mean kept) normal, and with colour on the region's patches are w x |tint| from the grey bank."""
    with pytest.raises(ConfigError, match="colour_weight must be in \\[0, 10000\\] \\(0 = off\\); found -1"):
        PatchcoreSettings(colour_weight=-1.0)
    gen = torch.Generator().manual_seed(0)
    normal = torch.rand(1, 1, 128, 128, generator=gen).expand(1, 3, 128, 128) * 0.6 + 0.2  # grey: chromaticity 0
    tint = torch.tensor([0.1, 0.0, -0.1]).view(1, 3, 1, 1)  # mean 0: each pixel's grey mean, its brightness, kept
    tinted = normal.clone()
    tinted[:, :, 32:96, 32:96] += tint

    class Brightness(torch.nn.Module):  # stands in for a backbone blind to hue: the grey frame at strides 4, 8, 16
        def forward(self, x):
            grey = x.mean(1, keepdim=True)
            return [F.avg_pool2d(grey, s).repeat(1, c, 1, 1) for s, c in ((4, 24), (8, 40), (16, 112))]

    maps = {}
    for weight in (0.0, 25.0):
        settings = PatchcoreSettings(embed_dim=32, reweight=False, smooth_sigma=0.0, colour_weight=weight)
        f, maps[weight] = _maps_against_own_bank(settings, Brightness(), normal, tinted)
        assert f.shape == (1, 32 + 3 * (weight > 0), 16, 16) and f[:, 32:].abs().sum() < 1e-5  # grey: no colour
    assert maps[0.0].amax() < 0.05  # the brightness features are the normal frame's own
    # cells 5-10 of the 16-cell grid (40-88 px) have their whole 3 x 3 window inside the tint: |tint| x w = 3.54
    torch.testing.assert_close(maps[25.0][44:84, 44:84], torch.full((40, 40), 25 * 0.02 ** 0.5), atol=0.05, rtol=0)
    assert maps[25.0][:16].amax() < 0.05  # rows far from the tint stay normal


def test_score_shifts_average_the_maps_of_shifted_views_placed_back_and_export_with_parity(patchcore_run, tmp_path):
    """score_shifts=2 with taps at strides 8 + 16: four views shifted by (0 | 4, 0 | 4) px, the edge repeated; the
    map is the mean of each view's map moved back onto the image (with no blur and no re-weighting, the score is its
    maximum), the bank unchanged. The re-scored checkpoint exports with ONNX parity; bad values are refused."""
    from dataclasses import replace

    from export_fixtures import make_frames

    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.runtime.selection import select_backend

    with pytest.raises(ConfigError, match=r"score_shifts must be in 1..4 \(1 = off\) and divide the finest tap's "
                                          r"stride \(8 px with taps=\(1, 2\)\); found 3"):
        PatchcoreSettings(score_shifts=3)
    with pytest.raises(ConfigError, match="found 0"):
        PatchcoreSettings(score_shifts=0)
    ckpt = load_checkpoint(patchcore_run[0])
    plain = replace(ckpt.settings, smooth_sigma=0.0, reweight=False)
    one = replace(ckpt.model, settings=plain).build(ckpt.state_dict).eval()
    four = replace(ckpt.model, settings=replace(plain, score_shifts=2)).build(ckpt.state_dict).eval()
    assert four.shift_offsets() == [(0, 0), (0, 4), (4, 0), (4, 4)]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    expected = np.zeros((2, 32, 32), np.float32)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 4), (0, 4)), mode="edge")
    with torch.no_grad():
        for dy, dx in four.shift_offsets():
            view_map = one(torch.from_numpy(padded[:, :, dy : dy + 32, dx : dx + 32].copy()))[0][:, 0].numpy()
            expected += np.pad(view_map, ((0, 0), (dy, 0), (dx, 0)), mode="edge")[:, :32, :32] / 4
        amap, score = four(x)
        unshifted = one(x)[0][:, 0].numpy()
    np.testing.assert_allclose(amap[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score.numpy(), expected.reshape(2, -1).max(1), rtol=1e-5)
    assert not np.allclose(expected, unshifted, atol=1e-3)            # the shifted views do change the map

    model = replace(ckpt.model, settings=replace(ckpt.settings, score_shifts=2))
    result = build_bundle(replace(ckpt, model=model), tmp_path / "fp32", BuildOptions("fp32", max_batch=2, engine=False),
                          calib_frames=make_frames(4, seed=100), normal_frames=make_frames(4, seed=5))
    assert result.parity_max_abs <= 1e-4 and result.bundle.model.settings.score_shifts == 2
    frames = make_frames(3, seed=7, defect=True)
    ort_maps, ort_scores = select_backend(result.bundle, "onnxruntime").infer_frames(frames)
    torch_maps, torch_scores = select_backend(result.bundle, "torch-cpu").infer_frames(frames)
    np.testing.assert_allclose(ort_maps, torch_maps, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_scores, torch_scores, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- one neighbour (audit item 1)
def _scored_with_table(settings, bank_rows: int, neighbours: int):
    """A 32 px detector of ``settings`` whose bank is the first ``bank_rows`` (at most 16) patch features of a flat grey frame,
    with a neighbour table of ``neighbours`` columns: (detector, the anomaly map (1, 1, 32, 32) and score (1,)
    of that frame with a bright square)."""
    torch.manual_seed(0)
    det = ModelSpec("patchcore", PreprocessConfig(image_size=32), settings).build()
    normal = torch.rand(1, 3, 32, 32) * 0.1 + 0.45
    with torch.no_grad():
        bank = det.patch_features(normal).flatten(2)[0].t()[:bank_rows].contiguous()
        det.set_bank(bank, bank_neighbours(bank, neighbours))
        defect = normal.clone()
        defect[:, :, 8:20, 8:20] = 1.0
        amap, score = det(defect)
    return det, amap, score


@pytest.mark.parametrize("bank_rows, neighbours", [(16, 1), (1, 9)])
def test_a_one_column_neighbour_table_scores_the_unweighted_map_not_zero(bank_rows, neighbours):
    """The paper's weight 1 - softmax([d])[0] is 0 with no bank neighbour (neighbours=1, or a one-row bank): every
    image scored 0, the threshold was 0 and no part was rejected. Such a table now skips the weight."""
    settings = PatchcoreSettings(backbone="resnet18", embed_dim=16, bank_max=40, neighbours=neighbours)
    det, amap, score = _scored_with_table(settings, bank_rows, neighbours)
    assert det.memory.neighbours.shape == (bank_rows, 1) and float(score[0]) > 0
    torch.testing.assert_close(score, amap.flatten(1).amax(1))
    assert not det.memory.can_reweight


def test_new_fits_refuse_one_neighbour_with_reweight_and_name_the_fix(mvtec_dir, tmp_path):
    one = PatchcoreSettings(**PATCHCORE_MODEL_KW, neighbours=1)   # valid settings: a checkpoint may hold them
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32), one)
    with pytest.raises(ConfigError, match=r"neighbours must be in 2\.\.64 with reweight on .*found neighbours=1\. "
                                          r"Raise --neighbours \(default 9\), or .*--no-reweight"):
        PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=4), tmp_path / "r", torch.device("cpu"))
    PatchcoreSettings(**PATCHCORE_MODEL_KW, neighbours=1, reweight=False).check_fit()  # the table then goes unused
    PatchcoreSettings(**PATCHCORE_MODEL_KW, neighbours=2).check_fit()


def test_an_old_checkpoint_with_one_neighbour_and_reweight_still_loads_and_says_what_changed(tmp_path, caplog):
    from fair_edge.models.checkpoint import Checkpoint, save_checkpoint

    settings = PatchcoreSettings(backbone="resnet18", embed_dim=16, bank_max=40, neighbours=1)
    det, amap, _ = _scored_with_table(settings, 16, 1)
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32), settings)
    path = save_checkpoint(tmp_path / "old.pt", Checkpoint(model, model.impl.weights(det), {}))
    with caplog.at_level("WARNING"):
        back = load_checkpoint(path)
        loaded = back.build_detector()
    assert back.settings.neighbours == 1 and back.settings.reweight
    assert "one-column neighbour table (neighbours=1, 16 bank row(s))" in caplog.text
    assert "build it again (fair-edge build)" in caplog.text
    defect = torch.rand(1, 3, 32, 32) * 0.1 + 0.45
    defect[:, :, 8:20, 8:20] = 1.0
    with torch.no_grad():
        amap, score = loaded(defect)
    assert float(score[0]) > 0 and torch.allclose(score, amap.flatten(1).amax(1))


def test_tiled_score_ignores_only_the_settings_that_change_a_whole_frame_score():
    from fair_edge.models.registry import FAMILIES

    pc = FAMILIES["patchcore"]
    assert set(pc.tiled_score_ignores(PatchcoreSettings())) == {"reweight"}
    assert set(pc.tiled_score_ignores(PatchcoreSettings(score_top_k=8, reweight=False))) == {"score_top_k"}
    assert pc.tiled_score_ignores(PatchcoreSettings(reweight=False)) == {}
