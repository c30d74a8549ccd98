//! The etcd backend: sluice's coordination on an etcd v3 cluster (3.4 or later), with the
//! `etcd-client` crate.
//!
//! # Layout
//! Without a namespace sluice's names are etcd's own; with namespace `NS` every key below is
//! prefixed `NS/`:
//!
//! | what | key |
//! |---|---|
//! | election `NAME` | `NAME/<lease id hex>`, one per candidate, the value the candidate's |
//! | lock `NAME` | `NAME/<lease id hex>`, one per holder or waiter, empty |
//! | key `a/b` | `a/b` |
//! | instance `ID` of `SERVICE` | `services/SERVICE/ID` |
//! | configuration `KEY` | `config/KEY` |
//!
//! Elections and locks follow etcd's `concurrency` package, which `etcdctl elect NAME` and
//! `etcdctl lock NAME` run: a candidate puts `NAME/<lease hex>` under its lease if absent, the
//! key with the lowest create revision under `NAME/` leads (holds the lock), and every other
//! candidate waits for the deletion of the key created just before its own. So
//! `etcdctl elect --listen NAME` prints the value sluice's leader campaigned with, a candidate
//! `etcdctl elect NAME v` started first keeps sluice waiting, and `etcdctl lock NAME` and
//! sluice's lock `NAME` exclude each other. As in etcd, an election and a lock of the same
//! name share one queue, and one lease contends at most once per name: a second campaign or
//! lock of the same name under the same session is refused.
//!
//! # Tokens and fencing
//! The fencing token is the candidate key's create revision, the store's revision at its
//! put: every later candidate's is larger. A fenced write is one transaction that compares
//! the key's create revision with the token (what etcd's `Proclaim` does).
//!
//! # Sessions
//! A sluice session is an etcd lease: `open_session` grants one of the TTL (whole seconds,
//! rounded up; etcd grants at least its minimum, 2 s by default); `renew` is one keep-alive
//! and returns the TTL granted, or `Unreachable` when no answer comes within that TTL;
//! `close_session` revokes the lease, which deletes its keys.
//! Keys put with a session are attached to its lease.
//!
//! # Keys and watches
//! Key `K` is the etcd key `NS/K`; keys are any non-empty UTF-8 string (etcd keys written by
//! others that are not UTF-8 are skipped). Revisions are etcd's: `create_revision`,
//! `mod_revision` and `version` as etcd reports them. `watch(prefix, after)` is an etcd watch
//! of the prefix from revision `after + 1`: every change once, in revision order, deletes
//! included; when `after + 1` was compacted, [`WatchEvent::Compacted`] with the revision just
//! before etcd's compaction revision. A watch whose stream is lost (its member died) opens it
//! again from the revision after its last change, on whichever member answers; it yields an
//! error and ends only when that fails (three losses in a row with no change between), and
//! the caller watches again from the last revision it saw.
//!
//! # Connecting
//! Endpoints are `host:port` (or `http://…`, `https://…`). With [`TlsConfig`] every endpoint is
//! reached over TLS (rustls), the server checked against the CA, with a client certificate
//! when one is given; with a user, the client authenticates with its password and keeps the
//! token fresh. Every request requires the member to have a Raft leader (etcd's
//! `WithRequireLeader`): a member cut off from its quorum fails requests and ends watches at
//! once instead of leaving them waiting. The client balances requests over the endpoints
//! without knowing which members are down; a request whose connection could not be made
//! never left, and goes again (up to twice per endpoint), so one dead member of three costs
//! no request. [`Etcd::connect`] asks the cluster for its status, so a cluster that cannot be
//! reached within the connect timeout is [`CoordError::Unreachable`] naming every endpoint.

mod conn;
mod errors;
mod keys;
mod recipe;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, GetOptions, Identity, PutOptions,
    TlsOptions, TxnOp,
};
use sluice_pipeline::component::BoxFuture;

