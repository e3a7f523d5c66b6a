//! The native io_uring backend: one ring per shard, driven by the shard itself.
//!
//! - **Accept**: one multishot accept on each of the shard's `SO_REUSEPORT` listeners (plain and
//!   wss); each completion is a new socket (non-blocking, close-on-exec).
//! - **Read**: one multishot receive per socket, into a *provided buffer ring* the shard's
//!   sockets share. The kernel picks a buffer only when data arrives, so an idle socket pins no
//!   buffer and has no future of its own: it is a request in the kernel and a record in the
//!   registry. A completion hands the buffer to the connection's parser and the buffer goes back
//!   to the ring at once. `ENOBUFS` (every buffer in use) ends that receive; it is armed again
//!   once the batch has returned its buffers.
//! - **Write**: a socket's queued frames go out as one send (one frame) or one `sendmsg` (up to
//!   [`FRAMES_PER_SEND`] frames gathered, the shared `Bytes` of the fan-out, never copied), with
//!   `MSG_DONTWAIT` on a non-blocking socket: the kernel runs it inline when the turn submits it
//!   and it never waits holding a stale frame list. A small send (a reply, a narrow fan-out's
//!   frame or two) is queued on the ring with the turn's others; a burst of at least
//!   [`DIRECT_SEND_BYTES`] (wide fan-out) is written at once with `sendmsg`, which measured
//!   cheaper per frame (see the constant). A send that cannot take everything (short, or
//!   `EAGAIN`) arms a one-shot `POLL_ADD(POLLOUT)` instead; when that fires, one send takes
//!   everything queued by then, as epoll's `writev` after `EPOLLOUT` does. At most one send or
//!   writability wait per socket is in flight. The frames of a send in flight are held by the
//!   operation itself, so they live until their completion even if the socket ends first.
//! - **Batching and the wait**: operations are only queued in the submission ring; the shard's
//!   turn (`turn.rs`) submits them all and collects completions in one `io_uring_enter`, which is
//!   also the shard's only wait (with a timeout that ends at the next timer). A delivery batch that
//!   touches ten thousand sockets costs a handful of system calls, not ten thousand `writev`s.
//!   A task woken from another thread (an event on the fan-out ring) writes the executor's wake
//!   eventfd, on which a read is always armed here: its completion ends the wait.
//! - **Registered descriptors**: the ring has a sparse table of fixed files; an accepted socket is
//!   installed at its registry slot, and its receive, sends and writability waits name it by
//!   that index (`IOSQE_FIXED_FILE`), so no operation looks the descriptor up or takes a file
//!   reference of its own. The socket keeps its ordinary descriptor too (for `getpeername`,
//!   `shutdown` and the last-word write of a close frame); at the end it leaves the table.
//!   A socket whose slot is past the table (more sockets than `RLIMIT_NOFILE` allows per
//!   table) uses its descriptor.
//! - **Pause and close**: a paused socket's receive is cancelled (by its exact operation id) and
//!   armed again on resume, after the cancelled one has completed, so two receives never race on
//!   one socket. Ending a socket shuts it down, which completes its receive and any send in flight;
//!   the descriptor is closed at once, and late completions for it find a stale token.
//! - **Completion-queue overflow**: the kernel keeps overflowed completions (`IORING_FEAT_NODROP`)
//!   and the next enter with `GETEVENTS` flushes them; the driver keeps turning until none is left.
//! - **Deferred task work** (`IORING_SETUP_DEFER_TASKRUN` with `SINGLE_ISSUER`, Linux 6.1+):
//!   completion work runs when the shard enters the ring, not as an interrupt of whatever it is
//!   doing; since the shard waits in `io_uring_enter` itself, that is at once. The ring's own
//!   descriptor is registered, so an enter skips the descriptor lookup.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::conn::Conn;
use super::io::{Flushed, FRAMES_PER_SEND};
use super::poller::Token;

