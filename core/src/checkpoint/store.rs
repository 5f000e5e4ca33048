//! Object-storage I/O for checkpoints: HEAD with conditional writes, immutable descriptors and
//! state files. The only module here that talks to the store.
//!
//! HEAD is written only conditionally: on the version read (`If-Match` on the ETag for S3 and
//! Azure Blob Storage, `x-goog-if-generation-match` on the generation for GCS) or, on
//! `file://`, under an exclusive lock of `HEAD.lock` comparing the bytes read. Descriptors are
//! created with `If-None-Match: *` (GCS: generation 0) and never overwritten. State files are
//! named by content, so writing one twice writes the same bytes.
//!
//! Stores and their settings (each through `object_store`'s own backend):
//!
//! | URI | endpoint | credentials (the job's `credentialsSecret`, else the pod's environment) |
//! |---|---|---|
//! | `s3://bucket/prefix` | S3-compatible URL (MinIO, …) | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; none: IRSA / EKS Pod Identity / instance profile |
//! | `gs://bucket/prefix` | GCS base URL (an emulator) | `GOOGLE_SERVICE_ACCOUNT_KEY` (a key's JSON) or `GOOGLE_APPLICATION_CREDENTIALS` (a file); none: GKE Workload Identity through the metadata server |
//! | `az://container/prefix` | the account's blob URL, e.g. `http://127.0.0.1:10000/devstoreaccount1` for Azurite | `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_KEY`, or `AZURE_CLIENT_ID`/`AZURE_TENANT_ID`/`AZURE_CLIENT_SECRET`; with only the account name: AKS Workload Identity (`AZURE_FEDERATED_TOKEN_FILE`) or managed identity |
//! | `file:///path` | — | — (one machine: `sluice-worker local`) |
//!
//! Whatever the store, a worker first probes that it refuses stale conditional writes
//! ([`CheckpointStore::check_conditional_writes`]) and will not run on one that takes them.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::checkpoint::descriptor::{Descriptor, Head};
use crate::checkpoint::layout::{JobLayout, TaskLayout};
use crate::checkpoint::savepoint::Savepoint;

/// Failures talking to the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage URI cannot be used.
    #[error("checkpoint storage {uri}: {message}")]
    Config { uri: String, message: String },
    /// Someone else changed HEAD since it was read: this worker no longer owns the task.
    #[error("HEAD {path} changed since it was read: another owner took the task")]
    Conflict { path: String },
    /// A descriptor with this id exists already.
    #[error("checkpoint descriptor {path} exists already")]
    DescriptorExists { path: String },
    /// A stored object does not hold what it should.
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
    /// The store does not honour conditional writes, so fencing cannot work on it.
    #[error(
        "checkpoint storage does not honour conditional writes ({what}, probing {path}): \
         Sluice fences a task's previous owner with If-Match / If-None-Match writes of HEAD, \
         so it will not run on this store; use one that implements them (AWS S3, MinIO, GCS, \
         Azure Blob Storage)"
    )]
    NoConditionalWrites { path: String, what: String },
    /// The first write of the conditional-writes probe failed: the store cannot be written (a
    /// store that answers a write without a version also fails here: `object_store` needs one).
    #[error("checkpoint storage cannot be written (probing {path}): {source}")]
    ProbeFailed {
        path: String,
        source: object_store::Error,
    },
    /// The store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A local file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What HEAD looked like when read; a conditional write succeeds only if it is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadVersion {
    /// The object's version as the store reports it: its ETag (what S3 and Azure match on)
    /// and its generation where the store has one (what GCS matches on). At least one is set.
    Object {
        /// The ETag.
        e_tag: Option<String>,
        /// The generation (GCS).
        version: Option<String>,
    },
    /// The exact bytes of the file (`file://`).
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The entries of `credentials` (environment-style keys, any case) that name a setting of the
/// store's builder: those starting with `prefix` (`aws_`, `google_`, `azure_`) that it parses.
/// Others (a Secret may hold more) are left out, as `from_env` leaves other variables.
fn config_keys<K: std::str::FromStr>(
    credentials: &std::collections::BTreeMap<String, String>,
    prefix: &str,
) -> Vec<(K, String)> {
    credentials
        .iter()
        .filter_map(|(key, value)| {
            let key = key.to_ascii_lowercase();
            key.starts_with(prefix)
                .then(|| key.parse::<K>().ok())
                .flatten()
                .map(|k| (k, value.clone()))
        })
        .collect()
}

impl StoreError {
    /// True when the object asked for is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::Store(object_store::Error::NotFound { .. })
        )
    }
}

