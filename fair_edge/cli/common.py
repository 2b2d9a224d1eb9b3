"""Pieces every command shares: the console, error handling, width check, progress bars."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fair_edge.disk import nearest_existing, read_only_mount
from fair_edge.errors import ConfigError, FairEdgeError, did_you_mean
from fair_edge.models.fair.unet import WIDTHS
from fair_edge.shell import shell_word  # noqa: F401  (re-exported: every command's ``next:`` lines quote with it)
from fair_edge.shortages import available_memory, in_words, out_of_memory, thread_count, thread_refused

console = Console(stderr=True)
EXIT_USAGE = 2  # our own errors: bad input, missing files, settings that do not fit
EXIT_INTERRUPTED = 130  # 128 + SIGINT: stopped by Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: stopped by SIGTERM (kill, systemctl stop, a CI timeout)
PROGRESS_EVERY_S = 10.0  # plain progress lines in logs (output not a terminal)
VERBOSE_FLAGS = ("-v", "--verbose")


class VerboseAnywhere(TyperGroup):
    """The top-level group: ``-v`` / ``--verbose`` count wherever they stand (``fair-edge train DATA -v``
    as well as ``fair-edge -v train DATA``); they are moved in front of the command before parsing."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        head = args[: args.index("--")] if "--" in args else args
        flags = [a for a in head if a in VERBOSE_FLAGS]
        if flags:
            rest = [a for a in head if a not in VERBOSE_FLAGS] + args[len(head):]
            args = flags[:1] + rest
        return super().parse_args(ctx, args)


def friendly_errors(fn=None, *, smaller: str = ""):
    """Turn our own exceptions into one clear line on stderr and exit code 2: wrapped to the width of a terminal,
    one line as it is anywhere else (a pipe, a log file, the journal under a systemd unit: one entry to grep). So are
    two shortages of the machine that would otherwise end in a traceback and exit 1: an allocation that failed
    (``out_of_memory``: MemoryError, torch's or ONNX Runtime's allocator; ``out_of_memory_line`` names the memory and
    the fixes, ``smaller``: how this command's work gets smaller, "a smaller --batch") and a thread that could not be
    started (the limit on threads and processes: ``thread_limit_line``). Used bare (``@friendly_errors``) or with
    ``smaller`` (``@friendly_errors(smaller="...")``)."""
    if fn is None:
        return functools.partial(friendly_errors, smaller=smaller)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FairEdgeError as exc:
            line = str(exc)
        except Exception as exc:  # noqa: BLE001 - only a shortage is turned into a line; anything else is raised
            line = shortage_line(exc, fn.__name__, smaller)
            if line is None:
                raise
        console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=not console.is_terminal)
        raise typer.Exit(EXIT_USAGE) from None

    return wrapper


PIDS_MAX = "/sys/fs/cgroup/pids.max"   # the cgroup's limit on tasks (systemd's TasksMax=), "max" when none


def shortage_line(exc: BaseException, command: str, smaller: str = "") -> str | None:
    """The one line of a command (``command``: its function's name) that ``exc`` stopped for want of memory
    (``out_of_memory_line``) or of threads (``thread_limit_line``); None for any other exception."""
    if thread_refused(exc):
        return thread_limit_line(exc)
    if out_of_memory(exc):
        return out_of_memory_line(exc, command, smaller)
    return None


def out_of_memory_line(exc: BaseException, command: str, smaller: str = "") -> str:
    """``command`` ran out of memory (``exc``: the allocator's error, its words kept: ``allocator_words``): the
    memory left once what the failed work held is freed (``available_memory``: RAM, a container's limit or the
    address-space limit, ulimit -v, whichever is least) and the fixes: raise that limit or free RAM, or give the
    command less work (``smaller``)."""
    words = allocator_words(exc)
    _drop_frames(exc)   # the failed work's tensors, held by the traceback's frames: freed before measuring
    there, source = _memory_there()
    name = command.removesuffix("_command")
    fixes = "; or ".join([MEMORY_FIXES.get(source, MEMORY_FIXES["available RAM"]), *([smaller] if smaller else [])])
    return f"{name} ran out of memory: {words}; {there}. {fixes[:1].upper()}{fixes[1:]}, then run it again."


