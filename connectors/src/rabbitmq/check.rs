//! Live checks of what the `rabbitmq` sink needs from the broker (`sluice check`), each
//! failure with its remedy: the connection to each configured broker (TLS included), the
//! login, the virtual host, and
//! the exchanges known before the first event (a constant `exchange`, the
//! `quarantine_exchange`), which must exist or be declared by the sink on start, and
//! `max_payload_bytes` against RabbitMQ's default `max_message_size`, and whether a constant
//! route reaches a queue (asked of the management API, see `management`); and, without I/O,
//! whether the configured message shape crosses the property bytes the broker handles cheaply.
//!
//! Only passive declarations are made: checking changes nothing on the broker.

use amq_protocol::types::ShortString;
use amq_protocol::uri::SASLMechanism;
use sluice_pipeline::Finding;
use sluice_pipeline::error::chain;

use super::broker::{Broker, ExchangeState};
use super::config::{CHEAP_PROPERTY_BYTES, Declare, RabbitmqSinkConfig};
use super::management::{self, Management, Route};
use super::wire::WireError;
use sluice_connect::amqp::Endpoint;

/// RabbitMQ's default `max_message_size` (128 MiB); the broker does not tell its own over AMQP.
const RABBITMQ_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;
/// AMQP reply code of a refused login.
const ACCESS_REFUSED: u16 = 403;
/// AMQP reply code of a virtual host that is missing or not open to the user.
const NOT_ALLOWED: u16 = 530;

/// Runs every check: the live ones (when the connection fails, that is the only one of them),
/// then the message shape's.
pub(crate) async fn check(config: &RabbitmqSinkConfig) -> Vec<Finding> {
    let mut findings = live(config).await;
    findings.extend(shape(config));
    findings
}

/// A warning when a typical message of the configured shape carries more property bytes than
/// the broker handles cheaply.
fn shape(config: &RabbitmqSinkConfig) -> Option<Finding> {
    let bytes = config.typical_property_bytes();
    (bytes > CHEAP_PROPERTY_BYTES).then(|| {
        Finding::warn(format!(
            "properties: a typical outbox message of this shape carries about {bytes} bytes of AMQP properties (with a UUID id, a 12-byte type and a 9-byte key), above the {CHEAP_PROPERTY_BYTES} that RabbitMQ handles cheaply: expect the broker to take a quarter fewer messages per second (docs/rabbitmq.md#properties); send only the properties and headers consumers read"
        ))
    })
}

/// The checks that talk to the broker: a connection to each configured broker, then, on the
/// first that takes one, the exchanges and the route. A cluster node that cannot be reached
/// is a warning while another takes connections (the sink uses that one meanwhile); any
/// other refusal, and every failure when no broker takes a connection, is a failure.
async fn live(config: &RabbitmqSinkConfig) -> Vec<Finding> {
    let endpoints = match config.endpoints() {
        Ok(endpoints) => endpoints,
        Err(errors) => {
            return errors
                .0
                .iter()
                .map(|e| Finding::fail(e.to_string()))
                .collect();
        }
    };
    let nothing = Declare::default();
    let mut reached = None;
    let mut attempts = Vec::new();
    for endpoint in &endpoints {
        let connecting = Broker::connect(
            endpoint,
            "check",
            config.connect_timeout.get(),
            &nothing,
            &mut [],
        );
        match connecting.await {
            Ok(broker) => {
                attempts.push(Ok(endpoint));
                match reached {
                    None => reached = Some((endpoint, broker)),
                    Some(_) => broker.close().await,
                }
            }
            Err(error) => attempts.push(Err((endpoint, error))),
        }
    }
    let others_serve = reached.is_some() && endpoints.len() > 1;
    let mut findings: Vec<Finding> = attempts
        .into_iter()
        .map(|attempt| match attempt {
            Ok(endpoint) => Finding::ok(connected(endpoint)),
            Err((endpoint, error @ (WireError::Io(_) | WireError::Timeout(_)))) if others_serve => {
                Finding::warn(format!(
                    "{}; meanwhile the sink connects to the other nodes",
                    connect_failure(endpoint, &error)
                ))
            }
            Err((endpoint, error)) => Finding::fail(connect_failure(endpoint, &error)),
        })
        .collect();
    let Some((endpoint, mut broker)) = reached else {
        return findings;
    };
    let declared = config.topology();
    let known = [
        ("exchange", config.exchange.constant()),
        ("quarantine_exchange", config.quarantine_exchange.as_deref()),
    ];
    for (field, name) in known {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            continue;
        };
        let Ok(short) = ShortString::try_new(name) else {
            continue; // longer than 255 bytes: validation already said so
        };
        let declares = declared.exchanges.iter().any(|e| e.name == name);
        findings.push(match broker.ensure_exchange(&short, None).await {
            Ok(ExchangeState::Ready) => Finding::ok(format!("{field}: exchange {name:?} exists")),
            Ok(ExchangeState::Missing) if declares => Finding::ok(format!(
                "{field}: exchange {name:?} does not exist yet; the sink declares it on start"
            )),
            Ok(ExchangeState::Missing) => Finding::fail(format!(
                "{field}: exchange {name:?} does not exist in vhost {:?}: declare it on the broker, or set exchange_type (or list it under [[declare.exchanges]]) so that the sink declares it",
                endpoint.uri.vhost
            )),
            Err(error) => Finding::fail(format!(
                "{field}: checking exchange {name:?} failed: {}",
                chain(&error)
            )),
        });
    }
    if let (Some(exchange), Some(key)) = (config.exchange.constant(), config.routing_key.constant())
    {
        findings.extend(route_finding(endpoint, exchange, key, &declared).await);
    }
    if config.max_payload_bytes > RABBITMQ_MAX_MESSAGE_SIZE {
        findings.push(Finding::warn(format!(
            "max_payload_bytes {} is above RabbitMQ's default max_message_size (134217728): raise max_message_size on the broker to match, or the broker closes the channel of a larger message",
            config.max_payload_bytes
        )));
    }
    broker.close().await;
    findings
}

