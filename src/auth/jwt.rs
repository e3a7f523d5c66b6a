//! JSON Web Tokens (RFC 7519) as Horizon uses them: HMAC (HS256, HS384, HS512, as VoIPBin accepts
//! any HMAC) with a shared secret, RS256 with an RSA public key, and HS256 signing for
//! `horizon token`. The algorithm a token names must be one a key is configured for; `none` and
//! everything else are refused.
//!
//! Expiry: the standard `exp` (seconds), and VoIPBin's own string claim `expire`
//! (`2026-01-01T15:04:05.000000Z`); with both, the earlier counts.
//!
//! The cryptography - HMAC and RSA signatures, the RSA key's PEM - is the `jsonwebtoken` crate's
//! (on *ring*). Horizon's own rules sit on top: which algorithms a configured key admits, `none`
//! refused, the token's shape checked before any work, and the claims (both Horizon's and
//! VoIPBin's shapes) read here, so that every refusal keeps its reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::{parse_rfc3339, Identity, Permissions};
use crate::families::valid_account_id;
use crate::json::{self, TapeValue};

/// Why a JWT was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT (three base64url parts with a JSON header)")]
    Format,
    #[error("algorithm not accepted (HS256, HS384, HS512 and RS256 only, with a configured key)")]
    Algorithm,
    #[error("signature does not verify")]
    Signature,
    #[error("claim `{0}` is missing or invalid")]
    Claim(&'static str),
    #[error("no HS256 secret is configured (jwt_hs256_secret or jwt_hs256_secret_file)")]
    NoSecret,
    #[error("invalid RS256 public key: {0}")]
    Key(String),
}

/// The keys tokens are checked with.
#[derive(Default)]
pub struct JwtKeys {
    hs256: Option<Vec<u8>>,
    rs256: Option<DecodingKey>,
}

/// What `horizon token` (and the development token of `serve`) puts in a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenClaims {
    pub account_id: String,
    pub customer_id: Option<String>,
    pub agent_id: Option<String>,
    pub permissions: Permissions,
    pub publish: bool,
    pub superduper_admin: bool,
    /// May close sockets through the REST API (the `admin` claim).
    pub admin: bool,
    /// May issue call and conference commands (the `commands` claim).
    pub commands: bool,
    pub expires_at: Option<SystemTime>,
}

impl JwtKeys {
    /// `hs256_secret`: the shared secret; `rs256_pem`: an RSA public key in PEM (SPKI or PKCS#1).
    pub fn new(
        hs256_secret: Option<Vec<u8>>,
        rs256_pem: Option<&str>,
    ) -> Result<JwtKeys, JwtError> {
        let rs256 = match rs256_pem {
            None => None,
            Some(pem) => Some(
                DecodingKey::from_rsa_pem(pem.trim().as_bytes())
                    .map_err(|e| JwtError::Key(e.to_string()))?,
            ),
        };
        Ok(JwtKeys {
            hs256: hs256_secret.filter(|s| !s.is_empty()),
            rs256,
        })
    }

    pub fn has_hs256(&self) -> bool {
        self.hs256.is_some()
    }

