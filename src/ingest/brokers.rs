//! Several brokers: `amqp_url` may list the nodes of a RabbitMQ cluster. Every broker connection
//! of the node (ingest, cluster control, webhooks) holds a [`Brokers`] of its own: it connects to
//! the first URL that answers, in order, and after losing a broker starts with the one after it,
//! so a dead node is tried last rather than first. Each URL keeps the installed amqps settings
//! ([`super::tls::connect`]).

use std::time::Duration;

use lapin::Connection;

/// The URLs of a comma-separated `amqp_url`, in order, trimmed, without empty entries.
pub fn broker_urls(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// One connection's place in the broker list.
#[derive(Debug, Clone)]
pub struct Brokers {
    urls: Vec<String>,
    /// Where the next round of attempts begins.
    next: usize,
    /// The broker of the live (or last) connection.
    current: Option<usize>,
}

impl Brokers {
    pub fn new(list: &str) -> Brokers {
        Brokers {
            urls: broker_urls(list).into_iter().map(String::from).collect(),
            next: 0,
            current: None,
        }
    }

    /// How long one connection attempt may take: short when another broker can be tried, so a
    /// silent node (no RST) does not hold up the failover.
    fn attempt_timeout(&self) -> Duration {
        if self.urls.len() > 1 {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        }
    }

    /// Connects to the first broker that answers, trying each once, starting after the broker
    /// last lost. The error names every broker tried and why it failed.
    pub async fn connect(&mut self) -> Result<Connection, String> {
        if self.urls.is_empty() {
            return Err("amqp_url lists no broker".into());
        }
        let within = self.attempt_timeout();
        let mut failures = Vec::new();
        for step in 0..self.urls.len() {
            let index = (self.next + step) % self.urls.len();
            let url = &self.urls[index];
            let result = tokio::time::timeout(within, super::tls::connect(url)).await;
            match result {
                Ok(Ok(connection)) => {
                    self.current = Some(index);
                    self.next = index;
                    return Ok(connection);
                }
                Ok(Err(e)) => failures.push(format!("{}: {e}", super::redact_url(url))),
                Err(_) => failures.push(format!(
                    "{}: no answer within {within:?}",
                    super::redact_url(url)
                )),
            }
        }
        Err(failures.join("; "))
    }

    /// The live connection's broker is gone: the next round starts with the one after it.
    pub fn lost(&mut self) {
        if let Some(current) = self.current {
            self.next = (current + 1) % self.urls.len().max(1);
        }
    }

    /// The broker of the live (or last) connection, password hidden, for logs.
    pub fn current(&self) -> String {
        self.current
            .and_then(|i| self.urls.get(i))
            .map(|url| super::redact_url(url))
            .unwrap_or_else(|| "no broker".into())
    }

    /// `broker i of n`, for logs.
    pub fn position(&self) -> String {
        match self.current {
            Some(i) if self.urls.len() > 1 => format!(" (broker {} of {})", i + 1, self.urls.len()),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_and_trim() {
        assert_eq!(
            broker_urls(" amqp://a , amqps://b,,amqp://c "),
            ["amqp://a", "amqps://b", "amqp://c"]
        );
        assert!(broker_urls("").is_empty());
    }

    #[test]
    fn after_a_loss_the_next_broker_comes_first() {
        let mut brokers = Brokers::new("amqp://a,amqp://b,amqp://c");
        brokers.current = Some(0);
        brokers.lost();
        assert_eq!(brokers.next, 1);
        brokers.current = Some(2);
        brokers.lost();
        assert_eq!(brokers.next, 0);
    }
}
