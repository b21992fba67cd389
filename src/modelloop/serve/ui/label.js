// modelloop labelling page: one queue item at a time, one click per label. Plain JavaScript.
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("key")) localStorage.setItem("modelloop.client", params.get("key"));
if (params.get("key")) history.replaceState(null, "", location.pathname);
$("client-key").value = localStorage.getItem("modelloop.client") || "";
$("save-key").onclick = () => { localStorage.setItem("modelloop.client", $("client-key").value.trim()); next(); };
const auth = () => { const k = $("client-key").value.trim(); return k ? { Authorization: "Bearer " + k } : {}; };
const state = { item: null, classes: null, done: 0 };

function flash(text, kind) { const el = $("label-status"); el.textContent = text; el.className = "status " + (kind || ""); }

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

function showInput(input) {
  const box = $("item-input"); box.innerHTML = "";
  if (input.kind === "image") {
    const img = document.createElement("img"); img.id = "item-image"; img.alt = "input image";
    img.src = "data:image/png;base64," + input.png; box.append(img);
  } else if (input.kind === "audio") {
    const a = document.createElement("audio"); a.id = "item-audio"; a.controls = true;
    a.src = "data:audio/wav;base64," + input.wav; box.append(a);
  } else if (input.kind === "row") {
    const t = document.createElement("table"); t.id = "item-row";
    Object.entries(input.row).forEach(([k, v]) => {
      const tr = document.createElement("tr"); const th = document.createElement("th"); th.textContent = k;
      const td = document.createElement("td"); td.textContent = v == null ? "" : String(v); tr.append(th, td); t.append(tr);
    });
    box.append(t);
  } else {
    const p = document.createElement("blockquote"); p.id = "item-text"; p.textContent = input.text; box.append(p);
  }
}

function showItem(res) {
  const it = res.items[0];
  state.item = it;
  $("l-version").textContent = res.model_version;
  if (!it) { $("item").classList.add("hidden"); $("empty").classList.remove("hidden"); return; }
  $("empty").classList.add("hidden"); $("item").classList.remove("hidden");
  $("item-origin").textContent = it.origin;
  $("item-reason").textContent = it.reason;
  $("item-predicted").textContent = it.predicted;
  $("item-ood").textContent = it.ood ? `(outside the training distribution, score ${Number(it.ood_score).toFixed(2)})` : "";
  showInput(it.input);
  const box = $("choices"); box.innerHTML = "";
  if (res.class_names) {
    $("value-row").classList.add("hidden");
    res.class_names.forEach((c) => {
      const b = document.createElement("button"); b.textContent = c; b.className = "choice"; b.dataset.label = c;
      b.onclick = () => send(c); box.append(b);
    });
  } else {
    $("value-row").classList.remove("hidden"); $("value").value = "";
  }
}

async function next() {
  try { showItem(await api("/label/next?n=1", { headers: auth() })); }
  catch (e) { flash(e.message, "err"); }
}

async function send(label) {
  const it = state.item; if (!it) return;
  try {
    await api("/feedback", { method: "POST", headers: { "content-type": "application/json", ...auth() },
      body: JSON.stringify({ prediction_id: it.prediction_id, label: label, origin: it.origin }) });
    state.done += 1; $("l-done").textContent = state.done;
    flash(`labelled ${it.prediction_id.slice(0, 8)} as ${label} (${it.origin})`, "ok");
    await next();
  } catch (e) { flash(e.message, "err"); }
}

$("send-value").onclick = () => { const v = Number($("value").value); if ($("value").value !== "" && isFinite(v)) send(v); };
$("skip").onclick = next;
api("/info").then((info) => { $("project").textContent = info.project; }).catch(() => {});
next();
