"""What the machine ran short of, told apart from any other failure: an allocation that failed (``out_of_memory``)
or a thread the OS refused (``thread_refused``); and how much there is: the memory this process can still take
(``available_memory``: RAM, a container's limit or the address-space limit, whichever is least), the threads it runs
(``thread_count``), bytes in words (``in_words``).

Read by a PatchCore fit (its estimate against what is available), ``fair-edge tune`` (a candidate that ran out is
marked and the next one runs) and every command's one-line error (``cli.common.shortage_line``). Standard library
only: it is read just after an allocation failed, when importing a large module may fail too.
"""

from __future__ import annotations

import threading

GIB = 2 ** 30

# the words of an allocator's failure, lower case: torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory"),
# CUDA's ("CUDA out of memory"), ONNX Runtime's arena ("BFCArena::AllocateRawInternal ... Failed to allocate memory")
OOM_TEXT = ("can't allocate memory", "out of memory", "cannot allocate memory", "failed to allocate memory")
ORT_MODULE = "onnxruntime"   # ONNX Runtime's errors (``Fail``, ``RuntimeException``) are not RuntimeErrors
THREAD_LIMIT_TEXT = "can't start new thread"   # threading's RuntimeError when the OS refuses a thread (EAGAIN)

MEMINFO = "/proc/meminfo"
# (limit, usage, stat, the stat's reclaimable page cache) of a container's memory cgroup: v2, then v1
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
                 "inactive_file"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                 "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"))


def in_words(size: int) -> str:
    """Bytes as "3.2 GiB" (1 GiB and over) or "310 MiB"."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / 2 ** 20:.0f} MiB"


def out_of_memory(exc: BaseException | None) -> bool:
    """True for an allocation failure: MemoryError (numpy's too), torch.cuda.OutOfMemoryError, the RuntimeError of
    torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory") or ONNX Runtime's error of a failed
    allocation ("BFCArena ... Failed to allocate memory"); False for None and anything else."""
    if isinstance(exc, MemoryError):
        return True
    allocator = isinstance(exc, RuntimeError) or type(exc).__module__.startswith(ORT_MODULE)
    return allocator and any(t in str(exc).lower() for t in OOM_TEXT)


def thread_refused(exc: BaseException) -> bool:
    """True for threading's RuntimeError "can't start new thread": the OS refused a thread (the limit on threads and
    processes, ulimit -u or a cgroup's TasksMax, was reached)."""
    return isinstance(exc, RuntimeError) and THREAD_LIMIT_TEXT in str(exc)


def available_memory() -> tuple[int | None, str]:
    """(bytes of RAM this process can still take, >= 0, where the figure comes from), or (None, "") where it cannot
    be told: psutil's or /proc/meminfo's MemAvailable, lowered to a container's memory limit less its use (cgroup v2
    or v1, page cache not counted) and to an address-space limit (ulimit -v) less this process's size. A limit
    already passed (a process larger than ``ulimit -v`` set after it grew, a container over its limit) leaves 0."""
    found = []
    try:
        import psutil

        found.append((int(psutil.virtual_memory().available), "available RAM"))
    except Exception:  # noqa: BLE001 - psutil missing or unable to tell: /proc below
        meminfo = _read_fields(MEMINFO)
        if "MemAvailable" in meminfo:
            found.append((meminfo["MemAvailable"] * 1024, "available RAM"))
    for limit_file, usage_file, stat_file, cache in CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2 ** 60:
            found.append((limit - usage + _read_fields(stat_file).get(cache, 0), "the container's memory limit"))
            break
    try:
        import resource

        cap = resource.getrlimit(resource.RLIMIT_AS)[0]
        if cap != resource.RLIM_INFINITY:
            size = _read_fields("/proc/self/status").get("VmSize", 0) * 1024
            found.append((cap - size, "the address-space limit (ulimit -v)"))
    except (ImportError, OSError, ValueError):
        pass
    if not found:
        return None, ""
    least, source = min(found)
    return max(least, 0), source


def _read_fields(path: str) -> dict[str, int]:
    """{name: first number} of a "name: number ..." / "name number" file (/proc/meminfo, memory.stat); {} unreadable."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for words in (line.replace(":", " ", 1).split() for line in lines):
        if len(words) >= 2 and words[1].isdigit():
            out[words[0]] = int(words[1])
    return out


def _read_int(path: str) -> int | None:
    """The integer in a one-line file (a cgroup limit or usage); None when unreadable or "max" (no limit)."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def thread_count() -> int:
    """The threads of this process, native ones (ONNX Runtime's, OpenVINO's, torch's) included: ``Threads:`` of
    /proc/self/status (Linux); Python's own threads where that cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return threading.active_count()
