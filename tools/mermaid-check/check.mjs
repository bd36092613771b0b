// Parse every ```mermaid block of the Markdown files named on the command line with mermaid
// itself, and print one JSON line per block:
//   {"file": ..., "line": <1-based line of the opening fence>, "type": <what mermaid detected,
//    or null>, "ok": true|false, "error": <mermaid's message, or null>}
// Exit status 1 when any block fails. One process for all files: loading jsdom and mermaid
// costs about two seconds, parsing a diagram tens of milliseconds.
//
// Versions (package.json): mermaid 11.17.2, the last before 12, which needs Node.js 22.12;
// jsdom 26.1.0, the last for Node.js 18. Both run on this project's Node.js 20 and on the
// Node.js 18 that Debian 12's apt installs.

import { readFileSync } from "node:fs";
import { JSDOM } from "jsdom";

const FENCE_OPEN = "```mermaid";
const FENCE_CLOSE = "```";

// mermaid sanitizes labels with DOMPurify, and DOMPurify builds itself from the global `window`
// when first imported: without one it has no sanitize or addHook, and every flowchart with a
// label fails ("DOMPurify.addHook is not a function"). So a jsdom window goes in first, and
// mermaid is imported after it; mermaid.parse needs nothing more (no document, no layout).
globalThis.window = new JSDOM("").window;
const { default: mermaid } = await import("mermaid");

function mermaidBlocks(markdown) {
  const lines = markdown.split(/\r?\n/);
  const blocks = [];
  for (let index = 0; index < lines.length; index++) {
    if (lines[index] !== FENCE_OPEN) continue;
    const close = lines.indexOf(FENCE_CLOSE, index + 1);
    const end = close === -1 ? lines.length : close;
    blocks.push({ line: index + 1, text: lines.slice(index + 1, end).join("\n"), closed: close !== -1 });
    index = end;
  }
  return blocks;
}

// The type of a diagram that does not parse, when mermaid can still tell what it meant to be.
function detectedType(text) {
  try {
    return mermaid.detectType(text);
  } catch {
    return null;
  }
}

async function check(file, block) {
  const where = { file, line: block.line };
  if (!block.closed) {
    const error = `${FENCE_OPEN} block never closed by a ${FENCE_CLOSE} line`;
    return { ...where, type: detectedType(block.text), ok: false, error };
  }
  try {
    const { diagramType } = await mermaid.parse(block.text);
    return { ...where, type: diagramType, ok: true, error: null };
  } catch (error) {
    return { ...where, type: detectedType(block.text), ok: false, error: error.message };
  }
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node check.mjs FILE.md...");
  process.exit(2);
}
let failed = false;
for (const file of files) {
  for (const block of mermaidBlocks(readFileSync(file, "utf8"))) {
    const result = await check(file, block);
    failed ||= !result.ok;
    console.log(JSON.stringify(result));
  }
}
process.exitCode = failed ? 1 : 0;
