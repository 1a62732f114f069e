"""The docs are true: what README.md, docs/, deploy/**/README.md, bench/README.md and examples/**/README.md show
runs against the real Envoy with the built filter (markers and placeholders: docs/README.md, "How the docs are kept
true"; the parsing: doc_snippets.py).

- ```yaml envoy: built on envoy.yaml, `envoy --mode validate` (which loads the .wasm and the plugin config);
  ```yaml istio: Istio's published CRD validators (test_istio's);
- ```json plugin-config: loaded in one real Envoy (a listener per snippet) that must serve each JWKS; with
  refused="<field>": Envoy must refuse it and log the field (and `log=` text), and no key material;
- ```json discovery|jwks <alg>: equal to what a real gateway of that algorithm serves (`"<…>"` matches any string);
- ```python verifier: accepts real tokens of every algorithm's gateway, refuses forged/tampered/HS256/none ones;
  ```python server: serves the MCP SDK client through a real gateway, refuses a forged token sent directly;
  both run under an import guard that allows only the standard library and what their `# pip install` line names;
- ```text envoy-log: every line matches a line a real gateway logged;
- tables: configuration fields and defaults vs src/config, refusals vs src/refusal.rs, the parser-differential
  table's filter column vs the gateway, the code map vs src/; relative links and anchors; the benchmark quotes vs
  bench/latest.md (and a warning naming the commit when that run no longer measures this code).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import importlib.util
import json
import re
import subprocess
import sys
import time
import warnings

import jwt
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

import doc_snippets as docs
from doc_snippets import EXAMPLE_ISSUER, REPO, Gathered
from harness import (
    BUILD,
    JWKS_SUFFIX,
    METRIC_PREFIX,
    MCP_HEADERS,
    NATIVE,
    WASM,
    b64url_decode,
    envoy_binary,
    free_port,
    issuer_path,
    load_envoy_yaml,
    rpc,
    running_gateway,
    start_envoy,
    start_envoy_expect_failure,
    stop_process,
    upstream_requests_total,
)
from mcp_helpers import expect_sdk_refused, gateway_claims, mint, run_sdk, stat_value, tool_json
from recording_upstream import RecordingUpstream

IDENTITY = {"subject": ["header:x-user-id"], "actor": ["header:x-team-id"]}
USER = {"x-user-id": "alice", "x-team-id": "team-blue"}
ALGORITHMS = ("RS256", "ES256", "EdDSA")
REFUSED_STAT = METRIC_PREFIX + "refused.{}"
# Sources the native build's ABI cannot read; it refuses them at load (test_native.py), so the native run loads only
# the snippets without them.
NATIVE_UNREADABLE = ("property:xds/node/",)
# `pip install` names of the packages snippets may name, and the modules each brings.
DIST_MODULES = {"pyjwt": {"jwt"}, "fastmcp": {"fastmcp"}, "mcp": {"mcp"}, "anyio": {"anyio"}}
SERVER_START_TIMEOUT = 30.0


def ids(blocks):
    return [b.where for b in blocks]


ENVOY_BLOCKS = docs.blocks("yaml", "envoy")
ISTIO_BLOCKS = docs.blocks("yaml", "istio")
PLUGIN_BLOCKS = docs.blocks("json", "plugin-config")
ACCEPTED = [b for b in PLUGIN_BLOCKS if "refused" not in b.attrs]
REFUSED = [b for b in PLUGIN_BLOCKS if "refused" in b.attrs]
DOCUMENT_BLOCKS = docs.blocks("json", "discovery") + docs.blocks("json", "jwks")
VERIFIERS = docs.blocks("python", "verifier")
SERVERS = docs.blocks("python", "server")
LOG_BLOCKS = docs.blocks("text", "envoy-log")


# ================================================================================================================
# test values: keys, certificates, placeholders
# ================================================================================================================
def _pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def keys():
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa_b": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "p256": ec.generate_private_key(ec.SECP256R1()),
            "ed25519": ed25519.Ed25519PrivateKey.generate()}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA and a server certificate it signed, as PEM files (for the mTLS listener snippet)."""
    d = tmp_path_factory.mktemp("docs_tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "docs test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"cert": d / "server.crt", "key": d / "server.key", "ca": d / "ca.crt"}
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_text(_pem(key))
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


