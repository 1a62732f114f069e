"""deploy/envoy-gateway/, checked as far as a machine without a Kubernetes cluster allows.

Checked here, and against what:
  * every manifest against published schemas, with negative controls:
      - Envoy Gateway resources (EnvoyExtensionPolicy, EnvoyPatchPolicy, EnvoyProxy, ClientTrafficPolicy): npm
        @kubernetes-models/envoy-gateway (generated from Envoy Gateway's API types), Gateway API resources
        (GatewayClass, Gateway, HTTPRoute): npm @kubernetes-models/gateway-api (from the Gateway API CRDs); both with
        the packages' compiled validators (deploy/schemas/validate.mjs) AND the TypeScript compiler against the same
        packages' declarations (deploy/schemas/typecheck.mjs), which refuses unknown fields;
      - Service, Namespace: Kubernetes' published OpenAPI schemas (PyPI kubernetes-validate, strict);
  * the manifests fit together (class, gateway, listener, route, backend, policies' targets, hostnames, issuer,
    buffer limit, the names the EnvoyPatchPolicy depends on);
  * the Envoy config they produce, in a real Envoy: the listener Envoy Gateway's xDS translator builds for this
    EnvoyExtensionPolicy (internal/xds/translator/wasm.go: a disabled Wasm HTTP filter named
    envoy.filters.http.wasm/<policy>/wasm/<i>, code fetched over HTTP from Envoy Gateway's module server with the
    module's sha256, enabled per route by typed_per_filter_config), with the module extracted from the filter's OCI
    image the way Envoy Gateway's image fetcher does. As generated, an MCP POST hangs; with the EnvoyPatchPolicy's
    JSON patches applied (JSONPath located, RFC 6902 applied: PyPI python-jsonpath, as Envoy Gateway does with ojg
    and evanphx/json-patch) the same POST is signed and the token verifies against the gateway's JWKS.

Not verifiable here (no cluster): Envoy Gateway accepting and translating these resources (the translation above is
reproduced from its source, not run), its CEL validation rules (not in the published packages), pulling the image
from a registry, the module served over TLS by Envoy Gateway, RDS, the Secret reaching the proxy's environment.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import jsonpath
import jwt
import kubernetes_validate
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import JWKS_SUFFIX, MCP_HEADERS, REPO, WASM, rpc, start_envoy
from recording_upstream import RecordingUpstream

# deploy/envoy-gateway ships the wasm build (EnvoyExtensionPolicy with the OCI image, the EnvoyPatchPolicy for
# allow_on_headers_stop_iteration and its hang): inherently the wasm build.
pytestmark = pytest.mark.wasm_only

DEPLOY = REPO / "deploy" / "envoy-gateway"
SCHEMAS = REPO / "deploy" / "schemas"
OCI_SCRIPT = REPO / "scripts" / "oci-image.py"
KUBERNETES_VERSIONS = ("1.30", "1.37")
EG_GROUP = "gateway.envoyproxy.io"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
KEY_ENV = "MCP_JWT_SIGNING_KEY"
FILTER_DEFAULT_MAX_BODY = 1024 * 1024
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
REF_NAME = "org.opencontainers.image.ref.name"


# ================================================================================================================
# the manifests
# ================================================================================================================
def load_docs() -> list:
    files = sorted(DEPLOY.glob("*.yaml"))
    assert files, f"no manifests under {DEPLOY}"
    docs = []
    for f in files:
        for d in yaml.safe_load_all(f.read_text()):
            if d is not None:
                docs.append(d)
    return docs


DOCS = load_docs()


def find(kind: str, name: str | None = None) -> dict:
    found = [d for d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind}/{name or '*'} under deploy/envoy-gateway, found {len(found)}"
    return found[0]


def node_json(script: str, resources: list, tmp_path: Path) -> list:
    assert (SCHEMAS / "node_modules" / "@kubernetes-models" / "envoy-gateway").is_dir(), \
        "install the pinned schemas: npm ci --prefix deploy/schemas (make schemas)"
    path = tmp_path / f"{script}.json"
    path.write_text(json.dumps(resources))
    r = subprocess.run(["node", str(SCHEMAS / script), str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def schema_errors(resources: list, tmp_path: Path) -> list:
    """Per resource: the errors of the compiled validators and of the TypeScript check (None: not a schema'd group)."""
    validated = node_json("validate.mjs", resources, tmp_path)
    typed = node_json("typecheck.mjs", resources, tmp_path)
    out = []
    for v, t in zip(validated, typed):
        if v.get("skipped"):
            assert t.get("skipped")
            out.append(None)
        else:
            out.append([f"schema {e['path']}: {e['message']}" for e in v["errors"]] +
                       [f"types {e['code']}: {e['message']} ({e['line']})" for e in t["errors"]])
    return out


def test_gateway_api_and_envoy_gateway_resources_match_the_published_schemas(tmp_path):
    kinds = {d["kind"] for d in DOCS if d["apiVersion"].split("/")[0] in (EG_GROUP, GATEWAY_API_GROUP)}
    assert kinds == {"GatewayClass", "Gateway", "HTTPRoute", "EnvoyExtensionPolicy", "EnvoyPatchPolicy",
                     "EnvoyProxy", "ClientTrafficPolicy"}, kinds
    for doc, errors in zip(DOCS, schema_errors(DOCS, tmp_path)):
        if doc["apiVersion"].split("/")[0] in (EG_GROUP, GATEWAY_API_GROUP):
            assert errors == [], f"{doc['kind']}/{doc['metadata']['name']}: {errors}"


def mutate(kind: str, edit) -> dict:
    doc = copy.deepcopy(find(kind))
    edit(doc)
    return doc


NEGATIVE_CONTROLS = {
    # The field Envoy Gateway's Wasm API does not have: the reason for patch-policy.yaml.
    "wasm-has-no-stop-iteration-field":
        lambda: mutate("EnvoyExtensionPolicy", lambda d: d["spec"]["wasm"][0].update(allowOnHeadersStopIteration=True)),
    "wasm-code-type-enum":
        lambda: mutate("EnvoyExtensionPolicy", lambda d: d["spec"]["wasm"][0]["code"].update(type="OCI")),
    "wasm-code-required":
        lambda: mutate("EnvoyExtensionPolicy", lambda d: d["spec"]["wasm"][0].pop("code")),
    "patch-type-required":
        lambda: mutate("EnvoyPatchPolicy", lambda d: d["spec"].pop("type")),
    "patch-op-enum":
        lambda: mutate("EnvoyPatchPolicy", lambda d: d["spec"]["jsonPatches"][0]["operation"].update(op="merge")),
    "patch-resource-type-enum":
        lambda: mutate("EnvoyPatchPolicy", lambda d: d["spec"]["jsonPatches"][0].update(type="Listener")),
    "route-path-type-enum":
        lambda: mutate("HTTPRoute", lambda d: d["spec"]["rules"][0]["matches"][0]["path"].update(type="Prefix")),
    "route-unknown-field":
        lambda: mutate("HTTPRoute", lambda d: d["spec"]["rules"][0].update(backendRef=[{"name": "x"}])),
    "gateway-port-type":
        lambda: mutate("Gateway", lambda d: d["spec"]["listeners"][0].update(port="http")),
    "gatewayclass-controller-required":
        lambda: mutate("GatewayClass", lambda d: d["spec"].pop("controllerName")),
    "proxy-unknown-field":
        lambda: mutate("EnvoyProxy", lambda d: d["spec"]["provider"]["kubernetes"]["envoyDeployment"].update(env=[])),
    "client-traffic-unknown-field":
        lambda: mutate("ClientTrafficPolicy", lambda d: d["spec"]["connection"].update(bufferLimitBytes=1)),
}


def test_the_schema_checks_refuse_broken_resources(tmp_path):
    """Negative controls: each deliberately wrong resource is refused (by the validators or the type check)."""
    names = list(NEGATIVE_CONTROLS)
    broken = [NEGATIVE_CONTROLS[n]() for n in names]
    for name, errors in zip(names, schema_errors(broken, tmp_path)):
        assert errors, f"{name}: the broken resource was accepted"
    # The type check alone refuses unknown fields, which the compiled validators let through.
    validated = node_json("validate.mjs", [broken[0]], tmp_path)
    typed = node_json("typecheck.mjs", [broken[0]], tmp_path)
    assert validated[0]["errors"] == [] and any("allowOnHeadersStopIteration" in e["message"]
                                                for e in typed[0]["errors"]), (validated, typed)


def test_core_resources_match_kubernetes_schemas():
    core = [d for d in DOCS if "." not in d["apiVersion"].split("/")[0] or d["apiVersion"] == "v1"]
    assert {d["kind"] for d in core} == {"Namespace", "Service"}
    for version in KUBERNETES_VERSIONS:
        for d in core:
            kubernetes_validate.validate(d, version, strict=True)
    bad = copy.deepcopy(find("Service"))
    bad["spec"]["ports"][0]["targetPort"] = {"port": 8081}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


# ================================================================================================================
# how the manifests fit together, and the names Envoy Gateway's translator gives what they produce
# ================================================================================================================
def eg_listener_name(gateway: dict, listener: dict) -> str:
    """Envoy Gateway's xDS Listener name (internal/gatewayapi irListenerName; XDSNameSchemeV2 off)."""
    return f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}/{listener['name']}"


