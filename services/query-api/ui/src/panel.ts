// The node panel: every metadata key as text, metrics charts, routes, neighbours, captures, flows (sortable,
// a click highlights the flow's path on the map and charts its metrics), and the capture form.
import * as api from "./api";
import type { GraphElement } from "./api";
import { rates, sparkline } from "./charts";
import { fill, fmtNum, fmtTime, h, text } from "./dom";
import { fetchPath, renderPath } from "./flowpath";

export interface PanelHost {
  at: () => number | undefined;
  highlightPath: (ids: string[]) => Promise<void>;
  toggleGroup: (id: string) => Promise<void>;
  isGroup: (id: string) => boolean;
  selection: () => string[];
}

export class NodePanel {
  private current: GraphElement | null = null;
  private flowSort = { key: "Last", desc: true };
  private flows: any[] = [];

  constructor(private root: HTMLElement, private host: PanelHost) {}

  clear(): void {
    this.current = null;
    fill(this.root, h("p", { class: "hint" }, "Select a node on the map (double-click a group to expand it)."));
  }

  async show(id: string, known?: GraphElement): Promise<void> {
    const at = this.host.at();
    let node = known;
    try {
      if (!node && at === undefined) node = await api.node(id);
      if (!node) {
        const r = await api.gremlin(`${ctx(at)}.V().Has('@ID', ${api.q(id)})`);
        node = r && r[0];
      }
    } catch (e) {
      fill(this.root, h("p", { class: "err" }, `Node ${id}: ${(e as Error).message}`));
      return;
    }
    if (!node) return;
    this.current = node;
    const md = node.Metadata;
    const sections: HTMLElement[] = [
      h("h2", {}, String(md.Name ?? node.ID)),
      h("p", { class: "sub" }, `${md.Type ?? ""} on ${node.Host ?? ""}`, at ? ` at ${fmtTime(at)}` : ""),
    ];
    if (this.host.isGroup(node.ID)) {
      sections.push(h("button", { type: "button", onclick: () => void this.host.toggleGroup(node!.ID) },
        "Expand / collapse this group"));
    }
    sections.push(section("Metadata", metadataTable(node)));
    const metrics = h("div", { class: "charts", "data-section": "metrics" }, "loading metrics...");
    sections.push(section("Metrics", metrics));
    if (Array.isArray(md.RoutingTables) && md.RoutingTables.length) sections.push(section("Routes", routesTable(md.RoutingTables)));
    if (Array.isArray(md.Neighbors) && md.Neighbors.length) sections.push(section("Neighbours", neighboursTable(md.Neighbors)));
    sections.push(section("Captures on this node", capturesTable(md.Captures)));
    sections.push(section("New capture", this.captureForm(node)));
    const flows = h("div", { "data-section": "flows" }, "loading flows...");
    sections.push(section("Flows", flows));
    fill(this.root, ...sections);
    void this.loadMetrics(node, metrics);
    void this.loadFlows(node, flows);
  }

  private async loadMetrics(node: GraphElement, box: HTMLElement): Promise<void> {
    const at = this.host.at();
    const end = at === undefined ? "NOW" : String(Math.round(at));
    let series: Record<string, any>[] = [];
    try {
      const r = await api.gremlin(`G.Context(${end}, 900).V().Has('@ID', ${api.q(node.ID)}).Metrics()`);
      series = (r && r[0] && r[0][node.ID]) || [];
    } catch {
      const m = node.Metadata.LastUpdateMetric;
      series = m ? [m] : [];
    }
    const total = node.Metadata.Metric;
    const charts = ["RxBytes", "TxBytes", "RxPackets", "TxPackets"].map((k) =>
      sparkline(`${k}/s`, rates(series, k)));
    const totals = total ? h("table", { class: "kv" }, ...Object.entries(total).map(([k, v]) =>
      h("tr", {}, h("th", {}, k), h("td", {}, k === "Start" || k === "Last" ? fmtTime(v as number) : fmtNum(v))))) : null;
    fill(box, ...(series.length || total ? [...charts, totals] : ["no metrics on this node"]));
  }

