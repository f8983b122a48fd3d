// The wasmesh dashboard: plain ES module, no build step. Pages are rendered from the
// JSON routes and kept live by the change feed (GET /compute/events), read with a
// fetch stream so the session cookie (or nothing, on an open server) authenticates it.
// Every text goes through textContent: nothing from the server becomes markup.

const main = document.getElementById("main");
const live = document.getElementById("live");

// ---- small helpers ---------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options, headers: { ...(options.headers || {}) } };
  if (init.body !== undefined && typeof init.body !== "string") {
    init.body = JSON.stringify(init.body);
    init.headers["content-type"] = "application/json";
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (response.status === 401) {
    askLogin();
    throw new ApiError(401, "unauthorized", "log in first");
  }
  if (!response.ok) {
    const e = (body && body.error) || {};
    throw new ApiError(response.status, e.code || "error", e.message || response.statusText);
  }
  return { status: response.status, body };
}

function ago(ms) {
  if (ms === null || ms === undefined) return h("span", { class: "muted" }, "–");
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const text = s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
  const at = new Date(ms);
  return h("time", { datetime: at.toISOString(), title: at.toLocaleString() }, text);
}

const short = (hash) => (hash ? String(hash).slice(0, 12) : "–");
const stateCell = (state) => h("span", { class: `state-${state}` }, state);
const link = (href, text) => h("a", { href, "data-nav": true }, text);

function table(headers, rows) {
  return h("div", { class: "scroll" },
    h("table", {},
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
}

function failure(e) {
  return h("p", { class: "error", role: "alert" }, `${e.code || "error"}: ${e.message}`);
}

// Calls `fn` at most once per `ms`, and once more after the last call.
function throttle(fn, ms) {
  let timer = null, again = false;
  return () => {
    if (timer) { again = true; return; }
    fn();
    timer = setTimeout(() => { timer = null; if (again) { again = false; fn(); } }, ms);
  };
}

// ---- who is looking --------------------------------------------------------------

const who = { tenant: null, role: null, serverRole: null };
const loginDialog = document.getElementById("login");

function askLogin() {
  if (!loginDialog.open) loginDialog.showModal();
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = document.getElementById("key");
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    await api("/ui/login", { method: "POST", body: { key: key.value } });
    key.value = "";
    loginDialog.close();
    await start();
  } catch (e) {
    error.textContent = e.status === 401 ? "That key is not valid here." : e.message;
  }
});

document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin" });
  location.reload();
});

async function whoami() {
  const { body } = await api("/ui/session");
  if (body.tenant === null) {
    askLogin();
    throw new ApiError(401, "unauthorized", "log in first");
  }
  who.tenant = body.tenant;
  who.role = body.role;
  const info = await api("/compute/sysinfo");
  who.serverRole = info.body.role;
  document.getElementById("who").textContent = `${body.tenant} (${body.role})`;
  document.getElementById("logout").hidden = !body.keys_required;
  const fleet = who.role === "operator" && who.serverRole === "coordinator";
  for (const a of document.querySelectorAll("[data-operator]")) a.hidden = !fleet;
  for (const a of document.querySelectorAll("[data-coordinator]")) a.hidden = who.serverRole !== "coordinator";
}

// ---- the change feed -------------------------------------------------------------

const feed = { lastId: null, pending: [], scheduled: false, listeners: new Set(), running: false, controller: null, received: 0 };
// Finished jobs per second over the last two minutes (for the Overview chart).
const rates = { seconds: [], window: 120 };

function countEnd(change) {
  if (change.kind !== "job" || !["succeeded", "failed", "cancelled"].includes(change.state)) return;
  const now = Math.floor(Date.now() / 1000);
  let last = rates.seconds[rates.seconds.length - 1];
  if (!last || last.t !== now) {
    last = { t: now, ok: 0, bad: 0 };
    rates.seconds.push(last);
    while (rates.seconds.length && rates.seconds[0].t <= now - rates.window) rates.seconds.shift();
  }
  if (change.state === "succeeded") last.ok += 1; else last.bad += 1;
}

function deliver(change) {
  countEnd(change);
  feed.pending.push(change);
  if (feed.scheduled) return;
  feed.scheduled = true;
  // Coalesced per frame: a burst of changes costs one pass over the page.
  requestAnimationFrame(() => {
    const batch = feed.pending;
    feed.pending = [];
    feed.scheduled = false;
    feed.received += batch.length;
    live.dataset.changes = String(feed.received);
    for (const listener of feed.listeners) listener(batch);
  });
}

