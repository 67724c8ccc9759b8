// Small time-series charts as SVG (built with DOM calls, no markup strings).

const NS = "http://www.w3.org/2000/svg";

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>): SVGElementTagNameMap[K] {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

export interface Point { t: number; v: number }

/** A sparkline of `points` (time in ms, value) with its title and last value. */
export function sparkline(title: string, points: Point[], unit = ""): HTMLElement {
  const box = document.createElement("figure");
  box.className = "chart";
  const cap = document.createElement("figcaption");
  const last = points.length ? points[points.length - 1].v : NaN;
  cap.textContent = `${title}: ${isNaN(last) ? "no data" : fmt(last) + unit}`;
  box.append(cap);
  const W = 220, H = 44;
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": cap.textContent });
  s.append(svg("rect", { x: 0, y: 0, width: W, height: H, fill: "#f6f8fa" }));
  if (points.length >= 2) {
    const t0 = points[0].t, t1 = points[points.length - 1].t || t0 + 1;
    const vmax = Math.max(...points.map((p) => p.v), 1e-9);
    const xy = points.map((p) => [((p.t - t0) / Math.max(1, t1 - t0)) * (W - 4) + 2, H - 3 - (p.v / vmax) * (H - 8)]);
    s.append(svg("polyline", { points: xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "),
      fill: "none", stroke: "#0969da", "stroke-width": 1.5 }));
  } else if (points.length === 1) {
    s.append(svg("circle", { cx: W - 4, cy: H / 2, r: 3, fill: "#0969da" }));
  }
  box.append(s);
  return box;
}

function fmt(v: number): string {
  if (v >= 1e9) return (v / 1e9).toFixed(2) + " G";
  if (v >= 1e6) return (v / 1e6).toFixed(2) + " M";
  if (v >= 1e3) return (v / 1e3).toFixed(2) + " k";
  return v.toFixed(v >= 10 || Number.isInteger(v) ? 0 : 2);
}

/** Rates per second from successive interface metrics (each covers [Start, Last]). */
export function rates(metrics: Record<string, any>[], key: string): Point[] {
  const out: Point[] = [];
  const seen = new Set<number>();
  for (const m of [...metrics].sort((a, b) => (a.Last ?? 0) - (b.Last ?? 0))) {
    const dt = ((m.Last ?? 0) - (m.Start ?? 0)) / 1000;
    if (typeof m[key] !== "number" || !m.Last || seen.has(m.Last)) continue;
    seen.add(m.Last);
    out.push({ t: m.Last, v: dt > 0 ? m[key] / dt : m[key] });
  }
  return out;
}
