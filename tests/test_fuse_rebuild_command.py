"""The fix printed for a fused bundle whose fusion.json has no metadata_sha256 (fused before it was written): the
`fair-edge fuse` command built from that fusion.json, with its member folders, rule and false-reject rate (and
backend where recorded), quoted for the shell. The generic command printed before re-fused an old `--rule max
--false-reject-rate 0.1` bundle with the defaults (mean, 0.5 %): another threshold, other verdicts, no word said."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from export_fixtures import MODEL, PRE, make_frames, write_pngs
from fair_edge.cli import app
from fair_edge.errors import BundleError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.checkpoint import Checkpoint
from fair_edge.runtime.fusion import FUSE_COMMAND, build_fused_bundle, load_fused_bundle

GENERIC = FUSE_COMMAND.strip("`")


def old_manifest(**changes) -> dict:
    """fusion.json as fair-edge 9a29199 wrote it (no metadata_sha256, no fitted_on, no grid), fused with
    --rule max --false-reject-rate 0.1; ``changes`` replace its keys (None: the key left out)."""
    data = {"format": "fair-edge-fusion", "format_version": 1,
            "members": [{"path": "m0", "manifest_sha256": "8d8c"}, {"path": "m1", "manifest_sha256": "fa04"}],
            "rule": "max", "stats": [{"mean": 5.34, "std": 0.243}, {"mean": 0.559, "std": 0.0142}],
            "threshold": {"value": 1.383, "method": "normal-quantile", "false_reject_rate": 0.1,
                          "measured_false_reject_rate": 0.1, "n_normal": 10, "n_defect": 0,
                          "source": "held-out normal images"}}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def refusal(root: Path, data: dict) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "fusion.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="has no metadata_sha256") as refused:
        load_fused_bundle(root)
    return str(refused.value)


def printed_command(message: str) -> str:
    return re.search(r"`(fair-edge fuse [^`]*)`", message).group(1)


def test_the_printed_fuse_command_keeps_the_old_rule_rate_and_members_quoted(tmp_path):
    root = tmp_path / "line 2's fused"
    command = printed_command(refusal(root, old_manifest()))
    words = shlex.split(command)   # what a shell makes of it
    assert words == ["fair-edge", "fuse", str(root / "m0"), str(root / "m1"), "--normal", "DIR", "--rule", "max",
                     "--false-reject-rate", "0.1", "--out", str(root)]


def test_the_printed_fuse_command_names_the_backend_every_member_was_fitted_on(tmp_path):
    on_torch = {"backend": "torch-cpu", "graph": "model.fp32.onnx"}
    fitted = [{"path": f"m{i}", "manifest_sha256": "00", "fitted_on": on_torch} for i in range(3)]
    words = shlex.split(printed_command(refusal(tmp_path / "f", old_manifest(members=fitted))))
    assert words[2:5] == [str(tmp_path / "f" / f"m{i}") for i in range(3)]
    assert words[words.index("--backend") + 1] == "torch-cpu"
    mixed = [fitted[0], {**fitted[1], "fitted_on": {"backend": "onnxruntime", "graph": "model.fp32.onnx"}}]
    assert "--backend" not in refusal(tmp_path / "g", old_manifest(members=mixed))   # no one backend: fuse's default


@pytest.mark.parametrize("changes", [
    {"members": None}, {"members": [{"path": "m0"}]}, {"members": [{"path": "m0"}, {"path": "../elsewhere"}]},
    {"members": [{"path": "m0"}, {}]}, {"rule": None}, {"rule": "median"}, {"rule": ["max"]}, {"threshold": None},
    {"threshold": {"value": 1.0}}, {"threshold": {"false_reject_rate": "ten"}}, {"threshold": {"false_reject_rate": 0}},
])
def test_an_unreadable_old_fusion_manifest_names_the_generic_fuse_command(tmp_path, changes):
    assert printed_command(refusal(tmp_path / "f", old_manifest(**changes))) == GENERIC


def test_following_the_printed_command_fuses_the_same_decision_again(tiny_detector, tmp_path):
    """End to end, as the audit did on a 9a29199 bundle: fuse with --rule max --false-reject-rate 0.1, strip what an
    older fair-edge did not write, paste the printed command (DIR: the same normal images): same rule, rate and
    threshold as before."""
    normals = make_frames(8, seed=5, size=64)
    state = tiny_detector.unet.state_dict()
    members = [build_bundle(Checkpoint(replace(MODEL, preprocess=PRE), state), tmp_path / name,
                            BuildOptions(engine=False, precision=precision), normal_frames=normals).bundle
               for name, precision in (("a", "fp32"), ("b", "fp16"))]
    fused = build_fused_bundle([m.root for m in members], tmp_path / "made", normals, rule="max", false_reject_rate=0.1)
    old = tmp_path / "old fused"
    shutil.copytree(fused.root, old)
    data = json.loads((old / "fusion.json").read_text())
    data = {k: v for k, v in data.items() if k not in ("metadata_sha256", "grid")}
    data["members"] = [{k: v for k, v in m.items() if k != "fitted_on"} for m in data["members"]]
    (old / "fusion.json").write_text(json.dumps(data))
    with pytest.raises(BundleError) as refused:
        load_fused_bundle(old)
    words = shlex.split(printed_command(str(refused.value)))
    words[words.index("DIR")] = str(write_pngs(tmp_path / "normals", normals))
    result = CliRunner().invoke(app, words[1:])
    assert result.exit_code == 0, result.output
    again = load_fused_bundle(old)
    assert (again.rule, again.threshold.false_reject_rate) == ("max", 0.1)
    assert again.threshold.value == pytest.approx(fused.threshold.value, rel=1e-5)