@pytest.fixture(scope="module")
def placeholders(keys, tls_files):
    """What the docs tell the reader to fill in, filled (docs/README.md lists them)."""
    json_pem = {
        '"<RSA private key PEM>"': _pem(keys["rsa"]),
        '"<P-256 private key PEM>"': _pem(keys["p256"]),
        '"<Ed25519 private key PEM>"': _pem(keys["ed25519"]),
        '"<B public key PEM>"': _public_pem(keys["rsa_b"]),
    }
    values = {k: json.dumps(v) for k, v in json_pem.items()}
    values.update({
        "<path to mcp_jwt_signer.wasm>": str(WASM),
        "<path to libmcp_jwt_signer.so>": str(NATIVE),
        "<server certificate PEM file>": str(tls_files["cert"]),
        "<server private key PEM file>": str(tls_files["key"]),
        "<your CA certificate PEM file>": str(tls_files["ca"]),
    })
    return values


def key_material(keys) -> list:
    """A line of base64 from inside each private key, to make sure no log repeats one."""
    return [_pem(k).splitlines()[2] for k in keys.values()]


# ================================================================================================================
# every block is marked
# ================================================================================================================
def test_every_block_that_can_be_run_is_marked():
    found = Gathered()
    for b in docs.all_blocks():
        allowed = docs.ROLES.get(b.lang)
        if allowed is None:
            continue
        if b.role not in allowed:
            found.add(b.where, f"```{b.lang} block needs a role: one of {sorted(r for r in allowed if r)}")
        if b.lang == "yaml" and b.role is None and "type.googleapis.com/envoy" in b.text:
            found.add(b.where, "holds an Envoy config: mark it ```yaml envoy so that it is validated")
    found.check()
    # The extraction itself sees what it must (a silent parser would pass the tests below vacuously).
    assert ENVOY_BLOCKS and ACCEPTED and REFUSED and VERIFIERS and SERVERS and LOG_BLOCKS and ISTIO_BLOCKS


# ================================================================================================================
# Envoy and Istio snippets validate
# ================================================================================================================
def _hcm(cfg: dict) -> dict:
    (listener,) = cfg["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
    return hcm["typed_config"]


def _referenced_clusters(node) -> set:
    found = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("cluster", "cluster_name") and isinstance(v, str):
                found.add(v)
            found |= _referenced_clusters(v)
    elif isinstance(node, list):
        for v in node:
            found |= _referenced_clusters(v)
    return found


def _stub_cluster(name: str) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]}}


def _use_built_wasm(node) -> None:
    """envoy.yaml's wasm filters (the signer and the route guard) load the built module, wherever Envoy runs."""
    if isinstance(node, dict):
        if "vm_config" in node and "local" in node["vm_config"].get("code", {}):
            node["vm_config"]["code"]["local"]["filename"] = str(WASM)
        for v in node.values():
            _use_built_wasm(v)
    elif isinstance(node, list):
        for v in node:
            _use_built_wasm(v)


def envoy_config_for(snippet: dict) -> dict:
    """envoy.yaml with the snippet in its place (its top-level keys say where), stub clusters for the names it uses."""
    if set(snippet) & {"static_resources", "admin"}:
        cfg = copy.deepcopy(snippet)
    else:
        cfg = load_envoy_yaml()
        _use_built_wasm(cfg)
        for key, value in snippet.items():
            if key == "listeners":
                cfg["static_resources"]["listeners"] = value
            elif key == "http_filters":
                _hcm(cfg)["http_filters"] = value
            elif key == "routes":
                (vhost,) = _hcm(cfg)["route_config"]["virtual_hosts"]
                vhost["routes"] = value
            elif key == "clusters":
                cfg["static_resources"]["clusters"].extend(value)
            else:
                raise AssertionError(f"snippet top-level key {key!r}: not one of admin, static_resources, listeners, "
                                     "http_filters, routes, clusters")
    clusters = cfg["static_resources"].setdefault("clusters", [])
    defined = {c["name"] for c in clusters}
    for name in sorted(_referenced_clusters(cfg["static_resources"]) - defined):
        clusters.append(_stub_cluster(name))
    return cfg


@pytest.mark.parametrize("block", ENVOY_BLOCKS, ids=ids(ENVOY_BLOCKS))
def test_envoy_snippet_validates(block, placeholders, tmp_path):
    snippet = yaml.safe_load(docs.fill(block.text, placeholders, block.where))
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(envoy_config_for(snippet), sort_keys=False))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn",
                           "--component-log-level", "wasm:info"], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "OK" in out, f"{block.where}: envoy --mode validate failed:\n{out[-3000:]}"


