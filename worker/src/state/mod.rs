//! A task's keyed state, behind a small trait with no RocksDB types in it, so an in-memory
//! backend runs the same test suite as RocksDB. Backends do file I/O in their directory.
//!
//! A task's state lives in a live directory that is rebuilt on every start: from a checkpoint
//! directory on the volume, or from files downloaded from object storage. The live directory
//! is never trusted after a crash: RocksDB runs without a WAL, checkpoints are the durability
//! boundary.

pub mod memory;
pub mod rocks;

use std::io;
use std::path::{Path, PathBuf};

/// Failures of a state backend.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB refused an operation.
    #[error("rocksdb at {path}: {message}")]
    Rocks { path: PathBuf, message: String },
    /// A file of the state could not be read or written.
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A state file does not hold what it should.
    #[error("state file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

impl StateError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Keyed state of one task: ordered byte keys to byte values.
pub trait StateBackend: Send {
    /// Opens the state in `dir`, creating it empty when `dir` has none.
    fn open(dir: &Path) -> Result<Self, StateError>
    where
        Self: Sized;

    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError>;

    /// Removes `key`; removing an absent key is fine.
    fn delete(&mut self, key: &[u8]) -> Result<(), StateError>;

    /// Removes every key in `from..to`.
    fn delete_range(&mut self, from: &[u8], to: &[u8]) -> Result<(), StateError>;

    /// Visits the entries whose key starts with `prefix`, in key order, until `visit`
    /// returns false.
    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError>;

    /// Writes a consistent snapshot of the state as files into `dir`, which must not exist.
    /// The snapshot appears atomically: if `dir` exists afterwards, it is complete.
    fn checkpoint(&mut self, dir: &Path) -> Result<(), StateError>;
}

/// Builds a live directory from a checkpoint directory: SSTs are hard-linked (they are
/// immutable), everything else is copied because the backend may rewrite it.
pub fn live_dir_from_checkpoint(checkpoint: &Path, live: &Path) -> Result<(), StateError> {
    if live.exists() {
        std::fs::remove_dir_all(live).map_err(StateError::io(live))?;
    }
    std::fs::create_dir_all(live).map_err(StateError::io(live))?;
    for entry in std::fs::read_dir(checkpoint).map_err(StateError::io(checkpoint))? {
        let entry = entry.map_err(StateError::io(checkpoint))?;
        let from = entry.path();
        let to = live.join(entry.file_name());
        let is_sst = from.extension().is_some_and(|e| e == "sst");
        if !(is_sst && std::fs::hard_link(&from, &to).is_ok()) {
            std::fs::copy(&from, &to).map_err(StateError::io(&from))?;
        }
    }
    Ok(())
}

