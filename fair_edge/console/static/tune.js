// Threshold tuning (projection, confirmed apply), model swap and drift. Several cameras: the threshold is
// projected and applied for the camera picked; a swap is for one camera or every camera on the station's bundle.
"use strict";
const $ = id => document.getElementById(id);
let current = null;
const loaded = {};   // camera ("" with one) -> the threshold in force when this page first showed it
let polled;          // what decided the picked camera when the state was last polled (decision(); undefined before)
let rulesShown = null; // whether the page shows "region rules decide" (the last projection's answer; null before one)
let projecting = false;
let filled = null;  // {text, value}: the threshold in force as the field shows it (rounded) and exactly
const camera = () => $("camera").value;
// the proposed threshold: the exact one in force while the field still shows it unedited, else what was typed (any
// sign: a fused bundle's scores and threshold are often below 0); null for an empty field (or text the number field
// cannot read), which the station refuses, where Number("") would have sent 0, a threshold a fused bundle takes
const proposed = () => filled && $("proposed").value === filled.text ? filled.value : typed();
const typed = () => $("proposed").value.trim() === "" ? null : Number($("proposed").value);

function showCameras(cameras) {
  if (!cameras) return;
  if (!$("camera").options.length) {
    for (const c of cameras) { $("camera").append(FE.el("option", {value: c.name}, c.name)); $("swap-camera").append(FE.el("option", {value: c.name}, c.name)); }
    $("camera-pick").classList.remove("hidden"); $("swap-camera-pick").classList.remove("hidden"); $("camera-models").classList.remove("hidden");
    project(true);
  }
  const body = $("camera-models").querySelector("tbody"); body.innerHTML = "";
  for (const c of cameras) {
    const m = c.model || {};
    body.append(FE.el("tr", {"data-camera": c.name}, FE.el("td", {}, c.name), FE.el("td", {}, m.id || "–"), FE.el("td", {}, FE.num(m.threshold)), FE.el("td", {class: "muted"}, m.bundle || "")));
  }
}

async function project(first = false) {
  const value = $("proposed").value;
  try {
    const query = new URLSearchParams();
    if (value && !first) query.set("threshold", String(proposed()));
    if (camera()) query.set("camera", camera());
    const t = await FE.get("/api/tune" + (query.toString() ? "?" + query : ""));
    current = t.current;
    showInForce(t.current);
    if (first) { filled = {text: FE.num(t.current, 6), value: t.current}; $("proposed").value = filled.text; }  // the page opens on the threshold in force
    showRules(t.rules_decide);
    rulesShown = !!t.rules_decide;
    if (t.rules_decide) { delete document.body.dataset.projected; return; }
    $("frr").textContent = FE.pct(t.proposed.false_reject_rate); $("catch").textContent = FE.pct(t.proposed.catch_rate);
    $("frr-current").textContent = FE.pct(t.at_current.false_reject_rate); $("catch-current").textContent = FE.pct(t.at_current.catch_rate);
    $("n-normal").textContent = t.proposed.normal_parts; $("n-defect").textContent = t.proposed.defect_parts;
    $("unreviewed").textContent = t.unreviewed_ng;
    const h = t.histogram;
    const series = [{counts: h.normal, cls: "normal"}, {counts: h.defect, cls: "defect"}];
    if (h.calibration_per_100) series.push({counts: h.calibration_per_100, cls: "calib"});
    FE.histogram($("score-hist"), h.edges, series, [{x: t.current, cls: "cur", label: "in force"},
      {x: t.proposed.threshold, cls: "prop", label: "proposed"}]);
    document.body.dataset.projected = t.proposed.threshold;
  } catch (e) { FE.say(e.message, true); }
}

// region rules decide the camera's verdicts (note: why, and what to tune instead; "" or undefined: the score
// decides): the threshold changes no verdict, so no projection is drawn and nothing can be applied
function showRules(note) {
  $("rules-note").textContent = note || "";
  $("rules-note").classList.toggle("hidden", !note);
  $("projection").classList.toggle("hidden", !!note);
  $("score-hist").classList.toggle("hidden", !!note);
  $("apply").disabled = !!note;
  if (note) $("confirm-box").classList.add("hidden");
}

// the threshold in force, and whether it changed since the page loaded (another operator, a reload, this page)
function showInForce(value) {
  if (!(camera() in loaded)) loaded[camera()] = value;
  const was = loaded[camera()];
  $("current").textContent = FE.num(value);
  $("current-changed").textContent = value !== was ? `changed since this page loaded (was ${FE.num(was, 6)})` : "";
  if (!$("confirm-box").classList.contains("hidden")) $("confirm-old").textContent = FE.num(value, 6);
}

