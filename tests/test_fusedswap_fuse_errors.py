"""Two of `fair-edge fuse`'s refusals, in the audit's words:

- A damaged file in a fused bundle's member copy (F/m0) was refused with the member's own fix, "Rebuild it with
  `fair-edge build CHECKPOINT --out BUNDLE`"; done, ``fuse`` refused F again ("member m0 ... changed since fusion"):
  fusion.json pins each copy. The refusal names the fused bundle and the member, and the fix is to fuse again.
- `fair-edge fuse --rule median` (a typo) was refused only after every member had scored every normal image; --rule
  is now a choice of the fusion module's rules, checked before anything is read, and ``build_fused_bundle`` checks
  it before anything is copied.
"""

from __future__ import annotations

import shutil

import cv2
import pytest
from typer.testing import CliRunner

import fair_edge.runtime.fusion as fusion
from fair_edge.cli import app
from fair_edge.errors import BundleError, ConfigError
from fair_edge.runtime.fusion import build_fused_bundle, load_fused_bundle


def test_a_damaged_member_file_is_refused_naming_the_fused_bundle_the_member_and_the_fuse_command(
        fused_station_bundle, tmp_path):
    copy = tmp_path / "fx"
    shutil.copytree(fused_station_bundle.root, copy)
    graph = next(name for name in fused_station_bundle.members[0].files if name.endswith(".onnx"))
    damaged = bytearray((copy / "m0" / graph).read_bytes())
    damaged[-5] ^= 1
    (copy / "m0" / graph).write_bytes(bytes(damaged))
    with pytest.raises(BundleError) as refused:
        load_fused_bundle(copy)
    text = str(refused.value)
    assert text.startswith(f"member m0 of fused bundle {copy} does not load: bundle file {copy / 'm0' / graph} "
                           "fails its checksum"), text
    assert "fair-edge build" not in text, text   # a member rebuilt in place is refused as changed since fusion
    rate = fused_station_bundle.threshold.false_reject_rate
    assert (f"`fair-edge fuse B1 B2 --normal DIR --rule {fused_station_bundle.rule} --false-reject-rate {rate!r} "
            f"--backend onnxruntime --out {copy}`") in text, text
    assert "(B1 B2 ...: those bundles, in the order of the members" in text


def test_a_member_changed_since_fusion_names_the_same_fix(fused_station_bundle, tmp_path):
    copy = tmp_path / "fx"
    shutil.copytree(fused_station_bundle.root, copy)
    manifest = copy / "m1" / "bundle.json"
    manifest.write_text(manifest.read_text() + " ")
    with pytest.raises(BundleError, match=r"member m1 of .* changed since fusion .*`fair-edge fuse B1 B2 --normal DIR"):
        load_fused_bundle(copy)


@pytest.fixture
def scored(monkeypatch):
    """The members the fusion scores the normal images with, as they are asked to (was: every one, before the rule
    was looked at)."""
    calls = []
    original = fusion._member_maps

    def counting(bundle, frames, backend, batch=8):
        calls.append(bundle.root.name)
        return original(bundle, frames, backend, batch)

    monkeypatch.setattr(fusion, "_member_maps", counting)
    return calls


def test_a_rule_typo_is_refused_before_any_member_scores_an_image(station_bundles, mvtec_dir, tmp_path, scored):
    from fair_edge.training.data import load_dataset

    normal = tmp_path / "normal"
    normal.mkdir()
    for i, sample in enumerate(s for s in load_dataset(mvtec_dir).test if s.label == 0):
        cv2.imwrite(str(normal / f"{i:03d}.png"), cv2.imread(str(sample.path)))
    args = ["fuse", *(str(b.root) for b in station_bundles), "--normal", str(normal), "--out", str(tmp_path / "f")]
    r = CliRunner().invoke(app, [*args, "--rule", "median"])
    assert r.exit_code == 2 and scored == [], (r.output, scored)
    assert "'median' is not one of 'mean', 'max'" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "f").exists()

    frames = [cv2.imread(str(p)) for p in sorted(normal.iterdir())]
    with pytest.raises(ConfigError, match=r"rule must be one of mean, max; found 'median'\. Did you mean 'mean'"):
        build_fused_bundle([b.root for b in station_bundles], tmp_path / "g", frames, "median")
    assert scored == [] and not (tmp_path / "g").exists()
