// The cluster at a glance: primary, nodes, VMs by state, storage use, and extension panels.
import { api } from "../api.js";
import { useResource, useStore } from "../live.js";
import { Panels } from "../panels.js";
import { Badge, bytes, html, mib } from "../ui.js";

export function Overview() {
  const store = useStore();
  const nodes = [...store.nodes.values()];
  const primary = nodes.find((n) => n.coordinator_state === "primary");
  const byState = {};
  for (const vm of store.vms.values()) byState[vm.state] = (byState[vm.state] || 0) + 1;
  const pools = useResource(["storage"], () => api("GET", "/storage/ceph/pool").catch(() => null));
  const memory = nodes.reduce((sum, n) => ({ total: sum.total + (n.memory?.total || 0),
    allocated: sum.allocated + (n.memory?.allocated || 0) }), { total: 0, allocated: 0 });
  return html`<section class="overview">
    <h1>Cluster</h1>
    <div class="cards">
      <div class="card"><h2>Primary</h2><p class="big" data-testid="primary">${primary ? primary.name : "none"}</p></div>
      <div class="card"><h2>Nodes</h2><p class="big" data-testid="node-count">${nodes.length}</p>
        <p>${nodes.map((n) => html`<span class="node-pill"><a href="#/nodes">${n.name}</a> <${Badge} value=${n.daemon_state} /> <${Badge} value=${n.domain_state} /></span>`)}</p></div>
      <div class="card"><h2>VMs</h2><p class="big" data-testid="vm-count">${store.vms.size}</p>
        <p>${Object.entries(byState).sort().map(([state, count]) => html`<span class="node-pill"><${Badge} value=${state} /> ${count}</span>`)}</p></div>
      <div class="card"><h2>Memory</h2><p class="big">${mib(memory.allocated)}</p><p>allocated of ${mib(memory.total)}</p></div>
      <div class="card"><h2>Storage</h2>${pools.data
        ? html`<p class="big">${bytes(pools.data.reduce((s, p) => s + (p.stats?.size_bytes || 0), 0))}</p><p>stored in ${pools.data.length} pools</p>`
        : html`<p>no Ceph storage</p>`}</div>
    </div>
    <${Panels} where="overview" store=${store} />
  </section>`;
}
