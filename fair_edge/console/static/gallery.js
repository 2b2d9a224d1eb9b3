// NG review: every NG part of this run with its heat map; the operator's judgement goes to reviews.jsonl.
"use strict";
const $ = id => document.getElementById(id);
let labels = {};

async function review(seq, label, card) {
  try {
    await FE.post("review", {seq, label});
    card.querySelector(".label").textContent = labels[label];
    card.querySelector(".label").className = "label " + label;
    card.dataset.review = label;
    FE.say(`part ${seq}: ${labels[label]}`);
    counts();
  } catch (e) { FE.say(e.message, true); }
}

function card(p) {
  const c = FE.el("div", {class: "card part", "data-seq": p.seq, "data-review": p.review || ""});
  c.append(p.image ? FE.el("img", {src: p.image, alt: `part ${p.seq} heat map`, loading: "lazy"}) : FE.el("div", {class: "muted"}, "no image saved"));
  c.append(FE.el("div", {class: "meta"}, `part ${p.seq} · score ${FE.num(p.score)} > ${FE.num(p.threshold)} · ${p.source}` + (p.error ? " · " + p.error : "")));
  if (p.reason) c.append(FE.el("div", {class: "meta reason"}, p.reason));
  c.append(FE.el("div", {class: "label " + (p.review || "")}, p.review ? labels[p.review] : "not reviewed"));
  const buttons = FE.el("div", {class: "buttons"});
  for (const label of ["defect", "false_reject"])
    buttons.append(FE.el("button", {class: "small", "data-label": label, onclick: () => review(p.seq, label, c)}, labels[label]));
  c.append(buttons);
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
    for (const p of g.parts) box.append(card(p));
  } catch (e) { FE.say(e.message, true); }
}

$("refresh").addEventListener("click", load);
$("export").addEventListener("click", async () => {
  try {
    const r = await FE.post("export", {});
    FE.say(`dataset written to ${r.dest}: ${r.summary}`);
  } catch (e) { FE.say(e.message, true); }
});
load();
