//! A session driven without sockets: the dialect under a real binding table and a connection
//! record with no descriptor. For the fuzz targets (`fuzz/`) and the replay of their corpora in
//! `cargo test`; nothing in the gateway uses it.

use std::cell::RefCell;
use std::rc::Rc;

use super::bindings::{BindingTable, Subscriptions};
use super::conn::Conn;
use super::session::{Reply, Session, SessionFactory};
use crate::ws::handshake::Request;

pub struct Harness {
    table: RefCell<BindingTable>,
    conn: Rc<RefCell<Conn>>,
    session: Box<dyn Session>,
    now: u32,
}

impl Harness {
    /// Opens a session as the shard would for `request`; `None` when the dialect refuses it.
    pub fn open(factory: &dyn SessionFactory, request: &Request) -> Option<Harness> {
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let session = factory.open(request, peer).ok()?;
        Some(Harness {
            table: RefCell::new(BindingTable::default()),
            conn: Rc::new(RefCell::new(Conn::detached(1 << 20))),
            session,
            now: 0,
        })
    }

    /// One client text message; the reply as the shard would queue it (a deferred reply is
    /// dropped unpolled, as when the socket leaves first).
    pub fn text(&mut self, text: &str) -> Option<String> {
        self.now += 1;
        let mut subscriptions = Subscriptions {
            table: &self.table,
            conn: &self.conn,
            now: self.now,
            instance: 0,
            last_offset: None,
        };
        match self.session.on_text(text, &mut subscriptions) {
            Reply::Text(text) => Some(text),
            Reply::Close(_, reason) => Some(reason),
            Reply::Resumed(text, _) => Some(text),
            Reply::None | Reply::Later(_) | Reply::Hold(_) => None,
        }
    }

    /// Client bindings the socket holds in the shard's table.
    pub fn bindings(&self) -> usize {
        self.conn.borrow().bindings.len()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // As the shard does when a socket ends: out of every binding, then the session goes.
        self.table.borrow_mut().unsubscribe_all(&self.conn);
    }
}