def test_validation_refuses_a_filter_chain_that_ends_without_the_router(placeholders, tmp_path):
    """Negative control (issue 19, item 8): the README's minimal config without its router must fail."""
    (minimal,) = [b for b in ENVOY_BLOCKS if b.path.name == "README.md"]
    snippet = yaml.safe_load(docs.fill(minimal.text, placeholders, minimal.where))
    snippet["http_filters"] = [f for f in snippet["http_filters"] if f["name"] != "envoy.filters.http.router"]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(envoy_config_for(snippet), sort_keys=False))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "is the last filter" in proc.stdout + proc.stderr, proc.stdout[-2000:]


def test_istio_snippets_pass_the_published_crd_validators(tmp_path):
    from test_istio import istio_schema, run_istio_validators, schema_errors

    resources = [(b, doc) for b in ISTIO_BLOCKS for doc in yaml.safe_load_all(b.text) if doc]
    results = run_istio_validators([doc for _, doc in resources], tmp_path)
    found = Gathered()
    for (b, doc), res in zip(resources, results):
        what = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if res.get("skipped"):
            found.add(b.where, f"{what}: the validator did not check it")
        for e in res["errors"] + schema_errors(doc, istio_schema(doc["apiVersion"], doc["kind"])):
            found.add(b.where, f"{what}: {e}")
    found.check()


# ================================================================================================================
# plugin configurations load, or are refused naming the field
# ================================================================================================================
def _listener_wasm_config(listener: dict) -> dict:
    for chain in listener["filter_chains"]:
        for flt in chain["filters"]:
            for http in flt.get("typed_config", {}).get("http_filters", []):
                if http["name"] == "envoy.filters.http.wasm":
                    return http["typed_config"]["config"]
    raise AssertionError("no wasm filter in envoy.yaml's listener")


def _serves_jwks(url: str, config: dict) -> str | None:
    """None when the listener serves a JWKS with a key (and discovery names the configured issuer), else why not."""
    try:
        r = requests.get(url + issuer_path(config) + JWKS_SUFFIX, timeout=5)
        if r.status_code != 200 or not r.json().get("keys"):
            return f"JWKS: {r.status_code} {r.text[:200]!r}"
        if config.get("issuer"):
            disco = requests.get(url + issuer_path(config) + "/.well-known/openid-configuration", timeout=5).json()
            if disco["issuer"] != config["issuer"].rstrip("/"):
                return f"discovery names {disco['issuer']!r}"
    except (requests.RequestException, ValueError) as e:
        return repr(e)
    return None


def b_env(block) -> str | None:
    """A block's `env=` attribute: the environment its example needs."""
    return block.attrs.get("env")


def test_plugin_config_snippets_load(placeholders, tmp_path):
    """All accepted snippets in one Envoy, one listener (and VM) each; each must serve its JWKS."""
    configs = [(b, docs.fill(b.text, placeholders, b.where)) for b in ACCEPTED]
    if BUILD == "native":
        configs = [(b, text) for b, text in configs if not any(s in text for s in NATIVE_UNREADABLE)]
        assert len(configs) >= len(ACCEPTED) - 2, "the native run must still load nearly every snippet"
    ports = []

    def one_listener_each(cfg):
        base = cfg["static_resources"]["listeners"][0]
        for i, (_, text) in enumerate(configs):
            listener = copy.deepcopy(base)
            listener["name"] = f"docs_{i}"
            ports.append(free_port())
            listener["address"]["socket_address"]["port_value"] = ports[-1]
            wasm = _listener_wasm_config(listener)
            wasm["configuration"]["value"] = text
            wasm["vm_config"]["vm_id"] = f"docs_{i}"
            if b_env(configs[i][0]) == "introspection":
                # The example names the environment variables holding the gateway's client credentials at the
                # authorization server; the filter refuses to start without them (what the text says).
                # (The wasm VM sees these key_values; the native module reads the process environment, `env` below.)
                wasm["vm_config"]["environment_variables"] = {"key_values": INTROSPECTION_ENV}
            cfg["static_resources"]["listeners"].append(listener)

    with RecordingUpstream() as up:
        try:
            envoy = start_envoy(tmp_path / "all", {}, up.port, extra_edit=one_listener_each, env=INTROSPECTION_ENV)
        except AssertionError as e:  # name the snippet(s) that keep Envoy from starting
            failing = []
            for i, (b, text) in enumerate(configs):
                try:
                    start_envoy(tmp_path / f"one{i}", text, up.port).stop()
                except AssertionError as one:
                    failing.append(f"{b.where}: {str(one)[-1500:]}")
            raise AssertionError("plugin-config snippets refused:\n" + "\n".join(failing or [str(e)]))
        try:
            found = Gathered()
            for (b, text), port in zip(configs, ports):
                why = _serves_jwks(f"http://127.0.0.1:{port}", json.loads(text))
                if why:
                    found.add(b.where, why)
            found.check()
        finally:
            envoy.stop()


