// qmesh discovery dashboard: a live table fed by the registry's WebSocket.
// Data from the registry is put into the page with textContent only.
"use strict";

const SEVERITY = { error: 0, disconnected: 1, warning: 2, starting: 3, active: 4 };
const ICON = { error: "✖", disconnected: "⊘", warning: "▲", starting: "◐", active: "✔" };
const STATES = ["error", "disconnected", "warning", "starting", "active"];

const view = {
  procs: new Map(),      // name -> process (as the registry sent it)
  seq: null,             // last change number seen
  epoch: null,           // the registry run that number belongs to
  offset: 0,             // registry clock - our clock, ms
  states: new Set(),     // state filter (empty: all)
  kind: "",
  host: "",
  text: "",
  chosen: null,          // null: subscribed to all; else a Set of names
  ws: null,
  retry: 0,
  dirty: true,
  rows: new Map(),       // name -> <tr>
  pending: [],           // state changes to announce
};

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
};
const now = () => Date.now() + view.offset;

function setConn(state, text) {
  $("conn").dataset.state = state;
  $("conn-text").textContent = text;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws`);
  view.ws = ws;
  setConn("connecting", view.seq === null ? "Connecting…" : "Reconnecting…");
  ws.onopen = () => { view.retry = 0; subscribe(); };
  ws.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    onMessage(m);
  };
  ws.onclose = () => {
    if (view.ws !== ws) return;
    setConn("down", "Disconnected — retrying");
    const wait = Math.min(10000, 250 * 2 ** view.retry++);
    setTimeout(connect, wait);
  };
}

function subscribe(fresh) {
  if (!view.ws || view.ws.readyState !== WebSocket.OPEN) return;
  const cmd = { op: "subscribe" };
  if (view.chosen) cmd.names = [...view.chosen];
  if (!fresh && view.seq !== null && view.epoch) { cmd.after = view.seq; cmd.epoch = view.epoch; }
  view.ws.send(JSON.stringify(cmd));
}

function clock(t) { if (typeof t === "number") view.offset = t - Date.now(); }

function onMessage(m) {
  switch (m.type) {
    case "hello": clock(m.now); break;
    case "snapshot":
      clock(m.now);
      view.procs.clear();
      for (const p of m.processes) view.procs.set(p.name, p);
      view.seq = m.seq; view.epoch = m.epoch; view.snapshotted = true;
      setConn("live", "Live");
      view.dirty = true;
      break;
    case "resume":
      clock(m.now); view.epoch = m.epoch; setConn("live", "Live");
      break;
    case "upsert": {
      const prev = view.procs.get(m.process.name);
      if (prev && prev.state !== m.process.state) view.pending.push([m.process.name, prev.state, m.process.state]);
      if (!prev) view.pending.push([m.process.name, null, m.process.state]);
      view.procs.set(m.process.name, m.process);
      view.seq = m.seq; view.dirty = true;
      flash(m.process.name, prev && prev.state !== m.process.state);
      break;
    }
    case "beat": {
      const p = view.procs.get(m.name);
      if (p) { p.counter = m.counter; p.lastBeat = m.lastBeat; p.lastHb = m.lastHb; p.stale = false; updateRow(p); }
      view.seq = m.seq;
      break;
    }
    case "removed":
      if (view.procs.delete(m.name)) view.pending.push([m.name, "present", "removed"]);
      view.seq = m.seq; view.dirty = true;
      break;
    case "dropped":
      // Too slow: the registry told us and closed; resume from m.seq.
      view.seq = m.seq;
      break;
    case "error":
      announceNow(`Registry: ${m.error}${m.detail ? ": " + m.detail : ""}`);
      break;
    default: break;
  }
  $("seq").textContent = view.seq === null ? "–" : `#${view.seq}`;
  // The 250 ms tick renders; but a browser busy with a stream of messages
  // (hundreds of beats a second) may run its timers late or, headless, not
  // at all: render from here too once a tick's worth of time has passed.
  if (performance.now() - (view.rendered || 0) > 250) tick();
}