async function follow() {
  if (feed.running) return;
  feed.running = true;
  let backoff = 500;
  while (true) {
    try {
      const headers = feed.lastId !== null ? { "Last-Event-ID": String(feed.lastId) } : {};
      feed.controller = new AbortController();
      const response = await fetch("/compute/events", { credentials: "same-origin", headers, signal: feed.controller.signal });
      if (response.status === 401) { askLogin(); break; }
      if (!response.ok || !response.body) throw new Error(`feed: ${response.status}`);
      live.textContent = "live";
      live.classList.add("on");
      backoff = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "", id = null, data = "";
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).replace(/\r$/, "");
          buffer = buffer.slice(newline + 1);
          if (line === "") {
            if (data) {
              if (id !== null) feed.lastId = id;
              const change = JSON.parse(data);
              if (change.kind === "reset") refresh();
              else if (change.kind !== "hello") deliver(change);
            }
            id = null; data = "";
          } else if (line.startsWith("id:")) id = line.slice(3).trim();
          else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
        }
      }
    } catch (e) {
      // Dropped: reconnect below with the last id seen, so nothing is missed.
    }
    if (feed.controller.signal.aborted) break;
    live.textContent = "reconnecting";
    live.classList.remove("on");
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
  feed.running = false;
}

// ---- pages -----------------------------------------------------------------------

let page = null; // { listener } of the page on screen

function show(title, ...content) {
  document.title = `${title} · wasmesh`;
  main.replaceChildren(h("h1", {}, title), ...content);
}

function onChanges(listener) {
  page.listener = listener;
  feed.listeners.add(listener);
}

function chart() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 120 40");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const draw = () => {
    const now = Math.floor(Date.now() / 1000);
    const by = new Map(rates.seconds.map((s) => [s.t, s]));
    const ok = [], bad = [];
    let max = 1;
    for (let i = 0; i < rates.window; i++) {
      const s = by.get(now - rates.window + 1 + i) || { ok: 0, bad: 0 };
      ok.push(s.ok); bad.push(s.bad);
      max = Math.max(max, s.ok, s.bad);
    }
    const line = (values, color) => {
      const p = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      p.setAttribute("fill", "none");
      p.setAttribute("stroke", color);
      p.setAttribute("stroke-width", "0.8");
      p.setAttribute("vector-effect", "non-scaling-stroke");
      p.setAttribute("points", values.map((v, i) => `${i},${40 - (v / max) * 38}`).join(" "));
      return p;
    };
    const total = ok.slice(-10).reduce((a, b) => a + b, 0) / 10;
    svg.setAttribute("aria-label", `finished jobs per second over two minutes; now about ${total.toFixed(1)} per second`);
    svg.replaceChildren(line(ok, "#166534"), line(bad, "#b91c1c"));
  };
  draw();
  return { svg, draw };
}

async function overview() {
  const cards = h("div", { class: "cards" });
  const rate = chart();
  const failures = h("div");
  show("Overview", cards, h("h2", {}, "Finished jobs per second (green) and failures (red), last two minutes"), rate.svg,
    h("h2", {}, "Recent failures"), failures);
  const card = (n, label, id) => h("div", { class: "card", "data-card": id }, h("div", { class: "n" }, n), h("div", { class: "label" }, label));
  const load = async () => {
    const info = (await api("/compute/sysinfo")).body;
    const items = [card(info.queued, "jobs queued", "queued"), card(info.running, "jobs running", "running"),
      card(`${info.running}/${info.slots}`, "slots used", "slots")];
    if (who.role === "operator" && who.serverRole === "coordinator") {
      const nodes = (await api("/api/v1/cluster/nodes")).body.nodes;
      const up = nodes.filter((n) => n.state !== "unhealthy").length;
      items.push(card(`${up}/${nodes.length}`, "nodes up", "nodes"));
    }
    cards.replaceChildren(...items);
  };
  const loadFailures = async () => {
    const jobs = (await api("/compute/jobs?state=failed&limit=10")).body.jobs;
    failures.replaceChildren(jobs.length ? table(["Job", "Outcome", "Node", "Submitted"], jobs.map((j) =>
      h("tr", {}, h("td", {}, link(`/ui/jobs/${j.lsn}`, `#${j.lsn}`)), h("td", {}, j.outcome || "–"), h("td", {}, j.node || "–"), h("td", {}, ago(j.created_ms)))))
      : h("p", { class: "muted" }, "No failed jobs."));
  };
  await Promise.all([load(), loadFailures()]);
  const again = throttle(() => load().catch(() => {}), 500);
  const againFailures = throttle(() => loadFailures().catch(() => {}), 1000);
  const tick = setInterval(rate.draw, 1000);
  page.stop = () => clearInterval(tick);
  onChanges((changes) => {
    again();
    rate.draw();
    if (changes.some((c) => c.kind === "job" && c.state === "failed")) againFailures();
  });
}

