// Shared pieces of the views: a sortable table, action buttons that confirm destructive
// actions and show the API's message when they fail, and formatting.
import { h } from "preact";
import { useMemo, useState } from "preact/hooks";
import htm from "htm";

export const html = htm.bind(h);

// the one notice area and the one confirmation dialog of the page (app.js renders them)
export const feedback = { show: () => null, confirm: async () => true };

export function mib(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1024 ? `${(value / 1024).toFixed(1)} GiB` : `${value} MiB`;
}

export function bytes(value) {
  if (value === null || value === undefined || value === "") return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = Number(value);
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return `${n.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

export function Badge({ value }) {
  return html`<span class=${"badge state-" + String(value).replace(/[^a-z0-9-]/gi, "")}>${value}</span>`;
}

// A button that runs `action` (an API call); with `confirm`, only after the user agrees.
// A failure shows the API's message; a success `done` (a text) if given.
export function Action({ label, action, confirm, done, danger, testid }) {
  const [busy, setBusy] = useState(false);
  const click = async () => {
    if (confirm && !(await feedback.confirm(confirm))) return;
    setBusy(true);
    try {
      await action();
      if (done) feedback.show(done, "ok");
    } catch (e) {
      feedback.show(e.message, "error");
    } finally {
      setBusy(false);
    }
  };
  return html`<button class=${danger ? "danger" : ""} disabled=${busy} onClick=${click}
    data-testid=${testid}>${label}</button>`;
}

// columns: [{key, label, value(row) → sortable, render(row) → cell}]
export function Table({ columns, rows, rowKey, initialSort, testid, empty = "None" }) {
  const [sort, setSort] = useState(initialSort || { key: columns[0].key, dir: 1 });
  const sorted = useMemo(() => {
    const column = columns.find((c) => c.key === sort.key) || columns[0];
    const value = column.value || ((row) => row[column.key]);
    return [...rows].sort((a, b) => {
      const x = value(a);
      const y = value(b);
      return (x > y ? 1 : x < y ? -1 : 0) * sort.dir;
    });
  }, [rows, sort]);
  const header = (column) => {
    const active = column.key === sort.key;
    const next = () => setSort({ key: column.key, dir: active ? -sort.dir : 1 });
    return html`<th onClick=${next} class=${active ? "sorted" : ""}>
      ${column.label}${active ? (sort.dir > 0 ? " ▲" : " ▼") : ""}</th>`;
  };
  if (!rows.length) return html`<p class="empty" data-testid=${testid && testid + "-empty"}>${empty}</p>`;
  return html`<table data-testid=${testid}>
    <thead><tr>${columns.map(header)}</tr></thead>
    <tbody>${sorted.map((row) => html`<tr key=${rowKey(row)} data-key=${rowKey(row)}>
      ${columns.map((c) => html`<td>${c.render ? c.render(row) : row[c.key]}</td>`)}</tr>`)}
    </tbody></table>`;
}

export function Loading({ state }) {
  if (state.error) return html`<p class="error">${state.error}</p>`;
  return html`<p class="loading">Loading…</p>`;
}
