//! The HTTP/1.1 upgrade handshake (RFC 6455 4.2).
//!
//! [`parse`] takes the bytes read so far; it answers "incomplete", a refusal (400 with a short
//! text body, for anything that is not a valid version-13 upgrade), or the parsed [`Request`] that
//! the dialect layer inspects (path, query, headers) before the shard sends [`accept`] or a refusal
//! of the dialect's own (such as VoIPBin's 401).

/// Requests larger than this are refused: a handshake is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 48;

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path without the query, e.g. `/v1.0/ws`.
    pub path: String,
    /// What follows `?`, undecoded.
    pub query: Option<String>,
    /// Every header, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The value of `Sec-WebSocket-Key`.
    pub key: String,
}

impl Request {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`, undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Why an upgrade request was refused; the message is the body of the `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed HTTP request")]
    Malformed,
    #[error("request headers too large")]
    TooLarge,
    #[error("method must be GET")]
    Method,
    #[error("HTTP/1.1 required")]
    Version,
    #[error("missing or invalid Upgrade: websocket header")]
    Upgrade,
    #[error("missing Connection: Upgrade header")]
    Connection,
    #[error("missing or invalid Sec-WebSocket-Key header")]
    Key,
    #[error("unsupported Sec-WebSocket-Version (13 required)")]
    WebSocketVersion,
}

/// Parses the request at the front of `buf`: `Ok(None)` while it is incomplete, otherwise the
/// request and the number of bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_BYTES => {
            return Err(Refusal::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::Malformed),
    };
    if consumed > MAX_REQUEST_BYTES {
        return Err(Refusal::TooLarge);
    }
    if request.method != Some("GET") {
        return Err(Refusal::Method);
    }
    if request.version != Some(1) {
        return Err(Refusal::Version);
    }
    let target = request.path.ok_or(Refusal::Malformed)?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (target, None),
    };

    let mut fields = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| Refusal::Malformed)?;
        fields.push((header.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let has_token = |name: &str, token: &str| {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") {
        return Err(Refusal::Upgrade);
    }
    if !has_token("connection", "upgrade") {
        return Err(Refusal::Connection);
    }
    let version = fields.iter().find(|(n, _)| n == "sec-websocket-version");
    if version.map(|(_, v)| v.as_str()) != Some("13") {
        return Err(Refusal::WebSocketVersion);
    }
    let key = fields
        .iter()
        .find(|(n, _)| n == "sec-websocket-key")
        .map(|(_, v)| v.clone())
        .filter(|k| is_valid_key(k))
        .ok_or(Refusal::Key)?;

    Ok(Some((
        Request {
            path: path.to_string(),
            query,
            headers: fields,
            key,
        },
        consumed,
    )))
}

/// A key is the base64 encoding of 16 bytes: 22 characters of the alphabet and `==`.
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes[22..] == *b"=="
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// The `101 Switching Protocols` answer to a valid request.
pub fn accept(request: &Request) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(request.key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A refusal that closes the connection: `status` with `body` (`content_type` as given).
pub fn refuse(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    refuse_with(status, content_type, body, "")
}

/// [`refuse`] with `extra` header lines (each ending in CRLF), e.g. `Retry-After: 1\r\n`.
pub fn refuse_with(status: u16, content_type: &str, body: &str, extra: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to a request that is not a valid upgrade: `431` when its headers are over the
/// cap, `400` otherwise.
pub fn refuse_bad_request(refusal: &Refusal) -> Vec<u8> {
    let status = if *refusal == Refusal::TooLarge {
        431
    } else {
        400
    };
    refuse(status, "text/plain; charset=utf-8", &format!("{refusal}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /v1.0/ws?token=abc&x HTTP/1.1\r\nHost: localhost:5555\r\n\
        Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Cookie: token=t1\r\n\r\n";

    #[test]
    fn a_valid_request_is_parsed_and_accepted() {
        let (request, used) = parse(GOOD.as_bytes()).unwrap().unwrap();
        assert_eq!(used, GOOD.len());
        assert_eq!(request.path, "/v1.0/ws");
        assert_eq!(request.query_param("token"), Some("abc"));
        assert_eq!(request.query_param("x"), Some(""));
        assert_eq!(request.query_param("y"), None);
        assert_eq!(request.header("cookie"), Some("token=t1"));
        let answer = String::from_utf8(accept(&request)).unwrap();
        // The RFC 6455 section 1.3 example key and its accept value.
        assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(answer.ends_with("\r\n\r\n"));
    }

    #[test]
    fn incomplete_requests_wait_for_more() {
        for cut in 0..GOOD.len() - 1 {
            assert_eq!(parse(&GOOD.as_bytes()[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn invalid_upgrades_are_refused_with_their_reason() {
        let cases = [
            (GOOD.replace("GET ", "POST "), Refusal::Method),
            (GOOD.replace("HTTP/1.1", "HTTP/1.0"), Refusal::Version),
            (
                GOOD.replace("Upgrade: websocket", "Upgrade: h2c"),
                Refusal::Upgrade,
            ),
            (
                GOOD.replace("keep-alive, Upgrade", "keep-alive"),
                Refusal::Connection,
            ),
            (
                GOOD.replace("Version: 13", "Version: 8"),
                Refusal::WebSocketVersion,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
                Refusal::Key,
            ),
            (
                GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                Refusal::Key,
            ),
            ("GARBAGE\r\n\r\n".to_string(), Refusal::Malformed),
        ];
        for (request, refusal) in cases {
            assert_eq!(parse(request.as_bytes()), Err(refusal), "{request}");
        }
        let huge = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n",
            "a".repeat(MAX_REQUEST_BYTES)
        );
        assert_eq!(parse(huge.as_bytes()), Err(Refusal::TooLarge));
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let request = GOOD.replace("Upgrade: websocket", "UPGRADE: WebSocket");
        assert!(parse(request.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn refusals_are_complete_http_answers() {
        let answer = String::from_utf8(refuse_bad_request(&Refusal::Key)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        let body = "missing or invalid Sec-WebSocket-Key header\n";
        assert!(answer.ends_with(&format!("\r\n\r\n{body}")));
        assert!(answer.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
