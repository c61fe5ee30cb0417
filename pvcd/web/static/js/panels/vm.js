// A VM's panels besides its snapshots: its metadata and tags (the fields of GET /vm/<vm>/meta
// and /vm/<vm>/tags, which its document carries and the live stream keeps current), tags added
// and removed (POST /vm/<vm>/tags), and its serial console (GET /vm/<vm>/console), followed
// while shown.
import { useState } from "preact/hooks";
import { api } from "../api.js";
import { Action, html } from "../ui.js";
import { LogTail } from "./tail.js";

const tagsPath = (vm) => `/vm/${encodeURIComponent(vm.uuid)}/tags`;

function Tags({ vm }) {
  const [tag, setTag] = useState("");
  const [protect, setProtect] = useState(false);
  const tags = vm.tags || [];
  return html`<div data-testid="vm-tags">
    ${tags.length === 0 && html`<span class="empty">no tags</span>`}
    ${tags.map((t) => html`<span class="tag" data-tag=${t.name}>${t.name}${t.protected ? " 🔒" : ""}
      <${Action} label="×" testid=${"tag-remove-" + t.name} confirm=${`Remove tag ${t.name} from ${vm.name}?`}
        action=${() => api("POST", tagsPath(vm), { action: "remove", tag: t.name })} /></span>`)}
    <span class="tag-add">
      <input value=${tag} onInput=${(e) => setTag(e.target.value)} placeholder="new tag" data-testid="tag-name" />
      <label><input type="checkbox" checked=${protect} onChange=${(e) => setProtect(e.target.checked)} /> protected</label>
      <${Action} label="Add tag" testid="tag-add" action=${() => api("POST", tagsPath(vm),
        protect ? { action: "add", tag, protected: "true" } : { action: "add", tag })} />
    </span></div>`;
}

export function VmMetaPanel({ vm }) {
  const fields = [["Node limit", (vm.node_limit || []).join(", ") || "any node"],
    ["Node selector", vm.node_selector], ["Autostart", vm.node_autostart ? "yes" : "no"],
    ["Migration method", vm.migration_method],
    ["Max downtime", `${vm.migration_max_downtime} ms`], ["Profile", vm.profile || "–"]];
  return html`<article class="card wide" data-testid="vm-meta">
    <h2>Metadata and tags</h2>
    <dl class="fields">${fields.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>
    <${Tags} vm=${vm} />
  </article>`;
}

export function VmConsolePanel({ vm }) {
  return html`<article class="card wide" data-testid="vm-console-panel">
    <h2>Console</h2>
    <${LogTail} kind="console" id=${vm.uuid} testid="vm-console"
      path=${`/vm/${encodeURIComponent(vm.uuid)}/console`}
      empty="No console output. pvcd keeps a VM's serial console when its domain logs it to a file (<serial><log file=…/>) in the node's console log directory; this one has none, or printed nothing yet." />
  </article>`;
}
