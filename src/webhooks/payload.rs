//! From a broker message to what a hook receives (docs/webhooks.md), and from that to
//! the bytes of a request: a query string, a form body or JSON.
//!
//! The shapes follow Kazoo's webhooks app: channel events are flattened into snake_case fields
//! (`webhooks_channel_util`), object events reduced to `{id, account_id, action, type}`
//! (`webhooks_object`), parking and notification events normalized (keys lower-cased, `-` to
//! `_`) with the AMQP envelope fields removed.

use serde_json::{Map, Value};

use super::hook::{Filter, HookType, CALL_EXCHANGE, CONF_EXCHANGE, NOTIFY_EXCHANGE};

/// An event a hook may fire on.
#[derive(Debug, Clone, PartialEq)]
pub struct HookEvent {
    pub hook: HookType,
    /// The account the event belongs to.
    pub account: String,
    pub filter: Filter,
    /// Kazoo's `Msg-ID` (or the call id) when the event has one: for the attempts log.
    pub event_id: Option<String>,
    pub payload: Map<String, Value>,
}

/// Why a message fires no hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    NotJson,
    NoAccount,
    NotAHookEvent,
}

/// Reads one broker message. `cluster_id` is added to every payload.
pub fn parse(
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    cluster_id: &str,
) -> Result<HookEvent, Unusable> {
    let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(body) else {
        return Err(Unusable::NotJson);
    };
    let text = |k: &str| event.get(k).and_then(Value::as_str).map(str::to_string);
    let name = text("Event-Name").unwrap_or_default();
    let mut parsed = match exchange {
        CALL_EXCHANGE => {
            let hook = match name.as_str() {
                "CHANNEL_CREATE" => HookType::ChannelCreate,
                "CHANNEL_ANSWER" => HookType::ChannelAnswer,
                "CHANNEL_BRIDGE" => HookType::ChannelBridge,
                "CHANNEL_DESTROY" | "CHANNEL_DISCONNECTED" => HookType::ChannelDestroy,
                "PARK_PARKED" | "PARK_RETRIEVED" | "PARK_ABANDONED" => HookType::Parking,
                _ => return Err(Unusable::NotAHookEvent),
            };
            let account = ccv(&event, "Account-ID")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .ok_or(Unusable::NoAccount)?
                .to_string();
            let internal_leg = event.get("Channel-Is-Loopback").and_then(Value::as_bool)
                == Some(true)
                || [
                    "Channel-Loopback-Leg",
                    "Channel-Loopback-Bowout-Execute",
                    "Channel-Loopback-Other-Leg-ID",
                ]
                .iter()
                .any(|k| event.get(*k).is_some_and(|v| !v.is_null()));
            let payload = if hook == HookType::Parking {
                normalize_object(
                    &event,
                    &[
                        "Node",
                        "Msg-ID",
                        "App-Version",
                        "App-Name",
                        "Event-Category",
                        "Custom-Channel-Vars",
                    ],
                )
            } else {
                channel_payload(&event, &account, hook)
            };
            HookEvent {
                hook,
                account,
                filter: Filter {
                    internal_leg,
                    ..Filter::default()
                },
                event_id: text("Msg-ID").or_else(|| text("Call-ID")),
                payload,
            }
        }
        CONF_EXCHANGE => {
            if !matches!(name.as_str(), "doc_created" | "doc_edited" | "doc_deleted") {
                return Err(Unusable::NotAHookEvent);
            }
            let id = text("ID").unwrap_or_default();
            let kind = text("Type").unwrap_or_default();
            // The account is the database's (an account or a monthly database), or the
            // document itself for the `accounts` database. The routing key carries the
            // database encoded (`account%2Fxx%2Fyy%2Frest`); the body's `Database` is a fallback.
            let db = routing_key
                .split('.')
                .nth(1)
                .map(str::to_string)
                .or_else(|| text("Database").map(|d| d.replace('/', "%2F")))
                .unwrap_or_default();
            let account = if db == "accounts" {
                Some(id.clone())
            } else {
                crate::families::account_from_db(&db)
            }
            .filter(|a| !a.is_empty())
            .ok_or(Unusable::NoAccount)?;
            let mut payload = Map::new();
            payload.insert("id".into(), Value::from(id));
            payload.insert("account_id".into(), Value::from(account.clone()));
            payload.insert("action".into(), Value::from(name.clone()));
            payload.insert("type".into(), Value::from(kind.clone()));
            HookEvent {
                hook: HookType::Object,
                account,
                filter: Filter {
                    action: Some(name),
                    kind: Some(kind),
                    internal_leg: false,
                },
                event_id: text("Msg-ID"),
                payload,
            }
        }
        NOTIFY_EXCHANGE => {
            let account = text("Account-ID")
                .filter(|a| !a.is_empty())
                .ok_or(Unusable::NoAccount)?;
            if name.is_empty() {
                return Err(Unusable::NotAHookEvent);
            }
            HookEvent {
                hook: HookType::Notifications,
                account,
                filter: Filter {
                    kind: Some(name),
                    ..Filter::default()
                },
                event_id: text("Msg-ID"),
                payload: normalize_object(&event, &[]),
            }
        }
        _ => return Err(Unusable::NotAHookEvent),
    };
    parsed
        .payload
        .insert("cluster_id".into(), Value::from(cluster_id));
    Ok(parsed)
}

