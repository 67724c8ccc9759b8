// The topology map: a model of what is loaded (nodes, edges, groups) reconciled onto Cytoscape. Hosts and
// namespaces are groups (compound nodes) holding what they own; a collapsed group is one node with its count.
// Live events change the model and only the changed elements are redrawn (a new node takes the next free slot
// of its group); a full deterministic layout runs only on load, expand/collapse, and a history view.
import cytoscape from "cytoscape";
import * as api from "./api";
import type { GraphElement, Summary } from "./api";
import { colourOf, shapeOf, STYLE } from "./style";

/** Drawn as groups: a host holds its containers and namespaces, a container holds its namespace. */
const GROUP_TYPES = new Set(["host", "container", "netns"]);
const GROUP_DEPTH: Record<string, number> = { host: 0, container: 1, netns: 2 };
const CELL_W = 96, CELL_H = 64, GAP = 46;
export type Mark = "added" | "removed" | "changed";

interface GroupState {
  id: string; name: string; type: string; host: string; parent: string;
  count: number; expanded: boolean; loaded: boolean;
}

interface Desired {
  data: Record<string, unknown>;
  classes: string;
  parent: string;
  group: boolean;
  collapsed: boolean;
  sortKey: string;
}

export interface DrawnNode { id: string; name: string; label: string; type: string; host: string; group: boolean }

export class TopologyMap {
  readonly cy: cytoscape.Core;
  nodes = new Map<string, GraphElement>();
  edges = new Map<string, GraphElement>();
  owner = new Map<string, string>();
  groups = new Map<string, GroupState>();
  /** Group of nodes not loaded (ends of a loaded group's edges), as the group endpoint tells. */
  foreignGroup = new Map<string, string>();
  summaryLinks: Summary["Links"] = [];
  marks = new Map<string, Mark>();
  slots = new Map<string, { x0: number; y0: number; cols: number; next: number }>();
  /** true: every node is loaded and groups start expanded (small graphs); false: groups load on expand. */
  full = true;
  at: number | undefined = undefined;
  onDrawn: (nodes: DrawnNode[]) => void = () => {};
  onSelect: (id: string | null) => void = () => {};
  private highlights: Record<"path" | "found", Set<string>> = { path: new Set(), found: new Set() };
  /** Grouped view: nodes a group fetch brought (their group is known even without an ownership edge). */
  private placed = new Set<string>();
  private scheduled = false;
  private desired = new Map<string, Desired>();

  constructor(container: HTMLElement) {
    this.cy = cytoscape({
      container, style: STYLE, wheelSensitivity: 0.3, minZoom: 0.02, maxZoom: 4,
      hideEdgesOnViewport: true, textureOnViewport: false, motionBlur: false, pixelRatio: 1,
    });
    this.cy.on("tap", "node", (ev) => this.onSelect(ev.target.id()));
    this.cy.on("tap", (ev) => { if (ev.target === this.cy) this.onSelect(null); });
    this.cy.on("dbltap", "node.group", (ev) => void this.toggle(ev.target.id()));
  }

  // --- the model --------------------------------------------------------------------------------------
  clear(): void {
    this.highlights = { path: new Set(), found: new Set() };
    this.placed.clear();
    this.nodes.clear(); this.edges.clear(); this.owner.clear(); this.groups.clear(); this.foreignGroup.clear();
    this.summaryLinks = []; this.marks.clear(); this.slots.clear();
    this.cy.elements().remove();
    this.desired.clear();
  }

  private ensureGroup(n: GraphElement): void {
    const g = this.groups.get(n.ID);
    const name = String(n.Metadata.Name ?? n.ID);
    if (g) { g.name = name; return; }
    this.groups.set(n.ID, { id: n.ID, name, type: String(n.Metadata.Type), host: n.Host ?? "", parent: "",
      count: 0, expanded: this.full, loaded: this.full });
  }

