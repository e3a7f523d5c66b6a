//! The TLS record layer of one wss socket, kept in its [`Conn`] like the rest of its state: no
//! task, no future, and no buffer of its own while it waits.
//!
//! rustls's *unbuffered* server connection is used because it leaves every buffer to the caller:
//! received ciphertext is decrypted straight out of the buffer the backend read into (the shard's
//! scratch, or an io_uring provided buffer), and only a record split across reads is kept, in
//! [`TlsLayer`]'s `pending`, until it completes. rustls's buffered connection keeps a 4 KiB read
//! buffer per socket for good, which alone would exceed an idle TLS socket's budget (4 KiB).
//!
//! Output: the frames queued for the socket (an event frame shared by many sockets, a reply, a
//! control frame) stay shared plaintext in its queue until they are about to be written; then a
//! batch is encrypted into one buffer of this socket's own (`Outbound::seal`). Once encrypted, a
//! record must be sent (its sequence number is spent).
//!
//! [`Conn`]: super::conn::Conn

use std::sync::Arc;

use bytes::Bytes;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::ServerConfig;

/// The TLS record header's content type of a handshake record: what a TLS client sends first.
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;
/// Wire bytes a record adds to its plaintext, at most (header, TLS 1.2's explicit nonce or
/// TLS 1.3's inner content type, the AEAD tag), with room to spare.
pub(crate) const RECORD_OVERHEAD: usize = 64;
/// The largest plaintext of one record.
const RECORD_PLAINTEXT: usize = 16 * 1024;
/// Received bytes a socket may hold that are not yet whole records. One record is at most
/// 16 KiB + 2 KiB (TLS 1.2's largest ciphertext); rustls would join a fragmented handshake
/// message of up to 64 KiB, but no client's ClientHello or Finished comes near this.
const PENDING_MAX: usize = 32 * 1024;

pub(crate) struct TlsLayer {
    session: UnbufferedServerConnection,
    /// Received bytes not yet a whole record (or a handshake message rustls is joining); empty
    /// and unallocated otherwise; at most [`PENDING_MAX`].
    pending: Vec<u8>,
    /// Whether the client has sent anything yet (the first bytes tell a plain HTTP client).
    started: bool,
    close_notify_sent: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("established", &self.is_established())
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// What a batch of received bytes did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Handled; any plaintext and records to send were appended.
    Open,
    /// The client sent close_notify: no more data will come.
    PeerClosed,
    /// The first bytes are not TLS but look like a plain HTTP request.
    PlainHttp,
    /// A TLS error (bad record, failed handshake): the alert to send, if any, was appended.
    Failed(String),
}

/// What happens to a state of the connection while input is handled.
enum Step {
    Again,
    Stop,
    Closed,
}

impl TlsLayer {
    pub fn new(config: &Arc<ServerConfig>) -> Result<TlsLayer, rustls::Error> {
        Ok(TlsLayer {
            session: UnbufferedServerConnection::new(config.clone())?,
            pending: Vec::new(),
            started: false,
            close_notify_sent: false,
        })
    }

    /// Whether the handshake is done (application data flows).
    pub fn is_established(&self) -> bool {
        !self.session.is_handshaking()
    }

