//! `file`: appends each event as a JSON line to a file and acknowledges it only after fsync.
//!
//! ```toml
//! [sinks.archive]
//! type = "file"
//! inputs = ["events"]
//! path = "/var/lib/sluice/events.jsonl"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_pipeline::component::{BuildContext, DynSink};
use sluice_pipeline::{
    Error, ErrorKind, FieldError, FieldErrors, Sink, SinkConfig, SinkContext, Validate,
};
use tokio::io::AsyncWriteExt;

use crate::codec::{LineTarget, write_lines};

/// Config of the `file` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to; created, with its directory, if missing.
    pub path: PathBuf,
}

impl FileSinkConfig {
    /// The config of a file sink writing to `path` (also the built-in quarantine file).
    pub fn new(path: &Path) -> Self {
        FileSinkConfig {
            path: path.to_owned(),
        }
    }
}

impl Validate for FileSinkConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        if self.path.as_os_str().is_empty() {
            return Err(FieldError::new("path", "must not be empty").into());
        }
        Ok(())
    }
}

impl SinkConfig for FileSinkConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSink>, Error> {
        Ok(Box::new(FileSink {
            path: self.path.clone(),
            file: None,
        }))
    }
}

/// The running `file` sink.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

struct DurableFile<'a>(&'a mut tokio::fs::File);

impl LineTarget for DurableFile<'_> {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes).await
    }

    async fn persist(&mut self) -> std::io::Result<()> {
        self.0.sync_data().await
    }
}

impl Sink for FileSink {
    async fn start(&mut self, _cx: &mut SinkContext) -> Result<(), Error> {
        let shown = self.path.display().to_string();
        // A path that cannot be opened (not a directory, no permission) will not open by
        // itself: the pipeline stops rather than retrying. Writing fails as I/O, retried.
        let open_error =
            |e| Error::new(ErrorKind::Config, format!("opening {shown}")).with_source(e);
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(open_error)?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(open_error)?;
        self.file = Some(file);
        Ok(())
    }

    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        let shown = self.path.display().to_string();
        let Some(file) = self.file.as_mut() else {
            return Err(Error::new(ErrorKind::Internal, "run before start"));
        };
        cx.set_ready(true);
        write_lines(cx, DurableFile(file), &shown).await
    }

    async fn stop(&mut self) {
        self.file = None;
    }
}
