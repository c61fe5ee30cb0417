// What a serial console or a log line shows as plain text. Console logs keep the guest's
// terminal escape sequences (extensions.md §7): colours, cursor moves, titles. The page strips
// them instead of rendering them, and drops the other control characters; a carriage return
// starts the line again (a progress bar), so what stays is what a terminal showed last. The
// result is always put into the page as text (never as HTML), so nothing a guest prints can
// become markup or script.
const ESCAPES = new RegExp([
  "\\x1b\\[[0-?]*[ -/]*[@-~]", // CSI: ESC [ parameters intermediates final (colours, moves)
  "\\x9b[0-?]*[ -/]*[@-~]", // the same with the one-byte C1 introducer
  "\\x1b\\][^\\x07\\x1b]*(?:\\x07|\\x1b\\\\)?", // OSC: ESC ] ... BEL or ST (window titles)
  "\\x1b[P^_X][^\\x1b]*(?:\\x1b\\\\)?", // DCS, PM, APC, SOS strings
  "\\x1b[ -/]*[0-~]?", // any other escape (charset selection, keypad modes)
].join("|"), "g");
const CONTROLS = /[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f]/g; // all but tab, newline, CR

export function plainLine(line) {
  const parts = line.replace(ESCAPES, "").split("\r").filter((part) => part !== "");
  return (parts.length ? parts[parts.length - 1] : "").replace(CONTROLS, "");
}
