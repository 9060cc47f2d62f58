// Offline validation of the custom resources in docker/k8s (run by .ci/run; core kinds go
// through kubernetes-validate there). KEDA's ScaledObject and Gateway API's HTTPRoute are
// checked by the JSON schemas their npm model packages (@kubernetes-models/keda,
// @kubernetes-models/gateway-api) compile in; InferencePool by ajv against the vendored CRD's
// OpenAPI schema (schemas/inferencepool-crd-v1.6.0.yaml). Each validator is also shown a
// broken document, which it must refuse. Usage, with the packages installed under $NODE_PATH:
//     node docker/k8s/validate.cjs
"use strict";

const fs = require("fs");
const path = require("path");
const YAML = require("yaml");
const Ajv = require("ajv");
const { ScaledObject } = require("@kubernetes-models/keda/keda.sh/v1alpha1");
const { HTTPRoute } = require("@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1");

const HERE = __dirname;

function documents(file) {
  return YAML.parseAllDocuments(fs.readFileSync(path.join(HERE, file), "utf8"))
    .map((doc) => {
      if (doc.errors.length) throw new Error(`${file}: ${doc.errors.join("; ")}`);
      return doc.toJS();
    })
    .filter((doc) => doc !== null);
}

function inferencePoolValidator() {
  const [crd] = documents("schemas/inferencepool-crd-v1.6.0.yaml");
  const version = crd.spec.versions.find((v) => v.name === "v1");
  // Kubernetes' structural schemas carry x-kubernetes-* keywords and formats (int32) that
  // plain JSON Schema does not know: allowed, not enforced (the API server's CEL rules are
  // out of reach offline).
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
  const validate = ajv.compile(version.schema.openAPIV3Schema);
  return (doc) => {
    if (!validate(doc)) throw new Error(ajv.errorsText(validate.errors));
  };
}

const validators = {
  "keda.sh/v1alpha1/ScaledObject": (doc) => new ScaledObject(doc).validate(),
  "gateway.networking.k8s.io/v1/HTTPRoute": (doc) => new HTTPRoute(doc).validate(),
  "inference.networking.k8s.io/v1/InferencePool": inferencePoolValidator(),
};

function validate(file, doc) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const check = validators[key];
  if (!check) throw new Error(`${file}: no validator for ${key}`);
  check(doc);
  return key;
}

function refuses(key, doc) {
  try {
    validators[key](doc);
  } catch (error) {
    console.log(`ok ${key} refuses a broken document (${String(error.message).split("\n")[0].slice(0, 100)})`);
    return;
  }
  throw new Error(`${key} accepted a broken document: ${JSON.stringify(doc)}`);
}

const seen = {};
for (const file of ["keda-scaledobject.yaml", "inference-gateway.yaml"]) {
  for (const doc of documents(file)) {
    const key = validate(file, doc);
    seen[key] = doc;
    console.log(`ok ${file}: ${key} ${doc.metadata.name}`);
  }
}
for (const key of Object.keys(validators)) {
  if (!seen[key]) throw new Error(`no ${key} was validated`);
}

// The validators bite: each refuses a document with one mistake.
const broken = (key, change) => {
  const doc = JSON.parse(JSON.stringify(seen[key]));
  change(doc);
  refuses(key, doc);
};
broken("keda.sh/v1alpha1/ScaledObject", (d) => delete d.spec.triggers[0].type);
broken("keda.sh/v1alpha1/ScaledObject", (d) => (d.spec.minReplicaCount = "one"));
broken("gateway.networking.k8s.io/v1/HTTPRoute", (d) => (d.spec.rules[0].matches[0].path.type = "Glob"));
broken("inference.networking.k8s.io/v1/InferencePool", (d) => delete d.spec.targetPorts);
broken("inference.networking.k8s.io/v1/InferencePool", (d) => (d.spec.endpointPickerRef.failureMode = "FailSometimes"));

// The HPA (hpa.yaml) and KEDA scale the same Deployment: one file or the other, never both.
const hpa = documents("hpa.yaml").find((d) => d.kind === "HorizontalPodAutoscaler");
const keda = seen["keda.sh/v1alpha1/ScaledObject"];
if (hpa.spec.scaleTargetRef.name !== keda.spec.scaleTargetRef.name) {
  throw new Error("hpa.yaml and keda-scaledobject.yaml scale different Deployments");
}
// The adapter rule serves the metric the HPA reads, from the vLLM series KEDA queries.
const adapter = documents("hpa.yaml").find((d) => d.kind === "ConfigMap");
const rules = YAML.parse(adapter.data["config.yaml"]).rules;
const rule = rules.find((r) => r.name.as === hpa.spec.metrics[0].pods.metric.name);
if (!rule || !rule.seriesQuery.startsWith("vllm:num_requests_waiting")) {
  throw new Error("no adapter rule serves the HPA's metric from vllm:num_requests_waiting");
}
if (!keda.spec.triggers[0].metadata.query.includes("vllm:num_requests_waiting")) {
  throw new Error("KEDA's query does not read vllm:num_requests_waiting");
}
// The pool selects the pods the Deployment makes, on the port they serve.
const [deployment] = documents("lantern.yaml").filter((d) => d.kind === "Deployment");
const pool = seen["inference.networking.k8s.io/v1/InferencePool"];
const podLabels = deployment.spec.template.metadata.labels;
for (const [label, value] of Object.entries(pool.spec.selector.matchLabels)) {
  if (podLabels[label] !== value) throw new Error(`the pool selects ${label}=${value}, which the pods lack`);
}
const ports = deployment.spec.template.spec.containers[0].ports.map((p) => p.containerPort);
if (!pool.spec.targetPorts.every((p) => ports.includes(p.number))) {
  throw new Error("the pool targets a port the pods do not serve");
}
console.log("ok the HPA, KEDA and the pool agree with the Deployment");
