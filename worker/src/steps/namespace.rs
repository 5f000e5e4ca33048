//! A stateful step's part of the task's state, its event-time timers, and the table that gives
//! each step's name its id. Pure.
//!
//! Every key a step writes starts with its id (one byte), so steps never see each other's
//! entries and a step's entries are one contiguous range: `[id, row key]` for materialize's
//! rows, `[id, DATA, start, key]` for a window's accumulator or a dedupe entry,
//! `[id, SESSIONS, key]` for a group's sessions, `[id, TIMERS, at, kind, start, key]` for
//! timers, in firing order. `0xff` is the pipeline's own (the clock, the names).
//!
//! Ids belong to names, `[0xff, 'n', name] → [id]`, so a step keeps its state when steps are
//! inserted or removed before it. A state without that table, a new task's or a checkpoint
//! written before steps had names (whose keys start with the step's position, and which
//! restore has checked was written by the same steps), gives every step its position as id:
//! the layout it already has, so nothing is rewritten. A name new to a table gets the smallest
//! id no name holds. The layout is main's, so a checkpoint read back by an older worker still
//! has its keys where that worker looks.

use std::collections::BTreeMap;

use crate::state::{StateBackend, StateError};

/// A step's entries: `[id, DATA, start, key]`.
pub const DATA: u8 = 0;
/// A step's timers: `[id, TIMERS, at, kind, start, key]`.
pub const TIMERS: u8 = 1;
/// Session windows of a group: `[id, SESSIONS, key]`.
pub const SESSIONS: u8 = 2;
/// Timer kinds, in the order they fire at the same time: emit a window's result.
pub const FIRE: u8 = 0;
/// Drop the state whose time is up.
pub const PURGE: u8 = 1;

/// Where the names' ids are kept.
const NAMES: [u8; 2] = [crate::keys::PIPELINE, b'n'];
/// Due timers taken per scan.
const TIMER_BATCH: usize = 1024;

/// Event time as an order-preserving big-endian key part.
pub fn time_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`time_key`].
pub fn time_from_key(bytes: &[u8]) -> Option<i64> {
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
}

/// A timer read back: (at, kind, start, key).
pub fn parse_timer(key: &[u8]) -> Option<(i64, u8, i64, &[u8])> {
    let rest = key.get(2..)?;
    let at = time_from_key(rest)?;
    let kind = *rest.get(8)?;
    let start = time_from_key(rest.get(9..)?)?;
    Some((at, kind, start, rest.get(17..)?))
}

/// One stateful step's part of the state.
#[derive(Clone, Debug)]
pub struct Namespace {
    id: u8,
    /// The earliest timer, when known.
    next_timer: Option<i64>,
}

impl Namespace {
    /// The namespace of the step at `position`, until [`assign`] says otherwise.
    pub fn new(position: usize) -> Self {
        Self {
            id: u8::try_from(position).unwrap_or(u8::MAX - 1),
            next_timer: None,
        }
    }

    /// Its id: the first byte of every key.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Restored: its id, and timers to be read again.
    pub fn restored(&mut self, id: u8) {
        self.id = id;
        self.next_timer = None;
    }

    /// `[id, key]`.
    pub fn row_key(&self, out: &mut Vec<u8>, key: &[u8]) {
        out.clear();
        out.push(self.id);
        out.extend_from_slice(key);
    }

    /// `[id, DATA, start, key]`: a window's accumulator (`start` 0 when unwindowed), or a
    /// dedupe entry.
    pub fn data_key(&self, out: &mut Vec<u8>, start: i64, key: &[u8]) {
        out.clear();
        out.extend_from_slice(&[self.id, DATA]);
        out.extend_from_slice(&time_key(start));
        out.extend_from_slice(key);
    }

    /// `[id, SESSIONS, key]`.
    pub fn sessions_key(&self, out: &mut Vec<u8>, key: &[u8]) {
        out.clear();
        out.extend_from_slice(&[self.id, SESSIONS]);
        out.extend_from_slice(key);
    }

    fn timer_key(&self, out: &mut Vec<u8>, at: i64, kind: u8, start: i64, key: &[u8]) {
        out.clear();
        out.extend_from_slice(&[self.id, TIMERS]);
        out.extend_from_slice(&time_key(at));
        out.push(kind);
        out.extend_from_slice(&time_key(start));
        out.extend_from_slice(key);
    }

