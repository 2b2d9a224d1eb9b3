"""The console's HTTP API against a replayed station: live state, SSE, review log, threshold change
with audit and station file, bundle hot swap, security (token, path traversal, JSON-only actions)."""

import json
import logging
import os
import time

import httpx
import pytest
import yaml

from console_station import RunningStation, station_config
from fair_edge.console.settings import ConsoleSettings
from fair_edge.runtime.hotswap import model_id


def test_live_state_and_events_follow_the_line(station_bundles, conveyor_dir, tmp_path):
    with RunningStation(station_config(station_bundles[0].root, conveyor_dir, tmp_path)) as st:
        st.wait_for(lambda: st.console.feed.count >= 3, what="3 verdicts")
        state = httpx.get(st.url + "api/state").json()
        assert state["counters"]["inspected"] >= 3 and state["model"]["id"] == model_id(station_bundles[0])
        assert state["latest"]["threshold"] == pytest.approx(station_bundles[0].threshold.value)
        assert state["count"] <= sum(state["latency"]["counts"]) <= state["count"] + 5  # parts go on meanwhile
        with httpx.stream("GET", st.url + "api/events", timeout=10) as r:
            counts = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    counts.append(json.loads(line[6:])["counters"]["inspected"])
                if len(counts) == 3:
                    break
        assert counts == sorted(counts) and counts[-1] > counts[0]  # pushed, and moving
        image = httpx.get(st.url + "api/live.jpg")
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"


def test_review_threshold_and_swap(station_bundles, conveyor_dir, tmp_path):
    station_file = tmp_path / "station.yaml"
    station_file.write_text(yaml.safe_dump({"bundle": str(station_bundles[0].root), "decision": {"threshold": None}}))
    cfg = station_config(station_bundles[0].root, conveyor_dir, tmp_path / "out", source_file=station_file)
    with RunningStation(cfg) as st:
        st.wait_for(lambda: len(st.console.feed.ng) >= 1 and any(not v.ng for v in st.console.feed.recent),
                    what="an NG and a passed part")
        ng = st.console.feed.ng[0]
        ok = next(v for v in st.console.feed.recent if not v.ng)
        post = lambda action, body: httpx.post(st.url + "api/" + action, json=body)  # noqa: E731
        assert post("review", {"seq": ng.seq, "label": "defect", "who": "ann"}).status_code == 200
        assert post("review", {"seq": ok.seq, "label": "miss", "who": "ann"}).status_code == 200
        wrong = post("review", {"seq": ok.seq, "label": "false_reject", "who": "ann"})
        assert wrong.status_code == 400 and "NG parts" in wrong.json()["error"]
        reviews = [json.loads(x) for x in (tmp_path / "out" / "reviews.jsonl").read_text().splitlines()]
        assert [(r["seq"], r["label"], r["who"]) for r in reviews] == [(ng.seq, "defect", "ann"), (ok.seq, "miss", "ann")]
        assert all((tmp_path / "out" / r["image"]).is_file() for r in reviews)
        exported = post("export", {"who": "ann"}).json()
        assert exported["test/defect"]["saved"] == 2 and "2 defects and misses to test/defect" in exported["summary"], exported

        tune = httpx.get(st.url + "api/tune", params={"threshold": 1e-9}).json()
        assert tune["proposed"]["false_reject_rate"] == 1.0 and tune["proposed"]["catch_rate"] == 1.0
        assert post("threshold", {"threshold": 0.5, "who": "ann"}).status_code == 400  # no confirmation
        applied = post("threshold", {"threshold": 123.0, "who": "ann", "confirm": True}).json()
        assert applied["new"] == 123.0 and applied["old"] == pytest.approx(station_bundles[0].threshold.value)
        assert yaml.safe_load(station_file.read_text())["decision"]["threshold"] == 123.0
        seen = len(st.verdicts())
        st.wait_for(lambda: any(v["threshold"] == 123.0 for v in st.verdicts()[seen:]), what="the new threshold")
        new = [v for v in st.verdicts()[seen:] if v["threshold"] == 123.0]
        assert new and not any(v["ng"] for v in new)

        assert post("swap", {"bundle": str(station_bundles[1].root), "who": "ann"}).status_code == 200
        new_id = model_id(station_bundles[1])
        st.wait_for(lambda: any(v.get("model") == new_id for v in st.verdicts()), what="verdicts of the new model")
        seen = st.console.feed.count
        st.wait_for(lambda: st.console.feed.count >= seen + 3, what="a few more parts")
    verdicts = st.verdicts()
    models = [v["model"] for v in verdicts]
    switch = models.index(new_id)
    assert set(models[:switch]) == {model_id(station_bundles[0])} and set(models[switch:]) == {new_id}
    assert [v["seq"] for v in verdicts] == list(range(verdicts[0]["seq"], verdicts[0]["seq"] + len(verdicts)))
    assert st.summary.dropped == 0 and st.summary.inspected == st.summary.frames_in == len(verdicts)
    audit = [json.loads(x) for x in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert [a["action"] for a in audit] == ["export", "threshold", "swap"] and audit[2]["new"]["model"] == new_id


def test_token_and_file_serving(station_bundles, conveyor_dir, tmp_path):
    token = "s3cret-token-123"
    (tmp_path / "secret.txt").write_text("outside")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path / "secret.txt", out / "link.txt")
    cfg = station_config(station_bundles[0].root, conveyor_dir, out, console=ConsoleSettings(port=0, token=token))
    with RunningStation(cfg) as st:
        st.wait_for(lambda: st.console.feed.count >= 1, what="a verdict")
        seq = st.console.feed.recent[0].seq
        body = {"seq": seq, "label": "miss", "who": "x"}
        assert httpx.post(st.url + "api/review", json=body).status_code == 403
        assert httpx.post(st.url + "api/review", json=body, headers={"X-Fair-Edge-Token": "wrong"}).status_code == 403
        form = httpx.post(st.url + "api/review", data={"seq": str(seq)}, headers={"X-Fair-Edge-Token": token})
        assert form.status_code == 415  # a cross-site form post is refused
        st.wait_for(lambda: (out / "verdicts.jsonl").is_file(), what="the verdict log")
        assert httpx.get(st.url + "files/verdicts.jsonl").status_code == 200
        for bad in ("files/../secret.txt", "files/%2e%2e/secret.txt", "files/..%2fsecret.txt", "files/link.txt",
                    "files//etc/passwd", "files/%2fetc%2fpasswd", "static/../../../../etc/passwd"):
            r = httpx.get(st.url + bad)
            assert r.status_code == 404 and b"outside" not in r.content and b"root:" not in r.content, bad


