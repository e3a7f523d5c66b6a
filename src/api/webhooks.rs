//! The crossbar webhooks API (docs/webhooks.md): hook types and samples, hooks per account
//! (create, list, get, replace, patch, delete), bulk re-enable, and the attempts log.
//!
//! Authorization is the sockets': a token manages the hooks of its own account and of the
//! accounts below it. Validation errors are crossbar's: 400, message `invalid data`, and
//! `data` naming each field and rule that failed.

use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::http::{Body, Envelope};
use super::{authenticate, State};
use crate::families::valid_account_id;
use crate::webhooks::hook::{self, HookType};
use crate::webhooks::request::check_target;
use crate::webhooks::store::StoredHook;
use crate::webhooks::Webhooks;

/// Largest request body of the webhooks routes.
const MAX_BODY: usize = 64 * 1024;
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 1000;

/// The methods a webhooks path answers, or `None` when it is not one.
pub fn methods(segments: &[&str]) -> Option<&'static [Method]> {
    const GET: &[Method] = &[Method::GET];
    const COLLECTION: &[Method] = &[Method::GET, Method::PUT, Method::PATCH];
    const DESCENDANTS: &[Method] = &[Method::GET, Method::PATCH];
    const ONE: &[Method] = &[Method::GET, Method::POST, Method::PATCH, Method::DELETE];
    Some(match segments {
        ["v2", "webhooks"] | ["v2", "webhooks", "samples"] | ["v2", "webhooks", "samples", _] => {
            GET
        }
        ["v2", "accounts", _, "webhooks"] => COLLECTION,
        ["v2", "accounts", _, "descendants", "webhooks"] => DESCENDANTS,
        ["v2", "accounts", _, "webhooks", "attempts"] => GET,
        ["v2", "accounts", _, "webhooks", _, "attempts"] => GET,
        ["v2", "accounts", _, "webhooks", _] => ONE,
        _ => return None,
    })
}

pub async fn route(
    state: &State,
    env: &Envelope<'_>,
    request: Request<Incoming>,
    segments: &[&str],
) -> Response<Body> {
    match segments {
        ["v2", "webhooks"] => return env.success(hook::catalog().to_string().as_bytes(), ""),
        ["v2", "webhooks", "samples"] => {
            let names: Vec<&str> = HookType::ALL.iter().map(|t| t.name()).collect();
            return env.success(json!(names).to_string().as_bytes(), "");
        }
        ["v2", "webhooks", "samples", name] => {
            return match HookType::parse(name) {
                Some(t) => env.success(hook::sample(t).to_string().as_bytes(), ""),
                None => env.error(StatusCode::NOT_FOUND, "no sample for this hook"),
            }
        }
        _ => {}
    }
    let Some(webhooks) = state.webhooks.clone() else {
        return env.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks are disabled on this node (webhooks_enabled = false)",
        );
    };
    let identity = match authenticate(state, env, &request) {
        Ok(identity) => identity,
        Err(response) => return *response,
    };
    let account = segments[2].to_string();
    if !valid_account_id(&account) {
        return env.error(StatusCode::BAD_REQUEST, "invalid account id");
    }
    if !state.auth.may_see(&identity, &account) {
        return env.error(StatusCode::FORBIDDEN, "unauthorized account id");
    }
    let method = request.method().clone();
    let query = request.uri().query().unwrap_or("").to_string();
    let body = if matches!(method, Method::PUT | Method::POST | Method::PATCH) {
        match read_body(state, env, request).await {
            Ok(body) => Some(body),
            Err(response) => return *response,
        }
    } else {
        None
    };
    let result = match (segments, &method) {
        (["v2", "accounts", _, "webhooks"], &Method::GET) => list(&webhooks, env, &[account]).await,
        (["v2", "accounts", _, "descendants", "webhooks"], &Method::GET) => {
            list(&webhooks, env, &state.auth.descendants(&account)).await
        }
        (["v2", "accounts", _, "webhooks"], &Method::PUT) => {
            create(&webhooks, env, &account, body.unwrap_or_default()).await
        }
        (["v2", "accounts", _, "webhooks"], &Method::PATCH) => {
            reenable(&webhooks, env, vec![account], body.unwrap_or_default()).await
        }
        (["v2", "accounts", _, "descendants", "webhooks"], &Method::PATCH) => {
            let mut accounts = vec![account.clone()];
            accounts.extend(state.auth.descendants(&account));
            reenable(&webhooks, env, accounts, body.unwrap_or_default()).await
        }
        (["v2", "accounts", _, "webhooks", "attempts"], _) => {
            attempts(&webhooks, env, &account, None, &query).await
        }
        (["v2", "accounts", _, "webhooks", id, "attempts"], _) => {
            attempts(&webhooks, env, &account, Some(id), &query).await
        }
        (["v2", "accounts", _, "webhooks", id], &Method::GET) => {
            match webhooks.store().hook(&account, id).await {
                Ok(Some(stored)) => Ok(env.success(document(&stored).to_string().as_bytes(), "")),
                Ok(None) => Ok(not_found(env, id)),
                Err(e) => Err(e),
            }
        }
        (["v2", "accounts", _, "webhooks", id], &Method::POST | &Method::PATCH) => {
            let patch = method == Method::PATCH;
            update(
                &webhooks,
                env,
                &account,
                id,
                body.unwrap_or_default(),
                patch,
            )
            .await
        }
        (["v2", "accounts", _, "webhooks", id], &Method::DELETE) => {
            match webhooks.store().hook(&account, id).await {
                Ok(Some(stored)) => match webhooks.store().delete_hook(&account, id).await {
                    Ok(_) => {
                        webhooks.changed().await;
                        Ok(env.success(document(&stored).to_string().as_bytes(), ""))
                    }
                    Err(e) => Err(e),
                },
                Ok(None) => Ok(not_found(env, id)),
                Err(e) => Err(e),
            }
        }
        _ => Ok(env.error(StatusCode::NOT_FOUND, "no such endpoint")),
    };
    result.unwrap_or_else(|e| {
        tracing::error!("webhooks: database error: {e}");
        env.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the webhooks database is unavailable",
        )
    })
}

