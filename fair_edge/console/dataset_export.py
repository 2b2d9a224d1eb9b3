"""The reviewed parts exported as a training/evaluation dataset (``StationActions.export_reviewed``), each export in
a folder of its own under the output folder's datasets/ (``new_export_folder``: two exports in the same second, two
operators' clicks, never share one), audited; one that fails removes its folder while still empty."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from fair_edge.console.journal import Journal, utc_now, warning_of
from fair_edge.errors import RecorderError


def export_dataset(output: Path, exporter: Callable[[Path, Path], dict], audit: Journal, who: str) -> dict:
    """The reviewed parts of station output folder ``output`` exported by ``exporter`` (the link
    ``StationLinks.export_reviewed``) into a new folder under ``output``/datasets, named by the time to the second,
    and audited as ``who``'s (checked by the caller). An ``audit`` log that cannot be written refuses it
    (RecorderError, nothing exported); one that fails once exported adds a ``warning`` to the answer (what was
    exported). An export that fails removes its folder while still empty."""
    audit.check_writable()
    dest = new_export_folder(output / "datasets", f"reviewed-{utc_now().replace(':', '').replace('-', '')[:15]}")
    try:
        result = exporter(output, dest)
    except BaseException:
        with contextlib.suppress(OSError):   # not empty: what was exported stays, for the operator to see
            dest.rmdir()
        raise
    return {**result, **warning_of([audit.append_made({"action": "export", "who": who, "new": result})])}


def new_export_folder(parent: Path, name: str) -> Path:
    """A folder ``parent/name`` created now, or ``name-2``, ``name-3``, ... where that exists (each created with an
    exclusive mkdir: two exports asking at once never get the same one). RecorderError when none can be created."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            folder = parent / (name if n == 1 else f"{name}-{n}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return folder
    except OSError as exc:
        raise RecorderError(f"{parent}: could not create an export folder ({exc.strerror or exc}); free disk space "
                            "or make the output folder writable, then export again (nothing was exported)") from exc
    raise RecorderError(f"{parent}: expected a free folder name {name}[-N], found {name} to {name}-999 taken; move "
                        "earlier exports away, then export again (nothing was exported)")
