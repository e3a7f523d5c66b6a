//! Hook documents (docs/webhooks.md): the hook types Kazoo offers, their modifiers, and the
//! validation crossbar applies to a document before it is saved.
//!
//! A stored document keeps Kazoo's field names and meanings: `retries` is the total number of
//! attempts (Kazoo's `retries/1` clamps it to 1..5, so 0 means one attempt), `http_verb` and
//! `format` are lower case, `custom_data` is an object of strings.

use serde_json::{json, Map, Value};

/// What a hook fires on, as stored in `hook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookType {
    ChannelCreate,
    ChannelAnswer,
    ChannelBridge,
    ChannelDestroy,
    Object,
    Parking,
    Notifications,
    All,
}

impl HookType {
    pub const ALL: [HookType; 8] = [
        HookType::ChannelCreate,
        HookType::ChannelAnswer,
        HookType::ChannelBridge,
        HookType::ChannelDestroy,
        HookType::Object,
        HookType::Parking,
        HookType::Notifications,
        HookType::All,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HookType::ChannelCreate => "channel_create",
            HookType::ChannelAnswer => "channel_answer",
            HookType::ChannelBridge => "channel_bridge",
            HookType::ChannelDestroy => "channel_destroy",
            HookType::Object => "object",
            HookType::Parking => "parking",
            HookType::Notifications => "notifications",
            HookType::All => "all",
        }
    }

    /// Kazoo lower-cases the stored `hook` before it looks it up.
    pub fn parse(text: &str) -> Option<HookType> {
        let lower = text.to_ascii_lowercase();
        HookType::ALL.into_iter().find(|t| t.name() == lower)
    }

    fn description(self) -> &'static str {
        match self {
            HookType::ChannelCreate => "Receive notifications when a new channel is created",
            HookType::ChannelAnswer => "Receive notifications when a channel is answered",
            HookType::ChannelBridge => "Receive notifications when two channels are bridged",
            HookType::ChannelDestroy => "Receive notifications when a channel is destroyed",
            HookType::Object => {
                "Receive notifications when objects (like JSON document objects) in Kazoo are changed"
            }
            HookType::Parking => "Events when calls get parked/retrieved",
            HookType::Notifications => "Fire a webhook when a notification event is triggered",
            HookType::All => "Receive every event the other hook types carry",
        }
    }

    fn friendly_name(self) -> &'static str {
        match self {
            HookType::ChannelCreate => "Channel Create",
            HookType::ChannelAnswer => "Channel Answer",
            HookType::ChannelBridge => "Channel Bridge",
            HookType::ChannelDestroy => "Channel Destroy",
            HookType::Object => "Object",
            HookType::Parking => "parking",
            HookType::Notifications => "Notifications Webhook",
            HookType::All => "All",
        }
    }

    /// The `(exchange, binding key)` pairs of the broker this hook type needs.
    pub fn amqp_bindings(self) -> Vec<(&'static str, &'static str)> {
        match self {
            HookType::ChannelCreate => vec![(CALL_EXCHANGE, "call.CHANNEL_CREATE.*")],
            HookType::ChannelAnswer => vec![(CALL_EXCHANGE, "call.CHANNEL_ANSWER.*")],
            HookType::ChannelBridge => vec![(CALL_EXCHANGE, "call.CHANNEL_BRIDGE.*")],
            HookType::ChannelDestroy => vec![
                (CALL_EXCHANGE, "call.CHANNEL_DESTROY.*"),
                // Kazoo fires channel_destroy hooks for CHANNEL_DISCONNECTED as well.
                (CALL_EXCHANGE, "call.CHANNEL_DISCONNECTED.*"),
            ],
            HookType::Object => vec![(CONF_EXCHANGE, "*.*.*.*")],
            HookType::Parking => vec![
                (CALL_EXCHANGE, "call.PARK_PARKED.*"),
                (CALL_EXCHANGE, "call.PARK_RETRIEVED.*"),
                (CALL_EXCHANGE, "call.PARK_ABANDONED.*"),
            ],
            HookType::Notifications => vec![(NOTIFY_EXCHANGE, "notifications.#")],
            HookType::All => HookType::ALL[..7]
                .iter()
                .flat_map(|t| t.amqp_bindings())
                .collect(),
        }
    }
}

pub const CALL_EXCHANGE: &str = "callevt";
pub const CONF_EXCHANGE: &str = "configuration";
pub const NOTIFY_EXCHANGE: &str = "notifications";

/// Object types and actions an `object` hook may name: the object family's (Kazoo's
/// `DOC_TYPES` and document actions).
pub use crate::families::{OBJECT_ACTIONS, OBJECT_TYPES};

