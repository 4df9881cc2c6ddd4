// The service-graph page: fetches /api/graph, draws it with Cytoscape (namespaces as compound
// nodes, its built-in breadthfirst layout), lists the edges, and plots an edge's golden signals
// with uPlot when it is clicked. Errors from the API are shown as they come (error + hint).
"use strict";

const REFRESH_MS = 10000;
const state = { namespace: "", window: "1m", selected: null, known: new Set() };
const byId = (id) => document.getElementById(id);

const cy = cytoscape({
  container: byId("graph"),
  wheelSensitivity: 0.2,
  style: [
    { selector: "node", style: { label: "data(label)", "font-size": 11, "text-valign": "bottom",
      "text-margin-y": 4, "background-color": "#1f77b4", width: 26, height: 26 } },
    { selector: "node.namespace", style: { "background-color": "#eef2f6", "border-color": "#b8c4d0",
      "border-width": 1, "text-valign": "top", "font-weight": "bold", shape: "round-rectangle" } },
    { selector: "node.waypoint", style: { shape: "diamond", "background-color": "#9467bd" } },
    { selector: "node.unmeshed", style: { "background-color": "#fff", "border-color": "#b3261e",
      "border-width": 2, "border-style": "dashed" } },
    { selector: "node.unknown", style: { "background-color": "#aaa" } },
    { selector: "edge", style: { label: "data(label)", "font-size": 9, "curve-style": "bezier",
      "target-arrow-shape": "triangle", width: 2, "line-color": "#6b8aa8", "target-arrow-color": "#6b8aa8",
      "text-background-color": "#fff", "text-background-opacity": 0.8 } },
    { selector: "edge.plain", style: { "line-style": "dashed", "line-color": "#d08770", "target-arrow-color": "#d08770" } },
    { selector: "edge.errors", style: { "line-color": "#b3261e", "target-arrow-color": "#b3261e" } },
    { selector: "edge:selected", style: { width: 4 } },
  ],
});
window.meshGraph = { cy, last: null };

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function edgeLabel(e) {
  const lock = e.mtls ? "mTLS · " : "";
  const parts = [`${fmt(e.rate, 2)} ${e.rateUnit}`];
  if (e.protocol === "http") parts.push(`${fmt(e.errorPercent)}% err`, `p99 ${fmt(e.p99Ms)} ms`);
  else parts.push(`${fmt(e.bytesPerSecond / 1024)} KiB/s`);
  const via = e.via.length ? ` via ${e.via.join(", ")}` : "";
  return lock + parts.join(" · ") + via;
}

function showError(error) {
  const box = byId("error");
  if (!error) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = error.hint ? `${error.error}\n${error.hint}` : error.error;
}

async function getJson(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw { error: "the dashboard server is not answering", hint: "is 'meshctl dashboard' still running?" };
  }
  let body;
  try { body = await response.json(); } catch (err) { body = { error: `answer ${response.status} is not JSON` }; }
  if (!response.ok) throw body;
  return body;
}