def test_swap_to_a_fused_bundle_from_the_console(station_bundles, fused_station_bundle, conveyor_dir, tmp_path):
    first, fused = station_bundles[0], fused_station_bundle
    cfg = station_config(first.root, conveyor_dir, tmp_path / "out")
    with RunningStation(cfg) as st:
        st.wait_for(lambda: len(st.verdicts()) >= 3, what="verdicts of the first model")
        answer = httpx.post(st.url + "api/swap", json={"bundle": str(fused.root), "who": "ann"})
        assert answer.status_code == 200, answer.text
        st.wait_for(lambda: httpx.get(st.url + "api/swap").json()["state"] == "done", what="the fused bundle to load")
        st.wait_for(lambda: sum(v.get("model") == model_id(fused) for v in st.verdicts()) >= 3, what="fused verdicts")
        assert st.console.feed.inspector.summary.backend.startswith("fusion (mean) of ")
    verdicts = st.verdicts()
    models = [v["model"] for v in verdicts]
    switch = models.index(model_id(fused))
    assert set(models[:switch]) == {model_id(first)} and set(models[switch:]) == {model_id(fused)}
    # the fused bundle's own threshold decides from the switch on (the station file sets none)
    assert [v["threshold"] for v in verdicts[switch:]] == pytest.approx([fused.threshold.value] * (len(verdicts) - switch))
    assert [v["seq"] for v in verdicts] == list(range(verdicts[0]["seq"], verdicts[0]["seq"] + len(verdicts)))
    audit = [json.loads(x) for x in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["action"] == "swap" and audit[-1]["new"]["bundle"] == str(fused.root)


def test_acknowledge_alarm_resets_the_latched_alarm(station_bundles, conveyor_dir, tmp_path):
    from fair_edge.line.settings import RejectSettings

    token = "s3cret-token-456"
    reject = RejectSettings(sinks=("log://",), fail_safe="alarm", delay_ms=3000.0)  # real parts: verdicts in time
    cfg = station_config(station_bundles[0].root, conveyor_dir, tmp_path / "out", fps=5, threshold=1e9,
                         reject=reject, console=ConsoleSettings(port=0, token=token))
    with RunningStation(cfg) as st:
        scheduler = st.console.feed.scheduler
        st.wait_for(lambda: st.console.feed.count >= 1, what="a verdict")
        scheduler.note_capture(10**9, t_capture=time.monotonic() - 60.0)  # a part the camera saw, long past the gate
        st.wait_for(lambda: scheduler.alarm is not None, what="the uninspected part's alarm")
        alarm = scheduler.alarm
        assert "passed the gate uninspected" in alarm and scheduler.fault_reason == alarm
        url = st.url + "api/acknowledge_alarm"
        assert httpx.post(url, json={"who": "ann"}).status_code == 403 and scheduler.alarm == alarm  # no token
        answer = httpx.post(url, json={"who": "ann"}, headers={"X-Fair-Edge-Token": token})
        assert answer.status_code == 200 and answer.json()["old"] == alarm and answer.json()["fault"] == ""
        assert scheduler.alarm is None and scheduler.fault_reason is None
        assert httpx.get(st.url + "api/state").json()["plc"]["alarm"] == ""
    audit = [json.loads(x) for x in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["who"], a["old"]) for a in audit] == [("acknowledge_alarm", "ann", alarm)]


