// Check Kubernetes resources against the TypeScript declarations that @kubernetes-models/* generate from the published
// schemas (Envoy Gateway's API types, the Gateway API CRDs), with the TypeScript compiler: each resource becomes an
// object literal typed with its kind's interface, so unknown fields (excess properties), missing required fields,
// wrong types and values outside an enum are compile errors. This complements validate.mjs, whose compiled
// validators do not refuse unknown fields.
//
//   node deploy/schemas/typecheck.mjs RESOURCES.json
//
// Prints a JSON array, one entry per resource: {"index", "apiVersion", "kind", "name", "errors": [...]}; resources of
// other API groups get "skipped": true. Exit code 0 unless the compiler could not run.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const PACKAGES = {
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
  "gateway.envoyproxy.io": "@kubernetes-models/envoy-gateway",
};

const resources = JSON.parse(readFileSync(process.argv[2], "utf8"));
const dir = mkdtempSync(join(tmpdir(), "manifest-typecheck-"));
const results = [];
const files = [];
try {
  symlinkSync(join(here, "node_modules"), join(dir, "node_modules"));
  for (const [index, obj] of resources.entries()) {
    const [group, version] = String(obj.apiVersion || "").split("/");
    const entry = { index, apiVersion: obj.apiVersion, kind: obj.kind, name: obj.metadata?.name, errors: [] };
    results.push(entry);
    if (!PACKAGES[group] || !version || !/^[A-Za-z]+$/.test(String(obj.kind))) {
      entry.skipped = true;
      continue;
    }
    const file = `r${index}.ts`;
    files.push(file);
    writeFileSync(join(dir, file),
      `import type { I${obj.kind} } from "${PACKAGES[group]}/${group}/${version}/${obj.kind}";\n` +
      `export const resource: I${obj.kind} = ${JSON.stringify(obj, null, 2)};\n`);
  }
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, skipLibCheck: true, types: [],
      module: "nodenext", moduleResolution: "nodenext", target: "es2022",
    },
    files,
  }));
  let output = "";
  try {
    execFileSync(join(here, "node_modules", ".bin", "tsc"), ["-p", join(dir, "tsconfig.json"), "--pretty", "false"],
      { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    if (e.status === null || e.stdout === undefined) throw e;
    output = String(e.stdout) + String(e.stderr || "");
  }
  // Lines: r3.ts(12,5): error TS2353: Object literal may only specify known properties, ...
  let last = null;
  for (const line of output.split("\n")) {
    const m = line.match(/^r(\d+)\.ts\((\d+),(\d+)\): error (TS\d+): (.*)$/);
    if (m) {
      const entry = results[Number(m[1])];
      const source = readFileSync(join(dir, `r${m[1]}.ts`), "utf8").split("\n")[Number(m[2]) - 1] || "";
      last = { code: m[4], message: m[5], line: source.trim() };
      entry.errors.push(last);
    } else if (line.startsWith("  ") && last) {
      last.message += " " + line.trim();
    } else if (line.trim()) {
      throw new Error(`unexpected compiler output: ${line}`);
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(results));