    /// Bytes just received: the plaintext they carry is appended to `plain`; handshake records,
    /// session tickets and alerts to send, to `wire`.
    pub fn receive(
        &mut self,
        data: &mut [u8],
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Received {
        if data.is_empty() {
            return Received::Open;
        }
        if !self.started {
            self.started = true;
            if data[0] != HANDSHAKE_RECORD && data[0].is_ascii_uppercase() {
                return Received::PlainHttp;
            }
        }
        if self.pending.is_empty() {
            // The common case: whole records straight out of the buffer read into.
            let (used, outcome) = process(&mut self.session, data, plain, wire);
            if outcome == Received::Open && used < data.len() {
                if data.len() - used > PENDING_MAX {
                    return Received::Failed("incomplete records over the bound".into());
                }
                self.pending.extend_from_slice(&data[used..]);
            }
            return outcome;
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(data);
        let (used, outcome) = process(&mut self.session, &mut pending, plain, wire);
        if outcome == Received::Open && used < pending.len() {
            pending.drain(..used);
            self.pending = pending;
        }
        if self.pending.len() > PENDING_MAX {
            self.pending = Vec::new();
            return Received::Failed("incomplete records over the bound".into());
        }
        outcome
    }

    /// `plain` as records of this connection, appended to `out` for the wire.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.write(out, |traffic, out| {
            let records = plain.len().div_ceil(RECORD_PLAINTEXT).max(1);
            let start = out.len();
            out.resize(start + plain.len() + records * RECORD_OVERHEAD, 0);
            let written = match traffic.encrypt(plain, &mut out[start..]) {
                Ok(n) => n,
                Err(EncryptError::InsufficientSize(size)) => {
                    out.resize(start + size.required_size, 0);
                    traffic
                        .encrypt(plain, &mut out[start..])
                        .map_err(|e| e.to_string())?
                }
                Err(e) => return Err(e.to_string()),
            };
            out.truncate(start + written);
            Ok(())
        })
    }

    /// The close_notify alert, once (and only once the handshake is done).
    pub fn close_notify(&mut self) -> Option<Bytes> {
        if self.close_notify_sent || !self.is_established() {
            return None;
        }
        self.close_notify_sent = true;
        let mut out = Vec::new();
        self.write(&mut out, |traffic, out| {
            let start = out.len();
            out.resize(start + RECORD_OVERHEAD, 0);
            let written = traffic
                .queue_close_notify(&mut out[start..])
                .map_err(|e| e.to_string())?;
            out.truncate(start + written);
            Ok(())
        })
        .ok()?;
        Some(Bytes::from(out))
    }

    /// Brings the connection to the state where it may encrypt (sending whatever it has to
    /// send first, into `out`) and runs `encrypt` there.
    fn write(
        &mut self,
        out: &mut Vec<u8>,
        encrypt: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut encrypt = Some(encrypt);
        // Each turn takes one step (a record encoded, a transmission acknowledged); the few a
        // connection can have queued are well under this.
        for _ in 0..64 {
            // The same buffer as the reads (whatever record is incomplete in it stays so): the
            // connection's view of what it has received is never pointed elsewhere.
            let status = self.session.process_tls_records(&mut self.pending);
            let discard = status.discard;
            let done = match status.state.map_err(|e| e.to_string())? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let encrypt = encrypt.take().ok_or("encrypted twice")?;
                    encrypt(&mut traffic, out)?;
                    true
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut data, out).map_err(|e| e.to_string())?;
                    false
                }
                ConnectionState::TransmitTlsData(data) => {
                    // Queued ahead of what follows, which is as good as sent.
                    data.done();
                    false
                }
                ConnectionState::BlockedHandshake => return Err("handshake not done".into()),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err("connection closed".into())
                }
                // Every record received was handled when it arrived.
                _ => return Err("unread data".into()),
            };
            if discard > 0 {
                self.pending.drain(..discard.min(self.pending.len()));
            }
            if done {
                return Ok(());
            }
        }
        Err("the TLS connection made no progress".into())
    }
}

/// Handles the whole records at the front of `buf`: returns how many bytes they took.
fn process(
    session: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    wire: &mut Vec<u8>,
) -> (usize, Received) {
    let mut at = 0;
    loop {
        let status = session.process_tls_records(&mut buf[at..]);
        let mut discard = status.discard;
        let step = match status.state {
            Err(e) => {
                // rustls has queued the alert that says why: send it.
                at += discard;
                fatal_alert(session, &mut buf[at..], wire);
                return (at, Received::Failed(e.to_string()));
            }
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            plain.extend_from_slice(record.payload);
                        }
                        Err(e) => return (at + discard, Received::Failed(e.to_string())),
                    }
                }
                Step::Again
            }
            Ok(ConnectionState::EncodeTlsData(mut data)) => match encode(&mut data, wire) {
                Ok(()) => Step::Again,
                Err(e) => return (at + discard, Received::Failed(e.to_string())),
            },
            Ok(ConnectionState::TransmitTlsData(data)) => {
                data.done();
                Step::Again
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Step::Closed,
            // Blocked (more bytes needed), WriteTraffic (nothing more to read), and early data,
            // which the configuration never accepts.
            Ok(_) => Step::Stop,
        };
        at += discard;
        match step {
            Step::Again => {}
            Step::Stop => return (at, Received::Open),
            Step::Closed => return (buf.len(), Received::PeerClosed),
        }
    }
}

/// After an error: the alert rustls queued for the peer, appended to `wire` (best effort).
fn fatal_alert(session: &mut UnbufferedServerConnection, rest: &mut [u8], wire: &mut Vec<u8>) {
    for _ in 0..4 {
        let status = session.process_tls_records(rest);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                if encode(&mut data, wire).is_err() {
                    return;
                }
            }
            Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
            _ => return,
        }
    }
}

/// A handshake record (or alert) rustls has ready, appended to `out`.
fn encode(
    data: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.resize(start + 4096, 0);
    let written = match data.encode(&mut out[start..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(size)) => {
            out.resize(start + size.required_size, 0);
            data.encode(&mut out[start..])?
        }
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    out.truncate(start + written);
    Ok(())
}
