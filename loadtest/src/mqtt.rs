//! The slice of MQTT 3.1.1 the Web-MQTT comparison needs: CONNECT, SUBSCRIBE (QoS 0) and the
//! PUBLISH packets the broker sends back, carried in WebSocket binary frames.

fn remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn connect(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0xC2); // user name, password, clean session
    body.extend_from_slice(&0u16.to_be_bytes()); // no keepalive
    string(&mut body, client_id);
    string(&mut body, user);
    string(&mut body, password);
    let mut packet = vec![0x10];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

pub fn subscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    string(&mut body, filter);
    body.push(0); // QoS 0
    let mut packet = vec![0x82];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

pub fn unsubscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    string(&mut body, filter);
    let mut packet = vec![0xA2];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// A packet from the broker.
pub enum Packet {
    ConnAck(u8),
    SubAck,
    UnsubAck,
    Publish(Vec<u8>),
    Other,
}

/// Parses one packet at the front of `buf`: `(packet, bytes used)`, or `None` if incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(Packet, usize)>, String> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut shift = 0;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        len |= ((byte & 0x7F) as usize) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err("malformed MQTT remaining length".into());
        }
    }
    if buf.len() < at + len {
        return Ok(None);
    }
    let body = &buf[at..at + len];
    let packet = match kind >> 4 {
        2 => Packet::ConnAck(body.get(1).copied().unwrap_or(0xFF)),
        9 => Packet::SubAck,
        11 => Packet::UnsubAck,
        3 => {
            let topic_len = body
                .get(..2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
            // QoS 0: no packet id after the topic.
            let skip = 2 + topic_len + if kind & 0x06 != 0 { 2 } else { 0 };
            Packet::Publish(body.get(skip..).unwrap_or_default().to_vec())
        }
        _ => Packet::Other,
    };
    Ok(Some((packet, at + len)))
}
