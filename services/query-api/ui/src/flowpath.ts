// A flow's path with per-hop counts: GET /api/flowpath/{TrackingID} gives the capture points of the stream in
// path order with packets/bytes each way, and the packets lost between consecutive hops.
import { fill, fmtNum, fmtTime, h, text } from "./dom";

export interface FlowPath {
  TrackingID: string; Order: string; Hops: Hop[]; Links: Link[];
}
interface Hop { Node: string; Name: string; Type: string; Host: string; ABPackets: number; BAPackets: number;
  ABBytes: number; BABytes: number; FirstSeen: number | null }
interface Link { From: string; To: string; ABLost: number; BALost: number; Uncertainty: number; LatencyMs: number | null;
  LatencyEstimate: boolean }

export async function fetchPath(trackingId: string, at?: number): Promise<FlowPath> {
  const range = at === undefined ? "" : `?from=${Math.round(at) - 3600_000}&to=${Math.round(at)}`;
  const r = await fetch(`/api/flowpath/${encodeURIComponent(trackingId)}${range}`);
  if (!r.ok) throw new Error(`path: ${r.status}: ${await r.text()}`);
  return r.json();
}

/** The hops as table rows, each link (its loss) as a row between the two hops it joins. */
export function pathTable(p: FlowPath): HTMLElement {
  const rows: HTMLElement[] = [];
  p.Hops.forEach((hp, i) => {
    rows.push(h("tr", { class: "hop", "data-node": hp.Node },
      h("td", {}, String(i + 1)), h("td", { class: "name" }, hp.Name || hp.Node), h("td", {}, hp.Host ?? ""),
      h("td", { class: "ab" }, fmtNum(hp.ABPackets)), h("td", { class: "ba" }, fmtNum(hp.BAPackets)),
      h("td", {}, fmtNum(hp.ABBytes)), h("td", {}, fmtNum(hp.BABytes)), h("td", {}, fmtTime(hp.FirstSeen ?? 0))));
    const l = p.Links[i];
    if (l) {
      const lat = l.LatencyMs === null ? "" : `, ${l.LatencyEstimate ? "≈" : ""}${text(l.LatencyMs)} ms`;
      rows.push(h("tr", { class: l.ABLost || l.BALost ? "link lossy" : "link" },
        h("td", {}, ""), h("td", { colspan: 7, class: "loss" },
          `↓ lost A→B ${l.ABLost}, B→A ${l.BALost}` + (l.Uncertainty ? ` (± ${l.Uncertainty} in flight)` : "") + lat)));
    }
  });
  return h("table", { class: "grid flowpath" },
    h("tr", {}, ...["#", "Hop", "Host", "Pkts A→B", "Pkts B→A", "Bytes A→B", "Bytes B→A", "First seen"].map((c) => h("th", {}, c))),
    ...rows);
}

export function renderPath(box: HTMLElement, p: FlowPath): void {
  fill(box, h("p", { class: "sub" }, `path of ${p.TrackingID} (${p.Hops.length} hops, ordered by ${p.Order})`), pathTable(p));
}
