// NG review: the NG parts of this run still in memory (the newest console.recent_parts; the page says how many older
// ones it no longer lists) with their heat maps; the operator's judgement goes to reviews.jsonl. Each review names
// the run the page was built from: after a restart the same number is another part, and the station refuses it (409).
// Several cameras: each NG part with all its views (the deciding view marked, missing views named); a review
// labels one view (camera and seq). A passed view's miss is saved with its frame: its button is greyed once the frame
// has left the console's memory (kept false; the station refuses the review, 409), as on the live page.
"use strict";
const $ = id => document.getElementById(id);
let labels = {};
let run = null;   // the run this page lists parts of
let keepFrames = null;   // console.keep_frames: how many frames the console keeps, for the greyed button's tooltip

async function review(seq, label, card, camera) {
  try {
    await FE.post("review", {seq, label, run, ...(camera ? {camera} : {})});
    card.querySelector(".label").textContent = labels[label];
    card.querySelector(".label").className = "label " + label;
    card.dataset.review = label;
    FE.say(`${camera ? camera + " frame" : "part"} ${seq}: ${labels[label]}`);
    counts();
  } catch (e) { FE.say(e.message, true); }
}

// an NG part's score against its threshold: "> T" only when the score is over it; a part NG at or under it (by a
// region rule, whose reason is on the card, or an inspection that failed) says so
function versus(p) {
  if (p.score === null || p.score === undefined) return `score – / threshold ${FE.num(p.threshold)}`;
  if (!(p.score <= p.threshold)) return `score ${FE.num(p.score)} > ${FE.num(p.threshold)}`;
  const why = p.reason ? "NG by rule" : (p.error ? "NG: not inspected" : "NG");
  return `score ${FE.num(p.score)} ≤ threshold ${FE.num(p.threshold)}, ${why}`;
}

function card(p) {
  const c = FE.el("div", {class: "card part", "data-seq": p.seq, "data-camera": p.camera || "", "data-review": p.review || ""});
  c.append(p.image ? FE.el("img", {src: p.image, alt: `part ${p.seq} heat map`, loading: "lazy"}) : FE.el("div", {class: "muted"}, "no image saved"));
  c.append(FE.el("div", {class: "meta"}, `${p.camera ? p.camera + " " : "part "}${p.seq} · ${versus(p)} · ${p.source}` + (p.error ? " · " + p.error : "")));
  if (p.reason) c.append(FE.el("div", {class: "meta reason"}, p.reason));
  c.append(FE.el("div", {class: "label " + (p.review || "")}, p.review ? labels[p.review] : "not reviewed"));
  const buttons = FE.el("div", {class: "buttons"});
  for (const label of ["defect", "false_reject"])
    buttons.append(FE.el("button", {class: "small", "data-label": label, onclick: () => review(p.seq, label, c, p.camera)}, labels[label]));
  c.append(buttons);
  return c;
}

// one camera's view of an NG part (several cameras)
function viewCard(v) {
  const c = FE.el("div", {class: "view" + (v.decided ? " decided" : "") + (v.missing ? " missing" : ""), "data-camera": v.camera,
                          "data-seq": v.seq ?? "", "data-review": v.review || ""});
  if (v.missing) { c.append(FE.el("div", {class: "meta"}, `${v.camera}: missing (${v.missing})`)); return c; }
  c.append(v.image ? FE.el("img", {src: v.image, alt: `${v.camera} ${v.seq} heat map`, loading: "lazy"}) : FE.el("div", {class: "muted"}, "no image kept"));
  c.append(FE.el("div", {class: "meta"}, `${v.camera} ${v.seq} · ${v.ng === undefined ? "–" : (v.ng ? "NG" : "OK")} · score ${FE.num(v.score)}`
    + (v.threshold !== undefined ? ` / ${FE.num(v.threshold)}` : "") + (v.decided ? " · decided" : "") + (v.error ? " · " + v.error : "")));
  if (v.reason) c.append(FE.el("div", {class: "meta reason"}, v.reason));
  if (v.ng === undefined) return c;  // no longer in memory: nothing to review
  c.append(FE.el("div", {class: "label " + (v.review || "")}, v.review ? labels[v.review] : "not reviewed"));
  const buttons = FE.el("div", {class: "buttons"});
  for (const label of v.ng ? ["defect", "false_reject"] : ["miss"]) {
    const b = FE.el("button", {class: "small", "data-label": label, onclick: () => review(v.seq, label, c, v.camera)}, labels[label]);
    if (label === "miss" && !v.kept) FE.greyMiss(b, keepFrames);
    buttons.append(b);
  }
  c.append(buttons);
  return c;
}

function partCard(p) {
  const c = FE.el("div", {class: "card part group", "data-part": p.part});
  c.append(FE.el("div", {class: "meta"}, `part ${p.part} · NG` + (p.ng_views.length ? ` by ${p.ng_views.join(", ")} (decided by ${p.camera})` : "")
    + (p.missing.length ? ` · missing: ${p.missing.join(", ")}` : "")));
  if (p.reason) c.append(FE.el("div", {class: "meta reason"}, p.reason));
  const views = FE.el("div", {class: "views"});
  for (const v of p.views) views.append(viewCard(v));
  c.append(views);
  return c;
}

// "N older NG parts of this run not listed": the console keeps the newest listed_at_most (console.recent_parts)
function notListed(g) {
  const older = g.ng_in_run === undefined ? 0 : g.ng_in_run - g.parts.length;
  return older > 0 ? ` · ${older} older NG parts of this run not listed (the console keeps the newest ${g.listed_at_most}, console.recent_parts; they can no longer be reviewed here; their verdicts are in verdicts.jsonl)` : "";
}

function showCounts(g) {
  $("review-counts").textContent = `${g.parts.length} NG parts` + notListed(g) + " · " +
    Object.entries(g.reviewed).map(([k, n]) => `${n} ${labels[k]}`).join(" · ");
}

async function counts() { try { showCounts(await FE.get("/api/gallery")); } catch (e) { FE.say(e.message, true); } }

async function load() {
  try {
    const g = await FE.get("/api/gallery");
    labels = g.labels; run = g.run; keepFrames = g.keep_frames;
    showCounts(g);
    const box = $("gallery"); box.innerHTML = "";
    for (const p of g.parts) box.append(p.views ? partCard(p) : card(p));
  } catch (e) { FE.say(e.message, true); }
}

$("refresh").addEventListener("click", load);
$("export").addEventListener("click", async () => {
  try {
    const r = await FE.post("export", {});
    FE.say(`dataset written to ${r.dest}: ${r.summary}` + (r.warning ? " — WARNING: " + r.warning : ""), !!r.warning);
  } catch (e) { FE.say(e.message, true); }
});
load();
