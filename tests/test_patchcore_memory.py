"""PatchCore's memory: the coreset's distance blocks stay bounded (same points as before), the fit estimates its
peak and refuses up front what does not fit, frees the images after the backbone pass, and an allocation that
fails anyway ends in the same clear error, not a traceback."""

from __future__ import annotations

import logging
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fair_edge.errors import ConfigError
from fair_edge.models.patchcore import coreset
from fair_edge.models.patchcore import train as pc_train
from fair_edge.models.patchcore.model import PatchcoreSettings
from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge import shortages
from fair_edge.training.data import load_dataset

MODEL = ModelSpec("patchcore", PreprocessConfig(image_size=32),
                  PatchcoreSettings(embed_dim=32, coreset_ratio=0.25, smooth_sigma=1.0))


# ----------------------------------------------------------------------------- the coreset before the fix, verbatim
def _old_squared_to(x, sq, rows):
    out = torch.full((x.shape[0],), float("inf"), device=x.device)
    for start in range(0, len(rows), 256):
        part = rows[start : start + 256]
        d = sq[:, None] - 2.0 * (x @ x[part].T) + sq[part][None, :]
        torch.minimum(out, d.min(1).values, out=out)
    return out


def _old_greedy_coreset(features, count, seed=0, projection_dim=coreset.PROJECTION_DIM, active_share=coreset.ACTIVE_SHARE):
    n = features.shape[0]
    if count >= n:
        return torch.arange(n, device=features.device)
    x = coreset.random_projection(features.float(), projection_dim, seed)
    sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    nearest = _old_squared_to(x, sq, torch.tensor([first], device=x.device))
    width = max(1, min(n, int(n * active_share)))
    pending = []
    active = bound = xa = sqa = near = None
    for i in range(1, count):
        if active is not None:
            j = int(torch.argmax(near))
        if active is None or float(near[j]) < bound:
            if active is not None:
                nearest[active] = near
            if pending:
                torch.minimum(nearest, _old_squared_to(x, sq, torch.tensor(pending, device=x.device)), out=nearest)
                pending = []
            top = torch.topk(nearest, min(width + 1, n))
            active, bound = top.indices[:width], float(top.values[-1]) if width < n else -float("inf")
            xa, sqa, near = x[active], sq[active], nearest[active]
            j = int(torch.argmax(near))
        last = int(active[j])
        chosen.append(last)
        pending.append(last)
        torch.minimum(near, sqa - 2.0 * (xa @ x[last]) + sq[last], out=near)
    return torch.tensor(chosen, dtype=torch.int64, device=x.device)


def _old_bank_neighbours(bank, k, chunk=4096):
    m = bank.shape[0]
    k = min(k, m)
    sq = (bank * bank).sum(1)
    out = []
    for start in range(0, m, chunk):
        rows = bank[start : start + chunk]
        d = sq[start : start + chunk, None] - 2.0 * rows @ bank.T + sq[None, :]
        d[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = -1.0
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out)


@pytest.mark.parametrize("n, dim, count", [(3000, 16, 700), (5000, 128, 600), (4000, 300, 500), (2500, 7, 400)])
def test_bounded_distance_blocks_pick_the_same_coreset_and_neighbours_as_before(n, dim, count, monkeypatch):
    """The blocks cut the old 256-column blocks (at least MIN_STEP wide): the same points in the same order, the
    same neighbour table, with the budget forcing the narrowest blocks, a middle width, and the default."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(n)) * 3
    want = _old_greedy_coreset(x, count, seed=1)
    bank = x[:2100]
    want_table = _old_bank_neighbours(bank, 9, chunk=1000)
    sq = (x * x).sum(1)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:600]
    want_sq = _old_squared_to(x, sq, rows)
    for budget in (1, 4 * n * 100, coreset.CHUNK_BYTES):
        monkeypatch.setattr(coreset, "CHUNK_BYTES", budget)
        assert coreset.greedy_coreset(x, count, seed=1).tolist() == want.tolist()
        assert torch.equal(coreset.bank_neighbours(bank, 9, chunk=1000), want_table)
        torch.testing.assert_close(coreset._squared_to(x, sq, rows), want_sq, rtol=1e-6, atol=1e-5)
    blocks = coreset.column_blocks(600, 32)
    assert blocks[0][0] == 0 and blocks[-1][1] == 600 and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(16 <= stop - start <= 32 for start, stop in blocks) and (256, 288) in blocks  # no block spans 256


class PeakTensorBytes(TorchDispatchMode):
    """The most bytes of CPU tensors made inside the ``with`` block alive at once (each op's new outputs counted
    until the tensor is collected; in-place results and views of a counted storage not again)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _gone(self, ptr: int) -> None:
        self.now -= self.live.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                ptr = t.untyped_storage().data_ptr()
                if ptr and ptr not in self.live:
                    self.live[ptr] = t.untyped_storage().nbytes()
                    self.now += self.live[ptr]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self._gone, ptr)
        return out