// The autoscaler's standing: what it wants, what there is, and why.
function autoscalerPanel(a) {
  const last = a.last;
  return h("section", { "aria-label": "autoscaler", class: "card", "data-autoscaler": a.provisioner },
    h("div", { class: "label" }, `Autoscaler (${a.provisioner})`),
    h("div", {}, "Wants ", h("strong", { "data-field": "desired" }, a.desired_nodes), ` node${a.desired_nodes === 1 ? "" : "s"}; `,
      h("strong", { "data-field": "current" }, a.current_nodes), " ready or starting",
      a.draining.length ? `, draining ${a.draining.join(" ")}` : "",
      ` · ${a.signal.queued_jobs} queued (${a.signal.queued_work_seconds.toFixed(1)} s of work), ${a.signal.running_jobs} running`),
    last ? h("div", { class: "muted" }, `${last.action}: ${last.reason} `, ago(last.at_ms)) : null,
    a.error ? h("div", { class: "error" }, a.error) : null);
}

async function nodes() {
  const body = h("div");
  show("Nodes", body);
  const load = async () => {
    const [list, scaler] = await Promise.all([
      api("/api/v1/cluster/nodes").then((r) => r.body.nodes),
      api("/api/v1/cluster/autoscaler").then((r) => r.body),
    ]);
    body.replaceChildren(autoscalerPanel(scaler), list.length ? table(["Node", "State", "Slots", "Running", "Leases", "Labels", "Last heartbeat", ""], list.map((n) =>
      h("tr", { "data-node": n.id },
        h("td", { class: "mono" }, link(`/ui/nodes/${encodeURIComponent(n.id)}`, n.id)), h("td", {}, stateCell(n.state)), h("td", {}, n.slots), h("td", {}, n.running),
        h("td", {}, n.leased ?? "–"), h("td", { class: "mono" }, Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "–"),
        h("td", {}, `${Math.round(n.last_heartbeat_ms_ago / 100) / 10} s ago`),
        h("td", {}, h("div", { class: "actions" },
          h("button", { type: "button", class: "secondary", onclick: () => act(`/api/v1/cluster/nodes/${encodeURIComponent(n.id)}/drain`, "POST", load) }, "Drain"),
          h("button", { type: "button", class: "secondary", onclick: () => act(`/api/v1/cluster/nodes/${encodeURIComponent(n.id)}`, "DELETE", load) }, "Deregister"))))))
      : h("p", { class: "muted" }, "No nodes registered."));
  };
  await load();
  const again = throttle(() => load().catch(() => {}), 500);
  const tick = setInterval(again, 2000); // heartbeat ages move without a change
  page.stop = () => clearInterval(tick);
  onChanges(again);
}

