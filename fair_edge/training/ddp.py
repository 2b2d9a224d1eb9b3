"""Training across processes with PyTorch DDP: one model, the global batch split between ranks.

Launch (one machine, N processes; each rank takes GPU ``LOCAL_RANK``, or the CPU with gloo):

    fair-edge train DATA --width 32 --nproc 2             # launches torchrun for you
    torchrun --nproc-per-node 2 -m fair_edge.cli train DATA --width 32   # the same, by hand

Several machines: the same command on each, with a rendezvous endpoint they all reach, e.g. on 2 nodes
of 8 GPUs: ``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400
--rdzv-id fair1 -m fair_edge.cli train DATA --out /shared/runs/w32`` (``--out`` on storage every node
sees, so ``--resume`` finds ``last.pt``).

What each rank does (``DataParallel`` below, hooked into ``fair_edge.models.fair.train.Trainer``):
- it holds the training images and draws the *whole* global batch's rotation and anomaly synthesis
  with the shared seed (identical on every rank, cheap next to the UNet), then keeps its shard,
  ``batch / world`` images: the UNet forward and backward, the cost, are split. The global batch
  must divide by the number of processes;
- batch-norm statistics are taken over the global batch: ``nn.SyncBatchNorm`` on CUDA,
  ``CpuSyncBatchNorm2d`` (differentiable all-reduce of sums) on the CPU, where PyTorch's has no kernel;
- DDP averages gradients, so each step equals a single-process step on the same global batch up
  to float summation order (measured: BENCHMARKS.md, ``tests/test_train_ddp.py``);
- the loss it reports is the mean over ranks; only rank 0 writes ``loss.csv`` and checkpoints,
  every rank loads ``last.pt`` on ``--resume``;
- Ctrl-C (SIGTERM alike) reaches torchrun, which passes it on to every rank: the ranks agree on the step
  boundary to stop at (``DataParallel.any``), rank 0 saves ``last.pt`` and prints the resume command, and
  ``launch`` returns 130 (143).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.parallel import DistributedDataParallel

from fair_edge.errors import ConfigError

# The differentiable all-reduce batch norm needs; its suggested successor (_functional_collectives) is private
# and has no autograd for it. Deprecated in 2.13, still correct (tests/test_train_ddp.py checks the loss curve).
log = logging.getLogger(__name__)

warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated",
                        category=FutureWarning)


class SingleProcess:
    """The default: no sharding, no wrapping; the hooks of ``Trainer`` are identities."""

    rank, world = 0, 1
    is_main = True

    def prepare(self, unet: nn.Module) -> nn.Module:
        return unet

    def wrap(self, unet: nn.Module) -> nn.Module:
        return unet

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def mean(self, loss: torch.Tensor) -> float:
        return float(loss)

    def any(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        pass


class CpuSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every rank's batch (gloo / CPU).

    forward: (B_local, C, H, W) float32 -> same shape; mean and biased variance over all ranks' pixels,
    running statistics updated with the unbiased variance, as ``nn.BatchNorm2d`` over the global batch.
    Two passes (mean, then squared deviations): the one-pass E[x^2] - E[x]^2 moved the first gradient by
    6.6e-4 (relative) against one process; two passes by 4e-6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:-1] / n
        var = all_reduce(((x - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3))) / n  # two passes, as BatchNorm2d
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        shape = (1, -1, 1, 1)
        return (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps) * self.weight.view(shape) \
            + self.bias.view(shape)


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a ``CpuSyncBatchNorm2d`` with the same state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CpuSyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_cpu_sync_batchnorm(child)
    return module


class DataParallel:
    """One rank of a DDP run in an initialised process group (``from_environment``)."""

    def __init__(self, device: torch.device) -> None:
        self.rank, self.world, self.device = dist.get_rank(), dist.get_world_size(), device
        self.is_main = self.rank == 0

    def prepare(self, unet: nn.Module) -> nn.Module:
        """``unet`` with batch norm synchronised over the ranks (same state_dict keys as before)."""
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(unet)
        return convert_cpu_sync_batchnorm(unet)

    def wrap(self, unet: nn.Module) -> nn.Module:
        """The DDP wrapper that runs forward/backward and averages gradients (shares ``unet``'s parameters)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(unet, device_ids=ids)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous ``B / world`` rows of a (B, ...) global batch."""
        if batch.shape[0] % self.world:
            raise ConfigError(f"--batch {batch.shape[0]} must divide by the {self.world} processes; "
                              f"use a multiple of {self.world}.")
        per = batch.shape[0] // self.world
        return batch[self.rank * per : (self.rank + 1) * per]

    def mean(self, loss: torch.Tensor) -> float:
        total = loss.detach().clone()
        dist.all_reduce(total)
        return float(total) / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any: the ranks agree on a stop request (Ctrl-C reaches
        them one after the other, possibly either side of a step boundary)."""
        votes = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return bool(votes.item())

    def barrier(self) -> None:
        dist.barrier()


def from_environment(device: torch.device) -> tuple[DataParallel | SingleProcess, torch.device]:
    """Under torchrun (``WORLD_SIZE`` > 1): join the process group (nccl on CUDA, gloo on the CPU) and
    return this rank's ``DataParallel`` and device (``cuda:LOCAL_RANK`` or the CPU). Else single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SingleProcess(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10))
    return DataParallel(device), device


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 within it (the rank that prints and writes files)."""
    return int(os.environ.get("RANK", "0")) == 0


# The process groups a rank left, their Python objects kept until the interpreter's exit handlers run. Freeing a
# gloo group joins its worker threads; a worker may still hold the last reference to a tensor Python made (a
# collective's input, or one a barrier's work keeps), and dropping it needs the GIL. Freed from Python, the group
# releases the GIL before it joins (PyTorch's holder for ProcessGroup does). But a DDP wrapper still alive at
# ``shutdown`` (a trainer referenced by the caller: ``fair-edge train``, the test ranks) holds the group too, and
# its reducer, freed later under the GIL, would then drop the last reference and join while holding it: the rank
# deadlocks (seen twice in the full suite under load; tests/test_train_ddp.py reproduces it). Kept here, the
# group outlives the reducers, and ``_free_left_groups`` frees it from Python at exit.
_LEFT_GROUPS: list[dist.ProcessGroup] = []


@atexit.register
def _free_left_groups() -> None:
    """Free the groups left (``_LEFT_GROUPS``), after any trainer still alive at exit: an uncaught exception's
    traceback (``sys.last_*``, kept for a post-mortem nobody runs now) holds the frames that hold one, and its
    reducer would otherwise free the group during the interpreter's teardown, under the GIL (where a gloo worker
    asking for the GIL aborts the process or, on newer Pythons, hangs)."""
    if _LEFT_GROUPS:
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                setattr(sys, name, None)
        gc.collect()
    _LEFT_GROUPS.clear()


def shutdown() -> None:
    """Leave the process group (end of a torchrun rank); the group itself is freed at exit (``_LEFT_GROUPS``)."""
    if dist.is_initialized():
        _LEFT_GROUPS.append(dist.group.WORLD)
        dist.destroy_process_group()


@contextlib.contextmanager
def ddp_group():
    """Leave the process group (if one was joined) when the block ends, however it ends."""
    try:
        yield
    finally:
        shutdown()


def launch(nproc: int, train_args: list[str]) -> int:
    """Run ``fair-edge train train_args`` in ``nproc`` local processes via torchrun; exit code: 0, 1 when a rank
    failed, 128 + the signal number when a signal stopped the launcher (130 for Ctrl-C: torchrun passed it on to
    the ranks, which saved ``last.pt`` at a step boundary, and rank 0 printed how to resume). torchrun's log folder
    (the ranks' error files, read by torchrun before it returns) is a temporary one, removed when it ends: by
    default torchrun left a ``/tmp/torchelastic_*`` folder behind on every launch."""
    if nproc < 2:
        raise ConfigError(f"--nproc must be >= 2 to launch processes (1 trains in this process); found {nproc}.")
    logs = tempfile.mkdtemp(prefix="fair-edge-torchrun-")
    try:
        return _torchrun(["--nproc-per-node", str(nproc), "--standalone", "--log-dir", logs, "-m", "fair_edge.cli",
                          "train", *train_args])
    finally:
        try:
            shutil.rmtree(logs)
        except OSError as exc:
            log.warning("could not remove torchrun's log folder %s (%s): delete it", logs, exc.strerror or exc)


def _torchrun(args: list[str]) -> int:
    """torchrun ``args`` in this process; ``launch``'s exit code for how it ended."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(args)
    except ChildFailedError as exc:  # a rank failed; its own error line is already printed above
        failures = {f.local_rank: f.exitcode for f in exc.failures.values()}
        print(f"error: DDP training failed: exit code per local rank {failures}", file=sys.stderr)
        return 1
    except SignalException as exc:  # torchrun caught a signal and has stopped the ranks with it
        signum = int(exc.sigval)
        if signum not in (signal.SIGINT, signal.SIGTERM):  # rank 0 has said where the state is, how to resume
            print(f"error: DDP training stopped by {signal.Signals(signum).name}, which torchrun passed on to every "
                  f"rank; --resume continues from the last periodic save (--save-every), if one was written.",
                  file=sys.stderr)
        return 128 + signum
    return 0


def command_args(ctx, skip: tuple[str, ...] = ()) -> list[str]:
    """The options the user typed on a click/typer command (``ctx``), written back as command-line arguments.

    Defaults are left out: each torchrun rank parses the arguments again and reads what it is not given from the same
    defaults, and a rank of ``train --resume`` compares every flag it is given with the run saved in last.pt, so a
    default written back (``--image-size 256``) would refuse a run saved at another size, naming a flag the user
    never typed."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in skip or value is None or not _typed(ctx, param.name):
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
        elif getattr(param, "multiple", False):  # a repeatable option (--set KEY=VALUE): once per value
            for item in value:
                args += [param.opts[0], str(item)]
        elif getattr(param, "is_flag", False):
            if value or param.secondary_opts:  # a single flag (--resume) left off is written as nothing
                args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


def _typed(ctx, name: str) -> bool:
    """Whether the parameter ``name`` of ``ctx`` came from the command line or its environment variable, not from
    its default (compared by name: typer may bring its own copy of click's ParameterSource enum)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
