//! RFC 6455 frames: the inbound reader (client -> server) and the outbound encoder.
//!
//! The reader owns no buffer of its own while a socket is idle. The shard reads bytes into its
//! scratch buffer and hands them to [`Reader::next`], which unmasks one complete frame in place and
//! returns the message it completes. Only a fragmented message under assembly keeps bytes in the
//! reader (bounded by the maximum message size); a partial frame at the end of a read is the
//! caller's to keep until more bytes arrive.
//!
//! Every violation maps to the close code the RFC asks for ([`CloseCode`]); the caller sends that
//! close frame and ends the connection, and nothing else.

use super::CloseCode;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Control frames carry at most this much payload (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A message completed by an inbound frame; borrows the caller's buffer or the reader's fragments.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The peer's close frame: its status code and reason, if it sent one.
    Close(Option<(u16, &'a str)>),
}

/// Why the connection must be closed, with the code the close frame carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Violation {
    pub code: CloseCode,
    pub reason: &'static str,
}

const fn violation(code: CloseCode, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Reassembles messages from inbound frames; one per socket, a few words when idle.
#[derive(Debug)]
pub struct Reader {
    max_message: usize,
    /// The text message being reassembled from fragments, if any. Empty and unallocated otherwise.
    fragments: Vec<u8>,
    fragmented: bool,
}

/// A decoded frame: what the reader needs to know before it looks at the payload.
struct Header {
    fin: bool,
    opcode: u8,
    header_len: usize,
    payload_len: usize,
    mask: [u8; 4],
}

impl Reader {
    /// `max_message`: the largest text message accepted, in bytes, summed over its fragments
    /// (larger -> close 1009).
    pub fn new(max_message: usize) -> Reader {
        Reader {
            max_message,
            fragments: Vec::new(),
            fragmented: false,
        }
    }

    /// Whether a fragmented message is under assembly (its bytes are held here).
    pub fn is_assembling(&self) -> bool {
        self.fragmented
    }

    /// Decodes the frame at the front of `buf`, unmasking its payload in place.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole frame yet (keep the bytes, read more),
    /// otherwise how many bytes the frame took and the message it completed, if any (a
    /// non-final fragment completes none).
    pub fn next<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(usize, Option<Message<'a>>)>, Violation> {
        let Some(header) = self.header(buf)? else {
            return Ok(None);
        };
        let end = header.header_len + header.payload_len;
        if buf.len() < end {
            return Ok(None);
        }
        let payload = &mut buf[header.header_len..end];
        unmask(payload, header.mask);

        let message = match header.opcode {
            OP_PING => Some(Message::Ping(payload)),
            OP_PONG => Some(Message::Pong(payload)),
            OP_CLOSE => Some(close_message(payload)?),
            OP_TEXT if header.fin => Some(Message::Text(text(payload)?)),
            OP_TEXT => {
                self.fragmented = true;
                self.fragments.clear();
                self.fragments.extend_from_slice(payload);
                None
            }
            // OP_CONTINUATION (the header check refused a continuation with nothing to continue).
            _ => {
                self.fragments.extend_from_slice(payload);
                if !header.fin {
                    return Ok(Some((end, None)));
                }
                // The message borrows the fragments; `release` frees them once it is handled.
                self.fragmented = false;
                Some(Message::Text(text(&self.fragments)?))
            }
        };
        Ok(Some((end, message)))
    }

    /// Releases the bytes of a message completed from fragments; call once it has been handled.
    pub fn release(&mut self) {
        if !self.fragmented {
            self.fragments = Vec::new();
        }
    }

    fn header(&self, buf: &[u8]) -> Result<Option<Header>, Violation> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(violation(CloseCode::PROTOCOL, "reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        match opcode {
            OP_TEXT if self.fragmented => {
                return Err(violation(
                    CloseCode::PROTOCOL,
                    "new message inside a fragmented one",
                ));
            }
            OP_CONTINUATION if !self.fragmented => {
                return Err(violation(
                    CloseCode::PROTOCOL,
                    "continuation frame with nothing to continue",
                ));
            }
            OP_TEXT | OP_CONTINUATION => {}
            OP_BINARY => {
                return Err(violation(
                    CloseCode::UNSUPPORTED,
                    "binary messages are not accepted",
                ))
            }
            OP_CLOSE | OP_PING | OP_PONG if !fin => {
                return Err(violation(CloseCode::PROTOCOL, "fragmented control frame"));
            }
            OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(violation(CloseCode::PROTOCOL, "unknown opcode")),
        }
        if b1 & 0x80 == 0 {
            return Err(violation(
                CloseCode::PROTOCOL,
                "client frames must be masked",
            ));
        }
        let (payload_len, len_bytes) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(b);
                    let len = u64::from_be_bytes(be);
                    if len >> 63 != 0 {
                        return Err(violation(
                            CloseCode::PROTOCOL,
                            "payload length out of range",
                        ));
                    }
                    (len, 8)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 0),
        };
        if opcode >= OP_CLOSE && payload_len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(violation(
                CloseCode::PROTOCOL,
                "control frame payload over 125 bytes",
            ));
        }
        let held = if opcode == OP_CONTINUATION {
            self.fragments.len() as u64
        } else {
            0
        };
        if opcode < OP_CLOSE && held + payload_len > self.max_message as u64 {
            return Err(violation(CloseCode::TOO_BIG, "message too big"));
        }
        let mask_at = 2 + len_bytes;
        let Some(mask) = buf.get(mask_at..mask_at + 4) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            header_len: mask_at + 4,
            // Bounded by `max_message` (a usize) or 125 above.
            payload_len: payload_len as usize,
            mask: [mask[0], mask[1], mask[2], mask[3]],
        }))
    }
}

