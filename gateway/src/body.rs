//! The request and response types every layer of the gateway speaks, and the gateway's own
//! answers (JSON error bodies).

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body may carry. (A named type rather than a boxed trait object in the body's
/// type, which would make every layer's future `Send` only for one lifetime.)
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BodyError(pub Box<dyn std::error::Error + Send + Sync>);

impl From<hyper::Error> for BodyError {
    fn from(e: hyper::Error) -> Self {
        BodyError(Box::new(e))
    }
}

/// A request or response body: buffered for requests (see [`crate::server`]), streamed for
/// upstream responses.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A request as the layers see it.
pub type Request = http::Request<Body>;

/// A response as the layers produce it.
pub type Response = http::Response<Body>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A JSON answer of the gateway's own: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    json(status, body)
}

/// A response with a JSON `body` (already encoded) and `status`.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
