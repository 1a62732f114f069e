"""deploy/istio/, checked as far as a machine without a Kubernetes cluster allows.

What is checked here, and against what:
  * every manifest parses and uses real API versions and fields:
      - Deployment, Service, ServiceAccount, Role, RoleBinding, PodDisruptionBudget, Namespace: Kubernetes' published
        OpenAPI schemas (PyPI kubernetes-validate, strict: unknown fields are errors), for the oldest and newest
        Kubernetes versions this project names;
      - Istio resources: Istio's published CRD schemas (crd-all.gen.yaml) as packaged by npm @kubernetes-models/istio
        (deploy/schemas/): its compiled validators (types, enums, required fields, oneOf groups) AND, because those do
        not refuse unknown fields, a check of every field against the same package's type declarations;
      - both with negative controls, so a validator that silently accepts everything fails the test;
  * the manifests fit together (selectors, hosts, ports, subsets, names, the issuer Istio uses as jwt_authn metadata
    key) and keep the signing key out of every manifest;
  * the OCI image (scripts/oci-image.py): a valid, reproducible OCI image layout, read back the way Istio's agent
    reads a pulled image, and by skopeo and umoci (Debian);
  * the EnvoyFilters in a real Envoy: each one's EXTENSION_CONFIG and HTTP_FILTER patches are applied to the
    envoy.yaml topology the way istiod + istio-agent would deliver them (ECDS, code rewritten from oci:// to the
    module pulled out of the OCI image), and a signed request goes through: egress with a mutual-TLS caller
    certificate carrying a SPIFFE ID, ingress behind a jwt_authn filter shaped like the one Istio generates from
    security.yaml; the route guard's patches too (its ECDS resource, and the MERGE into the router's
    upstream_http_filters applied with protobuf merge rules as istiod does), shown live: a request whose route
    changes after the signer's header edits is refused (route_changed), and without the MERGE patch it is not;
  * the WasmPlugin variant, translated the way istiod translates it, hangs in a real Envoy; the same config plus
    `allow_on_headers_stop_iteration: true` works.

Not verifiable here (no cluster): istiod actually accepting and merging these resources, gateway injection, pulling
from a registry, ECDS over ADS (for the guard's upstream filter as for the signer), the Secret reaching the proxy's
environment, real mesh certificates.

Tests that need identity sources beyond `header:` in the filter:
  mtls:uri_san   test_egress_envoyfilter_signs_for_the_calling_workload
  jwt:<claim>    test_ingress_envoyfilter_signs_for_the_idp_user, test_wasmplugin_translation_hangs_and_the_flag_fixes_it
                 (the WasmPlugin mirrors the ingress configuration)
"""

from __future__ import annotations

import copy
import datetime
import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jwt
import kubernetes_validate
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from harness import MCP_HEADERS, DISCOVERY_SUFFIX, JWKS_SUFFIX, REPO, WASM, filter_stats, load_envoy_yaml, \
    nothing_forwarded, route_guard_configs, rpc, start_envoy
from recording_upstream import RecordingUpstream

# Istio loads the filter as wasm (WasmPlugin, EnvoyFilter + ECDS, the OCI image): inherently the wasm build.
pytestmark = pytest.mark.wasm_only

DEPLOY = REPO / "deploy" / "istio"
SCHEMAS = REPO / "deploy" / "schemas"
ISTIO_MODELS = SCHEMAS / "node_modules" / "@kubernetes-models" / "istio"
OCI_SCRIPT = REPO / "scripts" / "oci-image.py"
NAMESPACE = "mcp-gateway"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
TYPED_EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
HCM_NAME = "envoy.filters.network.http_connection_manager"
ROUTER_NAME = "envoy.filters.http.router"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_CODEC_NAME = "envoy.filters.http.upstream_codec"
UPSTREAM_CODEC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
SIGNER_ROOT_ID = "mcp_jwt_signer"
GUARD_ROOT_ID = "mcp_jwt_signer_route_guard"
# The header in which the signer tells the route guard which route it scoped the token for (src/request/route.rs);
# the guard removes it, so it never reaches an MCP server behind a gateway that runs the guard.
ROUTE_HEADER = "x-mcp-jwt-signer-route"
KEY_ENV = "MCP_JWT_SIGNING_KEY"
KEY_SECRET = "mcp-jwt-signer-key"
# Envoy's per-connection buffer limit when nothing sets it (Istio does not, unless the EDGE connection profile is
# chosen): a body past it gets Envoy's own plain 413 before the filter can answer, so max_body_bytes must stay below.
ENVOY_DEFAULT_BUFFER_LIMIT = 1024 * 1024
KUBERNETES_VERSIONS = ("1.30", "1.37")
SPIFFE_ID = "spiffe://cluster.local/ns/app/sa/client"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


# ================================================================================================================
# loading the manifests
# ================================================================================================================
class Resource:
    def __init__(self, path: Path, index: int, doc: dict):
        self.path, self.index, self.doc = path, index, doc

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}#{self.index} {self.doc.get('kind')}/{self.name}"

    @property
    def api_version(self) -> str:
        return self.doc.get("apiVersion", "")

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        return (self.doc.get("metadata") or {}).get("name", "")

    @property
    def is_istio(self) -> bool:
        return self.api_version.split("/")[0].endswith(".istio.io")


def manifest_files() -> list:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert files, f"no manifests under {DEPLOY}"
    return files


def load_resources() -> list:
    out = []
    for f in manifest_files():
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs, f"{f}: no YAML documents"
        out.extend(Resource(f, i, d) for i, d in enumerate(docs))
    return out


RESOURCES = load_resources()


def find(kind: str, name: str) -> Resource:
    found = [r for r in RESOURCES if r.kind == kind and r.name == name]
    assert len(found) == 1, f"expected one {kind}/{name} under deploy/istio, found {len(found)}"
    return found[0]


def of_kind(kind: str) -> list:
    return [r for r in RESOURCES if r.kind == kind]


def cargo_version() -> str:
    package = (REPO / "Cargo.toml").read_text().split("[package]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', package, re.MULTILINE).group(1)


def patch_of(envoy_filter: Resource, apply_to: str, operation: str = None, root_id: str = None) -> dict:
    """The one patch of `envoy_filter` that applies to `apply_to` (and has that `operation`, and for an
    EXTENSION_CONFIG, whose Wasm config has that `root_id`)."""
    patches = [p for p in envoy_filter.doc["spec"]["configPatches"] if p["applyTo"] == apply_to
               and (operation is None or p["patch"]["operation"] == operation)
               and (root_id is None or p["patch"]["value"]["typed_config"]["config"].get("root_id") == root_id)]
    what = " ".join(x for x in (apply_to, operation, root_id) if x)
    assert len(patches) == 1, f"{envoy_filter.where}: expected one {what} patch, found {len(patches)}"
    return patches[0]


def wasm_config(envoy_filter: Resource, root_id: str = SIGNER_ROOT_ID) -> dict:
    """The envoy.extensions.wasm.v3.PluginConfig inside the EnvoyFilter's EXTENSION_CONFIG patch for the signer
    (or, with GUARD_ROOT_ID, for the route guard)."""
    return patch_of(envoy_filter, "EXTENSION_CONFIG", root_id=root_id)["patch"]["value"]["typed_config"]["config"]


def plugin_json(envoy_filter: Resource) -> dict:
    configuration = wasm_config(envoy_filter)["configuration"]
    assert configuration["@type"] == STRING_VALUE
    return json.loads(configuration["value"])


def gateway_deployment_for(selector_labels: dict) -> Resource:
    found = [d for d in of_kind("Deployment")
             if selector_labels.items() <= d.doc["spec"]["template"]["metadata"]["labels"].items()]
    assert len(found) == 1, f"selector {selector_labels} matches {len(found)} shipped Deployments"
    return found[0]


def service_for(deployment: Resource) -> Resource:
    pod_labels = deployment.doc["spec"]["template"]["metadata"]["labels"]
    found = [s for s in of_kind("Service") if s.doc["spec"]["selector"].items() <= pod_labels.items()]
    assert len(found) == 1, f"{deployment.where}: {len(found)} Services select its pods"
    return found[0]


# ================================================================================================================
# Istio's published schema, from @kubernetes-models/istio's type declarations (generated from crd-all.gen.yaml)
# ================================================================================================================
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|([A-Za-z_$][A-Za-z0-9_$]*)|(\S))')
OBJECT_META_FIELDS = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}


