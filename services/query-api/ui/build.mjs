// Bundles src/main.ts (and the CSS it imports) into ../src/netsonde/query_api/static/ui with a content hash
// in each file name, and writes manifest.json naming them (read by query-api's ui.py). Run by `make ui`.
import { build } from "esbuild";
import { mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "src", "netsonde", "query_api", "static", "ui");
mkdirSync(out, { recursive: true });
for (const f of readdirSync(out)) rmSync(join(out, f));

const result = await build({
  entryPoints: [join(here, "src", "main.ts")],
  bundle: true,
  minify: true,
  sourcemap: "linked",
  target: ["chrome110", "firefox110", "safari16"],
  outdir: out,
  entryNames: "app-[hash]",
  metafile: true,
  logLevel: "warning",
});
const files = Object.keys(result.metafile.outputs).map((p) => basename(p));
const js = files.find((f) => f.endsWith(".js"));
const css = files.find((f) => f.endsWith(".css"));
if (!js || !css) throw new Error(`esbuild produced ${files.join(", ")}: expected one .js and one .css`);
writeFileSync(join(out, "manifest.json"), JSON.stringify({ js, css }) + "\n");
console.log(`web UI bundle: ${join(out, js)} (${css})`);
