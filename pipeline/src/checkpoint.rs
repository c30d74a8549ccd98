//! A file that keeps one source's checkpoint across restarts, for sources whose input has no
//! server to keep it (a generator; PostgreSQL keeps its own in the replication slot).
//!
//! Saving writes a temporary file, fsyncs it, renames it over the old one and fsyncs the
//! directory, so a crash leaves either the old checkpoint or the new one, never a torn file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::event::Position;

/// One source's checkpoint file, `<data_dir>/checkpoints/<source id>.json`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    position: u64,
}

impl CheckpointStore {
    /// The store of source `id` under `data_dir`.
    pub fn new(data_dir: &Path, id: &str) -> Self {
        CheckpointStore {
            path: data_dir.join("checkpoints").join(format!("{id}.json")),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved checkpoint, or `None` when none was ever saved.
    pub fn load(&self) -> io::Result<Option<Position>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not a checkpoint file: {e}", self.path.display()),
                    )
                })?;
                Ok(Some(Position(stored.position)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves `position` durably.
    pub fn save(&self, position: Position) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        serde_json::to_writer(
            &mut file,
            &Stored {
                position: position.0,
            },
        )?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// The saved checkpoint, read off the async runtime's threads; an error names the file.
    pub async fn restore(&self) -> Result<Option<Position>, Error> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Internal, "checkpoint reader panicked").with_source(e)
            })?
            .map_err(|e| {
                Error::new(ErrorKind::Io, format!("reading {}", self.path.display())).with_source(e)
            })
    }

    /// Saves `checkpoint` (nothing when there is none yet) durably, off the async runtime's
    /// threads; an error names the file.
    pub async fn record(&self, checkpoint: Option<Position>) -> Result<(), Error> {
        let Some(position) = checkpoint else {
            return Ok(());
        };
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.save(position))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Internal, "checkpoint writer panicked").with_source(e)
            })?
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("saving the checkpoint to {}", self.path.display()),
                )
                .with_source(e)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = std::env::temp_dir().join(format!("sluice-cp-{}", std::process::id()));
        let store = CheckpointStore::new(&dir, "gen");
        assert_eq!(store.load().unwrap(), None);
        store.save(Position(41)).unwrap();
        store.save(Position(42)).unwrap();
        assert_eq!(store.load().unwrap(), Some(Position(42)));
        std::fs::write(store.path(), b"garbage").unwrap();
        assert!(store.load().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
