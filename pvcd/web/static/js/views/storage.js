// Storage: OSDs, pools, volumes and snapshots (a 510 "not configured" is shown as the API says).
import { api } from "../api.js";
import { useResource } from "../live.js";
import { Loading, Table, bytes, html } from "../ui.js";

async function loadStorage() {
  const [osds, pools, volumes, snapshots] = await Promise.all([
    api("GET", "/storage/ceph/osd"), api("GET", "/storage/ceph/pool"),
    api("GET", "/storage/ceph/volume"), api("GET", "/storage/ceph/snapshot")]);
  return { osds, pools, volumes, snapshots };
}

const OSDS = [
  { key: "id", label: "OSD" },
  { key: "node", label: "Node", value: (o) => o.node || "" },
  { key: "up", label: "Up", value: (o) => o.stats?.up, render: (o) => String(o.stats?.up ?? "–") },
  { key: "in", label: "In", value: (o) => o.stats?.in, render: (o) => String(o.stats?.in ?? "–") },
  { key: "used", label: "Used", value: (o) => o.stats?.used, render: (o) => o.stats?.used ?? "–" },
  { key: "pgs", label: "PGs", value: (o) => o.stats?.pgs, render: (o) => o.stats?.pgs ?? "–" },
];
const POOLS = [
  { key: "name", label: "Pool" },
  { key: "pgs", label: "PGs" },
  { key: "stored", label: "Stored", value: (p) => p.stats?.stored_bytes, render: (p) => bytes(p.stats?.stored_bytes) },
  { key: "free", label: "Free", value: (p) => p.stats?.free_bytes, render: (p) => bytes(p.stats?.free_bytes) },
  { key: "objects", label: "Objects", value: (p) => p.stats?.num_objects, render: (p) => p.stats?.num_objects ?? "–" },
];
const VOLUMES = [
  { key: "pool", label: "Pool" },
  { key: "name", label: "Volume" },
  { key: "size", label: "Size", value: (v) => v.stats?.size, render: (v) => bytes(v.stats?.size) },
];
const SNAPSHOTS = [
  { key: "pool", label: "Pool" },
  { key: "volume", label: "Volume" },
  { key: "snapshot", label: "Snapshot" },
];

export function Storage() {
  const state = useResource(["storage"], loadStorage);
  if (!state.data) return html`<section><h1>Storage</h1><${Loading} state=${state} /></section>`;
  const { osds, pools, volumes, snapshots } = state.data;
  return html`<section>
    <h1>Storage</h1>
    <h2>OSDs</h2><${Table} columns=${OSDS} rows=${osds} rowKey=${(o) => o.id} testid="osds" />
    <h2>Pools</h2><${Table} columns=${POOLS} rows=${pools} rowKey=${(p) => p.name} testid="pools" />
    <h2>Volumes</h2><${Table} columns=${VOLUMES} rows=${volumes} rowKey=${(v) => v.pool + "/" + v.name} />
    <h2>Snapshots</h2><${Table} columns=${SNAPSHOTS} rows=${snapshots} rowKey=${(s) => `${s.pool}/${s.volume}@${s.snapshot}`} />
  </section>`;
}
