//! Shared by the benchmarks that run a gateway in process: the backend they run on, their numeric
//! knobs, and the frame encoder that sends an event's body as it is. Include with
//! `#[path = "support/gateway.rs"] mod gateway;`.

use horizon::fanout::Event;
use horizon::shard::{FrameEncoder, IoBackend};

/// The backend to measure: `HORIZON_IO_BACKEND` (`auto`, `io_uring`, `epoll`), else the default.
pub fn io_backend() -> IoBackend {
    std::env::var("HORIZON_IO_BACKEND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// A numeric knob from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The event body is the frame payload as it is: the encode is one copy into a frame.
pub struct Raw;

impl FrameEncoder for Raw {
    fn encode(&self, event: &Event) -> bytes::Bytes {
        horizon::ws::frame::encode::text(&event.body).into()
    }
}
