//! What the API server would say about an object: the CRD's OpenAPI schema constraints and its
//! CEL rules (`x-kubernetes-validations`), evaluated offline. Pure, no I/O.
//!
//! Order follows the API server: schema defaults are applied, the OpenAPI constraints are
//! checked (type, required, enum, bounds, pattern, format, unknown fields as
//! `kubectl --validate=strict` reports them), then the CEL rules run through `kube-cel`,
//! which carries the Kubernetes CEL library. `x-kubernetes-list-type: set | map` uniqueness is
//! checked as the API server does. Not modelled: the CEL cost budget at admission time (see
//! [`Admission::rule_cost_warnings`] for the static estimate), ratcheting of unchanged invalid
//! fields on update, and formats other than `date-time`.

use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{
    CompiledSchema, Validator, apply_defaults, compile_schema, estimate_rule_cost,
};
use regex::Regex;
use serde_json::Value;

/// One rejected field, as `kubectl apply` would print it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.parallelism`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The admission check for one CRD version's schema.
pub struct Admission {
    schema: Value,
    compiled: CompiledSchema,
    validator: Validator,
}

impl Admission {
    /// The check for the `StreamJob` CRD this crate generates.
    pub fn streamjob() -> Self {
        Self::for_crd(&<crate::StreamJob as kube::CustomResourceExt>::crd())
            .expect("the generated StreamJob CRD has a schema")
    }

