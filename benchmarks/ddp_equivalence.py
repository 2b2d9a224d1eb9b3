"""DDP vs one process on the same global batch: the per-step training loss of both, side by side.

    python benchmarks/ddp_equivalence.py [--data elpv:mono] [--width 32] [--image-size 64] [--batch 8]
        [--steps 20] [--nproc 2] [--out runs/ddp-equivalence.json]

Runs ``fair_edge.models.fair.train.Trainer`` once in this process and once as ``--nproc`` gloo ranks on the CPU
(``torch.multiprocessing.spawn``, ``fair_edge.training.ddp``), same seed, data and global batch, and
prints both loss curves with their relative difference, and the relative difference of the first
step's gradients (before any update: the equivalence itself, free of Adam's amplification of float
summation-order noise, whose first step moves every weight by about +-lr whatever its gradient's size). ``tests/test_train_ddp.py`` uses the same
functions on a tiny product.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fair_edge.training.data import load_dataset
from fair_edge.preprocess import PreprocessConfig
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.train import TrainConfig, Trainer
from fair_edge.training.loop import TrainingInterrupted
from fair_edge.training.ddp import from_environment, shutdown


def train_losses(data: str, pre: PreprocessConfig, settings: FairSettings, cfg: TrainConfig, out: Path, parallel=None,
                 stop_at: int | None = None, resume: bool = False) -> list[float]:
    """Per-step losses of one run; ``stop_at`` stops it there as Ctrl-C does (last.pt is written)."""
    trainer = Trainer(load_dataset(data), pre, settings, cfg, out, torch.device("cpu"), parallel=parallel)
    if resume:
        trainer.resume()
    losses: list[float] = []

    def on_step(step, total, loss, rate):
        losses.append(loss)
        if step == stop_at:
            trainer.request_stop()

    try:
        trainer.run(on_step)
    except TrainingInterrupted:
        pass
    return losses


def first_gradient(data: str, pre: PreprocessConfig, settings: FairSettings, cfg: TrainConfig, out: Path,
                   parallel=None) -> torch.Tensor:
    """All UNet parameter gradients of step 0, flattened (after DDP's all-reduce), before any update."""
    trainer = Trainer(load_dataset(data), pre, settings, cfg, out, torch.device("cpu"), parallel=parallel)
    trainer.state.optimizer.step = lambda *args, **kwargs: None  # keep the weights: this is a measurement
    trainer.state.scheduler.step = lambda *args, **kwargs: None
    trainer.train_step(0)
    return torch.cat([p.grad.flatten() for p in trainer.state.unet.parameters()])


def join_group(rank: int, world: int, rendezvous: Path):
    """Set the torchrun environment for ``rank`` and join the gloo group; returns the DataParallel.

    The ranks meet in the file ``rendezvous`` (``init_method="file://..."``; a path no earlier group used, in a
    folder of this run: ``new_rendezvous``), not on a TCP port: a port picked free and released before rank 0 binds
    it can be taken by another process meanwhile, and the group then fails to form or hangs."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=Path(rendezvous).resolve().as_uri(), rank=rank, world_size=world)
    return from_environment(torch.device("cpu"))[0]


def new_rendezvous(folder: Path) -> Path:
    """A rendezvous file path for ``join_group`` in ``folder`` (it must exist), one no group has used: the file store
    reads a file left by an earlier group as that group's state."""
    return Path(folder) / f"rendezvous-{uuid.uuid4().hex}"


def _rank(rank: int, world: int, rendezvous: Path, data: str, pre: PreprocessConfig, settings: FairSettings,
          cfg: TrainConfig, root: Path) -> None:
    parallel = join_group(rank, world, rendezvous)
    grad = first_gradient(data, pre, settings, cfg, root / "ddp-grad", parallel)
    losses = train_losses(data, pre, settings, cfg, root / "ddp", parallel)
    if rank == 0:
        (root / "ddp.json").write_text(json.dumps(losses))
        torch.save(grad, root / "ddp-grad.pt")
    shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="elpv:mono")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/ddp-equivalence"))
    args = parser.parse_args(argv)
    pre = PreprocessConfig(image_size=args.image_size, cutoff=30.0 * args.image_size / 256)
    settings = FairSettings(width=args.width)
    cfg = TrainConfig(batch=args.batch, lr=1e-3, steps=args.steps, log_every=1, amp=False, save_every=10 * args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ddp-rendezvous-") as meeting:
        mp.spawn(_rank, args=(args.nproc, new_rendezvous(Path(meeting)), args.data, pre, settings, cfg, args.out),
                 nprocs=args.nproc, join=True)
    torch.set_num_threads(1)
    grad = first_gradient(args.data, pre, settings, cfg, args.out / "single-grad")
    grad_rel = float((grad - torch.load(args.out / "ddp-grad.pt")).norm() / grad.norm())
    single = np.array(train_losses(args.data, pre, settings, cfg, args.out / "single"))
    ddp = np.array(json.loads((args.out / "ddp.json").read_text()))
    rel = np.abs(ddp - single) / np.abs(single)
    print(f"{'step':>4} {'1 process':>10} {f'{args.nproc} ranks':>10} {'rel diff':>9}")
    for i, (a, b, r) in enumerate(zip(single, ddp, rel), start=1):
        print(f"{i:>4} {a:>10.6f} {b:>10.6f} {r:>9.1e}")
    print(f"max relative difference {rel.max():.1e} over {args.steps} steps (global batch {args.batch}, "
          f"{args.batch // args.nproc} per rank); first-step gradient ||g_ddp - g_1|| / ||g_1|| = {grad_rel:.1e}")
    report = {"command": " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "settings": vars(args) | {"out": str(args.out)}, "single": single.tolist(), "ddp": ddp.tolist(),
              "max_relative_difference": float(rel.max()), "first_gradient_relative_difference": grad_rel}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
