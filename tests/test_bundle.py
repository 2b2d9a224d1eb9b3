"""Bundle: round trip, checksum/truncation/version checks, engine target checks."""

from __future__ import annotations

import json
import shutil

import pytest
from export_fixtures import MODEL, make_frames

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.errors import BundleError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import MANIFEST, EngineTarget, check_engine_target, load_bundle, write_manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_ckpt_path):
    out = tmp_path_factory.mktemp("bundle") / "b"
    options = BuildOptions("fp16", max_batch=4, command="fair-edge build ckpt.pt --width 8 --fp16 --out b")
    result = build_bundle(load_checkpoint(tiny_ckpt_path), out, options, normal_frames=make_frames(30, seed=5))
    return result


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(built.bundle.root, dst)
    return dst


def test_round_trip(built):
    b = load_bundle(built.bundle.root)
    assert b == built.bundle
    assert (b.model, b.precision, b.max_batch) == (MODEL, "fp16", 4)
    assert (b.model.inputs[0].channels, b.image_size, b.opset) == (1, 32, 17)
    assert b.onnx_path.name == "model.fp16.onnx" and b.reference_onnx_path.name == "model.fp32.onnx"
    assert b.engine is None and not built.engine_built and "pip install tensorrt" in built.engine_note
    assert b.threshold is not None and b.threshold.n_normal == 30 and b.threshold.source.startswith("held-out")
    assert b.training["source"] == "synthetic stripes"
    assert set(b.versions) >= {"fair_edge", "torch", "onnx", "onnxruntime"}
    assert set(b.files) == {"model.fp32.onnx", "model.fp16.onnx", "weights.pt", "normal_maps.npy", "fp32_normal_maps.npy"}
    assert b.fp32_threshold is not None and b.fp32_threshold.n_normal == 30   # the FP32 weights' (PyTorch backends)
    assert load_checkpoint(b.weights_path).model == MODEL and load_checkpoint(b.weights_path).train_state is None
    assert b.accuracy["score_spearman"] > 0.99 and built.parity_max_abs <= 1e-4
    assert load_bundle(built.bundle.root / MANIFEST) == b  # the manifest path works too


def test_tampered_file_fails_checksum(copy):
    path = copy / "model.fp16.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"fails its checksum.*Rebuild it with `fair-edge build ckpt.pt --width 8 --fp16"):
        load_bundle(copy)


def test_truncated_file_detected(copy):
    path = copy / "model.fp32.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="is 1000 bytes.*truncated"):
        load_bundle(copy)


def test_missing_file_and_bad_manifest(copy):
    (copy / "model.fp32.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(copy)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(copy / "nowhere")


def test_other_format_version_refused(copy):
    data = json.loads((copy / MANIFEST).read_text())
    data["format_version"] = 99
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format version 99.*reads versions 1, 2"):
        load_bundle(copy)


def test_mismatched_settings_refused(copy):
    data = json.loads((copy / MANIFEST).read_text())
    data["model"]["inputs"][0]["shape"][2] = 64
    data.pop("files"), data.pop("format"), data.pop("format_version")
    write_manifest(copy, data)  # re-signed: the settings check itself must refuse it
    with pytest.raises(BundleError, match="invalid field.*disagree with the FAIR width 8 settings"):
        load_bundle(copy)
    data["model"]["inputs"][0]["shape"][2] = 32
    data["model"]["family"] = "unet3000"
    write_manifest(copy, data)
    with pytest.raises(BundleError, match="model family must be one of"):
        load_bundle(copy)


@pytest.mark.parametrize("edit", [
    lambda d: d["threshold"].__setitem__("value", 5.0),
    lambda d: d["model"]["preprocess"].__setitem__("cutoff", 60.0),
    lambda d: d.__setitem__("precision", "fp32"),
    lambda d: d.__setitem__("added_by_hand", 1),
])
def test_edited_manifest_refused_with_the_rebuild_command(copy, edit):
    data = json.loads((copy / MANIFEST).read_text())
    assert data["threshold"] is not None
    edit(data)
    (copy / MANIFEST).write_text(json.dumps(data, indent=4))
    with pytest.raises(BundleError, match=r"changed after the build.*decision.threshold.*Rebuild it with `fair-edge build"):
        load_bundle(copy)


def test_reformatted_manifest_still_loads(copy):
    data = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps(data, indent=None, sort_keys=True))
    assert load_bundle(copy).threshold is not None


def test_manifest_without_metadata_checksum_refused(copy):
    data = json.loads((copy / MANIFEST).read_text())
    del data["metadata_sha256"]
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="no metadata_sha256"):
        load_bundle(copy)


def _add_fake_engine(root, version="10.13.0", gpu="NVIDIA H100 80GB HBM3", cc=(9, 0)):
    (root / "model.engine").write_bytes(b"not really an engine")
    data = json.loads((root / MANIFEST).read_text())
    data.pop("files"), data.pop("format"), data.pop("format_version")
    data["engine"] = {"file": "model.engine", "tensorrt_version": version, "gpu_name": gpu,
                      "compute_capability": list(cc), "timing_cache": None}
    write_manifest(root, data)


