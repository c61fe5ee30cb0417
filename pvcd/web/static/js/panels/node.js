// A node's panel on the Nodes view: its health and the checks that lower it (`health`,
// `health_details` of its document, which the live stream sends again when they change), and
// its daemon's log (GET /node/<node>/log), followed while it is shown.
import { useState } from "preact/hooks";
import { html } from "../ui.js";
import { healthLevel } from "./health.js";
import { LogTail } from "./tail.js";

export function NodePanel({ node }) {
  const [showLog, setShowLog] = useState(false);
  const checks = node.health_details || [];
  const failing = checks.filter((c) => c.health_delta > 0);
  const name = node.name;
  return html`<article class="card wide" data-testid=${"node-panel-" + name}>
    <h2>${name} <span class=${"health-" + healthLevel(node.health)} data-testid=${"node-health-" + name}>
      ${node.health === null || node.health === undefined ? "health unknown" : `health ${node.health}%`}</span></h2>
    ${failing.length
      ? html`<ul class="reasons" data-testid=${"node-checks-" + name}>${failing.map((c) => html`
          <li><code>${c.name}</code> −${c.health_delta}: ${c.message}</li>`)}</ul>`
      : html`<p><small>${checks.length ? `all ${checks.length} checks pass (${checks.map((c) => c.name).join(", ")})`
                                        : "no round of health checks reported"}</small></p>`}
    <button onClick=${() => setShowLog(!showLog)} data-testid=${"node-log-toggle-" + name}>
      ${showLog ? "Hide log" : "Show log"}</button>
    ${showLog && html`<${LogTail} kind="log" id=${name} testid=${"node-log-" + name}
      path=${`/node/${encodeURIComponent(name)}/log`} empty="The log is empty." />`}
  </article>`;
}