    /// Checks the signature and reads the claims. Expiry is left to the caller (it is compared
    /// with the caller's clock, and enforced for the life of a socket).
    pub fn verify(&self, token: &str) -> Result<Identity, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Format);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Format);
        let mut header_json = decode(header)?;
        decode(signature)?;
        let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
        let alg = {
            let tape = simd_json::to_tape(&mut header_json).map_err(|_| JwtError::Format)?;
            let root = TapeValue::root(&tape.0).ok_or(JwtError::Format)?;
            root.get("alg").and_then(|a| a.as_str()).map(str::to_string)
        };
        // Only what a configured key admits: any HMAC with the secret (VoIPBin signs with any),
        // RS256 with the public key; `none` and everything else never.
        let secret = self.hs256.as_deref().map(DecodingKey::from_secret);
        let (algorithm, key) = match (alg.as_deref(), &secret, &self.rs256) {
            (Some("HS256"), Some(secret), _) => (Algorithm::HS256, secret),
            (Some("HS384"), Some(secret), _) => (Algorithm::HS384, secret),
            (Some("HS512"), Some(secret), _) => (Algorithm::HS512, secret),
            (Some("RS256"), _, Some(key)) => (Algorithm::RS256, key),
            _ => return Err(JwtError::Algorithm),
        };
        match jsonwebtoken::crypto::verify(signature, signed, key, algorithm) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(JwtError::Signature),
        }
        let mut claims = decode(payload)?;
        let tape = simd_json::to_tape(&mut claims).map_err(|_| JwtError::Claim("payload"))?;
        let root = TapeValue::root(&tape.0)
            .filter(|r| r.is_object())
            .ok_or(JwtError::Claim("payload"))?;
        identity_from_claims(root)
    }

    /// Signs `claims` with the HS256 secret.
    pub fn sign_hs256(&self, claims: &TokenClaims) -> Result<String, JwtError> {
        let secret = self.hs256.as_ref().ok_or(JwtError::NoSecret)?;
        let mut payload = Vec::new();
        payload.extend_from_slice(b"{\"account_id\":");
        json::write_str(&mut payload, &claims.account_id);
        for (name, value) in [
            ("customer_id", &claims.customer_id),
            ("agent_id", &claims.agent_id),
        ] {
            if let Some(value) = value {
                payload.extend_from_slice(format!(",\"{name}\":").as_bytes());
                json::write_str(&mut payload, value);
            }
        }
        payload.extend_from_slice(b",\"permissions\":");
        json::write_str_array(&mut payload, claims.permissions.names());
        payload.extend_from_slice(format!(",\"publish\":{}", claims.publish).as_bytes());
        if claims.admin {
            payload.extend_from_slice(b",\"admin\":true");
        }
        if claims.commands {
            payload.extend_from_slice(b",\"commands\":true");
        }
        if claims.superduper_admin {
            payload.extend_from_slice(b",\"superduper_admin\":true");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        payload.extend_from_slice(format!(",\"iat\":{}", now.as_secs()).as_bytes());
        if let Some(exp) = claims.expires_at {
            let exp = exp.duration_since(UNIX_EPOCH).unwrap_or_default();
            payload.extend_from_slice(format!(",\"exp\":{}", exp.as_secs()).as_bytes());
        }
        payload.push(b'}');
        let mut token = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(&payload));
        let key = EncodingKey::from_secret(secret);
        let signature = jsonwebtoken::crypto::sign(token.as_bytes(), &key, Algorithm::HS256)
            .map_err(|_| JwtError::Signature)?;
        token.push('.');
        token.push_str(&signature);
        Ok(token)
    }
}

/// The latest `exp` accepted: 9999-12-31T23:59:59Z.
const MAX_EXP_SECS: f64 = 253_402_300_799.0;