class TypeDeclarationParser:
    """A parser for the subset of TypeScript that the generated declarations use: object types with quoted keys
    (`"k"?: T;`), index signatures, `Array<T>`, unions, intersections, parentheses, string literals, `string`,
    `number`, `boolean`, `IObjectMeta` and `Exclude<A, B>` (only inside oneOf constraints, which the compiled
    validators check)."""

    def __init__(self, text: str):
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        self.tokens = []
        for m in _TOKEN.finditer(text):
            tok = m.group(1) or m.group(2) or m.group(3)
            if tok:
                self.tokens.append(tok)
        self.pos = 0

    def peek(self, ahead: int = 0):
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def next(self):
        tok = self.peek()
        self.pos += 1
        return tok

    def expect(self, tok):
        got = self.next()
        if got != tok:
            raise ValueError(f"expected {tok!r}, got {got!r} at token {self.pos}")

    def interface(self, name: str):
        for i in range(len(self.tokens) - 3):
            if self.tokens[i:i + 3] == ["export", "interface", name]:
                self.pos = i + 3
                self.expect("{")
                return self.object_type()
        raise ValueError(f"interface {name} not found")

    def type_(self):
        alternatives = [self.intersection()]
        while self.peek() == "|":
            self.next()
            alternatives.append(self.intersection())
        return alternatives[0] if len(alternatives) == 1 else ("union", alternatives)

    def intersection(self):
        parts = [self.postfix()]
        while self.peek() == "&":
            self.next()
            parts.append(self.postfix())
        return parts[0] if len(parts) == 1 else ("intersection", parts)

    def postfix(self):
        t = self.primary()
        while self.peek() == "[" and self.peek(1) == "]":
            self.pos += 2
            t = ("array", t)
        return t

    def primary(self):
        tok = self.next()
        if tok == "{":
            return self.object_type()
        if tok == "(":
            t = self.type_()
            self.expect(")")
            return t
        if tok.startswith('"'):
            return ("literal", json.loads(tok))
        if tok == "Array":
            self.expect("<")
            t = self.type_()
            self.expect(">")
            return ("array", t)
        if tok == "Exclude":
            self.expect("<")
            self.type_()
            self.expect(",")
            self.type_()
            self.expect(">")
            return ("opaque",)
        if tok in ("string", "number", "boolean"):
            return ("scalar", tok)
        if tok == "IObjectMeta":
            return ("meta",)
        raise ValueError(f"unsupported type token {tok!r} at token {self.pos}")

    def object_type(self):
        props, required, additional = {}, set(), None
        while self.peek() != "}":
            if self.peek() == "[":  # [key: string]: T
                self.next()
                self.next()
                self.expect(":")
                self.expect("string")
                self.expect("]")
                self.expect(":")
                additional = self.type_()
            else:
                key = self.next()
                if not key.startswith('"'):
                    raise ValueError(f"unexpected key token {key!r} at token {self.pos}")
                name = json.loads(key)
                optional = self.peek() == "?"
                if optional:
                    self.next()
                self.expect(":")
                props[name] = self.type_()
                if not optional:
                    required.add(name)
            if self.peek() == ";":
                self.next()
        self.expect("}")
        if not props and additional is None:
            return ("any",)  # `{}`: x-kubernetes-preserve-unknown-fields (e.g. EnvoyFilter patch.value)
        return ("object", props, required, additional)


_SCHEMA_CACHE: dict = {}


def istio_schema(api_version: str, kind: str):
    group, version = api_version.split("/")
    path = ISTIO_MODELS / group / version / f"{kind}.d.ts"
    assert ISTIO_MODELS.is_dir(), (
        f"{ISTIO_MODELS} is missing: install the pinned Istio CRD schemas with "
        "`npm ci --prefix deploy/schemas` (the Makefile's e2e prerequisites should do this)")
    assert path.is_file(), f"no published Istio schema for {api_version} {kind} ({path} missing)"
    if path not in _SCHEMA_CACHE:
        _SCHEMA_CACHE[path] = TypeDeclarationParser(path.read_text()).interface(f"I{kind}")
    return _SCHEMA_CACHE[path]


def schema_errors(value, node, path="") -> list:
    """Every mismatch between `value` and a parsed schema node: unknown fields, missing required fields, wrong types,
    values outside an enum. Intersections are checked against their first part, the object with every field; the
    oneOf constraints that follow are left to the compiled validators."""
    kind = node[0]
    where = path or "<root>"
    if kind in ("any", "opaque"):
        return []
    if kind == "meta":
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        return [f"{where}.{k}: unknown field" for k in value if k not in OBJECT_META_FIELDS]
    if kind == "scalar":
        ok = {
            "string": isinstance(value, str),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
        }[node[1]]
        return [] if ok else [f"{where}: {value!r} is not a {node[1]}"]
    if kind == "literal":
        return [] if value == node[1] else [f"{where}: {value!r} is not {node[1]!r}"]
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [e for i, item in enumerate(value) for e in schema_errors(item, node[1], f"{path}[{i}]")]
    if kind == "object":
        _, props, required, additional = node
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        errors = [f"{where}: required field {k!r} missing" for k in sorted(required) if k not in value]
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if k in props:
                errors += schema_errors(v, props[k], sub)
            elif additional is not None:
                errors += schema_errors(v, additional, sub)
            else:
                errors.append(f"{sub}: unknown field")
        return errors
    if kind == "intersection":
        return schema_errors(value, node[1][0], path)
    if kind == "union":
        attempts = [schema_errors(value, alt, path) for alt in node[1]]
        if any(not a for a in attempts):
            return []
        if all(alt[0] == "literal" for alt in node[1]):
            return [f"{where}: {value!r} is not one of {[alt[1] for alt in node[1]]}"]
        return min(attempts, key=len)
    raise AssertionError(f"unknown schema node {kind}")


def schema_field_names(node) -> set:
    """Every field name anywhere in a schema."""
    kind = node[0]
    if kind == "object":
        names = set(node[1])
        for sub in node[1].values():
            names |= schema_field_names(sub)
        if node[3] is not None:
            names |= schema_field_names(node[3])
        return names
    if kind == "array":
        return schema_field_names(node[1])
    if kind in ("union", "intersection"):
        return set().union(*(schema_field_names(n) for n in node[1]))
    return set()


def run_istio_validators(docs: list, workdir: Path) -> list:
    """Run the compiled CRD validators (deploy/schemas/validate.mjs) on `docs`; one result per doc."""
    assert ISTIO_MODELS.is_dir(), f"{ISTIO_MODELS} is missing: run `npm ci --prefix deploy/schemas`"
    node = shutil.which("node")
    assert node, "node is needed for the Istio CRD validators (Debian/NodeSource nodejs)"
    tmp = workdir / "istio-resources.json"
    tmp.write_text(json.dumps(docs))
    proc = subprocess.run([node, str(SCHEMAS / "validate.mjs"), str(tmp)], capture_output=True, text=True,
                          timeout=60, cwd=SCHEMAS)
    assert proc.returncode == 0, f"validate.mjs failed: {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout)
    assert len(results) == len(docs)
    return results


# ================================================================================================================
# manifests: parse, real APIs, real fields
# ================================================================================================================
def test_every_manifest_parses_into_named_namespaced_resources():
    cluster_scoped = {"Namespace"}
    for r in RESOURCES:
        assert r.api_version and r.kind and r.name, f"{r.where}: apiVersion, kind and metadata.name are required"
        ns = r.doc["metadata"].get("namespace")
        if r.kind in cluster_scoped:
            assert ns is None and r.name == NAMESPACE, r.where
        else:
            assert ns == NAMESPACE, f"{r.where}: namespace {ns!r}, expected {NAMESPACE!r}"
    keys = [(r.api_version, r.kind, r.name) for r in RESOURCES]
    assert len(keys) == len(set(keys)), "a resource is defined twice"


def test_core_resources_match_kubernetes_openapi_schemas():
    core = [r for r in RESOURCES if not r.is_istio]
    assert {r.kind for r in core} >= {"Deployment", "Service", "ServiceAccount", "Namespace"}
    for version in KUBERNETES_VERSIONS:
        for r in core:
            try:
                kubernetes_validate.validate(r.doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{r.where} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")

    # Negative controls: the strict schemas do refuse an unknown field and a wrong type.
    dep = copy.deepcopy(of_kind("Deployment")[0].doc)
    dep["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": KEY_SECRET}, "bogus": 1}]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBERNETES_VERSIONS[-1], strict=True)
    svc = copy.deepcopy(of_kind("Service")[0].doc)
    svc["spec"]["ports"][0]["port"] = "https"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(svc, KUBERNETES_VERSIONS[-1], strict=True)


def test_istio_resources_pass_the_published_crd_validators(tmp_path):
    istio = [r for r in RESOURCES if r.is_istio]
    assert {r.kind for r in istio} >= {"EnvoyFilter", "Gateway", "VirtualService", "DestinationRule", "ServiceEntry",
                                       "RequestAuthentication", "AuthorizationPolicy", "WasmPlugin"}
    # Negative controls, validated in the same run: each must be refused.
    bad_tls = copy.deepcopy(find("Gateway", "mcp-egress").doc)
    bad_tls["spec"]["servers"][0]["tls"]["mode"] = "MUTUAL_ISTIO"
    bad_apply_to = copy.deepcopy(find("EnvoyFilter", "mcp-jwt-signer-egress").doc)
    bad_apply_to["spec"]["configPatches"][0]["applyTo"] = "EXTENSION_CONFIGURATION"
    bad_host = copy.deepcopy(find("ServiceEntry", "partner-mcp").doc)
    bad_host["spec"]["ports"][0]["number"] = "eighty"
    controls = [bad_tls, bad_apply_to, bad_host]

    results = run_istio_validators([r.doc for r in istio] + controls, tmp_path)
    for r, res in zip(istio, results):
        assert not res.get("skipped"), f"{r.where}: the validator did not check it"
        assert res["errors"] == [], f"{r.where}: {res['errors']}"
    for doc, res in zip(controls, results[len(istio):]):
        assert res["errors"], f"negative control {doc['kind']} was accepted: the validators are not checking"