// One node: its state, and its recent jobs with why each was placed there.
async function nodePage(id) {
  const details = h("div");
  const recent = h("div");
  show(`Node ${id}`, details, h("h2", {}, "Recent jobs, and why they were placed here"), recent);
  const load = async () => {
    const n = (await api(`/api/v1/cluster/nodes/${encodeURIComponent(id)}`)).body;
    details.replaceChildren(h("dl", { class: "kv" }, [
      ["State", stateCell(n.state)], ["Address", h("code", {}, n.address)], ["Slots", n.slots], ["Running", n.running],
      ["Leases", n.leased ?? "–"], ["Failure rate", n.failure_rate ?? "–"], ["Modules cached", n.modules ?? "–"],
      ["Labels", Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "–"],
      ["Last heartbeat", `${Math.round(n.last_heartbeat_ms_ago / 100) / 10} s ago`],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    const jobs = (await api(`/compute/jobs?node=${encodeURIComponent(id)}&limit=20`)).body.jobs;
    const why = (p) => (p && p.factors ? Object.entries(p.factors).map(([k, v]) => `${k} ${v}`).join(", ") : "–");
    recent.replaceChildren(jobs.length ? table(["Job", "Tenant", "State", "Outcome", "Score", "Factors", "Submitted"], jobs.map((j) =>
      h("tr", {}, h("td", {}, link(`/ui/jobs/${j.lsn}`, `#${j.lsn}`)), h("td", {}, j.tenant), h("td", {}, stateCell(j.state)), h("td", {}, j.outcome || "–"),
        h("td", {}, j.placement ? j.placement.score : "–"), h("td", { class: "mono" }, why(j.placement)), h("td", {}, ago(j.created_ms)))))
      : h("p", { class: "muted" }, "No jobs ran here yet."));
  };
  await load();
  const again = throttle(() => load().catch(() => {}), 1000);
  onChanges((changes) => { if (changes.some((c) => c.node === id)) again(); });
}

async function act(path, method, then, body) {
  try {
    await api(path, { method, body });
    await then();
  } catch (e) {
    main.prepend(failure(e));
  }
}

async function queues() {
  const body = h("div");
  show("Queues", body);
  const load = async () => {
    const list = (await api("/compute/queues?limit=200")).body.queues;
    body.replaceChildren(list.length ? table(["Queue", "Name", "State", "Queued", "Running", "Succeeded", "Failed", "Progress", "Oldest waiting", ""], list.map((q) => {
      const c = q.counts, total = c.queued + c.running + c.succeeded + c.failed + c.cancelled;
      const done = total ? Math.round(((c.succeeded + c.failed + c.cancelled) / total) * 100) : 0;
      return h("tr", { "data-queue": q.queue_id },
        h("td", {}, link(`/ui/jobs?queue=${q.queue_id}`, `#${q.queue_id}`)), h("td", {}, q.name || "–"), h("td", {}, stateCell(q.state)),
        h("td", { "data-count": "queued" }, c.queued), h("td", {}, c.running), h("td", { "data-count": "succeeded" }, c.succeeded), h("td", {}, c.failed),
        h("td", {}, h("div", { class: "bar", role: "progressbar", "aria-valuenow": done, "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": `${done}% finished` }, bar(done))),
        h("td", {}, ago(q.oldest_queued_ms)),
        h("td", {}, q.state === "active" ? h("div", { class: "actions" },
          h("button", { type: "button", class: "secondary", onclick: () => act(`/compute/queues/${q.queue_id}/drain`, "POST", load) }, "Drain"),
          h("button", { type: "button", class: "secondary", onclick: () => act(`/compute/queues/${q.queue_id}`, "DELETE", load) }, "Cancel")) : ""));
    })) : h("p", { class: "muted" }, "No queues."));
  };
  await load();
  const again = throttle(() => load().catch(() => {}), 500);
  onChanges((changes) => { if (changes.some((c) => c.kind === "job" || c.kind === "queue")) again(); });
}

// A progress bar's fill, sized through the CSSOM (the page's CSP allows no inline styles).
function bar(percent) {
  const fill = h("span");
  fill.style.width = `${percent}%`;
  return fill;
}

const FILTERS = ["state", "queue", "worker", "outcome"];

// Rows the Jobs page keeps while new jobs arrive.
const MAX_ROWS = 500;

function jobRow(j) {
  return h("tr", { "data-lsn": j.lsn },
    h("td", {}, link(`/ui/jobs/${j.lsn}`, `#${j.lsn}`)), h("td", { "data-field": "state" }, stateCell(j.state)),
    h("td", {}, j.queue_id ?? "–"), h("td", { class: "mono" }, short(j.worker)), h("td", { class: "mono", "data-field": "node" }, j.node || "–"),
    h("td", { "data-field": "attempts" }, j.attempts), h("td", { "data-field": "outcome" }, j.outcome || "–"), h("td", {}, ago(j.created_ms)));
}

async function jobs() {
  const params = new URLSearchParams(location.search);
  const form = h("form", { class: "filters", role: "search" },
    h("label", {}, "State", h("select", { name: "state" }, ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) =>
      h("option", { value: s, selected: params.get("state") === s }, s || "any")))),
    h("label", {}, "Queue", h("input", { name: "queue", inputmode: "numeric", size: 6, value: params.get("queue") || "" })),
    h("label", {}, "Worker", h("input", { name: "worker", size: 20, value: params.get("worker") || "" })),
    h("label", {}, "Outcome", h("input", { name: "outcome", size: 12, value: params.get("outcome") || "" })),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    for (const name of FILTERS) { const v = form.elements[name].value.trim(); if (v) q.set(name, v); }
    navigate(`/ui/jobs${q.toString() ? `?${q}` : ""}`);
  });
  const tbody = h("tbody");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const status = h("p", { class: "muted", role: "status" });
  show("Jobs", form, h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, ["Job", "State", "Queue", "Worker", "Node", "Attempts", "Outcome", "Submitted"].map((t) => h("th", { scope: "col" }, t)))),
    tbody)), status, more);
  const query = new URLSearchParams();
  for (const name of FILTERS) if (params.get(name)) query.set(name, params.get(name));
  let next = null;
  const load = async () => {
    const q = new URLSearchParams(query);
    q.set("limit", "50");
    if (next !== null) q.set("before", next);
    const got = (await api(`/compute/jobs?${q}`)).body;
    tbody.append(...got.jobs.map(jobRow));
    next = got.next;
    more.hidden = next === null;
    status.textContent = tbody.children.length ? "" : next === null ? "No jobs." : "None in the latest jobs looked at; load more to look further.";
  };
  more.addEventListener("click", () => load().catch((e) => main.append(failure(e))));
  await load();
  const matches = (c) => (!query.get("queue") || String(c.queue_id) === query.get("queue"))
    && (!query.get("worker") || c.worker === query.get("worker"))
    && (!query.get("state") || c.state === query.get("state"))
    && (!query.get("outcome") || c.outcome === query.get("outcome"));
  onChanges((changes) => {
    for (const c of changes) {
      if (c.kind !== "job") continue;
      const row = tbody.querySelector(`tr[data-lsn="${c.lsn}"]`);
      if (row) {
        row.querySelector('[data-field="state"]').replaceChildren(stateCell(c.state));
        if (c.node) row.querySelector('[data-field="node"]').textContent = c.node;
        if (c.attempts !== undefined) row.querySelector('[data-field="attempts"]').textContent = c.attempts;
        if (c.outcome) row.querySelector('[data-field="outcome"]').textContent = c.outcome;
      } else if (matches(c)) {
        const top = tbody.firstElementChild;
        if (!top || Number(top.dataset.lsn) < c.lsn) {
          tbody.prepend(jobRow({ ...c, created_ms: Date.now() }));
          status.textContent = "";
          // A busy server must not grow the page without bound: the oldest rows go
          // (they are one "Load more" away).
          while (tbody.children.length > MAX_ROWS) {
            tbody.lastElementChild.remove();
            next = Number(tbody.lastElementChild.dataset.lsn);
            more.hidden = false;
          }
        }
      }
    }
  });
}