fn not_found(env: &Envelope<'_>, id: &str) -> Response<Body> {
    let id: String = id.chars().take(64).collect();
    env.error(
        StatusCode::NOT_FOUND,
        &format!("bad identifier: webhook {id} not found"),
    )
}

pub(super) async fn read_body(
    state: &State,
    env: &Envelope<'_>,
    request: Request<Incoming>,
) -> Result<Value, Box<Response<Body>>> {
    let collect = Limited::new(request.into_body(), MAX_BODY).collect();
    let bytes = match tokio::time::timeout(state.header_timeout, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return Err(Box::new(env.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than 64 KiB",
            )))
        }
        Err(_) => {
            return Err(Box::new(env.error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            )))
        }
    };
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| Box::new(env.error(StatusCode::BAD_REQUEST, "body is not JSON")))?;
    // Crossbar's request envelope: `{"data": {...}}`.
    match value {
        Value::Object(mut map) if map.contains_key("data") => {
            Ok(map.remove("data").unwrap_or_default())
        }
        other => Ok(other),
    }
}

/// A validation failure, as crossbar answers it.
fn invalid(env: &Envelope<'_>, data: Map<String, Value>) -> Response<Body> {
    env.error_with_data(
        StatusCode::BAD_REQUEST,
        "invalid data",
        Value::Object(data).to_string().as_bytes(),
    )
}

/// What the API shows instead of a hook's signing secret (a secret is written, never read back).
/// A document sent back with this value keeps the stored secret.
const SECRET_MASK: &str = "********";

/// The document as the API shows it: the stored fields (the secret masked), `id`, and
/// `disable_reason` while auto-disabled.
fn document(stored: &StoredHook) -> Value {
    let mut doc = stored.doc.clone();
    if doc.contains_key("secret") {
        doc.insert("secret".into(), Value::from(SECRET_MASK));
    }
    doc.insert("id".into(), Value::from(stored.id.as_str()));
    doc.insert("enabled".into(), Value::from(stored.enabled));
    if let Some(reason) = &stored.disable_reason {
        doc.insert("disable_reason".into(), Value::from(reason.as_str()));
    }
    Value::Object(doc)
}

