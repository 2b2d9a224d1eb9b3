"""PatchCore on the CPU at tiny sizes: the coreset and the bank search against brute force, the
paper's re-weighting, a fit on the generated plate with eval, and the exported graph against PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fair_edge.checkpoint import load_checkpoint
from fair_edge.data import load_dataset
from fair_edge.errors import ConfigError
from fair_edge.evaluate import evaluate
from fair_edge.models.patchcore.coreset import bank_neighbours, greedy_coreset
from fair_edge.models.patchcore.model import NearestBank, PatchcoreSettings, channel_pooling
from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter, bank_size
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig

SETTINGS = PatchcoreSettings(embed_dim=32, coreset_ratio=0.25, smooth_sigma=1.0)
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


def test_channel_pooling_is_adaptive_average_pooling():
    x = torch.randn(5, 40)
    for out in (16, 64):
        torch.testing.assert_close(x @ channel_pooling(40, out).T, F.adaptive_avg_pool1d(x[:, None], out)[:, 0])


def test_settings_validate_and_bank_size_follows_ratio_and_cap():
    with pytest.raises(ConfigError, match="coreset_ratio must be in"):
        PatchcoreSettings(coreset_ratio=0)
    with pytest.raises(ConfigError, match="embed_dim must be even"):
        PatchcoreSettings(embed_dim=33)
    assert bank_size(1000, PatchcoreSettings(coreset_ratio=0.1)) == 100
    assert bank_size(10**6, PatchcoreSettings()) == PatchcoreSettings().bank_max
    assert bank_size(3, PatchcoreSettings(coreset_ratio=0.01)) == 1
    assert ModelSpec.from_dict(MODEL.to_dict()) == MODEL


# ----------------------------------------------------------------------------- fit, eval, graph
@pytest.fixture(scope="module")
def patchcore_run(mvtec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("patchcore")
    fitter = PatchcoreFitter(load_dataset(mvtec_dir), MODEL, FitConfig(batch=4, seed=0), out, torch.device("cpu"))
    steps = []
    final = fitter.run(lambda step, total, loss, rate: steps.append((step, total)))
    return final, out, steps


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