/// The same behaviour, asserted for every backend.
#[cfg(test)]
#[macro_export]
macro_rules! state_backend_suite {
    ($backend:ty) => {
        use $crate::state::{StateBackend, live_dir_from_checkpoint};

        fn open(dir: &std::path::Path) -> $backend {
            <$backend as StateBackend>::open(dir).unwrap()
        }

        fn entries(state: &$backend, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut out = Vec::new();
            state
                .scan_prefix(prefix, &mut |k, v| {
                    out.push((k.to_vec(), v.to_vec()));
                    true
                })
                .unwrap();
            out
        }

        #[test]
        fn a_new_state_is_empty() {
            let dir = tempfile::tempdir().unwrap();
            let state = open(&dir.path().join("live"));
            assert_eq!(state.get(b"k").unwrap(), None);
            assert!(entries(&state, b"").is_empty());
        }

        #[test]
        fn put_overwrites_and_delete_removes() {
            let dir = tempfile::tempdir().unwrap();
            let mut state = open(&dir.path().join("live"));
            state.put(b"k", b"1").unwrap();
            state.put(b"k", b"2").unwrap();
            assert_eq!(state.get(b"k").unwrap().as_deref(), Some(&b"2"[..]));
            state.delete(b"k").unwrap();
            state.delete(b"never-there").unwrap();
            assert_eq!(state.get(b"k").unwrap(), None);
        }

        #[test]
        fn a_prefix_scan_visits_only_its_keys_in_order_and_can_stop() {
            let dir = tempfile::tempdir().unwrap();
            let mut state = open(&dir.path().join("live"));
            for key in [&b"b/2"[..], b"a/1", b"b/1", b"b/10", b"c", b"b"] {
                state.put(key, key).unwrap();
            }
            let keys: Vec<Vec<u8>> = entries(&state, b"b/").into_iter().map(|(k, _)| k).collect();
            assert_eq!(
                keys,
                vec![b"b/1".to_vec(), b"b/10".to_vec(), b"b/2".to_vec()]
            );
            let mut seen = 0;
            state
                .scan_prefix(b"", &mut |_, _| {
                    seen += 1;
                    seen < 2
                })
                .unwrap();
            assert_eq!(seen, 2);
        }

        #[test]
        fn a_checkpoint_restores_exactly_the_state_at_that_moment() {
            let dir = tempfile::tempdir().unwrap();
            let mut state = open(&dir.path().join("live"));
            for i in 0..1000u32 {
                state
                    .put(&i.to_be_bytes(), format!("v{i}").as_bytes())
                    .unwrap();
            }
            state.delete(&7u32.to_be_bytes()).unwrap();
            let checkpoint = dir.path().join("checkpoints/1");
            std::fs::create_dir_all(checkpoint.parent().unwrap()).unwrap();
            state.checkpoint(&checkpoint).unwrap();
            // Changes after the checkpoint are not in it.
            state.put(&7u32.to_be_bytes(), b"late").unwrap();
            state.delete(&8u32.to_be_bytes()).unwrap();
            let expected_live = entries(&state, b"");
            drop(state);

            let restored_dir = dir.path().join("restored");
            live_dir_from_checkpoint(&checkpoint, &restored_dir).unwrap();
            let restored = open(&restored_dir);
            let got = entries(&restored, b"");
            assert_eq!(got.len(), 999);
            assert_eq!(restored.get(&7u32.to_be_bytes()).unwrap(), None);
            assert_eq!(
                restored.get(&8u32.to_be_bytes()).unwrap().as_deref(),
                Some(&b"v8"[..])
            );
            assert_ne!(got, expected_live);
        }

        #[test]
        fn a_restored_state_keeps_working_and_checkpoints_again() {
            let dir = tempfile::tempdir().unwrap();
            let mut state = open(&dir.path().join("live"));
            state.put(b"a", b"1").unwrap();
            state.checkpoint(&dir.path().join("c1")).unwrap();
            drop(state);
            live_dir_from_checkpoint(&dir.path().join("c1"), &dir.path().join("live2")).unwrap();
            let mut state = open(&dir.path().join("live2"));
            state.put(b"b", b"2").unwrap();
            state.checkpoint(&dir.path().join("c2")).unwrap();
            drop(state);
            // The first checkpoint is untouched by what the restored state did.
            live_dir_from_checkpoint(&dir.path().join("c1"), &dir.path().join("live3")).unwrap();
            assert_eq!(entries(&open(&dir.path().join("live3")), b"").len(), 1);
            live_dir_from_checkpoint(&dir.path().join("c2"), &dir.path().join("live4")).unwrap();
            assert_eq!(entries(&open(&dir.path().join("live4")), b"").len(), 2);
        }

        #[test]
        fn a_checkpoint_into_an_existing_directory_is_refused() {
            let dir = tempfile::tempdir().unwrap();
            let mut state = open(&dir.path().join("live"));
            std::fs::create_dir_all(dir.path().join("taken")).unwrap();
            assert!(state.checkpoint(&dir.path().join("taken")).is_err());
        }
    };
}