async fn list(
    webhooks: &Webhooks,
    env: &Envelope<'_>,
    accounts: &[String],
) -> Result<Response<Body>, sqlx::Error> {
    let mut out = Vec::new();
    for account in accounts {
        for stored in webhooks.store().account_hooks(account).await? {
            let text = |k: &str| stored.doc.get(k).cloned().unwrap_or(Value::Null);
            let mut entry = json!({
                "id": stored.id,
                "hook": text("hook"),
                "name": text("name"),
                "uri": text("uri"),
                "enabled": stored.enabled,
            });
            if accounts.len() > 1 || account != &stored.account_id {
                entry["account_id"] = Value::from(stored.account_id.as_str());
            }
            if let Some(reason) = &stored.disable_reason {
                entry["disable_reason"] = Value::from(reason.as_str());
            }
            out.push(entry);
        }
    }
    Ok(env.success(Value::Array(out).to_string().as_bytes(), ""))
}

/// Validation, then the private-address guard on the URI.
async fn checked(
    webhooks: &Webhooks,
    doc: &Value,
) -> Result<Map<String, Value>, Map<String, Value>> {
    let doc = hook::validate(doc).map_err(|i| i.0)?;
    let uri = doc.get("uri").and_then(Value::as_str).unwrap_or_default();
    if let Err(why) = check_target(uri, webhooks.config().allow_private).await {
        let mut data = Map::new();
        data.insert(
            "uri".into(),
            json!({"forbidden": {"message": format!("refused: {why} (set webhooks_allow_private_targets to allow)"), "value": uri}}),
        );
        return Err(data);
    }
    Ok(doc)
}