use crate::backend::{
    Backend, BoxStream, Fenced, Held, KeyValue, Layout, Op, SessionId, WatchEvent,
};
use crate::config::{Password, TlsConfig};
use crate::error::CoordError;
use conn::Conn;
use errors::to_coord;
use keys::Keys;
use recipe::{header_revision, still_ours, to_i64, to_u64};

/// How long [`Etcd::connect`] waits for the cluster when [`EtcdOptions::connect_timeout`] is
/// not chosen otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long renewing a lease this backend did not open may wait for an answer (one it
/// opened waits at most its TTL), and how long `released` tries to read a key of such a
/// lease while no member answers.
const RENEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the etcd cluster is, which part of its key space is sluice's, and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// The members' client URLs: `host:port`, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// The namespace: every key is prefixed `NS/`; `None` for etcd's own names.
    pub namespace: Option<String>,
    /// How long connecting to a member, and the first request, may take.
    pub connect_timeout: Duration,
    /// The etcd user to authenticate as (with [`EtcdOptions::password`]).
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Password>,
    /// TLS: the CA to check the members against, and a client certificate.
    pub tls: Option<TlsConfig>,
}

impl EtcdOptions {
    /// Options for `endpoints` with no namespace, no credentials, no TLS and the default
    /// connect timeout.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            namespace: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            user: None,
            password: None,
            tls: None,
        }
    }
}

/// The etcd backend. See the [module docs](self) for the layout and the guarantees.
pub struct Etcd {
    conn: Conn,
    keys: Keys,
    /// The namespace prefix, for messages.
    namespace: String,
    /// The TTL each lease opened here was granted: a keep-alive's answer is consumed by the
    /// client, and a keep-alive restores the granted TTL.
    granted: Mutex<HashMap<i64, Duration>>,
    withdrawals: recipe::Withdrawals,
}

impl Etcd {
    /// Connects to the cluster and checks that it answers.
    pub async fn connect(options: EtcdOptions) -> Result<Self, CoordError> {
        let keys = Keys::new(keys::namespace_prefix(options.namespace.as_deref())?);
        if options.endpoints.is_empty() {
            return Err(CoordError::Config("etcd: no endpoints".to_owned()));
        }
        if let Some(bad) = options
            .endpoints
            .iter()
            .find(|e| e.is_empty() || e.contains([',', ' ']))
        {
            return Err(CoordError::Config(format!(
                "etcd endpoint {bad:?}: expected one host:port or URL per endpoint"
            )));
        }
        let endpoints = options.endpoints.join(",");
        let connect = connect_options(&options)?;
        let doing = match &options.user {
            Some(user) => format!("authenticating as {user:?}"),
            None => "connecting".to_owned(),
        };
        let answered = tokio::time::timeout(options.connect_timeout, async {
            let mut client = Client::connect(&options.endpoints, Some(connect))
                .await
                .map_err(|e| to_coord(e, &endpoints, &doing))?;
            client
                .status()
                .await
                .map_err(|e| to_coord(e, &endpoints, "asking for the cluster's status"))?;
            Ok::<_, CoordError>(client)
        })
        .await;
        let client = match answered {
            Ok(connected) => connected?,
            Err(_) => {
                return Err(CoordError::Unreachable {
                    endpoints,
                    source: format!("no answer within {:?}", options.connect_timeout).into(),
                });
            }
        };
        tracing::debug!(%endpoints, "etcd backend connected");
        Ok(Etcd {
            conn: Conn::new(client, endpoints, options.endpoints.len()),
            namespace: keys.prefixed(""),
            keys,
            granted: Mutex::new(HashMap::new()),
            withdrawals: recipe::Withdrawals::default(),
        })
    }