def _memory_there() -> tuple[str, str]:
    """(what ``out_of_memory_line`` says of the memory left, ``available_memory``'s source of it). Reading it can fail
    too, just after an allocation failed (a MemoryError opening /proc/meminfo, a file that cannot be decoded): the
    line about the shortage is printed all the same, saying why no figure is given."""
    try:
        available, source = available_memory()
    except Exception as exc:  # noqa: BLE001 - any failure to measure: named in the line, which must still print
        return f"the memory available could not be told ({type(exc).__name__} reading it)", ""
    if available is None:
        return "the memory available could not be told", source
    return f"{in_words(available)} is available ({source})", source


def allocator_words(exc: BaseException, most: int = 300) -> str:
    """``exc``'s message on one line, at most about ``most`` characters: its start and its end where it is longer
    (torch's allocator says what failed first, ONNX Runtime's last: "... Failed to allocate memory for requested
    buffer of size N"); the exception's type name when it says nothing."""
    words = " ".join(str(exc).split()) or type(exc).__name__
    if len(words) <= most:
        return words
    return f"{words[:most // 3].rstrip()} ... {words[-(most - most // 3):].lstrip()}"


# how to get more of the memory ``available_memory`` found least of, by its source
MEMORY_FIXES = {
    "the address-space limit (ulimit -v)": "raise the address-space limit (ulimit -v unlimited in the shell that runs "
                                           "it; LimitAS= in a systemd unit)",
    "the container's memory limit": "raise the container's memory limit (docker run --memory, MemoryMax= in a "
                                    "systemd unit)",
    "available RAM": "free memory (stop other programs) or use a machine with more memory",
}


def _drop_frames(exc: BaseException) -> None:
    """Let go of the frames ``exc`` and the exceptions it chains hold (their locals: the tensors of the work that
    failed), then collect, so the memory measured after a failed allocation is what a new run would have."""
    import gc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
    gc.collect()


def thread_limit_line(exc: BaseException) -> str:
    """A thread could not be started (``exc``: threading's "can't start new thread"): the limit on threads and
    processes was reached, ulimit -u (it counts every process and thread of the account) or the cgroup's tasks
    (``PIDS_MAX``: systemd's TasksMax=), named with its value and this process's thread count, and the fix."""
    limits = []
    try:
        import resource

        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        if nproc != resource.RLIM_INFINITY:
            limits.append(f"ulimit -u {nproc} for this account, counting every process and thread it runs")
    except (ImportError, AttributeError, OSError, ValueError):
        pass
    try:
        tasks = Path(PIDS_MAX).read_text().strip()
        if tasks.isdigit():
            limits.append(f"TasksMax {tasks} tasks in this service's cgroup")
    except OSError:
        pass
    found = f" ({'; '.join(limits)})" if limits else ""
    return (f"could not start a thread ({exc}; this process runs {thread_count()}): the limit on threads "
            f"and processes was reached{found}. Raise it: TasksMax= in the systemd unit (e.g. TasksMax=4096; "
            "`systemctl show -p TasksMax UNIT` shows it), or ulimit -u in the shell or account that starts fair-edge "
            "(LimitNPROC= in a unit); then run it again.")


class Terminated(KeyboardInterrupt):
    """SIGTERM during a command under ``sigterm_as_interrupt``, raised in the main thread like Ctrl-C's
    KeyboardInterrupt, so the same cleanup runs (a build's or an eval report's staging folder is removed)."""


def stopped_by_sigterm(exc: BaseException) -> bool:
    """True when ``exc`` is SIGTERM's ``Terminated``, or an interrupt raised from one (``raise ... from stop``, as
    ``export.build.StoppedAfterMove``); False for Ctrl-C."""
    return isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated)


def interrupt_exit_code(exc: BaseException) -> int:
    """The exit code of a command stopped by ``exc``: 143 for SIGTERM (``stopped_by_sigterm``), 130 for Ctrl-C."""
    return EXIT_TERMINATED if stopped_by_sigterm(exc) else EXIT_INTERRUPTED


