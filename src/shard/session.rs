//! The seam between a shard and a dialect: the shard owns sockets and frames, a dialect decides
//! who may connect and what text messages mean. Dialects (Kazoo blackhole, VoIPBin) implement
//! these traits; they know nothing of sockets.

use std::net::SocketAddr;

use super::bindings::Subscriptions;
use crate::ws::handshake::Request;
use crate::ws::CloseCode;

/// An HTTP answer that refuses an upgrade (VoIPBin's 401 with its JSON body, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRefusal {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Decides, at the handshake, whether a socket opens and with which session. Shared by every
/// shard, so it is `Send + Sync`.
pub trait SessionFactory: Send + Sync + 'static {
    fn open(&self, request: &Request, peer: SocketAddr) -> Result<Box<dyn Session>, HttpRefusal>;
}

/// What a session answers to a client's text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    None,
    /// A text frame back to this client.
    Text(String),
    /// Close the socket with this code and reason.
    Close(CloseCode, String),
}

/// One socket's dialect state; lives on the socket's shard.
pub trait Session {
    /// A client's text message; `subscriptions` acts on this socket's bindings.
    fn on_text(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply;

    /// The dialect's notice that `skipped` events were dropped for this slow socket, sent once
    /// its queue has drained (the `drop` slow-consumer policy). `None` sends nothing.
    fn lag_notice(&self, skipped: u64) -> Option<String> {
        let _ = skipped;
        None
    }
}