/// Reads Horizon's claims, or VoIPBin's own shape
/// (`{"type":"agent","agent":{"id","customer_id","permission"}}`).
fn identity_from_claims(root: TapeValue<'_, '_>) -> Result<Identity, JwtError> {
    let string = |v: Option<TapeValue<'_, '_>>| v.and_then(|v| v.as_str()).map(str::to_string);
    let number = |v: Option<TapeValue<'_, '_>>| -> Option<f64> {
        match v?.0.first()? {
            simd_json::Node::Static(simd_json::StaticNode::I64(n)) => Some(*n as f64),
            simd_json::Node::Static(simd_json::StaticNode::U64(n)) => Some(*n as f64),
            simd_json::Node::Static(simd_json::StaticNode::F64(n)) => Some(*n),
            _ => None,
        }
    };
    let flag = |name| {
        matches!(
            root.get(name).and_then(|v| v.0.first().copied()),
            Some(simd_json::Node::Static(simd_json::StaticNode::Bool(true)))
        )
    };
    let agent = root.get("agent").filter(|a| a.is_object());
    let mut customer_id = string(root.get("customer_id"));
    let mut agent_id = string(root.get("agent_id"));
    let mut permissions = match root.get("permissions") {
        Some(list) if list.is_array() => {
            let names: Vec<&str> = list.elements().filter_map(|e| e.as_str()).collect();
            Permissions::from_names(names).map_err(|_| JwtError::Claim("permissions"))?
        }
        Some(_) => return Err(JwtError::Claim("permissions")),
        None => Permissions::default(),
    };
    if let Some(agent) = agent {
        agent_id = agent_id.or_else(|| string(agent.get("id")));
        customer_id = customer_id.or_else(|| string(agent.get("customer_id")));
        if let Some(bits) = number(agent.get("permission")) {
            permissions.0 |= bits as u32;
        }
    }
    let account_id = string(root.get("account_id"))
        .or_else(|| customer_id.clone())
        .filter(|a| valid_account_id(a))
        .ok_or(JwtError::Claim("account_id"))?;
    let expires_at = match root.get("exp") {
        None => None,
        Some(v) => {
            let secs = number(Some(v))
                .filter(|s| *s >= 0.0)
                .ok_or(JwtError::Claim("exp"))?;
            // A signed token may still carry any number: past year 9999 it is refused rather
            // than overflowing the clock (`as` saturates; the addition would panic). NaN never
            // passes the filter above.
            if secs > MAX_EXP_SECS {
                return Err(JwtError::Claim("exp"));
            }
            Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
        }
    };
    // VoIPBin's tokens carry their expiry as a string; a token whose `expire` cannot be read is
    // refused rather than taken as never expiring.
    let expire = match root.get("expire") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(parse_rfc3339)
                .ok_or(JwtError::Claim("expire"))?,
        ),
    };
    let expires_at = match (expires_at, expire) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Identity {
        account_id,
        superduper_admin: flag("superduper_admin"),
        publish: flag("publish"),
        customer_id,
        agent_id,
        permissions,
        expires_at,
        admin: flag("admin"),
        commands: flag("commands"),
        file_credential: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    // Test tokens are signed with other crates than the one that verifies them.
    use hmac::{Hmac, Mac};
    use sha2::{Sha256, Sha384, Sha512};

    fn keys() -> JwtKeys {
        JwtKeys::new(Some(b"s3cret".to_vec()), Some(TEST_RSA_PUBLIC)).expect("valid keys")
    }

    fn forge(header: &str, payload: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn hs256(secret: &'static [u8]) -> impl Fn(&[u8]) -> Vec<u8> {
        hmac_with::<Hmac<Sha256>>(secret)
    }

    fn hmac_with<M: Mac + hmac::digest::KeyInit>(
        secret: &'static [u8],
    ) -> impl Fn(&[u8]) -> Vec<u8> {
        move |msg| {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(secret).unwrap();
            mac.update(msg);
            mac.finalize().into_bytes().to_vec()
        }
    }

    #[test]
    fn every_hmac_that_voipbin_accepts_verifies() {
        let keys = keys();
        let claims = r#"{"account_id":"a"}"#;
        let hs384 = forge(
            r#"{"alg":"HS384"}"#,
            claims,
            hmac_with::<Hmac<Sha384>>(b"s3cret"),
        );
        let hs512 = forge(
            r#"{"alg":"HS512"}"#,
            claims,
            hmac_with::<Hmac<Sha512>>(b"s3cret"),
        );
        assert_eq!(keys.verify(&hs384).map(|i| i.account_id), Ok("a".into()));
        assert_eq!(keys.verify(&hs512).map(|i| i.account_id), Ok("a".into()));
        // The algorithm named is the one checked: a 512 signature under a 384 header fails.
        let mixed = forge(
            r#"{"alg":"HS384"}"#,
            claims,
            hmac_with::<Hmac<Sha512>>(b"s3cret"),
        );
        assert_eq!(keys.verify(&mixed), Err(JwtError::Signature));
        let wrong = forge(
            r#"{"alg":"HS512"}"#,
            claims,
            hmac_with::<Hmac<Sha512>>(b"other"),
        );
        assert_eq!(keys.verify(&wrong), Err(JwtError::Signature));
    }

    #[test]
    fn voipbins_string_expire_claim_is_the_expiry() {
        let keys = keys();
        let token = |payload: &str| forge(r#"{"alg":"HS256"}"#, payload, hs256(b"s3cret"));
        // VoIPBin's own shape, as its api-manager signs it.
        let voipbin = token(
            r#"{"type":"agent","agent":{"id":"g1","customer_id":"c1","permission":32},"expire":"2020-01-01T15:04:05.000000Z"}"#,
        );
        let identity = keys.verify(&voipbin).expect("valid signature");
        assert_eq!(
            identity.expires_at,
            parse_rfc3339("2020-01-01T15:04:05Z"),
            "expired in 2020: the caller refuses it"
        );
        let both =
            token(r#"{"account_id":"a","exp":4000000000,"expire":"2030-01-01T00:00:00.000000Z"}"#);
        assert_eq!(
            keys.verify(&both).unwrap().expires_at,
            parse_rfc3339("2030-01-01T00:00:00Z"),
            "the earlier of exp and expire"
        );
        for bad in [
            r#""tomorrow""#,
            "1700000000",
            "null",
            r#""2030-13-01T00:00:00Z""#,
        ] {
            let t = token(&format!(r#"{{"account_id":"a","expire":{bad}}}"#));
            assert_eq!(keys.verify(&t), Err(JwtError::Claim("expire")), "{bad}");
        }
    }

    #[test]
    fn signs_and_verifies_hs256() {
        let keys = keys();
        let claims = TokenClaims {
            account_id: "acct-a".into(),
            customer_id: Some("cust-1".into()),
            permissions: Permissions(Permissions::ADMIN),
            publish: true,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            ..Default::default()
        };
        let token = keys.sign_hs256(&claims).expect("secret configured");
        let id = keys.verify(&token).expect("valid");
        assert_eq!(id.account_id, "acct-a");
        assert_eq!(id.customer_id.as_deref(), Some("cust-1"));
        assert!(id.publish && !id.superduper_admin);
        assert!(id.permissions.has(Permissions::ADMIN));
        assert_eq!(id.expires_at, claims.expires_at);
        assert!(!id.commands, "no command right unless the token says so");
        let commanding = TokenClaims {
            commands: true,
            ..claims.clone()
        };
        let id = keys
            .verify(&keys.sign_hs256(&commanding).expect("signed"))
            .expect("valid");
        assert!(id.commands, "the `commands` claim");

        let other = JwtKeys::new(Some(b"other".to_vec()), None).expect("keys");
        assert_eq!(other.verify(&token), Err(JwtError::Signature));
        let mut tampered = token.clone();
        tampered.insert(tampered.find('.').expect("dot") + 2, 'A');
        assert!(keys.verify(&tampered).is_err());
        assert_eq!(
            JwtKeys::default().sign_hs256(&claims),
            Err(JwtError::NoSecret)
        );
    }

    #[test]
    fn refuses_none_unknown_algorithms_and_unconfigured_keys() {
        let keys = keys();
        let none = forge(r#"{"alg":"none"}"#, r#"{"account_id":"acct-a"}"#, |_| {
            Vec::new()
        });
        assert_eq!(keys.verify(&none), Err(JwtError::Algorithm));
        let hs = forge(
            r#"{"alg":"HS256"}"#,
            r#"{"account_id":"acct-a"}"#,
            hs256(b"s3cret"),
        );
        assert!(keys.verify(&hs).is_ok());
        assert_eq!(JwtKeys::default().verify(&hs), Err(JwtError::Algorithm));
        assert_eq!(keys.verify("a.b"), Err(JwtError::Format));
        assert_eq!(keys.verify("!!.??.**"), Err(JwtError::Format));
        let bad_claims = forge(
            r#"{"alg":"HS256"}"#,
            r#"{"account_id":"a.b"}"#,
            hs256(b"s3cret"),
        );
        assert_eq!(keys.verify(&bad_claims), Err(JwtError::Claim("account_id")));
        let bad_exp = forge(
            r#"{"alg":"HS256"}"#,
            r#"{"account_id":"a","exp":"x"}"#,
            hs256(b"s3cret"),
        );
        assert_eq!(keys.verify(&bad_exp), Err(JwtError::Claim("exp")));
        // Validly signed, but past any clock: refused, never a panic (it used to kill a shard).
        for exp in [
            "1e300",
            "9223372036854775808",
            "18446744073709551615",
            "253402300800",
        ] {
            let huge = forge(
                r#"{"alg":"HS256","typ":"JWT"}"#,
                &format!(r#"{{"account_id":"a","exp":{exp}}}"#),
                hs256(b"s3cret"),
            );
            assert_eq!(keys.verify(&huge), Err(JwtError::Claim("exp")), "{exp}");
        }
    }

    #[test]
    fn accepts_voipbin_token_shape() {
        let keys = keys();
        let payload = r#"{"type":"agent","agent":{"id":"agent-1","customer_id":"cust-1","permission":96},"exp":4000000000}"#;
        let token = forge(r#"{"alg":"HS256","typ":"JWT"}"#, payload, hs256(b"s3cret"));
        let id = keys.verify(&token).expect("valid");
        assert_eq!(id.account_id, "cust-1");
        assert_eq!(id.agent_id.as_deref(), Some("agent-1"));
        assert!(id.permissions.has(Permissions::ADMIN) && id.permissions.has(Permissions::MANAGER));
        assert!(!id.permissions.has(Permissions::SUPER_ADMIN));
    }

    #[test]
    fn verifies_rs256() {
        let private = EncodingKey::from_rsa_pem(TEST_RSA_PRIVATE.as_bytes()).expect("test key");
        let sign = |msg: &[u8]| {
            let signature = jsonwebtoken::crypto::sign(msg, &private, Algorithm::RS256).unwrap();
            URL_SAFE_NO_PAD.decode(signature).unwrap()
        };
        let keys = keys();
        let token = forge(
            r#"{"alg":"RS256"}"#,
            r#"{"account_id":"acct-a","superduper_admin":true}"#,
            sign,
        );
        let id = keys.verify(&token).expect("valid RS256");
        assert!(id.superduper_admin);
        // Signed by `openssl dgst -sha256 -sign testdata/rs256-private.pem`, not by the crate
        // that verifies it.
        let id = keys
            .verify(include_str!("testdata/rs256-openssl.jwt").trim())
            .expect("an RS256 token signed by openssl");
        assert_eq!((id.account_id.as_str(), id.publish), ("acct-openssl", true));
        let forged = forge(
            r#"{"alg":"RS256"}"#,
            r#"{"account_id":"acct-a"}"#,
            hs256(b"s3cret"),
        );
        assert_eq!(keys.verify(&forged), Err(JwtError::Signature));
        assert!(JwtKeys::new(
            None,
            Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
        )
        .is_err());
    }

    // A throwaway 2048-bit key pair made with `openssl genpkey -algorithm RSA` for these tests only.
    const TEST_RSA_PRIVATE: &str = include_str!("testdata/rs256-private.pem");
    const TEST_RSA_PUBLIC: &str = include_str!("testdata/rs256-public.pem");
}
