//! Small JSON helpers shared by the dialects and the ingest side: string escaping for frames we
//! write by hand, and a non-recursive view of simd-json tapes.
//!
//! Everything parsed from the network goes through a simd-json *tape* (a flat vector of nodes),
//! never a recursive DOM: a message of 64 KiB of `[` would otherwise recurse 64k frames deep.

use simd_json::{Node, StaticNode};

/// Whether a byte must be escaped inside a JSON string.
#[inline]
pub fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends the escape sequence of one byte for which [`needs_escape`] holds.
pub fn escape_byte(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        _ => {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        }
    }
}

/// Appends `s` to `out` as a JSON string literal (with quotes). Hot path (event payloads): runs
/// of plain bytes are copied whole.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(at) = rest.iter().position(|&b| needs_escape(b)) {
        out.extend_from_slice(&rest[..at]);
        escape_byte(out, rest[at]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// Appends `items` as a JSON array of strings.
pub fn write_str_array<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a str>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, item);
    }
    out.push(b']');
}

/// Appends a JSON scalar (number, bool, null).
pub fn write_static(out: &mut Vec<u8>, node: &StaticNode) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = match node {
        StaticNode::I64(n) => write!(out, "{n}"),
        StaticNode::U64(n) => write!(out, "{n}"),
        // Rust prints an f64 in full decimal (1e300 as 301 digits with no point), which is JSON
        // but which strict parsers, simd-json among them, refuse as an integer out of range:
        // far from 1, the exponent form, which every parser reads back as the same number.
        StaticNode::F64(n)
            if n.is_finite() && (n.abs() >= 1e15 || (*n != 0.0 && n.abs() < 1e-6)) =>
        {
            write!(out, "{n:e}")
        }
        StaticNode::F64(n) if n.is_finite() => write!(out, "{n}"),
        StaticNode::F64(_) | StaticNode::Null => write!(out, "null"),
        StaticNode::Bool(b) => write!(out, "{b}"),
    };
}

/// A value inside a tape: the node and everything nested under it.
#[derive(Clone, Copy)]
pub struct TapeValue<'t, 'i>(pub &'t [Node<'i>]);

