//! JSON schemas for kubeconform without GitHub: kubeconform's default schemas are files on
//! raw.githubusercontent.com, which these machines cannot reach, but the sources they are made
//! from are Go modules, and Go's module proxy is reachable (and caches them in the module cache,
//! so later runs need no network at all):
//! - Kubernetes' OpenAPI document, `api/openapi-spec/swagger.json` of the module
//!   `k8s.io/kubernetes`, for the built-in kinds;
//! - the CustomResourceDefinitions of the Prometheus Operator (ServiceMonitor) and of KEDA
//!   (ScaledObject, TriggerAuthentication), from their modules.
//!
//! Invariant: a schema is written for exactly the kinds asked for, in kubeconform's file naming
//! (`{{ .ResourceKind }}{{ .KindSuffix }}.json`), made strict the way kubeconform's own `-strict`
//! schemas are (an object with declared properties admits no others), so a misspelt field fails
//! validation instead of being ignored by the cluster. A kind with no known source is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value, json};

/// The Kubernetes version whose API the manifests are checked against.
pub const KUBERNETES_MODULE: (&str, &str) = ("k8s.io/kubernetes", "v1.33.0");
/// The Prometheus Operator release whose ServiceMonitor CRD is used.
pub const PROMETHEUS_OPERATOR_MODULE: (&str, &str) = (
    "github.com/prometheus-operator/prometheus-operator",
    "v0.85.0",
);
/// The KEDA release whose CRDs are used.
pub const KEDA_MODULE: (&str, &str) = ("github.com/kedacore/keda/v2", "v2.20.2");

/// Every module the schemas come from.
pub const MODULES: [(&str, &str); 3] = [KUBERNETES_MODULE, PROMETHEUS_OPERATOR_MODULE, KEDA_MODULE];

/// Where each custom resource's CRD lives: (API group, kind) → (module, file in it).
const CRDS: [(&str, &str, (&str, &str), &str); 3] = [
    (
        "monitoring.coreos.com",
        "ServiceMonitor",
        PROMETHEUS_OPERATOR_MODULE,
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    ),
    (
        "keda.sh",
        "ScaledObject",
        KEDA_MODULE,
        "config/crd/bases/keda.sh_scaledobjects.yaml",
    ),
    (
        "keda.sh",
        "TriggerAuthentication",
        KEDA_MODULE,
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
    ),
];

/// The folder of a Go module in the module cache, downloaded through the Go proxy if missing.
pub fn module_dir((module, version): (&str, &str)) -> Result<PathBuf, String> {
    let output = Command::new("go")
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .output()
        .map_err(|e| {
            format!("`go` cannot run ({e}); kubeconform's schemas come from Go modules")
        })?;
    let info: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "`go mod download {module}@{version}` printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    match info["Dir"].as_str() {
        Some(dir) if output.status.success() => Ok(PathBuf::from(dir)),
        _ => Err(format!(
            "`go mod download {module}@{version}` failed: {info}"
        )),
    }
}

/// kubeconform's file name for a kind of an apiVersion (`apps/v1` Deployment →
/// `deployment-apps-v1.json`, `v1` ConfigMap → `configmap-v1.json`, `keda.sh/v1alpha1`
/// ScaledObject → `scaledobject-keda-v1alpha1.json`).
pub fn file_name(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let group = group.split('.').next().unwrap_or_default();
    if group.is_empty() {
        format!("{}-{}.json", kind.to_lowercase(), version.to_lowercase())
    } else {
        format!(
            "{}-{group}-{}.json",
            kind.to_lowercase(),
            version.to_lowercase()
        )
    }
}