async fn create(
    webhooks: &Webhooks,
    env: &Envelope<'_>,
    account: &str,
    body: Value,
) -> Result<Response<Body>, sqlx::Error> {
    let doc = match checked(webhooks, &body).await {
        Ok(doc) => doc,
        Err(data) => return Ok(invalid(env, data)),
    };
    let limit = webhooks.config().max_per_account;
    if webhooks.store().count_hooks(account).await? >= limit as i64 {
        return Ok(env.error(
            StatusCode::BAD_REQUEST,
            &format!(
                "this account has {limit} hooks, the most it may have (webhooks_max_per_account)"
            ),
        ));
    }
    let stored = StoredHook {
        id: crate::ids::random_hex(16),
        account_id: account.to_string(),
        enabled: doc.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        doc,
        disable_reason: None,
    };
    webhooks.store().insert_hook(&stored).await?;
    webhooks.changed().await;
    let mut response = env.success(document(&stored).to_string().as_bytes(), "");
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

async fn update(
    webhooks: &Webhooks,
    env: &Envelope<'_>,
    account: &str,
    id: &str,
    body: Value,
    patch: bool,
) -> Result<Response<Body>, sqlx::Error> {
    let Some(current) = webhooks.store().hook(account, id).await? else {
        return Ok(not_found(env, id));
    };
    let Value::Object(changes) = body else {
        let mut data = Map::new();
        data.insert(
            "data".into(),
            json!({"type": {"message": "Value did not match type(s): object"}}),
        );
        return Ok(invalid(env, data));
    };
    let mut merged = if patch {
        let mut doc = current.doc.clone();
        for (k, v) in &changes {
            doc.insert(k.clone(), v.clone());
        }
        doc
    } else {
        changes.clone()
    };
    // A document read back from the API and sent again keeps its secret.
    if merged.get("secret").and_then(Value::as_str) == Some(SECRET_MASK) {
        match current.doc.get("secret") {
            Some(secret) => merged.insert("secret".into(), secret.clone()),
            None => merged.remove("secret"),
        };
    }
    let doc = match checked(webhooks, &Value::Object(merged)).await {
        Ok(doc) => doc,
        Err(data) => return Ok(invalid(env, data)),
    };
    let enabled = doc.get("enabled").and_then(Value::as_bool).unwrap_or(true);
    // `enabled: true` clears an auto-disable (Kazoo's re-enable by PATCH); otherwise the
    // reason stays while the hook stays disabled.
    let disable_reason = if enabled {
        None
    } else {
        current.disable_reason.clone()
    };
    let stored = StoredHook {
        id: current.id.clone(),
        account_id: current.account_id.clone(),
        doc,
        enabled,
        disable_reason,
    };
    if !webhooks.store().update_hook(&stored).await? {
        return Ok(not_found(env, id));
    }
    if enabled && current.disable_reason.is_some() {
        webhooks.store().clear_failures(&stored.id).await?;
    }
    webhooks.changed().await;
    Ok(env.success(document(&stored).to_string().as_bytes(), ""))
}

async fn reenable(
    webhooks: &Webhooks,
    env: &Envelope<'_>,
    accounts: Vec<String>,
    body: Value,
) -> Result<Response<Body>, sqlx::Error> {
    if body.get("re-enable").and_then(Value::as_bool) != Some(true) {
        let mut data = Map::new();
        data.insert(
            "re-enable".into(),
            json!({"required": {"message": "send {\"data\":{\"re-enable\":true}}"}}),
        );
        return Ok(invalid(env, data));
    }
    let count = webhooks.store().reenable(&accounts).await?;
    webhooks.changed().await;
    Ok(env.success(json!({"re-enabled": count}).to_string().as_bytes(), ""))
}

async fn attempts(
    webhooks: &Webhooks,
    env: &Envelope<'_>,
    account: &str,
    hook_id: Option<&str>,
    query: &str,
) -> Result<Response<Body>, sqlx::Error> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .take(32)
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let time = |name: &str| -> Result<Option<i64>, String> {
        match param(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(|s| Some(gregorian_to_ms(s)))
                .map_err(|_| format!("{name} must be a Gregorian timestamp (seconds)")),
        }
    };
    let (from, to) = match (time("created_from"), time("created_to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(why), _) | (_, Err(why)) => return Ok(env.error(StatusCode::BAD_REQUEST, &why)),
    };
    let to = to.unwrap_or(i64::MAX);
    let from = from.unwrap_or(0);
    if from > to {
        return Ok(env.error(StatusCode::BAD_REQUEST, "created_from is after created_to"));
    }
    let page = match param("page_size").map(str::parse::<i64>) {
        None => DEFAULT_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return Ok(env.error(
                StatusCode::BAD_REQUEST,
                &format!("page_size must be 1 to {MAX_PAGE}"),
            ))
        }
    };
    let before = match param("start_key") {
        None | Some("") => None,
        Some(key) => match key.split_once(':') {
            Some((ms, id)) if ms.parse::<i64>().is_ok() && id.len() <= 80 => {
                Some((ms.parse::<i64>().unwrap_or_default(), id.to_string()))
            }
            _ => return Ok(env.error(StatusCode::BAD_REQUEST, "invalid start_key")),
        },
    };
    let mut rows = webhooks
        .store()
        .attempts(account, hook_id, from, to, before, page + 1)
        .await?;
    let next = (rows.len() as i64 > page).then(|| {
        rows.truncate(page as usize);
        rows.last().map(|r| format!("{}:{}", r.created_ms, r.id))
    });
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut doc: Value = serde_json::from_str(&r.doc).unwrap_or(Value::Null);
            if let Some(map) = doc.as_object_mut() {
                map.insert("id".into(), Value::from(r.id.as_str()));
            }
            doc
        })
        .collect();
    let mut extra = format!(",\"page_size\":{}", data.len());
    if let Some(Some(next)) = next {
        extra.push_str(&format!(",\"next_start_key\":{}", Value::from(next)));
    }
    if let Some(start) = param("start_key") {
        extra.push_str(&format!(",\"start_key\":{}", Value::from(start)));
    }
    Ok(env.success(Value::Array(data).to_string().as_bytes(), &extra))
}

fn gregorian_to_ms(seconds: u64) -> i64 {
    super::cluster::from_gregorian(seconds)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .min(i64::MAX as u128) as i64
}
