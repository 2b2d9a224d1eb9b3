"""--resume compares the training images by their bytes and by which of them were read, not by name and size alone.

A camera's BMP or raw TIFF has the same size for every part: a folder re-captured under the same names was taken
in on resume, and the resumed run's checkpoints recorded the new files as its training images (so `build --normal`
with the originals, the images its first steps trained on, was not refused). A file that was a zero-filled
placeholder when the run started (a copy in progress: skipped as unreadable) and a real image at the same size on
resume was taken in silently, or, with --epochs, refused blaming "this release" for the other step budget.
"""

import shutil

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import ConfigError
from fair_edge.models.checkpoint import TrainingImages, load_checkpoint
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.train import TrainConfig, Trainer
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.data import load_dataset
from fair_edge.training.loop import TrainingInterrupted
from fair_edge.training.resume import check_same_data, training_files

IMAGES = 8


def bmp_folder(folder):
    """``IMAGES`` 64 x 64 BMPs of a grid plate with noise (a BMP's size depends on its shape only)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        img = np.full((64, 64, 3), 170, np.float32)
        img[:, ::8] -= 60
        img[::8, :] -= 60
        img += rng.normal(0, 4, img.shape)
        cv2.imwrite(str(folder / f"{i:03d}.bmp"), np.clip(img, 0, 255).astype(np.uint8))
    return folder


def recapture(path):
    """Write another part's image over ``path`` under its name: a black frame, the same size in bytes."""
    size = path.stat().st_size
    cv2.imwrite(str(path), np.full((64, 64, 3), 20, np.uint8))
    assert path.stat().st_size == size


def fair_trainer(data, out, budget=None):
    """FAIR's trainer on the folder ``data`` into ``out`` (budget: TrainConfig fields, default 6 steps)."""
    cfg = TrainConfig(batch=4, lr=1e-3, save_every=1000, log_every=1, **(budget or {"steps": 6}))
    return Trainer(load_dataset(data), PreprocessConfig(image_size=32), FairSettings(width=8), cfg, out,
                   torch.device("cpu"))


def interrupted(trainer):
    """Run ``trainer`` and stop it after its first step (last.pt written there)."""
    with pytest.raises(TrainingInterrupted):
        trainer.run(lambda step, *_: trainer.request_stop())
    return trainer


def test_an_image_replaced_at_the_same_size_is_refused_naming_it(tmp_path):
    data = bmp_folder(tmp_path / "data")
    interrupted(fair_trainer(data, tmp_path / "run"))
    original = (data / "003.bmp").read_bytes()
    recapture(data / "003.bmp")
    with pytest.raises(ConfigError) as err:
        fair_trainer(data, tmp_path / "run").resume()
    message = " ".join(str(err.value).split())
    assert f"1 changed (same size, other bytes) ({data / '003.bmp'})" in message, message
    assert "restore the images as they were to continue it" in message and "--overwrite" in message, message
    (data / "003.bmp").write_bytes(original)   # put back as it was: the run resumes
    resumed = fair_trainer(data, tmp_path / "run")
    resumed.resume()
    assert resumed.step == 1


def test_a_resumed_run_keeps_the_record_of_the_images_its_first_steps_trained_on(tmp_path, monkeypatch):
    """The record of training images goes on from last.pt into the resumed run's checkpoints: the names as the first
    run found them (DATA typed relative to the folder it started in), not the paths the resume reads (DATA saved
    absolute)."""
    bmp_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["train", "data", "--width", "32", "--image-size", "32", "--steps", "4", "--batch", "4", "--device", "cpu",
            "--save-every", "1000", "--out", "run"]
    with monkeypatch.context() as patch:
        original = Trainer.train_step
        patch.setattr(Trainer, "train_step", lambda self, s: (self.request_stop(), original(self, s))[1])
        assert runner.invoke(app, args).exit_code == 130
    saved = load_checkpoint(tmp_path / "run" / "last.pt").training_images
    assert saved.names[0] == "data/000.bmp"
    result = runner.invoke(app, ["train", "--resume", "--out", "run"])
    assert result.exit_code == 0 and "at step 1 of 4" in " ".join(result.output.split()), result.output
    final = load_checkpoint(tmp_path / "run" / "final.pt").training_images
    assert final.names == saved.names and torch.equal(final.digests, saved.digests)


