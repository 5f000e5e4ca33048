//! The CEL expressions of a job's steps: compiled once (when the job is validated and when a
//! task starts), evaluated per record against that record's variables. Pure.
//!
//! Record values are decoded straight into CEL values (strings borrow from the record where
//! JSON allows), and a task binds them through a resolver, so evaluating an expression parses
//! nothing and copies no record.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr as Node};
use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
    CelTimestamp, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::objects::{Key, Value};
use cel::{Context, Env, ExecutionError, IdedExpr, Program};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// The variables an expression may read; a bit each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// Record key (string when UTF-8, else bytes).
    Key = 0,
    /// Decoded record value.
    Value,
    /// Record headers, name to string (or bytes).
    Headers,
    /// Kafka record timestamp, a CEL timestamp.
    Timestamp,
    /// Source partition.
    Partition,
    /// Offset in the partition.
    Offset,
    /// Debezium `op`.
    Op,
    /// Debezium `before` row.
    Before,
    /// Debezium `after` row.
    After,
    /// Debezium `source` block.
    Source,
}

impl Var {
    /// Every variable, in bit order.
    pub const ALL: [Var; 10] = [
        Var::Key,
        Var::Value,
        Var::Headers,
        Var::Timestamp,
        Var::Partition,
        Var::Offset,
        Var::Op,
        Var::Before,
        Var::After,
        Var::Source,
    ];

    /// Its name in CEL.
    pub fn name(self) -> &'static str {
        match self {
            Var::Key => "key",
            Var::Value => "value",
            Var::Headers => "headers",
            Var::Timestamp => "timestamp",
            Var::Partition => "partition",
            Var::Offset => "offset",
            Var::Op => "op",
            Var::Before => "before",
            Var::After => "after",
            Var::Source => "source",
        }
    }

    fn debezium_only(self) -> bool {
        matches!(self, Var::Op | Var::Before | Var::After | Var::Source)
    }
}

/// A set of [`Var`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vars(u16);

impl Vars {
    /// True when `var` is in the set.
    pub fn has(self, var: Var) -> bool {
        self.0 & (1 << var as u16) != 0
    }

    /// The union of two sets.
    pub fn with(self, other: Vars) -> Vars {
        Vars(self.0 | other.0)
    }
}

/// An expression that does not compile, with where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "step {step:?}: the CEL expression {expr:?} in {field} is invalid at line {line}, column {column}: {problem}"
)]
pub struct ExprError {
    /// The step's name.
    pub step: String,
    /// The field under the step, e.g. `filter.expr`.
    pub field: String,
    /// The expression.
    pub expr: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// What is wrong.
    pub problem: String,
}

/// A compiled expression and the variables it reads.
#[derive(Clone)]
pub struct Expr {
    program: Arc<Program>,
    env: Arc<Env>,
    uses: Vars,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expr").field("uses", &self.uses).finish()
    }
}

/// Where an expression sits, for its errors.
#[derive(Clone, Copy, Debug)]
pub struct Site<'a> {
    /// Step name.
    pub step: &'a str,
    /// Field under the step, e.g. `filter.expr`.
    pub field: &'a str,
    /// Whether the source is Debezium, which adds `op`, `before`, `after`, `source`.
    pub debezium: bool,
}

impl Expr {
    /// Compiles `source`. Syntax errors, and names that are not variables of a record,
    /// are reported with their line and column.
    pub fn compile(env: &Arc<Env>, source: &str, site: Site<'_>) -> Result<Self, ExprError> {
        let error = |(line, column): (usize, usize), problem: String| ExprError {
            step: site.step.to_string(),
            field: site.field.to_string(),
            expr: source.to_string(),
            line,
            column,
            problem,
        };
        let program = env.compile(source).map_err(|e| {
            let first = e.errors.first();
            let at = first.map_or((1, 1), |e| {
                (
                    usize::try_from(e.pos.0).unwrap_or(1).max(1),
                    usize::try_from(e.pos.1).unwrap_or(0) + 1,
                )
            });
            error(at, first.map_or_else(|| e.to_string(), |e| e.msg.clone()))
        })?;
        let mut free = Vec::new();
        free_variables(program.expression(), &mut Vec::new(), &mut free);
        let mut uses = Vars::default();
        for (name, id) in free {
            let var = Var::ALL
                .into_iter()
                .find(|v| v.name() == name && (site.debezium || !v.debezium_only()));
            match var {
                Some(var) => uses.0 |= 1 << var as u16,
                None => {
                    let at = program
                        .source_info()
                        .offset_for(id)
                        .map_or((1, 1), |(start, _)| line_column(source, start as usize));
                    let known = Var::ALL
                        .into_iter()
                        .filter(|v| site.debezium || !v.debezium_only())
                        .map(Var::name)
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(error(
                        at,
                        format!("undeclared reference to {name:?}; a record has {known}"),
                    ));
                }
            }
        }
        Ok(Self {
            program: Arc::new(program),
            env: env.clone(),
            uses,
        })
    }

