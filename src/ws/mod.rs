//! WebSocket (RFC 6455), server side, written for the shard's needs: the upgrade handshake and the
//! frame codec, as pure functions over byte buffers. No I/O here: the shard reads and writes the
//! bytes, so an idle socket holds no buffer (see `frame`).
//!
//! - [`handshake`]: validates an upgrade request and builds the `101` answer or a refusal;
//!   path, query and headers go to the dialect layer, which may refuse with its own status.
//! - [`frame`]: the inbound reader (masking, fragmentation, control frames, close codes, UTF-8,
//!   maximum message size) and the outbound encoder (unmasked, so one encoding serves all sockets).

pub mod frame;
pub mod handshake;

/// A close status code (RFC 6455 7.4), plus Horizon's own in the 4000 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The server is shutting down.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// Masking, framing or close-handshake violations.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// Binary messages: Horizon speaks JSON text only.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// Text that is not UTF-8.
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// Policy: a slow consumer under the `close` policy.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// A message over the configured maximum size.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// Horizon: the socket's token expired.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4001);
    /// Closed by an operator (`DELETE /v2/accounts/{A}/websockets[/{ID}]`).
    pub const CLOSED_BY_ADMIN: CloseCode = CloseCode(4003);

    /// Whether a peer may send this code in a close frame (1004-1006 and 1015 are reserved for
    /// reporting, 1016-2999 are unassigned, below 1000 unused).
    pub fn is_valid_on_the_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}