/// Writes into `dir` the schema of every (apiVersion, kind) in `kinds`.
pub fn write_schemas(dir: &Path, kinds: &BTreeSet<(String, String)>) -> Result<(), String> {
    let mut builtin: Option<Map<String, Value>> = None;
    for (api_version, kind) in kinds {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let schema = if let Some((_, _, module, file)) =
            CRDS.iter().find(|(g, k, _, _)| *g == group && k == kind)
        {
            crd_schema(&module_dir(*module)?.join(file), version)?
        } else {
            if builtin.is_none() {
                builtin = Some(openapi_definitions()?);
            }
            let definitions = builtin.as_ref().expect("loaded above");
            builtin_schema(definitions, group, version, kind)
                .ok_or_else(|| format!("no schema for {api_version} {kind} in Kubernetes' OpenAPI document or the known CRDs"))?
        };
        let path = dir.join(file_name(api_version, kind));
        std::fs::write(&path, schema.to_string())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Kubernetes' definitions, made strict, with its two "string" types that YAML writes as numbers
/// (ports, resource quantities) accepting both, as the API server does.
fn openapi_definitions() -> Result<Map<String, Value>, String> {
    let path = module_dir(KUBERNETES_MODULE)?.join("api/openapi-spec/swagger.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let document: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let Value::Object(mut definitions) = document["definitions"].clone() else {
        return Err(format!("{} has no definitions", path.display()));
    };
    definitions.insert(
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString".to_owned(),
        json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
    );
    definitions.insert(
        "io.k8s.apimachinery.pkg.api.resource.Quantity".to_owned(),
        json!({"oneOf": [{"type": "string"}, {"type": "number"}]}),
    );
    for definition in definitions.values_mut() {
        strict(definition);
    }
    Ok(definitions)
}

/// The schema of a built-in kind: its definition and every definition it refers to.
fn builtin_schema(
    definitions: &Map<String, Value>,
    group: &str,
    version: &str,
    kind: &str,
) -> Option<Value> {
    let root = definitions.iter().find_map(|(name, definition)| {
        definition["x-kubernetes-group-version-kind"]
            .as_array()?
            .iter()
            .any(|gvk| gvk["group"] == group && gvk["version"] == version && gvk["kind"] == kind)
            .then(|| name.clone())
    })?;
    let mut needed = BTreeMap::new();
    let mut queue = vec![root.clone()];
    while let Some(name) = queue.pop() {
        if needed.contains_key(&name) {
            continue;
        }
        let definition = definitions.get(&name)?.clone();
        collect_refs(&definition, &mut queue);
        needed.insert(name, definition);
    }
    Some(json!({"$ref": format!("#/definitions/{root}"), "definitions": needed}))
}

/// The names of the definitions `value` refers to (`#/definitions/<name>`).
fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
            {
                into.push(name.to_owned());
            }
            map.values().for_each(|v| collect_refs(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}

/// A custom resource's schema: its CRD's openAPIV3Schema for `version`, made strict.
fn crd_schema(path: &Path, version: &str) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let crd: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut schema = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == version)
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .filter(|s| s.is_object())
        .ok_or_else(|| format!("{} has no schema for version {version}", path.display()))?;
    strict(&mut schema);
    Ok(schema)
}

/// Every object schema with declared properties admits no others, unless it keeps unknown fields
/// on purpose (`x-kubernetes-preserve-unknown-fields`) or says what others may be. Only schema
/// positions are visited: a field named `properties` is a name, not a keyword.
fn strict(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    let preserves = map
        .get("x-kubernetes-preserve-unknown-fields")
        .is_some_and(|v| v == true);
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
        map.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    for (keyword, value) in map.iter_mut() {
        match (keyword.as_str(), value) {
            ("properties" | "patternProperties" | "definitions", Value::Object(named)) => {
                named.values_mut().for_each(strict)
            }
            ("items" | "additionalProperties" | "not", sub @ Value::Object(_)) => strict(sub),
            ("items" | "allOf" | "anyOf" | "oneOf", Value::Array(subs)) => {
                subs.iter_mut().for_each(strict)
            }
            _ => {}
        }
    }
}
