// /ws/subscriber in Skydive's envelope; reconnects after a drop (and asks the page to reload the map).

export interface Envelope { Namespace: string; Type: string; UUID?: string; Status?: number; Obj: any }

export class LiveFeed {
  private ws: WebSocket | null = null;
  private closed = false;
  onEvent: (ev: Envelope) => void = () => {};
  /** Events of the `Alert` namespace (an alert fired or resolved). */
  onAlert: (ev: Envelope) => void = () => {};
  onState: (connected: boolean, reconnected: boolean) => void = () => {};
  private everConnected = false;

  start(): void {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws/subscriber`);
    this.ws = ws;
    ws.onopen = () => { this.onState(true, this.everConnected); this.everConnected = true; };
    ws.onmessage = (m) => {
      let ev: Envelope;
      try { ev = JSON.parse(m.data); } catch { return; }
      if (ev && ev.Namespace === "Graph") this.onEvent(ev);
      else if (ev && ev.Namespace === "Alert") this.onAlert(ev);
    };
    ws.onclose = () => {
      this.onState(false, false);
      if (!this.closed) setTimeout(() => this.start(), 2000);
    };
  }

  stop(): void {
    this.closed = true;
    this.ws?.close();
  }
}
