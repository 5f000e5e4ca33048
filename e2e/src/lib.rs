//! Shared pieces of the end-to-end tests: where the real broker and object store started by
//! `e2e/env/up.sh` listen, and clients for them. Reads the environment; no other I/O.

pub mod apiserver;
pub mod bench;
pub mod cdc;
pub mod cluster;
pub mod fault_proxy;
pub mod logs;
pub mod operator;
pub mod statefulset;

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use rdkafka::ClientConfig;

/// The test dependencies, as exported by `eval "$(e2e/env/up.sh)"`.
#[derive(Clone, Debug)]
pub struct TestEnv {
    /// `host:port` of the Kafka-compatible broker.
    pub kafka_bootstrap: String,
    /// URL of the S3-compatible server.
    pub s3_endpoint: String,
    /// Bucket created by `up.sh`.
    pub s3_bucket: String,
}

impl TestEnv {
    /// Reads the environment; panics with the command to run when the servers are not up,
    /// so a missing dependency fails a test instead of skipping it.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: start the test dependencies with `eval \"$(e2e/env/up.sh)\"`")
            })
        };
        Self {
            kafka_bootstrap: var("SLUICE_KAFKA_BOOTSTRAP"),
            s3_endpoint: var("SLUICE_S3_ENDPOINT"),
            s3_bucket: var("SLUICE_S3_BUCKET"),
        }
    }

    /// A librdkafka client config pointed at the broker.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka_bootstrap);
        config
    }

    /// The S3 bucket, with credentials from the `AWS_*` variables `up.sh` exports and
    /// conditional writes (`If-Match` / `If-None-Match`) enabled.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::from_env()
            .with_endpoint(&self.s3_endpoint)
            .with_bucket_name(&self.s3_bucket)
            .with_allow_http(true)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .expect("S3 settings from e2e/env/up.sh are complete");
        Arc::new(store)
    }
}

/// The worker binary the tests run: `built` (the test's `CARGO_BIN_EXE_sluice-worker`), or
/// the one `SLUICE_E2E_WORKER` names, so that the same tests can be run against another
/// build of the worker (e.g. an older commit's, to show a test failing on it).
pub fn worker_binary(built: &std::path::Path) -> std::path::PathBuf {
    std::env::var_os("SLUICE_E2E_WORKER").map_or_else(|| built.to_path_buf(), Into::into)
}

/// A name no earlier run used, for topics and object prefixes.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}
