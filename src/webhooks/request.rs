//! One HTTP request to a hook: the bytes (Kazoo's encodings), the headers (Standard Webhooks'
//! id, timestamp and signature), the outcome, and the guard that keeps hooks off private
//! networks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use sha2::Sha256;

use super::hook::{Format, Hook, Verb};
use super::payload::{append_query, form_encode, with_custom_data};
use super::Payload;

/// How much of a response body the attempts log keeps.
pub const RESPONSE_BODY_LOGGED: usize = 1024;
/// How much of a request body the attempts log keeps.
pub const REQUEST_BODY_LOGGED: usize = 4096;

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub method: Verb,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    /// The body; for GET, the query string the payload was sent as (signed, logged, not sent).
    pub body: Vec<u8>,
}

/// The bytes of one attempt of `delivery_id` to `hook`, at `now`.
pub fn prepare(hook: &Hook, delivery_id: &str, payload: &Payload, now: SystemTime) -> Prepared {
    // Hooks without custom data share the event's encodings.
    let merged = hook
        .custom_data
        .as_ref()
        .map(|custom| with_custom_data(&payload.fields, Some(custom)));
    let form = || match &merged {
        Some(m) => form_encode(m),
        None => payload.form().to_string(),
    };
    let (url, body, content_type) = match (hook.verb, hook.format) {
        (Verb::Get, _) => {
            let query = form();
            (append_query(&hook.uri, &query), query.into_bytes(), None)
        }
        (_, Format::FormData) => (
            hook.uri.clone(),
            form().into_bytes(),
            Some("application/x-www-form-urlencoded"),
        ),
        (_, Format::Json) => {
            let body = match &merged {
                Some(m) => serde_json::to_vec(m).unwrap_or_default(),
                None => payload.json().to_vec(),
            };
            (hook.uri.clone(), body, Some("application/json"))
        }
    };
    let timestamp = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let mut headers = vec![
        ("x-hook-id", hook.id.clone()),
        ("x-account-id", hook.account_id.clone()),
        ("webhook-id", delivery_id.to_string()),
        ("webhook-timestamp", timestamp.clone()),
    ];
    if let Some(content_type) = content_type {
        headers.push(("content-type", content_type.to_string()));
    }
    // For GET, `body` is the query string: what is signed, not what is sent as a body.
    if let Some(secret) = &hook.secret {
        headers.push((
            "webhook-signature",
            sign(secret, delivery_id, &timestamp, &body),
        ));
    }
    Prepared {
        method: hook.verb,
        url,
        headers,
        body,
    }
}

/// Standard Webhooks' signature: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{content}")>`;
/// the key is the base64 after `whsec_` when the secret has that prefix, else the secret's bytes.
/// The content is the body (for GET, the query string the payload was sent as).
pub fn sign(secret: &str, id: &str, timestamp: &str, content: &[u8]) -> String {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(content);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// What came of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Any 2xx.
    Success { status: u16, body: String },
    /// 5xx, 408, 429, a timeout or a transport error: worth another attempt. `after` is the
    /// receiver's `Retry-After`, when it gave one.
    Retry {
        status: Option<u16>,
        body: String,
        reason: String,
        after: Option<Duration>,
    },
    /// Anything else (another 4xx, a redirect, a refused address): not retried.
    Fail {
        status: Option<u16>,
        body: String,
        reason: String,
    },
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Success { status, .. } => Some(*status),
            Outcome::Retry { status, .. } | Outcome::Fail { status, .. } => *status,
        }
    }
}

