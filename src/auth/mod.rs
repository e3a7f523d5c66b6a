//! Who a token is, and which accounts it may see (README, "The auth file").
//!
//! [`Auth`] is shared by every shard and the control plane. It holds the auth file's accounts and
//! static tokens (re-read on SIGHUP: [`Auth::reload`] swaps a snapshot, so readers never wait on a
//! reload and live sockets keep their identities) and the JWT keys. Authorization is a walk up
//! the account tree: a token's account sees itself and every descendant.

mod file;
mod jwt;
mod time;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

pub use file::AuthFileError;
pub use jwt::{JwtError, JwtKeys, TokenClaims};
pub use time::{format_rfc3339, parse_rfc3339};

/// VoIPBin's permission bits (its own token shape uses the same values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions(pub u32);

impl Permissions {
    pub const SUPER_ADMIN: u32 = 0x0001;
    pub const AGENT: u32 = 0x0010;
    pub const ADMIN: u32 = 0x0020;
    pub const MANAGER: u32 = 0x0040;

    /// Parses the permission names of the auth file (`super_admin`, `admin`, `manager`, `agent`).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Permissions, String> {
        let mut bits = 0;
        for name in names {
            bits |= match name {
                "super_admin" => Self::SUPER_ADMIN,
                "admin" => Self::ADMIN,
                "manager" => Self::MANAGER,
                "agent" => Self::AGENT,
                other => return Err(format!("unknown permission `{other}`")),
            };
        }
        Ok(Permissions(bits))
    }

    pub fn has(&self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// The names of the bits that are set, in a stable order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (Self::SUPER_ADMIN, "super_admin"),
            (Self::ADMIN, "admin"),
            (Self::MANAGER, "manager"),
            (Self::AGENT, "agent"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.has(*bit))
        .map(|(_, name)| name)
        .collect()
    }
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account_id: String,
    /// May subscribe for account `*` and sees every account (Kazoo's superduper admin).
    pub superduper_admin: bool,
    /// May publish through `POST /v2/events`.
    pub publish: bool,
    pub customer_id: Option<String>,
    pub agent_id: Option<String>,
    pub permissions: Permissions,
    /// The moment the token stops being valid; enforced for the life of a socket.
    pub expires_at: Option<SystemTime>,
    /// May close sockets through the REST API (`DELETE .../websockets`) for the accounts it sees.
    pub admin: bool,
    /// May issue call and conference commands (docs/kazoo.md "Commands"; the auth file's `commands`,
    /// the JWT claim `commands`).
    pub commands: bool,
    /// The auth file's token or access key it came from (`None`: a JWT). Removing it from the
    /// file revokes it: on SIGHUP its sockets are closed with 4001 `token revoked`.
    pub file_credential: Option<Arc<str>>,
}

/// Why a token was refused. The messages are Kazoo's and never contain the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid authentication token format")]
    Format,
    #[error("failed to authenticate token")]
    Failed,
    #[error("token expired")]
    Expired,
}

impl AuthError {
    pub const ALL: [AuthError; 3] = [AuthError::Format, AuthError::Failed, AuthError::Expired];

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Format => "format",
            AuthError::Failed => "failed",
            AuthError::Expired => "expired",
        }
    }
}

/// Tokens longer than this are refused before any work is done on them.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The accounts and static tokens of the auth file, as one immutable snapshot.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    /// Account id -> parent id.
    pub parents: HashMap<String, Option<String>>,
    /// Account id -> its SIP realm (lower case), for presence.
    pub realms: HashMap<String, String>,
    /// Static token -> identity.
    pub tokens: HashMap<String, Identity>,
    /// VoIPBin access key -> identity (its customer's admin).
    pub access_keys: HashMap<String, Identity>,
}

/// Authentication and authorization, shared by every thread.
pub struct Auth {
    file: Option<PathBuf>,
    directory: RwLock<Arc<Directory>>,
    keys: JwtKeys,
    /// Refused tokens by reason, in [`AuthError::ALL`] order (for metrics).
    failures: [std::sync::atomic::AtomicU64; 3],
}

impl Auth {
    /// Loads the auth file (if any) and keeps the JWT keys.
    pub fn new(file: Option<PathBuf>, keys: JwtKeys) -> Result<Auth, AuthFileError> {
        let directory = match &file {
            Some(path) => file::load(path)?,
            None => Directory::default(),
        };
        Ok(Auth {
            file,
            directory: RwLock::new(Arc::new(directory)),
            keys,
            failures: Default::default(),
        })
    }