/// Notification names a `notifications` hook may name (Kazoo's `kapi_notifications`
/// definitions, `skel` and `notify_update` left out as Kazoo does), besides `all`.
pub const NOTIFICATION_TYPES: &[&str] = &[
    "account_zone_change",
    "bill_reminder",
    "cnam_request",
    "customer_update",
    "denied_emergency_bridge",
    "deregister",
    "fax_inbound",
    "fax_inbound_error",
    "fax_outbound",
    "fax_outbound_error",
    "fax_outbound_smtp_error",
    "first_occurrence",
    "low_balance",
    "missed_call",
    "new_account",
    "new_user",
    "number_feature_manual_action",
    "password_recovery",
    "port_cancel",
    "port_comment",
    "port_pending",
    "port_rejected",
    "port_request",
    "port_scheduled",
    "port_unconfirmed",
    "ported",
    "register",
    "service_added",
    "system_alert",
    "topup",
    "transaction",
    "voicemail_full",
    "voicemail_new",
    "voicemail_saved",
    "webhook_disabled",
];

/// `GET /v2/webhooks`: the hook types, with their modifiers.
pub fn catalog() -> Value {
    let items = |list: &[&str]| Value::from(list.to_vec());
    Value::Array(
        HookType::ALL
            .iter()
            .map(|t| {
                let mut entry = json!({
                    "id": t.name(),
                    "name": t.friendly_name(),
                    "description": t.description(),
                });
                let modifiers = match t {
                    HookType::Object => Some(json!({
                        "type": {"type": "array", "description": "A list of object types to handle", "items": items(OBJECT_TYPES)},
                        "action": {"type": "array", "description": "A list of object actions to handle", "items": items(OBJECT_ACTIONS)},
                    })),
                    HookType::Notifications => {
                        let mut names: Vec<&str> = vec!["all"];
                        names.extend_from_slice(NOTIFICATION_TYPES);
                        Some(json!({"type": {"type": "object", "items": items(&names)}}))
                    }
                    _ => None,
                };
                if let Some(modifiers) = modifiers {
                    entry["modifiers"] = modifiers;
                }
                entry
            })
            .collect(),
    )
}

/// `GET /v2/webhooks/samples[/{ID}]`: one sample payload per hook type, in the shape the hook
/// would receive it.
pub fn sample(hook: HookType) -> Value {
    let channel = |event: &str| {
        json!({
            "account_id": "4b8c6fec4b2597882c0390202d195419",
            "call_direction": "inbound",
            "call_id": "6a8f4bb2-1a17-4f48-9ad8-1b6d7b3d7b0e",
            "callee_id_name": "Desk",
            "callee_id_number": "1000",
            "caller_id_name": "Alice",
            "caller_id_number": "+15551230000",
            "custom_channel_vars": {"account_id": "4b8c6fec4b2597882c0390202d195419"},
            "from": "+15551230000@sip.example.com",
            "hook_event": event,
            "inception": "onnet",
            "is_internal_leg": false,
            "request": "1000@sip.example.com",
            "timestamp": 63910000000u64,
            "to": "1000@sip.example.com",
            "cluster_id": "horizon",
        })
    };
    match hook {
        HookType::ChannelCreate => channel("channel_create"),
        HookType::ChannelAnswer => channel("channel_answer"),
        HookType::ChannelBridge => {
            let mut v = channel("channel_bridge");
            v["original_number"] = json!("+15551230000");
            v["other_leg_destination_number"] = json!("1000");
            v
        }
        HookType::ChannelDestroy => {
            let mut v = channel("channel_destroy");
            v["hangup_cause"] = json!("NORMAL_CLEARING");
            v["hangup_code"] = json!("sip:200");
            v["duration_seconds"] = json!(42);
            v["ringing_seconds"] = json!(2);
            v["billing_seconds"] = json!(40);
            v
        }
        HookType::Object => json!({
            "id": "b6b7a4ee4c0e4ff2b0a1a5fb61a6c2f0",
            "account_id": "4b8c6fec4b2597882c0390202d195419",
            "action": "doc_edited",
            "type": "user",
            "cluster_id": "horizon",
        }),
        HookType::Parking => json!({
            "call_id": "6a8f4bb2-1a17-4f48-9ad8-1b6d7b3d7b0e",
            "event_name": "PARK_PARKED",
            "parking_slot": "1",
            "caller_id_name": "Alice",
            "caller_id_number": "+15551230000",
            "cluster_id": "horizon",
        }),
        HookType::Notifications => json!({
            "event_name": "voicemail_new",
            "account_id": "4b8c6fec4b2597882c0390202d195419",
            "voicemail_box": "a1f0c4f8e0b94a4da5b1f1e1f3c1a0b2",
            "caller_id_number": "+15551230000",
            "cluster_id": "horizon",
        }),
        HookType::All => channel("channel_create"),
    }
}

