// Extension points of the dashboard: panels that other parts of pvcd add to a view, each
// registered in this one place. A panel is a component given the view's object:
//   "overview": ({ store })          the cluster overview (the health and faults panel)
//   "node":     ({ node })           a node's details (its health checks, its log)
//   "vm":       ({ vm })             a VM's details (metadata and tags, snapshots, devices, console)
// Kinds the live stream sends that such panels may reload on (useResource): "health" (node
// health, faults), "task"; and, only while followed (`store.follow`, see panels/tail.js),
// "console" (VM console logs, keyed by VM uuid) and "log" (node logs, keyed by node name).
import { html } from "./ui.js";
import { HealthPanel } from "./panels/health.js";
import { NodePanel } from "./panels/node.js";
import { VmDevicesPanel } from "./panels/devices.js";
import { VmSnapshotsPanel } from "./panels/snapshots.js";
import { VmConsolePanel, VmMetaPanel } from "./panels/vm.js";

export const PANELS = {
  overview: [HealthPanel],
  node: [NodePanel],
  vm: [VmMetaPanel, VmSnapshotsPanel, VmDevicesPanel, VmConsolePanel],
};

export function Panels({ where, ...props }) {
  return PANELS[where].map((Panel) => html`<${Panel} ...${props} />`);
}