def eg_wasm_ir_name(policy: dict, index: int) -> str:
    """internal/gatewayapi irConfigNameForWasm: <kind lowercased>/<namespace>/<name>/wasm/<index>."""
    return f"{policy['kind'].lower()}/{policy['metadata']['namespace']}/{policy['metadata']['name']}/wasm/{index}"


def eg_wasm_filter_name(policy: dict, index: int) -> str:
    """internal/xds/translator perRouteFilterName(EnvoyFilterWasm, name)."""
    return f"envoy.filters.http.wasm/{eg_wasm_ir_name(policy, index)}"


def quantity_bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", q)
    assert m, q
    return int(m.group(1)) * {None: 1, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3}[m.group(2)]


def refs_to(doc: dict, kind: str, name: str) -> bool:
    spec = doc["spec"]
    refs = spec.get("targetRefs") or [spec["targetRef"]]
    return any(r["group"] == GATEWAY_API_GROUP and r["kind"] == kind and r["name"] == name for r in refs)


def test_manifests_fit_together():
    gc, gw, route = find("GatewayClass"), find("Gateway"), find("HTTPRoute")
    proxy, eep, epp, ctp, svc = (find("EnvoyProxy"), find("EnvoyExtensionPolicy"), find("EnvoyPatchPolicy"),
                                 find("ClientTrafficPolicy"), find("Service"))
    ns = find("Namespace")["metadata"]["name"]
    for d in (gw, route, proxy, eep, epp, ctp, svc):
        assert d["metadata"]["namespace"] == ns, d["metadata"]
    assert gc["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
    assert gw["spec"]["gatewayClassName"] == gc["metadata"]["name"]
    p = gc["spec"]["parametersRef"]
    assert (p["group"], p["kind"], p["name"], p["namespace"]) == (EG_GROUP, "EnvoyProxy", proxy["metadata"]["name"], ns)
    (listener,) = gw["spec"]["listeners"]
    (parent,) = route["spec"]["parentRefs"]
    assert parent["name"] == gw["metadata"]["name"] and parent["sectionName"] == listener["name"]
    assert route["spec"]["hostnames"] == [listener["hostname"]]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}], "the filter serves /.well-known/*"
    (backend,) = rule["backendRefs"]
    assert backend["name"] == svc["metadata"]["name"] and backend["port"] in [p["port"] for p in svc["spec"]["ports"]]
    assert refs_to(eep, "HTTPRoute", route["metadata"]["name"])
    assert refs_to(epp, "Gateway", gw["metadata"]["name"]) and refs_to(ctp, "Gateway", gw["metadata"]["name"])

    (wasm,) = eep["spec"]["wasm"]
    config = wasm["config"]
    assert config["issuer"] == f"https://{listener['hostname']}", "the issuer is the public gateway URL"
    assert wasm.get("failOpen") is False
    assert KEY_ENV in wasm["env"]["hostKeys"]
    (env,) = [e for e in proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]
              if e["name"] == KEY_ENV]
    assert set(env) == {"name", "valueFrom"} and "secretKeyRef" in env["valueFrom"], "the key comes from a Secret"
    assert quantity_bytes(ctp["spec"]["connection"]["bufferLimit"]) > config.get("max_body_bytes",
                                                                                 FILTER_DEFAULT_MAX_BODY)

    (patch,) = epp["spec"]["jsonPatches"]
    assert epp["spec"]["type"] == "JSONPatch" and patch["type"] == LISTENER_TYPE
    assert patch["name"] == eg_listener_name(gw, listener)
    op = patch["operation"]
    assert op["op"] == "add" and op["path"] == "/allow_on_headers_stop_iteration" and op["value"] is True
    assert f"'{eg_wasm_filter_name(eep, 0)}'" in op["jsonPath"], op["jsonPath"]

    text = "\n".join(f.read_text() for f in DEPLOY.glob("*.yaml"))
    assert "PRIVATE KEY" not in text and "BEGIN" not in text, "no key material in the manifests"