# The client credentials the introspection example names (docs/coming-from-litellm.md), for the wasm VM and the
# native module alike.
INTROSPECTION_ENV = {"MCP_JWT_INTROSPECTION_CLIENT_ID": "docs-gateway", "MCP_JWT_INTROSPECTION_CLIENT_SECRET": "docs"}


@pytest.mark.parametrize("block", REFUSED, ids=ids(REFUSED))
def test_refused_plugin_config_snippet_is_refused_naming_the_field(block, placeholders, keys, tmp_path):
    text = docs.fill(block.text, placeholders, block.where)
    with RecordingUpstream() as up:
        res = start_envoy_expect_failure(tmp_path, text, up.port)
        log = res.log()
    assert res.exited, f"{block.where}: Envoy started with a configuration the docs say is refused:\n{log[-2000:]}"
    assert f"field `{block.attrs['refused']}`" in log, f"{block.where}: the log does not name the field:\n{log[-2000:]}"
    assert block.attrs.get("log", "") in log, f"{block.where}: the log lacks {block.attrs['log']!r}:\n{log[-2000:]}"
    assert not any(line in log for line in key_material(keys)), f"{block.where}: key material in the log"


# ================================================================================================================
# real gateways, one per algorithm: documents, verifier snippets, log lines, the parser table
# ================================================================================================================
@pytest.fixture(scope="module")
def gateways(keys, tmp_path_factory):
    """alg -> Gateway, issuer = its own URL. RS256 signs with a key from MCP_JWT_SIGNING_KEY; the others generate
    theirs; RS256+ES256 publishes an ES256 public key beside its (generated) RS256 key."""
    setups = {
        "RS256": ({}, {"MCP_JWT_SIGNING_KEY": _pem(keys["rsa"])}),
        "ES256": ({"algorithm": "ES256"}, None),
        "EdDSA": ({"algorithm": "EdDSA"}, None),
        "RS256+ES256": ({"additional_public_keys": [_public_pem(keys["p256"])]}, None),
    }
    workdir = tmp_path_factory.mktemp("docs_gateways")
    with contextlib.ExitStack() as stack:
        started = {}
        for name, (extra, env) in setups.items():
            def config(url, extra=extra):
                return {"issuer": url, "identity": IDENTITY, **extra}
            started[name] = stack.enter_context(running_gateway(workdir / name.replace("+", "_"), config, env=env))
        yield started


def real_token(gw) -> str:
    gw.upstream.clear()
    r = requests.post(gw.url + "/mcp", json=rpc("tools/call", {"name": "get_weather"}), headers={**MCP_HEADERS, **USER},
                      timeout=10)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    (req,) = gw.upstream.wait_for(1)
    return req.bearer_token()


def _matches(expected, actual, path="") -> list:
    """Differences between a documented JSON value and the real one; a string "<…>" matches any string."""
    if isinstance(expected, str) and docs.PLACEHOLDER.fullmatch(expected):
        return [] if isinstance(actual, str) and actual else [f"{path or '/'}: {actual!r} is not a string"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}/{k}: documented, not served" for k in expected.keys() - actual.keys()]
        out += [f"{path}/{k}: served, not documented ({actual[k]!r})" for k in actual.keys() - expected.keys()]
        for k in expected.keys() & actual.keys():
            out += _matches(expected[k], actual[k], f"{path}/{k}")
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _matches(e, a, f"{path}/{i}")]
    return [] if expected == actual else [f"{path or '/'}: documented {expected!r}, served {actual!r}"]