// A run's length, from two Unix-ms times.
function took(from, to) {
  if (from === null || from === undefined || to === null || to === undefined) return "–";
  const ms = Math.max(0, to - from);
  return ms < 1000 ? `${ms} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 60000)} min`;
}

// Links to jobs by LSN, or a dash.
const jobLinks = (lsns) => (lsns && lsns.length ? lsns.flatMap((l, i) => [i ? " " : "", link(`/ui/jobs/${l}`, `#${l}`)]) : "–");

// The first 4 KiB of a blob as text, or why it cannot be shown.
async function previewOf(hash, size) {
  const out = await fetch(`/cas/${hash}`, { credentials: "same-origin" });
  if (!out.ok) return out.status === 404 ? "(the output's bytes are its tenant's to read)" : `(${out.status})`;
  const text = await out.text();
  return text.length > 4096 ? `${text.slice(0, 4096)}\n… (${size ?? text.length} bytes in all)` : text || "(empty)";
}

function attemptsTable(history, fleet) {
  if (!history.length) return h("p", { class: "muted" }, "No attempt started (queued, cancelled or answered from the cache).");
  return table(["Attempt", "Node", "Started", "Took", "Outcome", "Exit", "Message", "Then"], history.map((a) =>
    h("tr", { "data-attempt": a.attempt },
      h("td", {}, a.attempt), h("td", { class: "mono" }, fleet ? link(`/ui/nodes/${encodeURIComponent(a.node)}`, a.node) : a.node),
      h("td", {}, ago(a.started_ms)), h("td", {}, a.ended_ms === null ? "running" : took(a.started_ms, a.ended_ms)),
      h("td", {}, a.outcome || "–"), h("td", {}, a.exit_code ?? "–"), h("td", {}, a.message || "–"),
      h("td", {}, a.ended_ms === null ? "–" : a.retried ? "retried" : "final"))));
}