# ================================================================================================================
# the Envoy config Envoy Gateway generates, before and after the EnvoyPatchPolicy, in a real Envoy
# ================================================================================================================
def eg_extract_module(layout: Path, tag: str) -> bytes:
    """The module Envoy Gateway's image fetcher (internal/wasm/imagefetcher.go) takes from an image: a Docker image's
    last layer or an OCI image's last tar+gzip layer holding plugin.wasm, else the OCI artifact's wasm layer."""
    def blob(desc) -> bytes:
        data = (layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == desc["digest"].split(":", 1)[1]
        return data

    index = json.loads((layout / "index.json").read_text())
    (desc,) = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    manifest = json.loads(blob(desc))
    layers = manifest["layers"]
    if manifest.get("mediaType") == DOCKER_MANIFEST or layers[-1]["mediaType"] == OCI_LAYER_GZIP:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layers[-1])))) as tar:
            (member,) = [m for m in tar.getmembers() if Path(m.name).name == "plugin.wasm"]
            module = tar.extractfile(member).read()
    else:
        (layer,) = [d for d in layers if d["mediaType"] == WASM_LAYER]
        module = blob(layer)
    assert module[:4] == b"\x00asm"
    return module


class ModuleServer:
    """Stands in for Envoy Gateway's Wasm HTTP server (internal/wasm/httpserver.go): serves <sha256>.wasm."""

    def __init__(self, module: bytes):
        self.sha256 = hashlib.sha256(module).hexdigest()
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path != f"/{outer.sha256}.wasm":
                    self.send_error(404)
                    return
                outer.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "application/wasm")
                self.send_header("content-length", str(len(module)))
                self.end_headers()
                self.wfile.write(module)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/{self.sha256}.wasm"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def eg_wasm_http_filter(policy: dict, index: int, module_url: str, sha256: str) -> dict:
    """internal/xds/translator/wasm.go buildHCMWasmFilter + wasmConfig, as protojson with proto names."""
    wasm = policy["spec"]["wasm"][index]
    ir_name = eg_wasm_ir_name(policy, index)
    config = {
        "name": wasm.get("name", ir_name),
        "vm_config": {
            "vm_id": ir_name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"remote": {
                "http_uri": {"uri": module_url, "cluster": "wasm_cluster", "timeout": "10s"},
                "sha256": sha256,
                "retry_policy": {"num_retries": 10, "retry_back_off": {"base_interval": "1s", "max_interval": "30s"}},
            }},
        },
        "configuration": {"@type": STRING_VALUE, "value": json.dumps(wasm.get("config", {}), separators=(",", ":"))},
    }
    if wasm.get("failOpen"):
        config["fail_open"] = True
    if "rootID" in wasm:
        config["root_id"] = wasm["rootID"]
    if wasm.get("env", {}).get("hostKeys"):
        config["vm_config"]["environment_variables"] = {"host_env_keys": wasm["env"]["hostKeys"]}
    return {"name": eg_wasm_filter_name(policy, index), "disabled": True,
            "typed_config": {"@type": WASM_TYPE, "config": config}}


