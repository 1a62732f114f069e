// Runs the wasm32-wasip1 build of rsa-micro under node or deno:
//   node bench/rsa-micro/run-wasm.mjs <rsa-micro.wasm> [args...]
//   deno run --allow-read bench/rsa-micro/run-wasm.mjs <rsa-micro.wasm> [args...]
// with the few WASI preview1 calls it makes (arguments, clock, random, stdout/stderr, exit) implemented here, so
// that any V8 embedding runs it. For ratios between builds only: each engine's V8 differs from Envoy's.
import { readFileSync, writeSync } from "node:fs";
import { argv } from "node:process";
import { getRandomValues } from "node:crypto";

const [file, ...rest] = argv.slice(2);
const args = ["rsa-micro", ...rest].map((a) => new TextEncoder().encode(a + "\0"));
let memory;
const view = () => new DataView(memory.buffer);
const bytes = () => new Uint8Array(memory.buffer);
class Exit {
  constructor(code) {
    this.code = code;
  }
}
const wasi = {
  args_sizes_get(countPtr, sizePtr) {
    view().setUint32(countPtr, args.length, true);
    view().setUint32(sizePtr, args.reduce((n, a) => n + a.length, 0), true);
    return 0;
  },
  args_get(argvPtr, bufPtr) {
    for (const a of args) {
      view().setUint32(argvPtr, bufPtr, true);
      bytes().set(a, bufPtr);
      argvPtr += 4;
      bufPtr += a.length;
    }
    return 0;
  },
  environ_sizes_get(countPtr, sizePtr) {
    view().setUint32(countPtr, 0, true);
    view().setUint32(sizePtr, 0, true);
    return 0;
  },
  environ_get() {
    return 0;
  },
  clock_time_get(_id, _precision, outPtr) {
    view().setBigUint64(outPtr, process.hrtime.bigint(), true);
    return 0;
  },
  random_get(ptr, len) {
    for (let off = 0; off < len; off += 65536) {
      getRandomValues(new Uint8Array(memory.buffer, ptr + off, Math.min(65536, len - off)));
    }
    return 0;
  },
  fd_write(fd, iovs, iovsLen, writtenPtr) {
    let written = 0;
    for (let i = 0; i < iovsLen; i++) {
      const ptr = view().getUint32(iovs + 8 * i, true);
      const len = view().getUint32(iovs + 8 * i + 4, true);
      writeSync(fd === 2 ? 2 : 1, bytes().subarray(ptr, ptr + len));
      written += len;
    }
    view().setUint32(writtenPtr, written, true);
    return 0;
  },
  proc_exit(code) {
    throw new Exit(code);
  },
};
const module = new WebAssembly.Module(readFileSync(file));
const imports = { wasi_snapshot_preview1: wasi, env: {} };
// The filter's proxy-wasm imports (module "env") are linked but never called here: stubs that fail loudly.
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === "env") imports.env[imp.name] = () => { throw new Error(`host call ${imp.name}`); };
}
const instance = new WebAssembly.Instance(module, imports);
memory = instance.exports.memory;
try {
  instance.exports._start();
} catch (e) {
  if (!(e instanceof Exit)) throw e;
  process.exitCode = e.code;
}
