// Live page: state pushed by server-sent events; the image is fetched only when a new part arrived.
"use strict";
const $ = id => document.getElementById(id);
let lastSeq = null;
let shownVersion = 0;  // the newest snapshot shown: an older one (a stream's first event racing the fetch) is dropped
let shownEpoch = null; // the server process it came from: a restarted station counts its versions from 1 again
let shownRun = null;   // the run the page shows: its part numbers are what a miss posts, with this run
let recentHeld = false;   // the pointer is over the Recent parts table: its rows stay put until it leaves
let heldRecent = null;    // [rows, run, keptFrom, keepFrames] of the newest snapshot while the table is held
let connectionLost = false;
let shownAlarm = "";   // the reject alarm shown, sent with its acknowledgement (a newer one latched: 409)

function pill(id, text, kind) { const p = $(id); p.textContent = text; p.className = "pill " + (kind || ""); }

// the PLC pill: the handshake's link where the station has one (red while down or its Error code is not 0), then the
// reject outputs (red on a write error, a missed pulse: not written by its deadline, or refused by a full queue, an
// unconfirmed one: written, no reply, the part may have gone through, or a latched alarm); neither: none configured
function showPlc(p, hs) {
  if (!p && !hs) { pill("plc-state", "PLC: none configured", ""); return; }
  const missed = p ? p.sink_missed + (p.sink_dropped || 0) : 0;
  const link = hs ? `handshake ${hs.connected ? "up" : "DOWN"}` + (hs.error ? ` (error ${hs.error})` : "") : "";
  const outputs = p ? `${p.sinks} output(s), ${p.pending} pending, ${p.sink_errors} errors, ${missed} pulses missed, ` +
    `${p.sink_unconfirmed} unconfirmed` + (p.alarm ? " – ALARM " + p.alarm : "") : "";
  pill("plc-state", "PLC: " + [link, outputs].filter(Boolean).join(" · "),
       (hs && (!hs.connected || hs.error)) || (p && (p.alarm || p.sink_errors || missed || p.sink_unconfirmed)) ? "bad" : "ok");
}

// the PLC handshake's card (a handshake station only): each figure its <b data-hs=KEY> names, as the live table and
// /metrics show it (Handshake.stats), red above 0 where it is marked data-bad
function showHandshake(hs) {
  $("handshake").classList.toggle("hidden", !hs);
  if (!hs) return;
  $("hs-link").textContent = hs.connected ? "up" : "DOWN"; $("hs-link").style.color = hs.connected ? "" : "var(--ng)";
  for (const b of $("handshake").querySelectorAll("b[data-hs]")) {
    const n = hs[b.dataset.hs] ?? "–";   // a key the station does not count: not a 0
    b.textContent = n; b.style.color = b.hasAttribute("data-bad") && n > 0 ? "var(--ng)" : "";
  }
}

function showStatus(s) {
  const cam = s.camera || {};
  pill("camera-state", "camera: " + cam.state + (cam.problem ? " – " + cam.problem : ""),
       cam.problem ? "bad" : (cam.state === "running" ? "ok" : ""));
  showPlc(s.plc, s.handshake); showHandshake(s.handshake);
  pill("fault-state", "fault: " + (s.fault || "none"), s.fault ? "bad" : "ok");
  shownAlarm = (s.plc && s.plc.alarm) || "";
  $("ack-alarm").hidden = !shownAlarm;
  const d = s.drift, where = d.camera ? " " + d.camera : "";  // several cameras: the worst one, named
  pill("drift-state", d.psi === null ? `drift${where}: ` + d.note : `drift${where} PSI ${d.psi.toFixed(3)} (alarm ≥ ${+d.alarm_at.toPrecision(3)})`,
       d.alarm ? "bad" : (d.psi === null ? "" : "ok"));
  if (s.model) { $("model-id").textContent = s.model.id || "?"; $("model-state").title = s.model.bundle + " · " + s.model.backend; }
}

