// The dashboard: a navigation bar, the view named by the URL's hash (#/vms, #/vms/<name>, ...),
// one notice area and one confirmation dialog. Reads who it is (and its CSRF token) first, then
// opens the live stream (live.js), which loads the VMs and nodes.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { loadSession, logout } from "./api.js";
import { store, useStore } from "./live.js";
import { feedback, html } from "./ui.js";
import { Networks } from "./views/networks.js";
import { Nodes } from "./views/nodes.js";
import { Overview } from "./views/overview.js";
import { Storage } from "./views/storage.js";
import { Tasks } from "./views/tasks.js";
import { VmDetails, Vms } from "./views/vms.js";

// the views, by the first part of the hash; a view given more parts gets them as `name`
const VIEWS = {
  "": ["Overview", Overview],
  nodes: ["Nodes", Nodes],
  vms: ["VMs", Vms],
  networks: ["Networks", Networks],
  storage: ["Storage", Storage],
  tasks: ["Tasks", Tasks],
};

function useHash() {
  const [hash, setHash] = useState(window.location.hash);
  useEffect(() => {
    const listener = () => setHash(window.location.hash);
    window.addEventListener("hashchange", listener);
    return () => window.removeEventListener("hashchange", listener);
  }, []);
  return hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
}

function Notice() {
  const [notice, setNotice] = useState(null);
  feedback.show = (text, kind) => setNotice({ text, kind });
  if (!notice) return null;
  return html`<div class=${"notice " + notice.kind} role="alert" data-testid="notice">
    <span>${notice.text}</span> <button onClick=${() => setNotice(null)}>×</button></div>`;
}

function Confirm() {
  const [question, setQuestion] = useState(null);
  feedback.confirm = (text) => new Promise((resolve) => setQuestion({ text, resolve }));
  if (!question) return null;
  const answer = (yes) => {
    setQuestion(null);
    question.resolve(yes);
  };
  return html`<div class="modal" role="dialog" aria-modal="true" data-testid="confirm">
    <div class="modal-box"><p>${question.text}</p>
      <button class="danger" onClick=${() => answer(true)} data-testid="confirm-yes">Confirm</button>
      <button onClick=${() => answer(false)} data-testid="confirm-no">Cancel</button></div></div>`;
}

function App({ session }) {
  const [view, ...rest] = useHash();
  const live = useStore();
  const [, View] = VIEWS[view] || VIEWS[""];
  const Shown = view === "vms" && rest.length ? VmDetails : View;
  return html`<header>
      <strong>PVC</strong>
      <nav>${Object.entries(VIEWS).map(([key, [label]]) => html`<a href=${"#/" + key}
        class=${key === view ? "active" : ""}>${label}</a>`)}</nav>
      <span class=${"live " + (live.connected ? "on" : "off")} data-testid="live"
        title="live updates">${live.connected ? "live" : "reconnecting…"}</span>
      <span class="who">${session.who}</span>
      ${session.auth_enabled && html`<button onClick=${logout}>Log out</button>`}
    </header>
    <${Notice} />
    <${Confirm} />
    <main>${live.loaded ? html`<${Shown} name=${rest.join("/")} />` : html`<p class="loading">Loading…</p>`}</main>`;
}

async function start() {
  const session = await loadSession();
  store.connect();
  const root = document.getElementById("app");
  root.textContent = ""; // the "Loading…" of the page itself
  render(html`<${App} session=${session} />`, root);
}

start();
