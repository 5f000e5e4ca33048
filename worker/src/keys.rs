//! How step state is keyed in a task's state store, read from outside the chain (tools and
//! tests that look into a task's state). Pure.
//!
//! Every key starts with the id of the step that owns it (one byte, the id of its name; see
//! `steps::namespace`), so steps never see each other's entries and a step's entries are one
//! contiguous, prefix-scannable range. Keys starting with [`PIPELINE`] are the pipeline's own
//! (the clock, the names' ids).

/// The first byte of the pipeline's own keys.
pub const PIPELINE: u8 = 0xff;

/// The step id and the step's own key of a state key; `None` for the pipeline's keys.
pub fn decode(key: &[u8]) -> Option<(u8, &[u8])> {
    key.split_first()
        .filter(|(step, _)| **step != PIPELINE)
        .map(|(step, rest)| (*step, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_step_and_rest_and_the_pipelines_are_not_a_steps() {
        assert_eq!(decode(b"\x03customer-42"), Some((3, &b"customer-42"[..])));
        assert_eq!(decode(b"\x00"), Some((0, &b""[..])));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\xffncounts"), None);
    }
}