// how much of the score bar a part fills, 0..1: the threshold mark (the bar's middle) at 0.5, a score `scale` over
// the threshold at the right end, `scale` under it at the left (clamped: a width the browser refuses, < 0 or
// infinite, kept the previous part's bar). scale: a single bundle's threshold (its scores are >= 0: 0 at the left
// end, score / (2 x threshold) as before); a fused bundle's (v.fused; scores and threshold in normal spreads, either
// side of 0) the heat map's half scale, fusedHalfScale (plots.FUSED_HALF_SCALE), as for a threshold <= 0. An
// unscored part fills it.
function scoreFraction(v, fusedHalfScale) {
  if (v.score === null) return 1;
  const scale = v.fused || !(v.threshold > 0) ? fusedHalfScale : v.threshold;
  return Math.min(1, Math.max(0, 0.5 + (v.score - v.threshold) / (2 * scale)));
}

function showLatest(v, fusedHalfScale) {
  if (!v) return;
  $("verdict").textContent = v.error ? "NG (error)" : (v.ng ? "NG" : "OK");
  $("verdict").className = "badge " + (v.ng ? "ng" : "ok");
  $("score").textContent = FE.num(v.score); $("threshold").textContent = FE.num(v.threshold);
  $("score-fill").style.width = (100 * scoreFraction(v, fusedHalfScale)) + "%";
  $("score-fill").className = "fill" + (v.ng ? " ng" : "");
  $("latest-seq").textContent = v.camera ? `${v.camera} ${v.seq}` : v.seq; $("latest-source").textContent = v.source; $("latest-latency").textContent = FE.ms(v.latency_ms);
  $("latest-reason").textContent = v.reason || (v.regions ? v.regions + " defect region(s)" : "");
  const key = (v.camera || "") + "/" + v.seq;  // several cameras number their own frames
  // the picture of this very part (while its frame is kept: the server's fallback is the latest)
  if (key !== lastSeq) { lastSeq = key; $("live-image").src = "/api/live.jpg?" + new URLSearchParams({seq: v.seq, c: v.camera || "", r: shownRun || "", m: v.model}); }
}

// several cameras: a tile per camera with its view of the latest part, each camera's counters, the part counters
function showCell(s) {
  $("cell").classList.toggle("hidden", !s.cameras);
  if (!s.cameras) return;
  $("latest-title").textContent = "Latest view";
  const p = s.latest_part;
  $("part-head").textContent = p ? `${p.part} · ${p.ng ? "NG" : "OK"}` + (p.ng && p.camera && p.ng_views.length ? ` (decided by ${p.camera})` : "")
    + (p.missing.length ? ` · missing: ${p.missing.join(", ")}` : "") + (p.reason ? ` · ${p.reason}` : "") : "";
  const tiles = $("tiles"); tiles.innerHTML = "";
  for (const t of s.tiles) {
    const caption = t.missing ? `${t.camera}: missing (${t.missing})`
      : `${t.camera} · ${t.seq ?? "–"} · ${t.ng === undefined ? "–" : (t.ng ? "NG" : "OK")} · ${FE.num(t.score, 3)}` + (t.decided ? " · decided" : "");
    tiles.append(FE.el("figure", {class: t.missing ? "missing" : (t.ng ? "ng" : "ok"), "data-camera": t.camera},
      t.image ? FE.el("img", {src: t.image, alt: `${t.camera} ${t.seq}`}) : FE.el("div", {class: "muted"}, "no frame kept"),
      FE.el("figcaption", {}, caption)));
  }
  const body = $("camera-rows"); body.innerHTML = "";
  for (const c of s.cameras) {
    const n = c.counters, m = c.model || {}, dr = c.drift || {psi: null, note: "not watched"};
    body.append(FE.el("tr", {"data-camera": c.name}, FE.el("td", {}, c.name), FE.el("td", {}, n.state),
      FE.el("td", {}, String(n.frames_in)), FE.el("td", {class: "inspected"}, String(n.inspected)), FE.el("td", {class: "ng"}, String(n.ng)),
      FE.el("td", {class: "dropped"}, String(n.dropped)), FE.el("td", {}, String(n.lost)), FE.el("td", {title: m.bundle || ""}, m.id || "–"),
      FE.el("td", {}, FE.num(m.threshold)),
      FE.el("td", {class: "drift" + (dr.alarm ? " alarm" : ""), title: dr.note || ""}, dr.psi === null ? "–" : dr.psi.toFixed(3) + (dr.alarm ? " ALARM" : ""))));
  }
  const q = s.parts || {};
  $("part-counters").textContent = q.parts === undefined ? "each camera is its own lane: its frames are its parts"
    : `parts: ${q.parts} · NG ${q.ng} · OK ${q.ok} · not inspected ${q.not_inspected} · views after their part closed ${q.late_views}`
      + (q.resyncs === undefined ? "" : ` · resyncs (camera out of step) ${q.resyncs}`)   // match: sequence only
      + (q.duplicate_views === undefined ? "" : ` · duplicate views skipped ${q.duplicate_views}`);   // sequence only
}

