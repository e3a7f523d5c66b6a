//! Clients behind a load balancer: which peers are trusted proxies (`trusted_proxies`), the PROXY
//! protocol header (v1 text, v2 binary) such a proxy may send first on a connection, and
//! `X-Forwarded-For` for the REST API. The client address so learned is the one per-IP limits,
//! listings' `source` and logs use.
//!
//! The header is decoded by the `ppp` crate; this module bounds it first. A v2 header's length
//! field is the client's word: a header longer than [`MAX_HEADER_BYTES`] is refused as soon as its
//! length field is read, so a connection never holds more than that while its preface is read.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;

/// The v2 signature (12 bytes), then version/command, family/protocol and a 16-bit length.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;
/// v1's own maximum ("PROXY" line with CRLF).
const V1_MAX: usize = 107;
/// The longest header taken: v2's fixed part, the largest address block (UNIX, 216 bytes) and
/// room for a load balancer's TLVs (AWS NLB, HAProxy's `proxy-v2-options`).
pub const MAX_HEADER_BYTES: usize = 1024;

/// Connections refused for their PROXY header on the REST listener (the shards count theirs).
pub static REST_REFUSALS: AtomicU64 = AtomicU64::new(0);

/// The addresses and CIDR blocks whose connections may carry a PROXY header and whose
/// `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A comma-separated list of addresses (`10.0.0.7`, `::1`) and CIDR blocks (`10.0.0.0/8`).
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(format!("`{item}` is not an address or a CIDR block")),
                },
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is (in) one of the entries; an IPv4-mapped IPv6 address counts as its IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The list as configured (canonical spelling), comma-separated.
    pub fn to_text(&self) -> String {
        let items: Vec<String> = self.0.iter().map(|net| net.to_string()).collect();
        items.join(",")
    }

    /// The client of a REST request from `peer` with these `X-Forwarded-For` values (in header
    /// order): the right-most address that is not itself a trusted proxy, walking left only
    /// through trusted hops. A peer that is not trusted is the client, whatever it claims; an
    /// unparsable entry stops the walk at the hop that added it.
    pub fn forwarded_client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match parse_forwarded_ip(hop) {
                Some(ip) => {
                    client = canonical(ip);
                    if !self.contains(client) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded_ip(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener's view of an IPv4 client).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// Not a PROXY header: the connection's own protocol starts here.
    Absent,
    /// Could still be a PROXY header: read more (at most [`MAX_HEADER_BYTES`] in all).
    Incomplete,
    /// A whole header of `len` bytes. `source`: the client it names (`None`: v2 LOCAL, v1
    /// UNKNOWN or an address family without one - the connection is the proxy's own).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// A PROXY header, malformed or over the bound.
    Invalid(&'static str),
}

/// Reads a PROXY header at the start of `input`, if there is one.
pub fn parse(input: &[u8]) -> Preface {
    if input.is_empty() {
        return Preface::Incomplete;
    }
    let v2 = prefix_match(input, V2_SIGNATURE);
    let v1 = prefix_match(input, b"PROXY ");
    match (v2, v1) {
        (Match::No, Match::No) => Preface::Absent,
        (Match::Partial, _) | (_, Match::Partial) => Preface::Incomplete,
        (Match::Whole, _) => parse_v2(input),
        (_, Match::Whole) => parse_v1(input),
    }
}

enum Match {
    No,
    /// `input` is shorter than the signature and begins it.
    Partial,
    Whole,
}

fn prefix_match(input: &[u8], signature: &[u8]) -> Match {
    if input.len() < signature.len() {
        if signature.starts_with(input) {
            Match::Partial
        } else {
            Match::No
        }
    } else if input.starts_with(signature) {
        Match::Whole
    } else {
        Match::No
    }
}

fn parse_v2(input: &[u8]) -> Preface {
    if input.len() < V2_FIXED {
        return Preface::Incomplete;
    }
    let declared = u16::from_be_bytes([input[14], input[15]]) as usize;
    if V2_FIXED + declared > MAX_HEADER_BYTES {
        return Preface::Invalid("PROXY v2 header longer than 1024 bytes");
    }
    let header = match ppp::v2::Header::try_from(input) {
        Ok(header) => header,
        Err(ppp::v2::ParseError::Incomplete(_)) | Err(ppp::v2::ParseError::Partial(..)) => {
            return Preface::Incomplete
        }
        Err(_) => return Preface::Invalid("malformed PROXY v2 header"),
    };
    let source = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => None,
        (_, ppp::v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        (_, ppp::v2::Addresses::IPv6(a)) => Some(SocketAddr::new(
            canonical(IpAddr::V6(a.source_address)),
            a.source_port,
        )),
        _ => None,
    };
    // TLVs are the proxy's business; each must still fit inside the header.
    if header.tlvs().any(|tlv| tlv.is_err()) {
        return Preface::Invalid("malformed PROXY v2 TLV");
    }
    Preface::Header {
        len: header.len(),
        source,
    }
}

fn parse_v1(input: &[u8]) -> Preface {
    let Some(cr) = input.iter().take(V1_MAX).position(|&b| b == b'\r') else {
        return if input.len() >= V1_MAX {
            Preface::Invalid("PROXY v1 header longer than 107 bytes")
        } else {
            Preface::Incomplete
        };
    };
    if input.len() < cr + 2 {
        return Preface::Incomplete;
    }
    if input[cr + 1] != b'\n' {
        return Preface::Invalid("malformed PROXY v1 header");
    }
    let header = match ppp::v1::Header::try_from(&input[..cr + 2]) {
        Ok(header) => header,
        Err(_) => return Preface::Invalid("malformed PROXY v1 header"),
    };
    let source = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(
            canonical(IpAddr::V6(a.source_address)),
            a.source_port,
        )),
        ppp::v1::Addresses::Unknown => None,
    };
    Preface::Header {
        len: cr + 2,
        source,
    }
}

/// Counts a REST connection refused for its PROXY header.
pub fn count_rest_refusal() {
    REST_REFUSALS.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn each_is(inputs: &[&[u8]], want: Preface) {
        for input in inputs {
            assert_eq!(parse(input), want, "{input:?}");
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_headers_name_the_client() {
        let text = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 5555\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(text),
            Preface::Header {
                len: 44,
                source: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        let six = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert_eq!(
            parse(six),
            Preface::Header {
                len: six.len(),
                source: Some("[2001:db8::7]:4000".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Preface::Header {
                len: 15,
                source: None
            }
        );
        each_is(
            &[b"P", b"PROX", b"PROXY TCP4 203.0.113.7", b"PROXY UNKNOWN\r"],
            Preface::Incomplete,
        );
        for bad in [
            &b"PROXY TCP4 nonsense 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        ] {
            assert!(matches!(parse(bad), Preface::Invalid(_)), "{bad:?}");
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&long), Preface::Invalid(_)));
    }

    #[test]
    fn v2_headers_name_the_client_and_are_bounded() {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&5555u16.to_be_bytes());
        let header = v2(1, 0x11, &body);
        let mut stream = header.clone();
        stream.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&stream),
            Preface::Header {
                len: 28,
                source: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Preface::Incomplete, "cut at {cut}");
        }
        // LOCAL: the proxy's own connection (a health check).
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Preface::Header {
                len: 16,
                source: None
            }
        );
        // The length field is refused before the bytes it promises arrive.
        let mut huge = v2(1, 0x11, &body);
        huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert!(matches!(parse(&huge[..20]), Preface::Invalid(_)));
        // Addresses that do not fit, a bad command, a TLV past the end.
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Preface::Invalid(_)
        ));
        assert!(matches!(parse(&v2(7, 0x11, &body)), Preface::Invalid(_)));
        let mut tlv = body.clone();
        tlv.extend_from_slice(&[0x04, 0x00, 0x09, 1]);
        assert!(matches!(parse(&v2(1, 0x11, &tlv)), Preface::Invalid(_)));
    }

    #[test]
    fn other_protocols_are_not_headers() {
        each_is(
            &[
                b"GET / HTTP/1.1\r\n",
                b"\x16\x03\x01",
                b"POST /v2",
                b"\r\n\r\nX",
            ],
            Preface::Absent,
        );
    }

    #[test]
    fn trust_and_forwarded_for() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1,::1").unwrap();
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.example").is_err());
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let client = |peer: &str, headers: &[&str]| {
            trusted.forwarded_client(ip(peer), headers.iter().copied())
        };
        // The right-most untrusted hop; an untrusted peer is believed about nothing.
        assert_eq!(
            client("127.0.0.1", &["198.51.100.1, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client("127.0.0.1", &["198.51.100.1", "203.0.113.9, 10.0.0.5"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client("203.0.113.50", &["198.51.100.1"]),
            ip("203.0.113.50")
        );
        assert_eq!(client("127.0.0.1", &[]), ip("127.0.0.1"));
        assert_eq!(client("127.0.0.1", &["garbage, 10.0.0.5"]), ip("10.0.0.5"));
        assert_eq!(
            client("127.0.0.1", &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
    }
}
