//! Routing-key segment encoding as Kazoo does it: a segment must never contain the separator or
//! a wildcard, so ids are percent-encoded (`.` -> `%2E`, `@` -> `%40`, ...), and account databases
//! appear as `account%2Fxx%2Fyy%2Frest`.

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Percent-encodes everything but `[A-Za-z0-9_~-]`.
pub fn encode_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    for &b in raw.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
    out
}

/// A routing-key word exactly as Kazoo's `kz_amqp_util:encode/1` writes it for a message it
/// publishes: as [`encode_segment`], but a space becomes `+`. Used for the keys Horizon publishes
/// on Kazoo's behalf (commands), where the consumer matches Kazoo's own encoding.
pub fn encode_kazoo_key(raw: &str) -> String {
    encode_segment(raw).replace("%20", "+")
}

/// Undoes percent-encoding where it is well formed; anything else is kept as it is (so a raw id
/// and its encoded form name the same segment).
pub fn decode_segment(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_string();
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_string())
}

/// The encoded database name of an account, as it appears in `configuration` routing keys.
pub fn account_db(account: &str) -> String {
    let part = |from: usize, to: usize| {
        account
            .get(from.min(account.len())..to.min(account.len()))
            .unwrap_or("")
    };
    format!(
        "account%2F{}%2F{}%2F{}",
        part(0, 2),
        part(2, 4),
        part(4, account.len())
    )
}

/// The account id an encoded account database (or monthly database, `...-YYYYMM`) belongs to;
/// `None` when the segment is not an account database.
pub fn account_from_db(db: &str) -> Option<String> {
    let rest = db
        .strip_prefix("account%2F")
        .or_else(|| db.strip_prefix("account%2f"))?;
    let mut parts = rest.split("%2F").flat_map(|p| p.split("%2f"));
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || a.len() != 2 || b.len() != 2 || c.is_empty() {
        return None;
    }
    // The month suffix is ASCII; a cut that falls inside a multi-byte character (the key is
    // network input) means there is none.
    let c = match c
        .len()
        .checked_sub(7)
        .filter(|at| c.is_char_boundary(*at))
        .map(|at| c.split_at(at))
    {
        Some((id, suffix))
            if !id.is_empty()
                && suffix.starts_with('-')
                && suffix[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            id
        }
        _ => c,
    };
    Some(format!("{a}{b}{c}"))
}

/// Seconds from year 0 (Gregorian) to 1970: Kazoo's timestamps count from year 0.
const GREGORIAN_OFFSET: u64 = 62_167_219_200;

/// A Kazoo (Gregorian) timestamp: seconds since year 0.
pub fn to_gregorian(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + GREGORIAN_OFFSET
}

/// Seconds since 1970 of a Kazoo (Gregorian) timestamp.
pub fn from_gregorian(seconds: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.saturating_sub(GREGORIAN_OFFSET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_kazoo() {
        assert_eq!(encode_segment("abc@host.example"), "abc%40host%2Eexample");
        assert_eq!(encode_segment("a*b#c d/e"), "a%2Ab%23c%20d%2Fe");
        assert_eq!(encode_segment("plain-id_1~"), "plain-id_1~");
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert_eq!(encode_kazoo_key("a b.c@d"), "a+b%2Ec%40d");
    }

    #[test]
    fn decoding_accepts_raw_and_encoded_forms() {
        for raw in ["abc@host.example", "100%", "%zz", "a%4", "é", "%"] {
            assert_eq!(decode_segment(&encode_segment(raw)), raw);
        }
        assert_eq!(decode_segment("abc%40host"), "abc@host");
        assert_eq!(decode_segment("100%"), "100%");
        assert_eq!(decode_segment("%zz"), "%zz");
        assert_eq!(decode_segment("%FF"), "%FF", "invalid UTF-8 stays raw");
    }

    #[test]
    fn account_databases_round_trip() {
        let id = "4b31dd1d32ce6d249897c06332375d65";
        let db = account_db(id);
        assert_eq!(db, "account%2F4b%2F31%2Fdd1d32ce6d249897c06332375d65");
        assert_eq!(account_from_db(&db).as_deref(), Some(id));
        assert_eq!(
            account_from_db(&format!("{db}-202611")).as_deref(),
            Some(id)
        );
        assert_eq!(
            account_from_db(&account_db("acct-a")).as_deref(),
            Some("acct-a")
        );
        assert_eq!(account_from_db("system_config"), None);
        // A multi-byte character where the month suffix would start (it used to panic).
        assert_eq!(
            account_from_db("account%2Fab%2Fcd%2Féééé").as_deref(),
            Some("abcdéééé")
        );
        assert_eq!(account_from_db("account%2Fab"), None);
        assert_eq!(account_from_db("account%2Fab%2Fcd%2F"), None);
    }
}
