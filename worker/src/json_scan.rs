//! A validating JSON scanner. It checks a whole document against RFC 8259 and hands back the
//! raw text of some members of its top-level object, without building any value.
//!
//! Debezium envelopes are decoded with it ([`crate::decode::debezium`]): an event is a few
//! hundred bytes of which only `op` is read, while `before`, `after` and `source` are kept as
//! raw text. Through serde, finding those members cost about 0.9 µs per CDC-benchmark event,
//! most of a task's time besides RocksDB; this scanner does the same work in a fraction of it.
//! Strings are searched eight bytes at a time for the three bytes that end a run of plain
//! characters (`"`, `\`, and control characters, which JSON does not allow unescaped). The
//! small steps are `#[inline]`: without the hints the compiler kept them as calls, which cost
//! about as much as the scanning (measured: 720 against 410 ns per CDC-benchmark event, with
//! the member names compared by length first).
//!
//! It accepts the documents `serde_json` accepts, but for one limit: arrays and objects may nest
//! 128 deep, the limit `serde_json` applies when it builds values (when it only skips them it
//! has none), so that a hostile record cannot exhaust a task's stack. Like `serde_json` skipping
//! a string, it checks that `\u` escapes are four hex digits, not that surrogates pair up. The
//! caller checks UTF-8 first: [`members`] takes a `&str`.

use std::borrow::Cow;
use std::fmt;

/// How deep arrays and objects may nest: `serde_json`'s recursion limit when it builds values.
const MAX_DEPTH: usize = 128;

/// Why a document is not JSON: what was wrong and at which byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// The offset of the byte where the document stopped being JSON.
    pub at: usize,
    /// What was expected or found there.
    pub what: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// A valid JSON document, as far as [`members`] looked into it.
#[derive(Debug, PartialEq, Eq)]
pub enum Document<'a, const N: usize> {
    /// An object: the raw text of each wanted member (in the order the names were given),
    /// and the first wanted name that occurs more than once, if any.
    Object {
        /// Raw member values, `None` where the member is absent.
        members: [Option<&'a str>; N],
        /// A wanted member name the object holds twice.
        duplicate: Option<&'static str>,
    },
    /// Not an object: an array, string, number, `true`, `false` or `null`.
    Other(&'static str),
}

/// Validates `text` as one JSON document and, when it is an object, returns the raw text of
/// its members named in `names` (surrounding whitespace excluded).
pub fn members<'a, const N: usize>(
    text: &'a str,
    names: [&'static str; N],
) -> Result<Document<'a, N>, SyntaxError> {
    let mut s = Scanner {
        bytes: text.as_bytes(),
        pos: 0,
    };
    s.skip_whitespace();
    if s.peek() != Some(b'{') {
        let kind = match s.peek() {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        };
        s.value(0)?;
        s.end()?;
        return Ok(Document::Other(kind));
    }
    let mut found = [None; N];
    let mut duplicate = None;
    s.pos += 1;
    s.skip_whitespace();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            s.skip_whitespace();
            if s.peek() != Some(b'"') {
                return Err(s.error("expected a member name"));
            }
            let start = s.pos;
            let escaped = s.string()?;
            let name = &text[start..s.pos];
            s.colon()?;
            let start = s.pos;
            s.value(1)?;
            let raw = &text[start..s.pos];
            let name = if escaped {
                unescape(name)
            } else {
                Cow::Borrowed(&name[1..name.len() - 1])
            };
            if let Some(i) = names
                .iter()
                .position(|n| n.len() == name.len() && n.as_bytes() == name.as_bytes())
            {
                if found[i].is_some() {
                    duplicate.get_or_insert(names[i]);
                }
                found[i] = Some(raw);
            }
            if s.after_element(b'}')? {
                break;
            }
        }
    }
    s.end()?;
    Ok(Document::Object {
        members: found,
        duplicate,
    })
}

