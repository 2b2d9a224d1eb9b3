"""DDP training on the CPU (gloo, 2 processes): the same loss curve as one process on the same global batch,
one set of files written by rank 0, and an exact resume."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.errors import ConfigError
from fair_edge.preprocess import PreprocessConfig
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.train import TrainConfig
from fair_edge.training.ddp import CpuSyncBatchNorm2d, SingleProcess, convert_cpu_sync_batchnorm, shutdown

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ddp_equivalence.py"

PRE = PreprocessConfig(image_size=32, cutoff=4.0)
SETTINGS = FairSettings(width=4)
CFG = TrainConfig(batch=4, lr=1e-3, steps=6, save_every=100, log_every=1, amp=False)
LOSS_RTOL = 1e-4  # DDP vs one process: float summation order (batch-norm sums, gradient all-reduce) only


def load_script():
    spec = importlib.util.spec_from_file_location("ddp_equivalence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ddp_equivalence = load_script()


def train(data: Path, out: Path, parallel=None, stop_at: int | None = None, resume: bool = False) -> list[float]:
    return ddp_equivalence.train_losses(str(data), PRE, SETTINGS, CFG, out, parallel, stop_at, resume)


def rank_main(rank: int, world: int, rendezvous: Path, data: Path, root: Path) -> None:
    parallel = ddp_equivalence.join_group(rank, world, rendezvous)
    result = {"full": train(data, root / "full", parallel),
              "first": train(data, root / "resumed", parallel, stop_at=3),
              "rest": train(data, root / "resumed", parallel, resume=True)}
    (root / f"rank{rank}.json").write_text(json.dumps(result))
    shutdown()


@pytest.fixture(scope="module")
def ddp_run(mvtec_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(rank_main, args=(2, ddp_equivalence.new_rendezvous(root), mvtec_dir, root), nprocs=2, join=True)
    return root


def test_two_processes_follow_the_single_process_loss_curve(ddp_run, mvtec_dir, tmp_path):
    single = train(mvtec_dir, tmp_path / "single", SingleProcess())
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["full"] == ranks[1]["full"]  # the reported loss is the all-reduced mean: same on every rank
    np.testing.assert_allclose(ranks[0]["full"], single, rtol=LOSS_RTOL)
    assert single[0] != single[-1]  # it trained


def test_rank0_writes_one_log_and_checkpoint_that_loads_into_a_plain_unet(ddp_run):
    with (ddp_run / "full" / "loss.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, CFG.steps + 1))
    ckpt = load_checkpoint(ddp_run / "full" / "final.pt")
    detector = ckpt.build_detector("cpu")  # SyncBatchNorm state -> plain BatchNorm2d keys
    assert not any(isinstance(m, CpuSyncBatchNorm2d) for m in detector.modules())
    assert ckpt.data_summary["steps"] == CFG.steps


def test_resume_under_ddp_is_exact(ddp_run):
    rank0 = json.loads((ddp_run / "rank0.json").read_text())
    assert len(rank0["first"]) == 3 and len(rank0["rest"]) == CFG.steps - 3
    np.testing.assert_allclose(rank0["first"] + rank0["rest"], rank0["full"], rtol=1e-6)


def test_sync_batchnorm_conversion_keeps_state_and_single_process_behaviour():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sequential(nn.BatchNorm2d(3)))
    plain[1][0].running_mean.fill_(0.5)
    converted = convert_cpu_sync_batchnorm(torch.nn.Sequential(*[m for m in plain]))
    assert isinstance(converted[1][0], CpuSyncBatchNorm2d)
    assert torch.equal(converted[1][0].running_mean, torch.full((3,), 0.5))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(converted(x), plain(x))  # no process group: ordinary batch norm


def test_global_batch_must_divide_by_the_processes():
    class Three:
        world, rank = 3, 0
    from fair_edge.training.ddp import DataParallel

    shard = DataParallel.shard.__get__(Three())
    with pytest.raises(ConfigError, match="multiple of 3"):
        shard(torch.zeros(4, 1))
    assert shard(torch.arange(6)[:, None]).flatten().tolist() == [0, 1]


def test_cli_nproc_launches_torchrun(mvtec_dir, tmp_path):
    """``fair-edge train --nproc 2``: torchrun, 2 CPU ranks (gloo), rank 0 prints and writes final.pt."""
    import subprocess
    import sys

    out, temporary = tmp_path / "run", tmp_path / "tmp"
    temporary.mkdir()
    proc = subprocess.run([sys.executable, "-m", "fair_edge.cli", "train", str(mvtec_dir), "--width", "32",
                           "--image-size", "32", "--cutoff", "4", "--steps", "2", "--batch", "4", "--device", "cpu",
                           "--out", str(out), "--no-amp", "--nproc", "2"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(temporary)})
    text = " ".join((proc.stdout + proc.stderr).split())  # rich wraps lines at the terminal width
    assert proc.returncode == 0, text
    assert "2 processes (DDP) of 2" in text and text.count("training FAIR width 32") == 1 and text.count("done:") == 1
    assert load_checkpoint(out / "final.pt").data_summary["steps"] == 2
    assert not list(temporary.glob("torchelastic_*"))   # torchrun's log folder is launch's own, removed at the end


# ----------------------------------------------------------------------------- Ctrl-C and small data under DDP
_STACKS = []  # the open stack files of this rank (faulthandler writes to them on SIGUSR1)


def stacks_on_sigusr1(rank: int, root: Path) -> None:
    """A rank writes its threads' Python stacks to ``root/stacks{rank}.txt`` when sent SIGUSR1 (``join_ranks``)."""
    import faulthandler
    import signal

    _STACKS.append((root / f"stacks{rank}.txt").open("w"))
    faulthandler.register(signal.SIGUSR1, file=_STACKS[-1], all_threads=True)


