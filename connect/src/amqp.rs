//! Where the broker is and how to log in, from an `amqp://` or `amqps://` URL: the AMQP
//! settings `amq-protocol` reads, and the TLS and SASL settings sluice reads itself, named as
//! in RabbitMQ's URI query parameters (`cacertfile`, `certfile`, `keyfile`, `verify`,
//! `server_name_indication`, `auth_mechanism`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use amq_protocol::uri::{AMQPScheme, AMQPUri, SASLMechanism};

use crate::tls::{PemFile, TlsOptions, Verify};
use crate::url::{ConnectionUrl, ParseUrl, check_userinfo, query_pairs};

/// The query parameters `amq-protocol` reads.
const AMQP_PARAMS: [&str; 5] = [
    "frame_max",
    "channel_max",
    "heartbeat",
    "connection_timeout",
    "auth_mechanism",
];
/// The query parameters sluice reads for `amqps://`.
const TLS_PARAMS: [&str; 5] = [
    "cacertfile",
    "certfile",
    "keyfile",
    "verify",
    "server_name_indication",
];

/// An AMQP URL in a config, whose password never appears in `Debug` output.
pub type AmqpUrl = ConnectionUrl<Endpoint>;

/// A parsed broker URL. Displays (and debugs) without the password.
#[derive(Clone, PartialEq)]
pub struct Endpoint {
    /// The AMQP settings.
    pub uri: AMQPUri,
    /// For `amqps://`: how the broker is verified and who the client is.
    pub tls: Option<AmqpTls>,
}

/// The TLS side of an `amqps://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpTls {
    /// The rustls settings' sources.
    pub options: TlsOptions,
    /// The name the broker's certificate must carry (the URL's host unless
    /// `server_name_indication` says otherwise).
    pub server_name: String,
}

impl Endpoint {
    /// Parses `url`; the error never repeats the URL (it holds a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        check_userinfo(url)?;
        let mut uri = AMQPUri::from_str(url).map_err(|reason| {
            if reason.contains(url) {
                "is not a valid AMQP URL".to_owned()
            } else {
                format!("is not a valid AMQP URL: {reason}")
            }
        })?;
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let query = query.split('#').next().unwrap_or_default();
        let mut tls = Vec::new();
        for (name, value, _) in query_pairs(query)? {
            if TLS_PARAMS.contains(&name.as_str()) {
                tls.push((name, value));
            } else if !AMQP_PARAMS.contains(&name.as_str()) {
                return Err(format!(
                    "has an unknown query parameter {name:?} (known: {}, {})",
                    AMQP_PARAMS.join(", "),
                    TLS_PARAMS.join(", ")
                ));
            }
        }
        let tls = match uri.scheme {
            AMQPScheme::AMQPS => Some(AmqpTls::from_params(tls, &uri.authority.host)?),
            AMQPScheme::AMQP => {
                if let Some((name, _)) = tls.first() {
                    return Err(format!(
                        "sets {name} but is amqp://: TLS settings need an amqps:// URL"
                    ));
                }
                None
            }
        };
        let mechanism = uri.query.auth_mechanism.unwrap_or_default();
        match mechanism {
            SASLMechanism::Plain => {}
            SASLMechanism::External => {
                if tls.as_ref().is_none_or(|t| t.options.identity.is_none()) {
                    return Err("sets auth_mechanism=external, which logs in with a client certificate: use amqps:// with certfile and keyfile".into());
                }
            }
            other => {
                return Err(format!(
                    "sets auth_mechanism={other}: sluice logs in with plain (user and password) or external (client certificate)"
                ));
            }
        }
        uri.query.auth_mechanism = Some(mechanism);
        Ok(Endpoint { uri, tls })
    }

    /// Whether `other` reaches the same node: the same host (in any case) and port.
    pub fn same_node(&self, other: &Endpoint) -> bool {
        let (a, b) = (&self.uri.authority, &other.uri.authority);
        a.host.eq_ignore_ascii_case(&b.host) && a.port == b.port
    }

    /// The SASL mechanism to log in with.
    pub fn mechanism(&self) -> SASLMechanism {
        self.uri.query.auth_mechanism.unwrap_or_default()
    }
}

