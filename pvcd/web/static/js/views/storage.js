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

// the fields as `pvc storage osd list` and `pool list` show them (pvcd/cli/storage.py)
const stat = (key) => (row) => row.stats?.[key];
const percent = (value) => (typeof value === "number" ? value.toFixed(1) : "–");
const OSDS = [
  { key: "id", label: "OSD" },
  { key: "node", label: "Node", value: (o) => o.node || o.stats?.node || "", render: (o) => o.node || o.stats?.node || "–" },
  { key: "device", label: "Device", value: (o) => o.device || "" },
  { key: "up", label: "Up", value: stat("up"), render: (o) => String(o.stats?.up ?? "–") },
  { key: "in", label: "In", value: stat("in"), render: (o) => String(o.stats?.in ?? "–") },
  { key: "pgs", label: "PGs", value: stat("pgs"), render: (o) => o.stats?.pgs ?? "–" },
  { key: "used", label: "Used", value: stat("used"), render: (o) => bytes(o.stats?.used) },
  { key: "avail", label: "Available", value: stat("avail"), render: (o) => bytes(o.stats?.avail) },
  { key: "utilization", label: "Use %", value: stat("utilization"), render: (o) => percent(o.stats?.utilization) },
  { key: "state", label: "State", value: (o) => String(o.stats?.state ?? ""), render: (o) => String(o.stats?.state ?? "–") },
];
const POOLS = [
  { key: "name", label: "Pool" },
  { key: "pgs", label: "PGs" },
  { key: "size", label: "Stored", value: stat("size_bytes"), render: (p) => bytes(p.stats?.size_bytes) },
  { key: "objects", label: "Objects", value: stat("num_objects"), render: (p) => p.stats?.num_objects ?? "–" },
  { key: "degraded", label: "Degraded", value: stat("num_objects_degraded"), render: (p) => p.stats?.num_objects_degraded ?? "–" },
  { key: "unfound", label: "Unfound", value: stat("num_objects_unfound"), render: (p) => p.stats?.num_objects_unfound ?? "–" },
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
