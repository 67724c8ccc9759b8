// The time slider: a window of the past (revision instants as ticks), an instant field, play forward/back
// through the revisions, and "Live" to return to the live map.
import * as api from "./api";
import { fill, fmtTime, h } from "./dom";

export class Timeline {
  private windowS = 900;
  private instants: number[] = [];
  private slider: HTMLInputElement;
  private field: HTMLInputElement;
  private label: HTMLElement;
  private ticks: HTMLDataListElement;
  private playing: number | null = null;
  current: number | undefined = undefined;
  onInstant: (at: number | undefined, before: number | undefined) => Promise<void> = async () => {};

  constructor(root: HTMLElement) {
    this.slider = h("input", { type: "range", id: "time-slider", min: 0, max: 1000, value: 1000, step: 1,
      list: "time-ticks", "aria-label": "Instant of the graph shown" });
    this.ticks = h("datalist", { id: "time-ticks" });
    this.field = h("input", { id: "time-at", size: 24, placeholder: "instant: ms, ISO 8601 or -5m",
      "aria-label": "Go to instant" });
    this.label = h("span", { id: "time-label", class: "live" }, "LIVE");
    const win = h("select", { "aria-label": "Window", onchange: (e: Event) => {
      this.windowS = Number((e.target as HTMLSelectElement).value); void this.loadInstants(); } },
      ...[[300, "5 min"], [900, "15 min"], [3600, "1 h"], [21600, "6 h"], [86400, "24 h"]].map(([v, t]) =>
        h("option", { value: v, selected: v === 900 }, String(t))));
    fill(root,
      h("button", { type: "button", id: "time-live", onclick: () => void this.goLive() }, "Live"), win,
      h("button", { type: "button", title: "previous revision", "aria-label": "previous revision", onclick: () => void this.step(-1) }, "◀"),
      h("button", { type: "button", id: "time-play", title: "play the window's revisions", onclick: () => this.togglePlay() }, "▶ play"),
      h("button", { type: "button", title: "next revision", "aria-label": "next revision", onclick: () => void this.step(1) }, "▶"),
      this.slider, this.ticks, this.field, this.label);
    this.slider.addEventListener("focus", () => void this.loadInstants(), { once: true });
    this.slider.addEventListener("change", () => void this.goTo(this.sliderTime()));
    this.field.addEventListener("keydown", (e) => {
      if (e.key === "Enter") void this.goTo(parseInstant(this.field.value));
    });
  }

  private bounds(): [number, number] {
    const now = Date.now();
    return [now - this.windowS * 1000, now];
  }

  private sliderTime(): number {
    const [a, b] = this.bounds();
    return a + (Number(this.slider.value) / 1000) * (b - a);
  }

  /** Instants at which something changed in the window (for ticks, play and "the instant before"). */
  async loadInstants(): Promise<void> {
    const [a, b] = this.bounds();
    const got = new Set<number>();
    for (const q of ["V().Values('@UpdatedAt')", "E().Values('@UpdatedAt')", "V().Values('@DeletedAt')", "E().Values('@DeletedAt')"]) {
      try {
        const r = await api.gremlin(`G.Context(${Math.round(b)}, ${this.windowS}).${q}`);
        for (const t of r || []) if (typeof t === "number" && t >= a && t <= b) got.add(t);
      } catch { /* history not available: the slider still works by instant */ }
    }
    this.instants = [...got].sort((x, y) => x - y);
    fill(this.ticks, ...this.instants.map((t) => h("option", { value: Math.round(((t - a) / (b - a)) * 1000) })));
  }

  async goTo(at: number | undefined): Promise<void> {
    if (at === undefined || isNaN(at)) { this.label.textContent = "bad instant"; return; }
    if (!this.instants.length) await this.loadInstants();
    const before = [...this.instants].reverse().find((t) => t < at);
    this.current = at;
    const [a, b] = this.bounds();
    this.slider.value = String(Math.max(0, Math.min(1000, Math.round(((at - a) / (b - a)) * 1000))));
    this.label.className = "past";
    this.label.textContent = fmtTime(at) + (before ? ` (changes since ${fmtTime(before)})` : "");
    await this.onInstant(at, before);
  }

  async goLive(): Promise<void> {
    this.stopPlay();
    this.current = undefined;
    this.instants = [];  // changes keep coming while live: the next trip into the past reads them again
    this.slider.value = "1000";
    this.label.className = "live";
    this.label.textContent = "LIVE";
    await this.onInstant(undefined, undefined);
  }

  private async step(dir: 1 | -1): Promise<boolean> {
    if (!this.instants.length) await this.loadInstants();
    const cur = this.current ?? Date.now();
    const next = dir > 0 ? this.instants.find((t) => t > cur) : [...this.instants].reverse().find((t) => t < cur);
    if (next === undefined) return false;
    await this.goTo(next);
    return true;
  }

  private togglePlay(): void {
    if (this.playing !== null) { this.stopPlay(); return; }
    const tick = async () => {
      if (this.playing === null) return;
      const moved = await this.step(1);
      if (!moved) { this.stopPlay(); return; }
      this.playing = window.setTimeout(tick, 1200);
    };
    this.playing = window.setTimeout(async () => {
      if (this.current === undefined && this.instants.length) await this.goTo(this.instants[0]);
      void tick();
    }, 0);
  }

  private stopPlay(): void {
    if (this.playing !== null) clearTimeout(this.playing);
    this.playing = null;
  }
}

/** "1733400000000", an ISO 8601 string, or a relative "-5m" / "-30s" / "-1h". */
export function parseInstant(s: string): number | undefined {
  const v = s.trim();
  if (/^\d+$/.test(v)) return Number(v) < 1e11 ? Number(v) * 1000 : Number(v);
  const rel = /^-(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(v);
  if (rel) return Date.now() - Number(rel[1]) * { ms: 1, s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[rel[2] as "s"];
  const t = Date.parse(v);
  return isNaN(t) ? undefined : t;
}