    /// The variables the expression reads.
    pub fn uses(&self) -> Vars {
        self.uses
    }

    /// Evaluates the expression over `vars`.
    #[inline]
    pub fn eval(&self, vars: &RecordVars<'_>) -> Result<Value, ExecutionError> {
        let mut context = Context::with_env(self.env.clone());
        context.set_variable_resolver(vars);
        self.program.execute(&context)
    }
}

/// The environment every expression compiles and runs in: CEL's standard library.
pub fn env() -> Arc<Env> {
    Arc::new(Env::stdlib())
}

/// (line, column), both from 1, of char offset `at` in `source`.
fn line_column(source: &str, at: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for c in source.chars().take(at) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// Identifiers not bound by an enclosing comprehension (macros such as `all` bind theirs).
fn free_variables<'e>(expr: &'e IdedExpr, bound: &mut Vec<&'e str>, out: &mut Vec<(&'e str, u64)>) {
    match &expr.expr {
        Node::Ident(name) => {
            if !bound.contains(&name.as_str()) {
                out.push((name, expr.id));
            }
        }
        Node::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, out);
            }
            for arg in &call.args {
                free_variables(arg, bound, out);
            }
        }
        Node::Select(select) => free_variables(&select.operand, bound, out),
        Node::List(list) => {
            for e in &list.elements {
                free_variables(e, bound, out);
            }
        }
        Node::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(e) = &entry.expr {
                    free_variables(&e.key, bound, out);
                    free_variables(&e.value, bound, out);
                }
            }
        }
        Node::Struct(s) => {
            for entry in &s.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => free_variables(&f.value, bound, out),
                    EntryExpr::MapEntry(e) => {
                        free_variables(&e.key, bound, out);
                        free_variables(&e.value, bound, out);
                    }
                }
            }
        }
        Node::Comprehension(c) => {
            free_variables(&c.iter_range, bound, out);
            free_variables(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(&c.iter_var);
            if let Some(v) = &c.iter_var2 {
                bound.push(v);
            }
            bound.push(&c.accu_var);
            free_variables(&c.loop_cond, bound, out);
            free_variables(&c.loop_step, bound, out);
            free_variables(&c.result, bound, out);
            bound.truncate(depth);
        }
        Node::Literal(_) | Node::Unspecified => {}
    }
}

/// One record's variables, as CEL values; unset ones read as `null`.
#[derive(Debug, Default)]
pub struct RecordVars<'a> {
    values: [Option<Box<dyn Val + 'a>>; 10],
}

impl<'a> RecordVars<'a> {
    /// Sets `var`.
    pub fn set(&mut self, var: Var, value: Box<dyn Val + 'a>) {
        self.values[var as usize] = Some(value);
    }

    /// Sets `var` from a computed value (the result of a map step).
    pub fn set_value(&mut self, var: Var, value: Value) -> Result<(), ExecutionError> {
        self.set(var, value.try_into()?);
        Ok(())
    }

    /// Whether `var` was set.
    pub fn is_set(&self, var: Var) -> bool {
        self.values[var as usize].is_some()
    }
}

impl VariableResolver for RecordVars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let var = Var::ALL.into_iter().find(|v| v.name() == variable)?;
        Some(match &self.values[var as usize] {
            Some(value) => CowVal::Borrowed(value.as_ref()),
            None => CowVal::owned(CelNull),
        })
    }
}

/// Bytes as a CEL string when they are UTF-8, else as CEL bytes; borrowed either way.
pub fn text_or_bytes(bytes: &[u8]) -> Box<dyn Val + '_> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Box::new(CelString::from(s)),
        Err(_) => Box::new(CelBytes::from(bytes)),
    }
}

/// An int.
pub fn int(i: i64) -> Box<dyn Val + 'static> {
    Box::new(CelInt::from(i))
}

/// A timestamp from epoch milliseconds.
pub fn timestamp_ms(ms: i64) -> Box<dyn Val + 'static> {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => Box::new(CelTimestamp::from(t.fixed_offset())),
        None => Box::new(CelNull),
    }
}

