//! The state file of static and dns modes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{RecordStore, StoreError};
use crate::decision::{Holder, Recorded};
use crate::topology::HistoryEntry;

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFileV1 {
    version: u32,
    epoch: u64,
    holder: Option<Holder>,
    active: bool,
    #[serde(default)]
    updated_at: String,
    /// Absent in files written before the history was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<HistoryEntry>,
}

pub struct FileStore {
    path: PathBuf,
    /// Held for the life of the store: two services deciding from one state file would elect two
    /// writers, so the second one refuses to start.
    _lock: File,
}

impl FileStore {
    /// Opens the store and takes its lock (`<file>.lock`, released by the OS when the process ends).
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let dir = parent_dir(path);
        if !dir.is_dir() {
            return Err(StoreError::Corrupt(format!(
                "state.file {}: directory {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Corrupt(format!(
                    "cannot open lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Corrupt(format!(
                    "state.file {} is in use by another writer-election process (lock {} is held)",
                    path.display(),
                    lock_path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Corrupt(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )))
            }
        }
        Ok(FileStore {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Reads the record; a missing file is "never elected", anything unreadable is an error.
pub fn read_state_file(path: &Path) -> Result<Recorded, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recorded::default()),
        Err(e) => {
            return Err(StoreError::Corrupt(format!(
                "cannot read state file {}: {e}",
                path.display()
            )))
        }
    };
    let corrupt = |why: String| {
        StoreError::Corrupt(format!(
            "state file {} is corrupt: {why}; refusing to start rather than reset the epoch \
             (restore it, or delete it to start over at epoch 0 if no writer was ever promoted)",
            path.display()
        ))
    };
    let state: StateFileV1 = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if state.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this build reads {FORMAT_VERSION})",
            state.version
        )));
    }
    match (&state.holder, state.epoch) {
        (None, e) if e > 0 => return Err(corrupt(format!("epoch {e} without a holder"))),
        (Some(h), 0) => return Err(corrupt(format!("holder {} at epoch 0", h.name))),
        (None, _) if state.active => return Err(corrupt("active without a holder".into())),
        _ => {}
    }
    Ok(Recorded {
        epoch: state.epoch,
        holder: state.holder,
        active: state.active,
        history: state.history,
    })
}

/// Atomic replace: a crash leaves either the old or the new file, never a torn one.
pub fn write_state_file(path: &Path, rec: &Recorded) -> std::io::Result<()> {
    let state = StateFileV1 {
        version: FORMAT_VERSION,
        epoch: rec.epoch,
        holder: rec.holder.clone(),
        active: rec.active,
        updated_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        history: rec.history.clone(),
    };
    let mut body = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
    body.push(b'\n');
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[async_trait]
impl RecordStore for FileStore {
    async fn load(&self) -> Result<Recorded, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || read_state_file(&path))
            .await
            .map_err(|e| StoreError::Unavailable(format!("state file reader failed: {e}")))?
    }

    async fn save(&self, rec: &Recorded) -> Result<(), StoreError> {
        let path = self.path.clone();
        let rec = rec.clone();
        tokio::task::spawn_blocking(move || write_state_file(&path, &rec))
            .await
            .map_err(|e| StoreError::Unavailable(format!("state file writer failed: {e}")))?
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot write state file {}: {e}",
                    self.path.display()
                ))
            })
    }

    fn describe(&self) -> String {
        format!("state file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recorded {
        Recorded {
            epoch: 7,
            holder: Some(Holder {
                name: "node-1".into(),
                address: "127.0.0.1:9002".into(),
                uid: None,
            }),
            active: true,
            history: super::super::sample_history(),
        }
    }

    #[tokio::test]
    async fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = FileStore::open(&path).unwrap();
        assert_eq!(store.load().await.unwrap(), Recorded::default());
        store.save(&sample()).await.unwrap();
        assert_eq!(store.load().await.unwrap(), sample());
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn corrupt_files_are_errors_not_resets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for bad in [
            "{not json",
            "",
            r#"{"version":1,"epoch":3,"holder":null,"active":false}"#,
            r#"{"version":1,"epoch":0,"holder":{"name":"a","address":"a:1"},"active":true}"#,
            r#"{"version":9,"epoch":0,"holder":null,"active":false}"#,
            r#"{"version":1,"epoch":"x","holder":null,"active":false}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            match read_state_file(&path) {
                Err(StoreError::Corrupt(msg)) => {
                    assert!(msg.contains(&path.display().to_string()), "{msg}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn a_second_store_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let first = FileStore::open(&path).unwrap();
        match FileStore::open(&path) {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains("in use"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("second open must fail while the first holds the lock"),
        }
        drop(first);
        FileStore::open(&path).unwrap();
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("state.json");
        match FileStore::open(&path) {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains("does not exist"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("must fail"),
        }
    }
}