// the line's rate: parts (cameras viewing one part: each part once) or inspected frames (one camera, lanes) per
// second over the last window_s seconds, the label saying which
function showRate(r) {
  $("rate").textContent = r.per_s.toFixed(1);
  $("rate-label").textContent = `${r.of} / s`;
  $("rate-label").parentElement.title = `${r.of === "parts" ? "Parts (each part once, however many cameras view it)" : "Inspected frames"} per second over the last ${r.window_s} s`;
}

function showCounters(s) {
  const c = s.counters;
  $("inspected").textContent = c.inspected; $("ng-count").textContent = c.ng;
  showRate(s.rate);
  $("frames-in").textContent = c.frames_in; $("dropped").textContent = c.dropped; $("lost").textContent = c.lost;
  $("malformed").textContent = c.malformed; $("late-verdicts").textContent = c.late_verdicts;
  $("gap-missed").textContent = c.gap_missed; $("gap-missed").style.color = c.gap_missed > 0 ? "var(--ng)" : "";
  const unlogged = (c.rows_failed || 0) + (c.rows_dropped || 0);   // verdict / gate rows a full disk kept out of the log
  $("rows-failed").textContent = unlogged; $("rows-failed").style.color = unlogged > 0 ? "var(--ng)" : "";
  const putOff = c.log_rotations_put_off || 0;   // times a log rotation was refused (once each, until it rotates)
  $("rotations-put-off").textContent = putOff; $("rotations-put-off").style.color = putOff > 0 ? "var(--ng)" : "";
  const unjudged = c.region_errors || 0;   // frames whose regions could not be judged (zones drawn for another size)
  $("region-errors").textContent = unjudged; $("region-errors").style.color = unjudged > 0 ? "var(--ng)" : "";
  const l = s.latency;
  $("p50").textContent = FE.ms(l.p50_ms); $("p90").textContent = FE.ms(l.p90_ms); $("p99").textContent = FE.ms(l.p99_ms); $("pmax").textContent = FE.ms(l.max_ms);
  const top = l.edges_ms[l.edges_ms.length - 1];
  const edges = [0, ...l.edges_ms, top * 1.5].map((e, i) => i);  // equal-width bars, labelled by bucket
  FE.histogram($("latency-hist"), edges, [{counts: l.counts, cls: "lat"}]);
  const axis = $("latency-hist").querySelector("text.axis");
  if (axis) axis.textContent = "buckets (ms): " + ["0", ...l.edges_ms.map(e => e.toFixed(0))].join(" · ") + " · more";
}

async function acknowledgeAlarm() {
  try {
    const r = await FE.post("acknowledge_alarm", {alarm: shownAlarm});
    FE.say(`alarm acknowledged: ${r.old || "none latched"}` + (r.fault ? ` (fault output still on: ${r.fault})` : "") + (r.warning ? ` — WARNING: ${r.warning}` : ""), !!r.warning);
    $("ack-alarm").hidden = true;
  } catch (e) { FE.say(e.message, true); }
}
$("ack-alarm").addEventListener("click", acknowledgeAlarm);

// a passed part marked as a miss, once the operator confirmed it by its number (a miss cannot be withdrawn here);
// the run of the snapshot the row came from goes with it: after a restart the same number is another part (409)
async function markMiss(v, run, cell) {
  const name = v.camera ? `${v.camera} frame ${v.seq}` : `part ${v.seq}`;
  if (!confirm(`Mark ${name} (passed, score ${FE.num(v.score)}) as a miss, a defect the station let through?`)) return;
  try {
    await FE.post("review", {seq: v.seq, label: "miss", run, ...(v.camera ? {camera: v.camera} : {})});
    cell.textContent = "miss";
    FE.say(`${name} marked as a miss`);
  } catch (e) { FE.say(e.message, true); }
}

