//! RocksDB state backend: one instance per task, WAL off (checkpoints are the durability
//! boundary), checkpoints as hard-linked RocksDB checkpoints. File I/O in its directory.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{DB, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use super::{StateBackend, StateError};

/// Keyed state in a RocksDB instance.
pub struct RocksState {
    db: DB,
    path: PathBuf,
    write: WriteOptions,
    /// Writes not applied yet: applied [`BATCH`] at a time, which saves RocksDB's per-write
    /// overhead, and before every read and checkpoint, so reads see every write.
    pending: RefCell<WriteBatch>,
}

/// Writes collected before they are applied together.
const BATCH: usize = 256;

impl RocksState {
    /// Applies the pending writes.
    fn apply(&self) -> Result<(), StateError> {
        let batch = std::mem::take(&mut *self.pending.borrow_mut());
        if batch.is_empty() {
            return Ok(());
        }
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| self.error(e))
    }

    fn error(&self, e: rocksdb::Error) -> StateError {
        StateError::Rocks {
            path: self.path.clone(),
            message: e.into_string(),
        }
    }
}

impl StateBackend for RocksState {
    fn open(dir: &Path) -> Result<Self, StateError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(DBCompressionType::Lz4);
        // Roll the MANIFEST often so each checkpoint uploads a small one.
        options.set_max_manifest_file_size(4 << 20);
        options.set_keep_log_file_num(2);
        // One writer per instance (the task's thread): skip the concurrent-writer machinery.
        options.set_allow_concurrent_memtable_write(false);
        options.set_enable_write_thread_adaptive_yield(false);
        let db = DB::open(&options, dir).map_err(|e| StateError::Rocks {
            path: dir.to_path_buf(),
            message: e.into_string(),
        })?;
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        Ok(Self {
            db,
            path: dir.to_path_buf(),
            write,
            pending: RefCell::default(),
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.apply()?;
        self.db.get(key).map_err(|e| self.error(e))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let pending = self.pending.get_mut();
        pending.put(key, value);
        if pending.len() >= BATCH {
            self.apply()?;
        }
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StateError> {
        let pending = self.pending.get_mut();
        pending.delete(key);
        if pending.len() >= BATCH {
            self.apply()?;
        }
        Ok(())
    }

    fn delete_range(&mut self, from: &[u8], to: &[u8]) -> Result<(), StateError> {
        self.pending.get_mut().delete_range(from, to);
        self.apply()
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.apply()?;
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.error(e))?;
            if !k.starts_with(prefix) || !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self, dir: &Path) -> Result<(), StateError> {
        self.apply()?;
        // With the WAL off, RocksDB flushes the memtables into SSTs before linking them.
        let checkpoint = Checkpoint::new(&self.db).map_err(|e| self.error(e))?;
        checkpoint.create_checkpoint(dir).map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    crate::state_backend_suite!(super::RocksState);

    #[test]
    fn checkpoints_share_unchanged_ssts_with_the_live_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(&dir.path().join("live"));
        for i in 0..10_000u32 {
            state.put(&i.to_be_bytes(), &[7; 100]).unwrap();
        }
        state.checkpoint(&dir.path().join("c1")).unwrap();
        let ssts = |d: &std::path::Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".sst"))
                .collect();
            v.sort();
            v
        };
        let first = ssts(&dir.path().join("c1"));
        assert!(!first.is_empty(), "the memtable was flushed into an SST");
        state.put(b"one-more", b"x").unwrap();
        state.checkpoint(&dir.path().join("c2")).unwrap();
        let second = ssts(&dir.path().join("c2"));
        assert!(
            first.iter().all(|f| second.contains(f)),
            "{first:?} ⊄ {second:?}"
        );
        assert!(second.len() > first.len());
    }
}