@contextlib.contextmanager
def sigterm_as_interrupt(stopped: str, interrupted: str | None = None):
    """For the duration: SIGTERM raises ``Terminated`` in the main thread, once (a second SIGTERM while the cleanup
    runs is ignored, so it is not cut short); then the previous handler is back. A ``Terminated`` that ends the
    block (or an interrupt raised from one, ``stopped_by_sigterm``) exits 143 (128 + SIGTERM) with ``error: STOPPED``
    on stderr (``stopped``: what was stopped, what is left and what to do). With ``interrupted`` (the same for
    Ctrl-C), a plain KeyboardInterrupt that ends the block exits 130 with ``error: INTERRUPTED``; without it, it goes
    on as raised. Usable as a decorator. Outside the main thread (no signals there): nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def on_sigterm(signum, _frame) -> None:
        if not fired:
            fired.append(signum)
            raise Terminated(f"signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt as exc:
        if stopped_by_sigterm(exc):
            line, code = stopped, EXIT_TERMINATED
        elif interrupted is not None:
            line, code = interrupted, EXIT_INTERRUPTED
        else:
            raise
        print(f"error: {line}", file=sys.stderr)
        raise typer.Exit(code) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_plain(text: str) -> None:
    """Print ``text`` as it is on stderr, one line per line: no Rich markup (a path's ``[b]`` is text, its ``[/`` no
    MarkupError), no highlighting, no wrapping (a ``next:`` command stays one line to copy). For lines with paths
    that carry no style of their own, and lines made by library code (``on_start``)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def replay_spec(source: Path) -> str:
    """The camera source spec of ``--source PATH`` (run, collect): ``folder:PATH`` for an existing folder or an
    image file training reads (``part.png``: replayed as a one-image folder, decoded by training's reader, not by
    FFmpeg as a one-frame video), ``video:PATH`` for any other existing file (kinds of
    ``fair_edge.cameras.registry.SOURCES``), so a folder of frames named for its date (``20240115``, or
    ``./20240115``: pathlib drops the ``./``) is replayed, not opened as camera index 20240115 by the bare-target
    guess (``AUTO_RULES``: all digits = a camera index). Any other PATH as typed: a number that names no file or
    folder stays a camera index, a missing file gets the source's own error."""
    from fair_edge.cameras.replay import is_image_file

    text = "/" + str(source).lstrip("/") if str(source).startswith("//") else str(source)   # 'KIND://' is a URL
    if source.is_dir() or is_image_file(source):
        return f"folder:{text}"
    if source.is_file():
        return f"video:{text}"
    return str(source)


def check_out_writable(out: Path, writer: str = "a training run", writes: str = "its checkpoints",
                       files: str = "last.pt, final.pt, loss.csv") -> None:
    """ConfigError naming --out unless ``writer`` (what the command is: "a training run", "an evaluation") can
    write there: ``out`` is a folder, or a path whose nearest existing folder is writable and searchable by this
    account on a file system mounted read-write (root writes anywhere but on a read-only mount). writes: what it
    writes there ("its checkpoints"); files: the files it writes, for the message when ``out`` is a file. Checked
    without creating anything, so a refused run leaves no folder, and before the work, not after it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; {writer} writes a folder ({files}). "
                          "Pass a new or existing folder.")
    folder = nearest_existing(out)
    where = "" if folder == out else f" (it would be made in {folder}, the nearest folder that exists)"
    if read_only_mount(folder):
        raise ConfigError(f"--out {out}: {folder} is on a read-only file system{where}; {writer} writes {writes} "
                          "there. Choose an --out on a writable disk, or remount that disk read-write.")
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise ConfigError(f"--out {out}: {folder} is not writable by this account{where}; {writer} writes "
                          f"{writes} there. Choose an --out you can write, or make that folder writable.")


def check_file_writable(path: Path, flag: str, example: str) -> None:
    """ConfigError naming ``flag`` (--json) unless a file can be written at ``path`` after the work: ``path`` is no
    folder, its nearest existing folder (``path``'s own, or the one its folders would be made in) is a folder, not a
    file, and this account can write there on a file system mounted read-write, and an existing file at ``path`` is
    writable. example: a file name for the fix when ``path`` is a folder. Checked without creating anything, before
    the work, so a mistyped path is not found after it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; expected a file path, e.g. {path / example}.")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: {folder} is a file, not a folder, so no file can be written under it; "
                          "expected a file path in a folder (or one to be made).")
    if read_only_mount(folder):
        raise ConfigError(f"{flag} {path}: {folder} is on a read-only file system; choose a path on a writable disk.")
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK | (0 if target is path else os.X_OK),
                     effective_ids=os.access in os.supports_effective_ids):
        raise ConfigError(f"{flag} {path}: {target} is not writable by this account; choose a path you can write.")