fn ccv<'a>(event: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    event
        .get("Custom-Channel-Vars")
        .and_then(Value::as_object)
        .and_then(|c| c.get(key))
}

/// Kazoo's `webhooks_channel_util:format_event`: the fields a channel hook carries.
fn channel_payload(
    event: &Map<String, Value>,
    account: &str,
    hook: HookType,
) -> Map<String, Value> {
    let get = |k: &str| event.get(k).filter(|v| !v.is_null()).cloned();
    let ccv_value = |k: &str| ccv(event, k).filter(|v| !v.is_null()).cloned();
    let mut out = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    };
    put("account_id", Some(Value::from(account)));
    put(
        "authorizing_id",
        ccv_value("Authorizing-ID").or_else(|| get("Authorizing-ID")),
    );
    put(
        "authorizing_type",
        ccv_value("Authorizing-Type").or_else(|| get("Authorizing-Type")),
    );
    put("call_direction", get("Call-Direction"));
    put("call_id", get("Call-ID"));
    put("callee_id_name", get("Callee-ID-Name"));
    put("callee_id_number", get("Callee-ID-Number"));
    put("caller_id_name", get("Caller-ID-Name"));
    put("caller_id_number", get("Caller-ID-Number"));
    put(
        "custom_channel_vars",
        event
            .get("Custom-Channel-Vars")
            .filter(|v| v.is_object())
            .map(|v| Value::Object(normalize_object(v.as_object().unwrap_or(&Map::new()), &[]))),
    );
    put("from", get("From"));
    put("inception", get("Inception"));
    put(
        "is_internal_leg",
        Some(Value::from(
            event.get("Channel-Is-Loopback").and_then(Value::as_bool) == Some(true),
        )),
    );
    put("other_leg_call_id", get("Other-Leg-Call-ID"));
    put(
        "owner_id",
        ccv_value("Owner-ID").or_else(|| get("Owner-ID")),
    );
    put("request", get("Request"));
    put("timestamp", get("Timestamp"));
    put("to", get("To"));
    match hook {
        HookType::ChannelCreate => put("hook_event", Some(Value::from("channel_create"))),
        HookType::ChannelAnswer => put("hook_event", Some(Value::from("channel_answer"))),
        HookType::ChannelBridge => {
            put("hook_event", Some(Value::from("channel_bridge")));
            put("original_number", ccv_value("Original-Number"));
            put(
                "other_leg_destination_number",
                get("Other-Leg-Destination-Number"),
            );
        }
        _ => {
            put("hook_event", Some(Value::from("channel_destroy")));
            put("hangup_cause", get("Hangup-Cause"));
            put("hangup_code", get("Hangup-Code"));
            put("duration_seconds", get("Duration-Seconds"));
            put("ringing_seconds", get("Ringing-Seconds"));
            put("billing_seconds", get("Billing-Seconds"));
        }
    }
    out
}

