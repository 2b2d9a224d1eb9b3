"""The reject gate's latched alarms: every alarm latched since the operator's last acknowledgement, in one text.

Before, the gate held only its latest alarm, each new one written over the last: NG part 5 not rejected
(``gap_missed``) and part 6 passing uninspected 0 ms later showed only part 6 on the page, the fault output's reason,
systemd's STATUS and MQTT, and the acknowledgement cleared and audited that one: the operator pulled part 6 and let
NG part 5 ship. ``LatchedAlarms`` keeps them all until the acknowledgement: one alarm is shown as it was raised;
several as their count, the sequence numbers they span, the parts grouped by what became of them (their fate label,
below: each group's count and its first ``grouped_log.SEQS_NAMED`` sequence numbers, ``seq_list``), then the first
and the latest alarm as raised. Every alarm changes the text (the count goes up), so a page that showed it can be
checked against it: one latched since is never acknowledged unseen. Its memory and its text are bounded however many
alarms latch (a camera out for an hour at line rate latches one per part).
"""

from __future__ import annotations

from collections.abc import Iterable

from .grouped_log import SEQS_NAMED, seq_list

# what became of the parts an alarm names (its ``fate``), the groups of the text of several alarms
NOT_REJECTED_GAP = "not rejected (gap_missed)"
NOT_REJECTED_PULSE = "not rejected (reject pulse missed)"
UNCONFIRMED = "reject pulse unconfirmed"
NOT_REJECTED_LATE = "not rejected (verdict after the part passed the gate)"
NOT_REJECTED_LOST = "not rejected (position lost)"
REFUSED = "refused (reject.max_pending)"
PASSED_UNINSPECTED = "passed uninspected"


class _Parts:
    """The parts of one fate: how many, and the first ``SEQS_NAMED`` sequence numbers in the order they latched."""

    def __init__(self) -> None:
        self.count = 0
        self.named: list[int] = []

    def add(self, seqs: tuple[int, ...]) -> None:
        self.count += len(seqs)
        self.named.extend(seqs[:SEQS_NAMED - len(self.named)])

    def text(self, fate: str) -> str:
        """'passed uninspected: 39 parts, seq 16, 17, ... and 19 more (all in gate.jsonl)'."""
        count = f"{self.count} parts, " if self.count > 1 else ""
        return f"{fate}: {count}seq {seq_list(self.named, total=self.count)}"


class LatchedAlarms:
    """The alarms latched since the last acknowledgement (see the module doc). ``add`` one, ``text`` names them
    all; a new one stands for none latched (the acknowledgement starts one). ``what``: what several are called in
    the text ("alarms"; a sink's missed pulses: "pulse faults of plc"). Not thread-safe: its owner
    (``gate_alarms.GateAlarms``) holds its lock."""

    def __init__(self, what: str = "alarms") -> None:
        self.what = what
        self.count = 0                          # alarms latched
        self._first = self._latest = ""         # their texts as raised
        self._parts: dict[str, _Parts] = {}     # fate -> its parts, in the order the fates first latched
        self._span: tuple[int, int] | None = None   # the lowest and highest sequence number named (None: none)

    def add(self, text: str, fate: str = "", seqs: Iterable[int] = ()) -> None:
        """Latch the alarm ``text`` (as raised and logged) naming the parts ``seqs`` (sequence numbers), whose
        fate was ``fate`` (a fate label of this module's, "": the parts are named by the text alone)."""
        seqs = tuple(seqs)
        self.count += 1
        self._first = self._first or text
        self._latest = text
        if seqs:
            lo, hi = min(seqs), max(seqs)
            self._span = (lo, hi) if self._span is None else (min(lo, self._span[0]), max(hi, self._span[1]))
        if fate and seqs:
            self._parts.setdefault(fate, _Parts()).add(seqs)

    def text(self) -> str | None:
        """All the alarms latched in one bounded text (one: as raised), or None when none is."""
        if self.count <= 1:
            return self._latest or None
        span = f", parts seq {self._span[0]} .. {self._span[1]}" if self._span is not None else ""
        groups = "".join(f"; {parts.text(fate)}" for fate, parts in self._parts.items())
        return (f"{self.count} {self.what} since the last acknowledgement{span}{groups}; first: {self._first}; "
                f"latest: {self._latest}")
