// node bench/rsa-micro/run-node.mjs <rsa-micro.wasm> [signatures] [squarings]: the wasm32-wasip1 build under
// node's WASI (for ratios between builds only: node's V8 is 2-3x slower than Envoy's on this module).
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env } from "node:process";

const [, , file, ...rest] = argv;
const wasi = new WASI({ version: "preview1", args: ["rsa-micro", ...rest], env, preopens: {} });
const module = await WebAssembly.compile(await readFile(file));
// The filter's proxy-wasm imports (module "env") are linked but never called here: stubs that fail loudly.
const imports = wasi.getImportObject();
imports.env = {};
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === "env") imports.env[imp.name] = () => { throw new Error(`host call ${imp.name}`); };
}
const instance = await WebAssembly.instantiate(module, imports);
// The filter's lib exports a reactor `_initialize` too; node's WASI refuses a module with both, so hand it only
// the command's entry point and memory.
wasi.start({ exports: { _start: instance.exports._start, memory: instance.exports.memory } });
