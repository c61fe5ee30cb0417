// A followed log: a node's log or a VM's console (extensions.md §7) shown while the panel is
// open. It reads the last lines once, then, on each live event naming it (the stream sends
// them only because `store.follow` asked for them), the lines after the last one it has
// (`after=last_line`), page after page, so no line repeats and none is missed. After a
// reconnection ("*") it catches up the same way. Lines that left the buffer before they could
// be read are announced, not hidden.
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "../api.js";
import { oneAtATime, store } from "../live.js";
import { plainLine } from "../terminal.js";
import { html } from "../ui.js";

const FIRST = 200; // lines read when the panel opens
const PAGE = 500; // lines per read while following
const KEPT = 2000; // lines the page keeps

function split(answer, last) {
  if (answer.data === "" && answer.last_line === (last ?? 0)) return [];
  return answer.data.split("\n").map(plainLine);
}

export function useTail(kind, key, path) {
  const [state, setState] = useState({ lines: [], loaded: false, error: null, gap: false });
  useEffect(() => {
    let alive = true;
    let last = null;
    const read = oneAtATime(async () => {
      try {
        let full = true;
        while (alive && full) {
          const values = last === null ? { lines: FIRST } : { lines: PAGE, after: last };
          const answer = await api("GET", path, values);
          if (!alive) return;
          const lines = split(answer, last);
          full = last !== null && lines.length === PAGE; // more may be waiting
          last = answer.last_line;
          setState((old) => ({ lines: [...old.lines, ...lines].slice(-KEPT), loaded: true,
            error: null, gap: old.gap || !!answer.truncated }));
        }
      } catch (e) {
        if (alive) setState((old) => ({ ...old, error: e.message }));
      }
    }, () => alive);
    const listener = (changed) => {
      const keys = changed === "*" ? true : changed[kind];
      if (keys === true || (Array.isArray(keys) && keys.includes(key))) read();
    };
    store.kindListeners.add(listener);
    const unfollow = store.follow(kind, key);
    read();
    return () => {
      alive = false;
      store.kindListeners.delete(listener);
      unfollow();
    };
  }, [kind, key, path]);
  return state;
}

// the log in a scrolling box that stays at the bottom unless the reader scrolled up
export function LogTail({ kind, id, path, empty, testid }) {
  const state = useTail(kind, id, path);
  const box = useRef(null);
  const stick = useRef(true);
  useEffect(() => {
    if (box.current && stick.current) box.current.scrollTop = box.current.scrollHeight;
  }, [state.lines]);
  const scrolled = () => {
    const el = box.current;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
  };
  if (state.error && !state.loaded) return html`<p class="error" data-testid=${testid}>${state.error}</p>`;
  if (!state.loaded) return html`<p class="loading">Loading…</p>`;
  return html`<div data-testid=${testid}>
    ${state.error && html`<p class="error">${state.error}</p>`}
    ${state.gap && html`<p class="muted" data-testid="log-gap">Some lines left the buffer before they could be shown.</p>`}
    ${state.lines.length
      ? html`<pre class="log" ref=${box} onScroll=${scrolled}>${state.lines.join("\n")}</pre>`
      : html`<p class="empty">${empty}</p>`}
  </div>`;
}
