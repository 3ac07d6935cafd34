// The Skiff dashboard: reads the /v1 API (the session cookie authorizes
// reads only) and draws the overview, an app's page and a node's page,
// refreshed every two seconds. Every name, message and log line goes into
// the page as text, never as markup.
"use strict";

const REFRESH_MS = 2000;
const CHART_POINTS = 60;
// Per app, its last requests/s and p99 samples, for the chart.
const samples = new Map();
let refreshing = null;
// The route the view shows; a refresh of it that fails keeps it, a new
// route that fails says why instead.
let shown = null;

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** GET a /v1 path as JSON; a lost session goes back to the login page. */
async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (response.status === 401) {
    location.href = "/ui/login";
    throw new Error("the session has ended");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

function table(id, headers, rows) {
  return el("div", { class: "scroll" }, el("table", { id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length
      ? rows.map((cells) => el("tr", {}, cells.map((c) => c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))))
      : el("tr", {}, el("td", { class: "muted", colspan: String(headers.length) }, "none")))));
}

const link = (href, text) => el("a", { href }, text);
const appHref = (name) => "#/apps/" + encodeURIComponent(name);
const nodeHref = (name) => "#/nodes/" + encodeURIComponent(name);
const rate = (n) => (n || 0).toFixed(1);
const percent = (n) => ((n || 0) * 100).toFixed(1) + "%";
const ms = (n) => (n === null || n === undefined) ? "-" : n.toFixed(2) + " ms";
const state = (s) => el("td", { class: "state-" + s }, s);
const UNLIMITED = 2 ** 63;
function bytes(n) {
  if (n === null || n === undefined || n >= UNLIMITED) return "unlimited";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function age(secs) {
  if (secs < 120) return secs + "s";
  if (secs < 7200) return Math.floor(secs / 60) + "m";
  if (secs < 172800) return Math.floor(secs / 3600) + "h";
  return Math.floor(secs / 86400) + "d";
}
const clock = (unixMs) => new Date(unixMs).toLocaleTimeString();

function card(label, value) {
  return el("div", { class: "card" }, el("b", {}, value), el("span", { class: "muted" }, label));
}

/** The traffic of an app's components summed: requests/s, errors, worst p99. */
function appTraffic(top, app) {
  const mine = top.components.filter((c) => c.app === app);
  const rps = mine.reduce((sum, c) => sum + c.rps, 0);
  const errors = mine.reduce((sum, c) => sum + c.errors_per_sec, 0);
  const p99s = mine.map((c) => c.p99_ms).filter((p) => p !== null && p !== undefined);
  return { rps, errorRate: rps > 0 ? errors / rps : 0, p99: p99s.length ? Math.max(...p99s) : null };
}

async function overview() {
  const [top, apps, nodes] = await Promise.all([api("/v1/top"), api("/v1/apps"), api("/v1/nodes")]);
  const running = apps.reduce((n, a) => n + a.components.reduce((m, c) => m + c.running, 0), 0);
  const desired = apps.reduce((n, a) => n + a.components.reduce((m, c) => m + c.desired, 0), 0);
  const rps = top.components.reduce((sum, c) => sum + c.rps, 0);
  for (const app of apps) record(app.name, appTraffic(top, app.name));
  return [
    el("h1", {}, "Cluster"),
    el("div", { class: "cards" },
      card("nodes", String(nodes.length)), card("apps", String(apps.length)),
      card("replicas running", running + "/" + desired), card("requests/s", rate(rps))),
    el("h2", {}, "Nodes"),
    table("nodes", ["Node", "State", "Replicas", "Requests/s", "In flight", "Used", "Reserved", "Offered"],
      nodes.map((n) => {
        const t = top.nodes.find((x) => x.name === n.name) || {};
        return [link(nodeHref(n.name), n.name), state(n.state), String(n.replicas), rate(t.rps),
          String(t.in_flight || 0), bytes(n.used), bytes(n.reserved), bytes(n.memory)];
      })),
    el("h2", {}, "Apps"),
    table("apps", ["App", "Version", "Running", "Requests/s", "Errors", "Worst p99"],
      apps.map((a) => {
        const t = appTraffic(top, a.name);
        const run = a.components.reduce((m, c) => m + c.running, 0);
        const want = a.components.reduce((m, c) => m + c.desired, 0);
        return [link(appHref(a.name), a.name), a.version, run + "/" + want, rate(t.rps), percent(t.errorRate), ms(t.p99)];
      })),
    el("p", { class: "muted" }, "Rates over the last " + top.window_secs + " s."),
  ];
}

/** Keeps the app's last traffic samples for its chart. */
function record(app, traffic) {
  const list = samples.get(app) || [];
  list.push({ rps: traffic.rps, p99: traffic.p99 });
  while (list.length > CHART_POINTS) list.shift();
  samples.set(app, list);
}

/** A small chart of requests/s and p99 over the last samples, in SVG. */
function chart(app) {
  const svgNs = "http://www.w3.org/2000/svg";
  const width = 600, height = 140, pad = 6;
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const list = samples.get(app) || [];
  const maxima = {};
  for (const [key, cls] of [["rps", "rps"], ["p99", "p99"]]) {
    // Each line on its own scale, from zero to its largest value (shown
    // in the legend).
    const max = Math.max(1e-9, ...list.map((s) => s[key] || 0));
    maxima[key] = max;
    const points = list.map((s, i) => {
      const x = pad + (i / Math.max(1, list.length - 1)) * (width - 2 * pad);
      const y = height - pad - ((s[key] || 0) / max) * (height - 2 * pad);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const line = document.createElementNS(svgNs, "polyline");
    line.setAttribute("class", cls);
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  }
  const last = list[list.length - 1] || { rps: 0, p99: null };
  const seconds = Math.round(list.length * REFRESH_MS / 1000);
  return el("div", {},
    el("p", { class: "legend" },
      el("span", { class: "rps" }, "requests/s " + rate(last.rps) + " (top of chart: " + rate(maxima.rps) + ")"),
      el("span", { class: "p99" }, "worst p99 " + ms(last.p99) + " (top of chart: " + ms(maxima.p99 > 1e-9 ? maxima.p99 : null) + ")"),
      el("span", { class: "muted" }, "over the last " + seconds + " s, since this page opened")),
    svg);
}

/** One line on a rollout under way. */
function rolloutText(r) {
  const share = r.share === null || r.share === undefined ? "" : ", " + r.share + "% of requests";
  const [newAnswered, newFailed] = r.new_requests;
  const [oldAnswered, oldFailed] = r.old_requests;
  return `${r.strategy} ${r.state}: ${r.from} to ${r.to}, ${r.ready}/${r.desired} ready${share}; ` +
    `new version ${newFailed} of ${newAnswered} failed, old ${oldFailed} of ${oldAnswered}`;
}

async function appPage(name) {
  const query = "?app=" + encodeURIComponent(name);
  const apps = await api("/v1/apps");
  const app = apps.find((a) => a.name === name);
  if (!app) return [el("h1", {}, "No app " + name), el("p", {}, link("#/", "Back to the cluster"))];
  const [top, replicas, events, logs] = await Promise.all([
    api("/v1/top"), api("/v1/replicas" + query), api("/v1/events" + query),
    api("/v1/apps/" + encodeURIComponent(name) + "/logs"),
  ]);
  record(name, appTraffic(top, name));
  const components = top.components.filter((c) => c.app === name);
  return [
    el("h1", {}, "App " + name),
    el("p", {}, "Version " + app.version + " ", el("span", { class: "muted" }, app.package)),
    app.error ? el("p", { class: "error" }, app.error) : null,
    app.rollout ? el("p", { id: "rollout" }, rolloutText(app.rollout)) : null,
    app.rolled_back ? el("p", { class: "error" }, "Rolled back: " + (app.rolled_back.reason || "")) : null,
    chart(name),
    el("h2", {}, "Components"),
    table("components", ["Component", "Route", "Running", "Requests/s", "Errors", "p50", "p99", "In flight"],
      app.components.map((c) => {
        const t = components.find((x) => x.component === c.name) || {};
        return [c.name, c.route || "-", c.running + "/" + c.desired, rate(t.rps), percent(t.error_rate),
          ms(t.p50_ms), ms(t.p99_ms), String(t.in_flight || 0)];
      })),
    el("h2", {}, "Replicas"),
    table("replicas", ["Replica", "Component", "Node", "State", "Version", "Age", "Why"],
      replicas.map((r) => [r.id, r.component, r.node ? link(nodeHref(r.node), r.node) : "-",
        state(r.state), r.version, age(r.age_secs), r.reason || ""])),
    el("h2", {}, "Recent events"),
    table("events", ["Time", "Kind", "Component", "What"],
      events.slice(-20).reverse().map((e) => [clock(e.unix_ms), e.kind, e.component || "", el("td", { class: "wrap" }, e.message)])),
    el("h2", {}, "Last log lines"),
    table("logs", ["Time", "Node", "Component", "Stream", "Line"],
      logs.lines.slice(-50).map((l) => [clock(l.unix_ms), l.node, l.component, l.stream,
        el("td", { class: "wrap" }, l.line)])),
  ];
}

async function nodePage(name) {
  const [nodes, top, replicas] = await Promise.all([api("/v1/nodes"), api("/v1/top"), api("/v1/replicas")]);
  const node = nodes.find((n) => n.name === name);
  if (!node) return [el("h1", {}, "No node " + name), el("p", {}, link("#/", "Back to the cluster"))];
  const t = top.nodes.find((x) => x.name === name) || {};
  const labels = Object.entries(node.labels).map(([k, v]) => k + "=" + v).join(", ");
  return [
    el("h1", {}, "Node " + name),
    el("div", { class: "cards" },
      card("state", node.state + (node.pressure ? " (memory pressure)" : "")),
      card("requests/s", rate(t.rps)), card("in flight", String(t.in_flight || 0)),
      card("used", bytes(node.used)), card("reserved", bytes(node.reserved) + " / " + bytes(node.placeable))),
    el("p", {}, "Ingress " + node.ingress + (labels ? "; labels " + labels : "")),
    el("h2", {}, "Replicas here"),
    table("replicas", ["Replica", "App", "Component", "State", "Version", "Age"],
      replicas.filter((r) => r.node === name).map((r) => [r.id, link(appHref(r.app), r.app), r.component,
        state(r.state), r.version, age(r.age_secs)])),
  ];
}

let rendering = false;

async function render() {
  // A refresh still waiting for its answers is not joined by another.
  if (rendering) return;
  rendering = true;
  try {
    await draw();
  } finally {
    rendering = false;
  }
}

async function draw() {
  const hash = location.hash;
  const route = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const status = document.getElementById("status");
  try {
    let view;
    if (route[0] === "apps" && route[1]) view = await appPage(route[1]);
    else if (route[0] === "nodes" && route[1]) view = await nodePage(route[1]);
    else view = await overview();
    if (hash !== location.hash) return; // the route changed meanwhile
    document.getElementById("view").replaceChildren(...view.filter((v) => v !== null));
    shown = hash;
    status.className = "muted";
    status.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    status.className = "error";
    status.textContent = "refresh failed: " + error.message;
    if (shown !== hash) {
      document.getElementById("view").replaceChildren(
        el("p", { class: "error" }, "This page could not be shown: " + error.message),
        el("p", {}, link("#/", "Back to the cluster")));
      shown = hash;
    }
  }
}

function start() {
  if (refreshing) clearInterval(refreshing);
  if (shown !== location.hash) {
    document.getElementById("view").replaceChildren(el("p", { class: "muted" }, "Loading…"));
  }
  render();
  refreshing = setInterval(render, REFRESH_MS);
}

window.addEventListener("hashchange", start);
start();