/// Kazoo's `kz_json:normalize`: keys lower-cased with `-` as `_`, nested objects too; `drop`
/// names top-level keys (in their original spelling) to leave out.
fn normalize_object(event: &Map<String, Value>, drop: &[&str]) -> Map<String, Value> {
    fn normalize(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (normalize_key(k), normalize(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
            other => other.clone(),
        }
    }
    event
        .iter()
        .filter(|(k, v)| !drop.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (normalize_key(k), normalize(v)))
        .collect()
}

fn normalize_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// The payload a hook receives: the event with the hook's `custom_data` merged over it.
pub fn with_custom_data(
    payload: &Map<String, Value>,
    custom: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut out = payload.clone();
    if let Some(custom) = custom {
        for (k, v) in custom {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// `application/x-www-form-urlencoded` text of a payload, as Kazoo's `kz_json:to_querystring`
/// writes it: nested objects as `k[sub]=v`, arrays as `k[]=v` (brackets written as they are,
/// names and values percent-encoded), `null`s left out.
pub fn form_encode(payload: &Map<String, Value>) -> String {
    fn encode(out: &mut String, text: &str) {
        out.extend(form_urlencoded::byte_serialize(text.as_bytes()));
    }
    fn walk(out: &mut String, key: &mut String, value: &Value) {
        match value {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    let at = key.len();
                    key.push('[');
                    encode(key, k);
                    key.push(']');
                    walk(out, key, v);
                    key.truncate(at);
                }
            }
            Value::Array(items) => {
                for v in items {
                    let at = key.len();
                    key.push_str("[]");
                    walk(out, key, v);
                    key.truncate(at);
                }
            }
            scalar => {
                if !out.is_empty() {
                    out.push('&');
                }
                out.push_str(key);
                out.push('=');
                match scalar {
                    Value::String(s) => encode(out, s),
                    other => encode(out, &other.to_string()),
                }
            }
        }
    }
    let mut out = String::new();
    for (k, v) in payload {
        let mut key = String::new();
        encode(&mut key, k);
        walk(&mut out, &mut key, v);
    }
    out
}

/// `uri` with `query` appended: after the URI's own query string with `&`, else after `?`; a
/// fragment stays at the end.
pub fn append_query(uri: &str, query: &str) -> String {
    if query.is_empty() {
        return uri.to_string();
    }
    let (base, fragment) = match uri.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (uri, None),
    };
    let mut out = String::with_capacity(uri.len() + query.len() + 2);
    out.push_str(base);
    if !base.contains('?') {
        out.push('?');
    } else if !(base.ends_with('?') || base.ends_with('&')) {
        out.push('&');
    }
    out.push_str(query);
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_encoding_nests_like_kazoo() {
        let payload = json!({"a":"x y","n":{"b":"1","c":[1,2]},"z":null,"t":true});
        let text = form_encode(payload.as_object().unwrap());
        assert_eq!(text, "a=x+y&n[b]=1&n[c][]=1&n[c][]=2&t=true");
    }

    #[test]
    fn query_strings_append_to_existing_ones() {
        assert_eq!(append_query("http://h/p", "a=1"), "http://h/p?a=1");
        assert_eq!(append_query("http://h/p?k=v", "a=1"), "http://h/p?k=v&a=1");
        assert_eq!(append_query("http://h/p?", "a=1"), "http://h/p?a=1");
        assert_eq!(
            append_query("http://h/p?k=v#f", "a=1"),
            "http://h/p?k=v&a=1#f"
        );
    }

    #[test]
    fn custom_data_overwrites() {
        let p = json!({"a":"1","b":"2"});
        let c = json!({"b":"3"});
        let out = with_custom_data(p.as_object().unwrap(), c.as_object());
        assert_eq!(Value::Object(out), json!({"a":"1","b":"3"}));
    }
}