def test_istio_resources_use_only_fields_of_the_published_crds():
    for r in RESOURCES:
        if r.is_istio:
            errors = schema_errors(r.doc, istio_schema(r.api_version, r.kind))
            assert errors == [], f"{r.where}:\n  " + "\n  ".join(errors)

    # Negative controls: an unknown field, a field in the wrong place, an enum typo, a missing required field.
    ef = copy.deepcopy(find("EnvoyFilter", "mcp-jwt-signer-ingress").doc)
    ef["spec"]["configPatches"][1]["match"]["listener"]["filterChain"]["subfilter"] = {"name": ROUTER_NAME}
    assert any("subfilter: unknown field" in e for e in schema_errors(ef, istio_schema(
        "networking.istio.io/v1alpha3", "EnvoyFilter")))
    wp = copy.deepcopy(find("WasmPlugin", "mcp-jwt-signer-does-not-work").doc)
    wp["spec"]["vmConfig"]["allowOnHeadersStopIteration"] = True
    assert any("allowOnHeadersStopIteration: unknown field" in e for e in schema_errors(wp, istio_schema(
        "extensions.istio.io/v1alpha1", "WasmPlugin")))
    dr = copy.deepcopy(find("DestinationRule", "partner-mcp-tls").doc)
    dr["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"] = "ISTIO_SIMPLE"
    assert schema_errors(dr, istio_schema("networking.istio.io/v1", "DestinationRule"))
    wp2 = copy.deepcopy(find("WasmPlugin", "mcp-jwt-signer-does-not-work").doc)
    del wp2["spec"]["url"]
    assert any("'url' missing" in e for e in schema_errors(wp2, istio_schema(
        "extensions.istio.io/v1alpha1", "WasmPlugin")))


def test_the_wasmplugin_api_has_no_field_for_allow_on_headers_stop_iteration():
    schema = istio_schema("extensions.istio.io/v1alpha1", "WasmPlugin")
    names = schema_field_names(schema)
    assert {"url", "pluginConfig", "vmConfig", "failStrategy", "phase"} <= names  # the parse found the fields
    assert not [n for n in names if re.search("stop|iteration|headers", n, re.I)], names
    vm_config = schema[1]["spec"][1]["vmConfig"]
    assert set(vm_config[1]) == {"env"}, "WasmPlugin.spec.vmConfig has only env: no Wasm PluginConfig fields"

    wp = find("WasmPlugin", "mcp-jwt-signer-does-not-work")
    header = wp.path.read_text().split("apiVersion:", 1)[0]
    assert "DOES NOT WORK: REQUESTS HANG" in header and "Do not apply this" in header
    assert wp.path.parent.name == "does-not-work"
    # It is the ingress deployment, minus the flag: same plugin configuration, same image, same gateway.
    ingress = find("EnvoyFilter", "mcp-jwt-signer-ingress")
    assert wp.doc["spec"]["pluginConfig"] == plugin_json(ingress)
    assert wp.doc["spec"]["url"] == wasm_config(ingress)["vm_config"]["code"]["remote"]["http_uri"]["uri"]
    assert wp.doc["spec"]["selector"]["matchLabels"] == ingress.doc["spec"]["workloadSelector"]["labels"]
    assert wp.doc["spec"]["pluginName"] == wasm_config(ingress)["root_id"]


# ================================================================================================================
# manifests: the signing key, the EnvoyFilters, routing
# ================================================================================================================
def test_the_signing_key_comes_only_from_a_secret_through_the_proxy_environment():
    for f in manifest_files():
        text = f.read_text()
        assert "PRIVATE KEY" not in text and "BEGIN RSA" not in text, f"{f}: key material in a manifest"
    assert not of_kind("Secret"), "no Secret is shipped: the operator creates it from a PEM file (README)"
    for ef in of_kind("EnvoyFilter"):
        assert "signing_key" not in plugin_json(ef), f"{ef.where}: the key must come from the environment"
        env = wasm_config(ef)["vm_config"]["environment_variables"]
        assert env == {"host_env_keys": [KEY_ENV]}, f"{ef.where}: {env}"
        dep = gateway_deployment_for(ef.doc["spec"]["workloadSelector"]["labels"])
        (proxy,) = [c for c in dep.doc["spec"]["template"]["spec"]["containers"] if c["name"] == "istio-proxy"]
        (key_env,) = [e for e in proxy["env"] if e["name"] == KEY_ENV]
        assert key_env == {"name": KEY_ENV, "valueFrom": {"secretKeyRef": {"name": KEY_SECRET, "key": KEY_ENV}}}
    wp = find("WasmPlugin", "mcp-jwt-signer-does-not-work")
    assert "signing_key" not in wp.doc["spec"]["pluginConfig"]
    assert wp.doc["spec"]["vmConfig"]["env"] == [{"name": KEY_ENV, "valueFrom": "HOST"}]


