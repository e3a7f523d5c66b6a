//! The events the load generator publishes and recognises: Kazoo-shaped call events stamped with
//! a sequence number, the send time and the account, in fields both targets pass through
//! unchanged (Horizon lower-cases keys; these already are).

/// The account of subscriber/event number `i` (a valid Kazoo-style id).
pub fn account(i: usize) -> String {
    format!("ltacct{i:05}")
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
pub fn payload(seq: u64, account: &str, size: usize) -> Vec<u8> {
    let mut body = format!(
        r#"{{"lt_account":"{account}","seq":{seq},"sent_ns":{},"Event-Name":"CHANNEL_CREATE","Call-ID":"lt-{seq}","Caller-ID-Number":"+15551230000","Call-Direction":"inbound","Custom-Channel-Vars":{{"Account-ID":"{account}"}},"Padding":""#,
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
        let p = payload(42, &account(3), 1024);
        assert!((1020..=1030).contains(&p.len()), "{}", p.len());
        let (acct, seq, sent) = stamp(&p).expect("stamped");
        assert_eq!((acct, seq), (account(3).as_bytes(), 42));
        assert!(sent > 0);
        assert_eq!(expected(10, 3, 0), 4);
        assert_eq!(expected(10, 3, 1), 3);
        assert_eq!(expected(10, 3, 2), 3);
        assert_eq!(expected(2, 3, 2), 0);
    }
}
