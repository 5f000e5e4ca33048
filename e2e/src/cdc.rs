//! The CDC benchmark workload: for each key, create → update ×4 → delete (six events), as
//! Debezium JSON keyed by the row key. Pure: [`event`] is a function of (key, step).
//!
//! Keys are interleaved in blocks of [`BLOCK`]: all six steps of a block are emitted before
//! the next block starts, step by step across the block. Per key the order is kept; and
//! wherever a run stops, up to a block of keys are left mid-cycle, so a final state is not
//! simply empty.

/// Keys whose cycles run interleaved.
pub const BLOCK: u64 = 4096;

/// Events per key.
pub const EVENTS_PER_KEY: u64 = 6;

/// The `index`-th event of a run over `keys` keys: (key, step).
pub fn position(index: u64, keys: u64) -> (u64, u64) {
    let block = index / (BLOCK * EVENTS_PER_KEY);
    let start = block * BLOCK;
    let width = BLOCK.min(keys - start);
    let within = index - block * BLOCK * EVENTS_PER_KEY;
    (start + within % width, within / width)
}

/// The Kafka key of row `key`: `{"id":<key>}`, as Debezium writes it.
pub fn key(key: u64) -> String {
    format!(r#"{{"id":{key}}}"#)
}

fn row(key: u64, version: u64) -> String {
    format!(
        r#"{{"id":{key},"name":"customer-{key}","email":"customer-{key}@example.com","balance":{},"version":{version}}}"#,
        (key * 7919 + version * 104_729) % 1_000_000
    )
}

/// The row after step `step` of key `key` (`None` after the delete).
pub fn row_after(key: u64, step: u64) -> Option<String> {
    (step < EVENTS_PER_KEY - 1).then(|| row(key, step))
}

/// The Debezium JSON value of step `step` (0 = create, 1..=4 = update, 5 = delete) of `key`.
pub fn event(key: u64, step: u64) -> String {
    let (op, before, after) = match step {
        0 => ("c", None, Some(row(key, 0))),
        5 => ("d", Some(row(key, 4)), None),
        s => ("u", Some(row(key, s - 1)), Some(row(key, s))),
    };
    format!(
        r#"{{"before":{},"after":{},"source":{{"connector":"sluice-cdc-gen","db":"bench","table":"customers"}},"op":"{op}","ts_ms":{}}}"#,
        before.as_deref().unwrap_or("null"),
        after.as_deref().unwrap_or("null"),
        1_700_000_000_000 + key * EVENTS_PER_KEY + step
    )
}

/// A create event of row `key` whose row carries `pad` bytes of incompressible filler, for
/// workloads that need large state (every key created once, none deleted).
pub fn padded_create(key: u64, pad: usize) -> String {
    let mut filler = String::with_capacity(pad);
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while filler.len() < pad {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        filler.push_str(&format!("{x:016x}"));
    }
    filler.truncate(pad);
    format!(
        r#"{{"before":null,"after":{{"id":{key},"pad":"{filler}"}},"source":{{"connector":"sluice-cdc-gen","db":"bench","table":"blobs"}},"op":"c","ts_ms":{}}}"#,
        1_700_000_000_000 + key
    )
}

/// The partition of row `key`.
pub fn partition(key: u64, partitions: u32) -> i32 {
    (key % u64::from(partitions)) as i32
}

/// How many of the first `events` events of a run over `keys` keys land in each partition.
pub fn events_per_partition(events: u64, keys: u64, partitions: u32) -> Vec<i64> {
    let mut counts = vec![0i64; partitions as usize];
    for i in 0..events.min(keys * EVENTS_PER_KEY) {
        counts[partition(position(i, keys).0, partitions) as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_gets_its_six_events_in_order() {
        let keys = BLOCK * 2 + 5;
        let mut next_step = vec![0u64; keys as usize];
        for i in 0..keys * EVENTS_PER_KEY {
            let (k, step) = position(i, keys);
            assert_eq!(step, next_step[k as usize], "key {k} at index {i}");
            next_step[k as usize] += 1;
        }
        assert!(next_step.iter().all(|s| *s == EVENTS_PER_KEY));
    }

    #[test]
    fn partition_counts_add_up_to_the_events_written() {
        let counts = events_per_partition(1_000_003, 170_000, 12);
        assert_eq!(counts.iter().sum::<i64>(), 1_000_003);
        assert!(
            counts.iter().all(|c| (83_000..=83_500).contains(c)),
            "{counts:?}"
        );
        assert_eq!(
            events_per_partition(10, 1, 3),
            vec![6, 0, 0],
            "capped at six per key"
        );
    }

    #[test]
    fn events_are_valid_debezium_json() {
        for step in 0..EVENTS_PER_KEY {
            let v: serde_json::Value = serde_json::from_str(&event(42, step)).unwrap();
            let op = v["op"].as_str().unwrap();
            assert_eq!(op, ["c", "u", "u", "u", "u", "d"][step as usize]);
            assert_eq!(v["after"].is_null(), step == 5);
            if step < 5 {
                let row: serde_json::Value =
                    serde_json::from_str(&row_after(42, step).unwrap()).unwrap();
                assert_eq!(v["after"], row);
            }
        }
        assert!(event(906_666, 3).len() < 400);
    }

    #[test]
    fn padded_creates_carry_their_filler_and_differ_per_key() {
        let a: serde_json::Value = serde_json::from_str(&padded_create(7, 1000)).unwrap();
        let b: serde_json::Value = serde_json::from_str(&padded_create(8, 1000)).unwrap();
        assert_eq!(a["op"], "c");
        assert_eq!(a["after"]["pad"].as_str().unwrap().len(), 1000);
        assert_ne!(a["after"]["pad"], b["after"]["pad"]);
    }
}
