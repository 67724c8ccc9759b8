// Active alerts: a header badge with the count of firing alerts and the Alerts tab listing them. Loaded from
// GET /api/alert, then kept current by the WebSocket's `Alert` namespace (one event per fire/resolve).
import * as api from "./api";
import { fill, fmtTime, h, text } from "./dom";

export interface AlertEvent {
  UUID: string; State: string; Name?: string; Expression?: string; Timestamp?: string; Time?: number;
  ReasonData?: unknown; ReasonCount?: number;
}

interface Active { uuid: string; name: string; expression: string; since: number; state: string; reasons: string; error: string }

export class AlertsPanel {
  private active = new Map<string, Active>();

  /** `showNodes`: reveal and highlight node IDs on the map (a row's "show on map"). */
  constructor(private root: HTMLElement, private badge: HTMLElement, private showNodes: (ids: string[]) => Promise<void>) {}

  /** Every alert of GET /api/alert whose Status.State is firing (or error: shown, as it is not evaluated). */
  async load(): Promise<void> {
    try {
      const r = await fetch("/api/alert");
      if (!r.ok) throw new Error(`${r.status}: ${await r.text()}`);
      const all: Record<string, any> = await r.json();
      this.active.clear();
      for (const a of Object.values(all)) {
        const st = a.Status ?? {};
        if (st.State !== "firing" && st.State !== "error") continue;
        this.active.set(a.UUID, { uuid: a.UUID, name: String(a.Name ?? a.UUID), expression: String(a.Expression ?? ""),
          since: Number(st.Since ?? 0), state: st.State,
          reasons: st.ReasonCount !== undefined ? `${st.ReasonCount} matching` : "", error: String(st.Error ?? "") });
      }
      this.render();
    } catch (e) {
      fill(this.root, h("p", { class: "err" }, `alerts: ${(e as Error).message}`));
    }
  }

  /** A WebSocket `Alert` event: firing adds the alert, resolved removes it. */
  apply(ev: AlertEvent): void {
    if (ev.State === "firing") {
      const n = ev.ReasonCount ?? (Array.isArray(ev.ReasonData) ? ev.ReasonData.length : undefined);
      this.active.set(ev.UUID, { uuid: ev.UUID, name: String(ev.Name ?? ev.UUID), expression: String(ev.Expression ?? ""),
        since: Number(ev.Time ?? (Date.parse(ev.Timestamp ?? "") || Date.now())), state: "firing", reasons: reasonText(ev.ReasonData, n), error: "" });
    } else {
      this.active.delete(ev.UUID);
    }
    this.render();
  }

  get firing(): number {
    return [...this.active.values()].filter((a) => a.state === "firing").length;
  }

  private render(): void {
    const n = this.firing;
    this.badge.textContent = n ? `${n} alert${n > 1 ? "s" : ""} firing` : "no alerts";
    this.badge.classList.toggle("firing", n > 0);
    const rows = [...this.active.values()].sort((a, b) => b.since - a.since);
    fill(this.root, h("h3", {}, `${n} firing`),
      rows.length ? h("table", { class: "grid", id: "alert-list" },
        h("tr", {}, ...["Alert", "State", "Since", "Expression", "Matching", ""].map((c) => h("th", {}, c))),
        ...rows.map((a) => h("tr", { class: `alert-${a.state}`, "data-uuid": a.uuid },
          h("td", { class: "name" }, a.name), h("td", { class: "state" }, a.state), h("td", {}, fmtTime(a.since)),
          h("td", { class: "mono" }, a.expression), h("td", {}, a.error || a.reasons),
          h("td", {}, h("button", { type: "button", class: "link", onclick: () => void this.show(a) }, "show on map")))))
        : h("p", { class: "hint" }, "No alert is firing. Alerts are defined with POST /api/alert (docs/alerts.md)."),
      h("p", { class: "result", id: "alert-show", role: "status" }));
  }

  /** Run the alert's expression now and put the nodes it answers on the map (edges, flows or a count: said). */
  private async show(a: Active): Promise<void> {
    const out = this.root.querySelector("#alert-show")!;
    try {
      const r = await api.gremlin(a.expression);
      const nodes = (Array.isArray(r) ? r : []).filter((x: any) => x && typeof x.ID === "string" && x.Metadata && !("Parent" in x));
      out.textContent = nodes.length ? `${a.name}: ${nodes.length} node(s) on the map` : `${a.name}: the expression answers no node now`;
      if (nodes.length) await this.showNodes(nodes.map((n: any) => n.ID));
    } catch (e) {
      out.textContent = `${a.name}: ${(e as Error).message}`;
    }
  }
}

/** What the expression matched when the alert fired: node names, else the count. */
function reasonText(data: unknown, n: number | undefined): string {
  if (!Array.isArray(data)) return text(data);
  const names = data.map((d: any) => d?.Metadata?.Name).filter((x) => typeof x === "string");
  return names.length ? names.slice(0, 5).join(", ") + (names.length > 5 ? ` (+${names.length - 5})` : "") : `${n} matching`;
}
