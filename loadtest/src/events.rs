//! The events the load generator publishes and recognises: Kazoo-shaped call events stamped with
//! a sequence number, the send time and the account, in fields both targets pass through
//! unchanged (Horizon lower-cases keys; these already are).

/// The account of subscriber/event number `i` (a valid Kazoo-style id), counted from
/// `LOADTEST_ACCOUNT_BASE` (default 0): load processes aimed at different nodes of one cluster
/// use disjoint accounts with it (`loadtest/history.sh` with `NODES`).
pub fn account(i: usize) -> String {
    static BASE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        std::env::var("LOADTEST_ACCOUNT_BASE")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(0)
    });
    format!("ltacct{:05}", base + i)
}

/// Reseller `r`'s account id.
pub fn reseller(r: usize) -> String {
    format!("ltres{r:04}")
}

/// Who connection `c` is: one account's socket, or (every `reseller_every`-th connection when
/// there are resellers) a reseller console watching each of its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The account its token is for.
    pub token_account: String,
    /// The accounts it subscribes for (and may see).
    pub accounts: Vec<usize>,
    pub reseller: Option<usize>,
}

pub fn role(c: usize, accounts: usize, resellers: usize, reseller_every: usize) -> Role {
    if resellers > 0 && c % reseller_every == reseller_every - 1 {
        let r = (c / reseller_every) % resellers;
        Role {
            token_account: reseller(r),
            accounts: (r..accounts).step_by(resellers).collect(),
            reseller: Some(r),
        }
    } else {
        let a = c % accounts;
        Role {
            token_account: account(a),
            accounts: vec![a],
            reseller: None,
        }
    }
}

/// The auth file a gateway needs for a reseller tree (JWTs carry only the account).
pub fn auth_file(accounts: usize, resellers: usize) -> String {
    let mut out = String::new();
    for r in 0..resellers {
        out.push_str(&format!("[[accounts]]\nid = \"{}\"\n", reseller(r)));
    }
    for a in 0..accounts {
        out.push_str(&format!("[[accounts]]\nid = \"{}\"\n", account(a)));
        if resellers > 0 {
            out.push_str(&format!("parent = \"{}\"\n", reseller(a % resellers)));
        }
    }
    out
}

/// Event `seq` belongs to account `seq % accounts`.
pub fn account_of(seq: u64, accounts: usize) -> usize {
    (seq % accounts as u64) as usize
}

/// How many of the first `published` events belong to account `a`.
pub fn expected(published: u64, accounts: usize, a: usize) -> u64 {
    let accounts = accounts as u64;
    let a = a as u64;
    if published > a {
        (published - a).div_ceil(accounts)
    } else {
        0
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A call event of about `size` bytes.
pub fn payload(seq: u64, account: &str, event: &str, size: usize) -> Vec<u8> {
    let mut body = format!(
        r#"{{"lt_account":"{account}","seq":{seq},"sent_ns":{},"Event-Name":"{event}","Call-ID":"lt-{seq}","Caller-ID-Number":"+15551230000","Call-Direction":"inbound","Custom-Channel-Vars":{{"Account-ID":"{account}"}},"Padding":""#,
        now_ns()
    );
    while body.len() + 2 < size {
        body.push('x');
    }
    body.push_str("\"}");
    body.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn number_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(frame, key)? + key.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// `(account, seq, sent_ns)` of an event frame, if it is one of ours.
pub fn stamp(frame: &[u8]) -> Option<(&[u8], u64, u64)> {
    const ACCOUNT: &[u8] = b"\"lt_account\":\"";
    let at = find(frame, ACCOUNT)? + ACCOUNT.len();
    let len = frame[at..].iter().position(|b| *b == b'"')?;
    let account = &frame[at..at + len];
    Some((
        account,
        number_after(frame, b"\"seq\":")?,
        number_after(frame, b"\"sent_ns\":")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_stamp_and_size() {
        let p = payload(42, &account(3), "CHANNEL_CREATE", 1024);
        assert!((1020..=1030).contains(&p.len()), "{}", p.len());
        let (acct, seq, sent) = stamp(&p).expect("stamped");
        assert_eq!((acct, seq), (account(3).as_bytes(), 42));
        assert!(sent > 0);
        assert_eq!(expected(10, 3, 0), 4);
        assert_eq!(expected(10, 3, 1), 3);
        assert_eq!(expected(10, 3, 2), 3);
        assert_eq!(expected(2, 3, 2), 0);
    }

    #[test]
    fn resellers_watch_their_children() {
        let r = role(9, 10, 3, 10);
        assert_eq!(r.reseller, Some(0));
        assert_eq!(r.accounts, vec![0, 3, 6, 9]);
        assert_eq!(r.token_account, reseller(0));
        assert_eq!(role(19, 10, 3, 10).accounts, vec![1, 4, 7]);
        assert_eq!(role(5, 10, 3, 10).accounts, vec![5]);
        assert_eq!(role(9, 10, 0, 10).accounts, vec![9]);
        let file = auth_file(4, 2);
        assert!(
            file.contains("id = \"ltacct00003\"\nparent = \"ltres0001\""),
            "{file}"
        );
    }
}