/// The text of a JSON string given with its quotes (already validated).
pub fn unescape(raw: &str) -> Cow<'_, str> {
    if raw.contains('\\') {
        // Rare (Debezium writes neither names nor ops with escapes): let serde_json do it.
        Cow::Owned(serde_json::from_str::<String>(raw).unwrap_or_default())
    } else {
        Cow::Borrowed(&raw[1..raw.len() - 1])
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn error(&self, what: &'static str) -> SyntaxError {
        SyntaxError { at: self.pos, what }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Only whitespace may follow the document.
    fn end(&mut self) -> Result<(), SyntaxError> {
        self.skip_whitespace();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters after the document")),
        }
    }

    #[inline]
    fn colon(&mut self) -> Result<(), SyntaxError> {
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(self.error("expected `:` after a member name"));
        }
        self.pos += 1;
        self.skip_whitespace();
        Ok(())
    }

    /// After an element of an array or object: `,` (false: another follows) or `close` (true).
    #[inline]
    fn after_element(&mut self, close: u8) -> Result<bool, SyntaxError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b) if b == close => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) if close == b'}' => Err(self.error("expected `,` or `}` in an object")),
            Some(_) => Err(self.error("expected `,` or `]` in an array")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    /// Skips one value starting at the current byte; `depth` counts the enclosing containers.
    fn value(&mut self, depth: usize) -> Result<(), SyntaxError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(|_| ()),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("unexpected end of input, expected a value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested deeper than 128 levels"));
        }
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name"));
            }
            self.string()?;
            self.colon()?;
            self.value(depth)?;
            if self.after_element(b'}')? {
                return Ok(());
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested deeper than 128 levels"));
        }
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            self.value(depth)?;
            if self.after_element(b']')? {
                return Ok(());
            }
        }
    }

    /// Skips a string starting at its opening quote; true when it holds an escape.
    #[inline]
    fn string(&mut self) -> Result<bool, SyntaxError> {
        self.pos += 1;
        let mut escaped = false;
        loop {
            self.pos += plain_run(&self.bytes[self.pos..]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return Err(self.error("control character in a string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    #[inline]
    fn escape(&mut self) -> Result<(), SyntaxError> {
        match self.bytes.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 2;
                Ok(())
            }
            Some(b'u') => {
                let hex = self.bytes.get(self.pos + 2..self.pos + 6);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(self.error("invalid \\u escape: expected four hex digits"));
                }
                self.pos += 6;
                Ok(())
            }
            _ => Err(self.error("invalid escape in a string")),
        }
    }

    #[inline]
    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    #[inline]
    fn number(&mut self) -> Result<(), SyntaxError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number: expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number: expected a digit after `.`"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number: expected a digit in the exponent"));
            }
        }
        Ok(())
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Result<(), SyntaxError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }
}

