"""What ``fair-edge tune`` writes and keeps: its rows (``TuneRow``: one candidate's result, ranked by
``rank_key``), OUT/tune.csv and OUT/tune.json (``write_results``, each whole or absent, tune.json last: a folder
without it holds no finished run), the ranking kept in tune.csv while candidates run (``KeptRanking``, and the
``TuneStopped`` error that names it), and the checks of a tune folder (``check_fresh_tune``, ``unfinished_tune``,
``clear_tune``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Sequence

from fair_edge.training.loop import TrainingInterrupted
from fair_edge.disk import discard_unfinished, write_failure
from fair_edge.training.data import Sample
from fair_edge.errors import ConfigError, DataError, FairEdgeError
from fair_edge.training.runs import remove_outputs
from fair_edge.training.tune_candidates import Candidate, TuneSettings

log = logging.getLogger("fair_edge.training.tune")   # tune's logger: its warnings keep one name
FIXED_RATE = 0.05  # the second catch figure's false-reject rate (tune.csv, the table's catch@5%), besides the target
OUT_OF_MEMORY = "out of memory"   # tune.csv's status of a candidate that ran out of memory (the tune went on)
TUNE_FINISHED = "tune.json"  # renamed into place last, once every candidate has run: a finished run holds it
PARTIAL = ".{}.partial"  # a result file's temporary name beside it until it is renamed into place
TUNE_OUTPUTS = ("tune.json", "tune.csv", "candidates", "proxy",
                PARTIAL.format("tune.json"), PARTIAL.format("tune.csv"))  # what one tune run writes under OUT


def check_fresh_tune(out: Path) -> None:
    """ConfigError when ``out`` already holds a finished tune run (``TUNE_FINISHED``: tune.json, written last): a
    new run would replace its results and checkpoints, or mix its files with the new run's. Names the folder and
    the choices. What an interrupted or failed run left (``unfinished_tune``: a tune.csv without tune.json too) is
    no run to keep: the caller deletes it."""
    if (Path(out) / TUNE_FINISHED).exists():
        raise ConfigError(
            f"{out} already holds a tune run ({TUNE_FINISHED}); a new run there would overwrite it. Tune into "
            f"another folder (--out NEW_FOLDER), or pass --overwrite to delete that run first: "
            f"`fair-edge tune DATA --out {shlex.quote(str(out))} --overwrite`."
        )


def unfinished_tune(out: Path) -> list[str]:
    """What an interrupted or failed tune run left in ``out`` (the names of ``TUNE_OUTPUTS`` there: candidates/,
    proxy/, a tune.csv or a temporary ``.NAME.partial``) when it holds no ``TUNE_FINISHED`` (tune.json); [] when
    there is none, or when the run finished."""
    out = Path(out)
    if (out / TUNE_FINISHED).exists():
        return []
    return [name for name in TUNE_OUTPUTS if os.path.lexists(out / name)]


def clear_tune(out: Path) -> list[Path]:
    """Delete what a tune run wrote under ``out`` (``TUNE_OUTPUTS``; --overwrite); returns those deleted. Other
    files are kept."""
    return remove_outputs(out, TUNE_OUTPUTS)


@dataclass
class TuneRow:
    """One candidate's result on the proxy set (None where it was skipped)."""

    candidate: Candidate
    status: str = "skipped (budget)"
    proxy_auroc: float | None = None
    proxy_catch: float | None = None
    proxy_catch_5pct: float | None = None
    train_s: float | None = None
    checkpoint: str = ""
    by_kind: dict = field(default_factory=dict)
    # the false rejects each catch figure was measured at (``evaluate.achieved_false_rejects``: k of n held-out
    # normals, with the note when they are too few to resolve the rate); None where it was skipped
    false_rejects: dict | None = None
    false_rejects_5pct: dict | None = None

    def rank_key(self) -> tuple[float, float]:
        """(catch, AUROC) on the proxy set, -1 for a figure it lacks (skipped, out of memory): a finished candidate
        that caught nothing (0.0) still ranks above one never scored."""
        return (-1.0 if self.proxy_catch is None else self.proxy_catch,
                -1.0 if self.proxy_auroc is None else self.proxy_auroc)