def test_discovery_and_jwks_are_documented_as_served(gateways):
    documented = {b.roles[1] for b in docs.blocks("json", "discovery")}
    assert documented >= set(ALGORITHMS), f"a discovery document per algorithm: only {sorted(documented)}"
    found = Gathered()
    for b in DOCUMENT_BLOCKS:
        kind, setup = b.roles[0], b.roles[1]
        assert setup in gateways, f"{b.where}: no test gateway for {setup!r}"
        gw = gateways[setup]
        expected = json.loads(b.text.replace(EXAMPLE_ISSUER, gw.url))
        suffix = "/.well-known/openid-configuration" if kind == "discovery" else JWKS_SUFFIX
        r = requests.get(gw.url + suffix, timeout=5)
        for problem in _matches(expected, r.json()):
            found.add(b.where, problem)
        # The headers docs/verifying-tokens.md names: RS256's key is configured, the others are generated.
        headers = {k: r.headers.get(k) for k in ("content-type", "access-control-allow-origin", "cache-control")}
        max_age = 300 if setup == "RS256" else 60
        if headers != {"content-type": "application/json", "access-control-allow-origin": "*",
                       "cache-control": f"public, max-age={max_age}"}:
            found.add(b.where, f"headers {headers}")
    found.check()


# ------------------------------------------------------------------------------------------------------------
# Python snippets, under an import guard
# ------------------------------------------------------------------------------------------------------------
RUNNER = r'''
import builtins, json, runpy, sys

snippet, allowed, mode = sys.argv[1], set(filter(None, sys.argv[2].split(","))), sys.argv[3]
_import = builtins.__import__


def _guarded(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and globals is not None and globals.get("__file__") == snippet:
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names and top not in allowed:
            raise ModuleNotFoundError(f"No module named {top!r}: the snippet's `# pip install` line does not name it")
    return _import(name, globals, locals, fromlist, level)


builtins.__import__ = _guarded
namespace = runpy.run_path(snippet, run_name="__main__")
if mode == "verifier":
    results = {}
    for name, token in json.load(open(sys.argv[4])).items():
        try:
            claims = namespace["verify"]("Bearer " + token)
            results[name] = {"ok": True, "sub": claims.get("sub")}
        except Exception as e:  # noqa: BLE001 - any refusal counts
            results[name] = {"ok": False, "error": type(e).__name__}
    print(json.dumps(results))
'''


def allowed_modules(block) -> str:
    first = block.text.splitlines()[0]
    m = re.match(r"#\s*pip install\s+(.*)$", first)
    assert m, f"{block.where}: the first line must be `# pip install <the packages it needs>`"
    modules = set()
    for token in re.findall(r'"([^"]+)"|(\S+)', m.group(1)):
        word = token[0] or token[1]
        if word.startswith("("):
            break
        dist = re.match(r"[A-Za-z0-9_.-]+", word).group(0).lower()
        assert dist in DIST_MODULES, f"{block.where}: add `{dist}` to DIST_MODULES in test_docs.py"
        modules |= DIST_MODULES[dist]
    return ",".join(sorted(modules))


def snippet_file(block, tmp_path, *, issuer: str, algorithm: str = "RS256", port: int | None = None):
    text = block.text.replace(EXAMPLE_ISSUER, issuer).replace('ALGORITHM = "RS256"', f'ALGORITHM = "{algorithm}"')
    if port is not None:
        text = re.sub(r"\bport=808[12]\b", f"port={port}", text)
    docs.fill(text, {}, block.where)
    path = tmp_path / f"snippet_{block.line}_{algorithm}.py"
    path.write_text(text)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    return runner, path


def bad_tokens(token: str, algorithm: str) -> dict:
    header = jwt.get_unverified_header(token)
    claims = json.loads(b64url_decode(token.split(".")[1]))
    other = {"RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
             "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
             "EdDSA": ed25519.Ed25519PrivateKey.generate}[algorithm]()
    h, p, s = token.split(".")
    tampered = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "mallory"}).encode()).rstrip(b"=").decode()
    none = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT", "kid": header["kid"]}).encode())
    return {
        "forged": jwt.encode(claims, other, algorithm=algorithm, headers={"kid": header["kid"]}),
        "tampered": f"{h}.{tampered}.{s}",
        "hs256": jwt.encode(claims, "a-shared-secret-of-32-bytes-or-more", algorithm="HS256",
                            headers={"kid": header["kid"]}),
        "none": f"{none.rstrip(b'=').decode()}.{p}.",
    }


