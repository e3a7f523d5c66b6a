//! The auth file (README, "The auth file"): the account tree and static bearer tokens, in TOML.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{parse_rfc3339, Directory, Identity, Permissions};
use crate::families::valid_account_id;

/// Why the auth file could not be used; the message names the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read auth file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    accounts: Vec<AccountEntry>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    id: String,
    parent: Option<String>,
    /// The SIP realm whose presence events belong to this account (one account per realm).
    realm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    account_id: String,
    #[serde(default)]
    superduper_admin: bool,
    #[serde(default)]
    publish: bool,
    /// May close sockets through the REST API for the accounts it sees.
    #[serde(default)]
    admin: bool,
    /// May issue call and conference commands for the accounts it sees.
    #[serde(default)]
    commands: bool,
    customer_id: Option<String>,
    agent_id: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    /// An RFC 3339 string or a TOML datetime.
    expires_at: Option<toml::Value>,
    /// A VoIPBin access key: accepted only as one (`?accesskey=`, cookie `accesskey`), and it
    /// acts as its customer's admin (VoIPBin's access keys belong to a customer).
    #[serde(default)]
    access_key: bool,
}

pub(super) fn load(path: &Path) -> Result<Directory, AuthFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|message| AuthFileError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

pub(super) fn parse(text: &str) -> Result<Directory, String> {
    let file: AuthFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut parents = HashMap::new();
    let mut realms: HashMap<String, String> = HashMap::new();
    for account in &file.accounts {
        if let Some(realm) = &account.realm {
            let realm = realm.to_ascii_lowercase();
            if realm.is_empty() || realm.len() > 253 || !realm.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(format!(
                    "account `{}`: realm `{realm}` is not a host name",
                    account.id
                ));
            }
            if let Some(other) = realms.insert(realm.clone(), account.id.clone()) {
                return Err(format!(
                    "realm `{realm}` belongs to both `{other}` and `{}`",
                    account.id
                ));
            }
        }
        if !valid_account_id(&account.id) {
            return Err(format!(
                "account id `{}` is not [A-Za-z0-9_-]{{1,64}}",
                account.id
            ));
        }
        if parents
            .insert(account.id.clone(), account.parent.clone())
            .is_some()
        {
            return Err(format!("account `{}` is listed twice", account.id));
        }
    }
    for (id, parent) in &parents {
        let Some(parent) = parent else { continue };
        if !parents.contains_key(parent) {
            return Err(format!("account `{id}` has unknown parent `{parent}`"));
        }
        // Walk up: reaching `id` again is a cycle.
        let mut at = parent;
        for _ in 0..=parents.len() {
            if at == id {
                return Err(format!("account `{id}` is its own ancestor"));
            }
            match parents.get(at) {
                Some(Some(next)) => at = next,
                _ => break,
            }
        }
    }
    let mut tokens = HashMap::new();
    let mut access_keys = HashMap::new();
    for (i, entry) in file.tokens.into_iter().enumerate() {
        let at = || format!("tokens[{i}] (account `{}`)", entry.account_id);
        if entry.token.is_empty() || !entry.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{}: token must be printable ASCII without spaces",
                at()
            ));
        }
        if !valid_account_id(&entry.account_id) {
            return Err(format!("{}: account id is not [A-Za-z0-9_-]{{1,64}}", at()));
        }
        let permissions = Permissions::from_names(entry.permissions.iter().map(String::as_str))
            .map_err(|e| format!("{}: {e}", at()))?;
        let expires_at = match &entry.expires_at {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(toml::Value::Datetime(d)) => Some(d.to_string()),
            Some(_) => return Err(format!("{}: expires_at must be an RFC 3339 time", at())),
        }
        .map(|s| {
            parse_rfc3339(&s).ok_or_else(|| format!("{}: expires_at `{s}` is not RFC 3339", at()))
        })
        .transpose()?;
        let mut identity = Identity {
            account_id: entry.account_id.clone(),
            superduper_admin: entry.superduper_admin,
            publish: entry.publish,
            customer_id: entry.customer_id,
            agent_id: entry.agent_id,
            permissions,
            expires_at,
            admin: entry.admin,
            commands: entry.commands,
            file_credential: Some(entry.token.as_str().into()),
        };
        let listed = if entry.access_key {
            identity.permissions.0 |= Permissions::ADMIN;
            identity
                .customer_id
                .get_or_insert_with(|| entry.account_id.clone());
            access_keys.insert(entry.token.clone(), identity).is_some()
                || tokens.contains_key(&entry.token)
        } else {
            tokens.insert(entry.token.clone(), identity).is_some()
                || access_keys.contains_key(&entry.token)
        };
        if listed {
            return Err(format!("{}: the same token is listed twice", at()));
        }
    }
    let realms = realms
        .into_iter()
        .map(|(realm, account)| (account, realm))
        .collect();
    Ok(Directory {
        parents,
        realms,
        tokens,
        access_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_example() {
        let d = parse(
            r#"
[[accounts]]
id = "acct-reseller"
[[accounts]]
id = "acct-a"
parent = "acct-reseller"

[[tokens]]
token = "tok-a"
account_id = "acct-a"
superduper_admin = false
publish = false
customer_id = "5013bc52-da9a-11ee-844f-2fa34248de28"
agent_id = "e0a7"
permissions = ["admin"]
expires_at = "2030-01-01T00:00:00Z"

[[tokens]]
token = "tok-b"
account_id = "acct-a"
expires_at = 2030-01-01T00:00:00Z
"#,
        )
        .expect("valid");
        assert_eq!(
            d.parents.get("acct-a"),
            Some(&Some("acct-reseller".to_string()))
        );
        let a = d.tokens.get("tok-a").expect("token");
        assert_eq!(
            a.customer_id.as_deref(),
            Some("5013bc52-da9a-11ee-844f-2fa34248de28")
        );
        assert!(a.permissions.has(Permissions::ADMIN));
        assert_eq!(a.expires_at, parse_rfc3339("2030-01-01T00:00:00Z"));
        assert_eq!(
            d.tokens.get("tok-b").and_then(|t| t.expires_at),
            a.expires_at
        );
    }

    #[test]
    fn refuses_broken_files_with_a_reason() {
        for (text, says) in [
            ("[[accounts]]\nid = \"a.b\"", "not [A-Za-z0-9_-]"),
            ("[[accounts]]\nid = \"a\"\nparent = \"zz\"", "unknown parent"),
            ("[[accounts]]\nid = \"a\"\nparent = \"b\"\n[[accounts]]\nid = \"b\"\nparent = \"a\"", "own ancestor"),
            ("[[tokens]]\ntoken = \"t\"\naccount_id = \"a\"\npermissions = [\"root\"]", "unknown permission"),
            ("[[tokens]]\ntoken = \"t t\"\naccount_id = \"a\"", "printable"),
            ("[[tokens]]\ntoken = \"t\"\naccount_id = \"a\"\nexpires_at = \"soon\"", "RFC 3339"),
            ("[[tokens]]\ntoken = \"t\"\naccount_id = \"a\"\n[[tokens]]\ntoken = \"t\"\naccount_id = \"a\"", "twice"),
            ("[[tokens]]\ntoken = \"t\"\naccount_id = \"a\"\nsecret = 1", "unknown field"),
        ] {
            let err = parse(text).err().unwrap_or_default();
            assert!(err.contains(says), "{text:?} gave {err:?}");
        }
    }
}