def eg_listener(port: int, module_url: str, sha256: str, upstream_cluster: str, eep: dict | None = None) -> dict:
    """The xDS Listener Envoy Gateway builds for deploy/envoy-gateway (proto names, as its JSON patches see it).
    Route config inline instead of over RDS; address 127.0.0.1:<free port> instead of 0.0.0.0:10080."""
    gw, route, ctp = find("Gateway"), find("HTTPRoute"), find("ClientTrafficPolicy")
    eep = eep or find("EnvoyExtensionPolicy")
    (listener,) = gw["spec"]["listeners"]
    name = eg_listener_name(gw, listener)
    host = listener["hostname"]
    route_name = f"httproute/{route['metadata']['namespace']}/{route['metadata']['name']}/rule/0/match/0/" \
                 f"{host.replace('.', '_')}"
    filter_name = eg_wasm_filter_name(eep, 0)
    assert refs_to(eep, "HTTPRoute", route["metadata"]["name"])
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": f"http-{listener['port'] + 10000}",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "http_protocol_options": {"enable_trailers": bool(ctp["spec"].get("http1", {}).get("enableTrailers"))},
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": {"RejectRequest": "REJECT_REQUEST"}[ctp["spec"]["path"]["escapedSlashesAction"]],
        "server_header_transformation": "PASS_THROUGH",
        "use_remote_address": True,
        "http_filters": [
            eg_wasm_http_filter(eep, 0, module_url, sha256),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE, "suppress_envoy_headers": True}},
        ],
        "route_config": {
            "name": name,
            "ignore_port_in_host_matching": True,
            "virtual_hosts": [{
                "name": f"{name}/{host.replace('.', '_')}",
                "domains": [host],
                "routes": [{
                    "name": route_name,
                    "match": {"prefix": "/"},
                    "route": {"cluster": upstream_cluster, "timeout": route["spec"]["rules"][0]["timeouts"]["request"],
                              "upgrade_configs": [{"upgrade_type": "websocket"}]},
                    "typed_per_filter_config": {filter_name: {"@type": FILTER_CONFIG_TYPE, "config": {}}},
                }],
            }],
        },
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "per_connection_buffer_limit_bytes": quantity_bytes(ctp["spec"]["connection"]["bufferLimit"]),
        "max_connections_to_accept_per_socket_event": 1,
        "default_filter_chain": {"name": name, "filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]},
    }