@pytest.mark.parametrize("block", VERIFIERS, ids=ids(VERIFIERS))
def test_python_verifier_snippet_verifies_real_tokens_and_refuses_forged_ones(block, gateways, tmp_path):
    algorithms = ALGORITHMS if 'ALGORITHM = "RS256"' in block.text else ("RS256",)
    for alg in algorithms:
        gw = gateways[alg]
        token = real_token(gw)
        tokens = {"real": token, **bad_tokens(token, alg)}
        tokens_file = tmp_path / f"tokens_{alg}.json"
        tokens_file.write_text(json.dumps(tokens))
        runner, path = snippet_file(block, tmp_path, issuer=gw.url, algorithm=alg)
        proc = subprocess.run([sys.executable, str(runner), str(path), allowed_modules(block), "verifier",
                               str(tokens_file)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{block.where} ({alg}): the snippet failed:\n{proc.stderr[-3000:]}"
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        assert results["real"] == {"ok": True, "sub": "alice"}, f"{block.where} ({alg}): {results['real']}"
        accepted = [name for name, r in results.items() if name != "real" and r["ok"]]
        assert not accepted, f"{block.where} ({alg}): accepted bad tokens {accepted}"


def test_the_import_guard_refuses_a_package_the_snippet_does_not_name(gateways, tmp_path):
    """Negative control (issue 19, item 2): PyJWT's snippet with `import requests` added must fail to run."""
    (block,) = VERIFIERS[:1]
    bad = copy.copy(block)
    bad.text = block.text.replace("import jwt\n", "import jwt\nimport requests\n", 1)
    assert bad.text != block.text
    runner, path = snippet_file(bad, tmp_path, issuer=gateways["RS256"].url)
    tokens = tmp_path / "tokens.json"
    tokens.write_text("{}")
    proc = subprocess.run([sys.executable, str(runner), str(path), allowed_modules(bad), "verifier", str(tokens)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "No module named 'requests'" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("block", SERVERS, ids=ids(SERVERS))
def test_python_server_snippet_serves_through_the_gateway_and_refuses_forged_tokens(block, tmp_path):
    port = free_port()  # the snippet server's: the gateway's upstream
    envoy = start_envoy(tmp_path / "gw", lambda url: {"issuer": url, "identity": IDENTITY}, port)
    proc = None
    try:
        runner, path = snippet_file(block, tmp_path, issuer=envoy.url, port=port)
        log_path = tmp_path / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, str(runner), str(path), allowed_modules(block), "server"],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(tmp_path),
                                    start_new_session=True)
        direct = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            assert proc.poll() is None, f"{block.where}: the server exited:\n{log_path.read_text()[-3000:]}"
            with contextlib.suppress(requests.RequestException):
                if requests.post(direct, json={}, timeout=1).status_code == 401:
                    break
            assert time.monotonic() < deadline, f"{block.where}: not up:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.1)

        async def call_a_tool(client):
            tools = [t.name for t in (await client.list_tools()).tools]
            if "get_weather" in tools:
                return await client.call_tool("get_weather", {"city": "Paris"})
            return await client.call_tool(tools[0], {})

        result = tool_json(run_sdk(envoy.url + "/mcp", call_a_tool, headers=USER))
        assert "alice" in json.dumps(result), f"{block.where}: the tool did not see the gateway's user: {result}"

        kid = requests.get(envoy.url + JWKS_SUFFIX, timeout=5).json()["keys"][0]["kid"]
        claims = gateway_claims(envoy.url, scope="mcp:tools/call mcp:tools/get_weather:call mcp:tools/whoami:call")
        forged = mint(rsa.generate_private_key(public_exponent=65537, key_size=2048), claims, kid=kid)
        expect_sdk_refused(direct, token=forged)
    finally:
        stop_process(proc)
        envoy.stop()


# ------------------------------------------------------------------------------------------------------------
# log lines
# ------------------------------------------------------------------------------------------------------------
def test_documented_log_lines_are_what_a_gateway_logs(gateways):
    rs = gateways["RS256"]
    for body in (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}',
                 b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a b"}}'):
        assert requests.post(rs.url + "/mcp", data=body, headers=MCP_HEADERS, timeout=5).status_code == 400
    lines = [(b, line) for b in LOG_BLOCKS for line in b.text.splitlines() if line.strip()]
    if BUILD == "native":  # the documented lines are the wasm build's: `wasm log <plugin> [<root>] <vm>: <message>`
        lines = [(b, re.sub(r"^wasm log (\S+ ){1,2}\S+: ", "mcp_jwt_signer: ", line)) for b, line in lines]
    patterns = [(b, line, re.compile(".*?".join(re.escape(part) for part in docs.PLACEHOLDER.split(line))))
                for b, line in lines]
    deadline = time.monotonic() + 5
    while True:
        logged = "\n".join(gw.log() for gw in gateways.values())
        missing = [(b, line) for b, line, pattern in patterns if not pattern.search(logged)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not missing, "documented log lines no gateway logged:\n" + "\n".join(f"  {b.where}: {line}"
                                                                                   for b, line in missing)


# ------------------------------------------------------------------------------------------------------------
# the parser-differential table's filter column
# ------------------------------------------------------------------------------------------------------------
def differential_body(behaviour: str, example: str) -> bytes:
    raw = re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), example.encode())
    bom = b""
    if raw.startswith(b"\xef\xbb\xbf"):
        bom, raw = raw[:3], raw[3:]
    if "`id`" in behaviour:
        return bom + b'{"jsonrpc":"2.0","id":' + raw + b',"method":"tools/call","params":{"name":"get_weather"}}'
    return bom + b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":' + raw + b"}}"