  /** A live node event. In the grouped view a node is held only once a group fetch brought it or it is new
   * (then drawn once an ownership edge says where it belongs); updates of nodes not loaded are dropped. */
  upsertNode(n: GraphElement, added = true): void {
    if (!this.full && !this.nodes.has(n.ID) && !added) return;
    this.nodes.set(n.ID, n);
    if (GROUP_TYPES.has(n.Metadata.Type)) this.ensureGroup(n);
    this.schedule();
  }

  deleteNode(id: string): void {
    this.nodes.delete(id);
    this.owner.delete(id);
    if (this.groups.has(id) && this.full) this.groups.delete(id);
    for (const [eid, e] of this.edges) if (e.Parent === id || e.Child === id) this.edges.delete(eid);
    this.schedule();
  }

  upsertEdge(e: GraphElement): void {
    this.edges.set(e.ID, e);
    if (e.Metadata.RelationType === "ownership" && e.Parent && e.Child) this.owner.set(e.Child, e.Parent);
    this.schedule();
  }

  deleteEdge(id: string): void {
    const e = this.edges.get(id);
    this.edges.delete(id);
    if (e && e.Metadata.RelationType === "ownership" && this.owner.get(e.Child!) === e.Parent) this.owner.delete(e.Child!);
    this.schedule();
  }

  isGroup(id: string): boolean {
    return this.groups.has(id);
  }

  /** The group a node is drawn in: its nearest host/netns owner, else the host node of its Host. */
  groupOf(id: string): string {
    const seen = new Set([id]);
    let cur = this.owner.get(id);
    while (cur !== undefined && !seen.has(cur)) {
      if (this.groups.has(cur)) return cur;
      seen.add(cur);
      cur = this.owner.get(cur);
    }
    const n = this.nodes.get(id);
    if (!n) return this.foreignGroup.get(id) ?? "";
    if (n.Metadata.Type === "host") return "";
    for (const g of this.groups.values()) if (g.type === "host" && g.host === n.Host) return g.id;
    return "";
  }

  /** Load a whole graph (live, or the past graph of `at`); every group expanded. */
  loadGraph(graph: api.Graph, at?: number, marks?: Map<string, Mark>): void {
    this.clear();
    if (marks) this.marks = marks;
    this.full = true;
    this.at = at;
    for (const n of graph.Nodes) this.upsertNode(n);
    for (const e of graph.Edges) this.upsertEdge(e);
    this.reconcile();
    this.relayout();
  }

  /** Load the aggregated view: every group collapsed, members fetched on expand. */
  loadSummary(s: Summary, at?: number): void {
    this.clear();
    this.full = false;
    this.at = at;
    this.applySummary(s);
    this.reconcile();
    this.relayout();
  }

  /** New counts (and groups) from a fresh summary, keeping what is expanded. */
  applySummary(s: Summary): void {
    const seen = new Set<string>();
    for (const g of s.Groups) {
      seen.add(g.ID);
      const cur = this.groups.get(g.ID);
      if (cur) { cur.count = g.Nodes; cur.name = g.Name; cur.parent = g.Group; continue; }
      this.groups.set(g.ID, { id: g.ID, name: g.Name, type: g.Type, host: g.Host, parent: g.Group, count: g.Nodes,
        expanded: false, loaded: false });
    }
    if (!this.full) for (const id of [...this.groups.keys()]) if (!seen.has(id)) this.groups.delete(id);
    this.summaryLinks = s.Links;
    this.schedule();
  }

  async expand(id: string, relayout = true): Promise<void> {
    const g = this.groups.get(id);
    if (!g || g.expanded) return;
    if (!g.loaded) this.addMembers(id, await api.group(id, this.at));
    g.expanded = true;
    this.reconcile();
    if (relayout) this.relayout();
  }

  /** A group's members as the group endpoint answers them (or the summary's `Open`). */
  addMembers(id: string, members: api.GroupMembers): void {
    const g = this.groups.get(id);
    if (!g) return;
    for (const n of members.Nodes) {
      this.nodes.set(n.ID, n);
      this.placed.add(n.ID);
      if (GROUP_TYPES.has(n.Metadata.Type) && !this.groups.has(n.ID)) this.ensureGroup(n);
    }
    for (const e of members.Edges) this.upsertEdge(e);
    for (const [nid, gid] of Object.entries(members.Groups)) this.foreignGroup.set(nid, gid);
    for (const n of members.Nodes) if (this.groups.has(n.ID)) this.groups.get(n.ID)!.parent = id;
    g.loaded = true;
  }