def test_engine_for_another_gpu_or_tensorrt_refused(copy):
    _add_fake_engine(copy)
    b = load_bundle(copy)
    assert b.engine is not None and b.engine.compute_capability == (9, 0)
    here = EngineTarget("10.13.0", "NVIDIA H100 80GB HBM3", (9, 0))
    assert check_engine_target(b, here) == b.engine
    assert load_bundle(copy, target=here).engine == b.engine
    with pytest.raises(BundleError, match=r"TensorRT 10.13.0; this machine has TensorRT 11.4.0.*Rebuild on this machine with `fair-edge build"):
        load_bundle(copy, target=EngineTarget("11.4.0", "NVIDIA H100 80GB HBM3", (9, 0)))
    with pytest.raises(BundleError, match=r"built for NVIDIA H100 80GB HBM3 \(sm_90\); this GPU is Orin \(sm_87\)"):
        check_engine_target(b, EngineTarget("10.13.0", "Orin", (8, 7)))


def test_no_engine_refused_for_tensorrt_target(built):
    """The rebuild hint is the stored build command without --no-engine: following it builds the engine wanted."""
    from dataclasses import replace

    with pytest.raises(BundleError, match="has no TensorRT engine"):
        check_engine_target(built.bundle, EngineTarget("10.13.0", "Orin", (8, 7)))
    no_engine = replace(built.bundle, build_command="fair-edge build 'runs/my run/final.pt' --fp16 --no-engine --out b")
    with pytest.raises(BundleError, match=r"Rebuild on this machine with `fair-edge build 'runs/my run/final.pt' --fp16 "
                                          r"--out b`"):
        check_engine_target(no_engine, EngineTarget("10.13.0", "Orin", (8, 7)))


@pytest.mark.parametrize("damage, found", [
    (lambda e: "deadbeef", "found 'deadbeef'"),                   # a string instead of {sha256, bytes}
    (lambda e: {"sha256": e["sha256"]}, "found {'sha256': "),      # bytes missing
    (lambda e: {"sha256": e["sha256"], "bytes": "12"}, "'bytes': '12'"),
])
def test_a_format_1_manifest_with_a_damaged_files_entry_names_the_file(copy, damage, found):
    """Format-1 manifests carry no metadata checksum (they load with a warning), so a damaged ``files`` entry
    reaches the file checks: refused as a BundleError naming the file, what was expected and the fix."""
    from test_model_families import _legacy_bundle

    _legacy_bundle(copy)
    data = json.loads((copy / MANIFEST).read_text())
    data["files"]["weights.pt"] = damage(data["files"]["weights.pt"])
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    message = str(err.value)
    assert "damaged checksum entry for 'weights.pt'" in message and found in message
    assert '{"sha256": 64 hex digits, "bytes": file size}' in message and "Rebuild it with" in message


def test_a_format_1_manifest_that_carries_its_checksum_is_verified(copy):
    """Format-1 bundles written once the metadata checksum existed carry it: an edit after the build is refused as in
    format 2 (before: every format-1 bundle skipped the check); without the checksum, format 1 still loads."""
    from fair_edge.export.bundle import metadata_digest
    from test_model_families import _legacy_bundle

    _legacy_bundle(copy)
    data = json.loads((copy / MANIFEST).read_text())
    data["metadata_sha256"] = metadata_digest(data)   # as the build wrote it
    (copy / MANIFEST).write_text(json.dumps(data, indent=2))
    built = load_bundle(copy).threshold.value
    data["threshold"]["value"] = built * 10           # edited afterwards, checksum left as built
    (copy / MANIFEST).write_text(json.dumps(data, indent=2))
    with pytest.raises(BundleError, match=r"was changed after the build.*Rebuild it with `fair-edge build"):
        load_bundle(copy)
    del data["metadata_sha256"]
    (copy / MANIFEST).write_text(json.dumps(data, indent=2))
    assert load_bundle(copy).threshold.value == built * 10   # format 1 without a checksum: loads (with a warning)


def test_an_unreadable_bundle_file_is_a_bundle_error_naming_it_and_the_fix(copy, monkeypatch):
    """A file this account may not read (a bundle built by another account with a private umask) is a BundleError
    naming the file and the permissions fix, not a PermissionError traceback. (Simulated: the tests run as root.)"""
    import fair_edge.export.bundle as bundle_module

    real = bundle_module.sha256_file

    def private(path, *args):
        if path.name == "model.fp16.onnx":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args)

    monkeypatch.setattr(bundle_module, "sha256_file", private)
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    message = str(err.value)
    assert f"bundle file {copy / 'model.fp16.onnx'} cannot be read by this account: Permission denied" in message
    assert f"chmod -R a+rX {copy}" in message and "umask" in message
