// mm-platform explorer: plain JS, no dependencies. Routes: #/search, #/clusters, #/map, #/record/<id>.
"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const view = () => $("#view");
const PALETTE = ["#4c6ef5", "#f76707", "#37b24d", "#e64980", "#15aabf", "#fab005", "#7950f2", "#82c91e", "#fa5252",
  "#12b886", "#be4bdb", "#fd7e14", "#228be6", "#a61e4d", "#5c940d", "#868e96"];
const colour = (i) => (i < 0 ? "#5c6370" : PALETTE[i % PALETTE.length]);
const recordHref = (id) => "#/record/" + encodeURIComponent(id);

async function api(url, opts) {
  const r = await fetch(url, opts);
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error((body && body.error) || r.status + " " + r.statusText);
  return body;
}
function showError(el, err) { el.innerHTML = `<div class="error">${esc(err.message || err)}</div>`; }

function card(h, opts = {}) {
  const img = h.image ? `<img src="${esc(h.image)}?size=192" alt="${esc(h.record_id)}" loading="lazy">` : "no image";
  const pills = [
    h.score != null ? `<span class="pill score">${Number(h.score).toFixed(3)}</span>` : "",
    h.label ? `<span class="pill">${esc(h.label)}</span>` : "",
    h.cluster_id != null ? `<a class="pill" href="#/clusters">cluster ${esc(h.cluster_id)}</a>` : "",
  ].join("");
  return `<div class="card result"><a class="thumb ${h.image ? "" : "none"}" href="${recordHref(h.record_id)}">${img}</a>
    <div class="body"><a class="rid" href="${recordHref(h.record_id)}">${esc(h.record_id)}</a><div>${pills}</div>
    ${h.text && !opts.short ? `<div class="text">${esc(h.text)}</div>` : ""}
    ${h.audio && !opts.short ? `<audio controls preload="none" src="${esc(h.audio)}"></audio>` : ""}</div></div>`;
}

// -- search -----------------------------------------------------------------------------------------
let facets = null;
async function renderSearch(params) {
  facets = facets || await api("/api/facets").catch(() => ({labels: [], batches: [], clusters: [], modalities: []}));
  const opt = (v, t) => `<option value="${esc(v)}">${esc(t)}</option>`;
  view().innerHTML = `<h1>Search</h1>
  <div class="panel"><div class="row tabs" id="qtabs">
      <button type="button" data-q="text" class="on">Text</button><button type="button" data-q="image">Image</button>
      <button type="button" data-q="audio">Audio clip</button><button type="button" data-q="fields">Fields</button></div>
    <form class="search" id="sform" style="margin-top:10px">
      <div id="qinput"></div><button type="submit">Search</button>
      <div class="row" style="grid-column:1/-1">
        <label>in <select name="modality"><option value="">query's own modality</option>
          ${["text", "image", "audio", "tabular", "fused", "shared"].map((m) => opt(m, m)).join("")}</select></label>
        <label>cluster <select name="cluster"><option value="">any</option>
          ${facets.clusters.map((c) => opt(c.cluster_id, c.cluster_id + " · " + (c.name || ""))).join("")}</select></label>
        <label>label <select name="label"><option value="">any</option>${facets.labels.map((l) => opt(l, l)).join("")}</select></label>
        <label>batch <select name="batch"><option value="">any</option>${facets.batches.map((b) => opt(b, b)).join("")}</select></label>
        <label>k <select name="k">${[12, 24, 48].map((k) => opt(k, k)).join("")}</select></label>
      </div></form></div>
  <div id="status" class="muted small"></div><div id="results" class="grid"></div>`;
  let kind = "text";
  const inputs = {
    text: `<input type="text" name="text" placeholder="describe what you are looking for…" autofocus>`,
    image: `<input type="file" name="image" accept="image/*">`,
    audio: `<input type="file" name="audio" accept="audio/*,.wav,.flac,.ogg,.mp3">`,
    fields: `<input type="text" name="fields" placeholder='{"price": 25, "material": "steel"}'>`,
  };
  const setKind = (k) => {
    kind = k; $("#qinput").innerHTML = inputs[k];
    document.querySelectorAll("#qtabs button").forEach((b) => b.classList.toggle("on", b.dataset.q === k));
  };
  $("#qtabs").addEventListener("click", (e) => { if (e.target.dataset.q) setKind(e.target.dataset.q); });
  setKind("text");
  const form = $("#sform");
  if (params.get("text")) { form.text.value = params.get("text"); }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const fd = new FormData(form);
    for (const [key, v] of [...fd.entries()]) if (v === "" || (v instanceof File && !v.name)) fd.delete(key);
    $("#status").textContent = "searching…";
    try {
      const r = await api("/api/search", {method: "POST", body: fd});
      $("#status").textContent = `${r.results.length} results in ${r.took_ms} ms`;
      $("#results").innerHTML = r.results.map((h) => card(h)).join("") || `<p class="muted">no results</p>`;
    } catch (err) { $("#status").textContent = ""; showError($("#results"), err); }
  });
  if (params.get("text")) form.requestSubmit();
}

