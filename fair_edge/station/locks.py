"""One station per output folder and per PLC output: the locks a station holds while it runs, and the refusals
taken with them at start, before the model loads.

``station_lock`` holds ``OUTPUT/.station.lock`` (and one in ``record.dir`` when that is elsewhere) and a lock on each
PLC address the station writes (its reject and fault sinks', the handshake's: ``fair_edge.line.plc_lock``) from
before the model loads until the summary is written (``station.run.run_station``, ``station.cell.run_cell``), so a
second `fair-edge run` on the same folder or the same PLC outputs is refused naming the running one's pid before it
opens a reject or fault output, the handshake, the verdict log or a port (a second station's fault sinks writing
their resting level would clear the first one's latched alarm; a second handshake would answer every part again).
First it refuses outputs the station must not write through or cannot write (``refuse_linked_outputs``,
``refuse_unwritable_outputs``). Under the lock and before the model loads, ``probe_gpio_lines`` requests and
releases every GPIO line the station drives: a line another process holds, or a chip that cannot be opened, refuses
the start then (not minutes later, after a TensorRT engine loaded), before the recorder, a port or a sink opens.
`fair-edge demo` holds its folder the same way (``hold_station_folder``). Start and stop only: nothing here runs
while frames pass.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from fair_edge.disk import unwritable_folder
from fair_edge.errors import ConfigError
from fair_edge.runlock import LockHolder, hold_lock

if TYPE_CHECKING:
    from fair_edge.line.plc_lock import PlcOutput
    from fair_edge.station.config import StationConfig

STATION_LOCK = ".station.lock"   # in the output folder (and record.dir): held while a station runs (station_lock)
STATION_BUSY = ("{folder}: a station is already running on this {what} ({holder}): stop it first ({stop}), "
                "or give this one another {fix}.")
BUSY_FOLDERS = {"output": ("output folder", "output folder (output: in the station file, or --out)"),
                "record": ("verdict-log folder", "verdict-log folder (record.dir: in the station file)"),
                "demo": ("output folder", "demo folder (fair-edge demo --out DIR)")}   # hold_station_folder's
BUSY_PLC = ("PLC output", "PLC output ({setting}: in the station file)")   # station_busy's what / fix for plc_busy
# what a station writes in its output folder (summary.json: station.run.write_summary; the console's journals and
# images: console.journal's REVIEWS and AUDIT, review/, datasets/) and in record.dir (line.recorder's verdict and gate
# logs, its NG images; the same folder unless record.dir names another): each there must be a file or folder of its
# own, or missing, never a symbolic link, which the station would write through (refuse_linked_outputs)
OUTPUT_WRITES = (STATION_LOCK, "summary.json", "reviews.jsonl", "audit.jsonl", "review", "datasets")
RECORD_WRITES = (STATION_LOCK, "verdicts.jsonl", "gate.jsonl", "ng")


@contextlib.contextmanager
def station_lock(cfg: StationConfig) -> Iterator[None]:
    """Hold the station's run lock (``STATION_LOCK``) in its output folder and, when the verdict log goes elsewhere,
    in ``record.dir``, then the lock of each PLC address it writes (``plc_outputs``), while the block runs:
    ConfigError (``STATION_BUSY``, naming the running station's pid and station file, the folder or PLC address
    and the fix) when another station holds one. The same thread may take it again inside (``open_line_side``
    does: a no-op under ``run_station``, the lock of a station of several cameras). First, ConfigError when a file or
    folder the station writes there is a symbolic link (``refuse_linked_outputs``), or when it could not write there
    at all (``refuse_unwritable_outputs``)."""
    from fair_edge.line.plc_lock import hold_plc_outputs

    what = f"fair-edge run --station {cfg.source_file.resolve()}" if cfg.source_file else "fair-edge run"
    folders = {Path(cfg.output).resolve(): (Path(cfg.output), "output")}
    folders.setdefault(Path(cfg.record.dir).resolve(), (Path(cfg.record.dir), "record"))
    refuse_linked_outputs(cfg)   # before the lock file is written: it may be a link too
    refuse_unwritable_outputs(cfg)   # before the lock file is tried: one that cannot be made runs unlocked
    with contextlib.ExitStack() as stack:
        for _, (folder, kind) in sorted(folders.items()):   # one order in every station (as its PLC locks): two
            stack.enter_context(hold_station_folder(folder, what, kind))   # started at once never refuse each other
        stack.enter_context(hold_plc_outputs(plc_outputs(cfg), what, plc_busy))
        yield


def refuse_linked_outputs(cfg: StationConfig) -> None:
    """ConfigError when a file or folder the station writes in its output folder (``OUTPUT_WRITES``) or in
    ``record.dir`` (``RECORD_WRITES``) is a symbolic link: the station would append its verdicts to, or save NG images
    and reviews into, whatever the link leads to (a link put there by anyone who can write the folder). The error
    names each link, where it leads and the fix (remove it). Checked at start, once (``station_lock``); a log
    link put there later fails that log's writes (``line.jsonl.open_log``: counted, never written through)."""
    found: dict[tuple[Path, str], Path] = {}   # (folder resolved, name) -> the path as configured: each once
    for folder, names in ((Path(cfg.output), OUTPUT_WRITES), (Path(cfg.record.dir), RECORD_WRITES)):
        for name in names:
            if (folder / name).is_symlink():
                found.setdefault((folder.resolve(), name), folder / name)
    links = list(found.values())
    if not links:
        return
    named = "; ".join(f"{link} leads to {_link_target(link)}" for link in links)
    raise ConfigError(f"expected the files and folders the station writes in its output folder and record.dir to be "
                      f"its own, found {len(links)} symbolic link(s): {named}. The station would write through a link "
                      f"into what it leads to: remove the link(s) (rm {' '.join(str(link) for link in links)}; what "
                      "they lead to is kept) and start again.")