def apply_envoy_patch_policy(policy: dict, resources: dict) -> tuple:
    """Apply an EnvoyPatchPolicy's JSON patches the way Envoy Gateway's translator does (jsonpatch.go): find the
    resource by type and name, turn `jsonPath` into JSON pointers (+ `path`), apply each RFC 6902 operation.
    Returns (patched resources, the pointers patched)."""
    out = copy.deepcopy(resources)
    pointers = []
    for p in policy["spec"]["jsonPatches"]:
        key = (p["type"], p["name"])
        assert key in out, f"EnvoyPatchPolicy names {key}, which Envoy Gateway would not have generated"
        op = p["operation"]
        if "jsonPath" in op:
            located = [str(m.pointer()) for m in jsonpath.finditer(op["jsonPath"], out[key])]
            assert located, f"no jsonPointers were found while evaluating the jsonPath {op['jsonPath']!r}"
            targets = [loc.rstrip("/") + "/" + op.get("path", "").lstrip("/") if op.get("path") else loc
                       for loc in located]
        else:
            targets = [op["path"]]
        for target in targets:
            operation = {"op": op["op"], "path": target, **({"value": op["value"]} if "value" in op else {}),
                         **({"from": op["from"]} if "from" in op else {})}
            out[key] = jsonpath.patch.apply([operation], out[key])
            pointers.append(target)
    return out, pointers


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    assert WASM.exists(), f"filter not built: {WASM}"
    root = tmp_path_factory.mktemp("eg-oci")
    layout = root / "mcp-jwt-signer"
    r = subprocess.run([sys.executable, str(OCI_SCRIPT), "--wasm", str(WASM), "--out", str(layout)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    url = find("EnvoyExtensionPolicy")["spec"]["wasm"][0]["code"]["image"]["url"]
    m = re.fullmatch(r"(?:oci://)?[^/]+/(?:.+/)?mcp-jwt-signer:([\w.-]+)", url)
    assert m, url
    module = eg_extract_module(layout, m.group(1))
    assert module == WASM.read_bytes(), "the image must hold exactly the built filter"
    server = ModuleServer(module)
    yield server
    server.stop()


def signing_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def start_eg_envoy(workdir: Path, upstream: RecordingUpstream, module: ModuleServer, patched: bool, key: str,
                   eep: dict | None = None):
    eep = eep or find("EnvoyExtensionPolicy")
    epp = find("EnvoyPatchPolicy")
    plugin = eep["spec"]["wasm"][0]["config"]
    host = find("Gateway")["spec"]["listeners"][0]["hostname"]
    upstream_cluster = "httproute/mcp-gateway/mcp/rule/0"
    found = {}

    def edit(cfg):
        (base,) = cfg["static_resources"]["listeners"]
        listener = eg_listener(base["address"]["socket_address"]["port_value"], module.url, module.sha256,
                               upstream_cluster, eep)
        generated = {(LISTENER_TYPE, listener["name"]): listener}
        (wasm_filter,) = [f for f in listener["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"]
                          if f["name"].startswith("envoy.filters.http.wasm/")]
        assert "allow_on_headers_stop_iteration" not in wasm_filter["typed_config"]["config"], \
            "Envoy Gateway's Wasm translation has no such field"
        if patched:
            generated, pointers = apply_envoy_patch_policy(epp, generated)
            found["pointers"] = pointers
        (listener,) = generated.values()
        found["listener"] = listener
        cfg["static_resources"]["listeners"] = [listener]
        (old_cluster,) = [c for c in cfg["static_resources"]["clusters"]]
        up = copy.deepcopy(old_cluster)
        up["name"] = up["load_assignment"]["cluster_name"] = upstream_cluster
        wasm_cluster = copy.deepcopy(old_cluster)
        wasm_cluster["name"] = wasm_cluster["load_assignment"]["cluster_name"] = "wasm_cluster"
        wasm_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"] = module.port
        cfg["static_resources"]["clusters"] = [up, wasm_cluster]

    envoy = start_envoy(workdir, json.dumps(plugin), upstream.port, env={KEY_ENV: key}, extra_edit=edit,
                        probe_kwargs={"headers": {"host": host}})
    return envoy, found


def test_generated_config_hangs_and_the_patch_policy_fixes_it(module_server, tmp_path):
    """As Envoy Gateway generates it, the filter loads (remote module, sha256 checked) and answers its JWKS, but an
    MCP POST never reaches the MCP server. With the EnvoyPatchPolicy applied to the same listener it is signed."""
    plugin = find("EnvoyExtensionPolicy")["spec"]["wasm"][0]["config"]
    host = find("Gateway")["spec"]["listeners"][0]["hostname"]
    headers = {**MCP_HEADERS, "host": host, "x-user-id": "alice", "x-team-id": "team-blue"}
    body = json.dumps(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}}, id=3)).encode()
    key = signing_key_pem()
    with RecordingUpstream() as upstream:
        envoy, _ = start_eg_envoy(tmp_path / "generated", upstream, module_server, patched=False, key=key)
        try:
            assert module_server.fetches >= 1, "Envoy fetched the module from the module server"
            assert requests.get(envoy.url + JWKS_SUFFIX, headers={"host": host}, timeout=5).status_code == 200
            with pytest.raises(requests.exceptions.ReadTimeout):
                requests.post(envoy.url + "/mcp", data=body, headers=headers, timeout=(2, 2.5))
            assert upstream.requests == [], "the hung request must not reach the MCP server"
        finally:
            envoy.stop()

        envoy, found = start_eg_envoy(tmp_path / "patched", upstream, module_server, patched=True, key=key)
        try:
            (pointer,) = found["pointers"]
            assert pointer == "/default_filter_chain/filters/0/typed_config/http_filters/0/typed_config/config/" \
                              "allow_on_headers_stop_iteration", pointer
            r = requests.post(envoy.url + "/mcp", data=body, headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            (seen,) = upstream.wait_for(1)
            token = seen.bearer_token()
            jwks = requests.get(envoy.url + JWKS_SUFFIX, headers={"host": host}, timeout=5).json()
            kid = jwt.get_unverified_header(token)["kid"]
            (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
            claims = jwt.decode(token, jwt.PyJWK(jwk, algorithm="RS256").key, algorithms=["RS256"],
                                audience=plugin["audience"], issuer=plugin["issuer"], leeway=5)
            assert claims["sub"] == "alice" and claims["act"] == {"sub": "team-blue"}
            assert set(claims["scope"].split()) == {"mcp:tools/call", "mcp:tools/get_weather:call"}
            assert json.loads(seen.body) == json.loads(body)
            assert seen.header("x-user-id") is None, "identity headers are stripped (strip_identity_headers)"
            disco = requests.get(envoy.url + "/.well-known/openid-configuration", headers={"host": host},
                                 timeout=5).json()
            assert disco["issuer"] == plugin["issuer"] and disco["jwks_uri"] == plugin["issuer"] + JWKS_SUFFIX
        finally:
            envoy.stop()


def test_patch_policy_changes_nothing_but_the_flag(module_server):
    listener = eg_listener(10080, module_server.url, module_server.sha256, "httproute/mcp-gateway/mcp/rule/0")
    key = (LISTENER_TYPE, listener["name"])
    patched, (pointer,) = apply_envoy_patch_policy(find("EnvoyPatchPolicy"), {key: listener})
    assert jsonpath.JSONPointer(pointer).resolve(patched[key]) is True
    undone = jsonpath.patch.apply([{"op": "remove", "path": pointer}], copy.deepcopy(patched[key]))
    assert undone == listener
    # A policy naming another filter (e.g. a renamed EnvoyExtensionPolicy) finds nothing, as Envoy Gateway reports.
    renamed = copy.deepcopy(find("EnvoyPatchPolicy"))
    op = renamed["spec"]["jsonPatches"][0]["operation"]
    op["jsonPath"] = op["jsonPath"].replace("/mcp-jwt-signer/", "/other-policy/")
    with pytest.raises(AssertionError, match="no jsonPointers were found"):
        apply_envoy_patch_policy(renamed, {key: listener})


def test_readme_says_what_breaks_and_what_to_enable():
    readme = (DEPLOY / "README.md").read_text()
    lowered = readme.lower()
    for phrase in ("allow_on_headers_stop_iteration", "enableEnvoyPatchPolicy", "hang", "XDSNameSchemeV2",
                   "not verified", "bufferLimit"):
        assert phrase.lower() in lowered, phrase
    assert shutil.which("node"), "node is needed for the schema checks"


HEADER_MODE = DEPLOY / "header-mode" / "extension-policy.yaml"


def test_header_mode_extension_policy_matches_the_schemas(tmp_path):
    (doc,) = list(yaml.safe_load_all(HEADER_MODE.read_text()))
    assert schema_errors([doc], tmp_path) == [[]]
    assert doc["spec"]["wasm"][0]["config"]["scope_source"] == "headers"


def test_header_mode_works_as_envoy_gateway_generates_it_without_a_patch(module_server, tmp_path):
    """The header-mode EnvoyExtensionPolicy, translated as Envoy Gateway does (no allow_on_headers_stop_iteration,
    no EnvoyPatchPolicy): a 2026-07-28 request is signed from its headers; one its headers cannot scope is refused
    400 -32020, not left hanging."""
    (eep,) = list(yaml.safe_load_all(HEADER_MODE.read_text()))
    host = find("Gateway")["spec"]["listeners"][0]["hostname"]
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = json.dumps(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}, "_meta": meta},
                          id=3)).encode()
    modern = {**MCP_HEADERS, "host": host, "x-user-id": "alice", "mcp-protocol-version": "2026-07-28",
              "mcp-method": "tools/call", "mcp-name": "get_weather"}
    with RecordingUpstream() as upstream:
        envoy, _ = start_eg_envoy(tmp_path / "hm", upstream, module_server, patched=False, key=signing_key_pem(),
                                  eep=eep)
        try:
            r = requests.post(envoy.url + "/mcp", data=body, headers=modern, timeout=10)
            assert r.status_code == 200, r.text
            (seen,) = upstream.wait_for(1)
            claims = jwt.decode(seen.bearer_token(), options={"verify_signature": False})
            assert claims["sub"] == "alice"
            assert set(claims["scope"].split()) == {"mcp:tools/call", "mcp:tools/get_weather:call"}
            legacy = {k: v for k, v in modern.items() if not k.startswith("mcp-")}
            r = requests.post(envoy.url + "/mcp", data=body, headers=legacy, timeout=10)
            assert r.status_code == 400 and r.json()["error"]["code"] == -32020, r.text
        finally:
            envoy.stop()
