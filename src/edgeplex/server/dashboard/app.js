// edgeplex dashboard: polls /v2/edgeplex/dashboard every second (fronts less often) and draws
// with plotly.js. Rates are computed here from successive counters; no build step, no framework.
"use strict";

const POLL_MS = 1000;
const FRONTS_MS = 10000;
const HISTORY = 180; // points kept per series (3 minutes at one per second)
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac"];
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

const state = {
  previous: null, // the last snapshot, for rates
  updates: 0,
  colors: new Map(),
  history: { t: [], models: new Map(), pools: new Map() },
  lastDecisionAt: null,
  frontsAt: 0,
};

// -- small helpers ---------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function colorOf(model) {
  if (!state.colors.has(model)) state.colors.set(model, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(model);
}

const fmtInt = (n) => Number(n).toLocaleString("en-US");
const fmtMB = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;
const fmtMs = (ms) => (ms === null || ms === undefined ? "–" : ms.toFixed(2));
const fmtRate = (r) => (r === null || r === undefined ? "–" : r.toFixed(1));
const fmtTime = (epoch) => new Date(epoch * 1000).toLocaleTimeString("en-GB");

function baseLayout(extra = {}) {
  return {
    margin: { l: 48, r: 12, t: 8, b: 36 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#374151" },
    xaxis: { gridcolor: "#eceef2", zeroline: false, type: "date", tickformat: "%H:%M:%S" },
    yaxis: { gridcolor: "#eceef2", zeroline: false, rangemode: "tozero" },
    legend: { orientation: "h", y: -0.18, x: 0 },
    showlegend: true,
    ...extra,
  };
}

const hasPlotly = () => typeof window.Plotly !== "undefined";

// -- the API key (when the server requires one) ------------------------------------------------
// Taken from the page's address (#key=...) into this tab's sessionStorage, or asked for once
// when the server answers 401; sent as x-api-key with every data request.
const KEY_ITEM = "edgeplex-api-key";
const fromHash = new URLSearchParams(window.location.hash.slice(1)).get("key");
if (fromHash) {
  sessionStorage.setItem(KEY_ITEM, fromHash);
  history.replaceState(null, "", window.location.pathname);
}
let askedForKey = false;

async function api(path) {
  const key = sessionStorage.getItem(KEY_ITEM);
  const response = await fetch(path, { cache: "no-store", headers: key ? { "x-api-key": key } : {} });
  if (response.status === 401 && !askedForKey) {
    askedForKey = true;
    const entered = window.prompt("This edgeplex server requires an API key:");
    if (entered) {
      sessionStorage.setItem(KEY_ITEM, entered.trim());
      askedForKey = false;
    }
  }
  return response;
}

// -- one poll ----------------------------------------------------------------------------------
async function poll() {
  try {
    const response = await api("v2/edgeplex/dashboard");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const snapshot = await response.json();
    render(snapshot);
    state.previous = snapshot;
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
    $("status").className = "status live";
    $("status").textContent = `live · updated ${fmtTime(snapshot.time)}`;
    const newest = snapshot.decisions.length ? snapshot.decisions[0].at : null;
    if (newest !== state.lastDecisionAt || Date.now() - state.frontsAt > FRONTS_MS) {
      state.lastDecisionAt = newest;
      state.frontsAt = Date.now();
      pollFronts();
    }
  } catch (error) {
    $("status").className = "status offline";
    $("status").textContent = `offline (${error.message}) · retrying`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function rates(snapshot) {
  // model -> requests/s and processor -> utilisation (%) since the previous snapshot
  const prev = state.previous;
  const out = { models: new Map(), pools: new Map() };
  if (!prev) return out;
  const dt = snapshot.clock - prev.clock;
  if (dt <= 0) return out;
  const before = new Map(prev.models.map((m) => [m.model, m]));
  for (const m of snapshot.models) {
    const old = before.get(m.model);
    if (old) out.models.set(m.model, Math.max(0, (m.requests - old.requests) / dt));
  }
  const poolsBefore = new Map(prev.pools.map((p) => [p.processor, p]));
  for (const p of snapshot.pools) {
    const old = poolsBefore.get(p.processor);
    if (old) out.pools.set(p.processor, Math.min(100, (100 * (p.busy_seconds - old.busy_seconds)) / (p.capacity * dt)));
  }
  return out;
}

function render(snapshot) {
  const r = rates(snapshot);
  for (const m of snapshot.models) colorOf(m.model);
  $("cores").textContent = `${snapshot.cores} cores`;
  if (snapshot.models.length) $("latency-window").textContent = String(snapshot.models[0].latency.window_s);
  renderCards(snapshot, r);
  renderModels(snapshot, r);
  renderDecisions(snapshot.decisions);
  record(snapshot, r);
  renderCharts();
}

// -- cards ---------------------------------------------------------------------------------------
function renderCards(snapshot, r) {
  const total = [...r.models.values()].reduce((a, b) => a + b, 0);
  $("total-throughput").textContent = state.previous ? total.toFixed(1) : "–";
  const ready = snapshot.models.filter((m) => m.state === "READY").length;
  const others = snapshot.models.length - ready;
  $("model-count").textContent = `${ready} model${ready === 1 ? "" : "s"} ready` + (others ? `, ${others} not` : "");

  const { used, budget } = snapshot.memory;
  const usedEl = $("memory-used");
  usedEl.textContent = fmtMB(used);
  usedEl.dataset.bytes = String(used);
  const budgetEl = $("memory-budget");
  budgetEl.dataset.bytes = budget === null ? "" : String(budget);
  budgetEl.textContent = budget === null
    ? "used by the models (no --memory-budget)"
    : `of ${fmtMB(budget)} budget (${((100 * used) / budget).toFixed(0)}%)`;
  const scale = budget === null ? Math.max(used, 1) : budget;
  const bar = $("memory-bar");
  bar.replaceChildren(...snapshot.models.filter((m) => m.memory_bytes > 0).map((m) =>
    el("div", { title: `${m.model}: ${fmtMB(m.memory_bytes)}`,
                style: `width:${(100 * m.memory_bytes) / scale}%;background:${colorOf(m.model)}` })));
  let legend = bar.nextElementSibling;
  if (!legend || !legend.classList.contains("bar-legend")) {
    legend = el("div", { class: "bar-legend" });
    bar.after(legend);
  }
  legend.replaceChildren(...snapshot.models.filter((m) => m.memory_bytes > 0).map((m) =>
    el("span", {}, el("span", { class: "dot", style: `background:${colorOf(m.model)}` }), `${m.model} ${fmtMB(m.memory_bytes)}`)));

  $("pools").replaceChildren(...snapshot.pools.map((p) => {
    const util = r.pools.get(p.processor);
    return el("div", { class: "pool", "data-processor": p.processor },
      el("span", { class: "pool-name", title: `${p.kind ?? ""} · models: ${(p.models ?? []).join(", ") || "none"}` },
        p.processor),
      el("div", { class: "pool-bar" }, el("div", { class: "busy", style: `width:${util ?? 0}%` })),
      el("span", { class: "pool-text", "data-field": "pool" },
        `${util === undefined ? "–" : util.toFixed(0)}% busy · ${p.in_use}/${p.capacity} tokens in use · ${p.waiting} waiting`
        + ((p.models ?? []).length ? ` · ${p.models.join(", ")}` : "")));
  }));
}

// -- the models table ------------------------------------------------------------------------
function renderModels(snapshot, r) {
  const rows = snapshot.models.map((m) => {
    const groups = m.groups.length ? m.groups : [null];
    const g = (key) => groups.map((group) => (group ? String(group[key]) : "–")).join("\n");
    const stateCell = el("td", { "data-field": "state" }, el("span", { class: `state ${m.state}` }, m.state));
    if (m.state !== "READY" && m.reason_unavailable) {
      stateCell.append(el("span", { class: "state-reason", title: m.reason_unavailable }, truncate(m.reason_unavailable, 90)));
    }
    const cell = (field, text, num = false) => el("td", { "data-field": field, class: num ? "num" : "" }, text);
    const rate = r.models.get(m.model);
    return el("tr", { "data-model": m.model },
      el("td", { "data-field": "model" }, el("span", { class: "dot", style: `background:${colorOf(m.model)}` }), m.model),
      stateCell,
      cell("backend", g("backend")),
      cell("processor", g("processor")),
      cell("variant", g("variant")),
      cell("threads", g("threads"), true),
      cell("instances", g("instances"), true),
      cell("max_batch", g("max_batch"), true),
      cell("memory", m.memory_bytes ? fmtMB(m.memory_bytes) : "–", true),
      cell("requests", fmtInt(m.requests), true),
      cell("throughput", fmtRate(rate), true),
      cell("p50", fmtMs(m.latency.p50_ms), true),
      cell("p99", fmtMs(m.latency.p99_ms), true),
      cell("queue", String(m.queue), true),
      cell("capacity", m.estimated_capacity ? m.estimated_capacity.toFixed(0) : "–", true),
      cell("slowdown", m.state === "READY" ? m.observed_slowdown.toFixed(2) : "–", true),
      whyCell(m.explanation));
  });
  for (const row of rows) {
    for (const td of row.children) {
      if (td.textContent.includes("\n")) td.style.whiteSpace = "pre";
    }
  }
  document.querySelector("#models tbody").replaceChildren(...rows);
}

// Why the model runs as it does: the summary, with the full explanation on hover.
function whyCell(why) {
  if (!why) return el("td", { "data-field": "why" }, "–");
  const rejected = (why.rejected ?? []).map((r) => `  ${r.config}: ${r.reason}`).join("\n");
  const title = [why.summary, why.bound?.length ? `bound by the config: ${why.bound.join(", ")}` : "",
    rejected ? `not chosen:\n${rejected}` : "", why.would_change ? `would change: ${why.would_change}` : ""]
    .filter(Boolean).join("\n");
  return el("td", { "data-field": "why", class: "reason", title }, truncate(why.summary, 90));
}

function truncate(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

// -- decisions -------------------------------------------------------------------------------
function renderDecisions(decisions) {
  const rows = decisions.map((d) => el("tr", { "data-model": d.model },
    el("td", { class: "when" }, fmtTime(d.at)),
    el("td", {}, el("span", { class: "dot", style: `background:${colorOf(d.model)}` }), d.model),
    el("td", { "data-field": "placement" }, d.placement),
    el("td", { class: "reason", "data-field": "reason" }, d.reason || "–")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 4, class: "hint" }, "no placement decisions yet")));
  document.querySelector("#decisions tbody").replaceChildren(...rows);
}

// -- time series -----------------------------------------------------------------------------
function record(snapshot, r) {
  if (!state.previous) return; // rates need two snapshots
  const h = state.history;
  h.t.push(new Date(snapshot.time * 1000));
  const n = h.t.length;
  for (const m of snapshot.models) {
    if (!h.models.has(m.model) && (m.state === "READY" || m.requests > 0)) {
      h.models.set(m.model, { rate: new Array(n - 1).fill(null), p50: new Array(n - 1).fill(null),
                              p99: new Array(n - 1).fill(null), queue: new Array(n - 1).fill(null) });
    }
  }
  const seen = new Map(snapshot.models.map((m) => [m.model, m]));
  for (const [name, series] of h.models) {
    const m = seen.get(name);
    series.rate.push(m ? r.models.get(name) ?? null : null);
    series.p50.push(m ? m.latency.p50_ms : null);
    series.p99.push(m ? m.latency.p99_ms : null);
    series.queue.push(m ? m.queue : null);
  }
  for (const p of snapshot.pools) {
    if (!h.pools.has(p.processor)) h.pools.set(p.processor, new Array(n - 1).fill(null));
  }
  for (const [name, series] of h.pools) series.push(r.pools.get(name) ?? null);
  if (n > HISTORY) {
    h.t.shift();
    for (const series of h.models.values()) for (const key of Object.keys(series)) series[key].shift();
    for (const series of h.pools.values()) series.shift();
  }
}

function renderCharts() {
  if (!hasPlotly()) {
    for (const id of ["chart-throughput", "chart-latency", "chart-queue", "chart-pools"]) {
      $(id).textContent = "charts unavailable: the plotly package is not installed on the server";
    }
    return;
  }
  const h = state.history;
  const models = [...h.models.keys()];
  // Copies: Plotly.react redraws what changed, and a mutated array looks unchanged to it.
  const t = h.t.slice();
  const line = (name, y, { line: style = {}, ...extra } = {}) => ({
    x: t, y: y.slice(), name, type: "scatter", mode: "lines", connectgaps: false,
    line: { color: colorOf(name), width: 2, ...style }, ...extra,
  });
  Plotly.react("chart-throughput", models.map((m) => line(m, h.models.get(m).rate)), baseLayout(), PLOT_CONFIG);
  const latency = [];
  for (const m of models) {
    latency.push(line(m, h.models.get(m).p50, { name: `${m} p50`, legendgroup: m }));
    latency.push(line(m, h.models.get(m).p99, { name: `${m} p99`, legendgroup: m, line: { dash: "dot", width: 1.5 } }));
  }
  Plotly.react("chart-latency", latency, baseLayout(), PLOT_CONFIG);
  Plotly.react("chart-queue", models.map((m) => line(m, h.models.get(m).queue, { line: { shape: "hv" } })),
    baseLayout(), PLOT_CONFIG);
  const pools = [...h.pools.entries()].map(([name, y]) => ({
    x: t, y: y.slice(), name, type: "scatter", mode: "lines", fill: "tozeroy", line: { color: "#4e79a7", width: 2 },
  }));
  Plotly.react("chart-pools", pools, baseLayout({ yaxis: { ...baseLayout().yaxis, range: [0, 100] } }), PLOT_CONFIG);
}

// -- Pareto fronts ---------------------------------------------------------------------------
async function pollFronts() {
  try {
    const response = await api("v2/edgeplex/fronts");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    renderFronts(await response.json());
  } catch (error) {
    $("fronts-note").textContent = `fronts unavailable: ${error.message}`;
  }
}

function renderFronts(doc) {
  const container = $("fronts");
  $("fronts-note").textContent = doc.note
    ? doc.note
    : `● on the front (latency per row, memory, fidelity loss) · ○ dominated · ★ in use (one per config running, at`
      + ` the batch it runs) · store ${doc.store}`;
  const wanted = new Set(doc.models.filter((m) => m.profiles.length).map((m) => m.model));
  for (const child of [...container.children]) {
    if (!wanted.has(child.dataset.model)) child.remove();
  }
  for (const m of doc.models) {
    if (!m.profiles.length) continue;
    let box = container.querySelector(`.front[data-model="${CSS.escape(m.model)}"]`);
    if (!box) {
      box = el("div", { class: "front", "data-model": m.model },
        el("h3", {}, el("span", { class: "dot", style: `background:${colorOf(m.model)}` }), m.model),
        el("div", { class: "chart", id: `front-${m.model}` }),
        el("div", { class: "front-caption" }));
      container.append(box);
    }
    const front = m.profiles.filter((p) => p.front).sort((a, b) => a.memory_bytes - b.memory_bytes);
    const others = m.profiles.filter((p) => !p.front);
    // One star per config in use: the server marks the one profile point that stands for each
    // (its batch), and lists the configs in use that have no profile at all.
    const used = m.profiles.filter((p) => p.in_use);
    const unprofiled = m.unprofiled ?? [];
    const caption = box.querySelector(".front-caption");
    caption.dataset.inUse = String(m.in_use.length);
    caption.dataset.unprofiled = String(unprofiled.length);
    caption.textContent = `${front.length} on the front, ${others.length} dominated · in use: `
      + (m.in_use.length ? m.in_use.join(", ") : "none")
      + (unprofiled.length ? ` · no profile for ${unprofiled.join(", ")} (in use, not starred)` : "");
    if (!hasPlotly()) continue;
    const points = (ps) => ({
      x: ps.map((p) => p.memory_bytes / 1e6),
      y: ps.map((p) => p.latency_per_row_ms),
      text: ps.map((p) => `${p.label} batch ${p.batch}${p.in_use_as ? ` (in use as ${p.in_use_as})` : ""}<br>p50 ${p.p50_ms.toFixed(2)} ms, p99 ${p.p99_ms.toFixed(2)} ms` +
        `<br>${p.throughput.toFixed(0)} rows/s, ${fmtMB(p.memory_bytes)}, loss ${p.fidelity_loss.toFixed(4)}`),
      hovertemplate: "%{text}<extra></extra>",
      type: "scatter",
    });
    const traces = [
      { ...points(others), name: "dominated", mode: "markers",
        marker: { color: "#c3c7cf", size: 8, symbol: "circle-open", line: { width: 1.5 } } },
      { ...points(front), name: "front", mode: "lines+markers",
        line: { color: colorOf(m.model), width: 1.5, dash: "dot" }, marker: { color: colorOf(m.model), size: 9 } },
      { ...points(used), name: "in use", mode: "markers",
        marker: { color: "#ffd23f", size: 17, symbol: "star", line: { color: "#1f2430", width: 1.2 } } },
    ];
    Plotly.react(`front-${m.model}`, traces, baseLayout({
      xaxis: { title: { text: "memory (MB)" }, gridcolor: "#eceef2", zeroline: false },
      yaxis: { title: { text: "latency per row (ms)" }, gridcolor: "#eceef2", zeroline: false, rangemode: "tozero" },
      margin: { l: 54, r: 12, t: 6, b: 64 },
      legend: { orientation: "h", y: -0.32, x: 0 },
    }), PLOT_CONFIG);
  }
}

poll();