async function job(lsn) {
  const body = h("div");
  show(`Job #${lsn}`, body);
  const load = async () => {
    const [{ status, body: r }, { body: d }] = await Promise.all([api(`/compute/jobs/${lsn}`), api(`/compute/jobs/${lsn}/details`)]);
    const fleet = who.role === "operator" && who.serverRole === "coordinator";
    const done = status === 200;
    const rows = [["State", stateCell(d.state)]];
    if (who.role === "operator") rows.push(["Tenant", d.tenant]);
    rows.push(["Queue", d.queue_id === null ? "–" : link(`/ui/jobs?queue=${d.queue_id}`, `#${d.queue_id}`)],
      ["Priority", d.priority], ["Attempts", `${d.attempts} of ${d.max_retries + 1}`],
      ["Submitted", ago(d.created_ms)], ["Finished", ago(d.finished_ms)],
      ["Worker", link(`/ui/jobs?worker=${d.worker}`, h("code", {}, d.worker))], ["Action", h("code", {}, d.action)],
      ["Depends on", jobLinks(d.after)], ["Dependents", jobLinks(d.dependents)],
      ["Checkpoint", d.checkpoint ? h("code", { title: "the next attempt resumes from it" }, d.checkpoint) : "–"]);
    if (done) {
      rows.push(["Outcome", r.outcome], ["Exit code", r.exit_code ?? "–"], ["Message", r.message || "–"], ["Node", r.node || "–"],
        ["Cached", r.cached ? "yes" : "no"],
        ["Output", h("a", { href: `/cas/${r.output}`, download: `job-${lsn}.out` }, `${r.output_size} bytes`)],
        ["Stderr", h("a", { href: `/cas/${r.stderr}`, download: `job-${lsn}.err` }, "download")]);
      if (r.usage) rows.push(["Usage", h("code", {}, JSON.stringify(r.usage))]);
      if (r.timing) rows.push(["Timing", h("span", { title: JSON.stringify(r.timing) }, took(r.timing.started_ms, r.timing.finished_ms))]);
      if (r.placement) rows.push(["Placement", h("code", {}, JSON.stringify(r.placement))]);
      if (r.events && r.events.length) rows.push(["Events", h("code", {}, JSON.stringify(r.events))]);
    } else if (d.node) {
      rows.push(["Node", d.node]);
    }
    const actions = h("div", { class: "actions" },
      status === 202 ? h("button", { type: "button", onclick: () => act(`/compute/jobs/${lsn}/cancel`, "POST", load) }, "Cancel") : null,
      done && ["failed", "cancelled"].includes(r.state) ? h("button", { type: "button", onclick: () => act(`/compute/jobs/${lsn}/reschedule`, "POST", load) }, "Reschedule") : null,
      d.state === "queued" ? h("button", { type: "button", class: "secondary", onclick: () => {
        const p = prompt("New priority (-1000 to 1000)", "0");
        if (p !== null) act(`/compute/jobs/${lsn}/priority`, "POST", load, { priority: Number(p) });
      } }, "Priority") : null);
    const kv = h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const preview = h("pre", { "aria-label": "stdout preview" }, done ? "…" : "(not finished)");
    const stderr = h("pre", { "aria-label": "stderr preview" }, done ? "…" : "(not finished)");
    body.replaceChildren(kv, actions,
      h("h2", {}, "Attempts"), attemptsTable(d.history, fleet),
      h("h2", {}, "Output"), preview, h("h2", {}, "Stderr"), stderr,
      h("h2", {}, "Descriptor"), h("pre", { "aria-label": "action descriptor" }, JSON.stringify(d.descriptor, null, 2)));
    if (done) {
      const [out, err] = await Promise.all([previewOf(r.output, r.output_size), previewOf(r.stderr)]);
      preview.textContent = out;
      stderr.textContent = err;
    }
  };
  try {
    await load();
  } catch (e) {
    if (e.status === 404 && who.role === "operator") {
      body.replaceChildren(h("p", {}, "This job is another tenant's: its details and output are that tenant's to see."));
      return;
    }
    throw e;
  }
  const again = throttle(() => load().catch(() => {}), 300);
  onChanges((changes) => { if (changes.some((c) => c.kind === "job" && c.lsn === lsn)) again(); });
}


