// Shared by the console pages: operator name and token (kept in this browser), JSON calls, formatting.
"use strict";
const FE = {
  who() { return document.getElementById("who").value.trim(); },
  token() { return localStorage.getItem("fe-token") || ""; },
  async post(action, body) {
    const headers = {"Content-Type": "application/json"};
    if (FE.token()) headers["X-Fair-Edge-Token"] = FE.token();
    const r = await fetch("/api/" + action, {method: "POST", headers, body: JSON.stringify({who: FE.who(), ...body})});
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  },
  async get(url) {
    const r = await fetch(url);
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  },
  num(v, digits = 4) { return v === null || v === undefined ? "–" : Number(v).toPrecision(digits); },
  pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %"; },
  ms(v) { return v === null || v === undefined ? "–" : v.toFixed(1) + " ms"; },
  el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  },
  // a passed part's miss button greyed (live page and gallery): its frame has left the console's memory
  // (keepFrames: console.keep_frames), and a miss is saved with its image (the server refuses one without, 409)
  greyMiss(button, keepFrames) {
    button.disabled = true;
    button.title = `its frame is no longer kept (the console keeps the last ${keepFrames} frames, ` +
      "console.keep_frames): a miss needs its image; mark a miss sooner, or raise console.keep_frames";
  },
  // an ISO 8601 time of the station (UTC, "…Z") as this browser's local date and time
  when(iso) { const t = new Date(iso); return isNaN(t) ? String(iso) : t.toLocaleString(); },
  say(text, bad = false, title = "") {
    const box = document.getElementById("message");
    box.textContent = text; box.className = bad ? "message bad" : "message"; box.title = title;
  },
  // an SVG bar chart: series = [{counts, cls}], edges = bin edges (len counts + 1), marks = [{x, cls, label}]
  histogram(svg, edges, series, marks = []) {
    const W = 600, H = 160, P = 24;
    svg.setAttribute("viewBox", `0 0 ${W} ${H + P}`);
    svg.innerHTML = "";
    const lo = edges[0], hi = edges[edges.length - 1], n = edges.length - 1;
    const top = Math.max(1, ...series.flatMap(s => s.counts || []));
    const x = v => P + (W - 2 * P) * (v - lo) / (hi - lo || 1);
    const bw = (W - 2 * P) / n / Math.max(1, series.length);
    series.forEach((s, k) => (s.counts || []).forEach((c, i) => {
      if (!c) return;
      const h = (H - 8) * c / top;
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      r.setAttribute("x", x(edges[i]) + k * bw); r.setAttribute("y", H - h);
      r.setAttribute("width", Math.max(1, bw - 1)); r.setAttribute("height", h); r.setAttribute("class", s.cls);
      svg.append(r);
    }));
    for (const m of marks) {
      const outside = m.x > hi ? " →" : (m.x < lo ? " ←" : "");
      const at = Math.min(Math.max(m.x, lo), hi);
      const l = document.createElementNS("http://www.w3.org/2000/svg", "line");
      l.setAttribute("x1", x(at)); l.setAttribute("x2", x(at)); l.setAttribute("y1", 0); l.setAttribute("y2", H);
      l.setAttribute("class", m.cls); svg.append(l);
      const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
      t.setAttribute("x", x(at) + (m.x > hi ? -70 : 3)); t.setAttribute("y", m.cls === "prop" ? 26 : 12);
      t.setAttribute("class", m.cls); t.textContent = m.label + outside;
      svg.append(t);
    }
    const axis = document.createElementNS("http://www.w3.org/2000/svg", "text");
    axis.setAttribute("x", P); axis.setAttribute("y", H + 16); axis.setAttribute("class", "axis");
    axis.textContent = `${FE.num(lo)} … ${FE.num(hi)}`;
    svg.append(axis);
  },
};
// the page header, the same on every page
document.getElementById("top").innerHTML = `<h1>fair-edge station</h1>
  <nav><a href="/">Live</a><a href="/gallery">NG review</a><a href="/tune">Threshold &amp; model</a></nav>
  <div class="ident"><label>operator <input id="who" autocomplete="off"></label>
    <label>token <input id="token" type="password" autocomplete="off" placeholder="(if required)"></label></div>`;
document.addEventListener("DOMContentLoaded", () => {
  const who = document.getElementById("who");
  who.value = localStorage.getItem("fe-who") || "operator";
  who.addEventListener("change", () => localStorage.setItem("fe-who", who.value.trim()));
  const token = document.getElementById("token");
  token.value = FE.token();
  token.addEventListener("change", () => localStorage.setItem("fe-token", token.value.trim()));
  for (const a of document.querySelectorAll("nav a")) if (a.getAttribute("href") === location.pathname) a.classList.add("here");
});
