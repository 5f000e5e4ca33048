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
    /// The input partitions the operator rolled the job out onto (annotations of the job
    /// file it renders); `None` for a local manifest, which reads the partitions the topics
    /// have when the worker starts.
    pub partitions: Option<Partitions>,
}

/// The input partitions a job reads, as the operator pinned them: workers read these, not the
/// count the brokers give at their start, so a pod that restarts after partitions were added
/// runs the same tasks as the others until the operator rolls the job onto more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitions {
    /// Tasks `0..read` run; partitions from `read` on are not read.
    pub read: u32,
    /// Partitions from this one on were added while the job ran: a task among them that has no
    /// checkpoint starts at the earliest offset, whatever `startingOffsets` says (its records
    /// were written after the job started reading; `latest` would skip them).
    pub added_from: u32,
}

impl Partitions {
    /// Annotation of the job file: [`Partitions::read`].
    pub const READ: &'static str = "sluice.dev/partitions";
    /// Annotation of the job file: [`Partitions::added_from`].
    pub const ADDED_FROM: &'static str = "sluice.dev/partitions-added-from";

    /// From a StreamJob's annotations; `None` when they are absent, `Err` when they are not
    /// counts or `added_from` is above `read`.
    pub fn from_annotations(
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Self>, String> {
        let count = |key: &str| -> Result<Option<u32>, String> {
            annotations
                .get(key)
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| format!("annotation {key} is {v:?}, not a partition count"))
                })
                .transpose()
        };
        match (count(Self::READ)?, count(Self::ADDED_FROM)?) {
            (None, None) => Ok(None),
            (Some(read), added_from) => {
                let added_from = added_from.unwrap_or(read);
                if added_from > read {
                    return Err(format!(
                        "annotation {} is {added_from}, above {} ({read})",
                        Self::ADDED_FROM,
                        Self::READ
                    ));
                }
                Ok(Some(Self { read, added_from }))
            }
            (None, Some(_)) => Err(format!(
                "annotation {} is given without {}",
                Self::ADDED_FROM,
                Self::READ
            )),
        }
    }

    /// What an earlier run read when nothing wrote it down (a local job, or a job file from an
    /// operator that pinned no partitions), from which tasks have a checkpoint
    /// (`checkpointed[t]`): the topics may have grown since. The tasks up to the last one with
    /// a checkpoint count as read, and from the first one without a checkpoint on as added, so
    /// they start at their earliest offset and never skip what was written to them (one with a
    /// checkpoint resumes from it either way). None when no task has a checkpoint: nothing was
    /// read yet.
    pub fn from_checkpoints(checkpointed: &[bool]) -> Option<Self> {
        let read = checkpointed.iter().rposition(|c| *c)? as u32 + 1;
        let added_from =
            (checkpointed.iter().position(|c| !c)).map_or(read, |t| (t as u32).min(read));
        Some(Self { read, added_from })
    }

    /// Whether task `task`, without a checkpoint, reads a partition added while the job ran.
    pub fn added(partitions: Option<&Self>, task: u32) -> bool {
        partitions.is_some_and(|p| task >= p.added_from)
    }
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
            partitions: Partitions::from_annotations(
                job.metadata
                    .annotations
                    .as_ref()
                    .unwrap_or(&Default::default()),
            )
            .map_err(|message| JobError::Parse {
                path: origin.to_string(),
                message,
            })?,
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
        self.spec.dead_letter_topic()
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
    fn the_pinned_partitions_come_from_the_job_files_annotations() {
        let manifest = |annotations: &str| {
            format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: j, annotations: {annotations}}}\nspec:\n  parallelism: 1\n  source: {{kafka: {{bootstrapServers: \"k:9092\", topics: [in]}}}}\n  sink: {{kafka: {{topic: out}}}}\n  checkpoint: {{storage: \"file:///tmp/x\"}}\n"
            )
        };
        let parse = |a: &str| Job::parse(&manifest(a), "t").map(|j| j.partitions);
        assert_eq!(parse("{}").expect("no pin"), None);
        let pinned =
            parse(r#"{"sluice.dev/partitions": "12", "sluice.dev/partitions-added-from": "6"}"#)
                .expect("pinned")
                .expect("some");
        assert_eq!(
            pinned,
            Partitions {
                read: 12,
                added_from: 6
            }
        );
        assert!(!Partitions::added(Some(&pinned), 5));
        assert!(Partitions::added(Some(&pinned), 6));
        assert!(!Partitions::added(None, 6));
        assert_eq!(
            parse(r#"{"sluice.dev/partitions": "6"}"#).expect("pinned"),
            Some(Partitions {
                read: 6,
                added_from: 6
            })
        );
        for bad in [
            r#"{"sluice.dev/partitions": "six"}"#,
            r#"{"sluice.dev/partitions": "6", "sluice.dev/partitions-added-from": "7"}"#,
            r#"{"sluice.dev/partitions-added-from": "7"}"#,
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains("sluice.dev/partitions"), "{e}");
        }
    }

    #[test]
    fn the_fingerprint_changes_with_the_steps_only() {
        let a = test_job("[{name: t, materialize: {}}]", "json");
        let b = test_job("[{name: t, materialize: {}}]", "json");
        let c = test_job("[{name: u, materialize: {}}]", "json");
        assert_eq!(a.pipeline_fingerprint(), b.pipeline_fingerprint());
        assert_ne!(a.pipeline_fingerprint(), c.pipeline_fingerprint());
    }

    #[test]
    fn tasks_from_the_first_without_a_checkpoint_count_as_added_once_any_has_one() {
        let from = |c: &[bool]| Partitions::from_checkpoints(c).map(|p| (p.read, p.added_from));
        assert_eq!(
            from(&[false, false]),
            None,
            "a new job: nothing read, nothing added"
        );
        assert_eq!(from(&[true, true]), Some((2, 2)), "all checkpointed");
        assert_eq!(
            from(&[true, true, false, false]),
            Some((2, 2)),
            "the topic grew"
        );
        assert_eq!(
            from(&[true, false, true, false]),
            Some((3, 1)),
            "a gap: its task never checkpointed and starts at earliest too"
        );
    }
}