  collapse(id: string): void {
    const g = this.groups.get(id);
    if (!g || !g.expanded) return;
    g.expanded = false;
    this.reconcile();
    this.relayout();
  }

  async toggle(id: string): Promise<void> {
    const g = this.groups.get(id);
    if (!g) return;
    if (g.expanded) this.collapse(id);
    else await this.expand(id);
  }

  /** Make a node visible: expand the groups holding it (asking the API where it lives if not loaded). */
  /** Make nodes visible (see reveal), laying the map out once. */
  async revealMany(ids: string[]): Promise<void> {
    for (const id of ids) await this.reveal(id, false);
    this.reconcile();
    this.relayout(false);
  }

  async reveal(id: string, finish = true): Promise<boolean> {
    if (!this.nodes.has(id) && !this.groups.has(id)) {
      const ctx = this.at ? `G.At(${Math.round(this.at)})` : "G";
      try {
        const chain: GraphElement[] = await api.gremlin(`${ctx}.V().Has('@ID', ${api.q(id)}).Ascendants(0)`);
        const owners = chain.filter((n) => GROUP_TYPES.has(n.Metadata.Type) && n.ID !== id);
        owners.sort((a, b) => GROUP_DEPTH[a.Metadata.Type] - GROUP_DEPTH[b.Metadata.Type]);
        for (const o of owners) await this.expand(o.ID, false);
        if (!owners.length) {
          const n = chain.find((c) => c.ID === id);
          const host = n && [...this.groups.values()].find((g) => g.type === "host" && g.host === n.Host);
          if (host) await this.expand(host.id, false);
        }
      } catch { return false; }
    }
    const chainUp: string[] = [];
    let g = this.groups.has(id) ? this.groups.get(id)!.parent || this.groupOf(id) : this.groupOf(id);
    while (g && !chainUp.includes(g)) { chainUp.unshift(g); g = this.groups.get(g)?.parent || this.groupOf(g); }
    let changed = false;
    for (const gid of chainUp) {
      if (!this.groups.get(gid)?.expanded) { await this.expand(gid, false); changed = true; }
    }
    if (finish && changed) {
      this.reconcile();
      this.relayout(false);
    }
    return this.cy.getElementById(id).length > 0;
  }