/// Submission-queue entries; a delivery batch touching more sockets submits in several steps.
const SQ_ENTRIES: u32 = 4096;
/// Completion-queue entries (the kernel keeps what overflows).
const CQ_ENTRIES: u32 = 4 * SQ_ENTRIES;
/// The provided-buffer group of the shard's receives.
const BUFFER_GROUP: u16 = 0;
/// Bytes per provided buffer: an upgrade request or a client command fits in one; a larger frame
/// takes several receives (it is assembled like any frame split across reads).
pub(crate) const BUFFER_BYTES: usize = 2048;
/// Provided buffers per shard (a power of two). The kernel takes them in ring order, so over
/// time every one is written into and resident: 64 x 2 KiB is 128 KiB per shard (256 x 4 KiB
/// measured 505 B RSS per idle socket at 15,000 sockets, 64 x 4 KiB 401 B). Each is
/// given back in the turn its data is handled, so 64 bound only the receives of one turn; a burst
/// that uses them all sees `ENOBUFS` and its receives are armed again.
const BUFFER_COUNT: u16 = 64;
/// A socket with at least this many bytes queued (a wide fan-out's burst) is written at once
/// with `sendmsg` (`MSG_DONTWAIT`) instead of a send on the ring; less (a reply, the frame or two
/// of a narrow fan-out) is queued on the ring and submitted with the turn's other sends in one
/// enter. Measured on Linux 6.18 (BENCHMARKS.md, "io_uring and epoll side by side"): at wide
/// fan-out the kernel's io_uring send costs more per frame than `sendmsg` (the floor benchmark:
/// 0.84x the frames per CPU-second, 17 % more TCP segments), so ring sends ran 0.8x epoll and
/// direct ones 1.04x; at narrow fan-out through RabbitMQ, ring sends ran 1.12x epoll and direct
/// ones 0.95x (one enter carries many small sends). The small sends go out together at the
/// turn's enter, once the whole delivery batch is queued: at idle fan-out to 100 sockets that
/// costs ~0.05 ms p50 against writing each at once (submitting every 32 sends as they are
/// queued won that back but cost 5 % of the narrow fan-out's deliveries per CPU-second).
const DIRECT_SEND_BYTES: usize = 16 * 1024;
/// Send operations kept for reuse after their completion.
const SPARE_SENDS: usize = 256;
/// `IORING_ENTER_GETEVENTS`: run deferred work, flush overflowed completions, and wait.
const ENTER_GETEVENTS: u32 = 1 << 0;
/// `IORING_ENTER_EXT_ARG`: the argument is an `io_uring_getevents_arg` (a timeout).
const ENTER_EXT_ARG: u32 = 1 << 3;
/// `IORING_ENTER_REGISTERED_RING`: the descriptor given is the ring's registered index.
const ENTER_REGISTERED_RING: u32 = 1 << 4;
/// `IORING_REGISTER_RING_FDS`.
const REGISTER_RING_FDS: libc::c_uint = 20;

/// Fixed-file table entries per shard at most (the kernel also caps a table at the process's
/// `RLIMIT_NOFILE`). 8 bytes of kernel memory each.
const FIXED_FILES_MAX: u32 = 1 << 16;

/// `struct io_uring_getevents_arg`.
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    /// `min_wait_usec` (Linux 6.12+): not used. With one completion wanted it changes nothing,
    /// and waiting for more than one would hold a command's reply back.
    min_wait_usec: u32,
    ts: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// What one completion means for the shard.
#[derive(Debug)]
pub(crate) enum Completion {
    /// A new connection (its descriptor) or an accept error on listener `listener` (an index
    /// into those given to [`Uring::new`]); `ended`: the multishot accept is over and must be
    /// armed again.
    Accepted {
        listener: usize,
        result: io::Result<RawFd>,
        ended: bool,
    },
    /// Data (a buffer), end of stream (0) or an error (negative errno) on a socket's receive;
    /// `ended`: the receive `op` is over and will post nothing more.
    Received {
        token: Token,
        result: i32,
        buffer: Option<u16>,
        ended: bool,
    },
    /// A send completed: bytes written, or a negative errno; `short`: it wrote less than it was
    /// given (the socket's send buffer is full).
    Sent {
        token: Token,
        result: i32,
        short: bool,
    },
    /// A socket whose send buffer was full can take more (or has failed: its send says which).
    Writable { token: Token },
    /// A cancellation or a stale operation: nothing to do.
    Nothing,
}

/// An operation in flight other than a receive. Its slot index and generation form the
/// request's `user_data`, so a slot reused later is never confused with it.
enum Op {
    /// The multishot accept on the listener of this index.
    Accept(usize),
    Send(Box<SendOp>),
    /// A socket's one-shot wait for room in its send buffer.
    Writable(Token),
    /// The read armed on the executor's wake eventfd.
    Wake,
    Cancel,
}

