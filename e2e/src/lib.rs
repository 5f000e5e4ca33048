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
#[derive(Clone, Debug, Default)]
pub struct TestEnv {
    /// `host:port` of the Kafka-compatible broker.
    pub kafka_bootstrap: String,
    /// librdkafka settings every client of [`TestEnv::kafka_config`] gets besides the address
    /// (the TLS broker's CA, say); none for the plain broker.
    pub kafka_properties: Vec<(String, String)>,
    /// `host:port` of the broker behind TLS (a TLS-terminating proxy in front of a second
    /// Tansu: Tansu 0.6's `--cert` and `--key` cannot be given together).
    pub tls_bootstrap: String,
    /// PEM file of the CA that signs the TLS broker's certificate.
    pub tls_ca_file: String,
    /// `host:port` of the broker that requires SASL authentication (`--authentication`).
    pub sasl_bootstrap: String,
    /// `host:port` of the SASL cluster a job can authenticate to (`e2e/env/sasl_proxy.py` in
    /// front of a plain Tansu), with its one user [`TestEnv::sasl_user`].
    pub sasl_proxy_bootstrap: String,
    /// The user the SASL proxy accepts (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512).
    pub sasl_user: String,
    /// That user's password.
    pub sasl_password: String,
    /// `host:port` of the broker whose topics can gain partitions (see
    /// [`cluster::grow_topic`]): it keeps its data in [`TestEnv::grow_bucket`] on the S3 server.
    pub grow_bootstrap: String,
    /// The S3 bucket that broker keeps its data in.
    pub grow_bucket: String,
    /// URL of the S3-compatible server.
    pub s3_endpoint: String,
    /// Bucket created by `up.sh`.
    pub s3_bucket: String,
    /// Blob URL of Azurite's account (`http://host:port/devstoreaccount1`).
    pub azure_endpoint: String,
    /// Container created by `up.sh` in Azurite.
    pub azure_container: String,
    /// Base URL of the GCS emulator.
    pub gcs_endpoint: String,
    /// Bucket of the GCS emulator.
    pub gcs_bucket: String,
}

/// The object stores `up.sh` starts, each a real server speaking its cloud's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// moto, S3.
    S3,
    /// Azurite, Azure Blob Storage.
    Azure,
    /// gcp-storage-emulator, GCS (without generation preconditions).
    Gcs,
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
            kafka_properties: Vec::new(),
            tls_bootstrap: var("SLUICE_TLS_BOOTSTRAP"),
            tls_ca_file: var("SLUICE_TLS_CA_FILE"),
            sasl_bootstrap: var("SLUICE_SASL_BOOTSTRAP"),
            sasl_proxy_bootstrap: var("SLUICE_SASL_PROXY_BOOTSTRAP"),
            sasl_user: var("SLUICE_SASL_USER"),
            sasl_password: var("SLUICE_SASL_PASSWORD"),
            grow_bootstrap: var("SLUICE_GROW_BOOTSTRAP"),
            grow_bucket: var("SLUICE_GROW_BUCKET"),
            s3_endpoint: var("SLUICE_S3_ENDPOINT"),
            s3_bucket: var("SLUICE_S3_BUCKET"),
            azure_endpoint: var("SLUICE_AZURE_ENDPOINT"),
            azure_container: var("SLUICE_AZURE_CONTAINER"),
            gcs_endpoint: var("SLUICE_GCS_ENDPOINT"),
            gcs_bucket: var("SLUICE_GCS_BUCKET"),
        }
    }

    /// The checkpoint storage URI for `prefix` in `store`, and the endpoint a job names for it.
    pub fn storage(&self, store: Store, prefix: &str) -> (String, String) {
        match store {
            Store::S3 => (
                format!("s3://{}/{prefix}", self.s3_bucket),
                self.s3_endpoint.clone(),
            ),
            Store::Azure => (
                format!("az://{}/{prefix}", self.azure_container),
                self.azure_endpoint.clone(),
            ),
            Store::Gcs => (
                format!("gs://{}/{prefix}", self.gcs_bucket),
                self.gcs_endpoint.clone(),
            ),
        }
    }

    /// The endpoint of the store a storage URI names (by its scheme).
    pub fn endpoint_of(&self, storage: &str) -> String {
        match storage.split("://").next() {
            Some("az") => self.azure_endpoint.clone(),
            Some("gs") => self.gcs_endpoint.clone(),
            _ => self.s3_endpoint.clone(),
        }
    }

    /// A librdkafka client config pointed at the broker.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka_bootstrap);
        for (k, v) in &self.kafka_properties {
            config.set(k, v);
        }
        config
    }

    /// This environment with the TLS broker as its broker: every client speaks TLS to it and
    /// trusts its CA.
    pub fn on_tls_broker(&self) -> Self {
        Self {
            kafka_bootstrap: self.tls_bootstrap.clone(),
            kafka_properties: vec![
                ("security.protocol".into(), "SSL".into()),
                ("ssl.ca.location".into(), self.tls_ca_file.clone()),
            ],
            ..self.clone()
        }
    }

    /// This environment with the SASL cluster as its broker: every client authenticates with
    /// `mechanism` as [`TestEnv::sasl_user`].
    pub fn on_sasl_broker(&self, mechanism: &str) -> Self {
        Self {
            kafka_bootstrap: self.sasl_proxy_bootstrap.clone(),
            kafka_properties: vec![
                ("security.protocol".into(), "SASL_PLAINTEXT".into()),
                ("sasl.mechanisms".into(), mechanism.into()),
                ("sasl.username".into(), self.sasl_user.clone()),
                ("sasl.password".into(), self.sasl_password.clone()),
            ],
            ..self.clone()
        }
    }

    /// This environment with the broker whose topics can gain partitions as its broker.
    pub fn on_growable_broker(&self) -> Self {
        Self {
            kafka_bootstrap: self.grow_bootstrap.clone(),
            kafka_properties: Vec::new(),
            ..self.clone()
        }
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
