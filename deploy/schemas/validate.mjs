// Validate Istio, Envoy Gateway and Gateway API resources with the validators that @kubernetes-models/* compile from
// the published schemas: Istio's CRDs (crd-all.gen.yaml: types, enums, required fields, oneOf groups) in
// @kubernetes-models/istio, Envoy Gateway's API types in @kubernetes-models/envoy-gateway, the Gateway API CRDs in
// @kubernetes-models/gateway-api.
//
//   node deploy/schemas/validate.mjs RESOURCES.json
//
// RESOURCES.json: a JSON array of Kubernetes objects. Prints a JSON array with one entry per object:
//   {"index": i, "apiVersion": ..., "kind": ..., "name": ..., "errors": [{"path": ..., "message": ...}]}
// Objects of other API groups get {"skipped": true}. Exit code 0 unless the input cannot be read.
//
// These validators do not reject unknown fields (Istio's CRD schemas leave that to Kubernetes' pruning and
// strict field validation); tests/e2e/test_istio.py checks unknown fields against the same package's type
// declarations, and typecheck.mjs (used by tests/e2e/test_envoy_gateway.py) does it with the TypeScript compiler.
import { readFileSync } from "node:fs";

const PACKAGES = {
  "networking.istio.io": "@kubernetes-models/istio",
  "security.istio.io": "@kubernetes-models/istio",
  "extensions.istio.io": "@kubernetes-models/istio",
  "telemetry.istio.io": "@kubernetes-models/istio",
  "gateway.envoyproxy.io": "@kubernetes-models/envoy-gateway",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};

const resources = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = [];
for (const [index, obj] of resources.entries()) {
  const [group, version] = String(obj.apiVersion || "").split("/");
  const entry = { index, apiVersion: obj.apiVersion, kind: obj.kind, name: obj.metadata?.name, errors: [] };
  if (!PACKAGES[group] || !version) {
    entry.skipped = true;
    results.push(entry);
    continue;
  }
  let Model;
  try {
    const mod = await import(`${PACKAGES[group]}/${group}/${version}/${obj.kind}`);
    Model = mod[obj.kind];
  } catch (e) {
    entry.errors.push({ path: "", message: `no published schema for ${obj.apiVersion} ${obj.kind}: ${e.message}` });
    results.push(entry);
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (e) {
    const errors = e.errors && e.errors.length ? e.errors : [{ instancePath: "", message: e.message }];
    for (const err of errors) {
      entry.errors.push({
        path: err.instancePath || "",
        message: `${err.message}${err.params ? " " + JSON.stringify(err.params) : ""}`,
      });
    }
  }
  results.push(entry);
}
process.stdout.write(JSON.stringify(results));
