// A task started from the page (a 202 with `task_id`, extensions.md §1), followed to its end:
// its state, its progress and its final message, read again on every `task` event.
import { useState } from "preact/hooks";
import { api } from "../api.js";
import { useResource } from "../live.js";
import { Badge, feedback, html } from "../ui.js";

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

// Tasks a panel starts: `start(what, request)` is an Action's action (request: the API call);
// an answer with a `task_id` (202) is followed, any other (a 200: done at once, e.g. a change
// to a VM that does not run) is shown as a notice. `shown`: their progress, to render.
export function useStartedTasks() {
  const [tasks, setTasks] = useState([]);
  const start = (what, request) => async () => {
    const answer = await request();
    if (answer?.task_id) setTasks((old) => [...old, { id: answer.task_id, what }]);
    else if (answer?.message) feedback.show(answer.message, "ok");
  };
  const close = (id) => setTasks((old) => old.filter((t) => t.id !== id));
  const shown = tasks.map((t) => html`<${TaskProgress} key=${t.id} id=${t.id} what=${t.what}
    onClose=${() => close(t.id)} />`);
  return [start, shown];
}