def test_the_coreset_needs_one_bounded_block_beside_the_features_not_several_times_them():
    """0.8 M patches needed 2.4 GiB beside 0.4 GiB of features (three (N, 256) temporaries at once); here 200 000 x 64
    (49 MiB): the tensors the selection makes stay under twice the features (before: 395 MiB, 8x), within the
    estimate the fitter checks (greedy_coreset_bytes), and a block within CHUNK_BYTES unless MIN_STEP needs more."""
    x = torch.randn(200_000, 64, generator=torch.Generator().manual_seed(0))
    sq = (x * x).sum(1)
    with PeakTensorBytes() as mode:
        coreset.greedy_coreset(x, 600)
        coreset._squared_to(x, sq, torch.arange(256))  # a full flush of 256 chosen points at once
    features = x.numel() * 4
    assert mode.peak < 2 * features, f"{mode.peak / 2**20:.0f} MiB beside {features / 2**20:.0f} MiB of features"
    assert mode.peak <= coreset.greedy_coreset_bytes(200_000, 64)
    assert 4 * 200_000 * coreset.distance_step(200_000) <= coreset.CHUNK_BYTES
    assert coreset.distance_step(800_000) == coreset.MIN_STEP and coreset.distance_step(100) == 256


# ----------------------------------------------------------------------------- the fit's estimate and its refusal
def test_a_fit_too_big_for_the_memory_is_refused_before_reading_the_images(mvtec_dir, tmp_path, monkeypatch, caplog):
    """A fit of 6 800 images at 256 px died after the whole backbone pass with DefaultCPUAllocator's traceback; the
    fitter now estimates the peak first and refuses, naming the images, the estimate, what is there and the fixes."""
    def no_reading(*args, **kwargs):
        raise AssertionError("the images were read before the memory check")

    monkeypatch.setattr(pc_train, "load_images", no_reading)
    monkeypatch.setattr(pc_train, "available_memory", lambda: (3 * 2**20, "available RAM"))
    model = ModelSpec("patchcore", PreprocessConfig(image_size=64), PatchcoreSettings(bank_flips="left-right"))
    with pytest.raises(ConfigError) as err:
        PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=8), tmp_path / "run", torch.device("cpu"))
    need = pc_train.fit_memory(16, 64, model.settings, 8)
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"a PatchCore fit of 16 training images at 64 px needs about {shortages.in_words(need['host'])} of memory at "
        "its peak (images 1 MiB, patch features 1 MiB = 2048 patches x 128 channels, coreset ")
    assert "3 MiB is available (available RAM). Fit with fewer training images, a smaller --image-size" in message
    assert "--set embed_dim=64" in message and "--set bank_flips=none" in message
    assert message.endswith("or a machine with more memory.")
    # the estimate's parts: images (held once) + features + a batch, then features + coreset
    assert need["images"] == 16 * 3 * 64 * 64 * 4 and need["features"] == 16 * 2 * 8 * 8 * 128 * 4
    assert need["host"] == int(max(need["images"] + need["features"] + need["pass"],
                                   need["features"] + max(need["pass"], need["coreset"])) * pc_train.MEMORY_SLACK)

    monkeypatch.undo()
    monkeypatch.setattr(pc_train, "available_memory", lambda: (64 * 2**30, "available RAM"))
    with caplog.at_level(logging.INFO, logger="fair_edge.models.patchcore.train"):
        PatchcoreFitter(load_dataset(mvtec_dir), MODEL, FitConfig(batch=4), tmp_path / "ok", torch.device("cpu"))
    assert [r.getMessage() for r in caplog.records if "PatchCore fit of 16 training images at 32 px: about" in
            r.getMessage() and "(64.0 GiB available) at its peak (images 0 MiB" in r.getMessage()]


