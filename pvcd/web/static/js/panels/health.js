// The overview's health panel (extensions.md §8): the cluster's health figure and the faults
// that lower it (GET /status), maintenance mode with its switch (POST /maintenance), and the
// fault list (GET /faults) with acknowledge and delete, one or all. Read again on every `health`
// event (a fault or a node's checks changed) and `cluster` event (maintenance is cluster state).
import { api } from "../api.js";
import { useResource } from "../live.js";
import { Action, Badge, Loading, Table, html } from "../ui.js";

// PVC's colours: above 90 good, above 50 degraded, else bad
export function healthLevel(health) {
  if (health === null || health === undefined) return "unknown";
  return health > 90 ? "good" : health > 50 ? "degraded" : "bad";
}

async function loadHealth() {
  const [status, faults] = await Promise.all([api("GET", "/status"), api("GET", "/faults")]);
  return { status, faults };
}

const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "–");
const faultPath = (fault) => `/faults/${encodeURIComponent(fault.id)}`;

const COLUMNS = [
  { key: "id", label: "Fault", render: (f) => html`<code>${f.id}</code>` },
  { key: "status", label: "Status", render: (f) => html`<${Badge} value=${f.status} />${f.active ? "" : html` <small>(cleared)</small>`}` },
  { key: "health_delta", label: "Delta" },
  { key: "message", label: "Message" },
  { key: "first_reported", label: "First reported", render: (f) => when(f.first_reported) },
  { key: "last_reported", label: "Last reported", render: (f) => when(f.last_reported) },
  { key: "actions", label: "", value: () => 0, render: (f) => html`<span class="actions">
    ${f.status === "new" && html`<${Action} label="Acknowledge" testid=${"ack-" + f.id}
      action=${() => api("PUT", faultPath(f))} />`}
    <${Action} label="Delete" danger testid=${"delete-" + f.id}
      confirm=${`Delete fault ${f.id}? (It is raised again if its condition persists.)`}
      action=${() => api("DELETE", faultPath(f))} /></span>` },
];

function Maintenance({ on }) {
  return html`<div class="card" data-testid="maintenance-card"><h2>Maintenance</h2>
    <p class=${"big " + (on ? "warn" : "")} data-testid="maintenance">${on ? "on" : "off"}</p>
    <p><small>${on ? "fencing and new faults are suspended" : "fencing and fault checks are active"}</small></p>
    <${Action} label=${on ? "Turn off" : "Turn on"} testid="maintenance-toggle" danger=${!on}
      confirm=${on ? null : "Turn maintenance mode on? Dead nodes are not fenced and no faults are raised until it is turned off."}
      action=${() => api("POST", "/maintenance", { state: on ? "off" : "on" })} /></div>`;
}

export function HealthPanel() {
  const state = useResource(["health", "cluster"], loadHealth);
  if (!state.data) return html`<section><h2>Health</h2><${Loading} state=${state} /></section>`;
  const { status, faults } = state.data;
  const { health, messages } = status.cluster_health;
  const unacknowledged = faults.filter((f) => f.status === "new").length;
  return html`<section class="health-panel">
    ${state.error && html`<p class="error">${state.error}</p>`}
    <div class="cards">
      <div class="card health-card"><h2>Health</h2>
        <p class=${"big health-" + healthLevel(health)} data-testid="cluster-health">${health}%</p>
        ${messages.length
          ? html`<ul class="reasons" data-testid="health-reasons">${messages.map((m) => html`
              <li><code>${m.id}</code> −${m.health_delta}: ${m.text}</li>`)}</ul>`
          : html`<p><small>no unacknowledged faults</small></p>`}</div>
      <${Maintenance} on=${status.maintenance} />
    </div>
    <h2 class="section">Faults <small>${faults.length} (${unacknowledged} new)</small></h2>
    <p class="actions">
      ${unacknowledged > 0 && html`<${Action} label="Acknowledge all" testid="ack-all"
        action=${() => api("PUT", "/faults")} />`}
      ${faults.length > 0 && html`<${Action} label="Delete all" danger testid="delete-all"
        confirm=${`Delete all ${faults.length} faults? (Those whose condition persists are raised again.)`}
        action=${() => api("DELETE", "/faults")} />`}
    </p>
    <${Table} columns=${COLUMNS} rows=${faults} rowKey=${(f) => f.id} testid="faults"
      initialSort=${{ key: "last_reported", dir: -1 }} empty="No faults" />
  </section>`;
}
