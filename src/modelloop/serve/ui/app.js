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
const TABS = ["draw", "upload", "text", "row", "user", "ask"];
function openTab(name) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.tab === name));
  TABS.forEach((t) => $("pane-" + t).classList.toggle("hidden", t !== name));
}
document.querySelectorAll(".tab").forEach((b) => b.onclick = () => openTab(b.dataset.tab));
// Show only the tabs of this model's inputs, and open the first.
function onlyTabs(names) {
  TABS.forEach((t) => $("tab-" + t).classList.toggle("hidden", !names.includes(t)));
  openTab(names[0]);
}

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

// ---- a table row (tabular models): one field per training column
function buildRowForm(info) {
  const form = $("row-form"); form.innerHTML = "";
  const numeric = new Set(info.numeric || []), cats = info.categorical || {};
  (info.columns || []).forEach((c) => {
    const label = document.createElement("label"); label.textContent = c;
    const input = document.createElement("input"); input.dataset.column = c; input.setAttribute("aria-label", c);
    if (numeric.has(c)) { input.type = "number"; input.step = "any"; }
    else if (cats[c]) {
      const list = document.createElement("datalist"); list.id = "cats-" + form.children.length;
      cats[c].forEach((v) => { const o = document.createElement("option"); o.value = v; list.append(o); });
      input.setAttribute("list", list.id); label.append(list);
    }
    label.append(input); form.append(label);
  });
}
function rowValues() {
  const row = {};
  $("row-form").querySelectorAll("input").forEach((i) => {
    const v = i.value.trim();
    row[i.dataset.column] = v === "" ? null : (i.type === "number" ? Number(v) : v);
  });
  return row;
}
$("predict-row").onclick = async () => {
  try {
    show(await api("/predict", { method: "POST", headers: { "content-type": "application/json", ...auth("client") },
      body: JSON.stringify({ row: rowValues() }) }));
  } catch (e) { showError(e); }
};

// ---- recommendation: a user's top items; clicking one sends the click as feedback
$("recommend").onclick = async () => {
  try {
    const q = new URLSearchParams({ user: $("user-id").value.trim(), k: $("rec-k").value || "10" });
    showRecs(await api("/recommend?" + q, { headers: auth("client") }));
  } catch (e) { showError(e); }
};
function showRecs(res) {
  state.last = res;
  const el = $("result"); el.className = ""; el.innerHTML = "";
  el.append(document.createTextNode(res.fallback ? "Most popular (new user)" : `For user ${res.user}`));
  const small = document.createElement("small");
  small.textContent = `model ${res.model_version} · ${res.latency_ms.toFixed(1)} ms`; el.append(small);
  const list = $("scores"); list.innerHTML = "";
  res.items.forEach((it) => {
    const b = document.createElement("button"); b.className = "secondary rec";
    b.textContent = it.title ? `${it.title} (${it.item})` : it.item;
    b.onclick = async () => {
      try {
        await api("/feedback", { method: "POST", headers: { "content-type": "application/json", ...auth("client") },
          body: JSON.stringify({ prediction_id: res.prediction_id, kind: "click", label: it.item }) });
        b.classList.add("clicked"); flash("fb-status", `thanks: click on "${b.textContent}" stored`, "ok"); refresh();
      } catch (e) { flash("fb-status", e.message, "err"); }
    };
    list.append(b);
  });
  $("feedback").classList.add("hidden");
  $("fb-status").textContent = "";
  $("feedback").after($("fb-status"));
  refresh();
}