def refuse_unwritable_outputs(cfg: StationConfig) -> None:
    """ConfigError when the station could not write its output folder or record.dir, or make the one that is
    missing (``disk.unwritable_folder``: a file where a folder should be, a read-only file system, a folder this
    account cannot write), naming the setting, the folder and why. Checked at start (``station_lock``), before the
    model loads: the recorder refused it only once the model had loaded (minutes for a TensorRT engine), after the
    run lock that could not be made there was warned about."""
    for setting, folder in (("output", Path(cfg.output)), ("record.dir", Path(cfg.record.dir))):
        why = unwritable_folder(folder)
        if why is not None:
            raise ConfigError(f"{setting}: expected a writable folder, found {folder} ({why}); pick another dir or "
                              "fix its permissions")


def _link_target(link: Path) -> str:
    """Where the symbolic link ``link`` leads, as it is written (``Path.readlink``), and the file or folder it resolves
    to when that differs (a relative link); "?" when it cannot be read."""
    try:
        written = str(link.readlink())
        resolved = str(link.resolve())
    except (OSError, RuntimeError):   # unreadable, a loop
        return "?"
    return written if written == resolved else f"{written} ({resolved})"


def hold_station_folder(folder: Path, what: str, kind: str = "output") -> contextlib.AbstractContextManager[Path]:
    """Hold ``folder``'s station lock (``STATION_LOCK``) while the block runs, as ``station_lock`` holds a station's
    output folder (``kind``: a ``BUSY_FOLDERS`` key, the refusal's words; "demo": `fair-edge demo`'s, which clears
    its station folder before its station runs there): ConfigError (``STATION_BUSY``) while another station runs
    there, before anything in it is touched. what: written in the lock file beside the pid. Yields the lock file."""
    return hold_lock(folder, STATION_LOCK, what, functools.partial(station_busy, folder, kind))


def plc_outputs(cfg: StationConfig) -> list[PlcOutput]:
    """The PLC addresses the station writes: the handshake's registers / nodes, the reject and fault sinks' and
    each camera's lane outputs (``cameras[i].reject``) that are Modbus or OPC UA."""
    from fair_edge.line.plc_lock import handshake_outputs, sink_outputs

    lanes = [sink_outputs(f"cameras[{i}].reject", view.reject) for i, view in enumerate(cfg.cameras)]
    return [*handshake_outputs(cfg.reject.handshake), *sink_outputs("reject.sinks", cfg.reject.sinks),
            *sink_outputs("reject.fault_sinks", cfg.reject.fault_sinks), *(o for lane in lanes for o in lane)]


def probe_gpio_lines(cfg: StationConfig) -> None:
    """Request each GPIO line the station drives, held together, then release them (``StationConfig.output_urls``;
    ``sinks.gpio.probe_gpio_outputs``) before the model loads: a line another process holds (a second station, a leftover script), a chip that cannot
    be opened, missing permissions or driver package refuse the start at once, with the message opening the line
    would give after the model loaded, prefixed with the setting; so does one line named as ``gpio://`` and as the
    ``jetson://`` pin wired to it, naming both settings. Called under ``station_lock``, so a second station
    on this output folder is refused naming its pid first. A line taken in between still refuses at open."""
    from fair_edge.line.settings import named_urls
    from fair_edge.line.sinks.gpio import probe_gpio_outputs

    probe_gpio_outputs(named_urls(cfg.output_urls()))


def plc_busy(output: PlcOutput, holder: LockHolder) -> str:
    """The refusal of a station one of whose PLC addresses (``output``) another station holds (``holder``: its pid
    and station file), naming the address and the settings that place it."""
    what, fix = BUSY_PLC
    return STATION_BUSY.format(folder=output.shown, what=what, holder=holder, stop=stop_words(holder),
                               fix=fix.format(setting=output.setting))


def station_busy(folder: Path, kind: str, holder: LockHolder) -> str:
    """The refusal of a station whose output folder (``kind`` "output") or verdict-log folder ("record": record.dir
    elsewhere) another station holds (``holder``: its pid and station file), naming the setting that moves it."""
    what, fix = BUSY_FOLDERS[kind]
    return STATION_BUSY.format(folder=folder, what=what, holder=holder, stop=stop_words(holder), fix=fix)


def stop_words(holder: LockHolder) -> str:
    """How a refusal says to stop the station holding a lock: its own systemd unit (``systemctl stop
    fair-edge-line1.service``, recorded in the lock file), else its pid (``kill -TERM N``) or Ctrl-C in its terminal.
    A unit's name is never guessed: a site of two lines has two units, and the default ``fair-edge`` may be the
    other line's."""
    command = holder.stop_command()
    if holder.unit is not None:
        return f"`{command}`"
    return f"`{command}`, or Ctrl-C in its terminal" if command else "Ctrl-C in its terminal, or stop its service"
