//! The fuzz targets' bodies: every parser that reads bytes from the network or from an
//! operator's files, each behind one function that takes arbitrary bytes. `fuzz/` runs them
//! under libFuzzer (`cargo fuzz`); `tests/fuzz_corpora.rs` replays the committed corpora through
//! the same functions on every `cargo test`, so a finding stays fixed. Each function must return
//! for any input without panicking; the invariants it checks are `assert!`s, so that a broken one
//! is a finding too.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::auth::{Auth, JwtKeys, TokenClaims};
use crate::binding::{BindingAutomaton, Separator, SubscriptionId};
use crate::dialect::{BlackholeLimits, Dialects};
use crate::families::{AmqpBinding, Normalizer};
use crate::ingest::{EventSource, SourceDown};
use crate::shard::harness::Harness;
use crate::ws::frame::Reader;
use crate::ws::handshake;

/// A fuzz target's body: any bytes in, no panic.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("ws_frames", ws_frames),
    ("upgrade_request", upgrade_request),
    ("blackhole_commands", blackhole_commands),
    ("voipbin_commands", voipbin_commands),
    ("jwt", jwt),
    ("kazoo_payload", kazoo_payload),
    ("voipbin_payload", voipbin_payload),
    ("binding_patterns", binding_patterns),
    ("auth_file", auth_file),
    ("config", config),
    ("webhook_input", webhook_input),
    ("proxy_header", proxy_header),
    ("commands", commands),
];

/// Splits at the first `\n`: (head, rest).
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// The inbound frame reader over a byte stream cut into reads at arbitrary points.
pub fn ws_frames(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let mut reader = Reader::new(1024);
    let mut pending: Vec<u8> = Vec::new();
    let step = usize::from(cut).max(1);
    for chunk in stream.chunks(step) {
        pending.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            match reader.next(&mut pending[at..]) {
                Ok(Some((used, _message))) => {
                    assert!(
                        used > 0 && at + used <= pending.len(),
                        "progress within the buffer"
                    );
                    at += used;
                    reader.release();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        pending.drain(..at);
        assert!(
            pending.len() <= 1024 + 14 + step,
            "a partial frame is bounded by the message limit"
        );
    }
}

/// The upgrade request parser, and the answers built from what it accepts.
pub fn upgrade_request(data: &[u8]) {
    match handshake::parse(data) {
        Ok(Some((request, used))) => {
            assert!(used <= data.len());
            let answer = handshake::accept(&request);
            assert!(answer.starts_with(b"HTTP/1.1 101"));
            let _ = request.query_param("token");
            let _ = crate::dialect::handshake_token(&request);
        }
        Ok(None) => assert!(data.len() < handshake::MAX_REQUEST_BYTES),
        Err(refusal) => {
            let answer = handshake::refuse_bad_request(&refusal);
            assert!(answer.starts_with(b"HTTP/1.1 4"));
        }
    }
}

/// An event source that activates every binding at once.
struct Immediate;

impl EventSource for Immediate {
    fn acquire(
        &self,
        _binding: AmqpBinding,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SourceDown>> + Send>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(&self, _binding: AmqpBinding) {}
}

const FUZZ_SECRET: &[u8] = b"fuzz-secret";

/// Both dialects over a small account tree: tokens `tok-r` (reseller), `tok-a`, `tok-b`,
/// `tok-admin` (superduper), `tok-vb` (VoIPBin admin of customer `c1`), `tok-agent` (agent `g1`).
fn dialects() -> &'static Dialects {
    static DIALECTS: OnceLock<Dialects> = OnceLock::new();
    DIALECTS.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("horizon-fuzz-auth-{}.toml", std::process::id()));
        let text = r#"
[[accounts]]
id = "r"
[[accounts]]
id = "a"
parent = "r"
realm = "a.example"
[[accounts]]
id = "b"
parent = "r"
[[accounts]]
id = "c1"
[[tokens]]
token = "tok-r"
account_id = "r"
[[tokens]]
token = "tok-a"
account_id = "a"
[[tokens]]
token = "tok-b"
account_id = "b"
[[tokens]]
token = "tok-admin"
account_id = "r"
superduper_admin = true
[[tokens]]
token = "tok-vb"
account_id = "c1"
customer_id = "c1"
permissions = ["admin"]
[[tokens]]
token = "tok-agent"
account_id = "c1"
customer_id = "c1"
agent_id = "g1"
permissions = ["agent"]
"#;
        let auth = std::fs::write(&path, text)
            .ok()
            .and_then(|()| {
                let keys = JwtKeys::new(Some(FUZZ_SECRET.to_vec()), None).ok()?;
                Auth::new(Some(path.clone()), keys).ok()
            })
            .or_else(|| Auth::new(None, JwtKeys::new(None, None).ok()?).ok());
        let auth =
            Arc::new(auth.unwrap_or_else(|| unreachable!("an auth with no file always loads")));
        let _ = std::fs::remove_file(&path);
        Dialects::new(
            auth,
            Arc::new(Immediate),
            BlackholeLimits {
                rate_burst: 1000,
                max_bindings: 64,
                bind_wait: Duration::from_millis(1),
                ..BlackholeLimits::default()
            },
        )
    })
}

