//! The crossbar envelope and the small HTTP helpers every route uses.
//!
//! Every JSON answer is `{"data":..,"status":"success"|"error","request_id","node","timestamp",
//! "version"}`; errors add `"error":"<http code>"` and `"message"` (Kazoo writes the code as a
//! string, and clients compare it as one).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::json;

pub type Body = Full<Bytes>;

/// Per-request envelope fields.
pub struct Envelope<'a> {
    pub node: &'a str,
    pub request_id: String,
}

impl Envelope<'_> {
    fn open(&self, out: &mut Vec<u8>, status: &str) {
        out.extend_from_slice(b"{\"status\":");
        json::write_str(out, status);
        out.extend_from_slice(b",\"request_id\":");
        json::write_str(out, &self.request_id);
        out.extend_from_slice(b",\"node\":");
        json::write_str(out, self.node);
        out.extend_from_slice(b",\"timestamp\":");
        json::write_str(
            out,
            &crate::auth::format_rfc3339(std::time::SystemTime::now()),
        );
        out.extend_from_slice(b",\"version\":");
        json::write_str(out, env!("CARGO_PKG_VERSION"));
    }

    /// A success answer; `data` is JSON already; `extra` are more top-level members
    /// (`"partial":true,...`), written as they are.
    pub fn success(&self, data: &[u8], extra: &str) -> Response<Body> {
        let mut out = Vec::with_capacity(data.len() + 160);
        self.open(&mut out, "success");
        out.extend_from_slice(extra.as_bytes());
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
        out.push(b'}');
        respond(StatusCode::OK, "application/json", out)
    }

    /// An error answer whose `data` says more (crossbar's validation errors name each field).
    pub fn error_with_data(
        &self,
        status: StatusCode,
        message: &str,
        data: &[u8],
    ) -> Response<Body> {
        let mut out = Vec::with_capacity(200 + data.len());
        self.open(&mut out, "error");
        out.extend_from_slice(b",\"error\":");
        json::write_str(&mut out, status.as_str());
        out.extend_from_slice(b",\"message\":");
        json::write_str(&mut out, message);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
        out.push(b'}');
        respond(status, "application/json", out)
    }

    /// An error answer with Kazoo's shape.
    pub fn error(&self, status: StatusCode, message: &str) -> Response<Body> {
        let mut data = Vec::with_capacity(16 + message.len());
        data.extend_from_slice(b"{\"message\":");
        json::write_str(&mut data, message);
        data.push(b'}');
        self.error_with_data(status, message, &data)
    }
}

pub fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
