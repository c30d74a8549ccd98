//! JWT Bearer verification: HS256/384/512, RS*, PS*, ES256/384 and EdDSA, with keys inline,
//! from a file, or from a JWKS URL (cached, fetched again when a token names an unknown
//! `kid`); `exp`/`nbf` with leeway, `iss` and `aud`. The verified claim (`sub` by default) is
//! forwarded as a header (`X-User-ID` by default), which the entrance has already removed from
//! what the client sent.
//!
//! Algorithm confusion is refused: a token is checked only with a key of its algorithm's
//! family (an HS256 token is never checked against an RSA public key used as an HMAC secret),
//! and only algorithms listed in `algorithms` are accepted; `alg: none` never is.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};

use crate::body::{self, Request, Response};
use crate::connection::Client;
use crate::context::{AnsweredFor, RequestContext};
use crate::phase::{Next, Phase, PhaseFuture};

/// Default for [`JwtConfig::claim`].
pub const DEFAULT_CLAIM: &str = "sub";
/// Default for [`JwtConfig::header`].
pub const DEFAULT_HEADER: &str = "x-user-id";
/// Default for [`JwtConfig::leeway`].
pub const DEFAULT_LEEWAY: HumanDuration = HumanDuration::from_secs(30);
/// Default for [`JwtConfig::jwks_refresh`].
pub const DEFAULT_JWKS_REFRESH: HumanDuration = HumanDuration::from_secs(300);
/// Most verified tokens remembered (see [`Verifier::verify`]); when full, the memory is
/// cleared and fills again.
pub const VERIFIED_CAPACITY: usize = 10_000;
/// The shortest time between two JWKS fetches caused by unknown `kid`s, so forged `kid`s
/// cannot make the gateway hammer the key server.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

/// How a route authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// A valid token is needed (401 otherwise).
    Required,
    /// A token is verified when present (401 when invalid); without one the request goes on
    /// anonymous.
    Optional,
    /// No verification; no user header is forwarded.
    Off,
}

/// `jwt`: how tokens are verified.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted algorithms (`["HS256"]`, `["RS256", "ES256"]`); unset, HS256 when `secret` is
    /// set, else RS256.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// The HMAC secret (HS*), as text. Never printed.
    pub secret: Option<String>,
    /// A public key (RS*/PS*, ES*, EdDSA), PEM, inline.
    pub public_key: Option<String>,
    /// A public key file (PEM).
    pub public_key_file: Option<PathBuf>,
    /// A JWKS URL (`http://idp/.well-known/jwks.json`), fetched at start, every
    /// `jwks_refresh`, and when a token names a `kid` not in the set.
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: HumanDuration,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// The required `iss`, if any.
    pub issuer: Option<String>,
    /// Accepted `aud` values; unset, `aud` is not checked.
    #[serde(default)]
    pub audience: Vec<String>,
    /// The claim forwarded (a string or a number).
    #[serde(default = "default_claim")]
    pub claim: String,
    /// The header it is forwarded as.
    #[serde(default = "default_header")]
    pub header: String,
}

fn default_jwks_refresh() -> HumanDuration {
    DEFAULT_JWKS_REFRESH
}
fn default_leeway() -> HumanDuration {
    DEFAULT_LEEWAY
}
fn default_claim() -> String {
    DEFAULT_CLAIM.to_owned()
}
fn default_header() -> String {
    DEFAULT_HEADER.to_owned()
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("public_key", &self.public_key.as_ref().map(|_| "(pem)"))
            .field("public_key_file", &self.public_key_file)
            .field("jwks_url", &self.jwks_url)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("claim", &self.claim)
            .field("header", &self.header)
            .finish()
    }
}

impl JwtConfig {
    fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, FieldError> {
        if self.algorithms.is_empty() {
            return Ok(vec![if self.secret.is_some() {
                Algorithm::HS256
            } else {
                Algorithm::RS256
            }]);
        }
        self.algorithms
            .iter()
            .map(|name| {
                name.parse::<Algorithm>().map_err(|_| {
                    FieldError::new(
                        "algorithms",
                        format!("{name:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"),
                    )
                })
            })
            .collect()
    }

