//! `GET /ids/{generator}?count=N` on the API server: `{"ids": ["…", …]}`, every id a JSON
//! string (64-bit ids pass 2^53, where JavaScript numbers lose digits), so that services in
//! any language, and the gateway, can draw ids from sluice.
//!
//! | answer | when |
//! |---|---|
//! | 200 `{"ids": [...]}` | `count` ids (1 without `count`), in issue order |
//! | 400 `{"error": "..."}` | `count` not a number, 0, or above `max_count`; an unknown parameter |
//! | 404 `{"error": "..."}` | no generator of that name |
//! | 503 `{"error": "..."}` | the generator cannot issue now (its server, the clock); `Retry-After: 1` |
//! | 500 `{"error": "..."}` | the generator can never issue (a used-up layout) |
//!
//! Input is checked before any id is issued: a refused request spends none.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::resource::Ids;

/// The routes the `[ids]` resource adds to the API server.
pub fn router(ids: Arc<Ids>) -> Router {
    Router::new()
        .route("/ids/{generator}", get(issue))
        .with_state(ids)
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    json(status, &serde_json::json!({ "error": reason.into() }))
}

/// `count` from the query string: 1 when absent, else 1 to `max`.
fn count(query: Option<&str>, max: usize) -> Result<usize, String> {
    let mut count = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "count" if count.is_none() => count = Some(value),
            "count" => return Err("`count` is given twice".into()),
            other => return Err(format!("unknown parameter {other:?} (known: count)")),
        }
    }
    let Some(text) = count else { return Ok(1) };
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("`count` must be between 1 and {max}, got {n}")),
        Err(_) => Err(format!(
            "`count` must be a whole number between 1 and {max}, got {text:?}"
        )),
    }
}

async fn issue(
    State(ids): State<Arc<Ids>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(generator) = ids.get(&name) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no generator {name:?} (configured: {})",
                ids.names().join(", ")
            ),
        );
    };
    let count = match count(query.as_deref(), ids.max_count()) {
        Ok(count) => count,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    match generator.generate(count).await {
        Ok(issued) => {
            let ids: Vec<String> = issued.iter().map(ToString::to_string).collect();
            json(StatusCode::OK, &serde_json::json!({ "ids": ids }))
        }
        Err(error) if error.is_retryable() => {
            let mut response = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                sluice_pipeline::error::chain(&error),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Err(error) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            sluice_pipeline::error::chain(&error),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_read_strictly() {
        assert_eq!(count(None, 10), Ok(1));
        assert_eq!(count(Some("count=10"), 10), Ok(10));
        for (query, reason) in [
            ("count=11", "`count` must be between 1 and 10, got 11"),
            ("count=0", "`count` must be between 1 and 10, got 0"),
            (
                "count=-1",
                "`count` must be a whole number between 1 and 10, got \"-1\"",
            ),
            ("count=", "`count` must be a whole number"),
            ("count=1&count=2", "`count` is given twice"),
            ("n=1", "unknown parameter \"n\" (known: count)"),
        ] {
            let error = count(Some(query), 10).unwrap_err();
            assert!(error.starts_with(reason), "{query}: {error}");
        }
    }
}