@pytest.mark.parametrize("name", ["mcp-jwt-signer-ingress", "mcp-jwt-signer-egress"])
def test_envoyfilter_adds_the_signer_over_ecds_with_the_flag(name):
    ef = find("EnvoyFilter", name)
    dep = gateway_deployment_for(ef.doc["spec"]["workloadSelector"]["labels"])
    assert dep.doc["spec"]["template"]["metadata"]["annotations"]["inject.istio.io/templates"] == "gateway"
    assert dep.doc["spec"]["replicas"] >= 2

    ext = patch_of(ef, "EXTENSION_CONFIG", root_id=SIGNER_ROOT_ID)
    assert ext["patch"]["operation"] == "ADD"
    value = ext["patch"]["value"]
    assert value["typed_config"]["@type"] == WASM_TYPE
    cfg = value["typed_config"]["config"]
    assert cfg["allow_on_headers_stop_iteration"] is True
    assert cfg["fail_open"] is False
    assert cfg["root_id"] == "mcp_jwt_signer"
    remote = cfg["vm_config"]["code"]["remote"]
    uri = remote["http_uri"]["uri"]
    m = re.fullmatch(r"oci://[a-z0-9.-]+(?::\d+)?/(?:[a-z0-9._-]+/)*mcp-jwt-signer(?::([\w.-]+)|@sha256:[0-9a-f]{64})", uri)
    assert m, f"{ef.where}: {uri} is not an oci:// reference to mcp-jwt-signer"
    if m.group(1):
        assert m.group(1) == cargo_version(), "the image tag must be the one `make oci` builds (Cargo version)"
    assert remote["http_uri"]["cluster"] and remote["http_uri"]["timeout"]

    flt = patch_of(ef, "HTTP_FILTER", "INSERT_BEFORE")
    assert flt["match"]["context"] == "GATEWAY"
    assert flt["match"]["listener"]["filterChain"]["filter"]["name"] == HCM_NAME
    assert flt["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == ROUTER_NAME
    assert flt["patch"]["operation"] == "INSERT_BEFORE"
    discovery = flt["patch"]["value"]["config_discovery"]
    assert flt["patch"]["value"]["name"] == value["name"], "the filter must reference the ECDS resource by name"
    assert value["name"].startswith(NAMESPACE + "/"), "namespace-qualified, so no other namespace can shadow it"
    assert discovery["type_urls"] == [WASM_TYPE]
    assert discovery["config_source"] == {"ads": {}, "initial_fetch_timeout": "0s"}

    plugin = plugin_json(ef)
    assert plugin["issuer"] == "https://mcp.example.com", "one issuer (and key) for both gateways"
    assert 0 < plugin["max_body_bytes"] < ENVOY_DEFAULT_BUFFER_LIMIT


@pytest.mark.parametrize("name", ["mcp-jwt-signer-ingress", "mcp-jwt-signer-egress"])
def test_envoyfilter_adds_the_route_guard_to_the_router(name):
    """The route guard (docs/security.md, "The token goes only to the route it was scoped for"): the same module,
    root id mcp_jwt_signer_route_guard, over ECDS like the signer, MERGEd into the router's upstream_http_filters
    ahead of upstream_codec, on exactly the connection managers that get the signer. Shaped like envoy.yaml's."""
    ef = find("EnvoyFilter", name)
    signer = wasm_config(ef)
    guard_ext = patch_of(ef, "EXTENSION_CONFIG", root_id=GUARD_ROOT_ID)
    assert guard_ext["patch"]["operation"] == "ADD"
    guard_value = guard_ext["patch"]["value"]
    assert guard_value["name"].startswith(NAMESPACE + "/")
    assert guard_value["name"] != patch_of(ef, "EXTENSION_CONFIG", root_id=SIGNER_ROOT_ID)["patch"]["value"]["name"]
    assert guard_value["typed_config"]["@type"] == WASM_TYPE
    guard = guard_value["typed_config"]["config"]
    assert guard["root_id"] == GUARD_ROOT_ID and guard["fail_open"] is False
    assert "configuration" not in guard, "the guard takes no plugin configuration"
    # One VM for both: same vm_id, runtime, code (the same image) and environment as the signer.
    assert guard["vm_config"] == signer["vm_config"]
    assert guard["vm_config"]["vm_id"] == "mcp_jwt_signer"

    # envoy.yaml's guard: the same PluginConfig but for the code source (local file there, oci:// image here).
    (reference,) = route_guard_configs(load_envoy_yaml())
    strip_code = lambda c: {**c, "vm_config": {k: v for k, v in c["vm_config"].items() if k != "code"}}  # noqa: E731
    assert strip_code(guard) == strip_code(reference)

    merge = patch_of(ef, "HTTP_FILTER", "MERGE")
    insert = patch_of(ef, "HTTP_FILTER", "INSERT_BEFORE")
    assert merge["match"] == insert["match"], "the guard goes wherever the signer goes, and only there"
    assert merge["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == ROUTER_NAME
    value = merge["patch"]["value"]
    assert value.get("name", ROUTER_NAME) == ROUTER_NAME, "a MERGE with another name would rename the router"
    assert value["typed_config"]["@type"] == ROUTER_TYPE
    assert set(value["typed_config"]) == {"@type", "upstream_http_filters"}
    first, last = value["typed_config"]["upstream_http_filters"]
    assert first["name"] == guard_value["name"], "the upstream filter references the guard's ECDS resource"
    assert first["config_discovery"] == insert["patch"]["value"]["config_discovery"], "warms and fails like the signer"
    assert last == {"name": UPSTREAM_CODEC_NAME, "typed_config": {"@type": UPSTREAM_CODEC_TYPE}}


def test_egress_routing_sends_mcp_traffic_through_the_egress_gateway():
    se, gw = find("ServiceEntry", "partner-mcp"), find("Gateway", "mcp-egress")
    vs, dr_gw, dr_tls = find("VirtualService", "partner-mcp"), find("DestinationRule", "mcp-egressgateway"), \
        find("DestinationRule", "partner-mcp-tls")
    ef = find("EnvoyFilter", "mcp-jwt-signer-egress")
    (host,) = se.doc["spec"]["hosts"]
    assert se.doc["spec"]["location"] == "MESH_EXTERNAL"
    se_ports = {p["number"]: p["protocol"] for p in se.doc["spec"]["ports"]}
    assert se_ports == {80: "HTTP", 443: "HTTPS"}

    # The gateway: selected by the EnvoyFilter's workload, ISTIO_MUTUAL so callers present their SPIFFE certificate.
    dep = gateway_deployment_for(gw.doc["spec"]["selector"])
    assert dep is gateway_deployment_for(ef.doc["spec"]["workloadSelector"]["labels"]), "filter and Gateway on one workload"
    (server,) = gw.doc["spec"]["servers"]
    assert server["hosts"] == [host] and server["tls"] == {"mode": "ISTIO_MUTUAL"}
    assert server["port"]["protocol"] == "HTTPS"
    svc = service_for(dep)
    svc_ports = {p["port"] for p in svc.doc["spec"]["ports"]}
    assert server["port"]["number"] in svc_ports
    gateway_fqdn = f"{svc.name}.{svc.doc['metadata']['namespace']}.svc.cluster.local"
    gateway_ref = f"{gw.doc['metadata']['namespace']}/{gw.name}"

    # Sidecars -> egress gateway subset over ISTIO_MUTUAL with the external host as SNI.
    assert dr_gw.doc["spec"]["host"] == gateway_fqdn
    (subset,) = dr_gw.doc["spec"]["subsets"]
    (pls,) = subset["trafficPolicy"]["portLevelSettings"]
    assert pls["port"]["number"] == server["port"]["number"]
    assert pls["tls"] == {"mode": "ISTIO_MUTUAL", "sni": host}

    # VirtualService: mesh:80 -> gateway subset; gateway:443 -> the external host on 443.
    assert vs.doc["spec"]["hosts"] == [host]
    assert set(vs.doc["spec"]["gateways"]) == {"mesh", gateway_ref}
    mesh_rule, gw_rule = vs.doc["spec"]["http"]
    assert mesh_rule["match"] == [{"gateways": ["mesh"], "port": 80}]
    assert mesh_rule["route"] == [{"destination": {"host": gateway_fqdn, "subset": subset["name"],
                                                   "port": {"number": server["port"]["number"]}}}]
    assert gw_rule["match"] == [{"gateways": [gateway_ref], "port": server["port"]["number"]}]
    assert gw_rule["route"] == [{"destination": {"host": host, "port": {"number": 443}}}]

    # Gateway -> external server: TLS origination, visible only in the gateway's namespace.
    assert dr_tls.doc["spec"]["host"] == host and dr_tls.doc["spec"]["exportTo"] == ["."]
    (origination,) = dr_tls.doc["spec"]["trafficPolicy"]["portLevelSettings"]
    assert origination == {"port": {"number": 443}, "tls": {"mode": "SIMPLE", "sni": host}}

    # The identity the filter puts in act.sub is the caller's SPIFFE ID, and the token is for the external server.
    plugin = plugin_json(ef)
    assert plugin["identity"]["actor"] == ["mtls:uri_san"]
    assert plugin["audience"] == host


def test_ingress_routing_and_security_fit_the_signer():
    gw, vs = find("Gateway", "mcp-ingress"), find("VirtualService", "mcp-ingress")
    ra, ap = find("RequestAuthentication", "mcp-ingress-idp"), find("AuthorizationPolicy", "mcp-ingress")
    ef = find("EnvoyFilter", "mcp-jwt-signer-ingress")
    labels = ef.doc["spec"]["workloadSelector"]["labels"]
    dep = gateway_deployment_for(gw.doc["spec"]["selector"])
    assert dep is gateway_deployment_for(labels)
    assert ra.doc["spec"]["selector"]["matchLabels"] == labels == ap.doc["spec"]["selector"]["matchLabels"]

    (server,) = gw.doc["spec"]["servers"]
    assert server["tls"]["mode"] == "SIMPLE" and server["tls"]["credentialName"]
    assert server["port"]["number"] in {p["port"] for p in service_for(dep).doc["spec"]["ports"]}
    assert vs.doc["spec"]["hosts"] == server["hosts"]
    assert vs.doc["spec"]["gateways"] == [f"{gw.doc['metadata']['namespace']}/{gw.name}"]

    plugin = plugin_json(ef)
    host = server["hosts"][0]
    assert plugin["issuer"] == f"https://{host}", "the issuer is the public host, where the JWKS is served"

    # Istio's jwt_authn stores a verified payload under the token's issuer: that is the filter's metadata key.
    (rule,) = ra.doc["spec"]["jwtRules"]
    assert plugin["jwt_payload_in_metadata"] == rule["issuer"]
    assert plugin["identity"]["subject"] == ["jwt:sub"]
    assert rule["forwardOriginalToken"] is False

    # The discovery documents are public; everything else needs a token from that issuer.
    well_known, authenticated = ap.doc["spec"]["rules"]
    assert ap.doc["spec"]["action"] == "ALLOW"
    assert "from" not in well_known
    (op,) = well_known["to"]
    assert sorted(op["operation"]["paths"]) == sorted([DISCOVERY_SUFFIX, JWKS_SUFFIX])
    assert sorted(op["operation"]["methods"]) == ["GET", "HEAD"]
    assert authenticated == {"from": [{"source": {"requestPrincipals": [rule["issuer"] + "/*"]}}]}


# ================================================================================================================
# the OCI image
# ================================================================================================================
def build_oci(out: Path, wasm: Path, *extra, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(OCI_SCRIPT), "--wasm", str(wasm), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def oci_layout(tmp_path_factory):
    """The OCI image layout of the built filter, as `make oci` writes it (into a tmp dir), and the wasm it holds."""
    assert WASM.exists(), f"filter not built: {WASM}"
    root = tmp_path_factory.mktemp("oci")
    wasm_copy = root / "mcp_jwt_signer.wasm"  # a snapshot: the tests compare against exactly these bytes
    shutil.copyfile(WASM, wasm_copy)
    layout = root / "mcp-jwt-signer"
    build_oci(layout, wasm_copy)
    return layout, wasm_copy.read_bytes()


def read_blob(layout: Path, descriptor: dict) -> bytes:
    algo, _, hexdigest = descriptor["digest"].partition(":")
    assert algo == "sha256" and re.fullmatch(r"[0-9a-f]{64}", hexdigest), descriptor
    data = (layout / "blobs" / "sha256" / hexdigest).read_bytes()
    assert len(data) == descriptor["size"], f"{descriptor['digest']}: size {len(data)} != {descriptor['size']}"
    assert hashlib.sha256(data).hexdigest() == hexdigest, f"{descriptor['digest']}: content does not match"
    return data


def manifest_for(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    found = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(found) == 1, f"tag {tag!r}: {len(found)} manifests in {layout}/index.json"
    assert found[0]["mediaType"] == OCI_MANIFEST
    return json.loads(read_blob(layout, found[0]))


def istio_agent_extract(layout: Path, tag: str) -> bytes:
    """The Wasm module istio-agent would write to its cache for `oci://<registry>/mcp-jwt-signer:<tag>`, following
    its image fetcher: a Docker manifest -> the last layer, a Docker tar+gzip holding plugin.wasm; otherwise the
    "compat" variant (last layer OCI tar+gzip holding plugin.wasm), else the "oci" artifact variant (exactly two
    layers, one of them the raw module). Then its check that the result starts with the wasm magic number."""
    manifest = manifest_for(layout, tag)
    layers = manifest["layers"]
    assert layers, "no layers"

    def plugin_from_tar_gzip(descriptor) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(read_blob(layout, descriptor)))) as tar:
            for member in tar.getmembers():
                if Path(member.name).name == "plugin.wasm":
                    return tar.extractfile(member).read()
        raise AssertionError("plugin.wasm not in the layer")

    if manifest.get("mediaType") == DOCKER_MANIFEST:
        assert layers[-1]["mediaType"] == DOCKER_LAYER
        module = plugin_from_tar_gzip(layers[-1])
    elif layers[-1]["mediaType"] == OCI_LAYER_GZIP:
        module = plugin_from_tar_gzip(layers[-1])
    else:
        assert len(layers) == 2, f"oci variant needs exactly 2 layers, has {len(layers)}"
        (wasm_layer,) = [d for d in layers if d["mediaType"] == WASM_CONTENT]
        module = read_blob(layout, wasm_layer)
    assert len(module) >= 8 and module[:4] == b"\x00asm", "not a Wasm binary"
    return module


def test_oci_image_layout_is_valid_and_holds_exactly_the_built_wasm(oci_layout):
    layout, wasm = oci_layout
    tag = cargo_version()
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    assert sorted(m["annotations"][REF_NAME] for m in index["manifests"]) == [tag, tag + "-artifact"]

    # Every blob is referenced, and every reference resolves to a blob with the right digest and size.
    referenced = set()
    for m in index["manifests"]:
        referenced.add(m["digest"])
        manifest = json.loads(read_blob(layout, m))
        assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
        for d in [manifest["config"], *manifest["layers"]]:
            read_blob(layout, d)
            referenced.add(d["digest"])
    on_disk = {"sha256:" + p.name for p in (layout / "blobs" / "sha256").iterdir()}
    assert on_disk == referenced, f"unreferenced or missing blobs: {on_disk ^ referenced}"

    # compat: FROM scratch + plugin.wasm, one tar+gzip layer, image config whose diff_id is the uncompressed tar.
    compat = manifest_for(layout, tag)
    assert compat["annotations"]["module.wasm.image/variant"] == "compat"
    assert compat["config"]["mediaType"] == OCI_CONFIG
    (layer,) = compat["layers"]
    assert layer["mediaType"] == OCI_LAYER_GZIP
    compressed = read_blob(layout, layer)
    assert compressed[:2] == b"\x1f\x8b" and compressed[4:8] == b"\x00\x00\x00\x00", "gzip without a timestamp"
    layer_tar = gzip.decompress(compressed)
    config = json.loads(read_blob(layout, compat["config"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]}
    assert config["os"] and config["architecture"]
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"], "the layer holds exactly plugin.wasm"
        (m,) = members
        assert m.isreg() and m.mode == 0o644 and m.uid == m.gid == 0 and m.mtime == 0
        assert tar.extractfile(m).read() == wasm

    # artifact: the raw module + the runtime config Istio's "oci" variant expects.
    artifact = manifest_for(layout, tag + "-artifact")
    assert artifact["config"]["mediaType"] == WASM_CONFIG
    assert [d["mediaType"] for d in artifact["layers"]] == [WASM_CONTENT, WASM_CONFIG]
    assert read_blob(layout, artifact["layers"][0]) == wasm
    runtime = json.loads(read_blob(layout, artifact["layers"][1]))
    assert runtime["type"] == "envoy_proxy" and runtime["config"]["root_ids"] == ["mcp_jwt_signer"]
    assert runtime["abiVersions"] and all(v.startswith("proxy_abi_version_") for v in runtime["abiVersions"])

    # What istio-agent would extract from either tag is byte for byte the built filter.
    assert istio_agent_extract(layout, tag) == wasm
    assert istio_agent_extract(layout, tag + "-artifact") == wasm


def test_oci_image_is_reproducible(oci_layout, tmp_path):
    layout, wasm = oci_layout
    # Same bytes, different file name, mtime and output path: the same layout, byte for byte.
    other_wasm = tmp_path / "elsewhere.wasm"
    other_wasm.write_bytes(wasm)
    past = time.time() - 86400 * 30
    os.utime(other_wasm, (past, past))
    again = tmp_path / "again"
    proc = build_oci(again, other_wasm)

    def tree(root: Path) -> dict:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert tree(again) == tree(layout)
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        assert m["digest"] in proc.stdout, "the script prints each manifest digest (to pin in the EnvoyFilter)"

    # A different module gives a different image.
    changed = tmp_path / "changed.wasm"
    changed.write_bytes(wasm + b"\x00")
    build_oci(tmp_path / "changed", changed)
    assert (tmp_path / "changed" / "index.json").read_bytes() != (layout / "index.json").read_bytes()

    # Not a wasm module: refused, nothing written.
    not_wasm = tmp_path / "not.wasm"
    not_wasm.write_bytes(b"hello")
    bad = subprocess.run([sys.executable, str(OCI_SCRIPT), "--wasm", str(not_wasm), "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and not (tmp_path / "bad").exists()


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"`{name}` is needed to check the OCI image (Debian: apt-get install skopeo umoci)"
    return path


def test_oci_image_layout_is_read_by_skopeo_and_umoci(oci_layout, tmp_path):
    layout, wasm = oci_layout
    tag = cargo_version()
    skopeo, umoci = tool("skopeo"), tool("umoci")
    index = json.loads((layout / "index.json").read_text())
    digests = {m["annotations"][REF_NAME]: m["digest"] for m in index["manifests"]}

    def run(*args) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{' '.join(map(str, args))}: {proc.stderr}"
        return proc.stdout

    for t in (tag, tag + "-artifact"):
        raw = run(skopeo, "inspect", "--raw", f"oci:{layout}:{t}")
        assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == digests[t]
        # skopeo re-reads and re-verifies every blob while copying; the digest must survive the copy.
        copy_dir = tmp_path / f"copy-{t}"
        run(skopeo, "copy", "--quiet", f"oci:{layout}:{t}", f"oci:{copy_dir}:{t}")
        (copied,) = json.loads((copy_dir / "index.json").read_text())["manifests"]
        assert copied["digest"] == digests[t]
    info = json.loads(run(skopeo, "inspect", f"oci:{layout}:{tag}"))
    assert info["Digest"] == digests[tag] and len(info["Layers"]) == 1

    # umoci unpacks the image (checking the layer against the config's diff_id) into a bundle whose rootfs is
    # exactly plugin.wasm.
    bundle = tmp_path / "bundle"
    run(umoci, "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle))
    assert [p.name for p in (bundle / "rootfs").iterdir()] == ["plugin.wasm"]
    assert (bundle / "rootfs" / "plugin.wasm").read_bytes() == wasm
    listed = run(umoci, "ls", "--layout", str(layout)).split()
    assert sorted(listed) == sorted([tag, tag + "-artifact"])


# ================================================================================================================
# the EnvoyFilters in a real Envoy
# ================================================================================================================
def module_from_image(oci_layout, uri: str, dest_dir: Path) -> Path:
    """Resolve an oci:// URL from a manifest against the locally built image layout and write the module the way
    istio-agent's cache does (<dir>/<sha256>.wasm)."""
    layout, _ = oci_layout
    m = re.fullmatch(r"oci://[^/]+/(?:.+/)?mcp-jwt-signer:([\w.-]+)", uri)
    assert m, f"{uri}: the test resolves tagged mcp-jwt-signer references"
    module = istio_agent_extract(layout, m.group(1))
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{hashlib.sha256(module).hexdigest()}.wasm"
    path.write_bytes(module)
    return path


class Delivery:
    """What istiod + istio-agent hand the gateway's Envoy for one EnvoyFilter (see istio_delivery)."""

    def __init__(self, insert_patch: dict, signer: dict, merge_patch, router_value):
        self.insert_patch, self.signer = insert_patch, signer  # HTTP_FILTER INSERT_BEFORE and its filter
        self.merge_patch, self.router_value = merge_patch, router_value  # HTTP_FILTER MERGE and its value (or None)


def istio_delivery(envoy_filter: Resource, module: Path, workdir: Path, *, with_guard: bool = True) -> Delivery:
    """What istiod + istio-agent hand the gateway's Envoy for this EnvoyFilter: each EXTENSION_CONFIG value as an
    ECDS resource with its oci:// code rewritten to the pulled module, the HTTP_FILTER INSERT_BEFORE value (the
    signer) and the HTTP_FILTER MERGE value (the router's upstream filters: the route guard). Only the config
    source differs: a file per ECDS resource instead of the ADS stream (Envoy reads both as xDS).
    `with_guard=False` leaves the MERGE patch out (a gateway without the route guard, for negative controls)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ecds_files = {}
    for i, p in enumerate(x for x in envoy_filter.doc["spec"]["configPatches"] if x["applyTo"] == "EXTENSION_CONFIG"):
        assert p["patch"]["operation"] == "ADD"
        ext = copy.deepcopy(p["patch"]["value"])
        vm = ext["typed_config"]["config"]["vm_config"]
        assert set(vm["code"]) == {"remote"}
        vm["code"] = {"local": {"filename": str(module)}}  # istio-agent's rewrite
        ecds = workdir / f"ecds-{i}.yaml"
        ecds.write_text(yaml.safe_dump({"version_info": "1",
                                        "resources": [{"@type": TYPED_EXTENSION_CONFIG, **ext}]}))
        assert ext["name"] not in ecds_files, f"{envoy_filter.where}: two ECDS resources named {ext['name']}"
        ecds_files[ext["name"]] = ecds

    def from_file(flt: dict) -> dict:
        flt = copy.deepcopy(flt)
        source = flt["config_discovery"]["config_source"]
        assert source.pop("ads") == {}
        assert flt["name"] in ecds_files, f"{flt['name']}: no EXTENSION_CONFIG patch of that name"
        source["path_config_source"] = {"path": str(ecds_files[flt["name"]])}
        return flt

    insert_patch = patch_of(envoy_filter, "HTTP_FILTER", "INSERT_BEFORE")
    signer = from_file(insert_patch["patch"]["value"])
    merge_patch = router_value = None
    if with_guard:
        merge_patch = patch_of(envoy_filter, "HTTP_FILTER", "MERGE")
        router_value = copy.deepcopy(merge_patch["patch"]["value"])
        upstream = router_value["typed_config"]["upstream_http_filters"]
        router_value["typed_config"]["upstream_http_filters"] = [
            from_file(f) if "config_discovery" in f else f for f in upstream]
    return Delivery(insert_patch, signer, merge_patch, router_value)


def proto_merge(dst: dict, src: dict) -> dict:
    """Protobuf merge semantics on the JSON form (what istiod's MergeAnyWithAny does to two typed configs of one
    type): message fields merge recursively, repeated fields are appended, scalars are replaced."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            proto_merge(dst[k], v)
        elif isinstance(v, list) and isinstance(dst.get(k), list):
            dst[k] = dst[k] + copy.deepcopy(v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def filter_match(patch: dict, hcm_filter: dict, http_filter: dict) -> bool:
    """An HTTP_FILTER patch's match (context GATEWAY, the connection manager, the sub-filter by name)."""
    m = patch["match"]
    assert m["context"] == "GATEWAY"
    f = m["listener"]["filterChain"]["filter"]
    return hcm_filter["name"] == f["name"] and http_filter["name"] == f["subFilter"]["name"]


def apply_http_filter_patch(cfg: dict, delivery: Delivery, *, before=()):
    """Apply an EnvoyFilter's HTTP_FILTER patches to the (single) HCM of an Envoy config, the way istiod does
    (pilot/pkg/networking/core/envoyfilter/listener_patch.go: the INSERT_BEFORE first, then MERGE on every filter
    it matches), after making the config look like the gateway Istio builds: envoy.yaml's own wasm filter removed
    (the gateway starts without the signer), its router's upstream_http_filters removed (Istio's router sets only
    start_child_span / suppress_envoy_headers), and `before` (filters Istio itself would have there, e.g.
    jwt_authn) inserted at the front."""
    (listener,) = cfg["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    insert_patch, flt = delivery.insert_patch, delivery.signer
    (hcm,) = [f for f in chain["filters"] if f["name"] == insert_patch["match"]["listener"]["filterChain"]["filter"]["name"]]
    filters = [f for f in hcm["typed_config"]["http_filters"] if f.get("typed_config", {}).get("@type") != WASM_TYPE]
    for f in filters:
        if f["name"] == ROUTER_NAME:
            f["typed_config"].pop("upstream_http_filters", None)
            assert f["typed_config"] == {"@type": ROUTER_TYPE}, f"envoy.yaml's router has more: {f['typed_config']}"
    filters = [*before, *filters]
    assert insert_patch["patch"]["operation"] == "INSERT_BEFORE"
    target = insert_patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
    names = [f["name"] for f in filters]
    assert target in names, f"{target} not in {names}"
    filters.insert(names.index(target), flt)
    if delivery.merge_patch is not None:
        assert delivery.merge_patch["patch"]["operation"] == "MERGE"
        merged = 0
        for f in filters:
            if filter_match(delivery.merge_patch, hcm, f):
                value = delivery.router_value
                # istiod: MERGE skips a filter without typed_config; a name in the patch renames the filter;
                # both typed configs are unmarshalled as their types and proto-merged (they must be one type).
                assert "typed_config" in f and value["typed_config"]["@type"] == f["typed_config"]["@type"]
                f["name"] = value.get("name") or f["name"]
                proto_merge(f["typed_config"], value["typed_config"])
                merged += 1
        assert merged == 1, f"the MERGE patch matched {merged} filters"
    hcm["typed_config"]["http_filters"] = filters
    cfg["node"] = {"id": "mcp-gateway-test", "cluster": "mcp-gateway"}  # Envoy needs a node for file-based xDS
    return listener


def gateway_jwks(url: str, **kw) -> dict:
    r = requests.get(url + JWKS_SUFFIX, timeout=5, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def verify_gateway_token(token: str, jwks: dict, plugin: dict) -> dict:
    """Verify with PyJWT against a JWKS, pinned to the manifest's issuer and audience, the way the MCP server will."""
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    key = jwt.PyJWK(jwk, algorithm="RS256").key
    return jwt.decode(token, key, algorithms=["RS256"], audience=plugin["audience"], issuer=plugin["issuer"],
                      leeway=5, options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "scope"]})


def signing_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def mesh_pki(tmp_path_factory):
    """A stand-in for the mesh CA: the egress gateway's server certificate and a workload certificate whose URI SAN
    is the workload's SPIFFE ID, as Istio issues them (plus one without a URI SAN, and one from another CA)."""
    d = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def cert(subject_key, cn, issuer_cert, issuer_key, sans, ca=False):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(issuer_cert.subject if issuer_cert else
                                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .public_key(subject_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name, k, c):
        (d / f"{name}.key").write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        (d / f"{name}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))

    ca_key = key()
    ca = cert(ca_key, "cluster.local mesh CA (test)", None, ca_key, None, ca=True)
    write("ca", ca_key, ca)
    server_key = key()
    write("server", server_key, cert(server_key, "mcp-egressgateway", ca, ca_key,
                                     [x509.DNSName("mcp.example.net"),
                                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    client_key = key()
    write("client", client_key, cert(client_key, "client", ca, ca_key, [x509.UniformResourceIdentifier(SPIFFE_ID)]))
    rogue_ca_key = key()
    rogue_ca = cert(rogue_ca_key, "not the mesh CA", None, rogue_ca_key, None, ca=True)
    rogue_key = key()
    write("rogue", rogue_key, cert(rogue_key, "rogue", rogue_ca, rogue_ca_key,
                                   [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/evil/sa/rogue")]))
    return d


def test_egress_envoyfilter_signs_for_the_calling_workload(oci_layout, mesh_pki, tmp_path):
    """The egress EnvoyFilter, delivered as istiod + istio-agent would, on a listener that terminates mutual TLS
    like the ISTIO_MUTUAL egress Gateway server: the token names the caller's SPIFFE ID in act.sub.
    Needs the `mtls:uri_san` identity source."""
    ef = find("EnvoyFilter", "mcp-jwt-signer-egress")
    plugin = plugin_json(ef)
    module = module_from_image(oci_layout, wasm_config(ef)["vm_config"]["code"]["remote"]["http_uri"]["uri"],
                               tmp_path / "wasm-cache")
    delivery = istio_delivery(ef, module, tmp_path / "xds")
    pki = mesh_pki

    def edit(cfg):
        listener = apply_http_filter_patch(cfg, delivery)
        listener["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": str(pki / "server.pem")},
                                          "private_key": {"filename": str(pki / "server.key")}}],
                    "validation_context": {"trusted_ca": {"filename": str(pki / "ca.pem")}},
                },
            },
        }

    client = {"cert": (str(pki / "client.pem"), str(pki / "client.key")), "verify": str(pki / "ca.pem")}
    with RecordingUpstream() as upstream:
        envoy = start_envoy(tmp_path / "envoy", json.dumps(plugin), upstream.port, concurrency=2,
                            env={KEY_ENV: signing_key_pem()}, extra_edit=edit, scheme="https", probe_kwargs=client)
        try:
            body = rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}}, id=7)
            r = requests.post(envoy.url + "/mcp", json=body, headers={**MCP_HEADERS, "authorization": "Bearer app"},
                              timeout=10, **client)
            assert r.status_code == 200, r.text
            (seen,) = upstream.wait_for(1)
            token = seen.bearer_token()
            assert token and token != "app", "the workload's own Authorization must not pass through"
            claims = verify_gateway_token(token, gateway_jwks(envoy.url, **client), plugin)
            assert claims["act"] == {"sub": SPIFFE_ID}
            assert claims["sub"] == plugin["actor"]
            assert set(claims["scope"].split()) == {"mcp:tools/call", "mcp:tools/get_weather:call"}
            assert json.loads(seen.body) == body
            assert seen.header_values(ROUTE_HEADER) == [], "the route guard removes the signer's route header"

            disco = requests.get(envoy.url + DISCOVERY_SUFFIX, timeout=5, **client).json()
            assert disco["issuer"] == plugin["issuer"]
            assert disco["jwks_uri"] == plugin["issuer"] + JWKS_SUFFIX, "published at the public ingress host"

            # A caller without a mesh certificate, or with one from another CA, never reaches the filter.
            for bad in ({"verify": str(pki / "ca.pem")},
                        {"cert": (str(pki / "rogue.pem"), str(pki / "rogue.key")), "verify": str(pki / "ca.pem")}):
                with pytest.raises(requests.exceptions.RequestException):
                    requests.post(envoy.url + "/mcp", json=body, headers=MCP_HEADERS, timeout=5, **bad)
            assert len(upstream.requests) == 1
        finally:
            envoy.stop()


def idp_token(idp_key, kid: str, rule: dict, **claims) -> str:
    now = int(time.time())
    payload = {"iss": rule["issuer"], "aud": rule["audiences"][0], "iat": now, "nbf": now, "exp": now + 300,
               **claims}
    return jwt.encode(payload, idp_key, algorithm="RS256", headers={"kid": kid})


def istio_jwt_authn(request_authentication: Resource, jwks: dict) -> dict:
    """The jwt_authn filter istiod generates for a RequestAuthentication: one provider per rule, payload stored in
    metadata under the issuer, JWKS inlined, token required only if present (AuthorizationPolicy requires it)."""
    providers, any_of = {}, []
    for i, rule in enumerate(request_authentication.doc["spec"]["jwtRules"]):
        name = f"origins-{i}"
        providers[name] = {
            "issuer": rule["issuer"],
            "audiences": rule["audiences"],
            "forward": rule.get("forwardOriginalToken", False),
            "payload_in_metadata": rule["issuer"],
            "local_jwks": {"inline_string": json.dumps(jwks)},
        }
        any_of.append({"provider_name": name})
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{"match": {"prefix": "/"},
                       "requires": {"requires_any": {"requirements": [*any_of, {"allow_missing": {}}]}}}],
        },
    }


def test_ingress_envoyfilter_signs_for_the_idp_user(oci_layout, tmp_path):
    """The ingress EnvoyFilter behind a jwt_authn filter shaped like the one istiod builds from security.yaml.
    Needs the `jwt:<claim>` identity source (and the `jwt_payload_in_metadata` field)."""
    ef, ra = find("EnvoyFilter", "mcp-jwt-signer-ingress"), find("RequestAuthentication", "mcp-ingress-idp")
    plugin = plugin_json(ef)
    (rule,) = ra.doc["spec"]["jwtRules"]
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp_key.public_key()))
    idp_jwks = {"keys": [{**idp_jwk, "kid": "idp-1", "alg": "RS256", "use": "sig"}]}
    module = module_from_image(oci_layout, wasm_config(ef)["vm_config"]["code"]["remote"]["http_uri"]["uri"],
                               tmp_path / "wasm-cache")
    delivery = istio_delivery(ef, module, tmp_path / "xds")

    def edit(cfg):
        apply_http_filter_patch(cfg, delivery, before=[istio_jwt_authn(ra, idp_jwks)])

    with RecordingUpstream() as upstream:
        envoy = start_envoy(tmp_path / "envoy", json.dumps(plugin), upstream.port, concurrency=1,
                            env={KEY_ENV: signing_key_pem()}, extra_edit=edit)
        try:
            user_token = idp_token(idp_key, "idp-1", rule, sub="alice", email="alice@example.com",
                                   azp="mcp-inspector")
            body = rpc("tools/list", id=1)
            r = requests.post(envoy.url + "/mcp", json=body, timeout=10,
                              headers={**MCP_HEADERS, "authorization": f"Bearer {user_token}"})
            assert r.status_code == 200, r.text
            (seen,) = upstream.wait_for(1)
            token = seen.bearer_token()
            assert token and token != user_token, "the IdP token must not reach the MCP server"
            claims = verify_gateway_token(token, gateway_jwks(envoy.url), plugin)
            assert claims["sub"] == "alice"
            assert claims["email"] == "alice@example.com"
            assert claims["act"] == {"sub": "mcp-inspector"}
            assert claims["scope"] == "mcp:tools/list"
            assert seen.header_values(ROUTE_HEADER) == [], "the route guard removes the signer's route header"

            # Tokens the IdP rule does not accept are refused by jwt_authn before the filter runs: another
            # audience (403) and another signer (401).
            wrong_aud = idp_token(idp_key, "idp-1", {**rule, "audiences": ["someone-else"]}, sub="mallory")
            forged = idp_token(rsa.generate_private_key(public_exponent=65537, key_size=2048), "idp-1", rule,
                               sub="mallory")
            for bad, status in ((wrong_aud, 403), (forged, 401)):
                r = requests.post(envoy.url + "/mcp", json=body, timeout=10,
                                  headers={**MCP_HEADERS, "authorization": f"Bearer {bad}"})
                assert r.status_code == status, r.text
            assert len(upstream.requests) == 1

            disco = requests.get(envoy.url + DISCOVERY_SUFFIX, timeout=5).json()
            assert disco["issuer"] == plugin["issuer"] and disco["jwks_uri"] == plugin["issuer"] + JWKS_SUFFIX
        finally:
            envoy.stop()


def authorization_routes(other_port: int, default_audience: str, other_audience: str):
    """A route table that matches on a header the filter sets: requests that carry `authorization` go to cluster
    `other` (its own audience in route metadata), the rest to the default route and cluster (the default audience).
    A request without `authorization` is scoped for the default route; the filter then sets `authorization`, and
    Envoy matches the route again on the edited headers: `other`."""
    def edit(cfg):
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        (default,) = routes
        default["name"] = "default"
        default["metadata"] = {"filter_metadata": {"mcp_jwt_signer": {"audience": default_audience}}}
        routes.insert(0, {"name": "other",
                          "match": {"prefix": "/", "headers": [{"name": "authorization", "present_match": True}]},
                          "route": {"cluster": "other", "timeout": "0s"},
                          "metadata": {"filter_metadata": {"mcp_jwt_signer": {"audience": other_audience}}}})
        cfg["static_resources"]["clusters"].append({
            "name": "other", "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": "other", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": other_port}}}}]}]}})
    return edit


def test_ingress_envoyfilter_runs_the_route_guard(oci_layout, tmp_path):
    """The route guard patch is live in the patched gateway: a request whose route changes after the signer's
    header edits (a route that matches on `authorization`, which the filter sets) is refused with 500
    route_changed and reaches neither server. The negative control, the same gateway without the MERGE patch
    (which is what a WasmPlugin gives: no upstream filter), sends that request to the other route's server with a
    token scoped for the default route's audience, and the signer's route header with it."""
    ef, ra = find("EnvoyFilter", "mcp-jwt-signer-ingress"), find("RequestAuthentication", "mcp-ingress-idp")
    plugin = plugin_json(ef)
    (rule,) = ra.doc["spec"]["jwtRules"]
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp_key.public_key()))
    idp_jwks = {"keys": [{**idp_jwk, "kid": "idp-1", "alg": "RS256", "use": "sig"}]}
    module = module_from_image(oci_layout, wasm_config(ef)["vm_config"]["code"]["remote"]["http_uri"]["uri"],
                               tmp_path / "wasm-cache")
    default_aud, other_aud = "https://default.example/mcp", "https://other.example/mcp"
    key = signing_key_pem()
    body = rpc("tools/list", id=1)

    def gateway(name, with_guard, default_up, other_up):
        delivery = istio_delivery(ef, module, tmp_path / name / "xds", with_guard=with_guard)
        routes = authorization_routes(other_up.port, default_aud, other_aud)

        def edit(cfg):
            apply_http_filter_patch(cfg, delivery, before=[istio_jwt_authn(ra, idp_jwks)])
            routes(cfg)
        return start_envoy(tmp_path / name, json.dumps(plugin), default_up.port, concurrency=1,
                           env={KEY_ENV: key}, extra_edit=edit)

    with RecordingUpstream() as default_up, RecordingUpstream() as other_up:
        envoy = gateway("with-guard", True, default_up, other_up)
        try:
            with nothing_forwarded(envoy, default_up, other_up):
                r = requests.post(envoy.url + "/mcp", json=body, headers=MCP_HEADERS, timeout=10)
            assert r.status_code == 500, r.text
            assert r.json()["error"]["code"] == -32603 and "route changed" in r.json()["error"]["message"], r.text
            assert "reason=route_changed" in envoy.log()
            assert filter_stats(envoy.admin_url).get("refused.route_changed") == 1

            # A request that matches `other` from the start (it carries the IdP token) stays there: signed for
            # that route's audience, accepted by the guard, the route header removed.
            user_token = idp_token(idp_key, "idp-1", rule, sub="alice", azp="mcp-inspector")
            r = requests.post(envoy.url + "/mcp", json=body, timeout=10,
                              headers={**MCP_HEADERS, "authorization": f"Bearer {user_token}"})
            assert r.status_code == 200, r.text
            assert default_up.requests == []
            (seen,) = other_up.wait_for(1)
            claims = verify_gateway_token(seen.bearer_token(), gateway_jwks(envoy.url),
                                          {**plugin, "audience": other_aud})
            assert claims["sub"] == "alice"
            assert seen.header_values(ROUTE_HEADER) == []
        finally:
            envoy.stop()

    with RecordingUpstream() as default_up, RecordingUpstream() as other_up:
        envoy = gateway("without-guard", False, default_up, other_up)
        try:
            r = requests.post(envoy.url + "/mcp", json=body, headers=MCP_HEADERS, timeout=10)
            assert r.status_code == 200, r.text
            assert default_up.requests == []
            (seen,) = other_up.wait_for(1)
            claims = verify_gateway_token(seen.bearer_token(), gateway_jwks(envoy.url),
                                          {**plugin, "audience": default_aud})
            assert claims["aud"] == default_aud, "the other route's server got a token for the default route"
            assert len(seen.header_values(ROUTE_HEADER)) == 1, "nothing removed the signer's route header"
        finally:
            envoy.stop()


def istiod_wasm_filter_from_wasmplugin(wp: Resource, module: Path) -> dict:
    """The Wasm filter config istiod builds from a WasmPlugin (the fields it sets, after istio-agent rewrote the
    oci:// URL to the pulled module). There is no WasmPlugin field that becomes allow_on_headers_stop_iteration."""
    spec = wp.doc["spec"]
    host_keys = [e["name"] for e in spec.get("vmConfig", {}).get("env", []) if e.get("valueFrom") == "HOST"]
    inline = {e["name"]: e.get("value", "") for e in spec.get("vmConfig", {}).get("env", [])
              if e.get("valueFrom", "INLINE") == "INLINE"}
    key_values = {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1", **inline}
    if spec.get("imagePullPolicy"):
        key_values["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = spec["imagePullPolicy"]
    return {
        "@type": WASM_TYPE,
        "config": {
            "name": f"{wp.doc['metadata']['namespace']}.{wp.name}",
            "root_id": spec.get("pluginName", ""),
            "configuration": {"@type": STRING_VALUE, "value": json.dumps(spec["pluginConfig"])},
            "fail_open": spec.get("failStrategy") == "FAIL_OPEN",
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": str(module)}},
                "environment_variables": {"key_values": key_values, "host_env_keys": host_keys},
            },
        },
    }


def as_istiod_builds_it(wasm_typed_config: dict):
    """An Envoy edit: the signer filter replaced by the Wasm filter istiod generates from a WasmPlugin
    (`wasm_typed_config`), and the router as istiod builds it (no upstream filters, so no route guard)."""
    def edit(cfg):
        for listener in cfg["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    for hf in f.get("typed_config", {}).get("http_filters", []):
                        if hf.get("typed_config", {}).get("@type") == WASM_TYPE:
                            hf["name"] = wasm_typed_config["config"]["name"]
                            hf["typed_config"] = wasm_typed_config
                        if hf["name"] == ROUTER_NAME:
                            hf["typed_config"].pop("upstream_http_filters", None)
    return edit


def test_wasmplugin_translation_hangs_and_the_flag_fixes_it(oci_layout, tmp_path):
    """Why deploy/istio/does-not-work/ does not work, shown in a real Envoy: the WasmPlugin translated as istiod
    does loads fine and answers GET /.well-known/*, but an MCP POST never reaches the upstream. The identical
    config plus allow_on_headers_stop_iteration (the EnvoyFilter form) signs it. Loads the ingress configuration,
    so it needs the `jwt:<claim>` identity source."""
    wp = find("WasmPlugin", "mcp-jwt-signer-does-not-work")
    plugin = wp.doc["spec"]["pluginConfig"]
    module = module_from_image(oci_layout, wp.doc["spec"]["url"], tmp_path / "wasm-cache")
    generated = istiod_wasm_filter_from_wasmplugin(wp, module)
    assert "allow_on_headers_stop_iteration" not in generated["config"]
    key = signing_key_pem()
    body = json.dumps(rpc("tools/list", id=1)).encode()

    with RecordingUpstream() as upstream:
        envoy = start_envoy(tmp_path / "wasmplugin", json.dumps(plugin), upstream.port,
                            env={KEY_ENV: key}, extra_edit=as_istiod_builds_it(generated))
        try:
            assert requests.get(envoy.url + JWKS_SUFFIX, timeout=5).status_code == 200, "it looks healthy"
            with pytest.raises(requests.exceptions.ReadTimeout):
                requests.post(envoy.url + "/mcp", data=body, headers=MCP_HEADERS, timeout=(2, 2.5))
            assert upstream.requests == [], "the hung request must not have reached the MCP server"
        finally:
            envoy.stop()

        fixed = copy.deepcopy(generated)
        fixed["config"]["allow_on_headers_stop_iteration"] = True
        envoy = start_envoy(tmp_path / "with-flag", json.dumps(plugin), upstream.port,
                            env={KEY_ENV: key}, extra_edit=as_istiod_builds_it(fixed))
        try:
            r = requests.post(envoy.url + "/mcp", data=body, headers=MCP_HEADERS, timeout=10)
            assert r.status_code == 200, r.text
            (seen,) = upstream.wait_for(1)
            claims = verify_gateway_token(seen.bearer_token(), gateway_jwks(envoy.url),
                                          {"issuer": plugin["issuer"], "audience": plugin["audience"]})
            assert claims["scope"] == "mcp:tools/list"
        finally:
            envoy.stop()


def test_header_mode_wasmplugin_works_as_istiod_translates_it(oci_layout, tmp_path):
    """deploy/istio/header-mode/: the plain WasmPlugin, translated as istiod does (no allow_on_headers_stop_iteration),
    signs a 2026-07-28 request from its Mcp-Method/Mcp-Name headers and refuses (400 -32020, never a hang) one its
    headers cannot scope."""
    wp = find("WasmPlugin", "mcp-jwt-signer-header-mode")
    plugin = wp.doc["spec"]["pluginConfig"]
    module = module_from_image(oci_layout, wp.doc["spec"]["url"], tmp_path / "wasm-cache")
    generated = istiod_wasm_filter_from_wasmplugin(wp, module)
    assert "allow_on_headers_stop_iteration" not in generated["config"]
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = json.dumps(rpc("tools/list", {"_meta": meta}, id=1)).encode()

    edit = as_istiod_builds_it(generated)

    with RecordingUpstream() as upstream:
        envoy = start_envoy(tmp_path / "wasmplugin-hm", json.dumps(plugin), upstream.port,
                            env={KEY_ENV: signing_key_pem()}, extra_edit=edit)
        try:
            headers = {**MCP_HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"}
            r = requests.post(envoy.url + "/mcp", data=body, headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            (seen,) = upstream.wait_for(1)
            claims = verify_gateway_token(seen.bearer_token(), gateway_jwks(envoy.url),
                                          {"issuer": plugin["issuer"], "audience": plugin["audience"]})
            assert claims["scope"] == "mcp:tools/list"
            # A WasmPlugin adds no upstream filter, so no route guard runs (deploy/istio/README.md): nothing
            # removes the signer's route header, and nothing would refuse a route changed by the filter's edits.
            assert len(seen.header_values(ROUTE_HEADER)) == 1
            r = requests.post(envoy.url + "/mcp", data=body, headers=MCP_HEADERS, timeout=10)
            assert r.status_code == 400 and r.json()["error"]["code"] == -32020, r.text
        finally:
            envoy.stop()
