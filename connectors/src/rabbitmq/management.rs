//! Whether a constant route reaches a queue, asked of RabbitMQ's management API (HTTP, the
//! `rabbitmq_management` plugin) by `sluice check`: AMQP has no way to list bindings, and a
//! message published where nothing is bound is confirmed by the broker and then dropped.
//!
//! The API is reached on the AMQP URL's host, port 15672, with the URL's user and password,
//! and only for a plain `amqp://` URL: over `amqps://` the credentials are not sent to a
//! plain-HTTP port. One `GET` per question, HTTP/1.0 (the answer ends with the connection).

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::Declare;
use sluice_connect::amqp::Endpoint;

/// The management plugin's default HTTP port.
pub(crate) const PORT: u16 = 15672;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read (a listing of bindings).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The management API of one broker and virtual host.
pub(crate) struct Management {
    address: String,
    authorization: String,
    vhost: String,
}

/// Where a route's messages go, as the broker's bindings (and the sink's own declarations)
/// say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// To these destinations (queues or exchanges), by their names.
    Bound(Vec<String>),
    /// Nowhere: the broker drops them. The exchange's type, for the message.
    Unbound(String),
    /// The exchange does not exist (yet); nothing to say about its bindings.
    NoExchange,
}

#[derive(Deserialize)]
struct Exchange {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Binding {
    destination: String,
    routing_key: String,
}

impl Management {
    /// The API beside `endpoint`'s broker, or why it is not asked.
    pub(crate) fn beside(endpoint: &Endpoint) -> Result<Self, String> {
        if endpoint.tls.is_some() {
            return Err(
                "the broker is reached over TLS, and check does not send its credentials to the plain-HTTP management port".to_owned(),
            );
        }
        let authority = &endpoint.uri.authority;
        let credentials = format!(
            "{}:{}",
            authority.userinfo.username, authority.userinfo.password
        );
        Ok(Management {
            address: format!("{}:{PORT}", authority.host),
            authorization: base64::engine::general_purpose::STANDARD.encode(credentials),
            vhost: endpoint.uri.vhost.clone(),
        })
    }

    /// Where a message published to `exchange` with `routing_key` goes. What the sink
    /// declares on start (`declared`) counts as there.
    pub(crate) async fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        declared: &Declare,
    ) -> Result<Route, String> {
        if exchange.is_empty() {
            // The default exchange routes to the queue named by the key.
            let path = format!("queues/{}/{}", self.vhost(), segment(routing_key));
            return Ok(match self.get(&path).await? {
                Some(_) => Route::Bound(vec![routing_key.to_owned()]),
                None if declared.queues.iter().any(|q| q.name == routing_key) => {
                    Route::Bound(vec![routing_key.to_owned()])
                }
                None => Route::Unbound("the default exchange".to_owned()),
            });
        }
        let path = format!("exchanges/{}/{}", self.vhost(), segment(exchange));
        let Some(body) = self.get(&path).await? else {
            return Ok(Route::NoExchange);
        };
        let kind = serde_json::from_slice::<Exchange>(&body)
            .map_err(|e| format!("the management API's answer about {exchange:?}: {e}"))?
            .kind;
        let body = self
            .get(&format!("{path}/bindings/source"))
            .await?
            .unwrap_or_else(|| b"[]".to_vec());
        let bindings: Vec<Binding> = serde_json::from_slice(&body)
            .map_err(|e| format!("the management API's bindings of {exchange:?}: {e}"))?;
        let from_declared = declared
            .bindings
            .iter()
            .filter(|b| b.exchange == exchange)
            .map(|b| (b.queue.as_str(), b.routing_key.as_str()));
        let from_broker = bindings
            .iter()
            .map(|b| (b.destination.as_str(), b.routing_key.as_str()));
        let mut destinations: Vec<String> = from_broker
            .chain(from_declared)
            .filter(|(_, key)| binds(&kind, key, routing_key))
            .map(|(destination, _)| destination.to_owned())
            .collect();
        destinations.sort();
        destinations.dedup();
        Ok(if destinations.is_empty() {
            Route::Unbound(format!("{kind} exchange"))
        } else {
            Route::Bound(destinations)
        })
    }

    fn vhost(&self) -> String {
        segment(&self.vhost)
    }

    /// `GET /api/PATH`: the body, `None` for 404.
    async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        let asking = async {
            let mut stream = TcpStream::connect(&self.address)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let request = format!(
                "GET /api/{path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Basic {}\r\nAccept: application/json\r\n\r\n",
                self.address, self.authorization
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("asking: {e}"))?;
            let mut answer = Vec::new();
            (&mut stream)
                .take(MAX_ANSWER as u64)
                .read_to_end(&mut answer)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok::<_, String>(answer)
        };
        let answer = tokio::time::timeout(TIMEOUT, asking)
            .await
            .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
            .map_err(|e| format!("the management API at http://{}: {e}", self.address))?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("http://{} answered something other than HTTP", self.address))?;
        let head = String::from_utf8_lossy(&answer[..split]);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        match status {
            200 => Ok(Some(answer[split + 4..].to_vec())),
            404 => Ok(None),
            401 | 403 => Err(format!(
                "the management API at http://{} refused the URL's user (it needs the management tag)",
                self.address
            )),
            other => Err(format!(
                "the management API at http://{} answered {other} to /api/{path}",
                self.address
            )),
        }
    }
}

/// `text` as one percent-encoded path segment (`/` becomes `%2F`).
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Whether a binding with `binding_key` on an exchange of `kind` takes `routing_key`.
/// Exchanges that route by other means than the key (fanout, headers, plugins' own) take
/// every message their bindings may match.
fn binds(kind: &str, binding_key: &str, routing_key: &str) -> bool {
    match kind {
        "direct" => binding_key == routing_key,
        "topic" => topic_matches(binding_key, routing_key),
        _ => true,
    }
}

/// AMQP topic matching: words split by `.`, `*` one word, `#` zero or more words.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                go(&pattern[1..], key) || (!key.is_empty() && go(pattern, &key[1..]))
            }
            (Some(&"*"), Some(_)) => go(&pattern[1..], &key[1..]),
            (Some(word), Some(k)) if word == k => go(&pattern[1..], &key[1..]),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    go(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_as_the_broker_does() {
        for (pattern, key, matches) in [
            ("orders.*", "orders.created", true),
            ("orders.*", "orders.created.eu", false),
            ("orders.#", "orders", true),
            ("orders.#", "orders.created.eu", true),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("*.created", "orders.created", true),
            ("*.created", "created", false),
            ("#.eu", "orders.created.eu", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("orders.created", "orders.created", true),
            ("orders.created", "orders.deleted", false),
        ] {
            assert_eq!(topic_matches(pattern, key), matches, "{pattern} ~ {key}");
        }
    }

    #[test]
    fn direct_needs_the_same_key_and_fanout_takes_any() {
        assert!(binds("direct", "k", "k"));
        assert!(!binds("direct", "k", "j"));
        assert!(binds("fanout", "", "whatever"));
        assert!(binds("headers", "", "whatever"));
    }
}
