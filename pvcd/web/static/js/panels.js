// Extension points of the dashboard: panels that other parts of pvcd add to a view, each
// registered in this one place. A panel is a component given the view's object:
//   "overview": ({ store })          the cluster overview (e.g. the health and faults panel)
//   "node":     ({ node })           a node's details (e.g. its health checks, its log)
//   "vm":       ({ vm })             a VM's details (e.g. its console log, its snapshots)
// Kinds the live stream sends that such panels may reload on (useResource): "health" (node
// health, faults), "console" (VM console logs, keyed by VM uuid), "log" (node logs).
import { html } from "./ui.js";

export const PANELS = {
  overview: [],
  node: [],
  vm: [],
};

export function Panels({ where, ...props }) {
  return PANELS[where].map((Panel) => html`<${Panel} ...${props} />`);
}
