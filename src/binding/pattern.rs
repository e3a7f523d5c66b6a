//! Patterns and keys as segment lists: the separator, the validation rules and the split.

use smallvec::SmallVec;

/// The longest pattern accepted, in bytes: AMQP's `shortstr` limit for a binding key.
pub const MAX_PATTERN_BYTES: usize = 255;

/// The most segments a pattern may have. Bounds the walk on insert and remove.
pub const MAX_SEGMENTS: usize = 32;

/// What splits a pattern or key into segments; chosen per dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Separator {
    /// `.`: AMQP topic keys and Kazoo bindings.
    Dot,
    /// `:`: VoIPBin topics (`customer_id:<id>:call`).
    Colon,
}

impl Separator {
    pub const fn byte(self) -> u8 {
        match self {
            Separator::Dot => b'.',
            Separator::Colon => b':',
        }
    }
}

/// Why a pattern was refused. The messages are shown to clients as they are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("binding is empty")]
    Empty,
    #[error("binding is {len} bytes long, the limit is {MAX_PATTERN_BYTES}")]
    TooLong { len: usize },
    #[error("binding has {count} segments, the limit is {MAX_SEGMENTS}")]
    TooManySegments { count: usize },
}

/// One segment of a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    /// `*`: exactly one key segment.
    Star,
    /// `#`: zero or more key segments.
    Hash,
    /// Anything else, compared byte for byte.
    Literal(&'a [u8]),
}

/// A validated pattern, split but not copied.
pub(crate) type Segments<'a> = SmallVec<[Segment<'a>; 8]>;

/// Splits and validates a pattern.
pub(crate) fn parse_pattern(pattern: &str, sep: Separator) -> Result<Segments<'_>, BindingError> {
    if pattern.is_empty() {
        return Err(BindingError::Empty);
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(BindingError::TooLong { len: pattern.len() });
    }
    let mut segments = Segments::new();
    for raw in pattern.as_bytes().split(|b| *b == sep.byte()) {
        if segments.len() == MAX_SEGMENTS {
            let count = pattern.bytes().filter(|b| *b == sep.byte()).count() + 1;
            return Err(BindingError::TooManySegments { count });
        }
        segments.push(match raw {
            b"*" => Segment::Star,
            b"#" => Segment::Hash,
            literal => Segment::Literal(literal),
        });
    }
    Ok(segments)
}

/// Splits a routing key into segments, as RabbitMQ does: the empty key has none, every other key
/// has one more segment than it has separators (so `a.` is `["a", ""]`). Hot path: separators are
/// found eight bytes at a time (see [`find_byte`]).
pub fn split_key(key: &[u8], sep: Separator) -> KeySegments<'_> {
    KeySegments {
        rest: (!key.is_empty()).then_some(key),
        sep: sep.byte(),
    }
}

/// Iterator over the segments of a key; see [`split_key`].
pub struct KeySegments<'a> {
    /// What is left to split; `None` once the last segment has been yielded.
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> Iterator for KeySegments<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match find_byte(rest, self.sep) {
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Position of the first `needle` in `haystack`, eight bytes per step (SWAR): `word ^ pattern` has a
/// zero byte where `needle` is, and `(x - 0x01..) & !x & 0x80..` flags zero bytes. Flags can be
/// wrong only in bytes above a real zero byte, so the lowest flag is always right. Routing-key
/// segments are short, where this inlined loop beats a call into a SIMD `memchr`.
#[inline]
fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut words = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in words.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        let flags = x.wrapping_sub(LO) & !x & HI;
        if flags != 0 {
            return Some(offset + (flags.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    let tail = words.remainder();
    tail.iter().position(|b| *b == needle).map(|at| offset + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_whole_segments_only() {
        let segs = parse_pattern("a.*.#.ab*.#x.", Separator::Dot).unwrap();
        assert_eq!(
            segs.as_slice(),
            &[
                Segment::Literal(b"a"),
                Segment::Star,
                Segment::Hash,
                Segment::Literal(b"ab*"),
                Segment::Literal(b"#x"),
                Segment::Literal(b""),
            ]
        );
    }

    #[test]
    fn separator_is_per_dialect() {
        let segs = parse_pattern("customer_id:c1:call", Separator::Colon).unwrap();
        assert_eq!(segs.len(), 3);
        let segs = parse_pattern("customer_id:c1.x:call", Separator::Dot).unwrap();
        assert_eq!(segs.len(), 2);
    }

    #[test]
    fn validation_errors() {
        assert_eq!(parse_pattern("", Separator::Dot), Err(BindingError::Empty));
        let long = "a".repeat(256);
        assert_eq!(
            parse_pattern(&long, Separator::Dot),
            Err(BindingError::TooLong { len: 256 })
        );
        assert!(parse_pattern(&"a".repeat(255), Separator::Dot).is_ok());
        let many = vec!["x"; 33].join(".");
        assert_eq!(
            parse_pattern(&many, Separator::Dot),
            Err(BindingError::TooManySegments { count: 33 })
        );
        assert!(parse_pattern(&vec!["x"; 32].join("."), Separator::Dot).is_ok());
        assert_eq!(
            BindingError::TooManySegments { count: 33 }.to_string(),
            "binding has 33 segments, the limit is 32"
        );
    }

    #[test]
    fn find_byte_agrees_with_a_plain_scan() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
        for start in 0..40 {
            for len in 0..40 {
                let hay = &bytes[start..start + len];
                for needle in [
                    0u8,
                    1,
                    37,
                    46,
                    58,
                    0x80,
                    0xff,
                    hay.first().copied().unwrap_or(9),
                ] {
                    assert_eq!(
                        find_byte(hay, needle),
                        hay.iter().position(|b| *b == needle),
                        "{hay:?} {needle}"
                    );
                }
            }
        }
        // A needle byte right after a byte that borrows in the subtraction.
        assert_eq!(find_byte(b"\x01\x00.aaaaaaa.", b'.'), Some(2));
        assert_eq!(find_byte(b"..aaaaaaaaa", b'.'), Some(0));
    }

    #[test]
    fn key_split_follows_rabbitmq() {
        fn split(k: &str) -> Vec<&[u8]> {
            split_key(k.as_bytes(), Separator::Dot).collect()
        }
        assert!(split("").is_empty());
        assert_eq!(split("a"), vec![&b"a"[..]]);
        assert_eq!(split("a."), vec![&b"a"[..], &b""[..]]);
        assert_eq!(split("."), vec![&b""[..], &b""[..]]);
        assert_eq!(split("a..b"), vec![&b"a"[..], &b""[..], &b"b"[..]]);
    }
}