  // --- reconcile: model -> desired elements -> Cytoscape ------------------------------------------------
  schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => { this.scheduled = false; this.reconcile(); });
  }

  private groupParent(g: GroupState): string {
    if (this.full) return this.groupOf(g.id);
    return g.parent || this.groupOf(g.id);
  }

  private computeDesired(): Map<string, Desired> {
    const want = new Map<string, Desired>();
    const counts = new Map<string, number>();
    if (this.full) for (const id of this.nodes.keys()) {
      const gid = this.groupOf(id);
      if (gid) counts.set(gid, (counts.get(gid) ?? 0) + 1);
    }
    const drawnGroup = (id: string, depth = 0): boolean => {
      const g = this.groups.get(id);
      if (!g || depth > 8) return false;
      const p = this.groupParent(g);
      return !p || (this.groups.get(p)?.expanded === true && drawnGroup(p, depth + 1));
    };
    for (const g of this.groups.values()) {
      if (!drawnGroup(g.id)) continue;
      const count = this.full ? counts.get(g.id) ?? 0 : g.count;
      const n = this.nodes.get(g.id);
      const label = g.expanded ? g.name : `${g.name}\n${count} nodes`;
      const mark = this.marks.get(g.id);
      want.set(g.id, {
        data: { id: g.id, label, name: g.name, colour: colourOf(g.type), shape: "round-rectangle", type: g.type, host: g.host,
          size: Math.round(34 + 10 * Math.log2(1 + count)) },
        classes: ["group", g.type, g.expanded ? "expanded" : "collapsed", mark ?? "", ...(n ? stateClasses(n) : [])].join(" ") + this.extra(g.id),
        parent: this.groupParent(g), group: true, collapsed: !g.expanded, sortKey: `0${GROUP_DEPTH[g.type] ?? 3}${g.name}`,
      });
    }
    for (const n of this.nodes.values()) {
      if (this.groups.has(n.ID)) continue;
      if (!this.full && !this.placed.has(n.ID) && !this.owner.has(n.ID)) continue;  // where it belongs: not known yet
      const gid = this.groupOf(n.ID);
      if (gid && !(want.has(gid) && this.groups.get(gid)!.expanded)) continue;
      const type = String(n.Metadata.Type ?? "");
      want.set(n.ID, {
        data: { id: n.ID, label: String(n.Metadata.Name ?? n.ID), name: String(n.Metadata.Name ?? n.ID), colour: colourOf(type), shape: shapeOf(type), type,
          host: n.Host ?? "" },
        classes: [...stateClasses(n), this.marks.get(n.ID) ?? ""].join(" ") + this.extra(n.ID),
        parent: gid, group: false, collapsed: false, sortKey: `1${type}\u0000${String(n.Metadata.Name ?? "")}`,
      });
    }
    return want;
  }

  private visibleEnd(id: string, want: Map<string, Desired>): string {
    let cur = id;
    for (let i = 0; i < 10 && cur; i++) {
      if (want.has(cur)) return cur;
      cur = this.groups.has(cur) ? this.groupParent(this.groups.get(cur)!) : this.groupOf(cur);
    }
    return "";
  }

  reconcile(): void {
    const want = this.computeDesired();
    const wantEdges = new Map<string, { data: Record<string, unknown>; classes: string }>();
    const meta = new Map<string, { a: string; b: string; count: number; rels: Set<string> }>();
    const addMeta = (a: string, b: string, rel: string, count: number) => {
      const [x, y] = a < b ? [a, b] : [b, a];
      const key = `meta:${x}|${y}`;
      const m = meta.get(key) ?? { a: x, b: y, count: 0, rels: new Set<string>() };
      m.count = Math.max(m.count, 0) + count;
      m.rels.add(rel);
      meta.set(key, m);
    };
    for (const e of this.edges.values()) {
      // graph-builder's cross-host tunnel edges are `RelationType: layer2, Type: tunnel`: drawn as tunnels
      const rel = e.Metadata.Type === "tunnel" ? "tunnel" : String(e.Metadata.RelationType ?? "");
      if (rel === "ownership" && this.groups.has(e.Parent!)) continue;
      const a = this.visibleEnd(e.Parent!, want), b = this.visibleEnd(e.Child!, want);
      if (!a || !b || a === b) continue;
      if (a === e.Parent && b === e.Child) {
        const onPath = this.highlights.path.has(a) && this.highlights.path.has(b) ? " path" : "";
        wantEdges.set(e.ID, { data: { id: e.ID, source: a, target: b, rel },
          classes: [rel, this.marks.get(e.ID) ?? ""].join(" ") + onPath });
      } else if (rel !== "ownership") addMeta(a, b, rel, 1);
    }
    if (!this.full) for (const l of this.summaryLinks) {
      const ga = this.groups.get(l.A), gb = this.groups.get(l.B);
      if (!ga || !gb || ga.expanded || gb.expanded || !want.has(l.A) || !want.has(l.B)) continue;
      addMeta(l.A, l.B, l.RelationType, l.Count);
    }
    for (const [key, m] of meta) {
      wantEdges.set(key, { data: { id: key, source: m.a, target: m.b, rel: [...m.rels].join(","),
        label: m.count > 1 ? String(m.count) : "", width: Math.min(8, 1 + Math.log2(m.count)) }, classes: ["meta", ...m.rels].join(" ") });
    }

    const cy = this.cy;
    cy.batch(() => {
      cy.edges().forEach((e) => { if (!wantEdges.has(e.id())) e.remove(); });
      cy.nodes().forEach((n) => { if (!want.has(n.id())) n.remove(); });
      // parents before children: groups by depth, then leaves
      const order = [...want.entries()].sort((x, y) => depth(x[1]) - depth(y[1]));
      function depth(d: Desired): number {
        let k = 0, p = d.parent;
        while (p && k < 10) { k++; p = want.get(p)?.parent ?? ""; }
        return (d.group ? 0 : 100) + k;
      }
      for (const [id, d] of order) {
        const parent = d.parent && want.has(d.parent) ? d.parent : undefined;
        const el = cy.getElementById(id);
        if (el.length === 0) {
          cy.add({ group: "nodes", data: { ...d.data, parent }, classes: d.classes, position: this.placeNew(id, parent) });
          continue;
        }
        el.data(d.data);
        if (el.classes().join(" ") !== d.classes.trim().split(/\s+/).join(" ")) el.classes(d.classes);
        const cur = el.data("parent") as string | undefined;
        if ((cur ?? undefined) !== parent) (el as cytoscape.NodeSingular).move({ parent: parent ?? null });
      }
      for (const [id, d] of wantEdges) {
        const el = cy.getElementById(id);
        if (el.length === 0) cy.add({ group: "edges", data: d.data, classes: d.classes });
        else { el.data(d.data); el.classes(d.classes); }
      }
    });
    this.desired = want;
    this.onDrawn([...want.entries()].map(([id, d]) => ({ id, name: String(d.data.name), label: String(d.data.label).replace("\n", " "),
      type: String(d.data.type ?? ""), host: String(d.data.host ?? ""), group: d.group })));
  }

  // --- layout -------------------------------------------------------------------------------------------
  private placeNew(id: string, parent: string | undefined): cytoscape.Position {
    const slot = this.slots.get(parent ?? "");
    if (slot) {
      const i = slot.next++;
      return { x: slot.x0 + (i % slot.cols) * CELL_W, y: slot.y0 + Math.floor(i / slot.cols) * CELL_H };
    }
    if (parent) {
      const p = this.cy.getElementById(parent);
      if (p.length) {
        const pos = p.position();
        this.slots.set(parent, { x0: pos.x, y0: pos.y, cols: 4, next: 1 });
        return { ...pos };
      }
    }
    return { x: 0, y: 0 };
  }

  /** Deterministic layout of everything drawn: each container lays its leaves (and collapsed groups) in a
   * grid, its expanded sub-groups shelf-packed to the right. */
  relayout(fit = true): void {
    const want = this.desired;
    const kids = new Map<string, string[]>();
    for (const [id, d] of want) {
      const p = d.parent && want.has(d.parent) ? d.parent : "";
      if (!kids.has(p)) kids.set(p, []);
      kids.get(p)!.push(id);
    }
    const positions = new Map<string, cytoscape.Position>();
    const slots = this.slots;
    slots.clear();
    const measure = (container: string): { w: number; h: number; place: (x: number, y: number) => void } => {
      const ch = (kids.get(container) ?? []).slice().sort((a, b) =>
        want.get(a)!.sortKey < want.get(b)!.sortKey ? -1 : 1);
      const isLeaf = (c: string) => !want.get(c)!.group || want.get(c)!.collapsed || !(kids.get(c)?.length);
      const boxes = ch.filter((c) => isLeaf(c) && want.get(c)!.group);
      const leaves = ch.filter((c) => isLeaf(c) && !want.get(c)!.group);
      const subs = ch.filter((c) => !isLeaf(c)).map((c) => ({ id: c, ...measure(c) }));
      // collapsed groups: a grid of cells as large as the largest of them, above the leaves
      const box = Math.max(0, ...boxes.map((c) => Number(want.get(c)!.data.size ?? 40))) + 36;
      const bcols = Math.max(1, Math.ceil(Math.sqrt(boxes.length * (subs.length ? 0.8 : 2))));
      const boxW = boxes.length ? bcols * box : 0, boxH = Math.ceil(boxes.length / bcols) * box;
      const cols = Math.max(1, Math.ceil(Math.sqrt(leaves.length * (subs.length ? 0.8 : 2))), Math.floor(boxW / CELL_W));
      const rows = Math.ceil(leaves.length / cols);
      const leafW = Math.max(leaves.length ? cols * CELL_W : 0, boxW), leafH = rows * CELL_H + boxH;
      const area = subs.reduce((s, b) => s + (b.w + GAP) * (b.h + GAP), 0);
      const maxRow = Math.max(Math.sqrt(area) * 1.4, ...subs.map((b) => b.w + GAP));
      let x = 0, y = 0, rowH = 0, subsW = 0;
      const offs: { id: string; x: number; y: number; place: (x: number, y: number) => void }[] = [];
      for (const b of subs) {
        if (x > 0 && x + b.w > maxRow) { x = 0; y += rowH + GAP; rowH = 0; }
        offs.push({ id: b.id, x, y, place: b.place });
        x += b.w + GAP; rowH = Math.max(rowH, b.h); subsW = Math.max(subsW, x);
      }
      const subsH = subs.length ? y + rowH : 0;
      const leftW = leafW ? leafW + (subs.length ? GAP : 0) : 0;
      return {
        w: Math.max(CELL_W, leftW + subsW), h: Math.max(CELL_H, leafH, subsH),
        place: (x0: number, y0: number) => {
          boxes.forEach((id, i) => positions.set(id, { x: x0 + (i % bcols) * box + box / 2,
            y: y0 + Math.floor(i / bcols) * box + box / 2 }));
          leaves.forEach((id, i) => positions.set(id, { x: x0 + (i % cols) * CELL_W + CELL_W / 2,
            y: y0 + boxH + Math.floor(i / cols) * CELL_H + CELL_H / 2 }));
          slots.set(container, { x0: x0 + CELL_W / 2, y0: y0 + boxH + CELL_H / 2, cols, next: leaves.length });
          for (const o of offs) o.place(x0 + leftW + o.x, y0 + o.y);
        },
      };
    };
    measure("").place(0, 0);
    this.cy.batch(() => {
      for (const [id, p] of positions) {
        const el = this.cy.getElementById(id);
        if (el.length && el.isNode() && !el.isParent()) el.position(p);
      }
    });
    if (fit) this.cy.fit(undefined, 30);
  }

  // --- highlights ---------------------------------------------------------------------------------------
  setMarks(marks: Map<string, Mark>): void {
    this.marks = marks;
    this.schedule();
  }

  /** Highlight nodes (a flow's path, search or console results); kept across redraws until replaced. */
  highlight(ids: string[], cls: "path" | "found"): void {
    this.highlights[cls] = new Set(ids);
    this.reconcile();
    const els = this.cy.nodes("." + cls);
    if (els.length) this.focus(els);
  }

  private extra(id: string): string {
    return (this.highlights.path.has(id) ? " path" : "") + (this.highlights.found.has(id) ? " found" : "");
  }

  /** Fit the view to some elements, without zooming in past 1.5 (one node would fill the screen). */
  private focus(els: cytoscape.NodeCollection): void {
    this.cy.fit(els, 80);
    if (this.cy.zoom() > 1.5) {
      this.cy.zoom(1.5);
      this.cy.center(els);
    }
  }

  select(id: string): void {
    this.cy.$(":selected").unselect();
    const el = this.cy.getElementById(id);
    if (el.length) {
      el.select();
      this.cy.animate({ center: { eles: el }, zoom: Math.max(this.cy.zoom(), 1) } as any, { duration: 200 });
    }
  }
}

function stateClasses(n: GraphElement): string[] {
  const out: string[] = [];
  const state = n.Metadata.State;
  if (state === "UP") out.push("up");
  else if (state === "DOWN") out.push("down");
  const caps = n.Metadata.Captures;
  if (Array.isArray(caps) && caps.length) {
    out.push(caps.some((c: any) => c && c.State === "error") ? "capture-error" : "captured");
  }
  return out;
}
