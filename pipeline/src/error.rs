//! The error components return at run time, and the one place that decides which kinds are
//! worth retrying.

use std::fmt;

/// A boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, at the level a supervisor acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration cannot work (a missing table, a refused privilege).
    Config,
    /// A server could not be reached or dropped the connection.
    Connect,
    /// Local I/O failed (a file, a socket).
    Io,
    /// A peer broke its protocol or sent something undecodable.
    Protocol,
    /// A broken invariant inside sluice.
    Internal,
}

impl ErrorKind {
    /// Whether an operation failing this way may succeed if tried again later.
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorKind::Connect | ErrorKind::Io => true,
            ErrorKind::Config | ErrorKind::Protocol | ErrorKind::Internal => false,
        }
    }

    /// A short lowercase name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::Io => "io",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A component's run-time error: a kind, what was being done, and the cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` while doing `context` (lowercase, e.g. "opening the output file").
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again may help.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Formats an error with its whole cause chain, for logs: `outer: cause: root cause`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_lists_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = Error::new(ErrorKind::Io, "opening out.jsonl").with_source(io);
        assert_eq!(chain(&error), "opening out.jsonl: no such file");
        assert!(error.is_retryable());
        assert!(!Error::new(ErrorKind::Config, "x").is_retryable());
    }
}