/// The length of the run of bytes at the start of `bytes` that a string holds as they are:
/// up to the first `"`, `\` or control character (or the end).
#[inline]
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    // Eight bytes at a time: `(w - ONES * n) & !w & HIGHS` flags bytes below `n` (zero bytes
    // when n = 1, after xor-ing the byte sought). Flags above the lowest may be spurious, the
    // lowest is exact, which is all this needs.
    while let Some(chunk) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | w.wrapping_sub(ONES * 0x20) & !w)
            & HIGHS;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(b) = bytes.get(i) {
        if matches!(b, b'"' | b'\\' | 0..=0x1f) {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(text: &str) -> bool {
        members(text, []).is_ok()
    }

    #[test]
    fn plain_runs_stop_at_the_first_special_byte_wherever_it_is() {
        for len in 0..40 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut bytes = vec![b'a'; len];
                    // Bytes that trip naive word tricks: high bytes and neighbours of the sought ones.
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = [b'a', 0x80, 0xff, b'!', b'#', b'[', b']', 0x20][i % 8];
                    }
                    if at < len {
                        bytes[at] = special;
                    }
                    assert_eq!(plain_run(&bytes), at, "len {len} special {special} at {at}");
                }
            }
        }
    }

    #[test]
    fn wanted_members_come_back_raw() {
        let text = r#" { "op" : "c", "after": {"id": 1, "s": "a\"b"} , "n":[1, 2.5e-3, true, null], "before" :null } "#;
        assert_eq!(
            members(text, ["op", "after", "before", "source"]),
            Ok(Document::Object {
                members: [
                    Some(r#""c""#),
                    Some(r#"{"id": 1, "s": "a\"b"}"#),
                    Some("null"),
                    None
                ],
                duplicate: None
            })
        );
    }

    #[test]
    fn escaped_names_match_and_duplicates_are_reported() {
        let text = r#"{"o\u0070":"c","op":"d"}"#;
        assert_eq!(
            members(text, ["op"]),
            Ok(Document::Object {
                members: [Some(r#""d""#)],
                duplicate: Some("op")
            })
        );
        assert_eq!(unescape(r#""\u0063""#), "c");
    }

    #[test]
    fn documents_that_are_not_objects_are_named() {
        assert_eq!(members("[1,2]", ["op"]), Ok(Document::Other("an array")));
        assert_eq!(members(" -0.5 ", ["op"]), Ok(Document::Other("a number")));
        assert_eq!(members("null", ["op"]), Ok(Document::Other("null")));
    }

    #[test]
    fn what_is_not_json_is_refused_where_it_goes_wrong() {
        for (text, at) in [
            ("", 0),
            ("{", 1),
            (r#"{"a":1,}"#, 7),
            (r#"{"a" 1}"#, 5),
            (r#"{"a":01}"#, 6),
            (r#"{"a":1.}"#, 7),
            (r#"{"a":1e}"#, 7),
            (r#"{"a":-}"#, 6),
            (r#"{"a":tru}"#, 5),
            (r#"{"a":"x}"#, 8),
            ("{\"a\":\"\t\"}", 6),
            (r#"{"a":"\x"}"#, 6),
            (r#"{"a":"\u12g4"}"#, 6),
            (r#"{"a":[1 2]}"#, 8),
            (r#"{"a":1} x"#, 8),
            (r#"{a:1}"#, 1),
        ] {
            assert_eq!(
                members(text, ["a"]).map(|_| ()).unwrap_err().at,
                at,
                "{text}"
            );
        }
        assert!(valid(&format!("{}1{}", "[".repeat(128), "]".repeat(128))));
        assert!(!valid(&format!("{}1{}", "[".repeat(129), "]".repeat(129))));
    }

    /// The scanner against serde_json, on many small documents made by mutating valid ones:
    /// both accept exactly the same.
    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        let seeds = [
            r#"{"before":{"id":1,"name":"a\"b\\c\u00e9"},"after":null,"op":"d","ts_ms":-12.5e+3}"#,
            r#"[true,false,null,{"a":[],"b":{}},"",0,-0.0,1E9]"#,
            r#"{"schema":{"type":"struct","optional":false},"payload":{"op":"r","after":{"x":[1,2]}}}"#,
        ];
        let alphabet = b"{}[]\":,\\ -+.eE0123456789tfnulrsabu\t\n/";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..200_000 {
            let mut bytes = seeds[next(seeds.len())].as_bytes().to_vec();
            for _ in 0..1 + next(3) {
                let at = next(bytes.len() + 1);
                match next(3) {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 if at < bytes.len() => bytes[at] = alphabet[next(alphabet.len())],
                    _ => bytes.insert(at, alphabet[next(alphabet.len())]),
                }
            }
            let text = std::str::from_utf8(&bytes).expect("the alphabet is ASCII");
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(valid(text), serde, "{text}");
            if serde {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        // Both kinds of document were tried in numbers.
        assert!(
            accepted > 10_000 && refused > 10_000,
            "{accepted} {refused}"
        );
    }
}
