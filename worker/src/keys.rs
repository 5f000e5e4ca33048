//! How step state is keyed in a task's state store. Pure.
//!
//! Every key starts with the index of the step that owns it (one byte), so steps never see
//! each other's entries and a step's entries are one contiguous, prefix-scannable range.

/// Writes the state key of `user_key` in step `step` into `out`, reusing its allocation.
pub fn encode_into(out: &mut Vec<u8>, step: u8, user_key: &[u8]) {
    out.clear();
    out.reserve(1 + user_key.len());
    out.push(step);
    out.extend_from_slice(user_key);
}

/// The step and user key of a state key.
pub fn decode(key: &[u8]) -> Option<(u8, &[u8])> {
    key.split_first().map(|(step, rest)| (*step, rest))
}

/// The prefix all of step `step`'s keys share.
pub fn step_prefix(step: u8) -> [u8; 1] {
    [step]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 3, b"customer-42");
        assert_eq!(decode(&buf), Some((3, &b"customer-42"[..])));
        encode_into(&mut buf, 0, b"");
        assert_eq!(decode(&buf), Some((0, &b""[..])));
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn a_steps_keys_sort_together_under_its_prefix() {
        let mut keys: Vec<Vec<u8>> = [(1u8, &b"b"[..]), (0, b"z"), (1, b"a"), (2, b"a"), (1, b"")]
            .iter()
            .map(|(s, k)| {
                let mut v = Vec::new();
                encode_into(&mut v, *s, k);
                v
            })
            .collect();
        keys.sort();
        let step1: Vec<&[u8]> = keys
            .iter()
            .filter(|k| k.starts_with(&step_prefix(1)))
            .map(|k| decode(k).unwrap().1)
            .collect();
        assert_eq!(step1, vec![&b""[..], b"a", b"b"]);
        let positions: Vec<usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k[0] == 1)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(positions, vec![1, 2, 3], "contiguous");
    }
}