    /// Re-reads the auth file. On error the previous contents stay in force.
    pub fn reload(&self) -> Result<(), AuthFileError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let directory = file::load(path)?;
        if let Ok(mut current) = self.directory.write() {
            *current = Arc::new(directory);
        }
        Ok(())
    }

    fn snapshot(&self) -> Arc<Directory> {
        match self.directory.read() {
            Ok(directory) => directory.clone(),
            // A writer never panics while holding the lock; if one did, the data is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn keys(&self) -> &JwtKeys {
        &self.keys
    }

    /// What the auth file holds, for `check-config`: `3 accounts, 2 tokens, 1 access key`.
    pub fn describe(&self) -> String {
        let d = self.snapshot();
        format!(
            "{} accounts, {} tokens, {} access keys",
            d.parents.len(),
            d.tokens.len(),
            d.access_keys.len()
        )
    }

    /// The identity behind `token` (a static token of the auth file, or a JWT), valid at `now`.
    pub fn authenticate(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        let result = self.check(token, now);
        if let Err(e) = &result {
            let at = AuthError::ALL.iter().position(|k| k == e).unwrap_or(0);
            self.failures[at].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// The identity behind a VoIPBin access key of the auth file (`access_key = true`), valid
    /// at `now`. Access keys are accepted only this way, never as tokens, and tokens never as
    /// access keys.
    pub fn authenticate_access_key(
        &self,
        key: &str,
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        let result = if key.is_empty()
            || key.len() > MAX_TOKEN_BYTES
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            Err(AuthError::Format)
        } else {
            match self.snapshot().access_keys.get(key) {
                None => Err(AuthError::Failed),
                Some(identity) if identity.expires_at.is_some_and(|at| at <= now) => {
                    Err(AuthError::Expired)
                }
                Some(identity) => Ok(identity.clone()),
            }
        };
        if let Err(e) = &result {
            let at = AuthError::ALL.iter().position(|k| k == e).unwrap_or(0);
            self.failures[at].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Refused tokens so far, by reason label (`format`, `failed`, `expired`).
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        AuthError::ALL
            .iter()
            .zip(&self.failures)
            .map(|(e, n)| (e.label(), n.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }

    fn check(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        if token.is_empty()
            || token.len() > MAX_TOKEN_BYTES
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(AuthError::Format);
        }
        let identity = match self.snapshot().tokens.get(token) {
            Some(identity) => identity.clone(),
            None if token.split('.').count() == 3 => {
                self.keys.verify(token).map_err(|e| match e {
                    JwtError::Format => AuthError::Format,
                    _ => AuthError::Failed,
                })?
            }
            None => return Err(AuthError::Failed),
        };
        match identity.expires_at {
            Some(at) if at <= now => Err(AuthError::Expired),
            _ => Ok(identity),
        }
    }

    /// Checks an auth file's text as a (re)load would, without using it (`check-config`,
    /// fuzzing): the error names the entry at fault.
    pub fn check_file_text(text: &str) -> Result<(), String> {
        file::parse(text).map(|_| ())
    }

    /// Whether `identity` came from an auth-file token or access key that the file no longer
    /// holds (for the same account): revoked by the last reload.
    pub fn revoked(&self, identity: &Identity) -> bool {
        let Some(key) = identity.file_credential.as_deref() else {
            return false;
        };
        let directory = self.snapshot();
        let now = directory
            .tokens
            .get(key)
            .or_else(|| directory.access_keys.get(key));
        now.is_none_or(|held| held.account_id != identity.account_id)
    }

    /// The SIP realm of `account` (from the auth file's `realm`): presence events of that realm
    /// are the account's.
    pub fn realm(&self, account: &str) -> Option<String> {
        self.snapshot().realms.get(account).cloned()
    }

    /// Whether `identity` may see the events of `account` (`*`: every account).
    /// The account's ancestors in the auth file's tree, nearest first (empty for an account the
    /// file does not place).
    pub fn ancestors(&self, account: &str) -> Vec<String> {
        let directory = self.snapshot();
        let mut out = Vec::new();
        let mut at = account;
        // The file loader refuses cycles; the bound makes a walk finite regardless.
        for _ in 0..=directory.parents.len() {
            match directory.parents.get(at) {
                Some(Some(parent)) => {
                    out.push(parent.clone());
                    at = parent;
                }
                _ => break,
            }
        }
        out
    }

    /// The accounts below `account` in the auth file's tree (children, their children, ...).
    pub fn descendants(&self, account: &str) -> Vec<String> {
        let directory = self.snapshot();
        let mut out: Vec<String> = Vec::new();
        let mut frontier = vec![account.to_string()];
        while let Some(parent) = frontier.pop() {
            for (child, p) in &directory.parents {
                if p.as_deref() == Some(parent.as_str()) && !out.contains(child) {
                    out.push(child.clone());
                    frontier.push(child.clone());
                }
            }
            if out.len() > directory.parents.len() {
                break;
            }
        }
        out.sort();
        out
    }

    pub fn may_see(&self, identity: &Identity, account: &str) -> bool {
        if identity.superduper_admin {
            return true;
        }
        if account == "*" {
            return false;
        }
        if account == identity.account_id {
            return true;
        }
        let directory = self.snapshot();
        let mut at = account;
        // The file loader refuses cycles; the bound makes a walk finite regardless.
        for _ in 0..=directory.parents.len() {
            match directory.parents.get(at) {
                Some(Some(parent)) if *parent == identity.account_id => return true,
                Some(Some(parent)) => at = parent,
                _ => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn auth_with(toml: &str) -> Auth {
        let dir = std::env::temp_dir().join(format!(
            "horizon-auth-{}-{}",
            std::process::id(),
            toml.len()
        ));
        std::fs::write(&dir, toml).expect("write auth file");
        let auth = Auth::new(Some(dir.clone()), JwtKeys::default()).expect("valid file");
        let _ = std::fs::remove_file(dir);
        auth
    }

    #[test]
    fn access_keys_are_only_access_keys_and_act_as_their_customers_admin() {
        let auth = auth_with(
            r#"
[[tokens]]
token = "ak-live"
account_id = "cust-1"
access_key = true
[[tokens]]
token = "ak-old"
account_id = "cust-1"
customer_id = "cust-1"
access_key = true
expires_at = "2001-01-01T00:00:00Z"
[[tokens]]
token = "tok-plain"
account_id = "cust-1"
"#,
        );
        let now = SystemTime::now();
        let key = auth
            .authenticate_access_key("ak-live", now)
            .expect("a live key");
        assert_eq!(key.customer_id.as_deref(), Some("cust-1"));
        assert!(key.permissions.has(Permissions::ADMIN));
        assert_eq!(
            auth.authenticate("ak-live", now).err(),
            Some(AuthError::Failed),
            "not a token"
        );
        assert_eq!(
            auth.authenticate_access_key("tok-plain", now).err(),
            Some(AuthError::Failed),
            "a token is not an access key"
        );
        assert_eq!(
            auth.authenticate_access_key("ak-old", now).err(),
            Some(AuthError::Expired)
        );
        assert_eq!(
            auth.authenticate_access_key("", now).err(),
            Some(AuthError::Format)
        );
    }

    const TREE: &str = r#"
[[accounts]]
id = "acct-reseller"
[[accounts]]
id = "acct-a"
parent = "acct-reseller"
[[accounts]]
id = "acct-a-child"
parent = "acct-a"
[[accounts]]
id = "acct-b"
parent = "acct-reseller"

[[tokens]]
token = "tok-reseller"
account_id = "acct-reseller"
[[tokens]]
token = "tok-a"
account_id = "acct-a"
[[tokens]]
token = "tok-admin"
account_id = "acct-reseller"
superduper_admin = true
[[tokens]]
token = "tok-old"
account_id = "acct-a"
expires_at = "2001-01-01T00:00:00Z"
"#;

    #[test]
    fn accounts_see_themselves_and_their_descendants_only() {
        let auth = auth_with(TREE);
        let now = SystemTime::now();
        let reseller = auth.authenticate("tok-reseller", now).expect("known");
        let a = auth.authenticate("tok-a", now).expect("known");
        let admin = auth.authenticate("tok-admin", now).expect("known");
        assert!(auth.may_see(&reseller, "acct-a"));
        assert!(auth.may_see(&reseller, "acct-a-child"));
        assert!(auth.may_see(&reseller, "acct-b"));
        assert!(!auth.may_see(&reseller, "*"));
        assert!(auth.may_see(&a, "acct-a-child"));
        assert!(!auth.may_see(&a, "acct-b"), "a sibling sees nothing");
        assert!(
            !auth.may_see(&a, "acct-reseller"),
            "a child does not see its parent"
        );
        assert!(!auth.may_see(&a, "acct-unknown"));
        assert!(auth.may_see(&admin, "*"));
        assert!(auth.may_see(&admin, "acct-unknown"));
    }

    #[test]
    fn tokens_are_checked_for_format_existence_and_expiry() {
        let auth = auth_with(TREE);
        let now = SystemTime::now();
        assert_eq!(auth.authenticate("", now), Err(AuthError::Format));
        assert_eq!(auth.authenticate("has space", now), Err(AuthError::Format));
        assert_eq!(auth.authenticate("tok-nope", now), Err(AuthError::Failed));
        assert_eq!(auth.authenticate("a.b.c", now), Err(AuthError::Format));
        assert_eq!(auth.authenticate("tok-old", now), Err(AuthError::Expired));
        assert!(auth
            .authenticate("tok-old", SystemTime::UNIX_EPOCH + Duration::from_secs(10))
            .is_ok());
    }

    #[test]
    fn permissions_parse_by_name() {
        let p = Permissions::from_names(["admin", "agent"]).expect("known names");
        assert!(p.has(Permissions::ADMIN) && p.has(Permissions::AGENT));
        assert!(!p.has(Permissions::MANAGER));
        assert_eq!(p.names(), vec!["admin", "agent"]);
        assert!(Permissions::from_names(["root"]).is_err());
    }
}
