// A task started from the page (a 202 with `task_id`, extensions.md §1), followed to its end:
// its state, its progress and its final message, read again on every `task` event.
import { api } from "../api.js";
import { useResource } from "../live.js";
import { Badge, html } from "../ui.js";

export function TaskProgress({ id, what, onClose }) {
  const state = useResource(["task"], () => api("GET", `/tasks/${encodeURIComponent(id)}`), [id]);
  const task = state.data;
  const p = task?.progress || {};
  const finished = task && (task.state === "success" || task.state === "failure");
  const text = finished ? task.message : p.message;
  return html`<div class=${"task-progress" + (task?.state === "failure" ? " error" : "")}
      data-testid="task-progress" data-state=${task?.state || "unknown"}>
    <strong>${what}</strong> ${task ? html`<${Badge} value=${task.state} />` : "…"}
    ${!finished && p.total ? html` <progress max=${p.total} value=${p.current || 0} /> ${p.current || 0}/${p.total}` : ""}
    ${text && html` <span data-testid="task-message">${text}</span>`}
    ${state.error && html` <span class="error">${state.error}</span>`}
    ${finished && html` <button onClick=${onClose}>×</button>`}
  </div>`;
}