fn request(path: &str) -> handshake::Request {
    handshake::Request {
        path: path.to_string(),
        query: None,
        headers: Vec::new(),
        key: "dGhlIHNhbXBsZSBub25jZQ==".to_string(),
    }
}

/// Drives a session with `data` cut into text messages at `\n` (invalid UTF-8 becomes
/// replacement characters, as no text frame could carry it).
fn drive(mut harness: Harness, data: &[u8], max_bindings: usize) {
    for message in data.split(|b| *b == b'\n') {
        let text = String::from_utf8_lossy(message);
        let _ = harness.text(&text);
        assert!(
            harness.bindings() <= max_bindings,
            "the per-socket binding cap holds"
        );
    }
}

/// Blackhole commands on one socket (no handshake token: the first command must carry one).
pub fn blackhole_commands(data: &[u8]) {
    let dialects = dialects();
    if let Some(harness) = Harness::open(dialects, &request("/")) {
        drive(harness, data, 64);
    }
}

/// VoIPBin commands on one socket opened with the token on the first line.
pub fn voipbin_commands(data: &[u8]) {
    let (token, rest) = split_line(data);
    let mut request = request(crate::dialect::VOIPBIN_PATH);
    request.query = Some(format!("token={}", String::from_utf8_lossy(token)));
    if let Some(harness) = Harness::open(dialects(), &request) {
        drive(harness, rest, 64);
    }
}

/// JWT verification: the input as a token, and as the claims of a validly signed one (what a
/// holder of the secret could send, the case that once overflowed the clock).
pub fn jwt(data: &[u8]) {
    let Ok(keys) = JwtKeys::new(Some(FUZZ_SECRET.to_vec()), None) else {
        return;
    };
    let _ = keys.verify(&String::from_utf8_lossy(data));
    let Ok(signed) = keys.sign_hs256(&TokenClaims {
        account_id: "a".into(),
        ..TokenClaims::default()
    }) else {
        return;
    };
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = signed.split('.').next().unwrap_or_default();
    let body = format!("{header}.{}", engine.encode(data));
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(FUZZ_SECRET)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    hmac::Mac::update(&mut mac, body.as_bytes());
    let signature = engine.encode(hmac::Mac::finalize(mac).into_bytes());
    if let Ok(identity) = keys.verify(&format!("{body}.{signature}")) {
        assert!(crate::families::valid_account_id(&identity.account_id));
        let _ = identity.expires_at.map(crate::auth::format_rfc3339);
    }
}

/// Kazoo deliveries: the first byte picks the exchange, the first line is the routing key, the
/// rest the body.
pub fn kazoo_payload(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let exchanges = [
        "callevt",
        "configuration",
        "conference",
        "fax",
        "presence",
        "other",
    ];
    let exchange = exchanges[usize::from(pick) % exchanges.len()];
    let (key, body) = split_line(rest);
    normalize(exchange, &String::from_utf8_lossy(key), body);
}

/// VoIPBin deliveries: the first line is the routing key, the rest the body.
pub fn voipbin_payload(data: &[u8]) {
    let (key, body) = split_line(data);
    normalize(
        crate::families::voipbin::EXCHANGE,
        &String::from_utf8_lossy(key),
        body,
    );
}