/// A map of header names to their values.
pub fn headers<'a>(pairs: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>) -> Box<dyn Val + 'a> {
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::new();
    for (name, value) in pairs {
        let value = value.map_or_else(|| Box::new(CelNull) as Box<dyn Val>, text_or_bytes);
        map.insert(CelMapKey::from(name), value);
    }
    Box::new(CelMap::from(map))
}

/// Decodes JSON straight into a CEL value; strings without escapes borrow from `bytes`.
pub fn json(bytes: &[u8]) -> Result<Box<dyn Val + '_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = (&mut de).deserialize_any(JsonVisitor)?;
    de.end()?;
    Ok(value)
}

/// Decodes a JSON document already parsed as a raw value.
pub fn json_str(text: &str) -> Result<Box<dyn Val + '_>, serde_json::Error> {
    json(text.as_bytes())
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Box<dyn Val + 'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Box::new(CelBool::from(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Box::new(CelInt::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        // JSON numbers are ints in CEL when they fit, as in Kubernetes' CEL.
        Ok(match i64::try_from(v) {
            Ok(i) => Box::new(CelInt::from(i)),
            Err(_) => Box::new(CelUInt::from(v)),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(v)))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(Seed)? {
            items.push(item);
        }
        Ok(Box::new(CelList::from(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map: HashMap<CelMapKey<'de>, Box<dyn Val + 'de>> =
            HashMap::with_capacity(access.size_hint().unwrap_or(8));
        while let Some(key) = access.next_key_seed(KeySeed)? {
            let value = access.next_value_seed(Seed)?;
            map.insert(key, value);
        }
        Ok(Box::new(CelMap::from(map)))
    }
}

struct Seed;

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Box<dyn Val + 'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct KeySeed;

impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = CelMapKey<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = CelMapKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CelMapKey::from(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CelMapKey::from(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CelMapKey::from(v))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Why a computed value cannot be written as JSON.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(String);

/// Writes `value` as JSON into `out` (cleared first). Map keys are sorted, so equal values
/// always encode to equal bytes. Bytes are written as a string when UTF-8 and refused otherwise.
pub fn write_json(value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.clear();
    write_json_into(value, out)
}

fn write_json_into(value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let string = |s: &str, out: &mut Vec<u8>| {
        serde_json::to_writer(&mut *out, s).map_err(|e| EncodeError(e.to_string()))
    };
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
        Value::Float(f) => {
            if !f.is_finite() {
                return Err(EncodeError(format!("{f} cannot be written as JSON")));
            }
            serde_json::to_writer(&mut *out, f).map_err(|e| EncodeError(e.to_string()))?;
        }
        Value::String(s) => string(s, out)?,
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => string(s, out)?,
            Err(_) => {
                return Err(EncodeError(
                    "bytes that are not UTF-8 cannot be written as JSON".into(),
                ));
            }
        },
        Value::Timestamp(t) => string(&t.to_rfc3339(), out)?,
        Value::Duration(d) => string(&format!("{}ms", d.num_milliseconds()), out)?,
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_into(item, out)?;
            }
            out.push(b']');
        }
        Value::Map(map) => {
            let mut entries: Vec<(String, &Value)> =
                map.map.iter().map(|(k, v)| (key_text(k), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(k, out)?;
                out.push(b':');
                write_json_into(v, out)?;
            }
            out.push(b'}');
        }
        other => {
            return Err(EncodeError(format!(
                "a {} cannot be written as JSON",
                other.type_of()
            )));
        }
    }
    Ok(())
}

/// `value` as a JSON value, as [`write_json`] would write it.
pub fn to_json(value: &Value) -> Result<serde_json::Value, EncodeError> {
    use serde_json::Value as Json;
    Ok(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| EncodeError(format!("{f} cannot be written as JSON")))?,
        Value::String(s) => Json::String(s.to_string()),
        Value::List(items) => Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Map(map) => Json::Object(
            map.map
                .iter()
                .map(|(k, v)| Ok((key_text(k), to_json(v)?)))
                .collect::<Result<_, EncodeError>>()?,
        ),
        other => {
            let mut out = Vec::new();
            write_json(other, &mut out)?;
            serde_json::from_slice(&out).map_err(|e| EncodeError(e.to_string()))?
        }
    })
}

fn key_text(key: &Key) -> String {
    match key {
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
        Key::String(s) => s.to_string(),
    }
}

