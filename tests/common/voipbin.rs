//! A VoIPBin `/v1.0/ws` client for the end-to-end tests.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use simd_json::prelude::*;
use simd_json::OwnedValue;
use tokio_tungstenite::tungstenite::Message;

use super::kazoo::{parse, Node};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    ws: Socket,
}

impl From<Socket> for Client {
    fn from(ws: Socket) -> Client {
        Client { ws }
    }
}

impl Client {
    pub async fn connect(node: &Node, token: &str) -> Client {
        let url = format!("ws://{}/v1.0/ws?token={token}", node.addr());
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        Client { ws }
    }

    pub async fn next(&mut self, wait: Duration) -> Option<OwnedValue> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(text)))) => return Some(parse(text.as_str())),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn send(&mut self, text: &str) -> OwnedValue {
        self.ws.send(Message::text(text)).await.expect("send");
        self.next(Duration::from_secs(10)).await.expect("an answer")
    }

    pub async fn subscribe(&mut self, list: &[&str]) -> OwnedValue {
        let topics: Vec<String> = list.iter().map(|t| format!("\"{t}\"")).collect();
        self.send(&format!(
            r#"{{"type":"subscribe","topics":[{}]}}"#,
            topics.join(",")
        ))
        .await
    }

    /// The event frames before the one whose `data.id` is `sentinel` (consumed): publish what
    /// must not arrive, then a sentinel that must; a socket receives events in publish order.
    pub async fn events_until(&mut self, sentinel: &str) -> Vec<OwnedValue> {
        let mut out = Vec::new();
        loop {
            let frame = self
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("sentinel {sentinel} not received; before it: {out:?}"));
            if frame.get("data").and_then(|d| d.get_str("id")) == Some(sentinel) {
                return out;
            }
            out.push(frame);
        }
    }
}
