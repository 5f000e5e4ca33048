//! In-memory state backend: a sorted map, checkpointed as one file. For tests and for
//! measuring the engine without RocksDB. File I/O only at open and checkpoint.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use super::{StateBackend, StateError};

const FILE: &str = "state.bin";

/// Keyed state held in a `BTreeMap`.
#[derive(Debug, Default)]
pub struct MemoryState {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl StateBackend for MemoryState {
    fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(StateError::io(dir))?;
        let path = dir.join(FILE);
        let mut state = Self::default();
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(StateError::io(&path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(StateError::io(&path)(e)),
        };
        let mut rest = &bytes[..];
        let corrupt = |message: &str| StateError::Corrupt {
            path: path.clone(),
            message: message.into(),
        };
        let take = |rest: &mut &[u8]| -> Result<Vec<u8>, StateError> {
            let (len, tail) = rest
                .split_at_checked(4)
                .ok_or_else(|| corrupt("truncated length"))?;
            let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupt("length"))?) as usize;
            let (item, tail) = tail
                .split_at_checked(len)
                .ok_or_else(|| corrupt("truncated entry"))?;
            *rest = tail;
            Ok(item.to_vec())
        };
        while !rest.is_empty() {
            let key = take(&mut rest)?;
            let value = take(&mut rest)?;
            state.entries.insert(key, value);
        }
        Ok(state)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.entries.get(key).cloned())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.entries.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StateError> {
        self.entries.remove(key);
        Ok(())
    }

    fn delete_range(&mut self, from: &[u8], to: &[u8]) -> Result<(), StateError> {
        let doomed: Vec<Vec<u8>> = (self.entries.range(from.to_vec()..to.to_vec()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            self.entries.remove(&key);
        }
        Ok(())
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        for (k, v) in self.entries.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) || !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self, dir: &Path) -> Result<(), StateError> {
        if dir.exists() {
            return Err(StateError::io(dir)(
                std::io::ErrorKind::AlreadyExists.into(),
            ));
        }
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(StateError::io(&tmp))?;
        let path = tmp.join(FILE);
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&path).map_err(StateError::io(&path))?);
        for (k, v) in &self.entries {
            for item in [k, v] {
                let len = u32::try_from(item.len()).map_err(|_| StateError::Corrupt {
                    path: path.clone(),
                    message: "entry over 4 GiB".into(),
                })?;
                out.write_all(&len.to_le_bytes())
                    .map_err(StateError::io(&path))?;
                out.write_all(item).map_err(StateError::io(&path))?;
            }
        }
        out.into_inner()
            .map_err(|e| StateError::io(&path)(e.into_error()))?
            .sync_all()
            .map_err(StateError::io(&path))?;
        std::fs::rename(&tmp, dir).map_err(StateError::io(dir))
    }
}

#[cfg(test)]
mod tests {
    crate::state_backend_suite!(super::MemoryState);
}
