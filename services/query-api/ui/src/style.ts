// How the map draws nodes and edges: colours and shapes by Type, borders by State and captures, edges by
// RelationType, and the classes the time slider and the flow path use.
import type cytoscape from "cytoscape";

const TYPE_COLOURS: Record<string, string> = {
  host: "#e8eef7", netns: "#f3f0e6", container: "#e6f3ee", device: "#4e79a7", veth: "#59a14f", bridge: "#f28e2b", ovsbridge: "#e15759",
  ovsport: "#ff9da7", internal: "#b07aa1", vlan: "#76b7b2", bond: "#9c755f", tun: "#bab0ac", tap: "#bab0ac",
  vxlan: "#edc948", gre: "#edc948", geneve: "#edc948", patch: "#b07aa1", loopback: "#999999", switch: "#4e79a7",
};
const TYPE_SHAPES: Record<string, string> = {
  device: "round-rectangle", veth: "ellipse", bridge: "diamond", ovsbridge: "hexagon", ovsport: "round-tag",
  internal: "round-triangle", vlan: "round-pentagon", bond: "octagon", vxlan: "vee", gre: "vee", geneve: "vee",
  patch: "rhomboid", loopback: "ellipse",
};

export function colourOf(type: string): string {
  return TYPE_COLOURS[type] ?? "#8c8c8c";
}

export function shapeOf(type: string): string {
  return TYPE_SHAPES[type] ?? "ellipse";
}

export const STYLE: cytoscape.StylesheetJson = [
  { selector: "node", style: {
    label: "data(label)", "font-size": 10, "text-valign": "bottom", "text-margin-y": 3, width: 22, height: 22,
    "background-color": "data(colour)", shape: "data(shape)" as any, "border-width": 1, "border-color": "#333",
    "min-zoomed-font-size": 5, "text-max-width": "110px", "text-wrap": "ellipsis",
  } },
  { selector: "node.up", style: { "border-color": "#1a7f37", "border-width": 2 } },
  { selector: "node.down", style: { opacity: 0.55, "border-style": "dotted" } },
  { selector: "node.captured", style: { "border-color": "#0969da", "border-width": 4, "border-style": "double" } },
  { selector: "node.capture-error", style: { "border-color": "#cf222e", "border-width": 4, "border-style": "dashed" } },
  { selector: "node.group", style: {
    shape: "round-rectangle", "background-opacity": 0.6, "text-valign": "top", "text-halign": "center",
    "font-size": 12, "font-weight": "bold", "border-color": "#6e7781", padding: "14px", "text-margin-y": -4,
  } },
  { selector: "node.group.netns", style: { "border-style": "dashed" } },
  { selector: "node.group.container", style: { "border-color": "#1f883d", "border-width": 2 } },
  { selector: "node.group.collapsed", style: {
    width: "data(size)", height: "data(size)", "text-valign": "center", "font-size": 11, "text-wrap": "wrap",
    "background-opacity": 1, "border-width": 2,
  } },
  { selector: "edge", style: {
    width: 1.5, "line-color": "#57606a", "curve-style": "bezier", "target-arrow-shape": "none", opacity: 0.85,
  } },
  { selector: "edge.ownership", style: { "line-color": "#afb8c1", width: 1, "target-arrow-shape": "triangle",
    "arrow-scale": 0.6, "target-arrow-color": "#afb8c1" } },
  { selector: "edge.layer2", style: { "line-color": "#24292f", width: 2 } },
  { selector: "edge.patch", style: { "line-color": "#8250df", "line-style": "dotted", width: 2.5 } },
  { selector: "edge.tunnel", style: { "line-color": "#bf8700", "line-style": "dashed", width: 3 } },
  { selector: "edge.meta", style: { "line-color": "#8c959f", width: "data(width)", label: "data(label)",
    "font-size": 9, "text-background-color": "#fff", "text-background-opacity": 0.8 } },
  { selector: "edge.meta.tunnel", style: { "line-color": "#bf8700", "line-style": "dashed" } },
  { selector: "edge.meta.patch", style: { "line-color": "#8250df", "line-style": "dotted" } },
  { selector: ".added", style: { "overlay-color": "#2da44e", "overlay-opacity": 0.35, "overlay-padding": 6 } },
  { selector: ".changed", style: { "overlay-color": "#d4a72c", "overlay-opacity": 0.4, "overlay-padding": 6 } },
  { selector: ".removed", style: { opacity: 0.35, "border-style": "dashed", "border-color": "#cf222e",
    "line-style": "dashed", "line-color": "#cf222e", "border-width": 2 } },
  { selector: ".path", style: { "overlay-color": "#fb8f44", "overlay-opacity": 0.45, "overlay-padding": 8,
    "line-color": "#fb8f44", width: 5, "z-index": 20 } },
  { selector: ".found", style: { "overlay-color": "#0969da", "overlay-opacity": 0.3, "overlay-padding": 8 } },
  { selector: "node:selected", style: { "overlay-color": "#0969da", "overlay-opacity": 0.25, "overlay-padding": 6 } },
];
