// MetricsPanel page: filters in the URL, KPI tiles, Plotly charts, tables, live updates by SSE.
// No framework and no build step; the only library is Plotly.js, served from the installed
// Python package. Data is written with textContent only (never innerHTML). Every URL is relative
// to the page, so the panel works under a reverse proxy's path prefix (APEX_PANEL_ROOT_PATH).
"use strict";

(function () {
  const FILTERS = ["window", "from", "to", "campaign", "phase"];
  const $ = (id) => document.getElementById(id);
  let lastRunAt = null;
  let refreshing = null;
  let again = false;
  let source = null;
  let retryDelay = 1000;
  let knownRuns = new Set();
  let lastSeries = null;

  // ---- URL <-> filters ------------------------------------------------------------------------
  function readUrl() {
    const q = new URLSearchParams(location.search);
    const f = {};
    for (const k of FILTERS) if (q.get(k)) f[k] = q.get(k);
    if (!f.window) f.window = "24h";
    return f;
  }

  function query(f, extra) {
    const q = new URLSearchParams();
    for (const k of FILTERS) if (f[k]) q.set(k, f[k]);
    if (f.window !== "custom") { q.delete("from"); q.delete("to"); }
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }

  function toInput(iso) {   // any ISO 8601 instant -> "YYYY-MM-DDTHH:MM" in UTC
    const t = iso ? Date.parse(iso) : NaN;
    return Number.isNaN(t) ? "" : new Date(t).toISOString().slice(0, 16);
  }
  function fromInput(v) { return v ? v + ":00Z" : ""; }

  function showFilters(f) {
    $("f-window").value = f.window;
    $("filters").classList.toggle("is-custom", f.window === "custom");
    $("f-from").value = toInput(f.from);
    $("f-to").value = toInput(f.to);
    ensureOption($("f-campaign"), f.campaign);
    ensureOption($("f-phase"), f.phase);
    $("f-campaign").value = f.campaign || "";
    $("f-phase").value = f.phase || "";
  }

  function ensureOption(select, value) {
    if (!value) return;
    for (const o of select.options) if (o.value === value) return;
    select.add(new Option(value, value));
  }

  function formFilters() {
    const f = { window: $("f-window").value };
    if (f.window === "custom") {
      f.from = fromInput($("f-from").value);
      f.to = fromInput($("f-to").value);
      if (!f.from || !f.to) {
        const end = new Date(); const start = new Date(end.getTime() - 24 * 3600e3);
        f.from = f.from || start.toISOString().slice(0, 16) + ":00Z";
        f.to = f.to || end.toISOString().slice(0, 16) + ":00Z";
      }
    }
    if ($("f-campaign").value) f.campaign = $("f-campaign").value;
    if ($("f-phase").value) f.phase = $("f-phase").value;
    return f;
  }

  function applyForm() {
    const f = formFilters();
    const qs = query(f);
    if ("?" + qs !== location.search) history.pushState(null, "", qs ? "?" + qs : location.pathname);
    showFilters(f);
    refresh();
  }

  // ---- formatting -----------------------------------------------------------------------------
  const intFmt = new Intl.NumberFormat("en-US");
  function fmt(value, unit) {
    if (value === null || value === undefined) return "–";
    const n = Number(value);
    switch (unit) {
      case "usd": return "$" + (Math.abs(n) >= 1 ? n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })
                                                : n.toLocaleString("en-US", { maximumFractionDigits: 5 }));
      case "percent": return n.toFixed(2) + " %";
      case "ms": return intFmt.format(Math.round(n)) + " ms";
      default: return intFmt.format(n);
    }
  }

  function ago(seconds) {
    if (seconds < 90) return Math.max(0, Math.round(seconds)) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  // ---- rendering ------------------------------------------------------------------------------
  function renderTiles(data) {
    const box = $("tiles");
    box.replaceChildren();
    for (const t of data.tiles) {
      const tile = el("div", null, "tile");
      tile.dataset.tile = t.key;
      tile.dataset.value = t.value === null ? "" : String(t.value);
      tile.append(el("div", t.label, "label"));
      tile.append(el("div", fmt(t.value, t.unit), "value"));
      const ch = t.change_pct === null ? null : Number(t.change_pct);
      const change = el("div", ch === null ? "no previous data" : Math.abs(ch).toFixed(1) + " % vs previous (" + fmt(t.previous, t.unit) + ")",
        "change" + (ch === null ? "" : ch > 0 ? " up" : ch < 0 ? " down" : ""));
      tile.append(change);
      if (t.note) tile.append(el("div", t.note, "note"));
      box.append(tile);
    }
    const w = data.window;
    document.body.dataset.windowStart = w.start;
    document.body.dataset.windowEnd = w.end;
    $("window-note").textContent = "Window " + w.start.slice(0, 16).replace("T", " ") + " – " + w.end.slice(0, 16).replace("T", " ") +
      " UTC, compared with the previous window of the same length. Source: " + data.source + ".";
    $("source").textContent = "source: " + data.source;
  }

  // Colours come from the stylesheet, so the charts follow prefers-color-scheme with the page.
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  // All four charts share one time axis: the whole window, whatever buckets have data, and the
  // same margins, so that a moment sits at the same x in each of them.
  function layout(range, extra) {
    const ink = css("--muted"), grid = css("--grid");
    const axis = { gridcolor: grid, linecolor: grid, zerolinecolor: grid, tickfont: { color: ink } };
    const base = {
      margin: { l: 64, r: 16, t: 8, b: 36 }, showlegend: false, hovermode: "x unified",
      font: { color: ink }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      xaxis: Object.assign({ type: "date", range: range, autorange: false, fixedrange: false }, axis),
      yaxis: Object.assign({ rangemode: "tozero", automargin: false }, axis),
      hoverlabel: { bgcolor: css("--card"), font: { color: css("--ink") } },
    };
    const out = Object.assign(base, extra || {});
    if (extra && extra.yaxis) out.yaxis = Object.assign({}, base.yaxis, extra.yaxis);
    return out;
  }
  const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  // A text alternative for each chart: a one-sentence summary and a visually hidden table.
  function describe(id, caption, data, series) {
    const pts = data.points;
    const first = pts.length ? pts[0].t : data.window.start;
    const parts = [];
    for (const [label, key, unit] of series) {
      const vals = pts.map((p) => p[key]).filter((v) => v !== null && v !== undefined).map(Number);
      if (!vals.length) { parts.push(label + ": no data"); continue; }
      const max = Math.max(...vals), at = pts.find((p) => Number(p[key]) === max).t;
      parts.push(label + ": highest " + fmt(max, unit) + " at " + at.slice(0, 16).replace("T", " ") + " UTC, latest " + fmt(vals[vals.length - 1], unit));
    }
    const text = caption + ", " + pts.length + " buckets of " + Math.round(data.bucket_seconds / 60) + " min from " +
      first.slice(0, 16).replace("T", " ") + " UTC. " + parts.join("; ") + ".";
    $("sum-" + id).textContent = text;
    $("chart-" + id).setAttribute("aria-label", text);
    const table = $("data-" + id);
    const head = el("tr"); head.append(el("th", "Bucket start (UTC)"));
    for (const [label] of series) head.append(el("th", label));
    const thead = el("thead"); thead.append(head);
    const body = el("tbody");
    for (const p of pts) {
      const tr = el("tr"); tr.append(el("td", p.t.slice(0, 16).replace("T", " ")));
      for (const [, key, unit] of series) tr.append(el("td", fmt(p[key], unit)));
      body.append(tr);
    }
    table.replaceChildren(thead, body);
  }

  function renderCharts(data) {
    lastSeries = data;
    describe("cost", "Cost (USD)", data, [["cost", "cost_usd", "usd"]]);
    describe("tokens", "Tokens in / out", data, [["tokens in", "tokens_in"], ["tokens out", "tokens_out"]]);
    describe("p95", "p95 of run p95s", data, [["p95 of run p95s", "latency_p95_ms", "ms"]]);
    describe("success", "Success rate", data, [["success rate", "success_rate", "percent"]]);
    document.body.dataset.chartPoints = String(data.points.length);
    if (!window.Plotly) return;
    const x = data.points.map((p) => p.t);
    const num = (k) => data.points.map((p) => (p[k] === null ? null : Number(p[k])));
    const range = [data.window.start, data.window.end];
    Plotly.react("chart-cost", [{ x, y: num("cost_usd"), type: "bar", name: "cost", marker: { color: css("--c-cost") } }], layout(range), config);
    Plotly.react("chart-tokens", [
      { x, y: num("tokens_in"), type: "scatter", mode: "lines", name: "tokens in", line: { color: css("--c-cost") } },
      { x, y: num("tokens_out"), type: "scatter", mode: "lines", name: "tokens out", line: { color: css("--c-out") } },
    ], layout(range, { showlegend: true, legend: { orientation: "h", y: 1.12 } }), config);
    Plotly.react("chart-p95", [{ x, y: num("latency_p95_ms"), type: "scatter", mode: "lines+markers", connectgaps: false, name: "p95 of run p95s", line: { color: css("--c-p95") } }], layout(range), config);
    Plotly.react("chart-success", [{ x, y: num("success_rate"), type: "scatter", mode: "lines+markers", name: "success rate", line: { color: css("--c-success") } }],
      layout(range, { yaxis: { range: [0, 100.5], rangemode: "normal" } }), config);
  }

  function renderCampaigns(data) {
    const body = $("campaigns").tBodies[0];
    body.replaceChildren();
    for (const c of data.campaigns) {
      const tr = el("tr");
      tr.dataset.campaign = c.campaign_id;
      tr.append(el("td", c.campaign_id), el("td", fmt(c.runs)), el("td", fmt(c.cost_usd, "usd")), el("td", fmt(c.success_rate, "percent")),
        el("td", fmt(c.latency_avg_ms, "ms")), el("td", fmt(c.latency_p95_ms, "ms")), el("td", fmt(c.cost_per_asset, "usd")),
        el("td", fmt(c.cost_per_successful_agent, "usd")));
      body.append(tr);
    }
    if (!data.campaigns.length) { const tr = el("tr"); const td = el("td", "No runs in this window."); td.colSpan = 8; tr.append(td); body.append(tr); }
  }

  function renderRuns(data) {
    const body = $("runs").tBodies[0];
    const first = knownRuns.size === 0;
    const seen = new Set();
    body.replaceChildren();
    for (const r of data.runs) {
      const tr = el("tr", null, !first && !knownRuns.has(r.run_id) ? "fresh-row" : "");
      tr.dataset.run = r.run_id;
      seen.add(r.run_id);
      tr.append(el("td", r.created_at.slice(0, 19).replace("T", " ")), el("td", r.run_id), el("td", r.campaign_id), el("td", r.phase || "–"),
        el("td", fmt(r.agents_total)), el("td", fmt(r.agents_successful)), el("td", fmt(r.assets_generated)), el("td", fmt(r.tokens_in)),
        el("td", fmt(r.tokens_out)), el("td", fmt(r.cost_usd, "usd")), el("td", fmt(r.latency_p95_ms)), el("td", fmt(r.latency_avg_ms)));
      body.append(tr);
    }
    knownRuns = seen;
  }

  function renderSync(data) {
    lastRunAt = data.last_run_at ? Date.parse(data.last_run_at) : null;
    tick();
    const dash = (v) => (v === null || v === undefined ? "–" : fmt(v));
    $("sync-pending").textContent = dash(data.pending);
    $("sync-retrying").textContent = dash(data.retrying);
    $("sync-inflight").textContent = dash(data.in_flight);
    $("sync-dead").textContent = dash(data.dead);
    $("sync-lag").textContent = data.lag_seconds === null || data.lag_seconds === undefined ? "–" : ago(data.lag_seconds).replace(" ago", "");
    $("sync-message").textContent = data.message || "";
    const body = $("sync-runs").tBodies[0];
    body.replaceChildren();
    for (const r of data.runs || []) {
      const tr = el("tr");
      tr.append(el("td", r.started_at.slice(0, 19).replace("T", " ")), el("td", r.worker), el("td", fmt(r.claimed)),
        el("td", fmt(r.created + r.updated + r.upserted)), el("td", fmt(r.failed)), el("td", r.outcome, "outcome-" + r.outcome));
      body.append(tr);
    }
    if (!(data.runs || []).length) {
      const tr = el("tr"); const td = el("td", data.sync_engine === false ? "—" : "No sync runs yet."); td.colSpan = 7; tr.append(td); body.append(tr);
    }
  }

  function tick() {
    $("last-run").textContent = "last run: " + (lastRunAt === null ? "none yet" : ago((Date.now() - lastRunAt) / 1000));
  }

  async function getJson(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (r.status === 401) { location.href = "login?next=" + encodeURIComponent("/" + location.search); throw new Error("login required"); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }

  async function options() {
    try {
      const o = await getJson("api/options");
      const f = readUrl();
      for (const [id, list] of [["f-campaign", o.campaigns], ["f-phase", o.phases]]) for (const v of list) ensureOption($(id), v);
      showFilters(f);
    } catch (e) { /* the filters still work with typed URLs */ }
  }

  async function loadAll() {
    const f = readUrl();
    const qs = query(f);
    $("csv-link").href = "api/runs.csv?" + qs;
    try {
      const [k, s, c, r, y] = await Promise.all([
        getJson("api/kpis?" + qs), getJson("api/series?" + qs), getJson("api/campaigns?" + query(f, { limit: 20 })),
        getJson("api/runs?" + query(f, { limit: 20 })), getJson("api/sync"),
      ]);
      renderTiles(k); renderCharts(s); renderCampaigns(c); renderRuns(r); renderSync(y);
      $("error").textContent = "";
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
      document.body.dataset.query = qs;
    } catch (e) {
      $("error").textContent = String(e.message || e);
    }
  }

  // One refresh at a time; changes arriving meanwhile trigger exactly one more.
  function refresh() {
    if (refreshing) { again = true; return refreshing; }
    refreshing = loadAll().finally(() => {
      refreshing = null;
      if (again) { again = false; refresh(); }
    });
    return refreshing;
  }

  // ---- live -----------------------------------------------------------------------------------
  function setStatus(state, text) { const s = $("status"); s.dataset.state = state; s.textContent = text; }

  function connect() {
    if (source) source.close();
    source = new EventSource("api/events");
    source.addEventListener("hello", () => { retryDelay = 1000; setStatus("live", "live"); refresh(); options(); });
    source.addEventListener("change", () => refresh());
    source.onerror = () => {
      setStatus("reconnecting", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) {   // the browser gave up: retry ourselves
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 15000);
      }
    };
  }

  // ---- start ----------------------------------------------------------------------------------
  function start() {
    showFilters(readUrl());
    $("filters").addEventListener("submit", (e) => { e.preventDefault(); applyForm(); });
    for (const id of ["f-window", "f-campaign", "f-phase"]) {
      $(id).addEventListener("change", () => {
        $("filters").classList.toggle("is-custom", $("f-window").value === "custom");
        if ($("f-window").value !== "custom" || id !== "f-window") applyForm();
      });
    }
    window.addEventListener("popstate", () => { showFilters(readUrl()); refresh(); });
    setInterval(tick, 1000);
    setInterval(async () => { try { renderSync(await getJson("api/sync")); } catch (e) { /* shown on next refresh */ } }, 5000);
    const dark = window.matchMedia("(prefers-color-scheme: dark)");
    dark.addEventListener("change", () => { if (lastSeries) renderCharts(lastSeries); });
    options();
    refresh();
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
