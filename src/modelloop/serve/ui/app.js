// modelloop web UI: plain JavaScript, no build step. Talks to the same server's JSON API.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { last: null, classes: [], format: null };

// Keys: from the URL fragment (never sent to the server) or this browser's storage.
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("key")) localStorage.setItem("modelloop.client", params.get("key"));
if (params.get("admin")) localStorage.setItem("modelloop.admin", params.get("admin"));
if (params.get("key") || params.get("admin")) history.replaceState(null, "", location.pathname);
$("client-key").value = localStorage.getItem("modelloop.client") || "";
$("admin-key").value = localStorage.getItem("modelloop.admin") || "";
$("save-keys").onclick = () => {
  localStorage.setItem("modelloop.client", $("client-key").value.trim());
  localStorage.setItem("modelloop.admin", $("admin-key").value.trim());
  flash("admin-status", "keys saved", "ok");
};
const auth = (role) => {
  const k = role === "admin" ? $("admin-key").value.trim() : ($("client-key").value.trim() || $("admin-key").value.trim());
  return k ? { Authorization: "Bearer " + k } : {};
};

function flash(id, text, kind) { const el = $(id); el.textContent = text; el.className = "status " + (kind || ""); }

async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const d = body && body.detail;
    throw new Error(typeof d === "string" ? d : JSON.stringify(d || r.statusText));
  }
  return body;
}

// ---- tabs
document.querySelectorAll(".tab").forEach((b) => b.onclick = () => {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === b));
  $("pane-draw").classList.toggle("hidden", b.dataset.tab !== "draw");
  $("pane-upload").classList.toggle("hidden", b.dataset.tab !== "upload");
  $("pane-text").classList.toggle("hidden", b.dataset.tab !== "text");
});

// ---- drawing: white strokes on black, like the training digits
const canvas = $("canvas"), ctx = canvas.getContext("2d");
function clearCanvas() { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
clearCanvas();
let drawing = false, lastPt = null;
const pt = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height]; };
canvas.addEventListener("pointerdown", (e) => { drawing = true; lastPt = pt(e); canvas.setPointerCapture(e.pointerId); stroke(e); });
canvas.addEventListener("pointermove", (e) => { if (drawing) stroke(e); });
canvas.addEventListener("pointerup", () => { drawing = false; lastPt = null; });
function stroke(e) {
  const p = pt(e);
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 22; ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath(); ctx.moveTo(lastPt[0], lastPt[1]); ctx.lineTo(p[0], p[1]); ctx.stroke(); lastPt = p;
}
$("clear").onclick = clearCanvas;

// The drawing, scaled to the model's input (e.g. 28x28 gray), as 0-255 pixels.
function canvasPixels(fmt) {
  const small = document.createElement("canvas");
  small.width = fmt.width; small.height = fmt.height;
  const s = small.getContext("2d");
  s.imageSmoothingEnabled = true; s.imageSmoothingQuality = "high";
  s.drawImage(canvas, 0, 0, fmt.width, fmt.height);
  const d = s.getImageData(0, 0, fmt.width, fmt.height).data;
  const out = [];
  for (let c = 0; c < fmt.channels; c++)
    for (let i = 0; i < fmt.width * fmt.height; i++)
      out.push(fmt.channels === 1 ? Math.round((d[4 * i] + d[4 * i + 1] + d[4 * i + 2]) / 3) : d[4 * i + c]);
  return out;
}
$("predict-drawing").onclick = async () => {
  if (!state.format) return;
  try {
    const res = await api("/predict", { method: "POST", headers: { "content-type": "application/json", ...auth("client") },
      body: JSON.stringify({ pixels: canvasPixels(state.format) }) });
    show(res);
  } catch (e) { showError(e); }
};

// ---- text (text models)
$("predict-text").onclick = async () => {
  try {
    const res = await api("/predict", { method: "POST", headers: { "content-type": "application/json", ...auth("client") },
      body: JSON.stringify({ text: $("text-input").value }) });
    show(res);
  } catch (e) { showError(e); }
};