class TuneStopped(FairEdgeError):
    """A tune stopped by an error of ours (its ``__cause__``: a checkpoint that could not be written, ...) after at
    least one candidate finished; its message is the cause's, then where the finished candidates' figures are kept
    (``KeptRanking.stopped``)."""


@dataclass
class KeptRanking:
    """The finished candidates of a running tune, ranked in OUT/tune.csv (no tune.json) as each one finishes, so a
    tune stopped later (a disk that the next candidate's checkpoints fill, an error, Ctrl-C) leaves their figures
    there. ``saved``: how many of ``finished`` tune.csv holds; ``write_error``: why the last write failed (None: it
    did not); ``warned``: a failed write was logged (once a run)."""

    out: Path
    settings: TuneSettings
    finished: list[TuneRow] = field(default_factory=list)
    saved: int = 0
    write_error: OSError | None = None
    warned: bool = False

    def add(self, row: TuneRow) -> None:
        """Rank the finished ``row`` with the others in tune.csv; the first write that fails is a warning, and the
        tune goes on (the next candidate's write tries again)."""
        self.finished.append(row)
        self.save()
        if self.write_error is not None and not self.warned:
            self.warned = True
            log.warning("tune: %s not written (%s); tune goes on and writes it again after the next candidate",
                        self.out / "tune.csv", self.write_error.strerror or self.write_error)

    def save(self) -> None:
        """Write tune.csv of every finished row, best first, whole or not at all (``write_whole``)."""
        ranked = self.ranked()
        try:
            write_whole(self.out, {"tune.csv": results_csv(ranked, self.settings)}, ranked[0])
        except TuneWriteError as exc:
            self.write_error = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            return
        self.saved, self.write_error = len(self.finished), None

    def ranked(self) -> list[TuneRow]:
        """The finished rows, best first (``TuneRow.rank_key``)."""
        return sorted(self.finished, key=lambda r: r.rank_key(), reverse=True)

    def stopped(self, exc: BaseException) -> FairEdgeError | None:
        """After the tune was stopped by ``exc``: tune.csv written again if it lacks a finished row, and the error to
        raise in place of ``exc``: a ``TuneStopped`` (``exc``'s message, then ``kept_text``) for an error of ours;
        None for Ctrl-C or SIGTERM (KeyboardInterrupt, ``TrainingInterrupted``: the caller names tune.csv in its line;
        a tune.csv short of rows is a warning with the figures) and for a bug (``kept_text`` logged as an error).
        None as well when no candidate finished."""
        if not self.finished:
            return None
        if self.saved < len(self.finished):
            self.save()
        kept = kept_text(self.ranked(), self.out, self.saved, self.write_error)
        if isinstance(exc, (KeyboardInterrupt, TrainingInterrupted)):
            if self.write_error is not None:
                log.warning("tune: %s", kept)
            return None
        if isinstance(exc, FairEdgeError):
            return TuneStopped(f"{exc} {kept}")
        log.error("tune failed: %s", kept)
        return None


def kept_text(ranked: list[TuneRow], out: Path, saved: int, write_error: OSError | None) -> str:
    """The sentence saying where the finished candidates' figures are (``ranked``, best first): OUT/tune.csv, which
    the next tune into ``out`` deletes as it starts over; or, when tune.csv holds only ``saved`` of them
    (``write_error``: why), their figures themselves."""
    n = len(ranked)
    which = f"The {n} candidate{'' if n == 1 else 's'} that finished before it"
    csv_path = out / "tune.csv"
    if write_error is None:
        return (f"{which} {'is' if n == 1 else 'are'} ranked in {csv_path} (no tune.json: nothing chosen); the next "
                f"tune into {out} deletes it as it starts over: copy it first.")
    figures = "; ".join(f"{r.candidate.name}: proxy catch {r.proxy_catch:.3f}, AUROC {r.proxy_auroc:.3f}"
                        for r in ranked)
    held = f"it holds {saved} of them" if saved else "it was never written"
    return (f"{which} could not all be kept in {csv_path} ({write_error.strerror or write_error}; {held}): "
            f"{figures}.")


