//! Connection admission: how many WebSocket connections the node, and one client address, may hold
//! at once (`max_connections`, `max_connections_per_ip`; 0 turns a limit off).
//!
//! Shared by every shard (the kernel spreads one address's connections over all of them), so the
//! counts are atomics and one mutex-guarded map; both are touched once when a connection is
//! accepted and once when it ends, never per frame or per event. A connection counts from its
//! accept, handshake included, so that a client cannot hold more sockets half-open than open. One
//! over a limit is not counted: it is still read up to its upgrade request (bounded in size and
//! time like any handshake) and answered `429` (per address) or `503` (node), then closed.
//!
//! `max_connects_per_sec` caps how fast the node takes new connections (a reconnect storm after
//! another node's drain or death): a one-second window shared by the shards; past it the upgrade
//! is answered `503` with `Retry-After`, and the connection is not counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What [`ConnectionLimits::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Counted; [`ConnectionLimits::release`] must be called once when the connection ends.
    Admitted,
    /// The address holds `max_connections_per_ip` already: `429`.
    TooManyFromAddress,
    /// The node holds `max_connections` already: `503`.
    TooMany,
    /// The node took `max_connects_per_sec` new connections this second: `503` with
    /// `Retry-After`.
    TooFast,
}

/// [`Admission::status`] of [`Admission::TooFast`]: not an HTTP status, so that the upgrade can
/// tell it from the node limit (both are answered `503`).
pub const TOO_FAST: u16 = 2;

impl Admission {
    /// The HTTP status the upgrade is refused with (0 when admitted).
    pub fn status(self) -> u16 {
        match self {
            Admission::Admitted => 0,
            Admission::TooManyFromAddress => 429,
            Admission::TooMany => 503,
            Admission::TooFast => TOO_FAST,
        }
    }
}

#[derive(Debug, Default)]
pub struct ConnectionLimits {
    max: usize,
    per_address: usize,
    total: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
    /// `max_connects_per_sec` (0: none), and the window: (second since `epoch`, taken in it).
    per_second: usize,
    window: Mutex<(u64, usize)>,
    epoch: Option<std::time::Instant>,
}

impl ConnectionLimits {
    pub fn new(max: usize, per_address: usize) -> ConnectionLimits {
        ConnectionLimits {
            max,
            per_address,
            ..ConnectionLimits::default()
        }
    }

    /// These limits, and at most `per_second` new connections a second (0: no limit).
    pub fn with_rate(mut self, per_second: usize) -> ConnectionLimits {
        self.per_second = per_second;
        self.epoch = Some(std::time::Instant::now());
        self
    }

    /// Whether one more connection fits this second's window.
    fn within_rate(&self) -> bool {
        let Some(epoch) = self.epoch.filter(|_| self.per_second != 0) else {
            return true;
        };
        let second = epoch.elapsed().as_secs();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if window.0 != second {
            *window = (second, 0);
        }
        if window.1 >= self.per_second {
            return false;
        }
        window.1 += 1;
        true
    }

    /// Counts a new connection from `address`, unless a limit says no.
    pub fn admit(&self, address: IpAddr) -> Admission {
        if !self.within_rate() {
            return Admission::TooFast;
        }
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if self.max != 0 && total >= self.max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Admission::TooMany;
        }
        if self.per_address != 0 {
            let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            let held = map.entry(address).or_insert(0);
            if *held >= self.per_address {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Admission::TooManyFromAddress;
            }
            *held += 1;
        }
        Admission::Admitted
    }

    /// Gives back what [`ConnectionLimits::admit`] counted for `address`.
    pub fn release(&self, address: IpAddr) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        if self.per_address != 0 {
            let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = map.get_mut(&address) {
                *held -= 1;
                if *held == 0 {
                    map.remove(&address);
                }
            }
        }
    }

    /// Connections counted now.
    pub fn current(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_rate_is_a_window_per_second() {
        let limits = ConnectionLimits::new(0, 0).with_rate(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limits.admit(a), Admission::Admitted);
        }
        assert_eq!(limits.admit(a), Admission::TooFast);
        assert_eq!(Admission::TooFast.status(), TOO_FAST);
        assert_eq!(limits.current(), 3, "a refusal is not counted");
    }

    #[test]
    fn limits_count_per_address_and_per_node_and_give_back() {
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let limits = ConnectionLimits::new(3, 2);
        assert_eq!(limits.admit(a), Admission::Admitted);
        assert_eq!(limits.admit(a), Admission::Admitted);
        assert_eq!(limits.admit(a), Admission::TooManyFromAddress);
        assert_eq!(limits.admit(b), Admission::Admitted);
        assert_eq!(limits.admit(b), Admission::TooMany);
        assert_eq!(limits.current(), 3);
        limits.release(a);
        assert_eq!(limits.admit(b), Admission::Admitted);
        limits.release(a);
        limits.release(b);
        limits.release(b);
        assert_eq!(limits.current(), 0);
        assert!(
            limits.by_address.lock().unwrap().is_empty(),
            "no entry outlives its address"
        );
        let open = ConnectionLimits::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(open.admit(a), Admission::Admitted);
        }
    }
}