/// Sends `request` and reads at most [`RESPONSE_BODY_LOGGED`] bytes of the answer.
pub async fn send(client: &reqwest::Client, request: &Prepared, allow_private: bool) -> Outcome {
    let url = match reqwest::Url::parse(&request.url) {
        Ok(url) => url,
        Err(_) => {
            return Outcome::Fail {
                status: None,
                body: String::new(),
                reason: "invalid uri".into(),
            }
        }
    };
    // The resolver filters names; an address written in the URI never reaches it.
    if !allow_private {
        if let Some(ip) = literal_ip(&url) {
            if !public(ip) {
                return Outcome::Fail {
                    status: None,
                    body: String::new(),
                    reason: format!("refused: {ip} is a loopback, private or link-local address"),
                };
            }
        }
    }
    let method = match request.method {
        Verb::Get => reqwest::Method::GET,
        Verb::Post => reqwest::Method::POST,
        Verb::Put => reqwest::Method::PUT,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("horizon-webhooks/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in &request.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let mut builder = client.request(method, url).headers(headers);
    if request.method != Verb::Get {
        builder = builder.body(request.body.clone());
    }
    let mut response = match builder.send().await {
        Ok(response) => response,
        Err(e) => {
            let reason = if e.is_timeout() {
                "request timed out".to_string()
            } else if e.is_connect() {
                format!("cannot connect: {}", root_cause(&e))
            } else {
                format!("transport error: {}", root_cause(&e))
            };
            if reason.contains(PRIVATE_REFUSAL) {
                return Outcome::Fail {
                    status: None,
                    body: String::new(),
                    reason,
                };
            }
            return Outcome::Retry {
                status: None,
                body: String::new(),
                reason,
                after: None,
            };
        }
    };
    let status = response.status().as_u16();
    let after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let _ = response.headers().get(CONTENT_TYPE);
    let mut body = Vec::new();
    let mut timed_out = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_BODY_LOGGED.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= RESPONSE_BODY_LOGGED {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                timed_out = e.is_timeout();
                break;
            }
        }
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    match status {
        200..=299 => Outcome::Success { status, body },
        408 | 429 | 500..=599 => Outcome::Retry {
            status: Some(status),
            body,
            reason: "bad response code".into(),
            after,
        },
        _ if timed_out => Outcome::Retry {
            status: Some(status),
            body,
            reason: "request timed out".into(),
            after: None,
        },
        _ => Outcome::Fail {
            status: Some(status),
            body,
            reason: "bad response code".into(),
        },
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Whether an address is a public one: not loopback, private (RFC 1918, unique local),
/// link-local, carrier-grade NAT, unspecified, multicast or broadcast.
pub fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

const PRIVATE_REFUSAL: &str = "resolves only to loopback, private or link-local addresses";

/// Why a hook URI is refused at save time, if it is.
pub async fn check_target(uri: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let url = reqwest::Url::parse(uri).map_err(|_| "not a URI".to_string())?;
    if let Some(ip) = literal_ip(&url) {
        return if public(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is a loopback, private or link-local address"))
        };
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let resolved = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host(format!("{host}:{port}")),
    )
    .await;
    match resolved {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.iter().any(|a| !public(a.ip())) {
                Err(format!(
                    "{host} resolves to a loopback, private or link-local address"
                ))
            } else {
                Ok(())
            }
        }
        // A name that does not resolve now may later; delivery checks again.
        _ => Ok(()),
    }
}

/// The DNS resolver of the delivery client: system resolution, with loopback, private and
/// link-local answers removed unless allowed, so that a hook's name cannot be pointed at an
/// internal service after it was saved.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} {PRIVATE_REFUSAL}").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The delivery client: pooled connections, bounded connect and request times, no redirects
/// (a redirect could lead anywhere), the guarded resolver.
pub fn client(
    connect_timeout: Duration,
    request_timeout: Duration,
    allow_private: bool,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        // Idle connections are kept (for 30 s): a hook that fans out in bursts reuses them
        // instead of opening a connection per request.
        .pool_idle_timeout(Duration::from_secs(30))
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .build()
        .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860:4860::8888", "1.1.1.1"] {
            assert!(public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The key of a whsec_ secret is its base64 payload.
        let a = sign("whsec_c2VjcmV0", "msg_1", "1700000000", b"{}");
        let b = sign("secret", "msg_1", "1700000000", b"{}");
        assert_eq!(a, b);
        assert!(a.starts_with("v1,"));
    }
}