// ---- upload
$("file").onchange = () => {
  const f = $("file").files[0];
  $("predict-file").disabled = !f;
  if (f) { $("preview").src = URL.createObjectURL(f); $("preview").classList.remove("hidden"); }
};
$("predict-file").onclick = async () => {
  const fd = new FormData(); fd.append("file", $("file").files[0]);
  try { show(await api("/predict", { method: "POST", body: fd, headers: auth("client") })); } catch (e) { showError(e); }
};

// ---- result + feedback
function show(res) {
  state.last = res;
  const el = $("result"); el.className = "";
  el.innerHTML = ""; el.append(document.createTextNode(res.label));
  const small = document.createElement("small");
  small.textContent = `model ${res.model_version} · ${res.latency_ms.toFixed(1)} ms`; el.append(small);
  const scores = $("scores"); scores.innerHTML = "";
  const entries = Object.entries(res.scores).sort((a, b) => b[1] - a[1]);
  entries.forEach(([name, p], i) => {
    const row = document.createElement("div"); row.className = "bar" + (i === 0 ? " top" : "");
    row.innerHTML = `<span></span><div class="track"><div class="fill"></div></div><span>${(100 * p).toFixed(1)}%</span>`;
    row.firstChild.textContent = name; row.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    scores.append(row);
  });
  $("fb-label").innerHTML = "";
  state.classes.forEach((c) => { const o = document.createElement("option"); o.value = o.textContent = c; $("fb-label").append(o); });
  $("fb-label").value = state.classes.find((c) => c !== res.label) || res.label;
  $("feedback").classList.remove("hidden");
  flash("fb-status", `prediction ${res.prediction_id.slice(0, 8)}…`);
  refresh();
}
function showError(e) { const el = $("result"); el.className = "empty"; el.textContent = "Error: " + e.message; }
async function sendFeedback(label) {
  if (!state.last) return;
  try {
    await api("/feedback", { method: "POST", headers: { "content-type": "application/json", ...auth("client") },
      body: JSON.stringify({ prediction_id: state.last.prediction_id, label }) });
    flash("fb-status", `thanks: feedback "${label}" stored`, "ok");
    refresh();
  } catch (e) { flash("fb-status", e.message, "err"); }
}
$("fb-correct").onclick = () => sendFeedback(state.last.label);
$("fb-send").onclick = () => sendFeedback($("fb-label").value);

// ---- models, counters, admin
async function refresh() {
  try {
    const [models, stats] = await Promise.all([api("/models"), api("/stats")]);
    const tb = $("models").querySelector("tbody"); tb.innerHTML = "";
    models.versions.slice().reverse().forEach((m) => {
      const tr = document.createElement("tr");
      const cells = [m.version, m.aliases.includes("champion") ? "champion" : "", m.family, m.backend,
        m.accuracy.toFixed(4), m.f1_macro.toFixed(4), m.parent || "–", m.feedback_examples, m.gate || "–",
        new Date(m.created_at * 1000).toLocaleString()];
      cells.forEach((c, i) => { const td = document.createElement("td");
        if (i === 1 && c) { const b = document.createElement("span"); b.className = "badge"; b.textContent = c; td.append(b); }
        else td.textContent = c; tr.append(td); });
      const td = document.createElement("td");
      if (!m.aliases.includes("champion")) {
        const b = document.createElement("button"); b.className = "secondary"; b.textContent = "Promote";
        b.onclick = () => admin("/admin/promote", { version: m.version }); td.append(b);
      }
      tr.append(td); tb.append(tr);
    });
    $("c-requests").textContent = stats.requests;
    $("c-latency").textContent = stats.p50_ms == null ? "–" : stats.p50_ms.toFixed(1) + " ms";
    $("c-feedback").textContent = stats.feedback;
    $("c-live").textContent = stats.live_accuracy == null ? "–" : (100 * stats.live_accuracy).toFixed(1) + "%";
    $("c-version").textContent = stats.model_version || "–";
  } catch (e) { /* the next refresh tries again */ }
}
async function admin(path, body) {
  try {
    const res = await api(path, { method: "POST", headers: { "content-type": "application/json", ...auth("admin") },
      body: JSON.stringify(body || {}) });
    flash("admin-status", res.champion ? `champion: ${res.champion}` : "started", "ok");
    refresh();
    return res;
  } catch (e) { flash("admin-status", e.message, "err"); return null; }
}
$("rollback").onclick = () => admin("/admin/rollback");
// Poll a background job (retrain or policy check) until it ends, then report through `done`.
function pollJob(job, statusId, done) {
  const poll = setInterval(async () => {
    try {
      const j = await api("/admin/jobs/" + job.id, { headers: auth("admin") });
      if (j.status === "running") return;
      clearInterval(poll);
      if (j.status === "done") done(j.result); else flash(statusId, `${job.kind} failed: ${j.error}`, "err");
      refresh(); refreshMonitor();
    } catch (e) { clearInterval(poll); flash(statusId, e.message, "err"); }
  }, 1500);
}
$("retrain").onclick = async () => {
  const job = await admin("/admin/retrain");
  if (!job) return;
  flash("admin-status", "retraining…");
  pollJob(job, "admin-status", (r) => flash("admin-status", `${r.version} ${r.decision}: ${r.reasons.join("; ")}`,
    r.decision === "promoted" ? "ok" : ""));
};