    fn granted(&self) -> MutexGuard<'_, HashMap<i64, Duration>> {
        // The map holds plain values: one poisoned by a panic elsewhere is still consistent.
        self.granted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The client's options: timeouts, credentials and TLS.
fn connect_options(options: &EtcdOptions) -> Result<ConnectOptions, CoordError> {
    // Requests to a member that lost its leader fail instead of waiting (and watches on it
    // end), so a partitioned member cannot keep a leader believing it leads.
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(options.connect_timeout)
        .with_require_leader(true);
    match (&options.user, &options.password) {
        (Some(user), Some(password)) => {
            connect = connect.with_user(user.clone(), password.expose().to_owned());
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(CoordError::Config(
                "etcd: a user is set without a password".to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(CoordError::Config(
                "etcd: a password is set without a user".to_owned(),
            ));
        }
    }
    if let Some(tls) = &options.tls {
        connect = connect.with_tls(tls_options(tls)?);
    }
    Ok(connect)
}

/// Reads the TLS files.
fn tls_options(tls: &TlsConfig) -> Result<TlsOptions, CoordError> {
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path)
            .map_err(|e| CoordError::Config(format!("etcd tls {what} {}: {e}", path.display())))
    };
    let mut options = TlsOptions::new();
    if let Some(ca) = &tls.ca {
        options = options.ca_certificate(Certificate::from_pem(read("ca", ca)?));
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            options = options.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
        }
        (None, None) => {}
        _ => {
            return Err(CoordError::Config(
                "etcd tls: cert and key go together".to_owned(),
            ));
        }
    }
    Ok(options)
}

impl Backend for Etcd {
    fn describe(&self) -> String {
        match self.namespace.as_str() {
            "" => format!("etcd {}", self.conn.endpoints),
            namespace => format!("etcd {} (keys under {namespace})", self.conn.endpoints),
        }
    }

    fn layout(&self) -> Layout {
        // Keys as the KV methods take them; the etcd key is the namespace prefix and the key.
        Layout {
            election: "{name}/".to_owned(),
            lock: "{name}/".to_owned(),
            instance: "services/{service}/{id}".to_owned(),
            config: "config/{key}".to_owned(),
            key: "{key}".to_owned(),
        }
    }

