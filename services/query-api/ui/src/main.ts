// Netsonde's web UI: the live topology map with its node list, the node panel, captures, the Gremlin console
// and the time slider, wired together.
import "./app.css";
import * as api from "./api";
import type { Graph, GraphElement, Summary } from "./api";
import { AlertsPanel, type AlertEvent } from "./alerts";
import { ChangesView } from "./changes";
import { GremlinConsole } from "./console";
import { byId, fill, h } from "./dom";
import { LiveFeed, type Envelope } from "./live";
import { TopologyMap, type DrawnNode, type Mark } from "./map";
import { NodePanel } from "./panel";
import { Timeline } from "./timeline";

/** Up to this many nodes the whole graph is loaded and drawn expanded; above, groups start collapsed. */
const FULL_GRAPH_MAX = 1500;
const TABS = ["node", "captures", "gremlin", "alerts", "changes"];

declare global {
  interface Window {
    netsonde: { map: TopologyMap; ready: boolean; readyMs: number; mode: string; events: number; timings: Record<string, number> };
  }
}

function shell(): void {
  fill(byId("app"),
    h("header", {},
      h("strong", {}, "Netsonde"),
      h("input", { id: "search", type: "search", placeholder: "search by name (Enter)", "aria-label": "Search nodes by name" }),
      h("button", { type: "button", id: "fit" }, "Fit"),
      h("button", { type: "button", id: "relayout" }, "Re-layout"),
      h("button", { type: "button", id: "collapse-all" }, "Collapse all"),
      h("button", { type: "button", id: "alert-badge", class: "link", "aria-label": "Active alerts" }, "alerts..."),
      h("span", { id: "status", role: "status" }, "loading...")),
    h("nav", { id: "side", "aria-label": "Node list" },
      h("h2", { id: "node-count" }, "Nodes"),
      h("ul", { id: "node-list", "aria-label": "Nodes on the map" })),
    h("main", { id: "map", "aria-label": "Topology map" }),
    h("aside", { id: "panel" },
      h("div", { class: "tabs", role: "tablist" },
        ...TABS.map((t, i) => h("button", { type: "button", role: "tab", id: `tab-${t}`,
          "aria-selected": i === 0 ? "true" : "false", "data-tab": t }, t[0].toUpperCase() + t.slice(1)))),
      h("div", { id: "pane-node", role: "tabpanel" }),
      h("div", { id: "pane-captures", role: "tabpanel", hidden: true }),
      h("div", { id: "pane-gremlin", role: "tabpanel", hidden: true }),
      h("div", { id: "pane-alerts", role: "tabpanel", hidden: true }),
      h("div", { id: "pane-changes", role: "tabpanel", hidden: true })),
    h("footer", { id: "timebar", "aria-label": "Time slider" }));
}

function showTab(name: string): void {
  for (const t of TABS) {
    byId(`pane-${t}`).hidden = t !== name;
    byId(`tab-${t}`).setAttribute("aria-selected", String(t === name));
  }
  if (name === "captures") void refreshCaptures();
}

async function refreshCaptures(): Promise<void> {
  const pane = byId("pane-captures");
  try {
    const caps = Object.values(await api.captures());
    fill(pane, h("h3", {}, `${caps.length} captures`), h("p", { class: "hint" },
      "Create one from a node's panel (it uses the selection's query). State and errors show on the nodes."),
      h("table", { class: "grid", id: "capture-list" }, h("tr", {}, ...["Name", "Query", "Type", "BPF", ""].map((c) => h("th", {}, c))),
        ...caps.map((c: any) => h("tr", {}, h("td", {}, String(c.Name || c.UUID)), h("td", {}, String(c.GremlinQuery)),
          h("td", {}, String(c.Type || "default")), h("td", {}, String(c.BPFFilter || "")),
          h("td", {}, h("button", { type: "button", class: "danger", onclick: async () => {
            await api.deleteCapture(c.UUID); void refreshCaptures(); } }, "Delete"))))));
  } catch (e) {
    fill(pane, h("p", { class: "err" }, (e as Error).message));
  }
}

function renderList(nodes: DrawnNode[], map: TopologyMap, filter: string): void {
  const f = filter.toLowerCase();
  const items = nodes.filter((n) => !f || n.label.toLowerCase().includes(f))
    .sort((a, b) => (a.group === b.group ? a.label.localeCompare(b.label) : a.group ? -1 : 1)).slice(0, 3000);
  byId("node-count").textContent = `Nodes on the map (${nodes.length})`;
  fill(byId("node-list"), ...items.map((n) => h("li", { "data-id": n.id, "data-type": n.type },
    h("button", { type: "button", class: "link", onclick: () => { map.select(n.id); void select(n.id); } },
      n.name, h("small", {}, ` ${n.label !== n.name ? n.label.slice(n.name.length) : ""} ${n.group ? "group " : ""}${n.type}`)))));
}

