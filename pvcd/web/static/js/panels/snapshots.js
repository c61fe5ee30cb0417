// A VM's snapshots (extensions.md §5): the list its document carries (kept current by the live
// stream), and take, roll back and remove, each a task (202) whose progress is shown until it
// ends. Rolling back and removing ask first; the API's refusals (no RBD disk, the VM running)
// are shown with its message.
import { useState } from "preact/hooks";
import { api } from "../api.js";
import { Action, Table, html } from "../ui.js";
import { useStartedTasks } from "./task.js";

const CONSISTENCY = ["auto", "freeze", "pause", "none"];
const path = (vm, what = "") => `/vm/${encodeURIComponent(vm.uuid)}/snapshot${what}`;

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const units = [[86400, "d"], [3600, "h"], [60, "min"]];
  for (const [size, unit] of units) if (seconds >= size) return `${Math.floor(seconds / size)} ${unit}`;
  return `${Math.floor(seconds)} s`;
}

export function VmSnapshotsPanel({ vm }) {
  const [name, setName] = useState("");
  const [consistency, setConsistency] = useState("auto");
  const [start, tasks] = useStartedTasks();
  const run = (what, method, where, values) => start(what, () => api(method, where, values));
  const columns = [
    { key: "name", label: "Snapshot" },
    { key: "timestamp", label: "Taken", render: (s) => new Date(s.timestamp * 1000).toLocaleString() },
    { key: "age", label: "Age", render: (s) => age(s.age) },
    { key: "consistency", label: "Consistency" },
    { key: "rbd_snapshots", label: "Disks", value: (s) => s.rbd_snapshots.length, render: (s) => s.rbd_snapshots.join(", ") },
    { key: "actions", label: "", value: () => 0, render: (s) => html`<span class="actions">
      <${Action} label="Roll back" danger testid=${"snapshot-rollback-" + s.name}
        confirm=${`Roll ${vm.name} back to snapshot ${s.name}? Its disks and definition return to that moment (newer data on its disks is lost); it must be stopped.`}
        action=${run(`Rollback to ${s.name}`, "POST", path(vm, "/rollback"), { snapshot_name: s.name })} />
      <${Action} label="Remove" danger testid=${"snapshot-remove-" + s.name}
        confirm=${`Remove snapshot ${s.name} of ${vm.name} and its RBD snapshots?`}
        action=${run(`Removal of ${s.name}`, "DELETE", path(vm), { snapshot_name: s.name })} /></span>` },
  ];
  const values = name ? { snapshot_name: name, consistency } : { consistency };
  return html`<article class="card wide" data-testid="vm-snapshots">
    <h2>Snapshots</h2>
    <p class="actions">
      <input value=${name} onInput=${(e) => setName(e.target.value)} placeholder="name (default: now)" data-testid="snapshot-name" />
      <select value=${consistency} onChange=${(e) => setConsistency(e.target.value)} data-testid="snapshot-consistency">
        ${CONSISTENCY.map((c) => html`<option value=${c}>${c}</option>`)}</select>
      <${Action} label="Take snapshot" testid="snapshot-take"
        action=${run(`Snapshot ${name || "(named now)"}`, "POST", path(vm), values)} />
    </p>
    ${tasks}
    <${Table} columns=${columns} rows=${vm.snapshots || []} rowKey=${(s) => s.name}
      testid="snapshots" initialSort=${{ key: "timestamp", dir: -1 }} empty="No snapshots" />
  </article>`;
}