// -- clusters ---------------------------------------------------------------------------------------
async function renderClusters() {
  view().innerHTML = `<h1>Clusters</h1><div id="clusters" class="clusters">loading…</div>`;
  try {
    const {clusters} = await api("/api/clusters");
    const total = clusters.reduce((a, c) => a + c.size, 0) || 1;
    $("#clusters").innerHTML = clusters.map((c) => {
      const labels = Object.entries(c.label_counts || {}).sort((a, b) => b[1] - a[1]);
      const agree = Object.entries(c.agreement || {}).map(([m, v]) =>
        `<span class="pill">${esc(m)} ${typeof v === "number" ? (v * 100).toFixed(0) + "%" : esc(JSON.stringify(v))}</span>`).join("");
      const reps = (c.representatives || []).map((r) => r.image
        ? `<a href="${recordHref(r.record_id)}" title="${esc(r.text || r.record_id)}"><img src="${esc(r.image)}?size=96" alt="${esc(r.record_id)}"></a>` : "").join("");
      const texts = (c.representatives || []).filter((r) => r.text).slice(0, 3).map((r) =>
        `<li><a href="${recordHref(r.record_id)}">${esc(r.text)}</a></li>`).join("");
      const clip = (c.representatives || []).find((r) => r.audio);
      return `<div class="panel cluster" data-cluster="${esc(c.cluster_id)}">
        <h3>#${esc(c.cluster_id)} · ${esc(c.name || "unnamed")}</h3>
        <div class="muted small">${c.size} records · ${esc(c.algorithm)}${c.n_outliers ? " · " + c.n_outliers + " outliers" : ""}</div>
        <div class="bar" style="margin-top:6px"><div style="width:${(100 * c.size / total).toFixed(1)}%"></div></div>
        <div style="margin-top:8px">${(c.top_terms || []).slice(0, 8).map((t) => `<span class="pill">${esc(t)}</span>`).join("")}</div>
        <div class="reps">${reps}</div>
        ${clip ? `<audio controls preload="none" src="${esc(clip.audio)}"></audio>` : ""}
        <ul class="small">${texts}</ul>
        <table class="kv small"><tr><td>labels</td><td>${labels.map(([l, n]) => esc(l) + " " + n).join(" · ") || "—"}</td></tr>
        <tr><td>per-modality agreement</td><td>${agree || "—"}</td></tr>
        <tr><td>coverage</td><td>text ${pct(c.text_coverage)} · image ${pct(c.image_coverage)} · audio ${pct(c.audio_coverage)} · fields ${pct(c.tabular_coverage)}</td></tr></table>
        <div style="margin-top:8px"><a href="#/search?cluster=${esc(c.cluster_id)}" class="small">search in this cluster</a> ·
          <a href="#/map?cluster=${esc(c.cluster_id)}" class="small">show on map</a></div></div>`;
    }).join("") || `<p class="muted">no clusters yet: run mm-platform ingest</p>`;
  } catch (err) { showError($("#clusters"), err); }
}
const pct = (v) => (v == null ? "—" : (v * 100).toFixed(0) + "%");