  private async loadFlows(node: GraphElement, box: HTMLElement): Promise<void> {
    const at = this.host.at();
    try {
      this.flows = (await api.gremlin(`${ctx(at)}.V().Has('@ID', ${api.q(node.ID)}).Flows().Sort(DESC, 'Last').Limit(200)`)) || [];
    } catch (e) {
      fill(box, h("p", { class: "err" }, `flows: ${(e as Error).message}`));
      return;
    }
    this.renderFlows(box);
  }

  private renderFlows(box: HTMLElement): void {
    if (!this.flows.length) { fill(box, "no flows captured on this node"); return; }
    const cols: [string, string, (f: any) => unknown][] = [
      ["Application", "Application", (f) => f.Application],
      ["A", "Network.A", (f) => endpoint(f, "A")],
      ["B", "Network.B", (f) => endpoint(f, "B")],
      ["Pkts A→B", "Metric.ABPackets", (f) => f.Metric?.ABPackets],
      ["Pkts B→A", "Metric.BAPackets", (f) => f.Metric?.BAPackets],
      ["Bytes A→B", "Metric.ABBytes", (f) => f.Metric?.ABBytes],
      ["Bytes B→A", "Metric.BABytes", (f) => f.Metric?.BABytes],
      ["RTT µs", "Metric.RTT", (f) => (f.Metric?.RTT ? Math.round(f.Metric.RTT / 1000) : "")],
      ["Last seen", "Last", (f) => f.Last ?? f.Metric?.Last],
    ];
    const { key, desc } = this.flowSort;
    const getter = cols.find((c) => c[1] === key)?.[2] ?? ((f: any) => f.Last);
    const rows = [...this.flows].sort((a, b) => {
      const x = getter(a) as any, y = getter(b) as any;
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x ?? "").localeCompare(String(y ?? ""));
      return desc ? -c : c;
    });
    const chart = h("div", { class: "flowchart" });
    const table = h("table", { class: "flows sortable" },
      h("thead", {}, h("tr", {}, ...cols.map(([title, k]) => h("th", {
        "aria-sort": k === key ? (desc ? "descending" : "ascending") : "none",
        onclick: () => { this.flowSort = { key: k, desc: k === key ? !desc : true }; this.renderFlows(box); },
      }, title)))),
      h("tbody", {}, ...rows.map((f) => h("tr", { class: "clickable", onclick: () => void this.pickFlow(f, chart) },
        ...cols.map(([, k, get]) => {
          const v = get(f);
          return h("td", {}, k === "Last" ? fmtTime(v as number) : typeof v === "number" ? fmtNum(v) : text(v));
        })))));
    fill(box, h("div", { class: "scroll" }, table), chart);
  }

  private async pickFlow(f: any, chart: HTMLElement): Promise<void> {
    const at = this.host.at();
    fill(chart, `flow ${f.UUID}: loading its path and metrics...`);
    try {
      const hops: GraphElement[] = f.TrackingID
        ? await api.gremlin(`${ctx(at)}.Flows().Has('TrackingID', ${api.q(f.TrackingID)}).Hops()`)
        : await api.gremlin(`${ctx(at)}.Flows().Has('UUID', ${api.q(f.UUID)}).Nodes()`);
      await this.host.highlightPath((hops || []).map((n) => n.ID));
      const end = at === undefined ? "NOW" : String(Math.round(at));
      const m = await api.gremlin(`G.Context(${end}, 3600).Flows().Has('UUID', ${api.q(f.UUID)}).Metrics()`);
      const series: any[] = (m && m[0] && m[0][f.UUID]) || [];
      const pathBox = h("div", { "data-section": "flowpath" }, f.TrackingID ? "loading the per-hop counts..." : "");
      fill(chart, h("p", {}, `path: ${(hops || []).map((n) => n.Metadata?.Name ?? n.ID).join(" → ") || "no capture node"}`),
        pathBox, sparkline("Bytes A→B /s", rates(series, "ABBytes")), sparkline("Bytes B→A /s", rates(series, "BABytes")));
      if (f.TrackingID) {
        fetchPath(f.TrackingID, at).then((p) => renderPath(pathBox, p),
          (e) => fill(pathBox, h("p", { class: "err" }, (e as Error).message)));
      }
    } catch (e) {
      fill(chart, h("p", { class: "err" }, (e as Error).message));
    }
  }

  private captureForm(node: GraphElement): HTMLElement {
    const sel = this.host.selection();
    const ids = sel.length > 1 ? sel : [node.ID];
    const query = ids.length === 1 ? `G.V(${api.q(ids[0])})` : `G.V().Has('@ID', Within(${ids.map(api.q).join(", ")}))`;
    const out = h("p", { class: "result", role: "status" });
    const form = h("form", { class: "capture-form" },
      h("label", {}, "Query ", h("input", { name: "GremlinQuery", value: query, size: 40 })),
      h("label", {}, "Type ", h("select", { name: "Type" }, ...["", "afpacket", "pcap", "pcapsocket", "ovsmirror", "ovssflow", "sflow", "ebpf"]
        .map((t) => h("option", { value: t }, t || "default for the node")))),
      h("label", {}, "BPF ", h("input", { name: "BPFFilter", placeholder: "e.g. icmp or port 53" })),
      h("label", {}, "Name ", h("input", { name: "Name" })),
      h("label", {}, h("input", { type: "checkbox", name: "IPDefrag" }), " IPDefrag"),
      h("label", {}, h("input", { type: "checkbox", name: "ReassembleTCP" }), " ReassembleTCP"),
      h("label", {}, h("input", { type: "checkbox", name: "ExtraTCPMetric" }), " ExtraTCPMetric"),
      h("label", {}, "HeaderSize ", h("input", { name: "HeaderSize", type: "number", min: 0, max: 4096, value: 0 })),
      h("button", { type: "submit" }, "Start capture"), out);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const fd = new FormData(form);
      const body: Record<string, unknown> = {
        GremlinQuery: fd.get("GremlinQuery"), Type: fd.get("Type"), BPFFilter: fd.get("BPFFilter"), Name: fd.get("Name"),
        IPDefrag: fd.get("IPDefrag") === "on", ReassembleTCP: fd.get("ReassembleTCP") === "on",
        ExtraTCPMetric: fd.get("ExtraTCPMetric") === "on", HeaderSize: Number(fd.get("HeaderSize") || 0),
      };
      try {
        const c = await api.createCapture(body);
        out.className = "result ok";
        out.textContent = `capture ${c.UUID} created` + (c.Warning ? ` (${c.Warning})` : "");
        document.dispatchEvent(new CustomEvent("captures-changed"));
      } catch (e) {
        out.className = "result err";
        out.textContent = (e as Error).message;
      }
    });
    return form;
  }

  refreshIfShowing(n: GraphElement): void {
    if (this.current && this.current.ID === n.ID && this.host.at() === undefined) {
      const capsBefore = JSON.stringify(this.current.Metadata.Captures ?? null);
      if (capsBefore !== JSON.stringify(n.Metadata.Captures ?? null)) {
        this.current = n;
        const box = this.root.querySelector('[data-section="captures"]');
        if (box) box.replaceWith(capturesTable(n.Metadata.Captures));
      }
    }
  }
}