/// Whether a constant route reaches anything, as the management API tells.
async fn route_finding(
    endpoint: &Endpoint,
    exchange: &str,
    key: &str,
    declared: &Declare,
) -> Option<Finding> {
    let asked = match Management::beside(endpoint) {
        Ok(api) => api.route(exchange, key, declared).await,
        Err(reason) => Err(reason),
    };
    let exchange_text = if exchange.is_empty() {
        "the default exchange".to_owned()
    } else {
        format!("exchange {exchange:?}")
    };
    Some(match asked {
        Ok(Route::Bound(destinations)) => Finding::ok(format!(
            "route: {exchange_text} with routing key {key:?} reaches {}",
            destinations.join(", ")
        )),
        Ok(Route::Unbound(kind)) => Finding::warn(format!(
            "route: nothing is bound to {kind} {exchange:?} for routing key {key:?}, so the broker confirms these messages and drops them: bind a queue to it (or list one under [[declare.bindings]]), or change routing_key"
        )),
        Ok(Route::NoExchange) => return None,
        Err(reason) => Finding::ok(format!(
            "route: whether routing key {key:?} reaches a queue is not checked ({reason}); the rabbitmq_management plugin on port {} lets check tell",
            management::PORT
        )),
    })
}

fn connected(endpoint: &Endpoint) -> String {
    let user = &endpoint.uri.authority.userinfo.username;
    let login = match endpoint.mechanism() {
        SASLMechanism::External => "by client certificate (EXTERNAL)".to_owned(),
        _ => format!("as {user:?}"),
    };
    let tls = match &endpoint.tls {
        Some(tls) => format!(" over TLS (certificate checked for {:?})", tls.server_name),
        None => String::new(),
    };
    format!(
        "connected to {endpoint}{tls}, logged in {login}, vhost {:?} open",
        endpoint.uri.vhost
    )
}

fn connect_failure(endpoint: &Endpoint, error: &WireError) -> String {
    let remedy = match error {
        WireError::ConnectionClosed { code, .. } if *code == ACCESS_REFUSED => {
            match endpoint.mechanism() {
                SASLMechanism::External => {
                    ": the client certificate's CN must be a RabbitMQ user with access to the vhost"
                        .to_owned()
                }
                _ => format!(
                    ": check the user {:?} and its password in url",
                    endpoint.uri.authority.userinfo.username
                ),
            }
        }
        WireError::ConnectionClosed { code, .. } if *code == NOT_ALLOWED => format!(
            ": create vhost {:?} (rabbitmqctl add_vhost) and give the user permissions on it, or fix url's path",
            endpoint.uri.vhost
        ),
        WireError::Io(_) | WireError::Timeout(_) => {
            ": is the broker running and listening there?".to_owned()
        }
        _ => String::new(),
    };
    format!("cannot connect to {endpoint}: {}{remedy}", chain(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> RabbitmqSinkConfig {
        let text = format!("url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n{extra}");
        sluice_pipeline::config::deserialize(toml::from_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn a_shape_above_the_cheap_limit_is_a_warning_naming_the_setting() {
        assert!(
            shape(&config("")).is_none(),
            "the default is under the limit"
        );
        let finding = shape(&config(
            r#"properties = ["content_type", "correlation_id", "timestamp"]"#,
        ))
        .unwrap();
        assert_eq!(finding.level, sluice_pipeline::component::Level::Warn);
        assert!(
            finding.message.starts_with(
                "properties: a typical outbox message of this shape carries about 88 bytes"
            ),
            "{}",
            finding.message
        );
    }
}