/// Object-store settings beyond the URI, from the StreamJob spec. Its `Debug` names the
/// credentials' keys, never their values.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// S3-compatible endpoint URL.
    pub endpoint: Option<String>,
    /// Bucket region.
    pub region: Option<String>,
    /// Credentials as environment-style keys (`AWS_*` for S3, `GOOGLE_*` for GCS, `AZURE_*`
    /// for Azure; see the table above), instead of the process environment: what the operator
    /// reads from the job's `credentialsSecret`, as the workers get it in theirs. Empty: the
    /// environment.
    pub credentials: std::collections::BTreeMap<String, String>,
}

/// The checkpoint store of one job.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    /// The storage URI, with the endpoint when one is set: which store this is.
    identity: String,
    objects: Arc<dyn ObjectStore>,
    /// Path of the URI inside the store (the bucket prefix); empty for `file://`.
    prefix: Path,
    /// Root directory for `file://`, where HEAD writes are done under a file lock.
    local_root: Option<PathBuf>,
}

impl CheckpointStore {
    /// Opens `uri` (`file:///dir`, `s3://bucket/prefix`, `gs://…`, `az://…`). Credentials come
    /// from the environment only.
    pub fn open(uri: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let config = |message: String| StoreError::Config {
            uri: uri.to_string(),
            message,
        };
        let url = url::Url::parse(uri).map_err(|e| config(e.to_string()))?;
        match url.scheme() {
            "file" => {
                // `file://.sluice/x` parses as host `.sluice`, path `/x`: refuse it rather
                // than write to a directory the user did not name.
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(config(
                        "a file:// URI needs an absolute path, as in file:///var/lib/sluice".into(),
                    ));
                }
                let root = PathBuf::from(url.path());
                std::fs::create_dir_all(&root).map_err(|e| config(e.to_string()))?;
                // Files and their directories are synced before a write returns, so a
                // descriptor or HEAD never names a file a power loss could empty.
                let objects = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| config(e.to_string()))?
                    .with_fsync(true);
                Ok(Self {
                    identity: uri.to_string(),
                    objects: Arc::new(objects),
                    prefix: Path::from(""),
                    local_root: Some(root),
                })
            }
            "s3" | "s3a" => {
                // Given credentials replace the environment's, as a worker gets only its
                // Secret's; none given: the environment (and its identity provider).
                let mut builder = if options.credentials.is_empty() {
                    AmazonS3Builder::from_env()
                } else {
                    AmazonS3Builder::new()
                };
                for (key, value) in config_keys::<AmazonS3ConfigKey>(&options.credentials, "aws_") {
                    builder = builder.with_config(key, value);
                }
                let mut builder = builder
                    .with_url(uri)
                    .with_conditional_put(S3ConditionalPut::ETagMatch);
                if let Some(endpoint) = &options.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &options.region {
                    builder = builder.with_region(region);
                }
                let objects = builder.build().map_err(|e| config(e.to_string()))?;
                Ok(Self::remote(uri, &url, options, Arc::new(objects)))
            }
            "gs" => {
                let mut builder = if options.credentials.is_empty() {
                    GoogleCloudStorageBuilder::from_env()
                } else {
                    GoogleCloudStorageBuilder::new()
                };
                for (key, value) in config_keys::<GoogleConfigKey>(&options.credentials, "google_")
                {
                    builder = builder.with_config(key, value);
                }
                let mut builder = builder.with_url(uri);
                if let Some(endpoint) = &options.endpoint {
                    builder = builder.with_base_url(endpoint).with_client_options(
                        ClientOptions::new().with_allow_http(endpoint.starts_with("http://")),
                    );
                }
                let objects = builder.build().map_err(|e| config(e.to_string()))?;
                Ok(Self::remote(uri, &url, options, Arc::new(objects)))
            }
            "az" => {
                let mut builder = if options.credentials.is_empty() {
                    MicrosoftAzureBuilder::from_env()
                } else {
                    MicrosoftAzureBuilder::new()
                };
                for (key, value) in config_keys::<AzureConfigKey>(&options.credentials, "azure_") {
                    builder = builder.with_config(key, value);
                }
                let mut builder = builder.with_url(uri);
                if let Some(endpoint) = &options.endpoint {
                    builder = builder
                        .with_endpoint(endpoint.clone())
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let objects = builder.build().map_err(|e| config(e.to_string()))?;
                Ok(Self::remote(uri, &url, options, Arc::new(objects)))
            }
            other => Err(config(format!(
                "unsupported scheme {other}: use s3://, gs://, az:// or file://"
            ))),
        }
    }

    /// A store behind an object-store client: its identity names the endpoint when one is set.
    fn remote(
        uri: &str,
        url: &url::Url,
        options: &StoreOptions,
        objects: Arc<dyn ObjectStore>,
    ) -> Self {
        Self {
            identity: match &options.endpoint {
                Some(endpoint) => format!("{uri} at {endpoint}"),
                None => uri.to_string(),
            },
            objects,
            prefix: Path::from(url.path().trim_start_matches('/')),
            local_root: None,
        }
    }

    /// Which store this is (its URI, and its endpoint when one is set), as local checkpoint
    /// markers record it.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The path inside the store under which jobs keep their checkpoints.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Reads a task's HEAD, with the version a conditional write must match.
    pub async fn read_head(
        &self,
        task: &TaskLayout,
    ) -> Result<Option<(Head, HeadVersion)>, StoreError> {
        let path = task.head();
        let result = match self.objects.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (e_tag, version) = (result.meta.e_tag.clone(), result.meta.version.clone());
        let bytes = result.bytes().await?;
        let head = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        let version = if self.local_root.is_none() && (e_tag.is_some() || version.is_some()) {
            HeadVersion::Object { e_tag, version }
        } else {
            HeadVersion::Bytes(bytes.to_vec())
        };
        Ok(Some((head, version)))
    }

    /// Writes HEAD if it is still at `expected` (`None`: if there is no HEAD yet). Returns the
    /// new version, or [`StoreError::Conflict`] when someone else wrote it first.
    pub async fn write_head(
        &self,
        task: &TaskLayout,
        head: &Head,
        expected: Option<&HeadVersion>,
    ) -> Result<HeadVersion, StoreError> {
        let path = task.head();
        let body = serde_json::to_vec(head).map_err(|e| StoreError::Corrupt {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if let Some(root) = &self.local_root {
            let file = root.join(path.as_ref());
            let expected = expected.cloned();
            let written = body.clone();
            return tokio::task::spawn_blocking(move || {
                write_local_head(&file, &written, expected.as_ref())
            })
            .await
            .map_err(|e| StoreError::Io {
                path: path.to_string(),
                source: std::io::Error::other(e),
            })?
            .map(|()| HeadVersion::Bytes(body));
        }
        let mode = match expected {
            None => PutMode::Create,
            Some(HeadVersion::Object { e_tag, version }) => PutMode::Update(UpdateVersion {
                e_tag: e_tag.clone(),
                version: version.clone(),
            }),
            Some(HeadVersion::Bytes(_)) => {
                return Err(StoreError::Corrupt {
                    path: path.to_string(),
                    message: "the store returned no version (ETag or generation) for HEAD".into(),
                });
            }
        };
        match self
            .objects
            .put_opts(&path, PutPayload::from(body), PutOptions::from(mode))
            .await
        {
            Ok(result) if result.e_tag.is_some() || result.version.is_some() => {
                Ok(HeadVersion::Object {
                    e_tag: result.e_tag,
                    version: result.version,
                })
            }
            Ok(_) => Err(StoreError::Corrupt {
                path: path.to_string(),
                message: "the store returned no version (ETag or generation) for HEAD".into(),
            }),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(StoreError::Conflict {
                path: path.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks that the store honours conditional writes, on which fencing rests: a probe object
    /// at `path` (the job's [`crate::checkpoint::layout::JobLayout::probe`]) is written, overwritten on its version, then
    /// written again on the stale version and created again; both of the last two must be
    /// refused. A store that takes them would let a zombie overwrite a new owner's HEAD, so
    /// the worker refuses to run on it ([`StoreError::NoConditionalWrites`]). `file://` needs
    /// no probe: its HEAD writes compare bytes under a lock.
    pub async fn check_conditional_writes(&self, path: &Path) -> Result<(), StoreError> {
        if self.local_root.is_some() {
            return Ok(());
        }
        let refused = |what: &str| StoreError::NoConditionalWrites {
            path: path.to_string(),
            what: what.to_string(),
        };
        let put = |mode: PutMode, body: &'static str| {
            self.objects
                .put_opts(path, PutPayload::from(body), PutOptions::from(mode))
        };
        let version = |written: &object_store::PutResult| {
            PutMode::Update(UpdateVersion {
                e_tag: written.e_tag.clone(),
                version: written.version.clone(),
            })
        };
        let first =
            put(PutMode::Overwrite, "1")
                .await
                .map_err(|source| StoreError::ProbeFailed {
                    path: path.to_string(),
                    source,
                })?;
        if first.e_tag.is_none() && first.version.is_none() {
            return Err(refused(
                "a write returned no version (neither an ETag nor a generation), so nothing \
                 can be written on the version read",
            ));
        }
        put(version(&first), "2")
            .await
            .map_err(|e| StoreError::NoConditionalWrites {
                path: path.to_string(),
                what: format!("a write on the current version (If-Match) failed: {e}"),
            })?;
        match put(version(&first), "3").await {
            Err(object_store::Error::Precondition { .. }) => {}
            Ok(_) => return Err(refused("a write on a stale version (If-Match) was taken")),
            Err(e) => return Err(e.into()),
        }
        match put(PutMode::Create, "4").await {
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Ok(_) => {
                return Err(refused(
                    "creating an existing object (If-None-Match) was taken",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        match self.objects.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a descriptor; fails with [`StoreError::DescriptorExists`] rather than overwrite.
    pub async fn create_descriptor(
        &self,
        task: &TaskLayout,
        descriptor: &Descriptor,
    ) -> Result<(), StoreError> {
        let path = task.descriptor(descriptor.id);
        let body = serde_json::to_vec_pretty(descriptor).map_err(|e| StoreError::Corrupt {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        self.create(&path, body).await
    }

    /// Writes `body` to `path` unless an object is there: [`StoreError::DescriptorExists`]
    /// then (descriptors and savepoint manifests are written once, never overwritten).
    async fn create(&self, path: &Path, body: Vec<u8>) -> Result<(), StoreError> {
        match self
            .objects
            .put_opts(
                path,
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(StoreError::DescriptorExists {
                path: path.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a task's report (unconditionally).
    pub async fn write_report(
        &self,
        task: &TaskLayout,
        report: &crate::checkpoint::descriptor::TaskReport,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(report).expect("a report serializes");
        self.objects.put(&task.report(), bytes.into()).await?;
        Ok(())
    }

    /// Reads a task's report; `None` when it never wrote one.
    pub async fn read_report(
        &self,
        task: &TaskLayout,
    ) -> Result<Option<crate::checkpoint::descriptor::TaskReport>, StoreError> {
        self.read_json(&task.report()).await
    }

    /// The JSON object at `path`; `None` when there is none.
    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        let bytes = match self.objects.get(path).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.to_string(),
                message: e.to_string(),
            })
    }

    /// Reads a descriptor.
    pub async fn read_descriptor(
        &self,
        task: &TaskLayout,
        id: crate::checkpoint::descriptor::CheckpointId,
    ) -> Result<Descriptor, StoreError> {
        let path = task.descriptor(id);
        let bytes = self.objects.get(&path).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    /// The descriptor ids present for a task.
    pub async fn list_checkpoints(
        &self,
        task: &TaskLayout,
    ) -> Result<Vec<crate::checkpoint::descriptor::CheckpointId>, StoreError> {
        use futures::TryStreamExt;
        let prefix = task.checkpoints();
        let listed: Vec<_> = self.objects.list(Some(&prefix)).try_collect().await?;
        let mut ids: Vec<_> = listed
            .iter()
            .filter_map(|meta| TaskLayout::descriptor_id(&meta.location))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The state files present for a task, whether or not a descriptor names them.
    pub async fn list_files(&self, task: &TaskLayout) -> Result<Vec<Path>, StoreError> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self.objects.list(Some(&task.files())).try_collect().await?;
        let mut paths: Vec<_> = listed.into_iter().map(|meta| meta.location).collect();
        paths.sort_unstable();
        Ok(paths)
    }

    /// Uploads a local file to `path`.
    pub async fn put_file(&self, path: &Path, local: &std::path::Path) -> Result<(), StoreError> {
        let bytes = tokio::fs::read(local)
            .await
            .map_err(|source| StoreError::Io {
                path: local.display().to_string(),
                source,
            })?;
        self.objects.put(path, PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// Downloads `path` into the local file `local` and syncs it. The object must have `size`
    /// bytes and the content hash `hash`, else [`StoreError::Corrupt`] and nothing is kept.
    pub async fn get_file(
        &self,
        path: &Path,
        local: &std::path::Path,
        size: u64,
        hash: &crate::checkpoint::descriptor::ContentHash,
    ) -> Result<(), StoreError> {
        let bytes = self.objects.get(path).await?.bytes().await?;
        let found = blake3::hash(&bytes).to_hex();
        if bytes.len() as u64 != size || found.as_str() != hash.0 {
            return Err(StoreError::Corrupt {
                path: path.to_string(),
                message: format!(
                    "{} bytes with hash {found}, the descriptor says {size} bytes with hash {}",
                    bytes.len(),
                    hash.0
                ),
            });
        }
        let local = local.to_path_buf();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(&local)?;
            file.write_all(&bytes)?;
            file.sync_all()
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| StoreError::Io {
            path: path.to_string(),
            source,
        })
    }

    /// Copies the object `from` to `to` (server-side where the store can), overwriting.
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        self.objects.copy(from, to).await?;
        Ok(())
    }

    /// Writes a descriptor, overwriting: for a savepoint's copy of one, which only the
    /// savepoint's taker writes.
    pub async fn put_descriptor(
        &self,
        task: &TaskLayout,
        descriptor: &Descriptor,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(descriptor).expect("a descriptor serializes");
        self.objects
            .put(&task.descriptor(descriptor.id), PutPayload::from(body))
            .await?;
        Ok(())
    }

    /// Writes a savepoint's manifest; fails with [`StoreError::DescriptorExists`] rather
    /// than overwrite one (a savepoint, once complete, never changes).
    pub async fn write_savepoint(
        &self,
        savepoint: &JobLayout,
        manifest: &Savepoint,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
        self.create(&savepoint.manifest(), body).await
    }

    /// Reads a savepoint's manifest; `None` when there is none (an incomplete savepoint).
    pub async fn read_savepoint(
        &self,
        savepoint: &JobLayout,
    ) -> Result<Option<Savepoint>, StoreError> {
        self.read_json(&savepoint.manifest()).await
    }

    /// The names of the directories right under `dir`.
    pub async fn list_dirs(&self, dir: &Path) -> Result<Vec<String>, StoreError> {
        let listed = self.objects.list_with_delimiter(Some(dir)).await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Deletes every object under `dir`.
    pub async fn delete_all(&self, dir: &Path) -> Result<(), StoreError> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self.objects.list(Some(dir)).try_collect().await?;
        let paths: Vec<Path> = listed.into_iter().map(|meta| meta.location).collect();
        self.delete(&paths).await
    }

    /// Deletes objects; ones already gone are fine.
    pub async fn delete(&self, paths: &[Path]) -> Result<(), StoreError> {
        for path in paths {
            match self.objects.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Conditional write of a local HEAD file: under an exclusive lock of `HEAD.lock`, the file
/// must hold exactly `expected` (or not exist when `expected` is `None`); the new content is
/// written to a temporary file and renamed over it.
fn write_local_head(
    file: &std::path::Path,
    body: &[u8],
    expected: Option<&HeadVersion>,
) -> Result<(), StoreError> {
    let io = |source: std::io::Error| StoreError::Io {
        path: file.display().to_string(),
        source,
    };
    let dir = file
        .parent()
        .ok_or_else(|| io(std::io::ErrorKind::InvalidInput.into()))?;
    std::fs::create_dir_all(dir).map_err(io)?;
    let lock = std::fs::File::create(dir.join("HEAD.lock")).map_err(io)?;
    lock.lock().map_err(io)?;
    let current = match std::fs::read(file) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let unchanged = match (expected, &current) {
        (None, None) => true,
        (Some(HeadVersion::Bytes(want)), Some(have)) => want == have,
        _ => false,
    };
    if !unchanged {
        return Err(StoreError::Conflict {
            path: file.display().to_string(),
        });
    }
    let tmp = dir.join("HEAD.tmp");
    std::fs::write(&tmp, body).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_store_syncs_every_write_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        // object_store's LocalFileSystem syncs the file and its directory on every put when
        // built with fsync; its Debug shows the setting.
        let objects = format!("{:?}", store.objects);
        assert!(objects.contains("fsync: true"), "{objects}");
    }

    #[tokio::test]
    async fn a_download_that_does_not_match_its_descriptor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("store").display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let path = Path::from("f.sst");
        let local = dir.path().join("f.sst");
        store
            .objects
            .put(&path, PutPayload::from("content"))
            .await
            .unwrap();
        let hash = crate::checkpoint::descriptor::ContentHash(
            blake3::hash(b"content").to_hex().to_string(),
        );
        store.get_file(&path, &local, 7, &hash).await.unwrap();
        assert_eq!(std::fs::read(&local).unwrap(), b"content");
        // Truncated or zeroed in the store: refused, with what was found.
        for stored in ["cont", "\0\0\0\0\0\0\0"] {
            store
                .objects
                .put(&path, PutPayload::from(stored))
                .await
                .unwrap();
            let err = store.get_file(&path, &local, 7, &hash).await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(
                err.to_string().contains("the descriptor says 7 bytes"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_file_uri_must_name_an_absolute_path() {
        let err = CheckpointStore::open("file://.sluice/checkpoints", &StoreOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute path"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().display());
        assert!(CheckpointStore::open(&uri, &StoreOptions::default()).is_ok());
    }
}
