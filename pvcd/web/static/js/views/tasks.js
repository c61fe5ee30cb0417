// Tasks and storage requests, newest first, with their progress (any task kind: the progress
// object is the same for all, extensions.md §1.1), what they work on, and why one failed.
import { api } from "../api.js";
import { useResource } from "../live.js";
import { Badge, Loading, Table, html } from "../ui.js";

function progress(task) {
  const p = task.progress || {};
  const total = p.total || task.total || 0;
  const current = p.current ?? task.current ?? 0;
  const text = task.state === "failure" ? task.message || p.message : p.message || task.message || "";
  return html`<span class="progress">${total ? html`<progress max=${total} value=${current} /> ${current}/${total}` : ""} ${text}</span>`;
}

// what a task works on, in words: a VM's name (and its snapshot), else its objects
function subject(task) {
  const args = task.args || {};
  const vm = args.name ?? args.vm; // (snapshot tasks: name and uuid; device tasks: vm, a name)
  if (vm && args.snapshot_name) return `${vm} @ ${args.snapshot_name}`;
  return vm || (task.objects || []).join(", ");
}

const COLUMNS = [
  { key: "created", label: "Created", render: (t) => (t.created ? new Date(t.created * 1000).toLocaleString() : "–") },
  { key: "name", label: "Task", value: (t) => t.name || t.op },
  { key: "for", label: "For", value: (t) => subject(t), render: (t) => subject(t) },
  { key: "state", label: "State", render: (t) => html`<${Badge} value=${t.state} />` },
  { key: "progress", label: "Progress", value: (t) => t.progress?.current ?? 0, render: progress },
  { key: "run_on", label: "Node", value: (t) => t.run_on || t.executor || "" },
];

export function Tasks() {
  const state = useResource(["task", "storage"], () => api("GET", "/tasks"));
  if (!state.data) return html`<section><h1>Tasks</h1><${Loading} state=${state} /></section>`;
  return html`<section>
    <h1>Tasks</h1>
    <${Table} columns=${COLUMNS} rows=${state.data} rowKey=${(t) => t.id} testid="tasks"
      initialSort=${{ key: "created", dir: -1 }} empty="No tasks" />
  </section>`;
}
