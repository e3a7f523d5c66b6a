//! The seam between a shard and a dialect: the shard owns sockets and frames, a dialect decides
//! who may connect and what text messages mean. Dialects (Kazoo blackhole, VoIPBin) implement
//! these traits; they know nothing of sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

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
pub enum Reply {
    None,
    /// A text frame back to this client.
    Text(String),
    /// Close the socket with this code and reason.
    Close(CloseCode, String),
    /// The answer once something else has happened (Kazoo: the AMQP bind is confirmed). The
    /// socket keeps reading meanwhile; the answer is queued when the future resolves, unless the
    /// socket is gone by then.
    Later(Pin<Box<dyn Future<Output = Reply>>>),
    /// A reply, then frames right behind it (a resume's replay, docs/resume.md): queued like
    /// replies, before any event the shard dispatches after this message.
    Resumed(String, Vec<bytes::Bytes>),
    /// Nothing was done: the same message is handed to `on_text` again after this long, and
    /// nothing else the socket sends is read meanwhile (a resume waiting for admission).
    Hold(std::time::Duration),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::None => write!(f, "None"),
            Reply::Text(text) => f.debug_tuple("Text").field(text).finish(),
            Reply::Close(code, reason) => f.debug_tuple("Close").field(code).field(reason).finish(),
            Reply::Later(_) => write!(f, "Later(..)"),
            Reply::Hold(wait) => f.debug_tuple("Hold").field(wait).finish(),
            Reply::Resumed(text, frames) => f
                .debug_tuple("Resumed")
                .field(text)
                .field(&frames.len())
                .finish(),
        }
    }
}

/// One socket's dialect state; lives on the socket's shard.
pub trait Session {
    /// A client's text message; `subscriptions` acts on this socket's bindings.
    fn on_text(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply;

    /// How long the session's credentials stay valid, asked once when the socket opens (a token
    /// given at the handshake). The socket is closed with 4001 `token expired` then, unless the
    /// session moves the deadline with `Subscriptions::set_expiry`.
    fn expires_in(&self) -> Option<std::time::Duration> {
        None
    }

    /// The dialect's notice that `skipped` events were dropped for this slow socket, sent once
    /// its queue has drained (the `drop` slow-consumer policy). `None` sends nothing.
    fn lag_notice(&self, skipped: u64) -> Option<String> {
        let _ = skipped;
        None
    }

    /// Whether the session's credential was revoked (asked after the auth file is reloaded):
    /// the socket is then closed with 4001 `token revoked`.
    fn revoked(&self) -> bool {
        false
    }
}
