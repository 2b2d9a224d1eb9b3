"""A model's own training images are refused where held-out images are asked for (``build --normal``/``--defects``,
``fuse --normal``): the README's session with a plain folder of normals trained on the folder, then built with
``--normal`` on the same folder, and the threshold, calibrated on images the PatchCore bank holds, rejected every
unseen good part. Checkpoints (final.pt and last.pt) and a bundle's weights.pt now record a digest of each training
file's bytes (``models.checkpoint.TrainingImages``); one written before is built as before, with one warning."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from fair_edge.cli import app as fair_edge_app
from fair_edge.cli.build import build
from fair_edge.cli.fuse import fuse as fuse_command
from fair_edge.export.bundle import load_bundle
from fair_edge.models.checkpoint import DIGEST_BYTES, TrainingImages, load_checkpoint

build_app = typer.Typer()
build_app.command("build")(build)
build_app.command("fuse")(fuse_command)   # without the root app's callback, which replaces the log handlers


@build_app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


runner = CliRunner()
QUICK_PATCHCORE = ["--model", "patchcore", "--backbone-weights", "random", "--image-size", "32", "--device", "cpu"]


def invoke_build(*args):
    return runner.invoke(build_app, ["build", *map(str, args)], env={"COLUMNS": "300"})


def flat(result) -> str:
    return " ".join(result.output.split())   # rich may wrap a long error line


@pytest.fixture(scope="module")
def plain_run(mvtec_dir, tmp_path_factory):
    """`fair-edge train PLAIN` (PatchCore, random backbone, 32 px) on a plain folder of the plate's 16 training
    images: (final.pt, the folder)."""
    root = tmp_path_factory.mktemp("plain")
    plain = root / "plain"
    shutil.copytree(mvtec_dir / "train" / "good", plain)
    out = root / "run"
    result = runner.invoke(fair_edge_app, ["train", str(plain), "--out", str(out), *QUICK_PATCHCORE],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return out / "final.pt", plain


def test_final_and_last_checkpoints_record_the_training_images(plain_run):
    final, plain = plain_run
    for path in (final, final.parent / "last.pt"):
        record = load_checkpoint(path).training_images   # weights_only=True: plain containers and one tensor
        assert record is not None and len(record.names) == 16
        assert record.digests.dtype == torch.uint8 and tuple(record.digests.shape) == (16, DIGEST_BYTES)
        assert sorted(Path(n).name for n in record.names) == sorted(p.name for p in plain.iterdir())
    assert load_checkpoint(final).train_state is None   # final.pt keeps no training state, only the record


@pytest.mark.parametrize("family_run", ["fair_run", "lgfdr_run", "patchcore_run"])
def test_every_family_records_its_training_images(family_run, mvtec_dir, request):
    final = request.getfixturevalue(family_run)[0]
    record = load_checkpoint(final).training_images
    trained = sorted((mvtec_dir / "train" / "good").iterdir())
    assert record is not None and [Path(n).name for n in record.names] == [p.name for p in trained]
    assert record.found_among(sorted((mvtec_dir / "test" / "good").iterdir())) == []


def test_build_refuses_the_training_folder_as_held_out_normals(plain_run, tmp_path):
    """The audit's case: every one of the 16 --normal images is a training image: refused before anything is built,
    naming how many, the first few and the fix."""
    final, plain = plain_run
    r = invoke_build(final, "--normal", plain, "--out", tmp_path / "b", "--no-engine")
    assert r.exit_code != 0, r.output
    text = flat(r)
    assert (f"--normal {plain}: all 16 held-out normal images are, byte for byte, images {final} was trained on"
            in text), text
    assert f"{plain / '000.png'}, {plain / '001.png'}, {plain / '002.png'} and 13 more" in text, text
    assert "a folder of normal images that training did not see" in text and "test/good" in text, text
    assert not (tmp_path / "b").exists()


def test_build_refuses_a_mix_naming_the_copies_under_other_names(plain_run, mvtec_dir, tmp_path):
    """Unseen normals with 2 training images copied in under new names: refused too (a threshold on a mix is too
    low), naming the copies by their names here; --defects holding a training image is refused as well."""
    final, plain = plain_run
    mixed = shutil.copytree(mvtec_dir / "test" / "good", tmp_path / "mixed")
    shutil.copy(plain / "004.png", mixed / "zz_a.png")
    shutil.copy(plain / "009.png", mixed / "zz_b.png")
    r = invoke_build(final, "--normal", mixed, "--out", tmp_path / "b", "--no-engine")
    text = flat(r)
    assert r.exit_code != 0 and "2 of the 8 held-out normal images are, byte for byte, images" in text, text
    assert f"({mixed / 'zz_a.png'} = {plain / '004.png'}, {mixed / 'zz_b.png'} = {plain / '009.png'})" in text, text
    assert "a threshold calibrated on a mix" in text, text
    assert "Leave the training images out of --normal" in text, text
    defects = shutil.copytree(mvtec_dir / "test" / "blob", tmp_path / "defects")
    shutil.copy(plain / "004.png", defects / "zz_a.png")
    r = invoke_build(final, "--normal", mvtec_dir / "test" / "good", "--defects", defects, "--out", tmp_path / "b",
                     "--no-engine")
    assert r.exit_code != 0 and "1 of the 7 defective images is, byte for byte, an image" in flat(r), r.output


def test_build_on_normals_training_did_not_see_works(plain_run, mvtec_dir, tmp_path):
    final, _ = plain_run
    r = invoke_build(final, "--normal", mvtec_dir / "test" / "good", "--defects", mvtec_dir / "test" / "blob",
                     "--out", tmp_path / "b", "--no-engine")
    assert r.exit_code == 0, r.output
    bundle = load_bundle(tmp_path / "b")
    assert bundle.threshold.n_normal == 6 and bundle.threshold.source == "held-out normal images"
    assert load_checkpoint(bundle.weights_path).training_images is not None   # what fuse checks


def _without_record(final: Path, path: Path) -> Path:
    """A copy of ``final`` as an earlier fair-edge wrote it: no training_images entry."""
    payload = torch.load(final, map_location="cpu", weights_only=True)
    del payload["training_images"]
    torch.save(payload, path)
    return path


def test_an_old_checkpoint_builds_as_before_with_one_warning(plain_run, tmp_path, caplog):
    final, plain = plain_run
    old = _without_record(final, tmp_path / "old.pt")
    assert load_checkpoint(old).training_images is None
    with caplog.at_level(logging.WARNING):
        r = invoke_build(old, "--normal", plain, "--out", tmp_path / "b", "--no-engine")
    assert r.exit_code == 0, r.output
    warned = [m for m in caplog.messages if "does not record which images it was trained on" in m]
    assert len(warned) == 1 and str(old) in warned[0] and "--normal" in warned[0], caplog.messages


def test_fuse_refuses_a_members_training_images(plain_run, mvtec_dir, tmp_path, caplog):
    """fuse --normal fits each member's statistics and the fused threshold on its images: a member's training
    images are refused by the record its weights.pt keeps; a member built from an old checkpoint is not checked,
    with one warning naming it."""
    final, plain = plain_run
    assert invoke_build(final, "--normal", mvtec_dir / "test" / "good", "--out", tmp_path / "b1",
                        "--no-engine").exit_code == 0
    shutil.copytree(tmp_path / "b1", tmp_path / "b2")

    def fuse(*bundles, normal):
        return runner.invoke(build_app, ["fuse", *map(str, bundles), "--normal", str(normal), "--out",
                                             str(tmp_path / "fused")], env={"COLUMNS": "300"})

    r = fuse(tmp_path / "b1", tmp_path / "b2", normal=plain)
    assert r.exit_code != 0, r.output
    assert (f"--normal {plain}: all 16 held-out normal images are, byte for byte, images bundle {tmp_path / 'b1'} "
            "was trained on") in flat(r), r.output
    old = _without_record(final, tmp_path / "old.pt")
    assert invoke_build(old, "--normal", mvtec_dir / "test" / "good", "--out", tmp_path / "old-b",
                        "--no-engine").exit_code == 0
    with caplog.at_level(logging.WARNING):
        r = fuse(tmp_path / "old-b", tmp_path / "b2", normal=mvtec_dir / "test" / "good")
    assert r.exit_code == 0, r.output
    warned = [m for m in caplog.messages if "do not record which images they were trained on" in m]
    assert len(warned) == 1 and str(tmp_path / "old-b") in warned[0], caplog.messages


def test_the_record_of_10000_images_is_small_and_loads_weights_only(tmp_path):
    """8 bytes per image plus its name: 10 000 images add well under 1 MB to a checkpoint."""
    names = tuple(f"train/good/{i:05d}.png" for i in range(10_000))
    record = TrainingImages(names, torch.randint(0, 256, (10_000, DIGEST_BYTES), dtype=torch.uint8))
    buf = io.BytesIO()
    torch.save(record.to_payload(), buf)
    assert buf.tell() < 600_000, buf.tell()
    buf.seek(0)
    again = TrainingImages.from_payload(torch.load(buf, weights_only=True))
    assert again.names == names and torch.equal(again.digests, record.digests)
