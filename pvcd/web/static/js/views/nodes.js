// Nodes: their stats and health, flush/ready, primary handover, and each node's panels.
import { api } from "../api.js";
import { useStore } from "../live.js";
import { Panels } from "../panels.js";
import { healthLevel } from "../panels/health.js";
import { Action, Badge, Table, html, mib } from "../ui.js";

function actions(node) {
  const name = node.name;
  const path = (what) => `/node/${encodeURIComponent(name)}/${what}`;
  return html`<span class="actions">
    ${node.domain_state === "ready"
      ? html`<${Action} label="Flush" testid=${"flush-" + name} danger
          confirm=${`Flush ${name}: migrate all its VMs away?`}
          action=${() => api("POST", path("domain-state"), { "domain-state": "flush" })} />`
      : html`<${Action} label="Ready" testid=${"ready-" + name}
          action=${() => api("POST", path("domain-state"), { "domain-state": "ready" })} />`}
    ${node.coordinator_state !== "primary" && html`<${Action} label="Make primary"
        testid=${"primary-" + name} confirm=${`Hand the primary role over to ${name}?`}
        action=${() => api("POST", path("coordinator-state"), { "coordinator-state": "primary" })} />`}
  </span>`;
}

const COLUMNS = [
  { key: "name", label: "Name" },
  { key: "daemon_state", label: "Daemon", render: (n) => html`<${Badge} value=${n.daemon_state} />` },
  { key: "coordinator_state", label: "Coordinator", render: (n) => html`<${Badge} value=${n.coordinator_state} />` },
  { key: "domain_state", label: "Domains", render: (n) => html`<${Badge} value=${n.domain_state} />` },
  { key: "health", label: "Health", value: (n) => n.health ?? -1, render: (n) => html`<span
    class=${"health-" + healthLevel(n.health)}>${n.health ?? "–"}${n.health === null || n.health === undefined ? "" : "%"}</span>` },
  { key: "domains_count", label: "VMs" },
  { key: "load", label: "Load" },
  { key: "vcpu", label: "vCPUs", value: (n) => n.vcpu?.allocated, render: (n) => `${n.vcpu?.allocated ?? "–"} / ${n.vcpu?.total ?? "–"}` },
  { key: "memory", label: "Memory", value: (n) => n.memory?.allocated, render: (n) => `${mib(n.memory?.allocated)} / ${mib(n.memory?.total)}` },
  { key: "actions", label: "", value: () => 0, render: actions },
];

export function Nodes() {
  const store = useStore();
  const nodes = [...store.nodes.values()];
  return html`<section>
    <h1>Nodes</h1>
    <${Table} columns=${COLUMNS} rows=${nodes} rowKey=${(n) => n.name} testid="nodes" />
    ${nodes.map((node) => html`<${Panels} key=${node.name} where="node" node=${node} />`)}
  </section>`;
}