let map: TopologyMap;
let panel: NodePanel;
let timeline: Timeline;
let lastDrawn: DrawnNode[] = [];
let summaryTimer: number | null = null;

async function select(id: string | null): Promise<void> {
  if (!id) { panel.clear(); return; }
  showTab("node");
  const known = map.nodes.get(id);
  await panel.show(id, timeline.current !== undefined ? known : undefined);
}

function setStatus(extra = ""): void {
  const groups = map.groups.size;
  byId("status").textContent = `${window.netsonde.mode}: ${map.cy.nodes().length} drawn, ${groups} groups` + (extra ? ` · ${extra}` : "");
}

function diffMarks(cur: Graph, prev: Graph | null): { graph: Graph; marks: Map<string, Mark> } {
  const marks = new Map<string, Mark>();
  if (!prev) return { graph: cur, marks };
  const before = new Map<string, GraphElement>([...prev.Nodes, ...prev.Edges].map((e) => [e.ID, e]));
  const now = new Set<string>();
  for (const e of [...cur.Nodes, ...cur.Edges]) {
    now.add(e.ID);
    const b = before.get(e.ID);
    if (!b) marks.set(e.ID, "added");
    else if (b.Revision !== e.Revision) marks.set(e.ID, "changed");
  }
  const ghosts: Graph = { Nodes: prev.Nodes.filter((n) => !now.has(n.ID)), Edges: prev.Edges.filter((e) => !now.has(e.ID)) };
  for (const g of [...ghosts.Nodes, ...ghosts.Edges]) marks.set(g.ID, "removed");
  return { graph: { Nodes: [...cur.Nodes, ...ghosts.Nodes], Edges: [...cur.Edges, ...ghosts.Edges] }, marks };
}

async function load(at?: number, before?: number): Promise<void> {
  const t = window.netsonde.timings;
  let mark = performance.now();
  const lap = (name: string) => { const now = performance.now(); t[name] = Math.round(now - mark); mark = now; };
  const s: Summary = await api.summary(at, true);
  lap("summary");
  if (s.Nodes <= FULL_GRAPH_MAX) {
    window.netsonde.mode = `${s.Nodes} nodes`;
    const cur = at === undefined ? await api.wholeGraph() : await api.pastGraph(at);
    const prev = at !== undefined && before !== undefined ? await api.pastGraph(before) : null;
    const { graph, marks } = diffMarks(cur, prev);
    map.loadGraph(graph, at, marks);
  } else {
    window.netsonde.mode = `${s.Nodes} nodes, grouped`;
    map.loadSummary(s, at);
    lap("draw groups");
    // level of detail: hosts open (their namespaces drawn collapsed) while that stays a few hundred groups
    if (s.Open) {
      for (const [id, members] of Object.entries(s.Open)) map.addMembers(id, members);
      await Promise.all(Object.keys(s.Open).map((id) => map.expand(id, false)));
      lap("open hosts");
      map.relayout();
      lap("layout");
    }
    if (at !== undefined && before !== undefined) {
      const p = await api.summary(before);
      const old = new Map(p.Groups.map((g) => [g.ID, g.Nodes]));
      map.setMarks(new Map(s.Groups.filter((g) => old.get(g.ID) !== g.Nodes)
        .map((g) => [g.ID, old.has(g.ID) ? "changed" : "added"] as [string, Mark])));
    }
  }
  map.reconcile();
  setStatus(at === undefined ? "live" : "history");
}

function scheduleSummary(): void {
  if (map.full || summaryTimer !== null) return;
  summaryTimer = window.setTimeout(async () => {
    summaryTimer = null;
    if (timeline.current === undefined) map.applySummary(await api.summary());
  }, 1000);
}

function onEvent(ev: Envelope): void {
  window.netsonde.events++;
  const o = ev.Obj as GraphElement;
  switch (ev.Type) {
    case "NodeAdded": map.upsertNode(o); break;
    case "NodeUpdated": map.upsertNode(o, false); panel.refreshIfShowing(o); break;
    case "NodeDeleted": map.deleteNode(o.ID); break;
    case "EdgeAdded": case "EdgeUpdated": map.upsertEdge(o); break;
    case "EdgeDeleted": map.deleteEdge(o.ID); break;
    default: return;
  }
  scheduleSummary();
}