    fn open_session(
        &self,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(SessionId, Duration), CoordError>> {
        Box::pin(async move {
            let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            let seconds = i64::try_from(seconds.max(1))
                .map_err(|_| CoordError::Config(format!("session ttl {ttl:?} is too long")))?;
            let lease = self
                .conn
                .call("granting a lease", |mut c| async move {
                    c.lease_grant(seconds, None).await
                })
                .await?;
            let granted = Duration::from_secs(lease.ttl().unsigned_abs());
            self.granted().insert(lease.id(), granted);
            Ok((SessionId(lease.id()), granted))
        })
    }

    fn renew(&self, session: SessionId) -> BoxFuture<'_, Result<Duration, CoordError>> {
        Box::pin(async move {
            let known = self.granted().get(&session.0).copied();
            // One keep-alive: the client sends it and fails unless the answer has a TTL. An
            // answer later than the TTL is worth nothing (the lease may be gone by then), so
            // a renewal waits no longer.
            let keep_alive = self.conn.call("renewing a lease", |mut c| async move {
                c.lease_keep_alive(session.0).await
            });
            match tokio::time::timeout(known.unwrap_or(RENEW_TIMEOUT), keep_alive).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    if let CoordError::SessionExpired = err {
                        self.granted().remove(&session.0);
                    }
                    return Err(err);
                }
                Err(_) => {
                    return Err(CoordError::Unreachable {
                        endpoints: self.conn.endpoints.clone(),
                        source: "no answer to a lease keep-alive within its TTL".into(),
                    });
                }
            }
            if let Some(granted) = known {
                return Ok(granted);
            }
            let lease = self
                .conn
                .call("reading a lease", |mut c| async move {
                    c.lease_time_to_live(session.0, None).await
                })
                .await?;
            if lease.ttl() <= 0 {
                return Err(CoordError::SessionExpired);
            }
            let granted = Duration::from_secs(lease.granted_ttl().unsigned_abs());
            self.granted().insert(session.0, granted);
            Ok(granted)
        })
    }

    fn close_session(&self, session: SessionId) -> BoxFuture<'_, Result<(), CoordError>> {
        Box::pin(async move {
            self.granted().remove(&session.0);
            let revoked = self
                .conn
                .call("revoking a lease", |mut c| async move {
                    c.lease_revoke(session.0).await
                })
                .await;
            match revoked {
                Ok(_) | Err(CoordError::SessionExpired) => Ok(()),
                Err(other) => Err(other),
            }
        })
    }

    fn campaign<'a>(
        &'a self,
        session: SessionId,
        name: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Held, CoordError>> {
        Box::pin(async move {
            let recipe = self.keys.recipe(name)?;
            recipe::contend(&self.conn, &self.withdrawals, session, &recipe, value).await
        })
    }

    fn resign<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        Box::pin(recipe::give_up(&self.conn, held))
    }

    fn leader<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Bytes, u64)>, CoordError>> {
        Box::pin(async move {
            let recipe = self.keys.recipe(name)?;
            recipe::first(&self.conn, &recipe).await
        })
    }

    fn lock<'a>(
        &'a self,
        session: SessionId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Held, CoordError>> {
        Box::pin(async move {
            let recipe = self.keys.recipe(name)?;
            // `concurrency.Mutex` puts an empty value too.
            recipe::contend(
                &self.conn,
                &self.withdrawals,
                session,
                &recipe,
                Bytes::new(),
            )
            .await
        })
    }

    fn unlock<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        self.resign(held)
    }

    fn released<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        let patience = self
            .granted()
            .get(&held.session.0)
            .copied()
            .unwrap_or(RENEW_TIMEOUT);
        Box::pin(recipe::released(&self.conn, held, patience))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, CoordError>> {
        Box::pin(async move {
            let full = &self.keys.key(key)?;
            let found = self
                .conn
                .call("reading a key", |mut c| async move {
                    c.get(full.as_str(), None).await
                })
                .await?;
            match found.kvs().first() {
                Some(kv) => watch::key_value(&self.keys, kv),
                None => Ok(None),
            }
        })
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, u64), CoordError>> {
        Box::pin(async move {
            let full = &self.keys.prefixed(prefix);
            let found = self
                .conn
                .call("reading a prefix", |mut c| async move {
                    c.get(full.as_str(), Some(GetOptions::new().with_prefix()))
                        .await
                })
                .await?;
            let revision = to_u64(header_revision(found.header())?)?;
            let mut keys = Vec::with_capacity(found.kvs().len());
            for kv in found.kvs() {
                keys.extend(watch::key_value(&self.keys, kv)?);
            }
            Ok((keys, revision))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        session: Option<SessionId>,
    ) -> BoxFuture<'a, Result<u64, CoordError>> {
        Box::pin(async move {
            let full = &self.keys.key(key)?;
            let value = &value;
            let put = self
                .conn
                .call("writing a key", |mut c| async move {
                    let options = session.map(|s| PutOptions::new().with_lease(s.0));
                    c.put(full.as_str(), value.to_vec(), options).await
                })
                .await?;
            to_u64(header_revision(put.header())?)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, CoordError>> {
        Box::pin(async move {
            let full = &self.keys.key(key)?;
            let deleted = self
                .conn
                .call("deleting a key", |mut c| async move {
                    c.delete(full.as_str(), None::<DeleteOptions>).await
                })
                .await?;
            if deleted.deleted() == 0 {
                return Ok(None);
            }
            Ok(Some(to_u64(header_revision(deleted.header())?)?))
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<WatchEvent, CoordError>>, CoordError>> {
        Box::pin(watch::watch(&self.conn, self.keys.clone(), prefix, after))
    }

    fn fenced<'a>(&'a self, held: &'a Held, op: Op) -> BoxFuture<'a, Result<Fenced, CoordError>> {
        Box::pin(async move {
            let write = match &op {
                Op::Put { key, value } => TxnOp::put(self.keys.key(key)?, value.to_vec(), None),
                Op::Delete { key } => TxnOp::delete(self.keys.key(key)?, None),
            };
            let txn = still_ours(&held.key, to_i64(held.token)?).and_then([write]);
            let done = self
                .conn
                .call("a fenced write", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if !done.succeeded() {
                return Ok(Fenced::Refused);
            }
            Ok(Fenced::Applied(to_u64(header_revision(done.header())?)?))
        })
    }
}
