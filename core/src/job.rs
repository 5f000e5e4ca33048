//! The job a worker runs: a StreamJob's identity and spec, read from the rendered config (pod
//! mode) or a StreamJob manifest (local mode). Reads one file; the rest is pure.

use std::path::Path;

use sluice_crds::StreamJobSpec;
use sluice_crds::v1alpha1::StreamJob;

/// Failures reading a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file cannot be read.
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not a StreamJob.
    #[error("{path} is not a valid StreamJob: {message}")]
    Parse { path: String, message: String },
    /// The StreamJob asks for something this worker cannot do.
    #[error("job {job}: {message}")]
    Unsupported { job: String, message: String },
    /// A CEL expression of a step does not compile.
    #[error("job {job}: {error}")]
    Expression {
        job: String,
        error: Box<crate::expr::ExprError>,
    },
}

/// The job: where it lives and what it does.
#[derive(Clone, Debug)]
pub struct Job {
    /// Kubernetes namespace (`default` for a local manifest without one).
    pub namespace: String,
    /// Job name.
    pub name: String,
    /// The spec.
    pub spec: StreamJobSpec,
}

impl Job {
    /// Reads a StreamJob manifest (YAML or JSON).
    pub fn from_file(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a StreamJob manifest (YAML or JSON); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, JobError> {
        let job: StreamJob = serde_norway::from_str(text).map_err(|e| JobError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let name = job.metadata.name.clone().ok_or_else(|| JobError::Parse {
            path: origin.to_string(),
            message: "metadata.name is missing".into(),
        })?;
        Ok(Self {
            namespace: job
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name,
            spec: job.spec,
        })
    }

    /// `namespace/name`, for logs.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Identifies the steps and decoding that wrote a task's state: a checkpoint restores only
    /// into the same pipeline.
    pub fn pipeline_fingerprint(&self) -> String {
        pipeline_fingerprint(&self.spec)
    }

    /// The dead-letter topic: `spec.deadLetter.topic`, or `<sink topic>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        self.spec.dead_letter.as_ref().map_or_else(
            || format!("{}.dlq", self.spec.sink.kafka.topic),
            |d| d.topic.clone(),
        )
    }
}

/// The fingerprint of `spec`'s steps and decoding ([`Job::pipeline_fingerprint`]).
pub fn pipeline_fingerprint(spec: &StreamJobSpec) -> String {
    let shape = serde_json::json!({
        "format": spec.source.kafka.format,
        "steps": spec.steps,
    });
    let hash = blake3::hash(shape.to_string().as_bytes());
    hash.to_hex()[..16].to_string()
}

/// A job with the given `steps` (YAML flow list) and source `format`, for tests (here and in
/// the worker's).
#[doc(hidden)]
pub fn test_job(steps: &str, format: &str) -> Job {
    let yaml = format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata: {{name: j}}
spec:
  parallelism: 1
  source: {{kafka: {{bootstrapServers: "k:9092", topics: [in], format: {format}}}}}
  steps: {steps}
  sink: {{kafka: {{topic: out}}}}
  checkpoint: {{storage: "file:///tmp/x"}}
"#
    );
    Job::parse(&yaml, "test job").expect("valid test job")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_without_namespace_runs_in_default() {
        let j = test_job("[]", "json");
        assert_eq!(j.id(), "default/j");
        assert_eq!(j.dead_letter_topic(), "out.dlq");
    }

    #[test]
    fn the_fingerprint_changes_with_the_steps_only() {
        let a = test_job("[{name: t, materialize: {}}]", "json");
        let b = test_job("[{name: t, materialize: {}}]", "json");
        let c = test_job("[{name: u, materialize: {}}]", "json");
        assert_eq!(a.pipeline_fingerprint(), b.pipeline_fingerprint());
        assert_ne!(a.pipeline_fingerprint(), c.pipeline_fingerprint());
    }
}