    /// Sets an event-time timer; `buf` is scratch.
    pub fn set_timer<S: StateBackend>(
        &mut self,
        state: &mut S,
        buf: &mut Vec<u8>,
        (at, kind, start): (i64, u8, i64),
        key: &[u8],
    ) -> Result<(), StateError> {
        self.timer_key(buf, at, kind, start, key);
        state.put(buf, &[])?;
        if let Some(next) = &mut self.next_timer {
            *next = (*next).min(at);
        }
        Ok(())
    }

    /// Removes a timer.
    pub fn delete_timer<S: StateBackend>(
        &self,
        state: &mut S,
        buf: &mut Vec<u8>,
        (at, kind, start): (i64, u8, i64),
        key: &[u8],
    ) -> Result<(), StateError> {
        self.timer_key(buf, at, kind, start, key);
        state.delete(buf)
    }

    /// Takes up to a batch of the timers due at `watermark` out of the state into `due`, in
    /// firing order; empty when none is due.
    pub fn take_due<S: StateBackend>(
        &mut self,
        state: &mut S,
        watermark: i64,
        due: &mut Vec<Vec<u8>>,
    ) -> Result<(), StateError> {
        due.clear();
        let prefix = [self.id, TIMERS];
        let next = match self.next_timer {
            Some(next) => next,
            None => {
                let mut first = i64::MAX;
                state.scan_prefix(&prefix, &mut |k, _| {
                    if let Some((at, ..)) = parse_timer(k) {
                        first = at;
                    }
                    false
                })?;
                first
            }
        };
        self.next_timer = Some(next);
        if next > watermark {
            return Ok(());
        }
        let mut after = i64::MAX;
        state.scan_prefix(&prefix, &mut |k, _| match parse_timer(k) {
            Some((at, ..)) if at <= watermark => {
                due.push(k.to_vec());
                due.len() < TIMER_BATCH
            }
            Some((at, ..)) => {
                after = at;
                false
            }
            None => true,
        })?;
        for timer in due.iter() {
            state.delete(timer)?;
        }
        // A full batch may have left due timers behind: read the first again next time.
        self.next_timer = (due.len() < TIMER_BATCH).then_some(after);
        Ok(())
    }
}