@pytest.mark.parametrize("budget", [{"steps": 6}, {"epochs": 2}])
def test_a_file_skipped_as_unreadable_then_readable_now_is_named(tmp_path, budget):
    """A zero-filled placeholder (a copy still in progress) skipped when the run started, a real image of the same
    size on resume: named as read now, with the fix that takes it in (a new run). With --epochs the budget differs
    too (batch 4: 7 images read, 1 step an epoch; 8 images, 2): the refusal names the file, not the release."""
    data = bmp_folder(tmp_path / "data")
    real = (data / "005.bmp").read_bytes()
    (data / "005.bmp").write_bytes(bytes(len(real)))
    interrupted(fair_trainer(data, tmp_path / "run", budget))
    (data / "005.bmp").write_bytes(real)   # the copy completed: same name, same size
    with pytest.raises(ConfigError) as err:
        fair_trainer(data, tmp_path / "run", budget).resume()
    message = " ".join(str(err.value).split())
    assert f"1 read now, skipped as unreadable when the run started ({data / '005.bmp'})" in message, message
    assert "to train on them, start a new run on the data as it is now" in message, message
    assert "this release" not in message and "restore the images" not in message, message


def test_a_file_read_then_unreadable_now_is_named(tmp_path):
    data = bmp_folder(tmp_path / "data")
    interrupted(fair_trainer(data, tmp_path / "run", {"epochs": 3}))
    size = (data / "002.bmp").stat().st_size
    (data / "002.bmp").write_bytes(bytes(size))
    with pytest.raises(ConfigError, match=r"1 unreadable now, read when the run started \(.*002\.bmp\)"):
        fair_trainer(data, tmp_path / "run", {"epochs": 3}).resume()


def test_a_run_saved_before_image_digests_is_compared_by_its_training_images(tmp_path):
    """A last.pt of a release that recorded its training images (``training_images``) but not ``image_digests``: an
    image read now whose bytes are none of those recorded is refused, named; the same images resume."""
    from fair_edge.training.resume import ReadImages

    data = bmp_folder(tmp_path / "data")
    samples = load_dataset(data).train
    run = {"data": str(data), "files_from_root": True}
    state = {"run": run, "total_steps": 6, "step": 2, "data_files": training_files(samples, str(data))}
    record = TrainingImages.of_files(s.path for s in samples)
    check_same_data(tmp_path / "last.pt", state, training_files(samples, str(data)), 6,
                    digests=ReadImages.of(samples, samples).rows(run), record=record)
    recapture(data / "001.bmp")
    with pytest.raises(ConfigError, match=r"1 changed \(same size, bytes none of those it was trained on\) "
                                          r"\(.*001\.bmp\)"):
        check_same_data(tmp_path / "last.pt", state, training_files(samples, str(data)), 6,
                        digests=ReadImages.of(samples, samples).rows(run), record=record)


def test_each_training_file_is_hashed_once_for_the_record_and_the_resume(tmp_path, monkeypatch):
    """Hashing is a read of the whole data set: a resume on thousands of images must not read them twice."""
    import fair_edge.models.checkpoint as checkpoint
    import fair_edge.training.resume as resume

    data = bmp_folder(tmp_path / "data")
    interrupted(fair_trainer(data, tmp_path / "run"))
    hashed = []
    for module in (checkpoint, resume):
        monkeypatch.setattr(module, "file_digest", lambda p, _real=module.file_digest: hashed.append(p) or _real(p))
    trainer = fair_trainer(data, tmp_path / "run")
    trainer.resume()
    assert len(hashed) == IMAGES


@pytest.mark.parametrize("family", [
    ["--model", "lgfdr", "--steps", "2", "--batch", "4", "--save-every", "1"],
    ["--model", "patchcore", "--batch", "8", "--set", "embed_dim=16"]])
def test_every_family_refuses_a_resume_on_an_image_replaced_at_the_same_size(tmp_path, family):
    data = bmp_folder(tmp_path / "data")
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), *family, "--image-size", "32", "--device", "cpu",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    kept = tmp_path / "kept.bmp"
    shutil.copy(data / "004.bmp", kept)
    recapture(data / "004.bmp")
    result = runner.invoke(app, ["train", "--resume", "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"1 changed (same size, other bytes) ({data / '004.bmp'})" in text, text
    shutil.copy(kept, data / "004.bmp")
    result = runner.invoke(app, ["train", "--resume", "--out", str(out)])
    assert result.exit_code == 0, result.output