    /// The check for the storage version of `crd`; `None` when it has no schema.
    pub fn for_crd(crd: &CustomResourceDefinition) -> Option<Self> {
        let version = crd.spec.versions.iter().find(|v| v.storage)?;
        let schema =
            serde_json::to_value(version.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()?;
        Some(Self {
            compiled: compile_schema(&schema),
            schema,
            validator: Validator::new(),
        })
    }

    /// Checks `object` (with `old` on update, for transition rules). Returns every
    /// rejected field, in schema order.
    pub fn check(&self, object: &Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
        let defaulted = apply_defaults(&self.schema, object);
        let mut errors = Vec::new();
        check_node(&self.schema, &defaulted, "", &mut errors);
        if let Err(failures) = self
            .validator
            .validate_compiled(&self.compiled, &defaulted, old)
        {
            errors.extend(failures.iter().map(|e| FieldError {
                path: e.field_path.clone(),
                message: e.message.clone(),
            }));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every CEL rule in the schema that fails to compile or whose estimated cost may exceed
    /// the API server's budget, which would make the API server reject the CRD itself.
    pub fn rule_cost_warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .compiled
            .compilation_errors()
            .iter()
            .map(|e| format!("does not compile: {e}"))
            .collect();
        collect_rules(&self.schema, &mut |rule| {
            // Cost only: kube-cel 0.8's scope analysis reports comprehension variables under
            // `!` (e.g. `!self.exists(k, ...)`) as unbound, which the API server accepts.
            for w in estimate_rule_cost(rule, &self.compiled) {
                out.push(format!("{rule}: {}", w.message));
            }
        });
        out
    }
}

/// RFC 7386 JSON merge patch, as the API server applies `application/merge-patch+json`:
/// objects merge key by key, a `null` removes the key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn collect_rules(schema: &Value, f: &mut impl FnMut(&str)) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules.iter().filter_map(|r| r.get("rule")?.as_str()) {
            f(rule);
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        props.values().for_each(|s| collect_rules(s, f));
    }
    for key in ["items", "additionalProperties"] {
        if let Some(s) = schema.get(key).filter(|s| s.is_object()) {
            collect_rules(s, f);
        }
    }
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn matches_type(expected: &str, v: &Value) -> bool {
    match (expected, v) {
        ("number", Value::Number(_)) => true,
        (t, v) => t == type_name(v),
    }
}

fn check_node(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut reject = |message: String| {
        errors.push(FieldError {
            path: path.to_string(),
            message,
        })
    };
    let flag = |key: &str| schema.get(key).and_then(Value::as_bool).unwrap_or(false);

    if value.is_null() {
        if !flag("nullable") {
            reject("Invalid value: null: must not be null".into());
        }
        return;
    }
    if flag("x-kubernetes-int-or-string") {
        if !(value.is_string() || matches_type("integer", value)) {
            reject(format!(
                "Invalid value: {value}: must be an integer or a string"
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !matches_type(expected, value)
    {
        reject(format!(
            "Invalid value: \"{}\": {path} in body must be of type {expected}: \"{}\"",
            type_name(value),
            type_name(value)
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list = allowed
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        reject(format!(
            "Unsupported value: {value}: supported values: {list}"
        ));
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(n) = value.as_f64() {
        if let Some(min) = bound("minimum").filter(|min| n < *min) {
            reject(format!(
                "Invalid value: {value}: {path} in body should be greater than or equal to {min}"
            ));
        }
        if let Some(max) = bound("maximum").filter(|max| n > *max) {
            reject(format!(
                "Invalid value: {value}: {path} in body should be less than or equal to {max}"
            ));
        }
    }
    let count = |key: &str| schema.get(key).and_then(Value::as_u64);
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = count("minLength").filter(|min| len < *min) {
                reject(format!(
                    "Invalid value: {value}: {path} in body should be at least {min} chars long"
                ));
            }
            if let Some(max) = count("maxLength").filter(|max| len > *max) {
                reject(format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match Regex::new(pattern) {
                    Ok(re) if re.is_match(s) => {}
                    Ok(_) => reject(format!(
                        "Invalid value: {value}: {path} in body should match '{pattern}'"
                    )),
                    Err(e) => reject(format!("schema pattern '{pattern}' is invalid: {e}")),
                }
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time") && !is_rfc3339(s) {
                reject(format!(
                    "Invalid value: {value}: {path} in body must be of type date-time: {value}"
                ));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = count("minItems").filter(|min| len < *min) {
                reject(format!(
                    "Invalid value: {len}: {path} in body should have at least {min} items"
                ));
            }
            if let Some(max) = count("maxItems").filter(|max| len > *max) {
                reject(format!("Too many: {len}: must have at most {max} items"));
            }
            check_list_uniqueness(schema, items, path, errors);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_node(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(fields) => check_object(schema, fields, path, errors),
        _ => {}
    }
}

/// `x-kubernetes-list-type: set` items, and `map` items by their `x-kubernetes-list-map-keys`,
/// must be unique.
fn check_list_uniqueness(
    schema: &Value,
    items: &[Value],
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let identity = |item: &Value| -> Value {
        match schema
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
        {
            Some(keys) => keys
                .iter()
                .filter_map(Value::as_str)
                .map(|k| (k.to_string(), item.get(k).cloned().unwrap_or(Value::Null)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            None => item.clone(),
        }
    };
    if !matches!(
        schema.get("x-kubernetes-list-type").and_then(Value::as_str),
        Some("set" | "map")
    ) {
        return;
    }
    let mut seen = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = identity(item);
        if seen.contains(&id) {
            errors.push(FieldError {
                path: format!("{path}[{i}]"),
                message: format!("Duplicate value: {id}"),
            });
        } else {
            seen.push(id);
        }
    }
}

fn check_object(
    schema: &Value,
    fields: &serde_json::Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && fields.len() as u64 > max
    {
        errors.push(FieldError {
            path: path.to_string(),
            message: format!("Too many: {}: must have at most {max} items", fields.len()),
        });
    }
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !fields.contains_key(name) {
            errors.push(FieldError {
                path: child(path, name),
                message: "Required value".into(),
            });
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|s| s.is_object());
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for (name, field) in fields {
        let field_path = child(path, name);
        // The API server checks apiVersion, kind and metadata itself; the CRD schema does not.
        let is_api_field =
            path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
        if let Some(s) = properties.and_then(|p| p.get(name)) {
            check_node(s, field, &field_path, errors);
        } else if let Some(s) = additional {
            check_node(s, field, &field_path, errors);
        } else if !(preserve || is_api_field) {
            errors.push(FieldError {
                path: field_path,
                message: format!("unknown field \"{name}\""),
            });
        }
    }
}

fn is_rfc3339(s: &str) -> bool {
    static RFC3339: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
            .expect("static regex")
    });
    RFC3339.is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn admission() -> Admission {
        Admission::streamjob()
    }

    #[test]
    fn every_rule_in_the_crd_compiles_and_fits_the_cost_budget() {
        let warnings = admission().rule_cost_warnings();
        assert!(warnings.is_empty(), "{warnings:#?}");
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let errors = admission()
            .check(
                &json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamJob",
                        "metadata": {"name": "x"}, "spec": {"paralelism": 2}}),
                None,
            )
            .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.path == "spec.paralelism" && e.message.contains("unknown field")),
            "{errors:?}"
        );
    }

    #[test]
    fn timestamps_must_be_rfc3339() {
        assert!(is_rfc3339("2026-01-01T00:00:00Z"));
        assert!(is_rfc3339("2026-01-01T00:00:00.5+02:00"));
        assert!(!is_rfc3339("yesterday"));
        assert!(!is_rfc3339("2026-01-01"));
    }
}
