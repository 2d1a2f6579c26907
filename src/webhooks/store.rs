//! Webhook definitions and cursors on disk: a `webhooks/` directory inside
//! the journal directory, one `<id>.json` file per webhook (definition,
//! secret, cursor, state), mode 0600 in a 0700 directory since it holds the
//! secret.
//!
//! A file is replaced whole: written to `<id>.json.tmp`, fsynced, renamed
//! over the old one, and the directory fsynced, so a crash leaves the old
//! file or the new one, never a mix. The cursor is written after the
//! deliveries it covers, so a crash re-delivers (at least once) and never
//! skips. Blocking: call from a blocking thread.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The name of the directory inside the journal directory.
pub const DIR_NAME: &str = "webhooks";

const EXT: &str = ".json";
const TEMP_EXT: &str = ".json.tmp";

/// One webhook as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWebhook {
    /// A UUID.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// `whsec_<base64>`.
    pub secret: String,
    /// Wanted event types (wire names); empty means every type.
    pub types: Vec<String>,
    /// Wanted alias, as typed; none means every alias.
    pub alias: Option<String>,
    /// When it was created, RFC 3339 UTC.
    pub created_at: String,
    /// Every event up to this seq was delivered or filtered out.
    pub cursor: u64,
    /// `active` or `failing`.
    pub state: String,
    /// Since when (Unix seconds) every delivery attempt has failed, if so:
    /// the 24 hours before `failing` count across restarts.
    #[serde(default)]
    pub failing_since: Option<u64>,
}

impl std::fmt::Debug for StoredWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredWebhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("cursor", &self.cursor)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The directory of webhook files.
#[derive(Debug, Clone)]
pub struct WebhookDir {
    dir: PathBuf,
}

impl WebhookDir {
    /// The directory `webhooks/` in `journal_dir`, created (0700) if missing.
    ///
    /// # Errors
    ///
    /// It cannot be created.
    pub fn open(journal_dir: &Path) -> std::io::Result<WebhookDir> {
        let dir = journal_dir.join(DIR_NAME);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(WebhookDir { dir })
    }

    /// Every webhook stored, skipping (with a warning) files that cannot be
    /// read, and removing temporary files a crash left.
    ///
    /// # Errors
    ///
    /// The directory cannot be listed.
    pub fn load(&self) -> std::io::Result<Vec<StoredWebhook>> {
        let mut hooks = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            if name.ends_with(TEMP_EXT) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(EXT) else {
                continue;
            };
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<StoredWebhook>(&bytes).map_err(|e| e.to_string())
                });
            match read {
                Ok(hook) if hook.id == id && valid_id(id) => hooks.push(hook),
                Ok(_) => tracing::warn!(
                    file = %path.display(),
                    "webhook file does not match its name; skipped (remove it)"
                ),
                Err(e) => tracing::warn!(
                    file = %path.display(),
                    "webhook file cannot be read ({e}); skipped (fix or remove it)"
                ),
            }
        }
        hooks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(hooks)
    }

    /// Writes `hook` durably, replacing its previous file.
    ///
    /// # Errors
    ///
    /// Writing, syncing or renaming failed; the previous file is intact.
    pub fn save(&self, hook: &StoredWebhook) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(hook).map_err(std::io::Error::other)?;
        let temp = self.dir.join(format!("{}{TEMP_EXT}", hook.id));
        let path = self.path(&hook.id);
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, &path)?;
        self.sync_dir()
    }

    /// Removes a webhook's file durably (nothing to remove is fine).
    ///
    /// # Errors
    ///
    /// Removing or syncing failed.
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{EXT}"))
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// Whether `id` is a webhook id (a UUID): safe as a file name.
pub fn valid_id(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok() && id.len() == 36
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str, cursor: u64) -> StoredWebhook {
        StoredWebhook {
            id: id.to_string(),
            url: "http://127.0.0.1:9/".to_string(),
            secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".to_string(),
            types: vec!["alias.created".to_string()],
            alias: None,
            created_at: "2024-01-01T00:00:00.000000Z".to_string(),
            cursor,
            state: "active".to_string(),
            failing_since: None,
        }
    }

    #[test]
    fn saves_replaces_loads_and_removes() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = WebhookDir::open(tmp.path()).unwrap();
        let id = "6f1c8d0e-9a5b-4c1d-8e2f-0a1b2c3d4e5f";
        dir.save(&hook(id, 1)).unwrap();
        dir.save(&hook(id, 7)).unwrap();
        std::fs::write(tmp.path().join(DIR_NAME).join("x.json.tmp"), b"half").unwrap();
        std::fs::write(tmp.path().join(DIR_NAME).join("bad.json"), b"{").unwrap();
        let loaded = dir.load().unwrap();
        assert_eq!(loaded, vec![hook(id, 7)]);
        let mode = std::fs::metadata(dir.path(id))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tmp.path().join(DIR_NAME).join("x.json.tmp").exists());
        assert!(!format!("{:?}", hook(id, 1)).contains("whsec_"));
        dir.remove(id).unwrap();
        dir.remove(id).unwrap();
        assert!(dir.load().unwrap().is_empty());
    }
}
