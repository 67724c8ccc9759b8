// The Gremlin console: history (kept in localStorage), errors with a caret under their position, results as a
// table or JSON, and "show on map" for node results.
import * as api from "./api";
import { fill, h, text } from "./dom";

const HISTORY_KEY = "netsonde.gremlin.history";

export class GremlinConsole {
  private history: string[] = [];
  private cursor = -1;
  private input: HTMLTextAreaElement;
  private out: HTMLElement;
  private histList: HTMLElement;
  private asJson = false;
  private last: unknown = null;

  constructor(root: HTMLElement, private showOnMap: (ids: string[]) => Promise<void>) {
    try { this.history = JSON.parse(localStorage.getItem(HISTORY_KEY) ?? "[]"); } catch { this.history = []; }
    this.input = h("textarea", { id: "gremlin-input", rows: 3, spellcheck: "false", "aria-label": "Gremlin query" });
    this.input.value = "G.V().Has('Type', 'netns')";
    this.out = h("div", { id: "gremlin-output", role: "status" });
    this.histList = h("ol", { class: "history", "aria-label": "Query history" });
    const jsonToggle = h("label", {}, h("input", { type: "checkbox", onchange: (e: Event) => {
      this.asJson = (e.target as HTMLInputElement).checked; this.render(); } }), " JSON");
    fill(root, this.input, h("div", { class: "row" },
      h("button", { type: "button", id: "gremlin-run", onclick: () => void this.run() }, "Run (Ctrl+Enter)"), jsonToggle),
      this.out, h("h3", {}, "History"), this.histList);
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); void this.run(); }
      else if (e.key === "ArrowUp" && e.altKey) this.recall(1);
      else if (e.key === "ArrowDown" && e.altKey) this.recall(-1);
    });
    this.renderHistory();
  }

  private recall(step: number): void {
    if (!this.history.length) return;
    this.cursor = Math.max(0, Math.min(this.history.length - 1, this.cursor + step));
    this.input.value = this.history[this.cursor];
  }

  async run(query = this.input.value.trim()): Promise<void> {
    if (!query) return;
    this.input.value = query;
    this.history = [query, ...this.history.filter((q) => q !== query)].slice(0, 50);
    this.cursor = -1;
    localStorage.setItem(HISTORY_KEY, JSON.stringify(this.history));
    this.renderHistory();
    fill(this.out, "running...");
    const started = performance.now();
    try {
      this.last = await api.gremlin(query);
      this.render(`${Math.round(performance.now() - started)} ms`);
    } catch (e) {
      this.last = null;
      const err = e as api.ApiError;
      const body = err.body ?? String(e);
      const m = /position (\d+)/.exec(body);
      const parts: (HTMLElement | string)[] = [h("p", { class: "err" }, `${err.status ?? ""} ${body}`)];
      if (m) {
        const pos = Number(m[1]);
        parts.push(h("pre", { class: "caret" }, query + "\n" + " ".repeat(Math.min(pos, query.length)) + "^"));
      }
      fill(this.out, ...parts);
    }
  }

  private render(timing = ""): void {
    const r = this.last;
    const nodes = Array.isArray(r) && r.length && r.every((x) => x && typeof x === "object" && "ID" in x && "Metadata" in x && !("Parent" in x))
      ? (r as api.GraphElement[]) : null;
    const head = h("p", {}, Array.isArray(r) ? `${r.length} results` : "result", timing ? ` in ${timing}` : "",
      nodes ? " " : "", nodes ? h("button", { type: "button", id: "gremlin-show", onclick: () => void this.showOnMap(nodes.map((n) => n.ID)) }, "Show on map") : null);
    if (this.asJson || !Array.isArray(r) || !r.length || typeof r[0] !== "object") {
      fill(this.out, head, h("pre", { class: "json" }, JSON.stringify(r, null, 2)));
      return;
    }
    const objs = r as Record<string, any>[];
    const isElem = "Metadata" in objs[0];
    const keys = isElem ? ["Name", "Type", "Host", "ID", "Revision"] : [...new Set(objs.flatMap((o) => Object.keys(o)))].slice(0, 12);
    const cell = (o: Record<string, any>, k: string) => isElem ? (k in o && k !== "Name" && k !== "Type" ? o[k] : o.Metadata?.[k] ?? (k === "Name" ? o.Metadata?.RelationType : "")) : o[k];
    fill(this.out, head, h("table", { class: "grid results" }, h("tr", {}, ...keys.map((k) => h("th", {}, k))),
      ...objs.slice(0, 1000).map((o) => h("tr", {}, ...keys.map((k) => h("td", {}, text(cell(o, k))))))));
  }

  private renderHistory(): void {
    fill(this.histList, ...this.history.map((q) => h("li", {}, h("button", { type: "button", class: "link",
      onclick: () => { this.input.value = q; this.input.focus(); } }, q))));
  }
}