// -- map --------------------------------------------------------------------------------------------
async function renderMap(params) {
  view().innerHTML = `<h1>Embedding map</h1>
    <div class="row" style="margin-bottom:10px">colour by <select id="colourBy"><option value="cluster">cluster</option><option value="label">label</option></select>
      <span class="muted small" id="mapinfo"></span><button class="secondary" id="reset" type="button">reset view</button></div>
    <div class="map-wrap"><canvas id="map"></canvas></div><div class="legend" id="legend"></div>`;
  let meta, buf;
  try {
    [meta, buf] = await Promise.all([api("/api/map/meta"), fetch("/api/map/points").then((r) => r.arrayBuffer())]);
  } catch (err) { showError(view(), err); return; }
  const n = new DataView(buf).getUint32(0, true);
  const xs = new Float32Array(buf, 4, n), ys = new Float32Array(buf, 4 + 4 * n, n);
  const cl = new Int32Array(buf, 4 + 8 * n, n), lb = new Int32Array(buf, 4 + 12 * n, n);
  $("#mapinfo").textContent = `${n.toLocaleString()} points · ${meta.method || ""} of ${meta.space || ""} vectors · scroll to zoom, drag to pan, click to open`;
  const canvas = $("#map"), ctx = canvas.getContext("2d");
  let minx = Infinity, maxx = -Infinity, miny = Infinity, maxy = -Infinity;
  for (let i = 0; i < n; i++) { minx = Math.min(minx, xs[i]); maxx = Math.max(maxx, xs[i]); miny = Math.min(miny, ys[i]); maxy = Math.max(maxy, ys[i]); }
  if (!n) { minx = miny = 0; maxx = maxy = 1; }
  // the view: screen = (world - centre) * scale + size / 2
  let W = 0, H = 0, dpr = 1, scale = 1, cx = (minx + maxx) / 2, cy = (miny + maxy) / 2, by = "cluster", hover = -1;
  const only = params.get("cluster") != null ? Number(params.get("cluster")) : null;
  const fit = () => { scale = 0.9 * Math.min(W / Math.max(maxx - minx, 1e-9), H / Math.max(maxy - miny, 1e-9)); cx = (minx + maxx) / 2; cy = (miny + maxy) / 2; };
  const sx = (i) => (xs[i] - cx) * scale + W / 2, sy = (i) => H / 2 - (ys[i] - cy) * scale;
  // a uniform grid over world coordinates for hover hit-testing (built once)
  const G = Math.max(8, Math.ceil(Math.sqrt(n / 4))), gw = (maxx - minx) / G || 1, gh = (maxy - miny) / G || 1;
  const cellOf = (x, y) => Math.min(G - 1, Math.max(0, Math.floor((x - minx) / gw))) * G + Math.min(G - 1, Math.max(0, Math.floor((y - miny) / gh)));
  const counts = new Int32Array(G * G + 1);
  for (let i = 0; i < n; i++) counts[cellOf(xs[i], ys[i]) + 1]++;
  for (let c = 0; c < G * G; c++) counts[c + 1] += counts[c];
  const order = new Int32Array(n), fillp = counts.slice(0, G * G);
  for (let i = 0; i < n; i++) order[fillp[cellOf(xs[i], ys[i])]++] = i;
  function nearest(px, py, radius) {
    const wx = (px - W / 2) / scale + cx, wy = (H / 2 - py) / scale + cy, wr = radius / scale;
    const c0 = Math.max(0, Math.floor((wx - wr - minx) / gw)), c1 = Math.min(G - 1, Math.floor((wx + wr - minx) / gw));
    const r0 = Math.max(0, Math.floor((wy - wr - miny) / gh)), r1 = Math.min(G - 1, Math.floor((wy + wr - miny) / gh));
    let best = -1, bd = radius * radius;
    for (let a = c0; a <= c1; a++) for (let b = r0; b <= r1; b++) {
      const cell = a * G + b;
      for (let k = counts[cell]; k < counts[cell + 1]; k++) {
        const i = order[k];
        if (only != null && cl[i] !== only) continue;
        const dx = sx(i) - px, dy = sy(i) - py, d = dx * dx + dy * dy;
        if (d < bd) { bd = d; best = i; }
      }
    }
    return best;
  }
  function draw() {
    const t0 = performance.now();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#0f1422"; ctx.fillRect(0, 0, W, H);
    const r = n > 20000 ? 1.6 : n > 2000 ? 2.5 : 4.5, key = by === "cluster" ? cl : lb;
    // batch by colour: one path per colour is what keeps 100k points fast
    const groups = new Map();
    for (let i = 0; i < n; i++) {
      const x = sx(i), y = sy(i);
      if (x < -5 || y < -5 || x > W + 5 || y > H + 5) continue;
      const g = only != null && cl[i] !== only ? -2 : key[i];
      let arr = groups.get(g); if (!arr) groups.set(g, (arr = [])); arr.push(x, y);
    }
    for (const [g, arr] of groups) {
      ctx.fillStyle = g === -2 ? "rgba(120,130,150,0.25)" : colour(g); ctx.globalAlpha = g === -2 ? 1 : 0.85;
      ctx.beginPath();
      for (let j = 0; j < arr.length; j += 2) { ctx.moveTo(arr[j] + r, arr[j + 1]); ctx.arc(arr[j], arr[j + 1], r, 0, 6.2832); }
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    if (hover >= 0) { ctx.strokeStyle = "#fff"; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(sx(hover), sy(hover), r + 4, 0, 6.2832); ctx.stroke(); }
    window.__mapStats = {...(window.__mapStats || {}), n, drawMs: performance.now() - t0};  // read by bench/bench_serve.py
  }
  function legend() {
    const names = by === "cluster" ? meta.clusters.map((c) => [c, c < 0 ? "outlier" : "cluster " + c]) : meta.labels.map((l, i) => [i, l]);
    $("#legend").innerHTML = names.map(([i, t]) => `<span><i style="background:${colour(i)}"></i>${esc(t)}</span>`).join("");
  }
  function resize() {
    const rect = canvas.getBoundingClientRect(); dpr = window.devicePixelRatio || 1;
    const first = !W; W = rect.width; H = rect.height; canvas.width = W * dpr; canvas.height = H * dpr;
    if (first) fit(); draw();
  }
  const tip = $("#tooltip");
  let drag = null, raf = 0;
  const redraw = () => { if (!raf) raf = requestAnimationFrame(() => { raf = 0; draw(); }); };
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect(), px = e.clientX - rect.left, py = e.clientY - rect.top;
    const wx = (px - W / 2) / scale + cx, wy = (H / 2 - py) / scale + cy, f = Math.exp(-e.deltaY * 0.0015);
    scale *= f; cx = wx - (px - W / 2) / scale; cy = wy - (H / 2 - py) / scale; redraw();
  }, {passive: false});
  canvas.addEventListener("mousedown", (e) => { drag = {x: e.clientX, y: e.clientY, cx, cy, moved: false}; });
  window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
  canvas.addEventListener("mousemove", (e) => {
    const rect = canvas.getBoundingClientRect(), px = e.clientX - rect.left, py = e.clientY - rect.top;
    if (drag && (e.buttons & 1)) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      cx = drag.cx - dx / scale; cy = drag.cy + dy / scale; tip.hidden = true; redraw(); return;
    }
    const th = performance.now(), i = nearest(px, py, 12);
    window.__mapStats = {...(window.__mapStats || {}), hoverMs: performance.now() - th};
    if (i !== hover) { hover = i; redraw(); }
    if (i < 0) { tip.hidden = true; return; }
    const rid = meta.record_ids[i];
    tip.innerHTML = `<img src="/media/image/${encodeURIComponent(rid)}?size=192" onerror="this.remove()" alt="">
      <b class="tip-id">${esc(rid)}</b><br>cluster ${cl[i]}${lb[i] >= 0 ? " · " + esc(meta.labels[lb[i]]) : ""}`;
    tip.style.left = e.clientX + 14 + "px"; tip.style.top = e.clientY + 14 + "px"; tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; hover = -1; redraw(); });
  canvas.addEventListener("click", (e) => {
    if (drag && drag.moved) return;
    if (hover >= 0) { tip.hidden = true; location.hash = recordHref(meta.record_ids[hover]); }
  });
  $("#colourBy").addEventListener("change", (e) => { by = e.target.value; legend(); draw(); });
  $("#reset").addEventListener("click", () => { fit(); draw(); });
  window.addEventListener("resize", resize);
  legend(); resize();
}

