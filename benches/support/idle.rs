//! Shared by the benchmarks that only open sockets: a session that accepts everyone and ignores
//! messages, and the client's upgrade. Include with `#[path = "support/idle.rs"] mod idle;`.

use std::io::{Read, Write};
use std::net::SocketAddr;

use horizon::shard::{HttpRefusal, Reply, Session, SessionFactory, Subscriptions};
use horizon::ws::handshake::Request;

/// Idle sockets, nothing else.
pub struct Idle;

impl Session for Idle {
    fn on_text(&mut self, _text: &str, _subscriptions: &mut Subscriptions<'_>) -> Reply {
        Reply::None
    }
}

pub struct IdleFactory;

impl SessionFactory for IdleFactory {
    fn open(&self, _request: &Request, _peer: SocketAddr) -> Result<Box<dyn Session>, HttpRefusal> {
        Ok(Box::new(Idle))
    }
}

/// The client side of the upgrade on `stream` (connection `i`): the request, then the `101`.
pub fn upgrade(stream: &mut (impl Read + Write + ?Sized), i: usize) {
    let request = "GET /idle HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: \
        Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = [0u8; 256];
    let mut got = 0;
    while !answer[..got].ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut answer[got..]).unwrap();
        assert!(n > 0, "connection {i} closed during the handshake");
        got += n;
    }
    assert!(answer.starts_with(b"HTTP/1.1 101"), "connection {i}");
}
