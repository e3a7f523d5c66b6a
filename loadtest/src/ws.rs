//! A small WebSocket client on monoio: connect from a chosen source address, upgrade, send masked
//! frames, read server frames. Just what a load generator needs; every byte it reads is checked.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::FromRawFd;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

/// A server frame.
pub enum Frame {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close(u16),
    Other,
}

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    at: usize,
    mask_state: u32,
}

/// A non-blocking socket bound to `source` (port chosen at connect time, so each source address
/// has its own ephemeral port range per destination), connecting to `to`.
fn socket_from(source: Option<IpAddr>, to: SocketAddr) -> io::Result<std::net::TcpStream> {
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the descriptor is owned by the TcpStream built below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option pointer and length. IP_BIND_ADDRESS_NO_PORT = 24.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            24,
            (&one as *const libc::c_int).cast(),
            4,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            4,
        );
    }
    if let Some(IpAddr::V4(ip)) = source {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `addr` is a valid sockaddr_in for the duration of the call.
        let rc = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let SocketAddr::V4(to4) = to else {
        return Err(io::Error::other("IPv4 targets only"));
    };
    let dest = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `dest` is a valid sockaddr_in for the duration of the call.
    let rc = unsafe {
        libc::connect(
            fd,
            (&dest as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

impl Client {
    /// Connects and upgrades; `protocol` is the `Sec-WebSocket-Protocol` to ask for.
    pub async fn connect(
        source: Option<IpAddr>,
        to: SocketAddr,
        path: &str,
        protocol: Option<&str>,
    ) -> io::Result<Client> {
        let std_stream = socket_from(source, to)?;
        let stream = TcpStream::from_std(std_stream)?;
        stream.writable(false).await?;
        if let Some(e) = stream_error(&stream)? {
            return Err(e);
        }
        let mut key_bytes = [0u8; 16];
        fill_random(&mut key_bytes);
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(protocol) = protocol {
            request.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
        }
        request.push_str("\r\n");
        let mut client = Client {
            stream,
            buf: Vec::new(),
            at: 0,
            mask_state: u32::from_le_bytes([
                key_bytes[0],
                key_bytes[1],
                key_bytes[2],
                key_bytes[3],
            ]) | 1,
        };
        let (written, _) = client.stream.write_all(request.into_bytes()).await;
        written?;
        // The answer head.
        loop {
            if let Some(end) = find(&client.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&client.buf[..end]).into_owned();
                if !head.starts_with("HTTP/1.1 101") {
                    return Err(io::Error::other(format!(
                        "upgrade refused: {}",
                        head.lines().next().unwrap_or("")
                    )));
                }
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                if !head.to_ascii_lowercase().contains(&format!(
                    "sec-websocket-accept: {}",
                    accept.to_ascii_lowercase()
                )) {
                    return Err(io::Error::other(
                        "upgrade answer has the wrong Sec-WebSocket-Accept",
                    ));
                }
                client.at = end + 4;
                return Ok(client);
            }
            if client.buf.len() > 16 * 1024 || !client.fill().await? {
                return Err(io::Error::other("connection closed during the upgrade"));
            }
        }
    }

    /// Reads more bytes; false at end of stream. Waits for readiness and then reads without
    /// blocking, so a caller may drop this future (a `select!` with a timer) without losing bytes.
    async fn fill(&mut self) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 64 * 1024 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.reserve(4096);
        loop {
            let len = self.buf.len();
            let spare = self.buf.capacity() - len;
            // SAFETY: reads at most `spare` bytes into the vector's spare capacity, then
            // extends the length by exactly what was read.
            let n = unsafe {
                libc::read(
                    self.stream.as_raw_fd(),
                    self.buf.as_mut_ptr().add(len).cast(),
                    spare,
                )
            };
            if n > 0 {
                // SAFETY: `n` bytes after `len` were just written by read(2).
                unsafe { self.buf.set_len(len + n as usize) };
                return Ok(true);
            }
            if n == 0 {
                return Ok(false);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            self.stream.readable(false).await?;
        }
    }

    /// Sends a masked frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // xorshift32: masks need not be secret here, only varied.
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 17;
        self.mask_state ^= self.mask_state << 5;
        let mask = self.mask_state.to_le_bytes();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let (written, _) = self.stream.write_all(frame).await;
        written.map(|_| ())
    }

    /// The next server frame; `None` at end of stream.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = parse(&self.buf[self.at..])? {
                self.at += used;
                if let Frame::Ping(payload) = &frame {
                    let payload = payload.clone();
                    self.send(0xA, &payload).await?;
                    continue;
                }
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

fn stream_error(stream: &TcpStream) -> io::Result<Option<io::Error>> {
    use std::os::fd::AsRawFd;
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one unmasked server frame (fragmented messages are not expected from these servers,
/// and are refused rather than misread).
fn parse(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err(io::Error::other("server frames must not be masked"));
    }
    let (len, head) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap_or([0; 8])) as usize,
            10,
        ),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    if b0 & 0x80 == 0 {
        return Err(io::Error::other("fragmented server frame"));
    }
    let payload = buf[head..head + len].to_vec();
    let frame = match b0 & 0x0F {
        0x1 => Frame::Text(payload),
        0x2 => Frame::Binary(payload),
        0x9 => Frame::Ping(payload),
        0x8 => Frame::Close(if payload.len() >= 2 {
            u16::from_be_bytes([payload[0], payload[1]])
        } else {
            1005
        }),
        _ => Frame::Other,
    };
    Ok(Some((frame, head + len)))
}

pub fn fill_random(buf: &mut [u8]) {
    // SAFETY: the pointer and length describe `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < buf.len() as isize {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    }
}
