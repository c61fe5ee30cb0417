// The page's live view of the cluster. VMs and nodes are kept here, by key, patched from the
// `change` events of /events (which carry their new documents); the other kinds (networks,
// storage, tasks, cluster, and the extension kinds health, console, log) are read by the views
// that show them, again when an event says they changed (`useResource`). When the stream
// reconnects (e.g. after a primary handover, through the floating IP) everything is reloaded:
// changes may have been missed meanwhile.
// Node logs and VM consoles are sent only for what the page follows (`follow(kind, key)`, the
// `follow=` values of /events): when that set changes, a new stream is opened with it, and the
// old one closed once the new one has said hello (which reloads, as any (re)connection does).
import { useEffect, useState } from "preact/hooks";
import { api } from "./api.js";

const RETRY_MS = 2000;

class Store {
  constructor() {
    this.vms = new Map(); // uuid → VM
    this.nodes = new Map(); // name → node
    this.connected = false;
    this.loaded = false;
    this.listeners = new Set(); // re-render on any change
    this.kindListeners = new Set(); // (changed kinds) → reload what a view shows
    this.wanted = new Set(); // kinds to read again in full ("reload" events)
    this.reloading = false;
    this.follows = new Map(); // "kind:key" → panels following it
    this.source = null; // the current EventSource
    this.sources = new Set(); // the open ones (an older one serves until a newer one is open)
    this.sourceUrl = null;
    this.switching = false;
  }

  // follow a node log ("log", name) or a VM console ("console", uuid) while a panel shows it;
  // returns the function that stops following
  follow(kind, key) {
    const id = `${kind}:${key}`;
    const count = (this.follows.get(id) || 0) + 1;
    this.follows.set(id, count);
    if (count === 1) this.switchSoon();
    return () => {
      const left = this.follows.get(id) - 1;
      if (left > 0) {
        this.follows.set(id, left);
        return;
      }
      this.follows.delete(id);
      this.switchSoon();
    };
  }

  url() {
    const follows = [...this.follows.keys()].sort();
    return "/events" + (follows.length ? "?" + new URLSearchParams(follows.map((f) => ["follow", f])) : "");
  }

  // panels come and go together (one view replaces another): one switch for all of them
  switchSoon() {
    if (this.switching || !this.source) return;
    this.switching = true;
    setTimeout(() => {
      this.switching = false;
      if (this.url() !== this.sourceUrl) this.connect();
    }, 0);
  }

  notify(changed) {
    for (const listener of this.kindListeners) listener(changed);
    for (const listener of this.listeners) listener();
  }

  async reload(kinds = ["vm", "node"]) {
    const [vms, nodes] = await Promise.all([
      kinds.includes("vm") ? api("GET", "/vm") : null,
      kinds.includes("node") ? api("GET", "/node") : null,
    ]);
    if (vms) this.vms = new Map(vms.map((vm) => [vm.uuid, vm]));
    if (nodes) this.nodes = new Map(nodes.map((node) => [node.name, node]));
    this.loaded = true;
  }

  apply(changed) {
    const reload = [];
    for (const [kind, map] of [["vm", "vms"], ["node", "nodes"]]) {
      const docs = changed[kind];
      if (docs === "reload") reload.push(kind);
      else if (docs) {
        const next = new Map(this[map]);
        for (const [key, doc] of Object.entries(docs)) {
          if (doc === null) next.delete(key);
          else next.set(key, doc);
        }
        this[map] = next;
      }
    }
    if (reload.length) this.reloadSoon(reload, changed);
    else this.notify(changed);
  }

  // one reload at a time: kinds asked for meanwhile are read once it is done
  async reloadSoon(kinds, changed) {
    for (const kind of kinds) this.wanted.add(kind);
    if (this.reloading) return;
    this.reloading = true;
    try {
      while (this.wanted.size) {
        const next = [...this.wanted];
        this.wanted.clear();
        await this.reload(next).catch(() => null);
        this.notify(changed);
      }
    } finally {
      this.reloading = false;
    }
  }

  connect() {
    const url = this.url();
    const source = new EventSource(url);
    this.source = source;
    this.sourceUrl = url;
    this.sources.add(source);
    const retire = (old) => {
      old.close();
      this.sources.delete(old);
    };
    source.addEventListener("hello", () => {
      if (this.source !== source) return retire(source); // replaced before it opened
      // the older streams served until now: nothing was left unheard
      for (const old of this.sources) if (old !== source) retire(old);
      // (re)connected: read everything again, whatever was missed while away
      this.connected = true;
      this.reload().then(() => this.notify("*")).catch(() => null);
    });
    source.addEventListener("change", (event) => this.apply(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      if (this.source !== source) return retire(source);
      this.connected = false;
      this.notify({});
      if (source.readyState === EventSource.CLOSED) {
        // EventSource gives up for good on an answer that is not a stream (a 401 once the
        // session ended, a 5xx in the middle of a handover): ask who we are (a 401 goes to the
        // login page), then open a new one
        const again = () => this.source === source && this.connect();
        setTimeout(() => api("GET", "/auth/session").then(again, again), RETRY_MS);
      }
    });
    return source;
  }
}

export const store = new Store();

// re-render the calling component whenever the store changes
export function useStore() {
  const [, setTick] = useState(0);
  useEffect(() => {
    const listener = () => setTick((tick) => tick + 1);
    store.listeners.add(listener);
    return () => store.listeners.delete(listener);
  }, []);
  return store;
}

// `task()` run one at a time: asked again while it runs, it runs once more afterwards (while
// `alive()`), so the last ask always sees the newest state
export function oneAtATime(task, alive) {
  let running = false;
  let again = false;
  const run = async () => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await task();
    } finally {
      running = false;
    }
    if (again && alive()) {
      again = false;
      run();
    }
  };
  return run;
}

// `load()` once, and again when an event names one of `kinds` (one read at a time)
export function useResource(kinds, load, deps = []) {
  const [state, setState] = useState({ data: null, error: null });
  useEffect(() => {
    let alive = true;
    const run = oneAtATime(async () => {
      try {
        const data = await load();
        if (alive) setState({ data, error: null });
      } catch (e) {
        if (alive) setState((old) => ({ data: old.data, error: e.message }));
      }
    }, () => alive);
    run();
    const listener = (changed) => {
      if (changed === "*" || kinds.some((kind) => kind in changed)) run();
    };
    store.kindListeners.add(listener);
    return () => {
      alive = false;
      store.kindListeners.delete(listener);
    };
  }, deps);
  return state;
}