fn text(payload: &[u8]) -> Result<&str, Violation> {
    std::str::from_utf8(payload)
        .map_err(|_| violation(CloseCode::INVALID_DATA, "text message is not valid UTF-8"))
}

fn close_message(payload: &[u8]) -> Result<Message<'_>, Violation> {
    match payload {
        [] => Ok(Message::Close(None)),
        [_] => Err(violation(CloseCode::PROTOCOL, "close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode(code).is_valid_on_the_wire() {
                return Err(violation(CloseCode::PROTOCOL, "invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| {
                violation(CloseCode::INVALID_DATA, "close reason is not valid UTF-8")
            })?;
            Ok(Message::Close(Some((code, reason))))
        }
    }
}

/// XORs `payload` with the client's masking key, a word at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in chunks.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // Chunks of 8 keep the mask phase, so the tail starts at mask byte 0.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Server -> client frames: final, unmasked, so one encoding serves every socket.
pub mod encode {
    use super::{CloseCode, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

    /// Writes the header of a final, unmasked frame.
    fn header(opcode: u8, len: usize, out: &mut Vec<u8>) {
        out.push(0x80 | opcode);
        match len {
            0..=125 => out.push(len as u8),
            126..=0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
    }

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 10);
        header(opcode, payload.len(), &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A text frame; `payload` must be UTF-8 (callers hand over serialized JSON).
    pub fn text(payload: &[u8]) -> Vec<u8> {
        frame(OP_TEXT, payload)
    }

    /// A text frame whose payload is `parts` one after the other, written in one allocation
    /// (event frames: a per-binding head and the event's shared tail).
    pub fn text_parts(parts: &[&[u8]]) -> Vec<u8> {
        let len = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(len + 10);
        header(OP_TEXT, len, &mut out);
        for part in parts {
            out.extend_from_slice(part);
        }
        out
    }

    pub fn ping(payload: &[u8]) -> Vec<u8> {
        frame(OP_PING, &payload[..payload.len().min(125)])
    }

    pub fn pong(payload: &[u8]) -> Vec<u8> {
        frame(OP_PONG, &payload[..payload.len().min(125)])
    }

    /// A close frame; the reason is cut (on a character boundary) to fit a control frame.
    pub fn close(code: CloseCode, reason: &str) -> Vec<u8> {
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = Vec::with_capacity(2 + cut);
        payload.extend_from_slice(&code.0.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        frame(OP_CLOSE, &payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser sends it: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            0..=125 => out.push(0x80 | payload.len() as u8),
            126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn one(
        reader: &mut Reader,
        bytes: &[u8],
    ) -> Result<Option<(usize, Option<String>)>, Violation> {
        let mut buf = bytes.to_vec();
        Ok(reader
            .next(&mut buf)?
            .map(|(n, m)| (n, m.map(|m| format!("{m:?}")))))
    }

    fn code_of(reader: &mut Reader, bytes: &[u8]) -> CloseCode {
        one(reader, bytes).expect_err("must be refused").code
    }

    #[test]
    fn text_frames_of_every_length_class_are_unmasked() {
        for len in [0usize, 1, 7, 8, 9, 125, 126, 127, 65_535, 65_536, 100_000] {
            let payload: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let frame = client_frame(true, OP_TEXT, payload.as_bytes());
            let mut reader = Reader::new(1 << 20);
            let mut buf = frame.clone();
            let (used, message) = reader.next(&mut buf).unwrap().unwrap();
            assert_eq!(used, frame.len());
            assert_eq!(message, Some(Message::Text(&payload)), "length {len}");
        }
    }

    #[test]
    fn partial_frames_ask_for_more_bytes() {
        let frame = client_frame(true, OP_TEXT, &[b'x'; 300]);
        let mut reader = Reader::new(1 << 20);
        for cut in 0..frame.len() {
            assert_eq!(
                one(&mut reader, &frame[..cut]).unwrap(),
                None,
                "cut at {cut}"
            );
        }
        // Two frames in one read: the first is taken, the rest left for the next call.
        let mut two = client_frame(true, OP_TEXT, b"first");
        two.extend(client_frame(true, OP_PING, b"p"));
        let mut buf = two.clone();
        let (used, message) = reader.next(&mut buf).unwrap().unwrap();
        assert_eq!(message, Some(Message::Text("first")));
        let mut rest = two[used..].to_vec();
        assert_eq!(
            reader.next(&mut rest).unwrap().unwrap().1,
            Some(Message::Ping(b"p"))
        );
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between_them() {
        let mut reader = Reader::new(1 << 20);
        assert_eq!(
            one(&mut reader, &client_frame(false, OP_TEXT, b"hel"))
                .unwrap()
                .unwrap()
                .1,
            None
        );
        assert!(reader.is_assembling());
        let ping = one(&mut reader, &client_frame(true, OP_PING, b"?"))
            .unwrap()
            .unwrap()
            .1;
        assert_eq!(ping.as_deref(), Some("Ping([63])"));
        let cont = client_frame(false, OP_CONTINUATION, "lo, wö".as_bytes());
        assert_eq!(one(&mut reader, &cont).unwrap().unwrap().1, None);
        let mut last = client_frame(true, OP_CONTINUATION, b"rld");
        let (_, message) = reader.next(&mut last).unwrap().unwrap();
        assert_eq!(message, Some(Message::Text("hello, wörld")));
        reader.release();
        assert!(!reader.is_assembling());
        assert_eq!(
            reader.fragments.capacity(),
            0,
            "an idle reader holds no buffer"
        );
    }

    #[test]
    fn a_character_split_across_fragments_is_fine() {
        let bytes = "ü".as_bytes();
        let mut reader = Reader::new(1 << 20);
        one(&mut reader, &client_frame(false, OP_TEXT, &bytes[..1])).unwrap();
        let mut last = client_frame(true, OP_CONTINUATION, &bytes[1..]);
        assert_eq!(
            reader.next(&mut last).unwrap().unwrap().1,
            Some(Message::Text("ü"))
        );
    }

    #[test]
    fn protocol_violations_close_with_1002() {
        let mut unmasked = client_frame(true, OP_TEXT, b"hi");
        unmasked[1] &= 0x7F;
        assert_eq!(
            code_of(&mut Reader::new(1024), &unmasked),
            CloseCode::PROTOCOL
        );

        let mut reserved = client_frame(true, OP_TEXT, b"hi");
        reserved[0] |= 0x40;
        assert_eq!(
            code_of(&mut Reader::new(1024), &reserved),
            CloseCode::PROTOCOL
        );

        for opcode in [0x3, 0x7, 0xB, 0xF] {
            let frame = client_frame(true, opcode, b"");
            assert_eq!(code_of(&mut Reader::new(1024), &frame), CloseCode::PROTOCOL);
        }
        let stray = client_frame(true, OP_CONTINUATION, b"x");
        assert_eq!(code_of(&mut Reader::new(1024), &stray), CloseCode::PROTOCOL);

        let fragmented_ping = client_frame(false, OP_PING, b"x");
        assert_eq!(
            code_of(&mut Reader::new(1024), &fragmented_ping),
            CloseCode::PROTOCOL
        );

        let big_ping = client_frame(true, OP_PING, &[0; 126]);
        assert_eq!(
            code_of(&mut Reader::new(1024), &big_ping),
            CloseCode::PROTOCOL
        );

        let mut reader = Reader::new(1024);
        one(&mut reader, &client_frame(false, OP_TEXT, b"a")).unwrap();
        let interleaved = client_frame(true, OP_TEXT, b"b");
        assert_eq!(code_of(&mut reader, &interleaved), CloseCode::PROTOCOL);

        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(code_of(&mut Reader::new(1024), &huge), CloseCode::PROTOCOL);
    }

    #[test]
    fn binary_is_refused_with_1003() {
        let frame = client_frame(true, OP_BINARY, b"\x00\x01");
        assert_eq!(
            code_of(&mut Reader::new(1024), &frame),
            CloseCode::UNSUPPORTED
        );
    }

    #[test]
    fn invalid_utf8_is_refused_with_1007() {
        let frame = client_frame(true, OP_TEXT, b"\xff\xfe");
        assert_eq!(
            code_of(&mut Reader::new(1024), &frame),
            CloseCode::INVALID_DATA
        );
        let mut reader = Reader::new(1024);
        one(&mut reader, &client_frame(false, OP_TEXT, b"ok")).unwrap();
        let bad_end = client_frame(true, OP_CONTINUATION, b"\xc3");
        assert_eq!(code_of(&mut reader, &bad_end), CloseCode::INVALID_DATA);
    }

    #[test]
    fn oversized_messages_are_refused_with_1009_before_their_payload_arrives() {
        let frame = client_frame(true, OP_TEXT, &[b'a'; 2000]);
        // Only the header is present: the size is known from it.
        assert_eq!(
            code_of(&mut Reader::new(1024), &frame[..8]),
            CloseCode::TOO_BIG
        );
        let mut reader = Reader::new(1024);
        one(&mut reader, &client_frame(false, OP_TEXT, &[b'a'; 1000])).unwrap();
        let more = client_frame(true, OP_CONTINUATION, &[b'a'; 25]);
        assert_eq!(code_of(&mut reader, &more), CloseCode::TOO_BIG);
        // Exactly the limit is fine.
        let fits = client_frame(true, OP_TEXT, &[b'a'; 1024]);
        assert!(one(&mut Reader::new(1024), &fits).unwrap().is_some());
    }

    #[test]
    fn close_frames() {
        let mut reader = Reader::new(1024);
        let empty = one(&mut reader, &client_frame(true, OP_CLOSE, b""))
            .unwrap()
            .unwrap()
            .1;
        assert_eq!(empty.as_deref(), Some("Close(None)"));
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut frame = client_frame(true, OP_CLOSE, &payload);
        assert_eq!(
            reader.next(&mut frame).unwrap().unwrap().1,
            Some(Message::Close(Some((1000, "bye"))))
        );
        assert_eq!(
            code_of(&mut reader, &client_frame(true, OP_CLOSE, b"\x03")),
            CloseCode::PROTOCOL
        );
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let frame = client_frame(true, OP_CLOSE, &bad.to_be_bytes());
            assert_eq!(
                code_of(&mut reader, &frame),
                CloseCode::PROTOCOL,
                "code {bad}"
            );
        }
        for good in [1000u16, 1001, 1003, 1007, 1011, 3000, 4001, 4999] {
            assert!(one(
                &mut reader,
                &client_frame(true, OP_CLOSE, &good.to_be_bytes())
            )
            .is_ok());
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        let frame = client_frame(true, OP_CLOSE, &bad_reason);
        assert_eq!(code_of(&mut reader, &frame), CloseCode::INVALID_DATA);
    }

    #[test]
    fn encoder_round_trips_through_a_reader_and_uses_the_shortest_length() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let frame = encode::text(&vec![b'z'; len]);
            let header = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(frame.len(), header + len);
            assert_eq!(frame[0], 0x81);
            assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
        }
        let close = encode::close(CloseCode::TOKEN_EXPIRED, "token expired");
        assert_eq!(&close[..4], &[0x88, 15, 0x0F, 0xA1]);
        assert_eq!(&close[4..], b"token expired");
        let long_reason = "é".repeat(100);
        let close = encode::close(CloseCode::GOING_AWAY, &long_reason);
        assert!(close.len() <= 2 + 125);
        assert!(
            std::str::from_utf8(&close[4..]).is_ok(),
            "cut on a character boundary"
        );
        assert_eq!(encode::ping(b"k"), vec![0x89, 1, b'k']);
        assert_eq!(encode::pong(b"k"), vec![0x8A, 1, b'k']);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap fuzz: every prefix of a few frames with every byte flipped once.
        let mut stream = client_frame(true, OP_TEXT, b"{\"action\":\"ping\"}");
        stream.extend(client_frame(false, OP_TEXT, b"ab"));
        stream.extend(client_frame(true, OP_CONTINUATION, b"cd"));
        stream.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        for i in 0..stream.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bytes = stream.clone();
                bytes[i] ^= flip;
                let mut reader = Reader::new(64);
                let mut at = 0;
                while at < bytes.len() {
                    match reader.next(&mut bytes[at..]) {
                        Ok(Some((used, _))) => at += used,
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
    }
}