async function search(term: string): Promise<void> {
  const t = term.trim();
  if (!t) return;
  const local = lastDrawn.find((n) => n.label === t) ?? lastDrawn.find((n) => n.label.includes(t));
  if (local) { map.select(local.id); map.highlight([local.id], "found"); void select(local.id); return; }
  const ctx = map.at ? `G.At(${Math.round(map.at)})` : "G";
  const esc = t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const found: GraphElement[] = await api.gremlin(`${ctx}.V().Has('Name', Regex(${api.q(".*" + esc + ".*")})).Limit(50)`);
  await map.revealMany(found.slice(0, 5).map((n) => n.ID));
  map.highlight(found.map((n) => n.ID), "found");
  if (found.length) { map.select(found[0].ID); void select(found[0].ID); }
  setStatus(`${found.length} found for "${t}"`);
}

async function main(): Promise<void> {
  const t0 = performance.now();
  shell();
  map = new TopologyMap(byId("map"));
  window.netsonde = { map, ready: false, readyMs: 0, mode: "", events: 0, timings: { script: Math.round(t0) } };
  map.onDrawn = (nodes) => { lastDrawn = nodes; renderList(nodes, map, (byId<HTMLInputElement>("search")).value); };
  map.onSelect = (id) => void select(id);
  panel = new NodePanel(byId("pane-node"), {
    at: () => timeline.current,
    highlightPath: async (ids) => { await map.revealMany(ids); map.highlight(ids, "path"); },
    toggleGroup: (id) => map.toggle(id),
    isGroup: (id) => map.isGroup(id),
    selection: () => map.cy.$("node:selected").map((n) => n.id()),
  });
  panel.clear();
  new GremlinConsole(byId("pane-gremlin"), async (ids) => {
    await map.revealMany(ids.slice(0, 50));
    map.highlight(ids, "found");
  });
  timeline = new Timeline(byId("timebar"));
  const changes = new ChangesView(byId("pane-changes"), (id) => void map.revealMany([id]).then(() => { map.select(id); void select(id); }));
  timeline.onInstant = async (at, before) => {
    if (at === undefined) changes.live(); else void changes.since(at);
    await load(at, before);
  };
  const alerts = new AlertsPanel(byId("pane-alerts"), byId("alert-badge"), async (ids) => {
    await map.revealMany(ids.slice(0, 50));
    map.highlight(ids, "found");
  });
  byId("alert-badge").onclick = () => showTab("alerts");
  for (const b of document.querySelectorAll<HTMLButtonElement>("[data-tab]")) b.onclick = () => showTab(b.dataset.tab!);
  byId("fit").onclick = () => map.cy.fit(undefined, 30);
  byId("relayout").onclick = () => map.relayout();
  byId("collapse-all").onclick = () => { for (const g of map.groups.values()) g.expanded = false; map.reconcile(); map.relayout(); };
  const searchBox = byId<HTMLInputElement>("search");
  searchBox.addEventListener("input", () => renderList(lastDrawn, map, searchBox.value));
  searchBox.addEventListener("keydown", (e) => { if (e.key === "Enter") void search(searchBox.value); });
  document.addEventListener("captures-changed", () => void refreshCaptures());

  // live events are queued until the first load is drawn, then applied in order
  const queued: Envelope[] = [];
  let loaded = false;
  const feed = new LiveFeed();
  feed.onEvent = (ev) => {
    if (!loaded) { queued.push(ev); return; }
    if (timeline.current === undefined) onEvent(ev);
  };
  feed.onAlert = (ev) => alerts.apply(ev.Obj as AlertEvent);
  feed.onState = (connected, reconnected) => {
    byId("status").classList.toggle("offline", !connected);
    if (connected) void alerts.load();  // events missed while disconnected: read the states again
    if (reconnected && timeline.current === undefined) void load();
  };
  feed.start();
  await load();
  loaded = true;
  for (const ev of queued.splice(0)) onEvent(ev);
  const drawn = performance.now();
  map.cy.one("render", () => requestAnimationFrame(() => {
    window.netsonde.timings["first frame"] = Math.round(performance.now() - drawn);
    window.netsonde.ready = true;
    window.netsonde.readyMs = performance.now() - t0;
    document.body.dataset.ready = "1";
  }));
  map.cy.forceRender();
}

void main().catch((e) => {
  const status = document.getElementById("status");
  if (status) status.textContent = `error: ${(e as Error).message}`;
  console.warn(e);
});