function draw(graph) {
  window.meshGraph.last = graph;
  const elements = [];
  for (const ns of new Set(graph.nodes.map((n) => n.namespace))) {
    elements.push({ group: "nodes", data: { id: `ns:${ns}`, label: ns }, classes: "namespace" });
  }
  for (const n of graph.nodes) {
    const classes = [n.kind, n.unmeshed ? "unmeshed" : ""].filter(Boolean).join(" ");
    const label = n.workload + (n.unmeshed ? " (unmeshed)" : "") + (n.kind === "waypoint" ? " (waypoint)" : "");
    elements.push({ group: "nodes", data: { id: n.id, parent: `ns:${n.namespace}`, label, ...n }, classes });
  }
  for (const e of graph.edges) {
    const classes = [e.mtls ? "mtls" : "plain", e.errorPercent > 0 ? "errors" : ""].filter(Boolean).join(" ");
    elements.push({ group: "edges", data: { ...e, label: edgeLabel(e) }, classes });
  }
  const same = cy.elements().map((el) => el.id()).sort().join() === elements.map((el) => el.data.id).sort().join();
  if (same) {
    for (const el of elements) cy.getElementById(el.data.id).data(el.data).classes(el.classes || "");
  } else {
    cy.elements().remove();
    cy.add(elements);
    cy.layout({ name: "cose", animate: false, padding: 30, nodeRepulsion: () => 400000, idealEdgeLength: () => 120 }).run();
  }
  const rows = graph.edges.map((e) => {
    const source = graph.nodes.find((n) => n.id === e.source);
    return `<tr data-edge="${e.id}"><td class="${source && source.unmeshed ? "unmeshed" : ""}">${e.source}</td>` +
      `<td>${e.target}</td><td>${e.protocol}</td><td>${fmt(e.rate, 2)} ${e.rateUnit}</td>` +
      `<td>${fmt(e.errorPercent)}%</td><td>${fmt(e.p50Ms)}</td><td>${fmt(e.p99Ms)}</td>` +
      `<td>${e.mtls ? "yes" : "no"}</td><td>${e.via.join(", ")}</td></tr>`;
  });
  byId("edges").tBodies[0].innerHTML = rows.join("") || '<tr><td colspan="9">no traffic in this window</td></tr>';
}

function updateNamespaces(known) {
  const select = byId("namespace");
  for (const ns of known) {
    if (state.known.has(ns)) continue;
    state.known.add(ns);
    const option = document.createElement("option");
    option.value = option.textContent = ns;
    select.appendChild(option);
  }
}

async function refresh() {
  const params = new URLSearchParams({ namespace: state.namespace, window: state.window });
  try {
    const graph = await getJson(`/api/graph?${params}`);
    showError(null);
    updateNamespaces(graph.namespaces);
    draw(graph);
    const warnings = byId("warnings");
    warnings.hidden = !graph.warnings.length;
    warnings.textContent = graph.warnings.join("\n");
    byId("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    showError(error);
    document.body.dataset.loaded = "error";
  }
}

async function showEdge(data) {
  const detail = byId("detail");
  detail.innerHTML = `<h3>${data.source} \u2192 ${data.target} (${data.protocol})</h3><p>loading…</p>`;
  const params = new URLSearchParams({ source: data.source, target: data.target, protocol: data.protocol, minutes: 15 });
  try {
    const edge = await getJson(`/api/edge?${params}`);
    detail.querySelector("p").remove();
    for (const [name, points] of Object.entries(edge.series)) {
      const box = document.createElement("div");
      box.className = "plot";
      box.dataset.series = name;
      detail.appendChild(box);
      const xs = points.map((p) => p[0]);
      const ys = points.map((p) => p[1]);
      new uPlot({ title: name, width: Math.max(detail.clientWidth - 30, 280), height: 140,
        series: [{}, { label: name, stroke: "#1f77b4" }] }, [xs, ys], box);
    }
  } catch (error) {
    detail.innerHTML = `<p class="error">${error.error}${error.hint ? `<br>${error.hint}` : ""}</p>`;
  }
}

function showNode(data) {
  const detail = byId("detail");
  const enrolled = data.enrolled === null || data.enrolled === undefined ? "not in the live mesh" :
    (data.enrolled ? "enrolled (HBONE)" : "not enrolled");
  const policies = data.policies && data.policies.length ? data.policies.join(", ") : "none";
  detail.innerHTML = `<h3>${data.id}</h3><p>${data.kind}, ${enrolled}</p><p>authorization policies: ${policies}</p>`;
}

cy.on("tap", "edge", (event) => showEdge(event.target.data()));
cy.on("tap", "node", (event) => { if (!event.target.hasClass("namespace")) showNode(event.target.data()); });
byId("namespace").addEventListener("change", (event) => { state.namespace = event.target.value; refresh(); });
byId("window").addEventListener("change", (event) => { state.window = event.target.value; refresh(); });
const initial = new URLSearchParams(location.search);
state.namespace = initial.get("namespace") || "";
state.window = initial.get("window") || "1m";
byId("window").value = state.window;
if (state.namespace) updateNamespaces([state.namespace]), (byId("namespace").value = state.namespace);
refresh();
setInterval(refresh, REFRESH_MS);
