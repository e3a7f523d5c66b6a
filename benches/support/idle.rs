//! Shared by the benchmarks that only open sockets: a session that accepts everyone and ignores
//! messages. Include with `#[path = "support/idle.rs"] mod idle;`.

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