function flash(name, changed) {
  if (!changed) return;
  const tr = view.rows.get(name);
  if (tr) { tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash"); }
}

function age(ms) {
  if (ms < 0) ms = 0;
  if (ms < 10000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${String(s % 60).padStart(2, "0")} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, "0")} m`;
  return `${Math.floor(s / 86400)} d`;
}

function matches(p) {
  if (view.states.size && !view.states.has(p.state)) return false;
  if (view.kind && p.kind !== view.kind) return false;
  if (view.host && p.host !== view.host) return false;
  if (view.text) {
    const hay = [p.name, p.kind, p.host, p.ip, p.address, p.note, p.status, p.qVersion, String(p.pid ?? ""),
      ...Object.entries(p.attrs || {}).map(([k, v]) => `${k}=${v}`)].join(" ").toLowerCase();
    if (!view.text.split(/\s+/).every((w) => hay.includes(w))) return false;
  }
  return true;
}

// A cell's text, cut with an ellipsis past a set width (names, hosts and
// attributes may be up to the registry's limits, hundreds of characters);
// the whole text stays in the tooltip and in the accessible name.
function clipped(cls, text) {
  const s = el("span", `clip ${cls || ""}`.trim(), text);
  s.title = text;
  return s;
}

function cells(p) {
  const tds = [];
  const st = el("td");
  const badge = el("span", `badge ${p.state}`);
  badge.append(el("span", "i", ICON[p.state] || "?"), el("span", "t", p.state));
  badge.querySelector(".i").setAttribute("aria-hidden", "true");
  st.append(badge);
  if (p.stale) {
    const s = el("span", "stale", "since restart");
    s.title = "Restored from the store after a registry restart; not heard from since";
    st.append(s);
  }
  tds.push(st);
  const nm = el("td", "name mono"); nm.append(clipped("wide", p.name)); tds.push(nm);
  const k = el("td"); if (p.kind) k.append(clipped("kind", p.kind)); else k.append(el("span", "muted", "—")); tds.push(k);
  const h = el("td", "mono"); h.append(clipped("", p.port ? `${p.host}:${p.port}` : (p.host || p.ip || "—"))); tds.push(h);
  tds.push(el("td", "num mono", p.pid ?? "—"));
  const qv = el("td", "mono muted"); qv.append(clipped("narrow", p.qVersion || "—")); tds.push(qv);
  const a = el("td", "num mono age"); a.dataset.role = "age"; tds.push(a);
  const c = el("td", "num mono"); c.dataset.role = "counter"; tds.push(c);
  const s = el("td"); const sw = el("span", "status");
  sw.append(el("span", `s ${p.status}`, p.status));
  if (p.note) sw.append(el("span", "note", p.note));
  s.append(sw); tds.push(s);
  const at = el("td", "attrs");
  const entries = Object.entries(p.attrs || {});
  if (!entries.length) at.append(el("span", "muted", "—"));
  for (const [key, val] of entries) {
    const ch = el("span", "chip clip"); ch.title = `${key}=${val}`;
    ch.append(el("b", null, `${key}=`), document.createTextNode(val)); at.append(ch);
  }
  tds.push(at);
  return tds;
}

function updateRow(p) {
  const tr = view.rows.get(p.name);
  if (!tr) return;
  const a = tr.querySelector('[data-role="age"]');
  const ms = now() - p.lastBeat;
  a.textContent = age(ms);
  a.classList.toggle("old", p.state === "active" && ms > 10000);
  a.classList.toggle("dead", p.state === "error" || p.state === "disconnected");
  tr.querySelector('[data-role="counter"]').textContent = p.counter;
}

function render() {
  const all = [...view.procs.values()];
  const counts = { error: 0, disconnected: 0, warning: 0, starting: 0, active: 0 };
  for (const p of all) if (p.state in counts) counts[p.state]++;
  $("n-all").textContent = all.length;
  for (const s of STATES) {
    $(`n-${s}`).textContent = counts[s];
    document.querySelector(`.count[data-state="${s}"]`).classList.toggle("zero", counts[s] === 0);
  }
  fillSelect($("kind"), "All kinds", all.map((p) => p.kind).filter(Boolean), view.kind);
  fillSelect($("host"), "All hosts", all.map((p) => p.host).filter(Boolean), view.host);

  const shown = all.filter(matches).sort((x, y) =>
    (SEVERITY[x.state] ?? 9) - (SEVERITY[y.state] ?? 9) || x.name.localeCompare(y.name));
  const body = $("rows");
  const keep = new Set(shown.map((p) => p.name));
  for (const [name, tr] of view.rows) if (!keep.has(name)) { tr.remove(); view.rows.delete(name); }
  let before = null;
  for (let i = shown.length - 1; i >= 0; i--) {
    const p = shown[i];
    let tr = view.rows.get(p.name);
    const sig = JSON.stringify([p.state, p.kind, p.host, p.port, p.pid, p.qVersion, p.status, p.note, p.attrs, p.stale]);
    if (!tr || tr.dataset.sig !== sig) {
      const fresh = el("tr");
      fresh.dataset.name = p.name;
      fresh.dataset.state = p.state;
      fresh.dataset.sig = sig;
      fresh.append(...cells(p));
      if (tr) { if (tr.classList.contains("flash")) fresh.classList.add("flash"); tr.replaceWith(fresh); }
      tr = fresh;
      view.rows.set(p.name, tr);
    }
    if (tr.nextSibling !== before || tr.parentNode !== body) body.insertBefore(tr, before);
    updateRow(p);
    before = tr;
  }
  $("empty").hidden = shown.length > 0;
  $("empty").textContent = all.length ? "No process matches these filters."
    : view.snapshotted ? "No process has sent a heartbeat yet." : "Waiting for the registry's list of processes…";
  $("shown").textContent = shown.length === all.length ? `${all.length} shown.` : `${shown.length} of ${all.length} shown.`;
  view.dirty = false;
  view.rendered = performance.now();
}

function fillSelect(sel, label, values, current) {
  const want = [...new Set(values)].sort();
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (want.join("\u0000") === have.join("\u0000")) return;
  sel.replaceChildren(new Option(label, ""));
  for (const v of want) sel.append(new Option(v, v));
  sel.value = want.includes(current) ? current : "";
}

// Announce state changes politely, summarised, at most once a second.
function announceNow(text) { $("announce").textContent = text; }
function announce() {
  if (!view.pending.length) return;
  const items = view.pending.splice(0);
  let text;
  if (items.length <= 3) {
    text = items.map(([n, from, to]) => from === null ? `${n} appeared, ${to}.` :
      to === "removed" ? `${n} removed.` : `${n} is now ${to} (was ${from}).`).join(" ");
  } else {
    const by = {};
    for (const [, , to] of items) by[to] = (by[to] || 0) + 1;
    text = `${items.length} processes changed state: ` + Object.entries(by).map(([s, n]) => `${n} ${s}`).join(", ") + ".";
  }
  announceNow(text);
}

function tick() {
  if (view.dirty) render(); else for (const p of view.procs.values()) updateRow(p);
  $("clock").textContent = new Date(now()).toISOString().slice(11, 19) + " UTC";
  view.rendered = performance.now();
}

// ---- controls ----
function toggleState(btn) {
  const s = btn.dataset.state;
  if (view.states.has(s)) view.states.delete(s); else view.states.add(s);
  syncCounts(); view.dirty = true; render();
}
function syncCounts() {
  for (const b of document.querySelectorAll(".count[data-state]")) b.setAttribute("aria-pressed", String(view.states.has(b.dataset.state)));
  $("count-all").setAttribute("aria-pressed", String(view.states.size === 0));
}

function openChooser(open) {
  $("chooser").hidden = !open;
  $("sub-choose").setAttribute("aria-expanded", String(open));
  if (!open) return;
  // Every name the registry knows, not only those subscribed to now.
  fetch("/api/processes").then((r) => r.json()).then((j) => {
    const names = j.processes.map((p) => p.name).sort();
    const list = $("chooser-list");
    list.replaceChildren();
    for (const n of names) {
      const lab = el("label");
      const box = document.createElement("input");
      box.type = "checkbox"; box.value = n; box.checked = !!view.chosen && view.chosen.has(n);
      lab.title = n;
      lab.append(box, el("span", "clip", n));
      list.append(lab);
    }
    filterChooser();
    const first = list.querySelector("input");
    (first || $("chooser-filter")).focus();
  }).catch(() => announceNow("Could not list the registry's processes."));
}
function filterChooser() {
  const f = $("chooser-filter").value.trim().toLowerCase();
  for (const lab of $("chooser-list").children) lab.hidden = f && !lab.textContent.toLowerCase().includes(f);
}
function applySubscription(names) {
  view.chosen = names && names.size ? names : null;
  $("sub-all").setAttribute("aria-pressed", String(!view.chosen));
  $("sub-choose").setAttribute("aria-pressed", String(!!view.chosen));
  const note = $("sub-note");
  note.hidden = !view.chosen;
  note.replaceChildren();
  if (view.chosen) {
    note.append("Subscribed to ", el("strong", null, `${view.chosen.size} chosen service${view.chosen.size === 1 ? "" : "s"}`),
      `: ${[...view.chosen].slice(0, 8).join(", ")}${view.chosen.size > 8 ? ", …" : ""}.`);
  }
  // A new subscription starts from a fresh snapshot.
  view.seq = null;
  subscribe(true);
  announceNow(view.chosen ? `Subscribed to ${view.chosen.size} services.` : "Subscribed to all services.");
}

function init() {
  for (const b of document.querySelectorAll(".count[data-state]")) b.addEventListener("click", () => toggleState(b));
  $("count-all").addEventListener("click", () => { view.states.clear(); syncCounts(); view.dirty = true; render(); });
  $("search").addEventListener("input", (e) => { view.text = e.target.value.trim().toLowerCase(); view.dirty = true; render(); });
  $("kind").addEventListener("change", (e) => { view.kind = e.target.value; view.dirty = true; render(); });
  $("host").addEventListener("change", (e) => { view.host = e.target.value; view.dirty = true; render(); });
  $("sub-all").addEventListener("click", () => { openChooser(false); applySubscription(null); });
  $("sub-choose").addEventListener("click", () => openChooser($("chooser").hidden));
  $("chooser-filter").addEventListener("input", filterChooser);
  $("chooser-none").addEventListener("click", () => { for (const b of $("chooser-list").querySelectorAll("input")) b.checked = false; });
  $("chooser-cancel").addEventListener("click", () => { openChooser(false); $("sub-choose").focus(); });
  $("chooser-apply").addEventListener("click", () => {
    const names = new Set([...$("chooser-list").querySelectorAll("input:checked")].map((b) => b.value));
    openChooser(false);
    applySubscription(names);
    $("sub-choose").focus();
  });
  $("chooser").addEventListener("keydown", (e) => { if (e.key === "Escape") { openChooser(false); $("sub-choose").focus(); } });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement.tagName !== "INPUT") { e.preventDefault(); $("search").focus(); }
  });
  setInterval(tick, 250);
  setInterval(announce, 1000);
  connect();
}

document.addEventListener("DOMContentLoaded", init);
