//! `CredentialStore`: the cluster id and token read from their mounted
//! files, plus the in-memory token a `RotateCredentials` command installs.
//! Shared behind an `Arc` and outliving actor restarts, so a restarted
//! connection picks up the last good credentials without re-reading disk.
//!
//! Kubernetes updates a mounted Secret by writing a fresh `..<timestamp>`
//! directory and atomically swapping the `..data` symlink, so the watcher
//! watches the *directory* holding the files; a watch on the file itself
//! would stay on the old inode and miss every update.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use parking_lot::Mutex;

use crate::config::CredentialsConfig;
use consonant_secret::Secret;

/// The cluster's identity as the backend knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub cluster_id: String,
    pub token: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{what} {} is missing: {hint}", .path.display())]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },

    #[error("{what} {} is empty: {hint}", .path.display())]
    Empty {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },

    #[error("cannot read {what} {}: {source}; check the file's permissions and that it holds UTF-8 text", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot watch {} for credential updates: {source}; check that the directory exists and inotify limits (fs.inotify.max_user_watches)", .path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Keeps the file watch alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: RecommendedWatcher,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchHandle")
    }
}

#[derive(Debug)]
pub struct CredentialStore {
    id_file: PathBuf,
    token_file: PathBuf,
    /// What a user should do when a file is missing or empty.
    hint: String,
    state: Mutex<State>,
}

/// How many superseded tokens are remembered (see `State::stale`).
const STALE_TOKENS: usize = 8;

#[derive(Debug, Default)]
struct State {
    /// Last good content of the files.
    on_disk: Option<Credentials>,
    /// Token from `RotateCredentials` (or the one rolled back to); wins
    /// over the files' token until the files show it, or show a token this
    /// store never had (an operator replaced the Secret).
    override_token: Option<Secret>,
    /// A rotation no session has confirmed yet: `(new, previous)`.
    pending: Option<(Secret, Secret)>,
    /// Tokens rotated away from (or refused after a rotation). Files that
    /// show one of them are behind the Secret write-back (kubelet syncs a
    /// mounted Secret late), not newer: they never replace the override.
    stale: std::collections::VecDeque<Secret>,
    generation: u64,
}

impl State {
    fn effective(&self) -> Option<Credentials> {
        let disk = self.on_disk.as_ref()?;
        Some(Credentials {
            cluster_id: disk.cluster_id.clone(),
            token: self
                .override_token
                .clone()
                .unwrap_or_else(|| disk.token.clone()),
        })
    }

    fn mark_stale(&mut self, token: &Secret) {
        if !self.stale.contains(token) {
            if self.stale.len() == STALE_TOKENS {
                self.stale.pop_front();
            }
            self.stale.push_back(token.clone());
        }
    }

    fn unmark_stale(&mut self, token: &Secret) {
        self.stale.retain(|t| t != token);
    }

    /// Runs `change` and bumps the generation if the effective credentials
    /// changed.
    fn changing(&mut self, change: impl FnOnce(&mut Self)) {
        let before = self.effective();
        change(self);
        if self.effective() != before {
            self.generation += 1;
        }
    }
}

impl CredentialStore {
    pub fn new(cfg: &CredentialsConfig) -> Self {
        let secret = if cfg.secret_name.is_empty() {
            "holding clusterId and clusterToken (the chart names it <release>-cluster)".to_string()
        } else {
            cfg.secret_name.clone()
        };
        Self {
            id_file: cfg.cluster_id_file.clone(),
            token_file: cfg.cluster_token_file.clone(),
            hint: format!("run `consonant-relayer register` or mount the Secret {secret}"),
            state: Mutex::new(State::default()),
        }
    }

    /// Re-reads both files and returns the effective credentials: the files'
    /// id with the rotated token if one is set and the files have not changed
    /// since. On error the last good credentials stay in place.
    pub fn load(&self) -> Result<Credentials, CredentialsError> {
        let (fresh, _) = self.reload()?;
        Ok(fresh)
    }

    /// The last good effective credentials, without touching disk.
    pub fn current(&self) -> Option<Credentials> {
        self.state.lock().effective()
    }