def test_the_filter_column_of_the_parser_table_is_what_the_gateway_does(gateways):
    gw = gateways["RS256"]
    rows = docs.table_with(REPO / "docs" / "security.md", "behaviour")
    assert len(rows) >= 10, rows
    found = Gathered()
    for row in rows:
        (example,) = docs.code_spans(row["example"])[:1]
        body = differential_body(row["behaviour"], example)
        cell = row["the filter"]
        gw.upstream.clear()
        refused = re.search(r"refused: (\d{3}) `(\w+)`", cell)
        before = stat_value(gw.admin_url, REFUSED_STAT.format(refused.group(2))) if refused else 0
        started_before = upstream_requests_total(gw.envoy)
        r = requests.post(gw.url + "/mcp", data=body, headers={**MCP_HEADERS, **USER}, timeout=5)
        where = f"docs/security.md, row {row['behaviour']!r}"
        if refused:
            if r.status_code != int(refused.group(1)):
                found.add(where, f"documented {refused.group(1)}, the gateway answered {r.status_code} {r.text[:200]!r}")
            elif stat_value(gw.admin_url, REFUSED_STAT.format(refused.group(2))) != before + 1:
                found.add(where, f"refused, but not counted as `{refused.group(2)}`: {r.text[:200]!r}")
            # Envoy's upstream request counter, read after the response: no wait.
            if upstream_requests_total(gw.envoy) != started_before or gw.upstream.requests:
                found.add(where, "refused, yet forwarded")
        elif re.search(r"forwarded unchanged: 200", cell):
            seen = gw.upstream.wait_for(1)
            if r.status_code != 200 or len(seen) != 1 or seen[0].body != body:
                found.add(where, f"documented as forwarded unchanged: {r.status_code}, upstream saw "
                                 f"{[s.body for s in seen]}")
        else:
            found.add(where, f"the filter column must say `refused: <status> `<reason>`` or `forwarded unchanged: "
                             f"200`, not {cell!r}")
    found.check()


# ================================================================================================================
# tables against the source
# ================================================================================================================
# Fields whose default is a constant of src/config/defaults.rs, and that constant.
DEFAULT_CONSTANTS = {"audience": "AUDIENCE", "ttl_seconds": "TTL_SECONDS", "actor": "ACTOR",
                     "max_body_bytes": "MAX_BODY_BYTES", "jwt_payload_in_metadata": "JWT_PAYLOAD_IN_METADATA",
                     "require_subject": "REQUIRE_SUBJECT", "strip_identity_headers": "STRIP_IDENTITY_HEADERS",
                     "token_cache.max_entries": "CACHE_MAX_ENTRIES", "token_cache.max_bytes": "CACHE_MAX_BYTES",
                     "token_cache.shared_max_entries": "SHARED_CACHE_MAX_ENTRIES",
                     "token_cache.shared_max_bytes": "SHARED_CACHE_MAX_BYTES", "max_token_bytes": "MAX_TOKEN_BYTES",
                     "allow_body_buffering": "ALLOW_BODY_BUFFERING", "audit_fields": "AUDIT_FIELDS"}