fn normalize(exchange: &str, key: &str, body: &[u8]) {
    let mut body = body.to_vec();
    if let Ok(event) = Normalizer::default().normalize(exchange, key, &mut body) {
        // What reaches a socket is JSON: the frame's tail closes the object it is put in.
        let mut frame = b"{".to_vec();
        frame.extend_from_slice(&event.tail);
        assert!(
            simd_json::to_tape(&mut frame).is_ok(),
            "a normalized event is JSON"
        );
        assert!(!event.account.is_empty());
    }
}

/// Binding patterns: lines are patterns (inserted), keys (matched) or removals, on both
/// separators; every match is checked against the patterns inserted.
pub fn binding_patterns(data: &[u8]) {
    let mut dot = BindingAutomaton::new(Separator::Dot);
    let mut colon = BindingAutomaton::new(Separator::Colon);
    let mut out = Vec::new();
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let Some((&op, text)) = line.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(text);
        let automaton = if op & 1 == 0 { &mut dot } else { &mut colon };
        match op % 6 {
            0 | 1 => {
                let _ = automaton.insert(&text, SubscriptionId(i as u32));
            }
            2 | 3 => {
                out.clear();
                automaton.matches(&text, &mut out);
                let mut sorted = out.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), out.len(), "each subscription once");
            }
            _ => {
                let _ = automaton.remove(&text, SubscriptionId((i as u32).wrapping_sub(1)));
            }
        }
    }
}

/// The auth file, as a load or a SIGHUP reload reads it.
pub fn auth_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Auth::check_file_text(text);
    }
}

/// The config file, and flags and values as `serve` reads them.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(pairs) = crate::config::parse_file_text(&text) {
        let _ = crate::config::ServeConfig::default().apply(&pairs);
    }
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    let _ = crate::config::ServeConfig::load(&args, |_| None);
}

/// What reaches the webhooks from outside: the first byte picks a hook document sent to the API
/// (validated, then turned into a request for a sample event) or a broker message on one of the
/// webhook exchanges (first line the routing key, the rest the body), parsed into a payload and
/// encoded every way a hook may ask for.
pub fn webhook_input(data: &[u8]) {
    use crate::webhooks::{hook, payload, request, Payload};
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick % 4 == 0 {
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        if let Ok(stored) = hook::validate(&doc) {
            // A document that validates always makes a hook, and a request.
            let hook = hook::Hook::from_doc("h", "a", &stored, true, None)
                .expect("a validated document makes a hook");
            let sample = hook::sample(hook.hook);
            let fields = sample.as_object().cloned().unwrap_or_default();
            let prepared =
                request::prepare(&hook, "msg_0", &Payload::new(fields), std::time::UNIX_EPOCH);
            assert!(prepared
                .url
                .starts_with(hook.uri.split('#').next().unwrap_or_default()));
        }
        return;
    }
    let exchange = ["callevt", "configuration", "notifications"][usize::from(pick % 4) - 1];
    let (key, body) = split_line(rest);
    if let Ok(event) = payload::parse(exchange, &String::from_utf8_lossy(key), body, "c") {
        assert!(!event.account.is_empty());
        let form = payload::form_encode(&event.payload);
        let _ = payload::append_query("http://h/p?x=1#f", &form);
        let _ = serde_json::to_vec(&event.payload);
    }
}