/// Writes `value` as record bytes: strings and bytes as they are, anything else as JSON.
pub fn write_bytes(value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match value {
        Value::String(s) => {
            out.clear();
            out.extend_from_slice(s.as_bytes());
            Ok(())
        }
        Value::Bytes(b) => {
            out.clear();
            out.extend_from_slice(b);
            Ok(())
        }
        other => write_json(other, out),
    }
}

/// The short kind of a CEL runtime error, for the `sluice.error.kind` header and metrics.
pub fn error_kind(error: &ExecutionError) -> &'static str {
    match error {
        ExecutionError::DivisionByZero(_) | ExecutionError::RemainderByZero(_) => {
            "cel-division-by-zero"
        }
        ExecutionError::NoSuchKey(_) => "cel-no-such-key",
        ExecutionError::Overflow(..) => "cel-overflow",
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::UnexpectedType { .. }
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnsupportedTargetType { .. } => "cel-type-error",
        _ => "cel-error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(step: &str) -> Site<'_> {
        Site {
            step,
            field: "filter.expr",
            debezium: false,
        }
    }

    fn eval(source: &str, value: &str) -> Result<Value, ExecutionError> {
        let env = env();
        let expr = Expr::compile(&env, source, site("s")).unwrap();
        let mut vars = RecordVars::default();
        vars.set(Var::Value, json(value.as_bytes()).unwrap());
        vars.set(Var::Key, text_or_bytes(b"k1"));
        vars.set(Var::Partition, int(3));
        expr.eval(&vars)
    }

    #[test]
    fn expressions_read_the_decoded_record() {
        assert_eq!(
            eval("value.amount > 100 && key == 'k1'", r#"{"amount":150}"#),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            eval("size(value.items) + partition", r#"{"items":[1,2]}"#),
            Ok(Value::Int(5))
        );
        assert_eq!(
            eval(
                "value.items.exists(i, i.qty > 4)",
                r#"{"items":[{"qty":2},{"qty":5}]}"#
            ),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            eval("value.name + '!'", r#"{"name":"a \"quoted\" é"}"#),
            Ok(Value::String(Arc::new("a \"quoted\" é!".into())))
        );
    }

    #[test]
    fn runtime_errors_have_kinds() {
        let kind = |source: &str, value: &str| error_kind(&eval(source, value).unwrap_err());
        assert_eq!(
            kind("value.a / value.b", r#"{"a":1,"b":0}"#),
            "cel-division-by-zero"
        );
        assert_eq!(kind("value.missing > 1", r#"{"a":1}"#), "cel-no-such-key");
        assert_eq!(kind("value.a > 1", r#"{"a":"text"}"#), "cel-type-error");
    }

    #[test]
    fn a_syntax_error_names_step_field_expression_and_position() {
        let err = Expr::compile(&env(), "value.amount >", site("big")).unwrap_err();
        assert_eq!((err.step.as_str(), err.line), ("big", 1));
        assert!(err.column >= 14, "{err}");
        let text = err.to_string();
        assert!(text.contains("\"value.amount >\""), "{text}");
        assert!(text.contains("filter.expr"), "{text}");
    }

    #[test]
    fn an_unknown_variable_is_refused_with_its_position_but_macro_variables_are_fine() {
        let err = Expr::compile(&env(), "value.a > 1 &&\n  vlaue.b < 2", site("s")).unwrap_err();
        assert_eq!((err.line, err.column), (2, 3), "{err}");
        assert!(err.problem.contains("\"vlaue\""), "{err}");
        let err = Expr::compile(&env(), "op == 'c'", site("s")).unwrap_err();
        assert!(err.problem.contains("\"op\""), "{err}");
        let ok = Expr::compile(&env(), "value.items.all(i, i.qty > 0)", site("s")).unwrap();
        assert!(ok.uses().has(Var::Value) && !ok.uses().has(Var::Key));
        let debezium = Site {
            debezium: true,
            ..site("s")
        };
        assert!(Expr::compile(&env(), "op == 'c' && after.id > 0", debezium).is_ok());
    }

    #[test]
    fn computed_values_encode_as_sorted_json() {
        let value = eval(
            "{'z': value.a, 'a': [1, 2.5, 'x', null, true], 'm': {'k': key}}",
            r#"{"a":-3}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        write_json(&value, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"a":[1,2.5,"x",null,true],"m":{"k":"k1"},"z":-3}"#
        );
        assert_eq!(
            to_json(&value).unwrap(),
            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            "to_json and write_json agree"
        );
        write_bytes(&Value::String(Arc::new("plain".into())), &mut out).unwrap();
        assert_eq!(out, b"plain");
    }
}