// what decides the picked camera's verdicts as the polled state has it (several cameras: the camera picked, else the
// first): {threshold, rules: whether region rules decide (the model in force's or a pending reload's), key: both and
// the model id, as one string}; null before the station runs
function decision(s) {
  const m = s.cameras ? ((s.cameras.find(c => c.name === camera()) || s.cameras[0]) || {}).model : s.model;
  if (!m || m.threshold === null || m.threshold === undefined) return null;
  return {threshold: m.threshold, rules: !!m.rules_decide, key: JSON.stringify([m.threshold, !!m.rules_decide, m.id])};
}

// a decision changed elsewhere (another operator's threshold, a reload: its threshold, its model, its region rules
// turned on or off): in force, its marker and rates projected anew, or the "rules decide" note shown or taken away
async function follow(s) {
  const now = decision(s);
  if (now === null) return;
  const changed = polled !== undefined && now.key !== polled;
  polled = now.key;
  const stale = now.threshold !== current || (rulesShown !== null && now.rules !== rulesShown);
  if ((changed || stale) && current !== null && !projecting) {
    projecting = true;
    try { await project(); } finally { projecting = false; }
  }
}

async function status() {
  try {
    const s = await FE.get("/api/state");
    showCameras(s.cameras);
    follow(s);
    if (s.model) { $("model-id").textContent = s.model.id; $("model-bundle").textContent = s.model.bundle; $("model-backend").textContent = s.model.backend; }
    const w = s.swap; $("swap-status").textContent = w.state + (w.bundle ? " " + w.bundle : "") + (w.model ? " → model " + w.model : "") + (w.models ? " → " + Object.entries(w.models).map(([c, m]) => `${c}: ${m}`).join(", ") : "") + (w.error ? ": " + w.error : "") + (w.warning ? " — WARNING: " + w.warning : "");
    const d = s.drift;
    const where = d.camera ? `camera ${d.camera} (the worst): ` : "";
    $("drift-text").textContent = where + (d.psi === null ? d.note :
      `PSI ${d.psi.toFixed(3)} over ${d.parts} recent normal parts vs the bundle's calibration scores; alarm at ${+d.alarm_at.toPrecision(3)}` +
      ` (the larger of the level ${d.level} and a stable line's sampling noise ${d.noise.toFixed(3)})` + (d.alarm ? " — ALARM" : " — ok"));
  } catch (e) { FE.say(e.message, true); }
}

$("project").addEventListener("click", () => project());
$("proposed").addEventListener("change", () => project());
$("camera").addEventListener("change", () => { polled = undefined; project(true); });
$("apply").addEventListener("click", async () => {
  await project();
  if ($("apply").disabled) return;   // region rules decide now (a reload since): the note says so, nothing to confirm
  $("confirm-old").textContent = FE.num(current, 6); $("confirm-new").textContent = $("proposed").value;
  $("confirm-box").classList.remove("hidden");
});
$("apply-cancel").addEventListener("click", () => $("confirm-box").classList.add("hidden"));
$("apply-confirmed").addEventListener("click", async () => {
  try {
    const r = await FE.post("threshold", {threshold: proposed(), confirm: true, ...(camera() ? {camera: camera()} : {})});
    FE.say((r.camera ? `camera ${r.camera}: ` : "") + `threshold ${FE.num(r.old, 6)} → ${FE.num(r.new, 6)} by ${r.who} at ${FE.when(r.time)}` + (r.station_file ? `; written to ${r.station_file}` : "; no station file to write") + (r.station_file_bundle ? ` with bundle ${r.station_file_bundle.new} it was applied on (the file named ${r.station_file_bundle.old || "none"})` : "") + (r.warning ? ` — WARNING: ${r.warning}` : ""), !!r.warning, `${r.time} (UTC)`);
    $("confirm-box").classList.add("hidden");
    setTimeout(project, 700);
  } catch (e) { FE.say(e.message, true); }
});
$("swap-btn").addEventListener("click", async () => {
  const target = $("swap-camera").value;
  try { await FE.post("swap", {bundle: $("bundle-path").value, ...(target ? {camera: target} : {})}); FE.say("loading bundle…"); }
  catch (e) { FE.say(e.message, true); }
});
project(true); status(); setInterval(status, 1000);