def check_width(width: int, flag: str = "--width") -> int:
    """The CLI trains, builds and benches the paper's widths only (the library accepts any)."""
    if width not in WIDTHS:
        raise ConfigError(f"{flag} must be one of {', '.join(map(str, WIDTHS))}; found {width}."
                          f"{did_you_mean(width, WIDTHS, sentence=True)}")
    return width


def progress_bar(*extra: str):
    """A live progress bar on a terminal; plain lines every PROGRESS_EVERY_S seconds in a log (nohup,
    systemd, CI), where a live bar would print nothing until the end. ``extra``: task fields shown."""
    if not console.is_terminal:
        return PlainProgress(console, extra, PROGRESS_EVERY_S)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{{task.fields[{name}]}}") for name in extra]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console)


class PlainProgress:
    """The subset of rich's Progress our commands use (add_task, update, advance, context manager),
    printing one plain line per unfinished task every ``every_s`` seconds from a timer thread (so a
    slow step still shows the run is alive), and a last line per task at the end. A finished task's
    clock stops when it finishes (as rich's does); while every task is finished but the work goes on
    (the display is still open), each tick prints the last finished task's line and how long since."""

    def __init__(self, out: Console, fields: tuple[str, ...], every_s: float) -> None:
        self.out, self.fields, self.every_s = out, fields, every_s
        self.tasks: list[dict] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._tick, name="progress-lines", daemon=True)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        with self.lock:
            now = time.monotonic()
            task = {"description": description, "total": total, "completed": completed, "start": now,
                    "first": completed, "finished": None, **fields}
            self.tasks.append(task)
            _note_finish(task, now)
            return len(self.tasks) - 1

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, **fields) -> None:
        with self.lock:
            task = self.tasks[task_id]
            if total is not None:
                task["total"] = total
            if completed is not None:
                task["completed"] = completed
            task["completed"] += advance or 0
            task.update(fields)
            _note_finish(task, time.monotonic())

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def line(self, task: dict) -> str:
        """e.g. 'train 120/300 (40%) loss 0.4100 12.3 img/s | 1:02 elapsed, about 1:33 left'; the count is left
        out while a task without a total has none ('loading | 0:10 elapsed')."""
        done, total = task["completed"], task["total"]
        elapsed = (task["finished"] or time.monotonic()) - task["start"]
        text = task["description"] + (f" {done:g}" if total or done else "")
        text += f"/{total:g} ({done / total:.0%})" if total else ""
        text += "".join(f" {task[name]}" for name in self.fields if task.get(name))
        text += f" | {_clock(elapsed)} elapsed"
        rate = (done - task["first"]) / elapsed if elapsed > 0 else 0.0
        if total and rate > 0 and done < total:
            text += f", about {_clock((total - done) / rate)} left"
        return text

    def _print_all(self, unfinished_only: bool) -> None:
        with self.lock:
            lines = [self.line(t) for t in self.tasks if not (unfinished_only and t["finished"] is not None)]
            if unfinished_only and not lines and self.tasks:  # between tasks, or after the last: still alive
                last = max(self.tasks, key=lambda t: t["finished"])
                lines = [f"{self.line(last)}; still working, {_clock(time.monotonic() - last['finished'])} since"]
        for text in lines:
            self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    def _tick(self) -> None:
        while not self.stop.wait(self.every_s):
            self._print_all(unfinished_only=True)

    def __enter__(self) -> "PlainProgress":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5.0)
        self._print_all(unfinished_only=False)


def _note_finish(task: dict, now: float) -> None:
    """Stamp ``task`` finished at ``now`` (monotonic s) when its count reaches its total; unstamp it if the total grew."""
    done = bool(task["total"]) and task["completed"] >= task["total"]
    if not done:
        task["finished"] = None
    elif task["finished"] is None:
        task["finished"] = now


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
