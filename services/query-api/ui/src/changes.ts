// "Changes since": what changed in the graph between the instant shown by the time slider and now, from
// GET /api/diff (added, removed, and each changed key as `Key: old -> new`), all rendered as text.
import { fill, fmtTime, h, text } from "./dom";

interface Change { Key: string; Old: unknown; New: unknown; Change: "added" | "removed" | "changed" }
interface DiffItem {
  ID: string; Host?: string; ChangedAt: number; Name?: string; Type?: string; RelationType?: string;
  Parent?: string; Child?: string; Metadata?: Record<string, any>; Changes?: Change[];
}
interface Part { Added: DiffItem[]; Removed: DiffItem[]; Changed: DiffItem[] }
export interface GraphDiff { From: number; To: number; Nodes: Part; Edges: Part }

/** One changed key as the CLI prints it: `MTU: 1500 -> 1400`, `-` for a key that was absent. */
export function changeText(c: Change): string {
  const v = (x: unknown) => (typeof x === "string" ? x : text(x));
  return `${c.Key}: ${c.Change === "added" ? "-" : v(c.Old)} -> ${c.Change === "removed" ? "-" : v(c.New)}`;
}

export class ChangesView {
  private seq = 0;

  constructor(private root: HTMLElement, private onPick: (id: string) => void) {
    this.live();
  }

  live(): void {
    this.seq++;
    fill(this.root, h("p", { class: "hint" },
      "Move the time slider to a past instant: this tab then lists what changed since that instant (GET /api/diff)."));
  }

  /** The changes between `at` and now. */
  async since(at: number): Promise<void> {
    const seq = ++this.seq;
    fill(this.root, h("p", { class: "hint" }, `changes since ${fmtTime(at)}: loading...`));
    let d: GraphDiff;
    try {
      const r = await fetch(`/api/diff?from=${Math.round(at)}&to=now&flows=0`);
      if (!r.ok) throw new Error(`${r.status}: ${await r.text()}`);
      d = await r.json();
    } catch (e) {
      if (seq === this.seq) fill(this.root, h("p", { class: "err" }, `diff: ${(e as Error).message}`));
      return;
    }
    if (seq !== this.seq) return;
    const rows: HTMLElement[] = [];
    const add = (kind: string, change: string, it: DiffItem, detail: string[]) => {
      const name = it.Name || it.Metadata?.Name || (kind === "edge" ? `${short(it.Parent)} → ${short(it.Child)}` : it.ID);
      const type = it.Type || it.RelationType || it.Metadata?.RelationType || it.Metadata?.Type || "";
      rows.push(h("tr", { class: `diff-${change}`, "data-id": it.ID,
        onclick: kind === "node" && change !== "removed" ? () => this.onPick(it.ID) : undefined },
        h("td", {}, fmtTime(it.ChangedAt)), h("td", {}, kind), h("td", { class: "change" }, change),
        h("td", { class: "name" }, String(name)), h("td", {}, String(type)),
        h("td", { class: "detail" }, ...detail.map((t) => h("div", {}, t)))));
    };
    for (const [kind, part] of [["node", d.Nodes], ["edge", d.Edges]] as [string, Part][]) {
      for (const it of part.Added) add(kind, "added", it, []);
      for (const it of part.Removed) add(kind, "removed", it, []);
      for (const it of part.Changed) add(kind, "changed", it, (it.Changes ?? []).map(changeText));
    }
    rows.sort((a, b) => (a.firstChild!.textContent! < b.firstChild!.textContent! ? -1 : 1));
    const n = d.Nodes.Added.length + d.Nodes.Removed.length + d.Nodes.Changed.length;
    const e = d.Edges.Added.length + d.Edges.Removed.length + d.Edges.Changed.length;
    fill(this.root, h("h3", {}, `Changes since ${fmtTime(d.From)}`),
      h("p", { class: "sub", id: "changes-summary" }, `${n} nodes and ${e} edges changed up to ${fmtTime(d.To)}`),
      rows.length ? h("div", { class: "scroll" }, h("table", { class: "grid", id: "change-list" },
        h("tr", {}, ...["When", "Kind", "Change", "Name", "Type", "Detail"].map((c) => h("th", {}, c))), ...rows))
        : h("p", {}, "nothing changed"));
  }
}

function short(id: string | undefined): string {
  return (id ?? "").slice(0, 8);
}
