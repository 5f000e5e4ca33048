//! Compiling a step's expressions, the way `sluice_core::steps::check` checked them, and what
//! a compiled expression says when it fails on a record.

use std::sync::Arc;
use std::time::Duration;

use cel::Value;
use sluice_crds::v1alpha1::{Format, SinkFormat};

use super::RecordError;
use crate::expr::{self, Expr, RecordVars, Site, Vars};
use crate::job::{Job, JobError};

/// One compiled expression and where it sits in its step.
#[derive(Clone, Debug)]
pub struct Compiled {
    expr: Expr,
    field: &'static str,
    source: String,
}

impl Compiled {
    /// Evaluates over `vars`; a failure is a record error naming the expression.
    #[inline]
    pub fn eval(&self, vars: &RecordVars<'_>) -> Result<Value, RecordError> {
        self.expr.eval(vars).map_err(|e| RecordError::Expression {
            kind: expr::error_kind(&e),
            field: self.field,
            expr: self.source.clone(),
            message: e.to_string(),
        })
    }

    /// The error for a result of the wrong type.
    pub fn wrong_type(&self, want: &str, got: &Value) -> RecordError {
        RecordError::Expression {
            kind: "cel-type-error",
            field: self.field,
            expr: self.source.clone(),
            message: format!("returned a {}, not a {want}", got.type_of()),
        }
    }

    /// The variables it reads.
    pub fn uses(&self) -> Vars {
        self.expr.uses()
    }
}

/// The union of what `compiled` read.
pub fn reads<'a>(compiled: impl IntoIterator<Item = &'a Compiled>) -> Vars {
    compiled
        .into_iter()
        .fold(Vars::default(), |u, c| u.with(c.uses()))
}

/// Compiles one step's expressions the way `sluice_core::steps::check` checked them.
pub struct Compiler<'j> {
    env: Arc<cel::Env>,
    job: &'j Job,
    step: &'j str,
}

impl<'j> Compiler<'j> {
    /// A compiler for `job`'s steps.
    pub fn new(job: &'j Job) -> Self {
        Self {
            env: expr::env(),
            job,
            step: "",
        }
    }

    /// The same compiler, for the step `step`.
    pub fn at<'s>(&'s self, step: &'s str) -> Compiler<'s> {
        Compiler {
            env: self.env.clone(),
            job: self.job,
            step,
        }
    }

    /// Compiles the expression `source` of field `field`.
    pub fn expr(&self, field: &'static str, source: &str) -> Result<Compiled, JobError> {
        let site = Site {
            step: self.step,
            field,
            debezium: self.job.spec.source.kafka.format == Format::DebeziumJson,
        };
        let expr = Expr::compile(&self.env, source, site).map_err(|e| JobError::Expression {
            job: self.job.id(),
            error: Box::new(e),
        })?;
        Ok(Compiled {
            expr,
            field,
            source: source.to_string(),
        })
    }

    /// Compiles an optional expression.
    pub fn optional(
        &self,
        field: &'static str,
        source: Option<&str>,
    ) -> Result<Option<Compiled>, JobError> {
        source.map(|s| self.expr(field, s)).transpose()
    }

    /// How computed values are written to the sink.
    pub fn sink_format(&self) -> SinkFormat {
        self.job.spec.sink.kafka.format
    }

    /// The error for a step this build cannot run.
    pub fn unsupported(&self, message: &str) -> JobError {
        JobError::Unsupported {
            job: self.job.id(),
            message: format!("step {:?} {message}", self.step),
        }
    }
}

/// A duration in milliseconds.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
