//! Non-blocking reads and vectored writes on a socket's file descriptor (the epoll backend's I/O,
//! and the io_uring backend's last-word write of a close frame).
//!
//! The shard waits for readiness (its epoll set) and then does the I/O itself, so that a read goes into the shard's scratch buffer (an idle socket pins no
//! buffer) and a write sends the shared `Bytes` of many queued frames in one `sendmsg`.

use std::io;
use std::os::fd::RawFd;

use super::outbound::Outbound;

/// Frames gathered into one `writev` or send, on either backend: Linux's `IOV_MAX`. A wide
/// delivery batch queues up to 256 frames per socket; all of them go in one call.
pub(crate) const FRAMES_PER_SEND: usize = 1024;

/// Turns Nagle's algorithm off: frames go out as they are written.
pub(crate) fn set_nodelay(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the duration of the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Reads what is available into `buf`: `Ok(0)` is end of stream, `WouldBlock` means nothing yet.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Everything queued went out.
    All,
    /// The socket's send buffer is full; wait for writability and flush again.
    WouldBlock,
    /// A send is in flight (io_uring); its completion sends the rest.
    InFlight,
}

/// Writes as much of `queue` as the socket takes right now (a wss socket's frames are encrypted
/// a batch at a time, as they are written).
pub(crate) fn flush(fd: RawFd, queue: &mut Outbound) -> io::Result<Flushed> {
    loop {
        queue.seal()?;
        if queue.sealed_frames() == 0 {
            return Ok(Flushed::All);
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; FRAMES_PER_SEND];
        let mut count = 0;
        for (slot, chunk) in iov.iter_mut().zip(queue.chunks(FRAMES_PER_SEND)) {
            slot.iov_base = chunk.as_ptr() as *mut libc::c_void;
            slot.iov_len = chunk.len();
            count += 1;
        }
        // SAFETY: an all-zero msghdr is valid; it points at the iovecs below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = count;
        // SAFETY: the first `count` iovecs point into `Bytes` owned by `queue`, which is not
        // touched until the call returns; sendmsg only reads them. MSG_DONTWAIT: never blocks,
        // whatever the socket's mode.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(Flushed::WouldBlock),
                _ => return Err(err),
            }
        }
        queue.advance(n as usize);
    }
}

/// Closes a descriptor the caller owns (a negative one is ignored).
pub(crate) fn close(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: the caller owns `fd` and forgets it after this call.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Shuts both directions down: wakes a task waiting for readability with end of stream.
pub(crate) fn shutdown(fd: RawFd) {
    // SAFETY: shutdown on a descriptor this socket owns; errors (already closed) are irrelevant.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}
