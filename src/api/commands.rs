//! Call and conference commands on crossbar's REST paths (docs/kazoo.md "Commands"): the same
//! checks and the same published message as on the socket ([`crate::commands`]).
//!
//! - `POST /v2/accounts/{A}/channels/{CALL_ID}` `{"data":{"action":"hangup",..}}`: 202.
//! - `PUT /v2/accounts/{A}/conferences/{C}` `{"data":{"action":"lock"}}` (`lock`, `unlock`,
//!   `kick`: every participant): 202.
//! - `PUT /v2/accounts/{A}/conferences/{C}/participants/{P}` `{"data":{"action":"mute"}}`: 202.
//!
//! A node tracks the calls of the accounts its command-right sockets watch; a REST command also
//! makes it watch the account (for `call_idle_expiry_secs` after the last one), so a REST-only
//! client is served for calls that begin after its first command.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value};

use super::http::{Body, Envelope};
use super::{authenticate, webhooks::read_body, State};
use crate::commands::{self, CommandError, CommandWatch, Commander, Kind};
use crate::families::decode_segment;
use crate::json::{self, TapeValue};

/// The most accounts REST commands keep watched on this node at once.
const MAX_REST_WATCHES: usize = 1024;

/// Accounts watched because of REST commands, each until a while after its last one.
#[derive(Default)]
pub(super) struct RestWatches {
    watches: Mutex<HashMap<String, (CommandWatch, Instant)>>,
}

impl RestWatches {
    fn touch(&self, commander: &Commander, account: &str, keep: std::time::Duration) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        watches.retain(|_, (_, at)| now.duration_since(*at) < keep);
        if let Some((_, at)) = watches.get_mut(account) {
            *at = now;
        } else if watches.len() < MAX_REST_WATCHES {
            watches.insert(account.to_string(), (commander.watch(account).0, now));
        }
    }
}

/// The methods a command path answers, or `None` when it is not one.
pub fn methods(segments: &[&str]) -> Option<&'static [Method]> {
    Some(match segments {
        ["v2", "accounts", _, "channels", _] => &[Method::POST],
        ["v2", "accounts", _, "conferences", _]
        | ["v2", "accounts", _, "conferences", _, "participants", _] => &[Method::PUT],
        _ => return None,
    })
}

pub async fn route(
    state: &State,
    env: &Envelope<'_>,
    request: Request<Incoming>,
    segments: &[&str],
) -> Response<Body> {
    let identity = match authenticate(state, env, &request) {
        Ok(identity) => identity,
        Err(response) => return *response,
    };
    let Some(commander) = state.commander.clone() else {
        return answer_error(env, &CommandError::Unavailable);
    };
    let data = match read_body(state, env, request).await {
        Ok(data) => data,
        Err(response) => return *response,
    };
    let Value::Object(mut data) = data else {
        return answer_error(env, &CommandError::Invalid("data", "must be an object"));
    };
    let action = data
        .get("action")
        .and_then(Value::as_str)
        .map(str::to_string);
    let refuse = |e: CommandError| {
        commands::refused(action.as_deref(), &e);
        answer_error(env, &e)
    };
    if !identity.commands {
        return refuse(CommandError::NotAllowed);
    }
    // The path names the account and the target; the body cannot override them.
    let mut path = |key: &str, value: &str| {
        data.insert(key.to_string(), Value::String(decode_segment(value)));
    };
    let (kind, account) = match segments {
        ["v2", "accounts", account, "channels", call_id] => {
            path("call_id", call_id);
            (Kind::Channel, account)
        }
        ["v2", "accounts", account, "conferences", conference] => {
            path("conference_id", conference);
            data.remove("participant_id");
            (Kind::Conference, account)
        }
        ["v2", "accounts", account, "conferences", conference, "participants", participant] => {
            path("conference_id", conference);
            match commands::parse_participant(participant) {
                Ok(p) => data.insert("participant_id".into(), Value::from(p)),
                Err(e) => return refuse(e),
            };
            (Kind::Conference, account)
        }
        _ => return env.error(StatusCode::NOT_FOUND, "no such endpoint"),
    };
    data.insert("account_id".into(), Value::String(account.to_string()));
    let mut text = Value::Object(Map::from_iter(data)).to_string().into_bytes();
    let Ok(tape) = simd_json::to_tape(&mut text) else {
        return env.error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let Some(root) = TapeValue::root(&tape.0) else {
        return env.error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let command = match commands::parse(kind, root, &identity.account_id) {
        Ok(command) => command,
        Err(e) => return refuse(e),
    };
    if state.auth.may_see(&identity, &command.account) {
        state
            .rest_watches
            .touch(&commander, &command.account, commander.live().idle_expiry());
    }
    let prepared = match commander.authorize(&identity, command) {
        Ok(prepared) => prepared,
        Err(e) => return answer_error(env, &e),
    };
    let by = format!("REST token of account {}", identity.account_id);
    match commander.publish(prepared, by).await {
        Ok(prepared) => {
            let message = match prepared.command.target {
                commands::Target::Channel { .. } => {
                    format!("{} initiated", prepared.command.action)
                }
                commands::Target::Conference { .. } => "ok".to_string(),
            };
            let mut data = Vec::new();
            json::write_str(&mut data, &message);
            let mut extra = Vec::new();
            extra.extend_from_slice(b",\"msg_id\":");
            json::write_str(&mut extra, &prepared.msg_id);
            let response = env.success(&data, &String::from_utf8_lossy(&extra));
            accepted(response)
        }
        Err(e) => answer_error(env, &e),
    }
}

/// crossbar's `response_202`: the success envelope with status 202.
fn accepted(mut response: Response<Body>) -> Response<Body> {
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

/// A refused command in crossbar's shapes: 403 for rights, 400 `invalid data` naming the
/// field, 404 `bad identifier` naming the id, 503 when the broker is away.
fn answer_error(env: &Envelope<'_>, e: &CommandError) -> Response<Body> {
    let invalid = |field: &str, rule: &str, message: &str| {
        let mut data = Vec::new();
        data.push(b'{');
        json::write_str(&mut data, field);
        data.extend_from_slice(b":{");
        json::write_str(&mut data, rule);
        data.extend_from_slice(b":{\"message\":");
        json::write_str(&mut data, message);
        data.extend_from_slice(b"}}}");
        env.error_with_data(StatusCode::BAD_REQUEST, "invalid data", &data)
    };
    match e {
        CommandError::NotAllowed | CommandError::Account | CommandError::WildcardAccount => {
            env.error(StatusCode::FORBIDDEN, &e.to_string())
        }
        CommandError::Invalid(field, why) => {
            let rule = if *why == "required" {
                "required"
            } else {
                "invalid"
            };
            invalid(field, rule, &e.to_string())
        }
        CommandError::NotBridged => invalid("other_leg_call_id", "required", &e.to_string()),
        CommandError::BadIdentifier(id) => {
            let mut data = Vec::new();
            json::write_str_array(&mut data, [id.as_str()]);
            env.error_with_data(StatusCode::NOT_FOUND, "bad identifier", &data)
        }
        CommandError::Unavailable => env.error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
