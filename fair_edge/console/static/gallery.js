// NG review: every NG part of this run with its heat map; the operator's judgement goes to reviews.jsonl.
// Several cameras: each NG part with all its views (the deciding view marked, missing views named); a review
// labels one view (camera and seq).
"use strict";
const $ = id => document.getElementById(id);
let labels = {};

async function review(seq, label, card, camera) {
  try {
    await FE.post("review", camera ? {seq, camera, label} : {seq, label});
    card.querySelector(".label").textContent = labels[label];
    card.querySelector(".label").className = "label " + label;
    card.dataset.review = label;
    FE.say(`${camera ? camera + " frame" : "part"} ${seq}: ${labels[label]}`);
    counts();
  } catch (e) { FE.say(e.message, true); }
}

function card(p) {
  const c = FE.el("div", {class: "card part", "data-seq": p.seq, "data-camera": p.camera || "", "data-review": p.review || ""});
  c.append(p.image ? FE.el("img", {src: p.image, alt: `part ${p.seq} heat map`, loading: "lazy"}) : FE.el("div", {class: "muted"}, "no image saved"));
  c.append(FE.el("div", {class: "meta"}, `${p.camera ? p.camera + " " : "part "}${p.seq} · score ${FE.num(p.score)} > ${FE.num(p.threshold)} · ${p.source}` + (p.error ? " · " + p.error : "")));
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
  for (const label of v.ng ? ["defect", "false_reject"] : ["miss"])
    buttons.append(FE.el("button", {class: "small", "data-label": label, onclick: () => review(v.seq, label, c, v.camera)}, labels[label]));
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

function showCounts(g) {
  $("review-counts").textContent = `${g.parts.length} NG parts · ` +
    Object.entries(g.reviewed).map(([k, n]) => `${n} ${labels[k]}`).join(" · ");
}

async function counts() { try { showCounts(await FE.get("/api/gallery")); } catch (e) { FE.say(e.message, true); } }

async function load() {
  try {
    const g = await FE.get("/api/gallery");
    labels = g.labels;
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