def join_ranks(context, root: Path, guard_s: float, hung: str) -> None:
    """Wait for the spawned ranks; past ``guard_s`` seconds, fail with ``hung`` and each rank's Python stacks
    (a hang under load is rare: the failure must say where the ranks were)."""
    import signal
    import time

    deadline = time.monotonic() + guard_s
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                os.kill(process.pid, signal.SIGUSR1)
            time.sleep(1)
            for process in context.processes:
                process.kill()
            stacks = "\n".join(f"--- rank {r}:\n{path.read_text()}" for r in (0, 1)
                               if (path := root / f"stacks{r}.txt").exists())
            pytest.fail(f"{hung}\n{stacks}")


def stop_on_rank0_only(rank: int, world: int, rendezvous: Path, data: Path, root: Path) -> None:
    """Rank 0 is asked to stop after step 2, rank 1 not (yet): torchrun passes Ctrl-C to the ranks one after the
    other, so a step boundary can fall between the two. Writes the step each rank stopped at (None: it did not)."""
    from fair_edge.models.fair.train import Trainer
    from fair_edge.training.data import load_dataset
    from fair_edge.training.loop import TrainingInterrupted

    stacks_on_sigusr1(rank, root)
    parallel = ddp_equivalence.join_group(rank, world, rendezvous)
    trainer = Trainer(load_dataset(data), PRE, SETTINGS, CFG, root / "run", torch.device("cpu"), parallel=parallel)

    def on_step(step, *_):
        if rank == 0 and step == 2:
            trainer.request_stop()

    stopped = None
    try:
        trainer.run(on_step)
    except TrainingInterrupted as exc:
        stopped = exc.step
    (root / f"stop{rank}.json").write_text(json.dumps(stopped))
    shutdown()


def test_ranks_stop_at_the_same_step_when_the_signal_reaches_one_first(mvtec_dir, tmp_path):
    """Rank 0 stopped and waited in the save's barrier while rank 1 went on into step 3's collectives (a hang
    until torchrun's shutdown timeout killed both). Now the ranks agree: both stop after step 2, last.pt is step 2."""
    context = mp.spawn(stop_on_rank0_only, args=(2, ddp_equivalence.new_rendezvous(tmp_path), mvtec_dir, tmp_path),
                       nprocs=2, join=False)
    join_ranks(context, tmp_path, 300, "the ranks hung")  # a guard against the old hang only; they end in seconds
    assert [json.loads((tmp_path / f"stop{r}.json").read_text()) for r in (0, 1)] == [2, 2]
    assert load_checkpoint(tmp_path / "run" / "last.pt").train_state["step"] == 2