def _shown(value) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def test_the_configuration_table_lists_every_field_with_its_default():
    rows = {docs.code_spans(r["field"])[0]: r for r in docs.table_with(REPO / "README.md", "field")}
    fields = docs.config_fields()
    missing = [f for f in fields if f not in rows]
    extra = [f for f in rows if f not in fields]
    assert not missing, f"README.md's configuration table has no row for {missing} (src/config/schema.rs has them)"
    assert not extra, f"README.md's configuration table documents {extra}, which src/config/schema.rs does not have"
    constants = docs.defaults()
    for field_name, constant in DEFAULT_CONSTANTS.items():
        assert _shown(constants[constant]) in rows[field_name]["default"], (
            f"README.md: default of `{field_name}` should show {_shown(constants[constant])} "
            f"(defaults.rs {constant}), shows {rows[field_name]['default']!r}")
    keys_array = re.search(r"ROUTE_KEYS: \[&str; \d+\] = \[([^\]]*)\]", (REPO / "src/request/route.rs").read_text())
    route_keys = re.findall(r'"(\w+)"', keys_array.group(1)) if keys_array else []
    documented = [docs.code_spans(r["route metadata key"])[0]
                  for r in docs.table_with(REPO / "README.md", "route metadata key")]
    assert route_keys and sorted(documented) == sorted(route_keys), (documented, route_keys)


def test_the_refusal_table_matches_the_code():
    documented = {}
    for row in docs.table_with(REPO / "docs" / "security.md", "reason"):
        (reason,) = docs.code_spans(row["reason"])
        documented[reason] = (int(re.match(r"\d{3}", row["HTTP status"]).group(0)), int(row["JSON-RPC code"]))
    assert documented == docs.refusals(), (
        "docs/security.md's refusal table and src/refusal.rs disagree: "
        f"only documented {sorted(documented.items() - docs.refusals().items())}, "
        f"only in the code {sorted(docs.refusals().items() - documented.items())}")


def test_the_code_map_names_every_module():
    rows = {docs.code_spans(r["module"])[0]: r["what"] for r in docs.table_with(REPO / "README.md", "module")}
    found = Gathered()
    for module in docs.modules():
        parts = module.rstrip("/").split("/")
        top = parts[0] + ("/" if len(parts) > 1 or module.endswith("/") else "")
        if top not in rows:
            found.add("README.md code map", f"no row for `{top}` (src/{module})")
            continue
        spans = {s.rstrip("/") for s in docs.code_spans(rows[top])}
        for part in parts[1:]:
            if part not in spans:
                found.add("README.md code map", f"the `{top}` row does not name `{part}` (src/{module})")
    tops = {m.rstrip("/").split("/")[0] + ("/" if "/" in m else "") for m in docs.modules()}
    for row in rows:
        if row not in tops:
            found.add("README.md code map", f"`{row}` is not a module in src/")
    found.check()


# ================================================================================================================
# links, benchmark quotes
# ================================================================================================================
def test_every_relative_link_resolves():
    found = Gathered()
    for path in docs.doc_files():
        for target, fragment in docs.relative_links(path):
            dest = (path.parent / target).resolve() if target else path
            where = f"{path.relative_to(REPO)}: ({target}{'#' + fragment if fragment else ''})"
            if not dest.exists():
                found.add(where, "no such file")
            elif fragment and dest.suffix == ".md" and fragment not in docs.anchors(dest):
                found.add(where, f"no heading with that anchor in {dest.relative_to(REPO)}")
    found.check()


def _bench_summary():
    spec = importlib.util.spec_from_file_location("bench_summary", REPO / "scripts" / "bench_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_quotes_are_bench_latest_and_staleness_is_reported():
    bench = _bench_summary()
    differ = bench.check()
    assert not differ, (f"the benchmark numbers quoted in {', '.join(differ)} differ from bench/latest.md: run "
                        "`python3 scripts/bench_summary.py --write`")
    status = bench.status()
    assert re.match(r"^(current|stale|unknown): ", status), status
    if not status.startswith("current"):
        warnings.warn(f"bench/latest.md: {status}", stacklevel=1)