/// Builds a socket's operation on its fixed-file index (`IOSQE_FIXED_FILE`) when it has one, on
/// its descriptor otherwise: `on_socket!(uring, conn, |socket| opcode::X::new(socket, ..).build())`.
macro_rules! on_socket {
    ($uring:expr, $conn:expr, |$socket:ident| $build:expr) => {
        if $conn.token.slot < $uring.fixed_files {
            let $socket = types::Fixed($conn.token.slot);
            $build
        } else {
            let $socket = types::Fd($conn.fd);
            $build
        }
    };
}

/// Marks a receive's `user_data`: a socket has at most one receive in flight, so its token (slot
/// and generation, unique over the shard's life) names it, and it needs no slot of its own.
const RECV_TAG: u64 = 1 << 31;

fn recv_user_data(token: Token) -> u64 {
    (u64::from(token.generation) << 32) | RECV_TAG | u64::from(token.slot)
}

/// A send in flight: its frames (kept alive until the completion), their iovecs and the message
/// header the kernel reads them through. Boxed, so the addresses given to the kernel stay put.
struct SendOp {
    token: Token,
    /// Bytes the send was given.
    bytes: usize,
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

#[derive(Default)]
struct Ops {
    slots: Vec<(u32, Option<Op>)>,
    free: Vec<u32>,
    /// Boxed: a send's address is given to the kernel, so it is reused as the box it was.
    #[allow(clippy::vec_box)]
    spare_sends: Vec<Box<SendOp>>,
}

impl Ops {
    fn insert(&mut self, op: Op) -> u64 {
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize].1 = Some(op);
                index
            }
            None => {
                self.slots.push((0, Some(op)));
                (self.slots.len() - 1) as u32
            }
        };
        (u64::from(self.slots[index as usize].0) << 32) | u64::from(index)
    }

    /// The operation `user_data` names, if it is still in flight.
    fn get(&self, user_data: u64) -> Option<&Op> {
        let (generation, op) = self.slots.get(user_data as u32 as usize)?;
        if *generation != (user_data >> 32) as u32 {
            return None;
        }
        op.as_ref()
    }

    fn remove(&mut self, user_data: u64) -> Option<Op> {
        let index = user_data as u32;
        let slot = self.slots.get_mut(index as usize)?;
        if slot.0 != (user_data >> 32) as u32 {
            return None;
        }
        let op = slot.1.take()?;
        slot.0 = slot.0.wrapping_add(1);
        self.free.push(index);
        Some(op)
    }

    fn recycle(&mut self, mut send: Box<SendOp>) {
        if self.spare_sends.len() < SPARE_SENDS {
            send.frames.clear();
            send.iov.clear();
            self.spare_sends.push(send);
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// The shard's ring of provided buffers: the ring of buffer descriptors the kernel takes from,
/// and the buffers themselves, both anonymous mappings (pages are resident only once written).
struct Buffers {
    ring: *mut types::BufRingEntry,
    data: *mut u8,
    /// The tail this shard has published: buffers up to it are the kernel's to take.
    tail: Cell<u16>,
    /// Set when requests outlived the shard: the mappings are then never unmapped.
    leaked: Cell<bool>,
}

impl Buffers {
    fn ring_bytes() -> usize {
        usize::from(BUFFER_COUNT) * std::mem::size_of::<types::BufRingEntry>()
    }

    fn data_bytes() -> usize {
        usize::from(BUFFER_COUNT) * BUFFER_BYTES
    }

    fn new() -> io::Result<Buffers> {
        let ring = map(Self::ring_bytes())?.cast::<types::BufRingEntry>();
        let data = match map(Self::data_bytes()) {
            Ok(data) => data,
            Err(e) => {
                unmap(ring.cast(), Self::ring_bytes());
                return Err(e);
            }
        };
        let buffers = Buffers {
            ring,
            data,
            tail: Cell::new(0),
            leaked: Cell::new(false),
        };
        for bid in 0..BUFFER_COUNT {
            buffers.put(bid);
        }
        buffers.publish();
        Ok(buffers)
    }

    /// Hands buffer `bid` back (visible to the kernel at the next [`Buffers::publish`]).
    fn put(&self, bid: u16) {
        let tail = self.tail.get();
        let index = usize::from(tail & (BUFFER_COUNT - 1));
        // SAFETY: `index` < BUFFER_COUNT, inside the ring mapping; the kernel only reads entries
        // between its head and the published tail, and this one is past the published tail.
        let entry = unsafe { &mut *self.ring.add(index) };
        // SAFETY: `bid` < BUFFER_COUNT, so the buffer lies inside the data mapping.
        entry.set_addr(unsafe { self.data.add(usize::from(bid) * BUFFER_BYTES) } as u64);
        entry.set_len(BUFFER_BYTES as u32);
        entry.set_bid(bid);
        self.tail.set(tail.wrapping_add(1));
    }

    /// Makes the buffers handed back so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: the ring mapping is page-aligned and its first entry initialised; the tail
        // field is a u16 the kernel reads with acquire ordering.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.ring).cast::<AtomicU16>()) };
        tail.store(self.tail.get(), Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which the kernel has filled and handed over.
    ///
    /// # Safety
    /// `bid` must come from a completion and not have been [`Buffers::put`] back since, and the
    /// slice must not outlive that.
    #[allow(clippy::mut_from_ref)]
    unsafe fn filled(&self, bid: u16, len: usize) -> &mut [u8] {
        std::slice::from_raw_parts_mut(
            self.data.add(usize::from(bid) * BUFFER_BYTES),
            len.min(BUFFER_BYTES),
        )
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        if self.leaked.get() {
            return;
        }
        unmap(self.ring.cast(), Self::ring_bytes());
        unmap(self.data, Self::data_bytes());
    }
}

fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: `ptr` and `len` are exactly one mapping made by `map`, no longer referenced.
    unsafe {
        libc::munmap(ptr.cast(), len);
    }
}

/// The ring set-up in use, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1+).
    Deferred,
    /// `SINGLE_ISSUER | COOP_TASKRUN`.
    Cooperative,
}

/// One shard's ring (fields drop in order: the ring, and with it the kernel's use of the
/// buffers, before the buffers).
pub(crate) struct Uring {
    ring: RefCell<IoUring>,
    ops: RefCell<Ops>,
    buffers: Buffers,
    /// What `io_uring_enter` is given for this ring: its registered index with
    /// `IORING_ENTER_REGISTERED_RING` (no descriptor lookup per enter), or its descriptor.
    enter_fd: (RawFd, u32),
    /// Entries in the fixed-file table (0: none could be registered).
    fixed_files: u32,
    /// The executor's wake eventfd, and where its armed read puts the counter.
    wake_fd: RawFd,
    wake_value: Box<std::cell::UnsafeCell<u64>>,
    /// The wake read completed and must be armed again (after the completions are reaped).
    wake_rearm: Cell<bool>,
    /// Set by [`Uring::finish`]: nothing is armed again.
    finishing: Cell<bool>,
    /// Turns that found completions waiting in the kernel's overflow list (the completion queue
    /// was too small for one turn's completions); each costs another enter.
    overflows: Cell<u64>,
    /// The shard's listeners (plain, then wss if it has one).
    listeners: Vec<RawFd>,
    /// Sockets whose receive ended (`ENOBUFS`, a cancelled pause now resumed, the kernel's own
    /// end of a multishot): armed again once the turn's buffers are back.
    rearm: RefCell<Vec<Token>>,
    /// Queued submissions since the last enter.
    queued: Cell<u32>,
    /// Receives in flight.
    receives: Cell<usize>,
    /// Completions reaped outside the driver's turn (see [`Uring::push_through`]), for its next
    /// turn.
    backlog: RefCell<Vec<Completion>>,
    pub mode: RingMode,
}

impl Uring {
    /// Sets up the ring and its buffers, arms an accept on each of `listeners` and a read on
    /// `wake_fd` (the executor's wake eventfd); both stay owned by the caller and must outlive
    /// the ring's use of them.
    pub fn new(listeners: &[RawFd], wake_fd: RawFd) -> io::Result<Uring> {
        check_kernel()?;
        let (ring, mode) = build_ring()?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::AcceptMulti::CODE,
            opcode::RecvMulti::CODE,
            opcode::Send::CODE,
            opcode::SendMsg::CODE,
            opcode::AsyncCancel2::CODE,
            opcode::PollAdd::CODE,
            opcode::Read::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring operation {code} is not supported"),
                ));
            }
        }
        if !ring.params().is_feature_nodrop() || !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_NODROP or IORING_FEAT_EXT_ARG",
            ));
        }
        let enter_fd = register_ring_fd(ring.as_raw_fd());
        let fixed_files = fixed_table_size();
        let fixed_files = match ring.submitter().register_files_sparse(fixed_files) {
            Ok(()) => fixed_files,
            Err(e) => {
                tracing::debug!("io_uring: no fixed-file table ({e}); operations name descriptors");
                0
            }
        };
        let buffers = Buffers::new()?;
        // SAFETY: the ring mapping lives as long as `buffers`, which drops after the ring.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.ring as u64,
                BUFFER_COUNT,
                BUFFER_GROUP,
                0,
            )?;
        }
        let uring = Uring {
            ring: RefCell::new(ring),
            ops: RefCell::default(),
            buffers,
            enter_fd,
            fixed_files,
            wake_fd,
            wake_value: Box::default(),
            wake_rearm: Cell::new(false),
            finishing: Cell::new(false),
            overflows: Cell::new(0),
            listeners: listeners.to_vec(),
            rearm: RefCell::default(),
            queued: Cell::new(0),
            receives: Cell::new(0),
            backlog: RefCell::default(),
            mode,
        };
        for index in 0..listeners.len() {
            uring.arm_accept(index);
        }
        uring.arm_wake();
        uring.enter(&mut Vec::new(), None)?;
        Ok(uring)
    }

    /// Arms the read on the executor's wake eventfd (its completion ends the shard's wait).
    fn arm_wake(&self) {
        if self.finishing.get() {
            return;
        }
        let user_data = self.ops.borrow_mut().insert(Op::Wake);
        let entry = opcode::Read::new(
            types::Fd(self.wake_fd),
            self.wake_value.get().cast(),
            std::mem::size_of::<u64>() as u32,
        )
        .build()
        .user_data(user_data);
        self.push(entry);
    }

    /// Turns that found the completion queue overflowed (see the field).
    pub fn overflows(&self) -> u64 {
        self.overflows.get()
    }

    fn push(&self, entry: squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: every entry queued here points only at memory its operation owns (a boxed
            // send, the provided buffers) or at nothing, and that memory lives until the
            // operation's completion is reaped.
            if unsafe { ring.submission().push(&entry) }.is_ok() {
                self.queued.set(self.queued.get() + 1);
                return;
            }
            // The submission queue is full: hand it to the kernel (completions are collected at
            // the driver's next turn; the kernel keeps any that overflow).
            if let Err(e) = ring.submit() {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!("io_uring submit: {e}");
                    return;
                }
            }
            self.queued.set(0);
        }
    }

    /// Takes a new socket in: installs it in the fixed-file table (at its registry slot) and arms
    /// its receive.
    pub fn register(&self, conn: &mut Conn) -> io::Result<()> {
        if conn.token.slot < self.fixed_files {
            self.ring
                .borrow()
                .submitter()
                .register_files_update(conn.token.slot, &[conn.fd])?;
        }
        self.arm_recv(conn);
        Ok(())
    }

    /// The socket in registry slot `slot` is about to be closed: it leaves the fixed-file table
    /// (operations in flight keep their own reference until they complete).
    ///
    /// An operation takes its file when it is submitted, not when it is queued, and the socket's
    /// slot may be given to a new socket in this same turn (its descriptor number, to any file
    /// any thread of the process opens next). So everything still queued (a send this socket
    /// queued before it ended) is submitted first. Otherwise that send would go out, at the
    /// turn's enter, on whatever took the slot or the number: another client's connection.
    pub fn unregister(&self, slot: u32) {
        self.submit_queued();
        if slot < self.fixed_files {
            let _ = self
                .ring
                .borrow()
                .submitter()
                .register_files_update(slot, &[-1]);
        }
    }

    /// Submits what is queued now; the completions wait in the backlog for the turn.
    fn submit_queued(&self) {
        if self.queued.get() == 0 {
            return;
        }
        let mut backlog = self.backlog.borrow_mut();
        if let Err(e) = self.enter(&mut backlog, None) {
            tracing::error!("io_uring enter: {e}");
        }
    }

    /// Arms the multishot accept on listener `index`.
    pub fn arm_accept(&self, index: usize) {
        let Some(&listener) = self.listeners.get(index) else {
            return;
        };
        let user_data = self.ops.borrow_mut().insert(Op::Accept(index));
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            // Non-blocking: a send to a full socket fails with EAGAIN at once (and the socket
            // waits for POLLOUT) instead of parking an io-wq worker or a stale frame list.
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(user_data);
        self.push(entry);
    }

    /// Arms a multishot receive for `conn` (unless one is armed or being cancelled: its end
    /// arms the next, so two receives never race on one socket).
    pub fn arm_recv(&self, conn: &mut Conn) {
        if conn.recv_armed || conn.fd < 0 {
            return;
        }
        let entry = on_socket!(self, conn, |socket| opcode::RecvMulti::new(
            socket,
            BUFFER_GROUP
        )
        .build())
        .user_data(recv_user_data(conn.token));
        self.push(entry);
        conn.recv_armed = true;
        self.receives.set(self.receives.get() + 1);
    }

    /// Cancels `conn`'s receive (reading is paused); its final completion clears `recv_armed`.
    pub fn cancel_recv(&self, conn: &Conn) {
        if !conn.recv_armed {
            return;
        }
        let cancel = self.ops.borrow_mut().insert(Op::Cancel);
        let target = types::CancelBuilder::user_data(recv_user_data(conn.token));
        let entry = opcode::AsyncCancel2::new(target).build().user_data(cancel);
        self.push(entry);
    }

    /// Queues a send of what `conn` has queued, unless a send or a wait for room is in flight
    /// already (its completion sends the rest).
    pub fn send(&self, conn: &mut Conn) -> Flushed {
        if conn.send_in_flight {
            return Flushed::InFlight;
        }
        if conn.outbound.seal().is_err() {
            // The TLS connection cannot encrypt: the socket ends (its receive sees the end).
            conn.cut();
            return Flushed::All;
        }
        if conn.outbound.sealed_frames() == 0 || conn.fd < 0 {
            return Flushed::All;
        }
        if conn.outbound.queued_bytes() >= DIRECT_SEND_BYTES {
            // A burst: written at once (see DIRECT_SEND_BYTES).
            return match super::io::flush(conn.fd, &mut conn.outbound) {
                Ok(Flushed::WouldBlock) => {
                    self.wait_writable(conn);
                    Flushed::InFlight
                }
                Ok(flushed) => flushed,
                Err(_) => {
                    conn.cut();
                    Flushed::All
                }
            };
        }
        let mut ops = self.ops.borrow_mut();
        let mut send = ops.spare_sends.pop().unwrap_or_else(|| {
            Box::new(SendOp {
                token: conn.token,
                bytes: 0,
                frames: Vec::new(),
                iov: Vec::new(),
                // SAFETY: an all-zero msghdr is a valid empty header.
                msg: unsafe { std::mem::zeroed() },
            })
        });
        send.token = conn.token;
        send.frames.extend(conn.outbound.frames(FRAMES_PER_SEND));
        send.bytes = 0;
        for chunk in conn.outbound.chunks(FRAMES_PER_SEND) {
            send.bytes += chunk.len();
            send.iov.push(libc::iovec {
                iov_base: chunk.as_ptr() as *mut libc::c_void,
                iov_len: chunk.len(),
            });
        }
        let entry = if let [only] = send.iov[..] {
            on_socket!(self, conn, |socket| opcode::Send::new(
                socket,
                only.iov_base as *const u8,
                only.iov_len as u32
            )
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build())
        } else {
            send.msg.msg_iov = send.iov.as_mut_ptr();
            send.msg.msg_iovlen = send.iov.len();
            on_socket!(self, conn, |socket| opcode::SendMsg::new(socket, &send.msg)
                .flags((libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) as u32)
                .build())
        };
        let user_data = ops.insert(Op::Send(send));
        drop(ops);
        self.push(entry.user_data(user_data));
        conn.send_in_flight = true;
        Flushed::InFlight
    }

    /// Waits (one-shot `POLL_ADD`) for room in `conn`'s send buffer; its completion clears
    /// `send_in_flight` and the socket is written again with everything queued by then.
    pub fn wait_writable(&self, conn: &mut Conn) {
        if conn.fd < 0 {
            return;
        }
        let user_data = self.ops.borrow_mut().insert(Op::Writable(conn.token));
        let entry = on_socket!(self, conn, |socket| opcode::PollAdd::new(
            socket,
            libc::POLLOUT as u32
        )
        .build())
        .user_data(user_data);
        self.push(entry);
        conn.send_in_flight = true;
    }

    /// A socket's queue is full in the middle of a delivery batch while its send waits in the
    /// submission queue: submit now and, if the kernel took the send at once, advance the queue
    /// and send the rest, as the epoll backend's direct write would. Whatever else completed is
    /// kept for the driver's next turn. Returns whether room was made.
    pub fn push_through(&self, conn: &mut Conn) -> bool {
        if !conn.send_in_flight {
            return false;
        }
        let mut backlog = self.backlog.borrow_mut();
        let start = backlog.len();
        if self.enter(&mut backlog, None).is_err() {
            return false;
        }
        let mine = backlog[start..].iter().position(|c| {
            matches!(c, Completion::Sent { token, result, .. } if *token == conn.token && *result >= 0)
        });
        let Some(Completion::Sent { result, short, .. }) =
            mine.map(|at| backlog.remove(start + at))
        else {
            return false;
        };
        drop(backlog);
        conn.send_in_flight = false;
        conn.outbound.advance(result as usize);
        if short {
            self.wait_writable(conn);
        } else {
            self.send(conn);
        }
        result > 0
    }

    /// Moves the completions reaped outside the driver's turn into `out`.
    pub fn take_backlog(&self, out: &mut Vec<Completion>) {
        out.append(&mut self.backlog.borrow_mut());
    }

    /// Submits what is queued and collects every completion there is (running deferred work and
    /// flushing overflowed completions on the way) into `out`. With `wait`, and no completion
    /// ready, first waits up to that long for one (the shard's one wait).
    pub fn enter(&self, out: &mut Vec<Completion>, wait: Option<Duration>) -> io::Result<()> {
        let result = self.enter_inner(out, wait);
        if self.wake_rearm.replace(false) {
            self.arm_wake();
        }
        result
    }

    fn enter_inner(&self, out: &mut Vec<Completion>, wait: Option<Duration>) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        let mut wait = wait.filter(|_| ring.completion().is_empty());
        loop {
            let to_submit = self.queued.replace(0);
            let entered = match self.enter_raw(to_submit, wait.take()) {
                // The timeout passed with nothing to report.
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(0),
                other => other,
            };
            match entered {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    self.queued.set(to_submit);
                    continue;
                }
                // Completions must be reaped before more can be submitted.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.queued.set(to_submit),
                Err(e) => return Err(e),
            }
            for cqe in ring.completion() {
                out.push(self.complete(cqe.user_data(), cqe.result(), cqe.flags()));
            }
            // Overflowed completions are flushed by the next enter with GETEVENTS.
            let overflowed = ring.submission().cq_overflow();
            if overflowed {
                self.overflows.set(self.overflows.get() + 1);
            }
            if !overflowed && self.queued.get() == 0 {
                return Ok(());
            }
        }
    }

    /// One `io_uring_enter`: submits `to_submit` entries, runs deferred work and, with `wait`,
    /// waits up to that long for one completion.
    fn enter_raw(&self, to_submit: u32, wait: Option<Duration>) -> io::Result<usize> {
        let (fd, registered) = self.enter_fd;
        let timespec = wait.map(|wait| KernelTimespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        });
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: 0,
            ts: timespec
                .as_ref()
                .map_or(0, |ts| ts as *const KernelTimespec as u64),
        };
        let (min_complete, flags) = match wait {
            Some(_) => (1, ENTER_GETEVENTS | ENTER_EXT_ARG | registered),
            None => (0, ENTER_GETEVENTS | ENTER_EXT_ARG | registered),
        };
        // SAFETY: `arg` (and the timespec it points at) live until the call returns; the
        // submission entries were written and the tail published by `push`.
        let entered = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                to_submit,
                min_complete,
                flags,
                &arg as *const GeteventsArg,
                std::mem::size_of::<GeteventsArg>(),
            )
        };
        if entered < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(entered as usize)
    }

    fn complete(&self, user_data: u64, result: i32, flags: u32) -> Completion {
        let more = cqueue::more(flags);
        if user_data & RECV_TAG != 0 {
            if !more {
                self.receives.set(self.receives.get().saturating_sub(1));
            }
            return Completion::Received {
                token: Token {
                    slot: (user_data & (RECV_TAG - 1)) as u32,
                    generation: (user_data >> 32) as u32,
                },
                result,
                buffer: cqueue::buffer_select(flags),
                ended: !more,
            };
        }
        let mut ops = self.ops.borrow_mut();
        match ops.get(user_data) {
            None => Completion::Nothing,
            Some(&Op::Accept(listener)) => {
                if !more {
                    ops.remove(user_data);
                }
                Completion::Accepted {
                    listener,
                    result: if result >= 0 {
                        Ok(result)
                    } else {
                        Err(io::Error::from_raw_os_error(-result))
                    },
                    ended: !more,
                }
            }
            Some(Op::Send(_)) => match ops.remove(user_data) {
                Some(Op::Send(send)) => {
                    let token = send.token;
                    let short = result >= 0 && (result as usize) < send.bytes;
                    ops.recycle(send);
                    if result == -libc::EAGAIN {
                        // Nothing fitted: the same as a send that wrote nothing.
                        return Completion::Sent {
                            token,
                            result: 0,
                            short: true,
                        };
                    }
                    Completion::Sent {
                        token,
                        result,
                        short,
                    }
                }
                _ => Completion::Nothing,
            },
            Some(&Op::Writable(token)) => {
                ops.remove(user_data);
                Completion::Writable { token }
            }
            Some(Op::Wake) => {
                ops.remove(user_data);
                self.wake_rearm.set(true);
                Completion::Nothing
            }
            Some(Op::Cancel) => {
                ops.remove(user_data);
                Completion::Nothing
            }
        }
    }

    /// The data of a receive completion.
    ///
    /// # Safety
    /// `buffer` must come from a completion reaped since the buffer was last handed back, and the
    /// slice must be dropped before [`Uring::give_back`] is called for it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn received(&self, buffer: u16, len: usize) -> &mut [u8] {
        self.buffers.filled(buffer, len)
    }

    /// Returns a buffer to the kernel (at the end of the turn, with the others).
    pub fn give_back(&self, buffer: u16) {
        self.buffers.put(buffer);
    }

    /// Publishes the buffers given back this turn.
    pub fn publish_buffers(&self) {
        self.buffers.publish();
    }

    /// Marks `token`'s socket for a new receive at the end of the turn.
    pub fn rearm_later(&self, token: Token) {
        self.rearm.borrow_mut().push(token);
    }

    /// The sockets marked by [`Uring::rearm_later`].
    pub fn take_rearm(&self, out: &mut Vec<Token>) {
        std::mem::swap(&mut *self.rearm.borrow_mut(), out);
    }

    /// Operations in flight (the accept and the receives included).
    pub fn in_flight(&self) -> usize {
        self.ops.borrow().in_flight() + self.receives.get()
    }

    /// At the shard's end: cancels every request still in flight (the accept) and waits, at
    /// most `timeout`, for their completions, so that the kernel no longer writes into the
    /// buffers when they are unmapped.
    pub fn finish(&self, timeout: Duration) {
        self.finishing.set(true);
        let cancel = self.ops.borrow_mut().insert(Op::Cancel);
        self.push(
            opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(cancel),
        );
        let deadline = std::time::Instant::now() + timeout;
        let mut done = Vec::new();
        while self.in_flight() > 0 && std::time::Instant::now() < deadline {
            done.clear();
            if self.enter(&mut done, None).is_err() {
                break;
            }
            for completion in &done {
                if let Completion::Received {
                    buffer: Some(bid), ..
                } = completion
                {
                    self.buffers.put(*bid);
                }
            }
            if done.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if self.in_flight() > 0 {
            // Better a leak than the kernel writing into memory handed back to the allocator.
            std::mem::forget(std::mem::take(&mut *self.ops.borrow_mut()));
            self.buffers.leaked.set(true);
        }
    }
}