/// HTTP method of a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
        }
    }
}

/// How a POST or PUT body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    FormData,
    Json,
}

/// A validated hook, as the delivery side uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub id: String,
    pub account_id: String,
    pub hook: HookType,
    pub name: String,
    pub uri: String,
    pub verb: Verb,
    pub format: Format,
    /// Total attempts (1..=5).
    pub attempts: u32,
    pub custom_data: Option<Map<String, Value>>,
    pub enabled: bool,
    pub disable_reason: Option<String>,
    pub include_subaccounts: bool,
    pub include_internal_legs: bool,
    pub secret: Option<String>,
}

/// A crossbar validation error: `{field: {rule: {"message": .., ..}}}`, answered 400 with the
/// message "invalid data".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Invalid(pub Map<String, Value>);

impl Invalid {
    fn add(&mut self, field: &str, rule: &str, detail: Value) {
        let entry = self
            .0
            .entry(field.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(rules) = entry {
            rules.insert(rule.to_string(), detail);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The most a hook document may weigh, and the longest `name`/`uri`.
pub const MAX_DOC_BYTES: usize = 16 * 1024;
const MAX_NAME: usize = 128;
const MAX_URI: usize = 2048;
const MAX_CUSTOM_DATA: usize = 64;

/// Validates a hook document as crossbar does and fills in Kazoo's defaults. Returns the
/// document to store (the client's document, unknown fields kept as Kazoo keeps them, private
/// fields dropped) or every problem found.
pub fn validate(doc: &Value) -> Result<Map<String, Value>, Invalid> {
    let mut invalid = Invalid::default();
    let Some(object) = doc.as_object() else {
        invalid.add(
            "data",
            "type",
            json!({"message": "Value did not match type(s): object"}),
        );
        return Err(invalid);
    };
    let mut out: Map<String, Value> = object
        .iter()
        .filter(|(k, _)| !k.starts_with('_') && !k.starts_with("pvt_"))
        .filter(|(k, _)| !matches!(k.as_str(), "id" | "disable_reason"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let required_string = |invalid: &mut Invalid, field: &str, max: usize| -> Option<String> {
        match object.get(field) {
            None | Some(Value::Null) => {
                invalid.add(
                    field,
                    "required",
                    json!({"message": "Field is required but missing"}),
                );
                None
            }
            Some(Value::String(s)) if s.is_empty() => {
                invalid.add(
                    field,
                    "minLength",
                    json!({"message": "Value must be at least 1 characters", "target": 1}),
                );
                None
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                invalid.add(
                    field,
                    "maxLength",
                    json!({"message": format!("Value must be at most {max} characters"), "target": max}),
                );
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                invalid.add(
                    field,
                    "type",
                    json!({"message": "Value did not match type(s): string", "value": other}),
                );
                None
            }
        }
    };
    let hook = required_string(&mut invalid, "hook", 64);
    let hook_type = hook.as_deref().and_then(|h| {
        let parsed = HookType::parse(h);
        if parsed.is_none() {
            let names: Vec<&str> = HookType::ALL.iter().map(|t| t.name()).collect();
            invalid.add(
                "hook",
                "enum",
                json!({"message": "Value not found in enumerated list of values", "value": h, "target": names}),
            );
        }
        parsed
    });
    if let Some(t) = hook_type {
        out.insert("hook".into(), Value::from(t.name()));
    }
    required_string(&mut invalid, "name", MAX_NAME);
    if let Some(uri) = required_string(&mut invalid, "uri", MAX_URI) {
        if let Err(why) = check_uri(&uri) {
            invalid.add(
                "uri",
                "format",
                json!({"message": format!("Value is not a valid http(s) URI: {why}"), "value": uri}),
            );
        }
    }
    let enum_field = |invalid: &mut Invalid,
                      out: &mut Map<String, Value>,
                      field: &str,
                      allowed: &[&str],
                      default: &str| {
        match object.get(field) {
            None | Some(Value::Null) => {
                out.insert(field.into(), Value::from(default));
            }
            Some(Value::String(s)) if allowed.contains(&s.to_ascii_lowercase().as_str()) => {
                out.insert(field.into(), Value::from(s.to_ascii_lowercase()));
            }
            Some(other) => invalid.add(
                field,
                "enum",
                json!({"message": "Value not found in enumerated list of values", "value": other, "target": allowed}),
            ),
        }
    };
    enum_field(
        &mut invalid,
        &mut out,
        "http_verb",
        &["get", "post", "put"],
        "post",
    );
    enum_field(
        &mut invalid,
        &mut out,
        "format",
        &["form-data", "json"],
        "form-data",
    );
    match object.get("retries") {
        None | Some(Value::Null) => {
            out.insert("retries".into(), Value::from(3));
        }
        Some(Value::Number(n)) => match n.as_i64() {
            Some(r) if r < 0 => invalid.add(
                "retries",
                "minimum",
                json!({"message": "Value must be at least 0", "value": r, "target": 0}),
            ),
            Some(r) if r > 5 => invalid.add(
                "retries",
                "maximum",
                json!({"message": "Value must be at most 5", "value": r, "target": 5}),
            ),
            Some(_) => {}
            None => invalid.add(
                "retries",
                "type",
                json!({"message": "Value did not match type(s): integer", "value": n}),
            ),
        },
        Some(other) => invalid.add(
            "retries",
            "type",
            json!({"message": "Value did not match type(s): integer", "value": other}),
        ),
    }
    for (field, default) in [
        ("enabled", true),
        ("include_subaccounts", false),
        ("include_internal_legs", true),
    ] {
        match object.get(field) {
            None | Some(Value::Null) => {
                out.insert(field.into(), Value::from(default));
            }
            Some(Value::Bool(_)) => {}
            Some(other) => invalid.add(
                field,
                "type",
                json!({"message": "Value did not match type(s): boolean", "value": other}),
            ),
        }
    }
    match object.get("secret") {
        None | Some(Value::Null) => {
            out.remove("secret");
        }
        Some(Value::String(s)) if (1..=512).contains(&s.len()) => {
            if let Some(encoded) = s.strip_prefix("whsec_") {
                use base64::Engine as _;
                if base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_or(true, |k| k.is_empty())
                {
                    invalid.add(
                        "secret",
                        "format",
                        json!({"message": "a whsec_ secret must carry base64 key bytes"}),
                    );
                }
            }
        }
        Some(_) => invalid.add(
            "secret",
            "type",
            json!({"message": "Value did not match type(s): string of 1 to 512 characters"}),
        ),
    }
    let custom_data = match object.get("custom_data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            if map.len() > MAX_CUSTOM_DATA {
                invalid.add(
                    "custom_data",
                    "maxProperties",
                    json!({"message": format!("Object must have at most {MAX_CUSTOM_DATA} properties")}),
                );
            }
            for (key, value) in map {
                if !value.is_string() {
                    invalid.add(
                        &format!("custom_data.{key}"),
                        "type",
                        json!({"message": "Value did not match type(s): string", "value": value}),
                    );
                }
            }
            Some(map)
        }
        Some(other) => {
            invalid.add(
                "custom_data",
                "type",
                json!({"message": "Value did not match type(s): object", "value": other}),
            );
            None
        }
    };
    if let Some(t) = hook_type {
        check_modifiers(&mut invalid, t, custom_data);
    }
    if serde_json::to_vec(&out).map_or(0, |v| v.len()) > MAX_DOC_BYTES {
        invalid.add(
            "data",
            "maxSize",
            json!({"message": format!("document larger than {MAX_DOC_BYTES} bytes")}),
        );
    }
    if invalid.is_empty() {
        Ok(out)
    } else {
        Err(invalid)
    }
}

/// Kazoo's modifier checks: an `object` hook names the `type` and `action` it is for (both from
/// the hook's lists), a `notifications` hook the notification `type` (or `all`).
fn check_modifiers(invalid: &mut Invalid, hook: HookType, data: Option<&Map<String, Value>>) {
    let mut need = |field: &str, allowed: &[&str], extra: Option<&str>| {
        let value = data.and_then(|d| d.get(field)).and_then(Value::as_str);
        let path = format!("custom_data.{field}");
        match value {
            None => invalid.add(
                &path,
                "required",
                json!({"message": format!("the {} hook needs custom_data.{field}", hook.name())}),
            ),
            Some(v) if allowed.contains(&v) || extra == Some(v) => {}
            Some(v) => {
                let mut target: Vec<&str> = extra.into_iter().collect();
                target.extend_from_slice(allowed);
                invalid.add(
                    &path,
                    "enum",
                    json!({"message": "Value not found in enumerated list of values", "value": v, "target": target}),
                )
            }
        }
    };
    match hook {
        HookType::Object => {
            need("type", OBJECT_TYPES, None);
            need("action", OBJECT_ACTIONS, None);
        }
        HookType::Notifications => need("type", NOTIFICATION_TYPES, Some("all")),
        _ => {}
    }
}

/// An http or https URI with a host.
pub fn check_uri(uri: &str) -> Result<reqwest::Url, &'static str> {
    let url = reqwest::Url::parse(uri).map_err(|_| "not a URI")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme must be http or https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URI are not allowed (use a secret)");
    }
    Ok(url)
}

impl Hook {
    /// The hook a stored, validated document describes.
    pub fn from_doc(
        id: &str,
        account_id: &str,
        doc: &Map<String, Value>,
        enabled: bool,
        disable_reason: Option<String>,
    ) -> Option<Hook> {
        let text = |k: &str| doc.get(k).and_then(Value::as_str);
        let flag = |k: &str, default: bool| doc.get(k).and_then(Value::as_bool).unwrap_or(default);
        let verb = match text("http_verb").unwrap_or("post") {
            "get" => Verb::Get,
            "put" => Verb::Put,
            _ => Verb::Post,
        };
        let format = match text("format").unwrap_or("form-data") {
            "json" => Format::Json,
            _ => Format::FormData,
        };
        let retries = doc.get("retries").and_then(Value::as_i64).unwrap_or(3);
        Some(Hook {
            id: id.to_string(),
            account_id: account_id.to_string(),
            hook: HookType::parse(text("hook")?)?,
            name: text("name").unwrap_or_default().to_string(),
            uri: text("uri")?.to_string(),
            verb,
            format,
            attempts: retries.clamp(1, 5) as u32,
            custom_data: doc.get("custom_data").and_then(Value::as_object).cloned(),
            enabled,
            disable_reason,
            include_subaccounts: flag("include_subaccounts", false),
            include_internal_legs: flag("include_internal_legs", true),
            secret: text("secret").map(str::to_string),
        })
    }

    /// Whether this hook fires on an event of `hook_event` (a hook type name) whose filter
    /// attributes are `filter`.
    pub fn wants(&self, event: HookType, filter: &Filter) -> bool {
        if self.hook != event && self.hook != HookType::All {
            return false;
        }
        if filter.internal_leg && !self.include_internal_legs {
            return false;
        }
        let modifier = |k: &str| {
            self.custom_data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(Value::as_str)
        };
        match self.hook {
            HookType::Object => {
                modifier("action") == filter.action.as_deref()
                    && modifier("type") == filter.kind.as_deref()
            }
            HookType::Notifications => {
                let want = modifier("type");
                want == Some("all") || want.is_none() || want == filter.kind.as_deref()
            }
            _ => true,
        }
    }
}

/// What hooks filter an event by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Object: the document action; unused otherwise.
    pub action: Option<String>,
    /// Object: the document type; notifications: the notification name.
    pub kind: Option<String>,
    /// A call event of a loopback (internal) leg.
    pub internal_leg: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kazoos() {
        let doc =
            validate(&json!({"hook":"CHANNEL_CREATE","name":"n","uri":"http://example.com/h"}))
                .unwrap();
        assert_eq!(doc["hook"], "channel_create");
        assert_eq!(doc["http_verb"], "post");
        assert_eq!(doc["retries"], 3);
        assert_eq!(doc["format"], "form-data");
        assert_eq!(doc["enabled"], true);
        assert_eq!(doc["include_internal_legs"], true);
        let hook = Hook::from_doc("h", "a", &doc, true, None).unwrap();
        assert_eq!(hook.attempts, 3);
    }

    #[test]
    fn retries_zero_means_one_attempt() {
        let doc =
            validate(&json!({"hook":"all","name":"n","uri":"https://e.com","retries":0})).unwrap();
        assert_eq!(
            Hook::from_doc("h", "a", &doc, true, None).unwrap().attempts,
            1
        );
    }

    #[test]
    fn every_problem_is_named() {
        let err = validate(&json!({"hook":"nope","uri":"ftp://x","retries":9,"http_verb":"delete","custom_data":{"a":1}})).unwrap_err();
        for field in [
            "hook",
            "name",
            "uri",
            "retries",
            "http_verb",
            "custom_data.a",
        ] {
            assert!(err.0.contains_key(field), "{field}: {:?}", err.0);
        }
        let err = validate(&json!({"hook":"object","name":"n","uri":"http://e.com"})).unwrap_err();
        assert!(err.0.contains_key("custom_data.type"));
        assert!(err.0.contains_key("custom_data.action"));
        let err = validate(&json!({"hook":"notifications","name":"n","uri":"http://e.com","custom_data":{"type":"bogus"}})).unwrap_err();
        assert!(err.0["custom_data.type"].get("enum").is_some());
    }
}