/// The ids of the stateful steps `steps` (position, name), from the state's table; names new
/// to it are added (see the module's doc).
pub fn assign<S: StateBackend>(
    state: &mut S,
    steps: &[(usize, &str)],
) -> Result<Vec<u8>, StateError> {
    let mut table = BTreeMap::new();
    state.scan_prefix(&NAMES, &mut |k, v| {
        if let (Ok(name), [id]) = (std::str::from_utf8(&k[NAMES.len()..]), v) {
            table.insert(name.to_string(), *id);
        }
        true
    })?;
    let fresh = table.is_empty();
    let mut ids = Vec::with_capacity(steps.len());
    for (position, name) in steps {
        let id = match table.get(*name) {
            Some(id) => *id,
            None => {
                let taken: Vec<u8> = table.values().copied().collect();
                let id = if fresh {
                    Namespace::new(*position).id
                } else {
                    (0..0xff).find(|id| !taken.contains(id)).unwrap_or(0xfe)
                };
                let mut key = NAMES.to_vec();
                key.extend_from_slice(name.as_bytes());
                state.put(&key, &[id])?;
                table.insert(name.to_string(), id);
                id
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

/// The id of `name` in the state's table, if it has one.
fn id_of<S: StateBackend>(state: &S, name: &str) -> Result<Option<u8>, StateError> {
    let mut key = NAMES.to_vec();
    key.extend_from_slice(name.as_bytes());
    Ok(match state.get(&key)?.as_deref() {
        Some([id]) => Some(*id),
        _ => None,
    })
}

/// Deletes every entry and timer of step `name` (a `reset`: it starts empty and keeps its id);
/// with `forget`, its name too, which frees its id (a `drop`).
pub fn clear<S: StateBackend>(state: &mut S, name: &str, forget: bool) -> Result<(), StateError> {
    let Some(id) = id_of(state, name)? else {
        return Ok(());
    };
    state.delete_range(&[id], &[id + 1])?;
    if forget {
        let mut key = NAMES.to_vec();
        key.extend_from_slice(name.as_bytes());
        state.delete(&key)?;
    }
    Ok(())
}

/// Deletes every step's entries and timers and the names table (a reset of a state written
/// before signatures, whose entries cannot be told apart). The pipeline's other keys (the
/// clock) stay.
pub fn clear_all<S: StateBackend>(state: &mut S) -> Result<(), StateError> {
    state.delete_range(&[0], &[crate::keys::PIPELINE])?;
    state.delete_range(&NAMES, &[NAMES[0], NAMES[1] + 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryState;

    #[test]
    fn a_cleared_step_loses_its_entries_only_and_a_forgotten_one_its_id() {
        let (_dir, mut state) = memory();
        assert_eq!(assign(&mut state, &[(0, "a"), (1, "b")]).unwrap(), [0, 1]);
        let mut buf = Vec::new();
        for id in [0, 1] {
            let ns = Namespace::new(id);
            ns.row_key(&mut buf, b"k");
            state.put(&buf, b"v").unwrap();
            let mut ns = ns;
            ns.set_timer(&mut state, &mut buf, (5, FIRE, 0), b"k")
                .unwrap();
        }
        state.put(&[crate::keys::PIPELINE, b'c'], b"clock").unwrap();
        let entries = |state: &MemoryState, id: u8| {
            let mut n = 0;
            state
                .scan_prefix(&[id], &mut |_, _| {
                    n += 1;
                    true
                })
                .unwrap();
            n
        };
        assert_eq!((entries(&state, 0), entries(&state, 1)), (2, 2));
        clear(&mut state, "a", false).unwrap();
        assert_eq!((entries(&state, 0), entries(&state, 1)), (0, 2));
        assert_eq!(assign(&mut state, &[(0, "a"), (1, "b")]).unwrap(), [0, 1]);
        clear(&mut state, "a", true).unwrap();
        assert_eq!(
            assign(&mut state, &[(1, "b"), (2, "c")]).unwrap(),
            [1, 0],
            "a's id is free"
        );
        clear(&mut state, "absent", true).unwrap();
        clear_all(&mut state).unwrap();
        assert_eq!((entries(&state, 0), entries(&state, 1)), (0, 0));
        assert_eq!(
            state
                .get(&[crate::keys::PIPELINE, b'c'])
                .unwrap()
                .as_deref(),
            Some(&b"clock"[..])
        );
        assert_eq!(
            assign(&mut state, &[(3, "c"), (4, "b")]).unwrap(),
            [3, 4],
            "no table: positions again"
        );
    }

    fn memory() -> (tempfile::TempDir, MemoryState) {
        let dir = tempfile::tempdir().unwrap();
        let state = <MemoryState as StateBackend>::open(dir.path()).unwrap();
        (dir, state)
    }

    #[test]
    fn timer_keys_sort_by_time_then_kind_and_come_due_in_order() {
        let (_dir, mut state) = memory();
        let mut ns = Namespace::new(2);
        let mut buf = Vec::new();
        for (at, kind) in [(5, PURGE), (-3, FIRE), (5, FIRE), (1_700_000_000_000, FIRE)] {
            ns.set_timer(&mut state, &mut buf, (at, kind, at - 10), b"g")
                .unwrap();
        }
        let mut due = Vec::new();
        ns.take_due(&mut state, 5, &mut due).unwrap();
        let order: Vec<(i64, u8)> = due
            .iter()
            .map(|k| {
                let (at, kind, start, key) = parse_timer(k).unwrap();
                assert_eq!((start, key, k[0]), (at - 10, &b"g"[..], 2));
                (at, kind)
            })
            .collect();
        assert_eq!(order, vec![(-3, FIRE), (5, FIRE), (5, PURGE)]);
        ns.take_due(&mut state, 5, &mut due).unwrap();
        assert!(due.is_empty(), "taken timers are gone");
        ns.take_due(&mut state, i64::MAX, &mut due).unwrap();
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn names_keep_their_ids_and_a_state_without_names_keeps_its_positions() {
        let (_dir, mut state) = memory();
        // A task's first start, or a checkpoint written before steps had names: positions.
        assert_eq!(
            assign(&mut state, &[(1, "counts"), (3, "once")]).unwrap(),
            [1, 3]
        );
        // An edit that inserts a step before them: each keeps its id; a new one gets a free id.
        assert_eq!(
            assign(&mut state, &[(2, "counts"), (3, "first"), (4, "once")]).unwrap(),
            [1, 0, 3]
        );
        assert_eq!(
            assign(&mut state, &[(0, "first"), (1, "second")]).unwrap(),
            [0, 2]
        );
    }
}