impl<'t, 'i> TapeValue<'t, 'i> {
    /// The whole document of a tape.
    pub fn root(nodes: &'t [Node<'i>]) -> Option<TapeValue<'t, 'i>> {
        (!nodes.is_empty()).then(|| TapeValue(&nodes[..span(nodes)]))
    }

    pub fn as_str(&self) -> Option<&'i str> {
        match self.0.first() {
            Some(Node::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self.0.first(), Some(Node::Object { .. }))
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.0.first() {
            Some(Node::Static(StaticNode::Bool(b))) => Some(*b),
            _ => None,
        }
    }

    /// A non-negative integer (`3`, not `3.0` nor `"3"`).
    pub fn as_u64(&self) -> Option<u64> {
        match self.0.first() {
            Some(Node::Static(StaticNode::U64(n))) => Some(*n),
            Some(Node::Static(StaticNode::I64(n))) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.0.first(), Some(Node::Static(StaticNode::Null)))
    }

    /// `(key, value)` pairs of an object; empty for anything else.
    pub fn entries(&self) -> Entries<'t, 'i> {
        let (len, rest) = match self.0.split_first() {
            Some((Node::Object { len, .. }, rest)) => (*len, rest),
            _ => (0, &[][..]),
        };
        Entries { rest, left: len }
    }

    /// Elements of an array; empty for anything else.
    pub fn elements(&self) -> Elements<'t, 'i> {
        let (len, rest) = match self.0.split_first() {
            Some((Node::Array { len, .. }, rest)) => (*len, rest),
            _ => (0, &[][..]),
        };
        Elements { rest, left: len }
    }

    pub fn is_array(&self) -> bool {
        matches!(self.0.first(), Some(Node::Array { .. }))
    }

    /// The member `key` of an object (the first, if a key repeats).
    pub fn get(&self, key: &str) -> Option<TapeValue<'t, 'i>> {
        self.entries().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Number of nodes the value at the front of `nodes` spans.
fn span(nodes: &[Node<'_>]) -> usize {
    match nodes.first() {
        Some(Node::Object { count, .. }) | Some(Node::Array { count, .. }) => {
            (count + 1).min(nodes.len())
        }
        Some(_) => 1,
        None => 0,
    }
}

pub struct Entries<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Entries<'t, 'i> {
    type Item = (&'i str, TapeValue<'t, 'i>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (key, rest) = self.rest.split_first()?;
        let Node::String(key) = key else {
            return None;
        };
        let n = span(rest);
        let (value, rest) = rest.split_at(n);
        self.rest = rest;
        Some((key, TapeValue(value)))
    }
}

pub struct Elements<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Elements<'t, 'i> {
    type Item = TapeValue<'t, 'i>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let n = span(self.rest);
        if n == 0 {
            return None;
        }
        let (value, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(TapeValue(value))
    }
}

/// Writes a tape value back out as JSON, without recursion (depth is bounded only by the input).
/// `key` maps each object key (the Kazoo normalization lower-cases them, say).
pub fn write_value(
    out: &mut Vec<u8>,
    value: TapeValue<'_, '_>,
    key: &mut impl FnMut(&mut Vec<u8>, &str),
) {
    write_value_with(out, value, key, false)
}

/// [`write_value`], leaving out every object member whose value is `null`, at every depth (as
/// Kazoo's JSON library drops them; `null`s inside arrays stay).
pub fn write_value_without_nulls(
    out: &mut Vec<u8>,
    value: TapeValue<'_, '_>,
    key: &mut impl FnMut(&mut Vec<u8>, &str),
) {
    write_value_with(out, value, key, true)
}

fn write_value_with(
    out: &mut Vec<u8>,
    value: TapeValue<'_, '_>,
    key: &mut impl FnMut(&mut Vec<u8>, &str),
    drop_nulls: bool,
) {
    // Per open container: members left to write, and whether it is an object.
    let mut open: Vec<(usize, bool)> = Vec::new();
    let mut first = true;
    let mut nodes = value.0.iter();
    loop {
        // Close every container whose members are all written.
        while let Some((left, is_object)) = open.last_mut() {
            if *left > 0 {
                break;
            }
            out.push(if *is_object { b'}' } else { b']' });
            open.pop();
            first = false;
        }
        let Some(node) = nodes.next() else {
            return;
        };
        if let Some((left, is_object)) = open.last_mut() {
            *left -= 1;
            if *is_object {
                let Node::String(k) = node else {
                    return;
                };
                let Some(value) = nodes.next() else {
                    return;
                };
                if drop_nulls && matches!(value, Node::Static(simd_json::StaticNode::Null)) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                key(out, k);
                out.push(b':');
                write_node(out, value, &mut open, &mut first);
                continue;
            }
            if !first {
                out.push(b',');
            }
        }
        write_node(out, node, &mut open, &mut first);
    }
}

fn write_node(out: &mut Vec<u8>, node: &Node<'_>, open: &mut Vec<(usize, bool)>, first: &mut bool) {
    *first = false;
    match node {
        Node::String(s) => write_str(out, s),
        Node::Static(s) => write_static(out, s),
        Node::Object { len, .. } => {
            out.push(b'{');
            open.push((*len, true));
            *first = true;
        }
        Node::Array { len, .. } => {
            out.push(b'[');
            open.push((*len, false));
            *first = true;
        }
    }
}

/// Parses `text` into `tape` (reusing its allocation) with `buffers`; `scratch` receives a copy of
/// the input, since simd-json unescapes in place.
pub fn parse_into<'s>(
    scratch: &'s mut Vec<u8>,
    text: &[u8],
    buffers: &mut simd_json::Buffers,
    tape: &mut simd_json::Tape<'s>,
) -> Result<(), simd_json::Error> {
    scratch.clear();
    scratch.extend_from_slice(text);
    simd_json::fill_tape(scratch, buffers, tape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_number_written_parses_back_as_the_same_number() {
        // Found by the voipbin_payload fuzz target: 1.1111e300 was written as 301 digits with
        // no point, which simd-json refuses ("InvalidNumber").
        for text in [
            "1.1111e300",
            "-8112.111111111111",
            "1e20",
            "-1e-300",
            "5e-7",
            "0.5",
            "-0.0",
            "12345678901234567890123.0",
        ] {
            let mut input = format!("[{text}]").into_bytes();
            let tape = simd_json::to_tape(&mut input).expect("valid input");
            let mut out = Vec::new();
            write_value(&mut out, TapeValue::root(&tape.0).unwrap(), &mut |o, k| {
                write_str(o, k)
            });
            let written = String::from_utf8(out.clone()).unwrap();
            let again =
                simd_json::to_tape(&mut out).unwrap_or_else(|e| panic!("{text} -> {written}: {e}"));
            let (simd_json::Node::Static(a), simd_json::Node::Static(b)) = (tape.0[1], again.0[1])
            else {
                panic!("{text}: not a number");
            };
            let as_f64 = |n: simd_json::StaticNode| match n {
                simd_json::StaticNode::F64(f) => f,
                simd_json::StaticNode::I64(i) => i as f64,
                simd_json::StaticNode::U64(u) => u as f64,
                _ => f64::NAN,
            };
            assert_eq!(as_f64(a), as_f64(b), "{text} -> {written}");
        }
    }

    fn roundtrip(input: &str) -> String {
        let mut bytes = input.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).expect("valid json");
        let mut out = Vec::new();
        let root = TapeValue::root(&tape.0).expect("a value");
        write_value(&mut out, root, &mut |out, k| {
            write_str(out, &k.to_uppercase())
        });
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn writes_values_back_without_recursion() {
        assert_eq!(
            roundtrip(r#"{"a":[1,{"b":null},[]],"c":{}}"#),
            r#"{"A":[1,{"B":null},[]],"C":{}}"#
        );
        assert_eq!(
            roundtrip(r#"[[[["x"]]],true,-1.5,"q\"\n\u0001"]"#),
            r#"[[[["x"]]],true,-1.5,"q\"\n\u0001"]"#
        );
        assert_eq!(roundtrip("7"), "7");
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert_eq!(roundtrip(&deep), deep);
    }

    #[test]
    fn reads_members_and_elements() {
        let mut bytes = br#"{"a":{"x":[1,2]},"b":"s","c":[{"d":1},"e"]}"#.to_vec();
        let tape = simd_json::to_tape(&mut bytes).expect("valid json");
        let root = TapeValue::root(&tape.0).expect("a value");
        assert_eq!(root.get("b").and_then(|v| v.as_str()), Some("s"));
        assert_eq!(
            root.get("a")
                .map(|a| a.get("x").map(|x| x.elements().count())),
            Some(Some(2))
        );
        let c: Vec<_> = root
            .get("c")
            .map(|c| c.elements().collect())
            .unwrap_or_default();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].as_str(), Some("e"));
        assert!(root.get("zz").is_none());
    }
}