// ---- FAQ answering: a chat; each answer takes "helped", "wrong" or the entry that answers it
const NO_ANSWER = "__none__";
function bubble(cls, text) {
  const d = document.createElement("div"); d.className = "msg " + cls;
  const p = document.createElement("p"); p.textContent = text; d.append(p);
  $("faq-chat").append(d); return d;
}
$("ask").onclick = async () => {
  const question = $("faq-question").value.trim();
  if (!question) return;
  $("faq-empty").classList.add("hidden");
  bubble("user", question);
  $("faq-question").value = "";
  try {
    const res = await api("/answer", { method: "POST", headers: { "content-type": "application/json", ...auth("client") },
      body: JSON.stringify({ question, k: Number($("faq-k").value) || 3 }) });
    showAnswer(res);
  } catch (e) { bubble("bot error", "Error: " + e.message); }
  $("faq-chat").scrollTop = $("faq-chat").scrollHeight;
};
function showAnswer(res) {
  state.last = res;
  const top = res.answers[0], handover = res.abstained || !top;
  const msg = bubble("bot" + (handover ? " handover" : ""),
    handover ? (res.message || "No entry answers that.") : top.answer);
  msg.dataset.prediction = res.prediction_id;
  msg.firstChild.className = "answer";
  const meta = document.createElement("small"); meta.className = "meta";
  meta.textContent = (handover ? "" : `“${top.question}” · score ${top.score.toFixed(3)} · `)
    + `model ${res.model_version} · ${res.latency_ms.toFixed(1)} ms`;
  msg.append(meta);
  const status = document.createElement("p"); status.className = "status";
  const send = async (body, button, done) => {
    try {
      await api("/feedback", { method: "POST", headers: { "content-type": "application/json", ...auth("client") },
        body: JSON.stringify({ prediction_id: res.prediction_id, ...body }) });
      msg.querySelectorAll("button.chosen").forEach((b) => b.classList.remove("chosen"));
      button.classList.add("chosen"); status.textContent = done; status.className = "status ok"; refresh();
    } catch (e) { status.textContent = e.message; status.className = "status err"; }
  };
  const row = document.createElement("div"); row.className = "row";
  const helped = document.createElement("button"); helped.className = "secondary helped"; helped.textContent = "✓ Helped";
  helped.onclick = () => send({ kind: "thumbs", value: 1 }, helped, "thanks: “helped” stored");
  const wrong = document.createElement("button"); wrong.className = "secondary wrong"; wrong.textContent = "✗ Wrong";
  wrong.onclick = () => send({ kind: "thumbs", value: -1 }, wrong,
    "thanks: “wrong” stored; pick the entry that answers it, if one does");
  row.append(helped, wrong); msg.append(row);
  // The runners-up (every entry listed, when it handed over): pick the one that answers the question.
  const others = handover ? res.answers : res.answers.slice(1);
  const list = document.createElement("div"); list.className = "runners";
  const title = document.createElement("small"); title.className = "hint";
  title.textContent = handover ? "Closest entries — pick the one that answers it:" : "Other entries — the right one instead?";
  list.append(title);
  others.forEach((a) => {
    const b = document.createElement("button"); b.className = "secondary pick"; b.dataset.entry = a.id;
    const q = document.createElement("b"); q.textContent = a.question;
    const s = document.createElement("small"); s.textContent = ` ${a.score.toFixed(3)}`;
    const t = document.createElement("span"); t.textContent = a.answer;
    b.append(q, s, t);
    b.onclick = () => send({ label: a.id }, b, `thanks: the right entry “${a.question}” stored`);
    list.append(b);
  });
  const none = document.createElement("button"); none.className = "secondary pick none"; none.dataset.entry = NO_ANSWER;
  none.textContent = "None of these answers it";
  none.onclick = () => send({ label: NO_ANSWER }, none, "thanks: “no entry answers it” stored");
  list.append(none);
  msg.append(list, status);
  refresh();
}