function ctx(at: number | undefined): string {
  return at === undefined ? "G" : `G.At(${Math.round(at)})`;
}

function endpoint(f: any, side: "A" | "B"): string {
  const net = f.Network?.[side] ?? f.Link?.[side] ?? "";
  const port = f.Transport?.[side];
  return port ? `${net}:${port}` : String(net);
}

function section(title: string, body: HTMLElement): HTMLElement {
  const slug = title.toLowerCase().split(" ")[0];
  if (!body.hasAttribute("data-section")) body.setAttribute("data-section", slug);
  return h("section", { "aria-label": title }, h("h3", {}, title), body);
}

/** Every metadata key as a flattened path and its value as text. */
function metadataTable(node: GraphElement): HTMLElement {
  const rows: [string, unknown][] = [["ID", node.ID], ["Host", node.Host], ["Origin", node.Origin],
    ["Revision", node.Revision], ["CreatedAt", fmtTime(node.CreatedAt ?? 0)], ["UpdatedAt", fmtTime(node.UpdatedAt ?? 0)]];
  const walk = (prefix: string, v: unknown): void => {
    if (typeof v === "number" && v > 1e12 && /(^|\.)(Start|Last|[A-Za-z]*At)$/.test(prefix)) {
      rows.push([prefix, `${fmtTime(v)} (${v})`]);  // epoch milliseconds (Metric.Start, Metric.Last)
      return;
    }
    if (!v || typeof v !== "object" || Array.isArray(v)) { rows.push([prefix, v]); return; }
    const entries = Object.entries(v as object);
    if (entries.length > 12 && entries.every(([, x]) => x === null || typeof x !== "object")) {
      // a flag set such as ethtool's Features: one row, folded to a count ("31 on, 24 off"), the pairs inside
      const on = entries.filter(([, x]) => x === true).length;
      const off = entries.filter(([, x]) => x === false).length;
      const summary = on + off === entries.length ? `${on} on, ${off} off` : `${entries.length} keys`;
      rows.push([prefix, h("details", { class: "flags" }, h("summary", {}, summary),
        entries.map(([k, x]) => `${k}=${text(x)}`).join(", "))]);
      return;
    }
    for (const [k, x] of entries) walk(prefix ? `${prefix}.${k}` : k, x);
  };
  const md = { ...node.Metadata };
  delete md.RoutingTables; delete md.Neighbors;
  walk("", md);
  return h("table", { class: "kv metadata" }, ...rows.map(([k, v]) =>
    h("tr", {}, h("th", {}, k), h("td", {}, v instanceof HTMLElement ? v
      : Array.isArray(v) && v.every((x) => typeof x !== "object") ? v.join(", ") : text(v)))));
}

