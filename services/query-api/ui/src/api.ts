// The query-api calls the UI makes (same origin): Gremlin, the aggregated views, captures.

export interface GraphElement {
  ID: string;
  Host?: string;
  Origin?: string;
  Metadata: Record<string, any>;
  Parent?: string;
  Child?: string;
  CreatedAt?: number;
  UpdatedAt?: number;
  DeletedAt?: number;
  Revision?: number;
}

export interface Graph { Nodes: GraphElement[]; Edges: GraphElement[] }

export interface GroupSummary {
  ID: string; Name: string; Type: "host" | "container" | "netns"; Host: string; Group: string; Nodes: number;
  Types: Record<string, number>;
}

export interface Summary {
  Nodes: number; Edges: number; Ungrouped: number; Groups: GroupSummary[];
  Links: { A: string; B: string; RelationType: string; Count: number }[];
  Open?: Record<string, GroupMembers>;
}

export interface GroupMembers extends Graph { Group: string; Total: number; Truncated: boolean; Groups: Record<string, string> }

/** An API answer that is not 2xx: the status and the server's text (a Gremlin 400 names the position). */
export class ApiError extends Error {
  constructor(public status: number, public body: string) {
    super(`${status}: ${body}`);
  }
}

async function call(path: string, init?: RequestInit): Promise<any> {
  const r = await fetch(path, init);
  const body = await r.text();
  if (!r.ok) throw new ApiError(r.status, body);
  if (!body) return null;
  return r.headers.get("Content-Type")?.includes("json") ? JSON.parse(body) : body;
}

export function gremlin(query: string): Promise<any> {
  return call("/api/topology", { method: "POST", body: JSON.stringify({ GremlinQuery: query }) });
}

/** A Gremlin string literal. */
export function q(s: string): string {
  return "'" + s.replace(/\\/g, "\\\\").replace(/'/g, "\\'") + "'";
}

export function wholeGraph(): Promise<Graph> {
  return call("/api/topology");
}

export async function pastGraph(at: number): Promise<Graph> {
  const r = await gremlin(`G.At(${Math.round(at)}).SubGraph()`);
  return Array.isArray(r) && r.length ? r[0] : { Nodes: [], Edges: [] };
}

/** `open`: with the hosts' members (`Open`); the page shell preloads the live one. */
export function summary(at?: number, open = false): Promise<Summary> {
  const params = [at ? `at=${Math.round(at)}` : "", open ? "open=hosts" : ""].filter(Boolean).join("&");
  return call("/api/topology/summary" + (params ? "?" + params : ""));
}

export function group(id: string, at?: number): Promise<GroupMembers> {
  return call(`/api/topology/group/${encodeURIComponent(id)}` + (at ? `?at=${Math.round(at)}` : ""));
}

export function captures(): Promise<Record<string, any>> {
  return call("/api/capture");
}

export function createCapture(body: Record<string, unknown>): Promise<any> {
  return call("/api/capture", { method: "POST", body: JSON.stringify(body) });
}

export function deleteCapture(id: string): Promise<any> {
  return call(`/api/capture/${encodeURIComponent(id)}`, { method: "DELETE" });
}

export function node(id: string): Promise<GraphElement> {
  return call(`/api/node/${encodeURIComponent(id)}`);
}