// ---- upload
$("file").onchange = () => {
  const f = $("file").files[0];
  $("predict-file").disabled = !f;
  const image = f && f.type.startsWith("image/");
  if (image) $("preview").src = URL.createObjectURL(f);
  $("preview").classList.toggle("hidden", !image);
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
  if (res.value !== undefined) {  // regression: one number; feedback is the true value
    const small = document.createElement("small");
    small.textContent = `model ${res.model_version} · ${res.latency_ms.toFixed(1)} ms`; el.append(small);
    $("scores").innerHTML = "";
    $("fb-label").classList.add("hidden"); $("fb-value").classList.remove("hidden");
    $("fb-value").value = res.value.toPrecision(6); $("fb-send").textContent = "Send true value";
    $("feedback").classList.remove("hidden");
    flash("fb-status", `prediction ${res.prediction_id.slice(0, 8)}…`);
    refresh();
    return;
  }
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
$("fb-correct").onclick = () => sendFeedback(state.last.value !== undefined ? state.last.value : state.last.label);
$("fb-send").onclick = () => sendFeedback(state.last && state.last.value !== undefined
  ? Number($("fb-value").value) : $("fb-label").value);

// ---- models, counters, admin
async function refresh() {
  try {
    const [models, stats] = await Promise.all([api("/models"), api("/stats")]);
    const tb = $("models").querySelector("tbody"); tb.innerHTML = "";
    if (models.versions.length) {  // the two test metrics this task is judged by
      $("h-m1").textContent = "test " + models.versions[0].headline[0][0];
      $("h-m2").textContent = models.versions[0].headline[1][0];
    }
    const num = (v) => (v == null ? "–" : Number(v).toFixed(4));
    models.versions.slice().reverse().forEach((m) => {
      const tr = document.createElement("tr");
      const cells = [m.version, m.aliases.includes("champion") ? "champion" : "", m.family, m.backend,
        num(m.headline[0][1]), num(m.headline[1][1]), m.parent || "–", m.feedback_examples, m.gate || "–",
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
    const au = stats.live_accuracy_audit;
    $("c-live").textContent = au && au.measure === "accuracy" && au.value != null ? (100 * au.value).toFixed(1) + "%" : "–";
    $("c-live").title = au && au.value != null && au.measure === "accuracy"
      ? `95% interval ${(100 * au.low).toFixed(1)}–${(100 * au.high).toFixed(1)}% on ${au.n} audit labels`
      : "no audit labels yet: label items from the queue (Label)";
    $("c-live-feedback").textContent = stats.live_accuracy == null ? "–" : (100 * stats.live_accuracy).toFixed(1) + "%";
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
    const au = m.live_accuracy_audit;
    if (au) box.append(tile(au.measure === "rmse" ? "live RMSE (audit)" : "live accuracy (audit)",
      au.value == null ? "–" : (au.measure === "rmse" ? fmt(au.value, 4) : (100 * au.value).toFixed(1) + "%"),
      au.value == null ? "no audit labels yet" : `95% CI ${fmt(au.low)}–${fmt(au.high)} on ${au.n} audit labels (unbiased)`, false));
    box.append(tile(au ? "from feedback (biased)" : "live accuracy", la.value == null ? "–" : (100 * la.value).toFixed(1) + "%",
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
  if (info.input === "text") onlyTabs(["text"]);  // the text pane replaces drawing and uploading
  else if (info.input === "row") { buildRowForm(info); onlyTabs(["row"]); }
  else if (info.input === "user id") onlyTabs(["user"]);
  else if ((info.endpoints || []).includes("POST /answer")) {  // FAQ answering: the chat instead of /predict
    onlyTabs(["ask"]);
    $("try").classList.add("wide"); $("try").querySelector("h2").textContent = "Ask the FAQ";
    $("result-card").classList.add("hidden");
  }
  else if (info.input === "audio") {
    onlyTabs(["upload"]);
    $("file").accept = ".wav,.flac,.ogg,audio/wav,audio/x-wav,audio/flac,audio/ogg";
    $("file-hint").textContent = "Choose a clip (WAV, FLAC or OGG)";
  }
  if (info.format && info.format.channels * info.format.height * info.format.width !== 784) {
    $("draw-hint").textContent = `Drawings are scaled to ${info.format.width}×${info.format.height} for this model.`;
  }
  refresh();
  refreshMonitor();
  setInterval(refresh, 3000);
}
init().catch((e) => showError(e));