async function workers() {
  const body = h("div");
  show("Workers", body);
  const list = (await api("/compute/workers")).body.workers;
  body.replaceChildren(list.length ? table(["Worker", "Name", "Version", ""], list.slice().reverse().map((w) =>
    h("tr", {}, h("td", { class: "mono" }, short(w.worker)), h("td", {}, w.name), h("td", {}, w.version || "–"),
      h("td", {}, link(`/ui/jobs?worker=${w.worker}`, "jobs")))))
    : h("p", { class: "muted" }, "No workers registered."));
}

async function webhooks() {
  const body = h("div");
  const log = h("div");
  show("Webhooks", body, log);
  const deliveries = async (hook) => {
    const got = (await api(`/api/v1/webhooks/${encodeURIComponent(hook.id)}/deliveries?limit=50`)).body.deliveries;
    log.replaceChildren(h("h2", {}, `Deliveries to ${hook.url}`), got.length ? table(["Delivery", "Event", "State", "Attempts", "Last status", "Last error", "Created"], got.map((d) =>
      h("tr", {}, h("td", { class: "mono" }, d.id), h("td", {}, d.event), h("td", {}, stateCell(d.state)), h("td", {}, d.attempts),
        h("td", {}, d.last_status ?? "–"), h("td", {}, d.last_error || "–"), h("td", {}, ago(d.created_ms)))))
      : h("p", { class: "muted" }, "No deliveries yet."));
  };
  const list = (await api("/api/v1/webhooks")).body.webhooks;
  body.replaceChildren(list.length ? table(["Webhook", "URL", "Events", "State", "Failures", "Created", ""], list.map((w) =>
    h("tr", {}, h("td", { class: "mono" }, w.id), h("td", { class: "mono" }, w.url), h("td", {}, w.events.join(", ")), h("td", {}, stateCell(w.state)),
      h("td", {}, w.failures), h("td", {}, ago(w.created_ms)),
      h("td", {}, h("button", { type: "button", class: "secondary", onclick: () => deliveries(w).catch((e) => log.replaceChildren(failure(e))) }, "Deliveries")))))
    : h("p", { class: "muted" }, "No webhooks."));
}

async function usage() {
  const params = new URLSearchParams(location.search);
  const by = ["tenant", "worker", "queue"].includes(params.get("by")) ? params.get("by") : "tenant";
  const body = h("div");
  show("Usage", h("p", {}, "Grouped by ", ["tenant", "worker", "queue"].map((b) => [b === by ? h("strong", {}, b) : link(`/ui/usage?by=${b}`, b), " "])), body);
  const got = (await api(`/compute/usage?by=${by}`)).body;
  const key = (u) => (by === "worker" ? short(u.worker) : by === "queue" ? (u.queue_id ?? "–") : u.tenant);
  body.replaceChildren(got.usage.length ? table([by, "Jobs", "Fuel", "Wall time", "Memory (byte-seconds)", "Cost"], got.usage.map((u) =>
    h("tr", {}, h("td", { class: "mono" }, key(u)), h("td", {}, u.jobs), h("td", {}, u.fuel.toLocaleString()), h("td", {}, `${(u.wall_ms / 1000).toFixed(1)} s`),
      h("td", {}, u.memory_byte_seconds.toLocaleString()), h("td", {}, u.cost ?? "–"))))
    : h("p", { class: "muted" }, "No usage recorded in this period."));
}

