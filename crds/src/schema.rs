//! Schema fragments shared by several `StreamJob` fields: Go-style durations and topic names. Pure.

use schemars::{Schema, json_schema};

/// A Go `time.ParseDuration` string without sign, as `metav1.Duration` accepts: `10s`, `1m30s`, `250ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A Kafka topic name.
pub const TOPIC_PATTERN: &str = r"^[a-zA-Z0-9._-]+$";

/// A duration of zero or more.
pub fn duration(_: &mut schemars::SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "maxLength": 64,
    })
}

/// A duration greater than zero.
pub fn nonzero_duration(_: &mut schemars::SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "maxLength": 64,
        "x-kubernetes-validations": [{
            "rule": "duration(self) > duration('0s')",
            "message": "must be a duration greater than zero, such as 500ms, 10s or 1m",
        }],
    })
}

/// A Kafka topic name.
pub fn topic_name(_: &mut schemars::SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 249,
        "pattern": TOPIC_PATTERN,
    })
}

/// A savepoint id, `<namespace>/<job>/<n>`.
pub const SAVEPOINT_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?/[0-9]+$";

/// A savepoint id (see `status.savepoints`).
pub fn savepoint_id(_: &mut schemars::SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 160,
        "pattern": SAVEPOINT_PATTERN,
    })
}

/// Per topic (at most 16, as `topics`), per partition (`"0"`, `"1"`, …, at most 1024), an
/// offset of 0 or more.
pub fn partition_offsets(_: &mut schemars::SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": {
            "type": "object",
            "maxProperties": 1024,
            "additionalProperties": {"type": "integer", "format": "int64", "minimum": 0},
            "x-kubernetes-validations": [{
                "rule": "self.all(p, p.matches('^(0|[1-9][0-9]{0,5})$'))",
                "message": "partitions are given by number, as in \"0\" or \"12\"",
            }],
        },
    })
}