def leave_with_a_late_collective(rank: int, world: int, rendezvous: Path, data: Path, root: Path) -> None:
    """A rank leaves the group while its trainer (DDP wrapper) is still referenced, as ``fair-edge train`` does,
    and a gloo worker still holds the last reference to a tensor Python made: rank 1 joins the all-reduce 2 s
    late, so rank 0's worker finishes it, and drops the tensor, while rank 0 is leaving (under load, any
    collective's worker can be that late)."""
    import time

    import torch.distributed as dist
    from fair_edge.models.fair.train import Trainer
    from fair_edge.training.data import load_dataset

    stacks_on_sigusr1(rank, root)
    parallel = ddp_equivalence.join_group(rank, world, rendezvous)
    trainer = Trainer(load_dataset(data), PRE, SETTINGS, CFG, root / "run", torch.device("cpu"), parallel=parallel)
    trainer.train_step(0)
    if rank == 1:
        time.sleep(2)
    dist.all_reduce(torch.ones(1000), async_op=True)  # the tensor and its work dropped at once
    shutdown()
    (root / f"left{rank}").write_text("ok")
    # the trainer goes when this returns


def test_a_rank_leaves_while_a_worker_still_holds_a_tensor(mvtec_dir, tmp_path):
    """The DDP wrapper outlived destroy_process_group, so its reducer freed the gloo group when the trainer went,
    joining the workers while holding the GIL, and a worker dropping a tensor Python made waited for the GIL: the
    rank deadlocked (twice in the full suite under load, in this file's stop test). The group is freed at exit
    now, after every reducer, with the GIL released."""
    context = mp.spawn(leave_with_a_late_collective,
                       args=(2, ddp_equivalence.new_rendezvous(tmp_path), mvtec_dir, tmp_path), nprocs=2, join=False)
    join_ranks(context, tmp_path, 120, "a rank deadlocked freeing the process group")  # they end in seconds
    assert sorted(p.name for p in tmp_path.glob("left*")) == ["left0", "left1"]


UNCAUGHT_RANK = """
import atexit, os, sys, weakref


def report():  # registered before fair_edge.training.ddp's exit handler, so it runs after it
    threads = sum(open(f"/proc/self/task/{t}/comm").read().strip() == "pt_gloo_runloop"
                  for t in os.listdir("/proc/self/task"))
    print(f"wrapper alive {WRAPPER() is not None}, gloo threads {threads}", flush=True)


atexit.register(report)
import torch, torch.distributed as dist
from fair_edge.training.ddp import ddp_group, from_environment

os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2")
dist.init_process_group("gloo", init_method=sys.argv[1], rank=0, world_size=1)


def train():  # the wrapper in a frame the uncaught exception's traceback keeps, as a trainer of fair-edge train
    global WRAPPER
    wrapper = from_environment(torch.device("cpu"))[0].wrap(torch.nn.Linear(2, 2))
    WRAPPER = weakref.ref(wrapper)
    with ddp_group():
        raise RuntimeError("a rank fails")


train()
"""