    /// The static keys (secret, inline and file keys), read and parsed.
    fn static_keys(&self, algorithms: &[Algorithm]) -> Result<Vec<Key>, FieldError> {
        let mut keys = Vec::new();
        if let Some(secret) = &self.secret {
            keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        let pem = match (&self.public_key, &self.public_key_file) {
            (Some(pem), _) => Some((pem.clone().into_bytes(), "public_key")),
            (None, Some(path)) => Some((
                std::fs::read(path).map_err(|e| {
                    FieldError::new(
                        "public_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?,
                "public_key_file",
            )),
            (None, None) => None,
        };
        if let Some((pem, field)) = pem {
            let families: Vec<_> = algorithms
                .iter()
                .map(|a| a.family())
                .filter(|f| *f != AlgorithmFamily::Hmac)
                .collect();
            let family = families.first().copied().ok_or_else(|| {
                FieldError::new(
                    field,
                    "a public key needs an RS*, PS*, ES* or EdDSA algorithm",
                )
            })?;
            let key = match family {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            }
            .map_err(|e| {
                FieldError::new(field, format!("not a {family:?} public key (PEM): {e}"))
            })?;
            keys.push(Key { kid: None, key });
        }
        Ok(keys)
    }
}

impl JwtConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        let algorithms = self.parsed_algorithms()?;
        let hmac = algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        if hmac && self.secret.is_none() {
            return Err(FieldError::new("secret", "HS* algorithms need a secret"));
        }
        if let Some(secret) = &self.secret {
            if !hmac {
                return Err(FieldError::new(
                    "secret",
                    "a secret is only used by HS* algorithms: list one in algorithms",
                ));
            }
            if secret.len() < 16 {
                return Err(FieldError::new(
                    "secret",
                    "must be at least 16 bytes (RFC 7518 asks for as many as the hash: 32 for HS256)",
                ));
            }
        }
        if self.public_key.is_some() && self.public_key_file.is_some() {
            return Err(FieldError::new(
                "public_key_file",
                "give public_key or public_key_file, not both",
            ));
        }
        let asymmetric = algorithms
            .iter()
            .any(|a| a.family() != AlgorithmFamily::Hmac);
        if asymmetric
            && self.public_key.is_none()
            && self.public_key_file.is_none()
            && self.jwks_url.is_none()
        {
            return Err(FieldError::new(
                "algorithms",
                "RS*, PS*, ES* and EdDSA need public_key, public_key_file or jwks_url",
            ));
        }
        if let Some(url) = &self.jwks_url
            && url
                .parse::<http::Uri>()
                .map_or(true, |u| u.scheme().is_none())
        {
            return Err(FieldError::new(
                "jwks_url",
                format!("{url:?} is not an absolute URL"),
            ));
        }
        HeaderName::from_bytes(self.header.as_bytes()).map_err(|_| {
            FieldError::new("header", format!("{:?} is not a header name", self.header))
        })?;
        Ok(())
    }
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// Why a token was refused; each becomes a 401 whose `WWW-Authenticate` says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("a Bearer token is required")]
    Missing,
    /// Several `Authorization` headers, or not a Bearer one.
    #[error("send exactly one Authorization: Bearer header")]
    BadRequest,
    /// Not a JWT, or an algorithm that is not accepted (`none` included).
    #[error("the token is malformed or uses an algorithm not accepted")]
    Malformed,
    /// No key for the token's algorithm (and `kid`).
    #[error("no key verifies this token")]
    NoKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` or `aud` is not the one required, or a required claim is absent.
    #[error("the token's claims are not accepted")]
    Claims,
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    algorithms: Vec<Algorithm>,
    keys: Vec<Key>,
    jwks: Option<Jwks>,
    validation: Validation,
    claim: String,
    /// The header the claim is forwarded as.
    pub header: HeaderName,
    /// Tokens already verified: their user and `exp`, so a client's next requests cost a
    /// lookup rather than a signature check.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

/// A verified token's user and `exp` (Unix seconds).
type Verified = (Arc<str>, u64);

struct Jwks {
    url: http::Uri,
    refresh: Duration,
    /// Its server's connection.
    client: Client,
    state: tokio::sync::Mutex<JwksState>,
    keys: RwLock<Arc<Vec<Key>>>,
}

struct JwksState {
    fetched: Option<Instant>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier for `config` (reads key files; fetches nothing yet).
    pub fn new(config: &JwtConfig) -> Result<Self, FieldError> {
        let algorithms = config.parsed_algorithms()?;
        let keys = config.static_keys(&algorithms)?;
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.leeway = config.leeway.get().as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audience);
        }
        let jwks = match &config.jwks_url {
            Some(url) => {
                let url: http::Uri = url
                    .parse()
                    .map_err(|_| FieldError::new("jwks_url", "not a URL"))?;
                Some(Jwks {
                    client: Client::new(&url).map_err(|e| FieldError::new("jwks_url", e))?,
                    url,
                    refresh: config.jwks_refresh.get(),
                    state: tokio::sync::Mutex::new(JwksState { fetched: None }),
                    keys: RwLock::new(Arc::new(Vec::new())),
                })
            }
            None => None,
        };
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| FieldError::new("header", "not a header name"))?;
        Ok(Verifier {
            algorithms,
            keys,
            jwks,
            validation,
            claim: config.claim.clone(),
            header,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The user id of a valid `token`. A token that verified is remembered until its `exp`
    /// (without leeway), and not checked again before.
    pub async fn verify(&self, token: &str) -> Result<Arc<str>, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((user, exp)) = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            && now < *exp
        {
            return Ok(Arc::clone(user));
        }
        let (user, exp) = self.check(token).await?;
        let user: Arc<str> = Arc::from(user);
        if now < exp {
            let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
            verified.insert(Box::from(token), (Arc::clone(&user), exp));
        }
        Ok(user)
    }

    /// Verifies `token`: its user and `exp`.
    async fn check(&self, token: &str) -> Result<(String, u64), AuthError> {
        let head = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.algorithms.contains(&head.alg) {
            return Err(AuthError::Malformed);
        }
        let family = head.alg.family();
        let mut found = self.try_keys(&self.keys, token, family, head.kid.as_deref());
        if matches!(found, Err(AuthError::NoKey))
            && let Some(jwks) = &self.jwks
        {
            let mut keys = jwks.current();
            let known = head
                .kid
                .as_deref()
                .is_some_and(|kid| keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
            if !known {
                keys = jwks.refetch().await;
            }
            found = self.try_keys(&keys, token, family, head.kid.as_deref());
        }
        let claims = found?;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(AuthError::Claims)?;
        let user = match claims.get(&self.claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(AuthError::Claims),
        };
        Ok((user, exp))
    }

    fn try_keys(
        &self,
        keys: &[Key],
        token: &str,
        family: AlgorithmFamily,
        kid: Option<&str>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let mut result = Err(AuthError::NoKey);
        let candidates = keys
            .iter()
            .filter(|k| k.key.family() == family)
            .filter(|k| match (kid, &k.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            });
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &key.key,
                &self.validation,
            ) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    result = Err(match e.kind() {
                        K::InvalidSignature => AuthError::Signature,
                        K::ExpiredSignature => AuthError::Expired,
                        K::ImmatureSignature => AuthError::NotYetValid,
                        K::InvalidIssuer | K::InvalidAudience | K::MissingRequiredClaim(_) => {
                            AuthError::Claims
                        }
                        _ => AuthError::Malformed,
                    });
                    // A bad signature may verify with the next key; anything else would not.
                    if !matches!(result, Err(AuthError::Signature)) {
                        return result;
                    }
                }
            }
        }
        result
    }

    /// Starts the JWKS fetch and its periodic refresh, if a URL is configured.
    pub fn start(self: &Arc<Self>) {
        if self.jwks.is_some() {
            let verifier = Arc::clone(self);
            tokio::spawn(async move {
                let Some(jwks) = &verifier.jwks else { return };
                loop {
                    jwks.fetch().await;
                    tokio::time::sleep(jwks.refresh).await;
                    if Arc::strong_count(&verifier) == 1 {
                        return;
                    }
                }
            });
        }
    }
}

impl Jwks {
    fn current(&self) -> Arc<Vec<Key>> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Fetches again unless a fetch happened within [`JWKS_MIN_REFETCH`].
    async fn refetch(&self) -> Arc<Vec<Key>> {
        let recent = {
            let state = self.state.lock().await;
            state
                .fetched
                .is_some_and(|at| at.elapsed() < JWKS_MIN_REFETCH)
        };
        if !recent {
            self.fetch().await;
        }
        self.current()
    }

    async fn fetch(&self) {
        let mut state = self.state.lock().await;
        state.fetched = Some(Instant::now());
        match self.get().await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "jwks fetched");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
            }
            Err(reason) => {
                tracing::warn!(url = %self.url, %reason, "jwks fetch failed; keeping the keys held")
            }
        }
    }

    async fn get(&self) -> Result<Vec<Key>, String> {
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.get(&self.url))
            .await
            .map_err(|_| "no answer within 10s".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let bytes: Bytes = http_body_util::Limited::new(response.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    key,
                })
            })
            .collect())
    }
}

/// The authentication phase of a route.
#[derive(Clone)]
pub struct AuthPhase {
    verifier: Option<Arc<Verifier>>,
    mode: AuthMode,
}

impl AuthPhase {
    /// Authenticates with `verifier` as `mode` says.
    pub fn new(verifier: Option<Arc<Verifier>>, mode: AuthMode) -> Self {
        AuthPhase { verifier, mode }
    }
}

fn bearer(request: &Request) -> Result<Option<&str>, AuthError> {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::BadRequest);
    }
    let value = value.to_str().map_err(|_| AuthError::BadRequest)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::BadRequest)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::BadRequest);
    }
    Ok(Some(token.trim()))
}

/// The 401 for `error`, with its `WWW-Authenticate` challenge (RFC 6750).
pub fn unauthorized(error: &AuthError) -> Response {
    let challenge = match error {
        AuthError::Missing => r#"Bearer realm="sluice""#.to_owned(),
        AuthError::BadRequest => {
            format!(
                r#"Bearer realm="sluice", error="invalid_request", error_description="{error}""#
            )
        }
        _ => {
            format!(r#"Bearer realm="sluice", error="invalid_token", error_description="{error}""#)
        }
    };
    let mut response = body::error(StatusCode::UNAUTHORIZED, &error.to_string());
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

impl Phase for AuthPhase {
    fn passes(&self) -> bool {
        !matches!(
            (self.mode, &self.verifier),
            (AuthMode::Required | AuthMode::Optional, Some(_))
        )
    }

    fn call<S: Next>(&self, mut request: Request, mut inner: S) -> PhaseFuture {
        let layer = self.clone();
        Box::pin(async move {
            let (AuthMode::Required | AuthMode::Optional, Some(verifier)) =
                (layer.mode, &layer.verifier)
            else {
                return inner.call(request).await;
            };
            let token = match bearer(&request) {
                Ok(Some(token)) => token.to_owned(),
                Ok(None) if layer.mode == AuthMode::Optional => return inner.call(request).await,
                Ok(None) => return Ok(unauthorized(&AuthError::Missing)),
                Err(e) => return Ok(unauthorized(&e)),
            };
            let user = match verifier.verify(&token).await {
                Ok(user) => user,
                Err(e) => return Ok(unauthorized(&e)),
            };
            let Ok(value) = HeaderValue::from_str(&user) else {
                return Ok(unauthorized(&AuthError::Claims));
            };
            request.headers_mut().insert(verifier.header.clone(), value);
            if let Some(cx) = request.extensions_mut().get_mut::<RequestContext>() {
                cx.user = Some(Arc::clone(&user));
            }
            let mut response = inner.call(request).await?;
            response.extensions_mut().insert(AnsweredFor(user));
            Ok(response)
        })
    }
}

impl Validate for JwtConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "a-test-secret-of-32-bytes-length";

    fn config() -> JwtConfig {
        toml::from_str(&format!("secret = {SECRET:?}")).unwrap()
    }

    fn verifier(config: &JwtConfig) -> Verifier {
        config.check().unwrap();
        Verifier::new(config).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_valid_token_gives_its_subject() {
        let v = verifier(&config());
        let token = hs256(serde_json::json!({"sub": "456", "exp": now() + 60}), SECRET);
        assert_eq!(&*v.verify(&token).await.unwrap(), "456");
        assert_eq!(&*v.verify(&token).await.unwrap(), "456", "remembered");
        let numeric = hs256(serde_json::json!({"sub": 456, "exp": now() + 60}), SECRET);
        assert_eq!(&*v.verify(&numeric).await.unwrap(), "456");
    }

    #[tokio::test]
    async fn every_bad_token_kind_is_refused() {
        let v = verifier(&config());
        let forged = hs256(
            serde_json::json!({"sub": "456", "exp": now() + 60}),
            "another-secret-of-32-bytes-long!",
        );
        assert_eq!(v.verify(&forged).await, Err(AuthError::Signature));
        let expired = hs256(
            serde_json::json!({"sub": "456", "exp": now() - 3600}),
            SECRET,
        );
        assert_eq!(v.verify(&expired).await, Err(AuthError::Expired));
        let early = hs256(
            serde_json::json!({"sub": "456", "exp": now() + 7200, "nbf": now() + 3600}),
            SECRET,
        );
        assert_eq!(v.verify(&early).await, Err(AuthError::NotYetValid));
        let no_exp = hs256(serde_json::json!({"sub": "456"}), SECRET);
        assert_eq!(v.verify(&no_exp).await, Err(AuthError::Claims));
        // alg: none, unsigned.
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            base64_url(format!(r#"{{"sub":"456","exp":{}}}"#, now() + 60).as_bytes())
        );
        assert_eq!(v.verify(&none).await, Err(AuthError::Malformed));
        assert_eq!(v.verify("not-a-token").await, Err(AuthError::Malformed));
        // HS512 is not in the accepted list.
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"sub": "456", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&hs512).await, Err(AuthError::Malformed));
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked() {
        let mut config = config();
        config.issuer = Some("https://idp.test".into());
        config.audience = vec!["shop".into()];
        let v = verifier(&config);
        let good = hs256(
            serde_json::json!({"sub": "1", "exp": now() + 60, "iss": "https://idp.test", "aud": "shop"}),
            SECRET,
        );
        assert_eq!(&*v.verify(&good).await.unwrap(), "1");
        let other = hs256(
            serde_json::json!({"sub": "1", "exp": now() + 60, "iss": "https://evil.test", "aud": "shop"}),
            SECRET,
        );
        assert_eq!(v.verify(&other).await, Err(AuthError::Claims));
        let aud = hs256(
            serde_json::json!({"sub": "1", "exp": now() + 60, "iss": "https://idp.test", "aud": "bank"}),
            SECRET,
        );
        assert_eq!(v.verify(&aud).await, Err(AuthError::Claims));
    }

    #[tokio::test]
    async fn an_hs_token_signed_with_the_public_key_is_refused() {
        // Algorithm confusion: the attacker signs HS256 with the RSA public key's PEM text.
        let pem = include_str!("../tests/keys/rsa_public.pem");
        let config: JwtConfig =
            toml::from_str(&format!("algorithms = [\"RS256\"]\npublic_key = {pem:?}")).unwrap();
        let v = verifier(&config);
        let confused = hs256(serde_json::json!({"sub": "1", "exp": now() + 60}), pem);
        assert_eq!(v.verify(&confused).await, Err(AuthError::Malformed));
        let private = include_bytes!("../tests/keys/rsa_private.pem");
        let good = encode(
            &Header::new(Algorithm::RS256),
            &serde_json::json!({"sub": "7", "exp": now() + 60}),
            &EncodingKey::from_rsa_pem(private).unwrap(),
        )
        .unwrap();
        assert_eq!(&*v.verify(&good).await.unwrap(), "7");
    }

    /// Serves `body` as JSON to every request on a port of its own; counts the requests.
    async fn jwks_server(body: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (url, hits)
    }

    #[tokio::test]
    async fn keys_come_from_a_jwks_and_an_unknown_kid_fetches_it_again() {
        let private = include_bytes!("../tests/keys/rsa_private.pem");
        let key = EncodingKey::from_rsa_pem(private).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some("k1".into());
        let set = serde_json::json!({ "keys": [jwk] }).to_string();
        let (url, hits) = jwks_server(set).await;
        let config: JwtConfig =
            toml::from_str(&format!("algorithms = [\"RS256\"]\njwks_url = {url:?}")).unwrap();
        let v = verifier(&config);
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        let token = encode(
            &header,
            &serde_json::json!({"sub": "7", "exp": now() + 60}),
            &key,
        )
        .unwrap();
        assert_eq!(
            &*v.verify(&token).await.unwrap(),
            "7",
            "fetched on the unknown kid"
        );
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        header.kid = Some("k2".into());
        let rotated = encode(
            &header,
            &serde_json::json!({"sub": "8", "exp": now() + 60}),
            &key,
        )
        .unwrap();
        assert_eq!(v.verify(&rotated).await, Err(AuthError::NoKey));
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a refetch within JWKS_MIN_REFETCH is skipped, so forged kids cannot hammer the key server"
        );
    }

    #[test]
    fn the_secret_never_shows_and_short_ones_are_refused() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains(SECRET), "{shown}");
        let short: JwtConfig = toml::from_str("secret = \"short\"").unwrap();
        assert_eq!(short.check().unwrap_err().path, "secret");
        let alg: JwtConfig =
            toml::from_str(&format!("secret = {SECRET:?}\nalgorithms = [\"none\"]")).unwrap();
        assert_eq!(alg.check().unwrap_err().path, "algorithms");
    }

    fn base64_url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
