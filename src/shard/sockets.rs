//! The shard's socket registry: a slab of socket records addressed by [`Token`] (slot and
//! generation), the same token the readiness set and the service list carry.
//!
//! A record is what a socket is between readiness reports: its [`Conn`] (shared with the bindings
//! that deliver to it) and its input side (the dialect session, the frame reader and any partial
//! frame), which only the shard's turn touches. No task, no future, no buffer of its own while idle.

use std::cell::RefCell;
use std::rc::Rc;

use super::conn::Conn;
use super::poller::Token;
use super::session::Session;
use crate::ws::frame::Reader;

/// The input side of a socket.
pub(crate) struct Input {
    /// The dialect's session; `None` until the upgrade is accepted.
    pub session: Option<Box<dyn Session>>,
    pub reader: Reader,
    /// Bytes of an incomplete upgrade request or frame (empty and unallocated otherwise).
    pub partial: Vec<u8>,
}

pub(crate) struct Socket {
    pub conn: Rc<RefCell<Conn>>,
    pub input: Input,
}

struct Entry {
    generation: u32,
    socket: Option<Socket>,
}

#[derive(Default)]
pub(crate) struct SocketTable {
    entries: Vec<Entry>,
    free: Vec<u32>,
    len: usize,
}

impl SocketTable {
    /// The token the next [`SocketTable::insert`] will use.
    pub fn next_token(&self) -> Token {
        match self.free.last() {
            Some(&slot) => Token {
                slot,
                generation: self.entries[slot as usize].generation,
            },
            None => Token {
                slot: self.entries.len() as u32,
                generation: 0,
            },
        }
    }

    /// Stores `socket` under [`SocketTable::next_token`] and returns that token.
    pub fn insert(&mut self, socket: Socket) -> Token {
        let token = self.next_token();
        match self.free.pop() {
            Some(slot) => self.entries[slot as usize].socket = Some(socket),
            None => self.entries.push(Entry {
                generation: 0,
                socket: Some(socket),
            }),
        }
        self.len += 1;
        token
    }

    pub fn get(&self, token: Token) -> Option<&Socket> {
        self.entries
            .get(token.slot as usize)
            .filter(|e| e.generation == token.generation)
            .and_then(|e| e.socket.as_ref())
    }

    pub fn get_mut(&mut self, token: Token) -> Option<&mut Socket> {
        self.entries
            .get_mut(token.slot as usize)
            .filter(|e| e.generation == token.generation)
            .and_then(|e| e.socket.as_mut())
    }

    /// Takes the socket out; its slot's next occupant gets a new generation, so stale tokens
    /// (a readiness report or a scheduled flush for this socket) find nothing.
    pub fn remove(&mut self, token: Token) -> Option<Socket> {
        let entry = self
            .entries
            .get_mut(token.slot as usize)
            .filter(|e| e.generation == token.generation)?;
        let socket = entry.socket.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(token.slot);
        self.len -= 1;
        Some(socket)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Socket> {
        self.entries.iter().filter_map(|e| e.socket.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle socket is its `Conn` (inside `Rc<RefCell<..>>`) and its registry entry, and the
    /// idle-memory budget (1 KiB of RSS per socket, `benches/idle_connections.rs`) rests on these
    /// staying small; a field added here should be a deliberate choice. (192 bytes since wss: the
    /// pointer to a socket's TLS layer came in, the 16-byte accept time went for the 4-byte
    /// shard clock second already kept.)
    #[test]
    fn an_idle_socket_stays_small() {
        assert!(
            std::mem::size_of::<Conn>() <= 208,
            "{}",
            std::mem::size_of::<Conn>()
        );
        assert!(std::mem::size_of::<Entry>() <= 104);
    }
}
