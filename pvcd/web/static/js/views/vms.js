// VMs: a list with a filter and sortable columns (kept fast at 1,000s of VMs: one filter pass
// and one memoised sort per change), and a VM's details with its state actions and migration.
import { useMemo, useState } from "preact/hooks";
import { api } from "../api.js";
import { useStore } from "../live.js";
import { Panels } from "../panels.js";
import { Action, Badge, Table, html, mib } from "../ui.js";

const COLUMNS = [
  { key: "name", label: "Name", render: (vm) => html`<a href=${"#/vms/" + encodeURIComponent(vm.name)}>${vm.name}</a>` },
  { key: "state", label: "State", render: (vm) => html`<${Badge} value=${vm.state} />` },
  { key: "node", label: "Node" },
  { key: "vcpu", label: "vCPUs" },
  { key: "memory", label: "Memory", render: (vm) => mib(vm.memory) },
  { key: "description", label: "Description", value: (vm) => vm.description || "" },
];

export function Vms() {
  const store = useStore();
  const [filter, setFilter] = useState("");
  const vms = useMemo(() => {
    const words = filter.toLowerCase().split(/\s+/).filter(Boolean);
    const all = [...store.vms.values()];
    if (!words.length) return all;
    return all.filter((vm) => {
      const text = `${vm.name} ${vm.state} ${vm.node} ${vm.description || ""}`.toLowerCase();
      return words.every((word) => text.includes(word));
    });
  }, [store.vms, filter]);
  return html`<section>
    <h1>VMs <small>${vms.length} of ${store.vms.size}</small></h1>
    <input class="filter" type="search" placeholder="Filter by name, state, node…" value=${filter}
      onInput=${(e) => setFilter(e.target.value)} data-testid="vm-filter" />
    <${Table} columns=${COLUMNS} rows=${vms} rowKey=${(vm) => vm.uuid} testid="vms" empty="No VMs" />
  </section>`;
}

const path = (vm, what) => `/vm/${encodeURIComponent(vm.name)}/${what}`;

function stateAction(vm, state, label, confirm) {
  return html`<${Action} label=${label} testid=${`vm-${state}`} danger=${!!confirm}
    confirm=${confirm} action=${() => api("POST", path(vm, "state"), { state })} />`;
}

function Migrate({ vm, nodes }) {
  const targets = nodes.filter((n) => n.name !== vm.node);
  const [chosen, setTarget] = useState("");
  const target = targets.some((n) => n.name === chosen) ? chosen : ""; // (the VM may have moved)
  const values = target ? { action: "migrate", node: target } : { action: "migrate" };
  return html`<span class="migrate">
    <select value=${target} onChange=${(e) => setTarget(e.target.value)} data-testid="migrate-target">
      <option value="">(chosen by the cluster)</option>
      ${targets.map((n) => html`<option value=${n.name}>${n.name}</option>`)}
    </select>
    <${Action} label="Migrate" testid="vm-migrate" action=${() => api("POST", path(vm, "node"), values)}
      confirm=${`Migrate ${vm.name} to ${target || "a node the cluster chooses"}?`} />
  </span>`;
}

export function VmDetails({ name }) {
  const store = useStore();
  const vm = [...store.vms.values()].find((v) => v.name === name || v.uuid === name);
  if (!vm) return html`<section><h1>VM ${name}</h1><p class="empty">No such VM (yet).</p></section>`;
  const fields = [["UUID", vm.uuid], ["State", html`<${Badge} value=${vm.state} />`],
    ["Node", vm.node], ["Last node", vm.last_node || "–"], ["Running on", vm.running_on || "–"],
    ["vCPUs", vm.vcpu], ["Memory", mib(vm.memory)], ["Description", vm.description || "–"],
    ["Failure", vm.failed_reason || "–"],
    ["Networks", (vm.networks || []).map((n) => `${n.source} (${n.mac})`).join(", ") || "–"],
    ["Disks", (vm.disks || []).map((d) => d.name).join(", ") || "–"]];
  return html`<section>
    <h1>VM ${vm.name} <${Badge} value=${vm.state} /></h1>
    <p class="actions" data-testid="vm-actions">
      ${stateAction(vm, "start", "Start")}
      ${stateAction(vm, "shutdown", "Shut down", `Shut ${vm.name} down (ACPI)?`)}
      ${stateAction(vm, "stop", "Stop", `Stop ${vm.name} at once (power off)?`)}
      ${stateAction(vm, "restart", "Restart", `Restart ${vm.name}?`)}
      <${Migrate} vm=${vm} nodes=${[...store.nodes.values()]} />
      ${vm.migrated && html`<${Action} label="Unmigrate" testid="vm-unmigrate"
        confirm=${`Return ${vm.name} to ${vm.last_node}?`}
        action=${() => api("POST", path(vm, "node"), { action: "unmigrate" })} />`}
    </p>
    <dl class="fields">${fields.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>
    <${Panels} where="vm" vm=${vm} />
  </section>`;
}