// A group's routing drawn as a graph: handlers as boxes in columns by their distance
// from external events, routes as arrows labelled with their event patterns.
function groupGraph(group) {
  const NS = "http://www.w3.org/2000/svg";
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const names = ["_external", ...group.handlers.map((x) => x.name)];
  const depth = new Map([["_external", 0]]);
  for (let pass = 0; pass < names.length; pass++) {
    for (const r of group.routes) {
      if (depth.has(r.from) && (!depth.has(r.to) || depth.get(r.to) > depth.get(r.from) + 1)) depth.set(r.to, depth.get(r.from) + 1);
    }
  }
  for (const n of names) if (!depth.has(n)) depth.set(n, 1);
  const columns = new Map();
  for (const n of names) { const d = depth.get(n); columns.set(d, [...(columns.get(d) || []), n]); }
  const W = 170, H = 54, GX = 90, GY = 30;
  const at = new Map();
  for (const [d, col] of columns) col.forEach((n, i) => at.set(n, { x: 10 + d * (W + GX), y: 10 + i * (H + GY) }));
  const width = 20 + (Math.max(...columns.keys()) + 1) * (W + GX);
  const height = 20 + Math.max(...[...columns.values()].map((c) => c.length)) * (H + GY);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `routing of group ${group.name}` });
  const defs = el("defs", {});
  const marker = el("marker", { id: `arrow-${group.id}`, viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse" });
  marker.append(el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#374151" }));
  defs.append(marker);
  svg.append(defs);
  const placement = new Map((group.placements || []).map((p) => [p.handler, p.node]));
  for (const r of group.routes) {
    const a = at.get(r.from), b = at.get(r.to);
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    svg.append(el("line", { x1, y1, x2, y2, stroke: "#374151", "marker-end": `url(#arrow-${group.id})` }));
    svg.append(el("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle", "font-size": "11", fill: "#1f2937" }, r.event_types.join(", ")));
  }
  for (const n of names) {
    const { x, y } = at.get(n);
    const handler = group.handlers.find((x2) => x2.name === n);
    svg.append(el("rect", { x, y, width: W, height: H, rx: "6", fill: n === "_external" ? "#e5e7eb" : "#fff", stroke: "#6b7280" }));
    svg.append(el("text", { x: x + 8, y: y + 20, "font-size": "13", "font-weight": "600", fill: "#111827" }, n === "_external" ? "external events" : n));
    if (handler) svg.append(el("text", { x: x + 8, y: y + 40, "font-size": "11", fill: "#4b5563" }, `${short(handler.worker)} on ${placement.get(n) || "?"}`));
  }
  return h("div", { class: "scroll" }, svg);
}

async function groups() {
  const body = h("div");
  show("Handler groups", body);
  const topology = (await api("/api/v1/cluster/topology")).body;
  const list = topology.groups || [];
  body.replaceChildren(...(list.length ? list.map((g) => h("section", {}, h("h2", {}, `${g.name} `, h("span", { class: "muted mono" }, g.id)), groupGraph(g)))
    : [h("p", { class: "muted" }, "No handler groups.")]));
}

// ---- routing ---------------------------------------------------------------------

function route(path) {
  if (path === "/ui" || path === "/ui/") return overview;
  if (path === "/ui/nodes") return nodes;
  if (path === "/ui/queues") return queues;
  if (path === "/ui/jobs") return jobs;
  if (path === "/ui/workers") return workers;
  const node = path.match(/^\/ui\/nodes\/([^/]+)$/);
  if (node) return () => nodePage(decodeURIComponent(node[1]));
  if (path === "/ui/groups") return groups;
  if (path === "/ui/webhooks") return webhooks;
  if (path === "/ui/usage") return usage;
  const m = path.match(/^\/ui\/jobs\/(\d+)$/);
  if (m) return () => job(Number(m[1]));
  return async () => show("Not found", h("p", {}, "No such page. "), link("/ui", "Overview"));
}

async function render() {
  if (page) {
    feed.listeners.delete(page.listener);
    if (page.stop) page.stop();
  }
  page = { listener: null };
  for (const a of document.querySelectorAll("nav a")) {
    const href = a.getAttribute("href");
    const current = href === "/ui" ? location.pathname === "/ui" || location.pathname === "/ui/" : location.pathname.startsWith(href);
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  try {
    await route(location.pathname)();
  } catch (e) {
    if (e.status !== 401) main.replaceChildren(failure(e));
  }
}

const refresh = () => render();

function navigate(href) {
  history.pushState(null, "", href);
  render();
  main.focus();
}

document.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-nav]");
  if (!a || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", render);
// A page left for another keeps no stream open: browsers allow six connections to a
// server, and a page kept in the back-forward cache would hold its stream's. Back on
// the page, the feed resumes after the last change it saw.
window.addEventListener("pagehide", () => { if (feed.controller) feed.controller.abort(); });
window.addEventListener("pageshow", (event) => { if (event.persisted) { follow(); render(); } });

async function start() {
  try {
    await whoami();
  } catch (e) {
    if (e.status === 401) return; // the login dialog is open
    main.replaceChildren(failure(e));
    return;
  }
  follow();
  await render();
}

start();