// -- record -----------------------------------------------------------------------------------------
async function renderRecord(id) {
  view().innerHTML = `<p class="muted">loading ${esc(id)}…</p>`;
  let r;
  try { r = await api("/api/record/" + encodeURIComponent(id)); } catch (err) { showError(view(), err); return; }
  const kv = (rows) => `<table class="kv">${rows.filter(([, v]) => v != null && v !== "").map(([k, v]) =>
    `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("")}</table>`;
  const nb = Object.entries(r.neighbours || {}).map(([m, hits]) =>
    `<h2>Nearest by ${esc(m)}</h2><div class="nbrs">${hits.map((h) => card(h, {short: true})).join("")}</div>`).join("");
  view().innerHTML = `<h1>${esc(r.record_id)} ${r.label ? `<span class="pill">${esc(r.label)}</span>` : ""}</h1>
  <div class="record"><div class="hero">
      ${r.image ? `<img src="${esc(r.image.url)}?size=384" alt="${esc(r.record_id)}">
        <div class="muted small">${esc(r.image.width)}×${esc(r.image.height)} ${esc(r.image.format)}</div>` : `<div class="panel muted">no image</div>`}
      ${r.audio ? `<div class="panel"><audio controls src="${esc(r.audio.url)}" style="width:100%"></audio>
        <div class="muted small">${Number(r.audio.duration_s).toFixed(2)} s · ${esc(r.audio.sample_rate)} Hz · ${esc(r.audio.format)}</div></div>` : ""}
    </div><div>
      ${r.text ? `<div class="panel"><h2 style="margin-top:0">Text</h2><p>${esc(r.text)}</p></div>` : ""}
      ${r.fields ? `<div class="panel"><h2 style="margin-top:0">Fields</h2>${kv(Object.entries(r.fields))}</div>` : ""}
      <div class="panel"><h2 style="margin-top:0">Cluster</h2>${r.cluster ? kv([["cluster", r.cluster.cluster_id + " · " + (r.cluster.name || "")],
        ["algorithm", r.cluster.algorithm], ["distance to centroid", r.cluster.distance_to_centroid?.toFixed?.(4)], ["outlier", String(r.cluster.is_outlier)]]) : "<span class='muted'>not clustered</span>"}</div>
      <div class="panel"><h2 style="margin-top:0">Provenance</h2>${kv([["batch", r.batch_id], ["manifest line", r.manifest?.line_number],
        ["manifest sha256", r.manifest?.manifest_sha256], ["landed", r.manifest?.landed_at], ["timestamp", r.timestamp],
        ["text sha256", r.text_sha256], ["image sha256", r.image_sha256], ["audio sha256", r.audio_sha256], ["fields sha256", r.fields_sha256],
        ...(r.embeddings || []).map((e) => [e.modality + " model", `${e.model}@${e.model_version} (${e.dim}-d)`])])}</div>
    </div></div>${nb}`;
}

// -- router -----------------------------------------------------------------------------------------
function route() {
  const [path, qs] = (location.hash.slice(1) || "/search").split("?");
  const params = new URLSearchParams(qs || "");
  const parts = path.split("/").filter(Boolean);
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === parts[0]));
  $("#tooltip").hidden = true;
  if (parts[0] === "clusters") return renderClusters();
  if (parts[0] === "map") return renderMap(params);
  if (parts[0] === "record" && parts[1]) return renderRecord(decodeURIComponent(parts.slice(1).join("/")));
  return renderSearch(params).then(() => {
    const f = $("#sform");
    for (const k of ["cluster", "label", "batch"]) if (params.get(k) != null && f[k]) f[k].value = params.get(k);
  });
}
window.addEventListener("hashchange", route);
route();