def test_acknowledge_alarm_without_a_reject_gate_is_refused(station_bundles, conveyor_dir, tmp_path):
    with RunningStation(station_config(station_bundles[0].root, conveyor_dir, tmp_path / "out")) as st:
        st.wait_for(lambda: st.console.feed.count >= 1, what="a verdict")
        answer = httpx.post(st.url + "api/acknowledge_alarm", json={"who": "ann"})
        assert answer.status_code == 400 and "no reject gate" in answer.json()["error"]


@pytest.mark.parametrize("target", ["plain", "fused"])
def test_sighup_swaps_to_the_bundle_the_station_file_names(target, station_bundles, conveyor_dir, tmp_path, request):
    import signal
    import subprocess
    import sys

    first = station_bundles[0]
    second = station_bundles[1] if target == "plain" else request.getfixturevalue("fused_station_bundle")
    station, out = tmp_path / "station.yaml", tmp_path / "out"
    settings = {"bundle": str(first.root), "backend": "onnxruntime", "output": str(out),
                "camera": {"source": str(conveyor_dir), "fps": 10, "loop": True, "queue_size": 64}}
    station.write_text(yaml.safe_dump(settings))
    proc = subprocess.Popen([sys.executable, "-m", "fair_edge.cli", "run", "--station", str(station), "--console", "off"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "verdicts.jsonl"
    read = lambda: [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []  # noqa: E731
    try:
        deadline = time.monotonic() + 120
        while len(read()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        # the file now names the second bundle and a threshold (as the console writes one it applied)
        station.write_text(yaml.safe_dump(dict(settings, bundle=str(second.root), decision={"threshold": 0.123456})))
        proc.send_signal(signal.SIGHUP)
        while not any(v["model"] == model_id(second) for v in read()) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    models = [v["model"] for v in read()]
    switch = models.index(model_id(second))
    assert switch >= 3 and set(models[:switch]) == {model_id(first)} and set(models[switch:]) == {model_id(second)}
    thresholds = [v["threshold"] for v in read()]
    assert 0.123456 not in thresholds[:switch] and set(thresholds[switch:]) == {0.123456}  # the file's, not the bundle's
    seqs = [v["seq"] for v in read()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_sighup_with_a_station_file_python_cannot_read_is_refused_and_the_station_inspects_on(
        station_bundles, conveyor_dir, tmp_path, caplog):
    """`fair-edge run`'s SIGHUP handler on a running station whose file gained a Latin-1 comment ('# Prüfstation'):
    each reload is refused with a log line naming the file and the station inspects on; at the stop it returns its
    summary with no inference error. Before, the handler re-read the file in the main thread and the
    UnicodeDecodeError surfaced wherever the inspection loop was: a crash, or, inside inference, a good part counted
    NG (inference error) and rejected uninspected."""
    import signal
    import threading

    from fair_edge.cli.run import StationSignals
    from fair_edge.station.cell import run as run_any

    station, out = tmp_path / "station.yaml", tmp_path / "out"
    station.write_text(yaml.safe_dump({"bundle": str(station_bundles[0].root)}))
    cfg = station_config(station_bundles[0].root, conveyor_dir, out, console=ConsoleSettings(enabled=False),
                         source_file=station)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signals = StationSignals()
    wired, refused = threading.Event(), threading.Event()

    class Refusals(logging.Handler):
        def emit(self, record):
            if "bundle reload refused (SIGHUP)" in record.getMessage():
                refused.set()

    def wire(console):
        signals.wire_sighup(console)
        wired.set()

    def operator():   # off the main thread, as a shell would: SIGHUPs in a row once parts flow, then a stop
        try:
            assert wired.wait(120)
            until(lambda: signals.console.feed.count >= 3)
            station.write_bytes(station.read_bytes() + "# Prüfstation\n".encode("latin-1"))
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGHUP)
            assert refused.wait(60)
            seen = signals.console.feed.count
            until(lambda: signals.console.feed.count >= seen + 3)   # it inspects on after the refusal
        finally:
            signals.stop.set()

    def until(predicate, timeout=60.0):
        end = time.monotonic() + timeout
        while not predicate() and time.monotonic() < end:
            time.sleep(0.05)

    handler = Refusals()
    logging.getLogger().addHandler(handler)
    helper = threading.Thread(target=operator, daemon=True)
    try:
        helper.start()
        summary = run_any(cfg, signals.stop, on_console=wire)   # the main thread: where the signal handler runs
    finally:
        signals.stop.set()
        logging.getLogger().removeHandler(handler)
        for sig, old in saved.items():
            signal.signal(sig, old)
        helper.join(60)
    assert refused.is_set() and summary.inference_errors == 0 and summary.inspected >= 6
    messages = [r.getMessage() for r in caplog.records if "bundle reload refused (SIGHUP)" in r.getMessage()]
    assert messages and all(f"station file {station}: expected " in m for m in messages)
    assert json.loads((out / "summary.json").read_text())["inference_errors"] == 0