    /// Installs the token a `RotateCredentials` command delivered; it wins
    /// over the files until they show it (the Secret write-back reaching the
    /// mount) or show a token this store never had (an operator replacing
    /// the Secret). The token it replaces is kept for [`Self::rollback_rotation`]
    /// until a session confirms the new one.
    pub fn set_rotated_token(&self, token: Secret) {
        self.state.lock().changing(|state| {
            let previous = state.effective().map(|c| c.token);
            if previous.as_ref() == Some(&token) {
                return;
            }
            if let Some(previous) = previous {
                state.mark_stale(&previous);
                state.pending = Some((token.clone(), previous));
            }
            state.unmark_stale(&token);
            state.override_token = Some(token);
        });
    }

    /// A session was welcomed with `token`: if it is the rotated one, the
    /// rotation is done and there is nothing to fall back to any more.
    /// Returns true when this confirmed a rotation.
    pub fn confirm_rotation(&self, token: &Secret) -> bool {
        let mut state = self.state.lock();
        if state.pending.as_ref().is_some_and(|(new, _)| new == token) {
            state.pending = None;
            return true;
        }
        false
    }

    /// The backend refused `refused`: if that is a rotated token no session
    /// confirmed, falls back to the token it replaced and returns it (so the
    /// Secret can be written back too). `None` when there was no such
    /// rotation.
    pub fn rollback_rotation(&self, refused: &Secret) -> Option<Secret> {
        let mut state = self.state.lock();
        if !state
            .pending
            .as_ref()
            .is_some_and(|(new, _)| new == refused)
        {
            return None;
        }
        let (new, previous) = state.pending.take()?;
        state.changing(|state| {
            state.mark_stale(&new);
            state.unmark_stale(&previous);
            let disk_token = state.on_disk.as_ref().map(|d| &d.token);
            state.override_token = (disk_token != Some(&previous)).then(|| previous.clone());
        });
        Some(previous)
    }

    /// True while a rotated token waits for a session to confirm it.
    pub fn rotation_pending(&self) -> bool {
        self.state.lock().pending.is_some()
    }

    /// Bumped whenever the effective credentials change; 0 = never loaded.
    pub fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    /// Watches the directories holding the files and reloads on any change
    /// in them. A failed reload (a file briefly missing mid-update) keeps the
    /// last good credentials and logs a warning.
    pub fn watch(self: &Arc<Self>) -> Result<WatchHandle, CredentialsError> {
        let store: Weak<Self> = Arc::downgrade(self);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Some(store) = store.upgrade() else { return };
            match event {
                // Access events (our own reads) would make us reload forever.
                Ok(event) if event.kind.is_access() => {}
                Ok(_) => store.reload_logged(),
                Err(err) => {
                    tracing::warn!(error = %err, "credentials watch error; reloading to be safe");
                    store.reload_logged();
                }
            }
        })
        .map_err(|source| CredentialsError::Watch {
            path: parent(&self.token_file),
            source,
        })?;

        let dirs: BTreeSet<PathBuf> = [parent(&self.id_file), parent(&self.token_file)].into();
        for dir in dirs {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| CredentialsError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(WatchHandle { _watcher: watcher })
    }

    fn reload_logged(&self) {
        match self.reload() {
            Ok((fresh, true)) => tracing::info!(
                cluster_id = %fresh.cluster_id,
                generation = self.generation(),
                "credentials changed on disk"
            ),
            Ok((_, false)) => {}
            Err(err) => tracing::warn!(
                error = %err,
                "credentials reload failed; keeping the last good credentials"
            ),
        }
    }

    /// Returns the effective credentials and whether the files' content
    /// changed.
    fn reload(&self) -> Result<(Credentials, bool), CredentialsError> {
        let cluster_id = self.read("cluster id file", &self.id_file)?;
        let token = Secret::new(self.read("cluster token file", &self.token_file)?);
        let disk = Credentials { cluster_id, token };

        let mut state = self.state.lock();
        let changed = state.on_disk.as_ref() != Some(&disk);
        if changed {
            state.changing(|state| {
                let current = state.effective().map(|c| c.token);
                match &state.override_token {
                    _ if state.stale.contains(&disk.token)
                        && current.as_ref().is_some_and(|t| *t != disk.token) =>
                    {
                        tracing::debug!("the credential files show a superseded token (the mounted Secret lags the write-back); keeping the current token");
                        state.override_token = current;
                    }
                    Some(token) if *token == disk.token => state.override_token = None,
                    Some(_) => {
                        state.override_token = None;
                        state.pending = None;
                    }
                    None => {}
                }
                state.on_disk = Some(disk.clone());
            });
        }
        let token = state.override_token.clone().unwrap_or(disk.token);
        Ok((
            Credentials {
                cluster_id: disk.cluster_id,
                token,
            },
            changed,
        ))
    }

    fn read(&self, what: &'static str, path: &Path) -> Result<String, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                CredentialsError::Missing {
                    what,
                    path: path.to_path_buf(),
                    hint: self.hint.clone(),
                }
            } else {
                CredentialsError::Read {
                    what,
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(CredentialsError::Empty {
                what,
                path: path.to_path_buf(),
                hint: self.hint.clone(),
            });
        }
        Ok(trimmed.to_string())
    }
}

fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::{Duration, Instant};

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        store: Arc<CredentialStore>,
    }

    fn fixture(id: Option<&str>, token: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(id) = id {
            fs::write(dir.path().join("clusterId"), id).expect("write id");
        }
        if let Some(token) = token {
            fs::write(dir.path().join("clusterToken"), token).expect("write token");
        }
        let store = Arc::new(CredentialStore::new(&config_for(dir.path())));
        Fixture { dir, store }
    }

    fn config_for(dir: &Path) -> CredentialsConfig {
        CredentialsConfig {
            cluster_id_file: dir.join("clusterId"),
            cluster_token_file: dir.join("clusterToken"),
            secret_name: "relayer-cluster".into(),
            ..CredentialsConfig::default()
        }
    }

    /// `Ok((id, token))` or `Err(needles)` the message must contain
    /// (`{dir}` is replaced by the temp dir).
    fn check(id: Option<&str>, token: Option<&str>, expected: Result<(&str, &str), &[&str]>) {
        let f = fixture(id, token);
        match (f.store.load(), expected) {
            (Ok(creds), Ok((id, token))) => {
                assert_eq!(
                    (creds.cluster_id.as_str(), creds.token.expose()),
                    (id, token)
                );
                assert_eq!(f.store.current(), Some(creds));
            }
            (Err(err), Err(needles)) => {
                let text = err.to_string();
                for needle in needles {
                    let needle = needle.replace("{dir}", &f.dir.path().display().to_string());
                    assert!(text.contains(&needle), "{text:?} lacks {needle:?}");
                }
                assert_eq!(f.store.current(), None);
            }
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn load_trims_whitespace() {
        check(
            Some(" c-123\n"),
            Some("tok-abc\r\n\n"),
            Ok(("c-123", "tok-abc")),
        );
    }

    #[test]
    fn missing_or_empty_files_name_the_path_and_the_fix() {
        check(
            Some("c-1"),
            None,
            Err(&[
                "cluster token file {dir}/clusterToken is missing",
                "consonant-relayer register",
                "relayer-cluster",
            ]),
        );
        check(
            None,
            Some("t"),
            Err(&["cluster id file {dir}/clusterId is missing"]),
        );
        check(
            Some("c-1"),
            Some(" \n"),
            Err(&["cluster token file {dir}/clusterToken is empty"]),
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let f = fixture(Some("c-1"), Some("hunter2"));
        let creds = f.store.load().expect("load");
        assert!(!format!("{creds:?} {:?}", f.store).contains("hunter2"));
    }

    fn token(store: &CredentialStore) -> String {
        store.current().expect("current").token.expose().to_string()
    }

    #[test]
    fn rotated_token_wins_until_the_files_change() {
        let f = fixture(Some("c-1"), Some("old"));
        f.store.load().expect("load");
        assert_eq!(f.store.generation(), 1);

        f.store.set_rotated_token(Secret::new("rotated"));
        assert_eq!(f.store.generation(), 2);
        assert_eq!(f.store.load().expect("load").token.expose(), "rotated");
        assert_eq!(f.store.generation(), 2, "unchanged files keep the override");

        assert_eq!(f.store.rollback_rotation(&Secret::new("other")), None);
        assert_eq!(
            f.store.rollback_rotation(&Secret::new("rotated")),
            Some(Secret::new("old"))
        );
        assert_eq!(token(&f.store), "old");
        assert_eq!(f.store.generation(), 3);

        f.store.set_rotated_token(Secret::new("rotated-2"));
        fs::write(f.dir.path().join("clusterToken"), "new-from-disk").expect("write");
        assert_eq!(
            f.store.load().expect("load").token.expose(),
            "new-from-disk",
            "a token this store never had replaces the override"
        );
        assert!(!f.store.rotation_pending());
        assert_eq!(f.store.generation(), 5);
    }

    #[test]
    fn the_write_back_reaching_the_mount_changes_nothing() {
        let f = fixture(Some("c-1"), Some("old"));
        f.store.load().expect("load");
        f.store.set_rotated_token(Secret::new("new"));
        assert!(f.store.confirm_rotation(&Secret::new("new")));
        let generation = f.store.generation();
        fs::write(f.dir.path().join("clusterToken"), "new\n").expect("write");
        assert_eq!(f.store.load().expect("load").token.expose(), "new");
        assert_eq!(
            f.store.generation(),
            generation,
            "no flap, no new generation"
        );
    }

    #[test]
    fn a_lagging_mount_never_brings_back_a_superseded_token() {
        let f = fixture(Some("c-1"), Some("t1"));
        f.store.load().expect("load");
        f.store.set_rotated_token(Secret::new("t2"));
        f.store.confirm_rotation(&Secret::new("t2"));
        f.store.set_rotated_token(Secret::new("t3"));
        f.store.confirm_rotation(&Secret::new("t3"));
        // kubelet syncs the first write-back (t2) after the second rotation.
        fs::write(f.dir.path().join("clusterToken"), "t2").expect("write");
        assert_eq!(f.store.load().expect("load").token.expose(), "t3");
        fs::write(f.dir.path().join("clusterToken"), "t3").expect("write");
        assert_eq!(f.store.load().expect("load").token.expose(), "t3");
        fs::write(f.dir.path().join("clusterToken"), "t1").expect("write");
        assert_eq!(
            f.store.load().expect("load").token.expose(),
            "t3",
            "t1 is stale too"
        );
    }

    #[test]
    fn a_refused_rotation_falls_back_even_after_the_mount_caught_up() {
        let f = fixture(Some("c-1"), Some("old"));
        f.store.load().expect("load");
        f.store.set_rotated_token(Secret::new("new"));
        fs::write(f.dir.path().join("clusterToken"), "new").expect("write");
        assert_eq!(f.store.load().expect("load").token.expose(), "new");
        assert_eq!(
            f.store.rollback_rotation(&Secret::new("new")),
            Some(Secret::new("old"))
        );
        assert_eq!(f.store.load().expect("load").token.expose(), "old");
        // Once the old token is written back and mounted, the files agree.
        fs::write(f.dir.path().join("clusterToken"), "old").expect("write");
        assert_eq!(f.store.load().expect("load").token.expose(), "old");
        assert!(!f.store.confirm_rotation(&Secret::new("new")));
    }

    #[test]
    fn failed_reload_keeps_the_last_good_credentials() {
        let f = fixture(Some("c-1"), Some("good"));
        f.store.load().expect("load");
        fs::remove_file(f.dir.path().join("clusterToken")).expect("remove");
        assert!(f.store.load().is_err());
        assert_eq!(f.store.current().expect("current").token.expose(), "good");
    }

    /// Lays out a mounted Secret as kubelet does: `..<ts>/` holds the data,
    /// `..data` points at it, and each key is a symlink through `..data`.
    fn kubelet_write(dir: &Path, ts: &str, token: &str) {
        let data = dir.join(ts);
        fs::create_dir(&data).expect("data dir");
        fs::write(data.join("clusterId"), "c-1\n").expect("id");
        fs::write(data.join("clusterToken"), token).expect("token");
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(ts, &tmp).expect("symlink");
        fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    }

    #[test]
    fn watch_sees_a_kubernetes_symlink_swap() {
        let dir = tempfile::tempdir().expect("temp dir");
        kubelet_write(dir.path(), "..2026_01", "first");
        for key in ["clusterId", "clusterToken"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key))
                .expect("key symlink");
        }
        let store = Arc::new(CredentialStore::new(&config_for(dir.path())));
        assert_eq!(store.load().expect("load").token.expose(), "first");
        let _watch = store.watch().expect("watch");
        store.set_rotated_token(Secret::new("rotated"));

        kubelet_write(dir.path(), "..2026_02", "second\n");

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let token = store.current().map(|c| c.token.expose().to_string());
            if token.as_deref() == Some("second") {
                break;
            }
            assert!(Instant::now() < deadline, "store still has {token:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