impl AmqpTls {
    fn from_params(params: Vec<(String, String)>, host: &str) -> Result<Self, String> {
        let mut verify = Verify::Full;
        let (mut ca, mut cert, mut key, mut server_name) = (None, None, None, None);
        for (name, value) in params {
            match name.as_str() {
                "cacertfile" => ca = Some(PemFile::new("cacertfile", PathBuf::from(value))),
                "certfile" => cert = Some(PemFile::new("certfile", PathBuf::from(value))),
                "keyfile" => key = Some(PemFile::new("keyfile", PathBuf::from(value))),
                "verify" => {
                    verify = match value.as_str() {
                        "verify_peer" => Verify::Full,
                        "verify_none" => Verify::Nothing,
                        other => {
                            return Err(format!(
                                "sets verify={other:?}: use verify_peer (the default) or verify_none"
                            ));
                        }
                    }
                }
                _ => server_name = Some(value),
            }
        }
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err("sets certfile without keyfile: set keyfile to the client certificate's private key file".into());
            }
            (None, Some(_)) => {
                return Err(
                    "sets keyfile without certfile: set certfile to the client certificate file"
                        .into(),
                );
            }
        };
        Ok(AmqpTls {
            options: TlsOptions {
                verify,
                ca,
                identity,
            },
            server_name: server_name.unwrap_or_else(|| host.to_owned()),
        })
    }
}

impl ParseUrl for Endpoint {
    fn parse_url(url: &str) -> Result<Self, String> {
        Endpoint::parse(url)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = &self.uri;
        write!(
            f,
            "{}://{}@{}:{}/{}",
            uri.scheme,
            uri.authority.userinfo.username,
            uri.authority.host,
            uri.authority.port,
            uri.vhost
        )
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tls_and_sasl_parameters() {
        let e = Endpoint::parse(
            "amqps://u:pw@broker:5671/%2f?cacertfile=%2Fca.pem&certfile=/c.pem&keyfile=/k.pem&auth_mechanism=external&heartbeat=5",
        )
        .unwrap();
        let tls = e.tls.as_ref().unwrap();
        assert_eq!(tls.server_name, "broker");
        assert_eq!(tls.options.verify, Verify::Full);
        assert_eq!(tls.options.ca, Some(PemFile::new("cacertfile", "/ca.pem")));
        assert_eq!(e.mechanism(), SASLMechanism::External);
        assert_eq!(e.uri.query.heartbeat, Some(5));
        assert_eq!(e.to_string(), "amqps://u@broker:5671//");
        assert!(!format!("{e:?}").contains("pw"));
        let sni =
            Endpoint::parse("amqps://h?server_name_indication=other&verify=verify_none").unwrap();
        let tls = sni.tls.unwrap();
        assert_eq!(
            (tls.server_name.as_str(), tls.options.verify),
            ("other", Verify::Nothing)
        );
        assert!(Endpoint::parse("amqp://h").unwrap().tls.is_none());
    }

    #[test]
    fn refuses_what_does_not_fit() {
        for (url, says) in [
            ("amqp://h?cacertfile=/ca.pem", "need an amqps:// URL"),
            ("amqps://h?certfile=/c.pem", "without keyfile"),
            ("amqps://h?auth_mechanism=external", "certfile and keyfile"),
            ("amqp://h?auth_mechanism=amqplain", "plain"),
            ("amqps://h?verify=maybe", "verify_peer"),
            (
                "amqp://h?hearbeat=5",
                "unknown query parameter \"hearbeat\"",
            ),
            ("amqp://u:s3c@r3t@h/", "percent-encode"),
        ] {
            let error = Endpoint::parse(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
            assert!(!error.contains("r3t"), "{error}");
        }
    }
}