// ---- monitoring (admin)
function tile(title, value, detail, alert) {
  const d = document.createElement("div"); d.className = "tile" + (alert ? " alert" : "");
  const t = document.createElement("small"); t.className = "muted"; t.textContent = title;
  const b = document.createElement("b"); b.textContent = value;
  const s = document.createElement("small"); s.className = "hint"; s.textContent = detail;
  d.append(t, b, s); return d;
}
const fmt = (v, n = 3) => (v == null ? "–" : Number(v).toFixed(n));
async function refreshMonitor() {
  if (!$("admin-key").value.trim()) return;
  try {
    const m = await api("/admin/monitor", { headers: auth("admin") });
    const box = $("monitor"); box.innerHTML = "";
    const d = m.drift, la = m.live_accuracy, pd = m.prediction_drift;
    box.append(tile("input drift", d.statistic == null ? "not measured" : (d.detected ? "DETECTED" : "none"),
      d.statistic == null ? d.reason : `MMD² ${fmt(d.statistic, 4)} vs threshold ${fmt(d.threshold, 4)}, p = ${fmt(d.p_value)}`, d.detected));
    box.append(tile("prediction drift", pd.psi == null ? "–" : (pd.detected ? "DETECTED" : "none"),
      `PSI ${fmt(pd.psi)} (threshold ${pd.threshold})`, pd.detected));
    box.append(tile("live accuracy", la.value == null ? "–" : (100 * la.value).toFixed(1) + "%",
      la.value == null ? "no labelled feedback yet" : `95% CI ${fmt(la.low)}–${fmt(la.high)} on ${la.n}`, false));
    box.append(tile("new feedback", m.feedback.new_since_last_training, `${m.feedback.feedback} rows in all`, false));
    if (m.shadow) box.append(tile(`shadow ${m.shadow.version}`, m.shadow.agreement == null ? "–" : (100 * m.shadow.agreement).toFixed(1) + "% agree",
      `accuracy on feedback ${fmt(m.shadow.shadow_accuracy)} vs served ${fmt(m.shadow.served_accuracy)}`, false));
  } catch (e) { flash("monitor-status", e.message, "err"); }
}
$("refresh-monitor").onclick = refreshMonitor;
$("watch").onclick = async () => {
  const job = await admin("/admin/watch");
  if (!job) return;
  flash("monitor-status", "checking…");
  pollJob(job, "monitor-status", (r) => flash("monitor-status",
    `policy: ${r.action}${r.version ? " → " + r.version + " " + r.decision : ""}`, "ok"));
};

async function init() {
  const info = await api("/info");
  state.classes = info.class_names; state.format = info.format;
  $("project").textContent = info.project;
  if (info.input === "text") {  // a text model: the text pane replaces drawing and uploading
    for (const id of ["tab-draw", "tab-upload", "pane-draw", "pane-upload"]) $(id).classList.add("hidden");
    $("tab-text").classList.remove("hidden"); $("tab-text").classList.add("active");
    $("pane-text").classList.remove("hidden");
  }
  if (info.format && info.format.channels * info.format.height * info.format.width !== 784) {
    $("draw-hint").textContent = `Drawings are scaled to ${info.format.width}×${info.format.height} for this model.`;
  }
  refresh();
  refreshMonitor();
  setInterval(refresh, 3000);
}
init().catch((e) => showError(e));
