//! How the etcd client's errors become [`CoordError`]s: the one place that decides which mean
//! "unreachable", "session gone" or "refused".

use etcd_client::Error;

use crate::error::CoordError;

/// gRPC status codes (the numbers every gRPC implementation shares) this backend tells apart.
mod code {
    pub const CANCELLED: i32 = 1;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// What etcd answers for a lease that is gone (`rpctypes.ErrLeaseNotFound`).
const LEASE_NOT_FOUND: &str = "lease not found";

/// Whether the request failed before it left: the connection to the member it was sent to
/// could not be made (tonic's "tcp connect error"), so sending it again is safe.
pub fn never_sent(err: &Error) -> bool {
    matches!(err, Error::GRpcStatus(status)
        if i32::from(status.code()) == code::UNAVAILABLE && status.message().contains("connect error"))
}

/// The error of `doing` against `endpoints`.
pub fn to_coord(err: Error, endpoints: &str, doing: &str) -> CoordError {
    let unreachable = |err: Error| CoordError::Unreachable {
        endpoints: endpoints.to_owned(),
        source: Box::new(err),
    };
    match err {
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) => unreachable(err),
        Error::LeaseKeepAliveError(_) => CoordError::SessionExpired,
        Error::InvalidArgs(_) | Error::InvalidUri(_) | Error::InvalidMetadataValue(_) => {
            CoordError::Config(format!("etcd {endpoints}: {doing}: {err}"))
        }
        Error::GRpcStatus(ref status) => match i32::from(status.code()) {
            code::NOT_FOUND if status.message().contains(LEASE_NOT_FOUND) => {
                CoordError::SessionExpired
            }
            code::UNAVAILABLE | code::DEADLINE_EXCEEDED | code::CANCELLED => unreachable(err),
            // A status with a cause was made here, from the connection failing under it (an
            // HTTP/2 stream broken, a reset): the server never said it.
            _ if std::error::Error::source(status).is_some() => unreachable(err),
            code::UNAUTHENTICATED | code::PERMISSION_DENIED => CoordError::Refused {
                doing: format!("{doing} (etcd {endpoints})"),
                source: Box::new(err),
            },
            _ => CoordError::Refused {
                doing: doing.to_owned(),
                source: Box::new(err),
            },
        },
        other => CoordError::Protocol(format!("etcd {endpoints}: {doing}: {other}")),
    }
}