def test_available_memory_takes_the_smallest_of_ram_container_and_address_space(tmp_path, monkeypatch):
    """MemAvailable alone misses a container's limit (the fit is then killed, no message at all): the cgroup's limit
    less its use (page cache not counted) and an address-space limit (ulimit -v) less this process's size count too."""
    import resource
    import sys

    (tmp_path / "meminfo").write_text("MemTotal:       33554432 kB\nMemAvailable:   16777216 kB\n")
    (tmp_path / "max").write_text("8589934592\n")
    (tmp_path / "current").write_text("4294967296\n")
    (tmp_path / "stat").write_text("anon 3000\ninactive_file 1073741824\n")
    monkeypatch.setitem(sys.modules, "psutil", None)  # psutil absent: /proc/meminfo
    monkeypatch.setattr(shortages, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(shortages, "CGROUP_FILES", ((str(tmp_path / "max"), str(tmp_path / "current"),
                                                     str(tmp_path / "stat"), "inactive_file"),))
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert shortages.available_memory() == (5 * 2**30, "the container's memory limit")  # 8 - 4 + 1 GiB of cache
    (tmp_path / "max").write_text("max\n")
    assert shortages.available_memory() == (16 * 2**30, "available RAM")
    size = shortages._read_fields("/proc/self/status")["VmSize"] * 1024  # this process's address space
    monkeypatch.setattr(resource, "getrlimit", lambda which: (size + 2 * 2**30, resource.RLIM_INFINITY))
    left, source = shortages.available_memory()
    assert source == "the address-space limit (ulimit -v)" and 1.5 * 2**30 < left <= 2 * 2**30


# ----------------------------------------------------------------------------- the fit's own memory
def test_the_images_are_freed_before_the_coreset_and_an_allocation_failure_is_a_clear_error(mvtec_dir, tmp_path,
                                                                                          monkeypatch):
    seen = {}

    def no_room(features, count, seed=0, on_progress=None):
        seen["images"] = fitter.images
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 419430400 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(pc_train, "available_memory", lambda: (64 * 2**30, "available RAM"))
    fitter = PatchcoreFitter(load_dataset(mvtec_dir), MODEL, FitConfig(batch=4), tmp_path / "a", torch.device("cpu"))
    monkeypatch.setattr(pc_train, "greedy_coreset", no_room)
    with pytest.raises(ConfigError) as err:
        fitter.run()
    assert seen["images"] is None  # freed after the backbone pass, before the coreset
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "a PatchCore fit of 16 training images at 32 px ran out of memory during the coreset (estimated peak about ")
    assert "64.0 GiB available (available RAM)): [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: " \
           "can't allocate memory" in message and "Fit with fewer training images, a smaller --image-size" in message
    assert not (tmp_path / "a" / "last.pt").exists()
    with pytest.raises(ConfigError, match="images were freed after its backbone pass .* make a new PatchcoreFitter"):
        fitter.run()  # not a checkpoint with an empty bank

    def no_room_to_read(*args, **kwargs):
        raise MemoryError("Unable to allocate 24.0 GiB for an array with shape (6800, 3, 256, 256)")

    monkeypatch.setattr(pc_train, "load_images", no_room_to_read)
    with pytest.raises(ConfigError, match="ran out of memory during reading the images .*Unable to allocate 24.0 GiB"):
        PatchcoreFitter(load_dataset(mvtec_dir), MODEL, FitConfig(batch=4), tmp_path / "b", torch.device("cpu"))

    def other_failure(*args, **kwargs):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(pc_train, "load_images", other_failure)
    with pytest.raises(RuntimeError, match="^a bug, not memory$"):
        PatchcoreFitter(load_dataset(mvtec_dir), MODEL, FitConfig(batch=4), tmp_path / "c", torch.device("cpu"))


def test_the_features_fill_one_tensor_in_the_order_the_batches_and_views_came(mvtec_dir, tmp_path, monkeypatch):
    """Written into one tensor allocated after the first batch (no second copy from concatenating): the rows of
    each batch's views in turn, with a last batch shorter than the others."""
    from fair_edge.models.patchcore.model import flipped_views

    monkeypatch.setattr(pc_train, "available_memory", lambda: (None, ""))
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32),
                      PatchcoreSettings(embed_dim=32, bank_flips="left-right", reweight=False))
    fitter = PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=5), tmp_path, torch.device("cpu"))
    images = fitter.images.clone()
    got = fitter.features(None)
    want = []
    with torch.no_grad():
        for start in range(0, 16, 5):
            for view in flipped_views(images[start : start + 5], "left-right"):
                f = fitter.detector.patch_features(view)
                want.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    assert fitter.total_steps == 4 and torch.equal(got, torch.cat(want)) and got.shape == (16 * 2 * 16, 32)
