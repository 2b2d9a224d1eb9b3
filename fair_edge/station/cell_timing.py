"""When a cell's part is complete, read from the station file: how long a part waits for its views
(``part_timeout_s``), where it closes by belt count instead (``part_close_by_count``), until when its reject gate
can still reject it (``part_due_s``: the ``PartAssembler``'s ``due_s``), and the start's warning on an encoder
window narrower than the belt's travel in one poll (``warn_window_counts``). ``cell.check_cameras`` calls
``part_timeout_s`` before anything opens (its refusals come first); ``cell_line.open_cell_line`` hands these to the
assembler."""

from __future__ import annotations

import logging
import math

from fair_edge.errors import ConfigError
from fair_edge.station.config import StationConfig
from fair_edge.station.parts import CloseByCount

log = logging.getLogger("fair_edge.station.cell")   # the cell's logger: its start warnings keep one name

NO_GATE_TIMEOUT_S = 1.0   # group.part_timeout_ms unset and no reject timing: a part waits this long for its views


def gate_times_parts(cfg: StationConfig) -> bool:
    """Whether the cell's gate decides each part at a due time (``reject.delay_ms`` after its capture, or at
    ``encoder_distance``): a reject output, or a fault lamp alone given a travel time. A part cell's lamp alone at
    ``delay_ms`` 0 decides each part when the cell hands it over with its views (no due time, as before 0718de0);
    a lamp on a handshake station decides no part (``RejectSettings.decides_parts``)."""
    r = cfg.reject
    return r.decides_parts and (bool(r.sinks) or r.delay_ms > 0 or r.encoder_distance is not None)


def part_timeout_s(cfg: StationConfig) -> float:
    """How long a part waits for its views, s: ``group.part_timeout_ms``, else until its due time at the gate (a view
    that comes before the gate's cut-off completes the part in time; one still missing leaves the gate without a
    verdict, which it decides fail-safe: closing the part earlier would only take latency from every view); with
    the PLC handshake, half its result timeout (at most ``NO_GATE_TIMEOUT_S``); ``math.inf`` where the part closes
    by belt count instead (``part_close_by_count``: a slow or stopped belt must not time a good part out; while the
    encoder has no position, ``NO_GATE_TIMEOUT_S`` after it opened)."""
    if cfg.group.part_timeout_ms is not None:
        timeout, found = cfg.group.part_timeout_ms / 1000.0, cfg.group.part_timeout_ms
        if gate_times_parts(cfg) and cfg.reject.encoder_distance is None and timeout > cfg.reject.delay_ms / 1000.0:
            raise ConfigError(f"group.part_timeout_ms: expected at most reject.delay_ms ({cfg.reject.delay_ms:g}), "
                              f"found {found:g}: the part would reach the gate before its views are all in; lower "
                              "part_timeout_ms or leave it unset (= the due time).")
        if cfg.reject.handshake.enabled and timeout >= cfg.reject.handshake.result_timeout_ms / 1000.0:
            raise ConfigError(f"group.part_timeout_ms: expected less than reject.handshake.result_timeout_ms "
                              f"({cfg.reject.handshake.result_timeout_ms:g}), found {found:g}: the PLC would time the "
                              "part out first; lower part_timeout_ms or leave it unset.")
        return timeout
    if part_close_by_count(cfg) is not None:
        return math.inf
    if gate_times_parts(cfg) and cfg.reject.encoder_distance is None:
        return cfg.reject.delay_ms / 1000.0
    if cfg.reject.handshake.enabled:   # answered well inside the PLC's result timeout
        return min(NO_GATE_TIMEOUT_S, cfg.reject.handshake.result_timeout_ms / 2000.0)
    return NO_GATE_TIMEOUT_S


def part_close_by_count(cfg: StationConfig) -> CloseByCount | None:
    """``match: encoder`` with ``group.part_timeout_ms`` unset: where a part closes on the belt, counted from its key
    (its count at the camera at offset 0). With ``reject.encoder_distance``: at the gate's count, the count at which
    the gate decides the part (a view in before it completes the part in time; one still missing leaves the gate
    without a verdict, which it decides fail-safe, so closing earlier gains nothing and closing later helps no view).
    Without it and without a timed gate: ``NO_GATE_TIMEOUT_S`` after the belt passed the furthest camera's window
    (its view's inspection). Either way, while the encoder has no belt position (its link is down: the count does not
    move), ``NO_GATE_TIMEOUT_S`` after the part opened, as a part without a gate count (the gate decides a part
    captured then ``position_lost``; kept open, the parts would pile up until the link is back). None otherwise (the
    part closes by time: ``part_timeout_s``)."""
    if cfg.group.match != "encoder" or cfg.group.part_timeout_ms is not None:
        return None
    if cfg.reject.encoder_distance is not None:
        return CloseByCount(cfg.reject.encoder_distance, 0.0, NO_GATE_TIMEOUT_S)
    if gate_times_parts(cfg):   # a timed gate (reject.delay_ms): the part's due time
        return None
    furthest = max((v.offset_counts for v in cfg.cameras), default=0)
    return CloseByCount(furthest + cfg.group.window_counts, NO_GATE_TIMEOUT_S, NO_GATE_TIMEOUT_S)


def warn_window_counts(cfg: StationConfig, encoder: object) -> str:
    """``match: encoder``: log at start, as a warning, that ``group.window_counts`` is below the counts the belt travels
    in one of the encoder's polls at the top speed its URL states (``max_counts_per_s`` x ``poll_ms``: how far apart
    the views of one part can be keyed when the counter changes only once a poll); returns it ("" when it is not, or
    when the URL states no top speed: the belt's speed is not known at start). Each view is keyed by the count at
    its capture time, interpolated between the encoder's readings (``PolledEncoder.mark_at``)."""
    if cfg.group.by != "part" or cfg.group.match != "encoder":
        return ""
    speed, poll_s = float(getattr(encoder, "stated_speed", 0.0)), float(getattr(encoder, "poll_s", 0.0))
    travel = speed * poll_s
    if travel <= cfg.group.window_counts:
        return ""
    note = (f"group.window_counts: {cfg.group.window_counts} counts is below the {travel:.0f} counts the belt travels "
            f"in one encoder poll at its stated top speed (reject.encoder max_counts_per_s={speed:g} x "
            f"poll_ms={poll_s * 1000:g}): the views of one part may be keyed further apart than that and open parts "
            "of their own, rejected fail-safe with their views missing; set window_counts to at least "
            f"{math.ceil(travel)} (and below half the part pitch in counts), or poll the counter faster")
    log.warning("%s", note)
    return note


def part_due_s(cfg: StationConfig, gated: bool, by_count: bool) -> float:
    """How long after a part's first view's capture its reject gate can still reject it (``PartAssembler``'s
    ``due_s``, s): ``reject.delay_ms + late_ms`` where the gate (``gated``: a scheduler deciding parts is open)
    decides parts by time (``gate_times_parts``: a reject output, held to ``delay_ms`` > 0 at start by
    ``run.check_reject_timing``, or a fault lamp alone given ``delay_ms`` > 0); inf where there is no such gate (a
    lamp alone at ``delay_ms`` 0 decides each part as it is handed over; a lamp on a handshake station decides no
    part) or it goes by belt count (``by_count``: an encoder)."""
    if not gated or by_count or not gate_times_parts(cfg):
        return math.inf
    return (cfg.reject.delay_ms + cfg.reject.late_ms) / 1000.0
