// Networks, with each one's DHCP leases and ACLs (read when shown, again on a change).
import { api } from "../api.js";
import { useResource } from "../live.js";
import { Loading, Table, html } from "../ui.js";

async function loadNetworks() {
  const networks = await api("GET", "/network");
  return Promise.all(networks.map(async (network) => ({
    ...network,
    leases: await api("GET", `/network/${network.vni}/lease`).catch(() => []),
    acls: await api("GET", `/network/${network.vni}/acl`).catch(() => []),
  })));
}

const LEASES = [
  { key: "hostname", label: "Host", value: (l) => l.hostname || "" },
  { key: "ip4_address", label: "IPv4" },
  { key: "mac_address", label: "MAC" },
  { key: "timestamp", label: "Expires", render: (l) => (l.timestamp === "static" ? "static" : l.timestamp ? new Date(l.timestamp * 1000).toLocaleString() : "never") },
];
const ACLS = [
  { key: "direction", label: "Direction" },
  { key: "order", label: "Order" },
  { key: "description", label: "Description" },
  { key: "rule", label: "Rule", render: (a) => html`<code>${a.rule}</code>` },
];

export function Networks() {
  const state = useResource(["network"], loadNetworks);
  if (!state.data) return html`<section><h1>Networks</h1><${Loading} state=${state} /></section>`;
  return html`<section>
    <h1>Networks</h1>
    ${state.data.length === 0 && html`<p class="empty">No networks</p>`}
    ${state.data.map((n) => html`<article class="card wide" data-testid=${"network-" + n.vni}>
      <h2>${n.vni} ${n.description} <small>${n.type}${n.ip4?.network ? ", " + n.ip4.network : ""}</small></h2>
      <h3>Leases</h3><${Table} columns=${LEASES} rows=${n.leases} rowKey=${(l) => l.mac_address} empty="No leases" />
      <h3>ACLs</h3><${Table} columns=${ACLS} rows=${n.acls} rowKey=${(a) => a.direction + a.description} empty="No ACLs" />
    </article>`)}
  </section>`;
}