/** rtnetlink route protocols (linux/rtnetlink.h RTPROT_*), the numbers Skydive's RoutingTables carry. */
const RTPROT: Record<number, string> = { 0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
  9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp", 17: "mrouted",
  18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp" };

function routeProtocol(p: unknown): string {
  return typeof p === "number" && RTPROT[p] ? `${RTPROT[p]} (${p})` : text(p);
}

function routesTable(tables: any[]): HTMLElement {
  const rows: HTMLElement[] = [];
  for (const t of tables) for (const r of t.Routes ?? []) {
    rows.push(h("tr", {}, h("td", {}, text(t.ID)), h("td", {}, text(r.Prefix)), h("td", {}, routeProtocol(r.Protocol)),
      h("td", {}, (r.NextHops ?? []).map((n: any) => `${n.IP ?? "direct"} (prio ${n.Priority ?? 0})`).join(", "))));
  }
  return h("table", { class: "grid" }, h("tr", {}, h("th", {}, "Table"), h("th", {}, "Prefix"), h("th", {}, "Protocol"),
    h("th", {}, "Next hops")), ...rows);
}

function neighboursTable(nbs: any[]): HTMLElement {
  return h("table", { class: "grid" }, h("tr", {}, h("th", {}, "IP"), h("th", {}, "MAC"), h("th", {}, "State"), h("th", {}, "Flags")),
    ...nbs.map((n) => h("tr", {}, h("td", {}, text(n.IP)), h("td", {}, text(n.MAC)),
      h("td", {}, Array.isArray(n.State) ? n.State.join(" ") : text(n.State)), h("td", {}, text(n.Flags ?? "")))));
}

function capturesTable(caps: unknown): HTMLElement {
  const box = h("div", { "data-section": "captures" });
  if (!Array.isArray(caps) || !caps.length) { fill(box, "no capture running on this node"); return box; }
  fill(box, h("table", { class: "grid captures" }, h("tr", {}, ...["ID", "Type", "State", "Packets", "Dropped", "Error"]
    .map((c) => h("th", {}, c))), ...caps.map((c: any) => h("tr", { class: `capture-${text(c.State)}` },
    h("td", {}, text(c.ID)), h("td", {}, text(c.Type)), h("td", { class: "state" }, text(c.State)),
    h("td", {}, fmtNum(c.PacketsReceived)), h("td", {}, fmtNum(c.PacketsDropped)), h("td", {}, text(c.Error ?? ""))))));
  return box;
}