/// A connection's first bytes from a load balancer: the PROXY header parser over the whole
/// input and over every prefix of it (a header arriving in pieces), and the trusted-proxy list
/// and `X-Forwarded-For` walk over the input as text. A v2 length field is the client's word:
/// nothing is ever waited for past the bound.
pub fn proxy_header(data: &[u8]) {
    use crate::proxy::{self, Preface, MAX_HEADER_BYTES};
    let whole = proxy::parse(data);
    if let Preface::Header { len, .. } = whole {
        assert!(len <= data.len() && len <= MAX_HEADER_BYTES, "{len}");
    }
    if whole == Preface::Incomplete {
        assert!(data.len() < MAX_HEADER_BYTES);
    }
    // Every shorter prefix of a header is incomplete, never another verdict.
    let decided_at = match whole {
        Preface::Header { len, .. } => len,
        _ => data.len(),
    };
    for cut in 1..decided_at.min(data.len()) {
        let part = proxy::parse(&data[..cut]);
        match whole {
            Preface::Header { .. } | Preface::Incomplete => {
                assert_eq!(part, Preface::Incomplete, "cut at {cut}")
            }
            Preface::Absent | Preface::Invalid(_) => {
                assert!(!matches!(part, Preface::Header { .. }), "cut at {cut}")
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let (list, forwarded) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(trusted) = proxy::TrustedProxies::parse(list) {
        let peer = std::net::IpAddr::from([127, 0, 0, 1]);
        let client = trusted.forwarded_client(peer, forwarded.lines());
        // Only a trusted peer's word moves the client off the peer.
        if !trusted.contains(peer) {
            assert_eq!(client, peer);
        }
    }
}

/// A call or conference command as a client sends it: the first line names the kind (`channel`
/// or `conference`, else a REST participant path segment), the rest is the command's `data`.
/// Whatever parses is authorized against a call and a conference that are live, and the message
/// built must be JSON with a routing key of the right number of words: nothing a client sends
/// reaches a key or a body unchecked.
pub fn commands(data: &[u8]) {
    use crate::commands::{self, Commander, Kind, Target};
    use crate::families::Facts;

    struct Tracking(Arc<commands::Live>);
    impl EventSource for Tracking {
        fn acquire(
            &self,
            _binding: AmqpBinding,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SourceDown>> + Send>>
        {
            Box::pin(std::future::ready(Ok(())))
        }
        fn release(&self, _binding: AmqpBinding) {}
        fn live(&self) -> Option<(Arc<commands::Live>, String)> {
            Some((self.0.clone(), "fuzz".into()))
        }
    }
    // The commander, and the watch that keeps the account tracked for the life of the process.
    static COMMANDER: OnceLock<Option<(Arc<Commander>, commands::CommandWatch)>> = OnceLock::new();
    let Some((commander, _)) = COMMANDER.get_or_init(|| {
        let live = commands::Live::new(Default::default());
        let auth = Arc::new(Auth::new(None, JwtKeys::new(None, None).ok()?).ok()?);
        let commander = Commander::new(auth, Arc::new(Tracking(live.clone())))?;
        let (watch, _) = commander.watch("a");
        for (call, leg) in [("c1", Some("c2")), ("c.*#1", None)] {
            let facts = Facts::Call {
                call_id: call.into(),
                other_leg: leg.map(str::to_string),
                destroyed: false,
            };
            live.observe("a", &facts);
        }
        let conference = Facts::Conference {
            conference: "conf1".into(),
            destroyed: false,
        };
        live.observe("a", &conference);
        Some((commander, watch))
    }) else {
        return;
    };
    let (head, rest) = split_line(data);
    let kind = match head {
        b"channel" => Kind::Channel,
        b"conference" => Kind::Conference,
        other => {
            if let Ok(p) = commands::parse_participant(&String::from_utf8_lossy(other)) {
                assert!(u64::from(p) <= u64::from(u32::MAX));
            }
            return;
        }
    };
    let mut bytes = rest.to_vec();
    let Ok(tape) = simd_json::to_tape(&mut bytes) else {
        return;
    };
    let Some(root) = crate::json::TapeValue::root(&tape.0) else {
        return;
    };
    let Ok(command) = commands::parse(kind, root, "a") else {
        return;
    };
    match &command.target {
        Target::Channel { call_id } => {
            assert!(!call_id.is_empty() && call_id.len() <= 256 && call_id != "*");
        }
        Target::Conference { conference_id } => {
            assert!(commands::valid_conference_id(conference_id));
        }
    }
    let identity = crate::auth::Identity {
        account_id: "a".into(),
        superduper_admin: false,
        publish: false,
        customer_id: None,
        agent_id: None,
        permissions: Default::default(),
        expires_at: None,
        admin: false,
        commands: true,
        file_credential: None,
    };
    let Ok(prepared) = commander.authorize(&identity, command) else {
        return;
    };
    let words = prepared.routing_key.split('.').count();
    match prepared.exchange {
        "metaflow" => assert_eq!(words, 4, "{}", prepared.routing_key),
        _ => assert_eq!(words, 3, "{}", prepared.routing_key),
    }
    assert!(!prepared
        .routing_key
        .split('.')
        .any(|w| w == "*" || w == "#"));
    let mut body = prepared.body.clone();
    assert!(simd_json::to_tape(&mut body).is_ok(), "the body is JSON");
}