def catch_columns(settings: TuneSettings) -> list[str]:
    """tune.csv's catch columns: proxy catch at the target false-reject rate, then at 5 % unless the target is 5 %
    (--false-reject-rate 0.05: one column, not two of one name). Named by ``percent_label``, so two different
    rates never share a name (0.0499: proxy_catch_at_4.99%, beside proxy_catch_at_5.0%)."""
    target, five = (f"proxy_catch_at_{percent_label(rate)}" for rate in (settings.false_reject_rate, FIXED_RATE))
    return [target] if settings.false_reject_rate == FIXED_RATE else [target, five]


def percent_label(rate: float) -> str:
    """A share as the percentage naming a tune.csv column: one decimal where that is exact ("0.5%", "5.0%", as
    named before), else every digit of the rate as written (0.0499: "4.99%", 0.00125: "0.125%"), so two different
    rates never share a label. From the shortest decimal of ``rate`` (its repr), not from rate * 100, which can
    carry float noise (0.0499 * 100 is 4.99 here, 0.07 * 100 is 7.000000000000001)."""
    percent = (Decimal(repr(float(rate))) * 100).normalize()
    if percent == percent.quantize(Decimal("0.1")):
        return f"{percent:.1f}%"
    return f"{percent:f}%"


def planted_pairs(proxy: Sequence[Sample]) -> dict[str, int]:
    """{"KIND-SIZE": count} of the proxy defects ``write_proxy_set`` planted (its defective samples), in planting
    order: with fewer held-out images than kind-size pairs, only the first pairs are planted."""
    counts: dict[str, int] = {}
    for sample in proxy:
        if sample.label == 1:
            counts[sample.defect_type] = counts.get(sample.defect_type, 0) + 1
    return counts


def proxy_summary(planted: dict[str, int], settings: TuneSettings) -> dict:
    """tune.json's proxy entries: proxy_kinds and proxy_sizes, those of ``settings`` that were planted (in its
    order), and proxy_planted, {"KIND-SIZE": count} (``planted_pairs``)."""
    kinds, sizes = zip(*(name.rsplit("-", 1) for name in planted)) if planted else ((), ())
    return {"proxy_kinds": [k for k in settings.kinds if k in kinds],
            "proxy_sizes": [z for z in settings.sizes if z in sizes], "proxy_planted": planted}


class TuneWriteError(FairEdgeError, OSError):
    """tune.csv or tune.json could not be written (``write_results``); an OSError still, for callers that catch one."""


def write_results(rows: list[TuneRow], out: Path, settings: TuneSettings, data: str, n_train: int, n_held: int,
                  proxy: Sequence[Sample] = (), *, category: str | None = None) -> None:
    """OUT/tune.csv (one row per candidate, best first) and OUT/tune.json (the chosen one, with its train command
    on ``data`` and ``category``: the dataset as the user gave it; the false rejects its catch was measured at,
    false_rejects_achieved: ``achieved_false_rejects`` on the held-out normals, k of n, which with fewer than
    1 / false_reject_rate of them is 0; and the proxy defects planted: ``proxy``, the proxy set ``write_proxy_set``
    wrote), each written whole beside its place and renamed
    into it, tune.json last (``write_whole``): a folder without tune.json holds no finished run. DataError (after
    tune.csv, listing every candidate skipped) when no candidate finished within the budget; TuneWriteError when a
    file cannot be written."""
    files = {"tune.csv": results_csv(rows, settings)}
    best = rows[0]
    if best.status != "done":
        write_whole(out, files, best)
        raise DataError(nothing_finished(rows))
    chosen = {"name": best.candidate.name, "family": best.candidate.family, "width": best.candidate.width,
              "steps": best.candidate.steps, "lr": best.candidate.lr, "preprocess": best.candidate.preprocess.to_dict(),
              "train_command": best.candidate.train_command(data, settings, category)}
    summary = {"chosen": chosen, "rule": "max proxy catch at the target false-reject rate, then proxy AUROC",
               "false_reject_rate": settings.false_reject_rate, "false_rejects_achieved": best.false_rejects,
               "train_images": n_train, "held_out_normals": n_held,
               **proxy_summary(planted_pairs(proxy), settings),
               "by_kind": best.by_kind, "table": "tune.csv"}
    files[TUNE_FINISHED] = json.dumps(summary, indent=2) + "\n"
    write_whole(out, files, best, chosen["train_command"])