/// Registers the ring's descriptor for this thread (Linux 5.18+), so that an enter names the ring
/// by index and the kernel skips the descriptor lookup; the descriptor itself otherwise.
fn register_ring_fd(ring_fd: RawFd) -> (RawFd, u32) {
    let mut update = RsrcUpdate {
        // Any free slot: the kernel writes the index chosen here.
        offset: u32::MAX,
        resv: 0,
        data: ring_fd as u64,
    };
    // SAFETY: `update` is a valid io_uring_rsrc_update for the duration of the call.
    let registered = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring_fd,
            REGISTER_RING_FDS,
            &mut update as *mut RsrcUpdate,
            1,
        )
    };
    if registered == 1 {
        (update.offset as RawFd, ENTER_REGISTERED_RING)
    } else {
        (ring_fd, 0)
    }
}

/// Entries of the shard's fixed-file table: [`FIXED_FILES_MAX`], or fewer where the process may
/// hold fewer descriptors (the kernel refuses a larger table).
fn fixed_table_size() -> u32 {
    // SAFETY: a zeroed rlimit is valid; getrlimit fills it.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a valid rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    limit.rlim_cur.min(u64::from(FIXED_FILES_MAX)) as u32
}

/// Multishot receive needs Linux 6.0; older kernels run the epoll backend.
fn check_kernel() -> io::Result<()> {
    // SAFETY: a zeroed utsname is valid; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid utsname for the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let release: String = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (6, 0) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("Linux {release}: multishot receive needs 6.0 or later"),
        ));
    }
    Ok(())
}

/// The best ring this kernel sets up: deferred task work, else cooperative.
fn build_ring() -> io::Result<(IoUring, RingMode)> {
    let deferred = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES);
    match deferred {
        Ok(ring) => Ok((ring, RingMode::Deferred)),
        Err(_) => IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_submit_all()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(SQ_ENTRIES)
            .map(|ring| (ring, RingMode::Cooperative)),
    }
}
