// A VM's devices (extensions.md §11.2): its disks and network interfaces as its document lists
// them, each detachable (asked first), and any libvirt device element attached from its XML.
// On a running VM each change is a task on its node (`vm.device_attach` / `vm.device_detach`),
// followed here; on a stopped one only its stored XML changes (200, shown as a notice).
import { useState } from "preact/hooks";
import { api } from "../api.js";
import { Action, Table, html } from "../ui.js";
import { useStartedTasks } from "./task.js";

const path = (vm) => `/vm/${encodeURIComponent(vm.uuid)}/device`;
// what names a device to detach: a disk its target, an interface its MAC (the API's matching)
const escape = (text) => String(text).replace(/[&<>'"]/g, (c) => `&#${c.charCodeAt(0)};`);
const diskXml = (disk) => `<disk><target dev='${escape(disk.dev)}'/></disk>`;
const nicXml = (nic) => `<interface type='${escape(nic.type)}'><mac address='${escape(nic.mac)}'/></interface>`;

export function VmDevicesPanel({ vm }) {
  const [xml, setXml] = useState("");
  const [start, tasks] = useStartedTasks();
  const change = (what, method, device) => start(what, () => api(method, path(vm), { xml: device }));
  const detach = (label, device, testid) => html`<${Action} label="Detach" danger testid=${testid}
    confirm=${`Detach ${label} from ${vm.name}?`} action=${change(`Detach ${label}`, "DELETE", device)} />`;
  const devices = [
    ...(vm.disks || []).map((d) => ({ id: "disk " + d.dev, what: `${d.bus || ""} ${d.type}`, source: d.name || "–",
      action: detach("disk " + d.dev, diskXml(d), "detach-disk-" + d.dev) })),
    ...(vm.networks || []).map((n) => ({ id: "interface " + n.mac, what: `${n.type} ${n.model || ""}`, source: n.source || "–",
      action: detach("interface " + n.mac, nicXml(n), "detach-nic-" + n.mac) })),
  ];
  const columns = [{ key: "id", label: "Device" }, { key: "what", label: "Kind" },
    { key: "source", label: "Source" }, { key: "action", label: "", value: () => 0, render: (d) => d.action }];
  return html`<article class="card wide" data-testid="vm-devices">
    <h2>Devices</h2>
    <${Table} columns=${columns} rows=${devices} rowKey=${(d) => d.id} testid="devices" empty="No disks or interfaces" />
    <textarea class="device-xml" rows="3" value=${xml} onInput=${(e) => setXml(e.target.value)} data-testid="device-xml"
      placeholder="<disk type='file' device='disk'>…</disk> (a libvirt device element)" />
    <p class="actions"><${Action} label="Attach" testid="device-attach" action=${change("Attach device", "POST", xml)} /></p>
    ${tasks}
  </article>`;
}