def nothing_finished(rows: list[TuneRow]) -> str:
    """Why no candidate of ``rows`` finished, for the DataError after tune.csv: those that ran out of memory
    (``OUT_OF_MEMORY``, named, with the fixes) and those the budget skipped, with the fix of each."""
    short = [r.candidate.name for r in rows if r.status == OUT_OF_MEMORY]
    if not short:
        return "the budget ended before any candidate finished; raise --budget-min."
    skipped = len(rows) - len(short)
    text = (f"no candidate finished: {len(short)} ran out of memory ({', '.join(short)})"
            + (f" and {skipped} {'was' if skipped == 1 else 'were'} skipped by the budget" if skipped else "")
            + "; tune with a smaller --image-size or fewer normal images, free memory (other programs; a raised "
            "ulimit -v or container memory limit) or use a machine with more memory")
    return text + (", and raise --budget-min." if skipped else ".")


def results_csv(rows: list[TuneRow], settings: TuneSettings) -> str:
    """tune.csv's text: the header, then one line per candidate in ``rows``' order (best first), ranked from 1."""
    catch = catch_columns(settings)
    fields = ["rank", "name", "family", "status", *catch,
              "proxy_auroc", "train_s", "model", "steps", "image_size", "filter", "cutoff", "tiling", "checkpoint"]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(fields)
    for rank, r in enumerate(rows, 1):
        p = r.candidate.preprocess
        c = r.candidate
        caught = [fmt(r.proxy_catch), fmt(r.proxy_catch_5pct)][:len(catch)]
        w.writerow([rank, c.name, c.family, r.status, *caught,
                    fmt(r.proxy_auroc), "" if r.train_s is None else f"{r.train_s:.1f}",
                    c.model_spec().describe(), c.steps or "family default", p.image_size, p.filter,
                    f"{p.cutoff:g}", json.dumps(p.tiling.to_dict()) if p.tiling else "", r.checkpoint])
    return text.getvalue()


def write_whole(out: Path, files: dict[str, str], best: TuneRow, train_command: str = "") -> None:
    """Write each of ``files`` ({name: text}, in order) to ``out/.NAME.partial`` (``PARTIAL``), then rename them
    into place in that order, so each is whole or absent and the last (tune.json) marks a finished run. An OSError
    (a full disk) removes the temporary files and is a TuneWriteError (``tune_write_failure``: ``best``, the best
    candidate, and its ``train_command`` are named, so the ranking is not lost)."""
    staged = []
    try:
        for name, text in files.items():
            staged.append(out / PARTIAL.format(name))
            with staged[-1].open("w", newline="") as fh:
                fh.write(text)
        for name, partial in zip(files, staged):
            os.replace(partial, out / name)
    except OSError as exc:
        for partial in staged:
            discard_unfinished(partial, "tune result")
        raise TuneWriteError(tune_write_failure(out, exc, best, train_command)) from exc


def tune_write_failure(out: Path, exc: OSError, best: TuneRow, train_command: str) -> str:
    """The message of a tune whose results could not be written into ``out`` (``exc``): the file and the error,
    the best candidate (and ``train_command``, "" when none finished), what is left, the cause and the fix by errno
    (``disk.write_failure``: a full disk with its free space, a read-only one, no permission)."""
    where = f"{exc.filename}: " if exc.filename else ""
    ranked = f"; the best candidate was {best.candidate.name} (`{train_command}`)" if train_command else ""
    return (f"the tune results were not written to {out} ({where}{exc.strerror or exc}){ranked}; {out} holds no "
            f"{TUNE_FINISHED}, so the next tune there deletes what this one left: {write_failure(out, exc)}, then "
            "run the same command again.")