// the Recent parts table holds still while the pointer is over it: rows rebuilt under it would move another part
// under the button aimed at
function holdRecent(held) {
  recentHeld = held;
  $("recent-held").classList.toggle("hidden", !held);
  if (!held && heldRecent) { const rows = heldRecent; heldRecent = null; showRecent(...rows); }
}
$("recent").closest("table").addEventListener("pointerenter", () => holdRecent(true));
$("recent").closest("table").addEventListener("pointerleave", () => holdRecent(false));

function missButton(v, run, cell, keepFrames) {
  const b = FE.el("button", {class: "small", "data-seq": v.seq, "data-camera": v.camera || "", onclick: () => markMiss(v, run, cell)}, "miss");
  if (!v.kept) FE.greyMiss(b, keepFrames);
  return b;
}

// the table held still: its rows stay, but the miss button of each part whose frame has left memory since is greyed
// (keptFrom: camera -> the oldest part whose frame is kept now; frames leave in the order they came)
function greyGone(keptFrom, keepFrames) {
  for (const b of $("recent").querySelectorAll("button[data-seq]")) {
    const oldest = (keptFrom || {})[b.dataset.camera];
    if (!b.disabled && (oldest === undefined || +b.dataset.seq < oldest)) FE.greyMiss(b, keepFrames);
  }
}

function showRecent(rows, run, keptFrom, keepFrames) {
  if (recentHeld) { heldRecent = [rows, run, keptFrom, keepFrames]; greyGone(keptFrom, keepFrames); return; }
  const body = $("recent"); body.innerHTML = "";
  for (const v of rows) {
    const cell = FE.el("td", {});
    cell.append(v.review ? FE.el("span", {}, v.review.replace("_", " "))
      : (v.ng ? FE.el("a", {href: "/gallery"}, "review") : missButton(v, run, cell, keepFrames)));
    body.append(FE.el("tr", {class: v.ng ? "ng" : "", "data-seq": v.seq}, FE.el("td", {}, v.camera ? `${v.camera} ${v.seq}` : String(v.seq)), FE.el("td", {}, FE.num(v.score)),
      FE.el("td", {}, v.ng ? "NG" : "OK"), FE.el("td", {}, FE.ms(v.latency_ms)), FE.el("td", {}, v.source),
      FE.el("td", {}, v.model), cell));
  }
}

// the latest kept frames (each image is fetched once: a part's picture never changes, and its URL names its run)
function showStrip(rows) {
  const strip = $("strip"); strip.innerHTML = "";
  for (const v of rows.filter(r => r.kept).slice(0, 6))
    strip.append(FE.el("figure", {class: v.ng ? "ng" : "ok"}, FE.el("img", {src: v.image, alt: `part ${v.seq}`}),
      FE.el("figcaption", {}, `${v.camera ? v.camera + " " : ""}${v.seq} · ${FE.num(v.score, 3)}`)));
}

// a snapshot of another server process (the station restarted) is shown whatever its version: versions count from 1
// again there, and dropping it as older would freeze the page on the old run
function show(s) {
  if (s.epoch === shownEpoch && s.version < shownVersion) return;
  if (s.epoch !== shownEpoch) {
    if (shownEpoch !== null) FE.say(`the station restarted: run ${s.run}`);
    shownEpoch = s.epoch; lastSeq = null;
  }
  shownVersion = s.version; shownRun = s.run;
  showStatus(s); showCell(s); showLatest(s.latest, s.fused_half_scale); showCounters(s); showRecent(s.recent, s.run, s.kept_from, s.keep_frames); showStrip(s.recent);
  document.body.dataset.count = s.count; document.body.dataset.run = s.run;
}

const refetch = () => FE.get("/api/state").then(show).catch(e => FE.say(e.message, true));
refetch();
const events = new EventSource("/api/events");
events.addEventListener("state", e => show(JSON.parse(e.data)));
events.onerror = () => { connectionLost = true; FE.say("connection to the station lost; retrying…", true); };
// reconnected (perhaps to a restarted station): the state is fetched again, and only the connection message cleared
events.onopen = () => { if (connectionLost) { connectionLost = false; FE.say(""); refetch(); } };