def test_a_rank_failing_with_an_uncaught_error_frees_its_group_at_exit_not_in_teardown(tmp_path):
    """A rank whose error no one catches keeps the traceback in sys.last_* until the interpreter's teardown, and
    with it the trainer: its reducer then freed the group there, under the GIL (review of the fix above: a gloo
    worker asking for the GIL then aborted the process, 2 of 9 runs). The exit handler drops the traceback first:
    by its end the wrapper and gloo's worker threads are gone."""
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(UNCAUGHT_RANK)
    proc = subprocess.run([sys.executable, str(script), ddp_equivalence.new_rendezvous(tmp_path).resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "RuntimeError: a rank fails" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "wrapper alive False, gloo threads 0", proc.stdout


def test_fewer_images_than_the_batch_reduce_it_to_a_multiple_of_the_processes(mvtec_dir, tmp_path, caplog):
    """5 images, --batch 8, 2 processes: the batch became 5 silently, then the first step said "--batch 5 must
    divide by the 2 processes" although 8 was typed. Now it is 4, with a warning naming both counts."""
    import shutil

    from fair_edge.models.fair.train import Trainer
    from fair_edge.training.data import load_dataset

    class TwoProcesses(SingleProcess):  # the batch arithmetic of a 2-rank run, without a process group
        world = 2

    data = tmp_path / "five"
    data.mkdir()
    for path in sorted((mvtec_dir / "train" / "good").iterdir())[:5]:
        shutil.copy(path, data / path.name)
    with caplog.at_level("WARNING"):
        trainer = Trainer(load_dataset(data), PRE, SETTINGS, TrainConfig(batch=8, steps=1), tmp_path / "run",
                          torch.device("cpu"), parallel=TwoProcesses())
    assert trainer.batch == 4
    assert "only 5 training images: batch reduced from 8 to 4 (a multiple of the 2 processes)" in caplog.text


def test_fewer_images_than_processes_is_a_config_error_naming_both():
    from fair_edge.training.loop import usable_batch

    with pytest.raises(ConfigError, match="--batch 8: only 1 training images for 2 processes.*--nproc 1 or fewer"):
        usable_batch(8, 1, world=2)
    assert usable_batch(8, 5) == 5 and usable_batch(4, 5, world=2) == 4  # a batch that fits is left as typed


def _signalled_torchrun(sigval):
    def torchrun(args):
        from torch.distributed.elastic.multiprocessing.api import SignalException

        raise SignalException(f"Process 1 got signal: {sigval}", sigval=sigval)

    return torchrun


def test_launch_returns_130_on_ctrl_c_without_a_traceback(monkeypatch, capsys):
    """torchrun's agent re-raises the SIGINT it passed on to the ranks as SignalException: it reached the user as a
    traceback and exit code 1. (A unit test with a stand-in torchrun: a real Ctrl-C to a real torchrun on a loaded
    CPU lands at an unpredictable point of start-up or training.)"""
    import signal

    from fair_edge.training.ddp import launch

    monkeypatch.setattr("torch.distributed.run.main", _signalled_torchrun(signal.SIGINT))
    assert launch(2, ["DATA"]) == 130
    assert capsys.readouterr().err == ""  # rank 0 has printed where the state is and how to resume
    monkeypatch.setattr("torch.distributed.run.main", _signalled_torchrun(signal.SIGTERM))
    assert launch(2, ["DATA"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == ""  # SIGTERM stops the ranks as Ctrl-C does: rank 0 has said how to resume
    monkeypatch.setattr("torch.distributed.run.main", _signalled_torchrun(signal.SIGHUP))
    assert launch(2, ["DATA"]) == 128 + signal.SIGHUP
    assert "stopped by SIGHUP" in capsys.readouterr().err   # no stop asked of the ranks: only periodic saves


def test_launch_gives_torchrun_a_log_folder_of_its_own_and_removes_it(monkeypatch, tmp_path):
    """torchrun, given no --log-dir, made a ``torchelastic_*`` folder in the temporary folder on every launch (the
    ranks' error files) and left it there. ``launch`` now hands it a folder of its own and removes it when torchrun
    ends, however it ends. (A stand-in torchrun that writes there as the real one does.)"""
    import signal
    import tempfile

    from fair_edge.training.ddp import launch

    given = []

    def torchrun(args):
        logs = Path(args[args.index("--log-dir") + 1])
        (logs / "run_0" / "attempt_0" / "0").mkdir(parents=True)
        (logs / "run_0" / "attempt_0" / "0" / "error.json").write_text("{}")
        given.append(logs)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr("torch.distributed.run.main", torchrun)
    assert launch(2, ["DATA"]) == 0
    monkeypatch.setattr("torch.distributed.run.main", _signalled_torchrun(signal.SIGINT))
    assert launch(2, ["DATA"]) == 130
    assert len(given) == 1 and given[0].parent == tmp_path
    assert list(tmp_path.iterdir()) == []   # both launches' folders removed


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_only_rank_0_prints_the_interruption_and_resume_command(mvtec_dir, tmp_path, monkeypatch, rank, printed):
    """Every rank printed "interrupted after step N" and "Resume with: ...": twice under --nproc 2."""
    from typer.testing import CliRunner

    from fair_edge.cli import app
    from fair_edge.training.loop import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted(tmp_path / "run" / "last.pt", 5)

    monkeypatch.setattr("fair_edge.cli.train.run_training", interrupted)
    monkeypatch.setenv("RANK", rank)
    result = CliRunner().invoke(app, ["train", str(mvtec_dir), "--width", "32", "--image-size", "32", "--steps", "9",
                                      "--device", "cpu", "--out", str(tmp_path / "run")], env={"COLUMNS": "200"})
    assert result.exit_code == 130, result.output
    assert ("interrupted after step 5" in result.output) == printed
    assert ("Resume with: fair-edge train --resume" in result.output) == printed


# ----------------------------------------------------------------------------- --resume under --nproc
def _train_context(args: list[str]):
    """The click context of `fair-edge train ARGS`, parsed as the command line would be (nothing runs)."""
    import typer

    from fair_edge.cli import app

    command = typer.main.get_command(app).commands["train"]
    return command.make_context("train", list(args))


def test_command_args_hand_the_ranks_only_the_flags_typed():
    """`train --resume --nproc 2 --out RUN` gave every rank `--image-size 256 --filter butterworth --order 2
    --tile-overlap 0` too (the defaults, written back), which each rank compared with last.pt: a run at another size
    was refused naming --image-size 256, a flag the user never typed. The ranks get what was typed, nothing more."""
    from fair_edge.training.ddp import command_args

    ctx = _train_context(["--resume", "--nproc", "2", "--out", "RUN"])
    assert command_args(ctx, skip=("nproc",)) == ["--out", "RUN", "--resume"]
    typed = ["DATA", "--image-size", "64", "--set", "scoring.k_color=0", "--no-amp", "--nproc", "2", "--out", "R"]
    args = command_args(_train_context(typed), skip=("nproc",))
    assert args[0] == "DATA" and sorted(args[1:]) == sorted(["--image-size", "64", "--set", "scoring.k_color=0",
                                                            "--no-amp", "--out", "R"])


def test_the_resume_command_printed_under_torchrun_names_the_processes(mvtec_dir, tmp_path, monkeypatch):
    """Ctrl-C under `--nproc 2` printed `fair-edge train --resume --out RUN`: one process, not the exact continuation
    of a 2-process run. Rank 0 now prints --nproc 2 (the world size torchrun gave it)."""
    from typer.testing import CliRunner

    from fair_edge.cli import app
    from fair_edge.training.loop import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted(tmp_path / "run" / "last.pt", 5)

    monkeypatch.setattr("fair_edge.cli.train.run_training", interrupted)
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["train", str(mvtec_dir), "--width", "32", "--image-size", "32", "--steps", "9",
                                      "--device", "cpu", "--out", str(tmp_path / "run")], env={"COLUMNS": "400"})
    assert result.exit_code == 130, result.output
    assert f"Resume with: fair-edge train --resume --out {tmp_path / 'run'} --nproc 2" in result.output, result.output
    from fair_edge.cli.train import resume_hint

    monkeypatch.setenv("WORLD_SIZE", "4")  # 2 machines of 2: no --nproc launch continues it
    assert "the same torchrun command on every machine" in resume_hint(tmp_path / "run")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name)
    assert resume_hint(tmp_path / "run") == f"fair-edge train --resume --out {tmp_path / 'run'}"


def test_cli_resume_with_nproc_continues_a_run_at_another_image_size(mvtec_dir, tmp_path):
    """The real launch: a 2-process run at --image-size 32, then `train --resume --nproc 2 --out RUN` (nothing else
    typed) continues it; it was refused with "--image-size 256 (saved: 32)"."""
    import subprocess
    import sys

    out = tmp_path / "run"

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "fair_edge.cli", "train", *args], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"})
        text = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode == 0, text
        return text

    cli(str(mvtec_dir), "--width", "32", "--image-size", "32", "--cutoff", "4", "--steps", "2", "--batch", "4",
        "--device", "cpu", "--save-every", "1", "--out", str(out), "--no-amp", "--nproc", "2")
    text = cli("--resume", "--nproc", "2", "--device", "cpu", "--out", str(out))
    assert f"resumed {out / 'last.pt'} at step 2 of 2" in text and "2 processes (DDP) of 2" in text, text
    assert load_checkpoint(out / "final.pt").preprocess.image_size == 32
