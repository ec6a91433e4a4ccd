//! The status board: what every running actor and supervisor reports about
//! itself, read by the HealthActor for `/health`, `/metrics` and
//! `/debug/actors`. It lives outside the actors so a restart keeps the
//! restart count and last error visible. Nothing secret is ever written here.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

use crate::metrics::MailboxGauge;

#[derive(Debug, Clone, Serialize)]
pub struct MailboxView {
    pub len: usize,
    pub capacity: usize,
}

/// One actor as `/debug/actors` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ActorView {
    pub name: String,
    pub state: String,
    pub restarts: u64,
    pub mailbox: MailboxView,
    pub last_error: Option<String>,
    pub started_at: String,
    pub details: serde_json::Value,
    pub running: bool,
}

/// One supervisor as `/debug/actors` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorView {
    pub name: String,
    pub strategy: super::Strategy,
    pub max_restarts: u32,
    pub within_secs: u64,
    pub restarts_in_window: usize,
    pub children: Vec<String>,
    pub escalated: bool,
}

#[derive(Debug)]
struct ActorEntry {
    state: String,
    restarts: u64,
    mailbox: MailboxGauge,
    last_error: Option<String>,
    started_at: String,
    details: serde_json::Value,
    running: bool,
}

#[derive(Debug, Default)]
struct Board {
    actors: BTreeMap<String, ActorEntry>,
    supervisors: BTreeMap<String, SupervisorView>,
}

/// Shared handle to the board.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    inner: Arc<RwLock<Board>>,
}

impl StatusBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// A (re)started actor registers; keeps its restart count and last error.
    pub fn actor_started(&self, name: &str, mailbox: MailboxGauge) {
        let mut board = self.inner.write();
        let started_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let entry = board
            .actors
            .entry(name.to_string())
            .or_insert_with(|| ActorEntry {
                state: "Starting".to_string(),
                restarts: 0,
                mailbox: mailbox.clone(),
                last_error: None,
                started_at: started_at.clone(),
                details: serde_json::Value::Object(Default::default()),
                running: true,
            });
        entry.mailbox = mailbox;
        entry.started_at = started_at;
        entry.state = "Starting".to_string();
        entry.running = true;
    }

    pub fn actor_exited(&self, name: &str, error: Option<String>) {
        let mut board = self.inner.write();
        if let Some(entry) = board.actors.get_mut(name) {
            entry.running = false;
            entry.state = "Stopped".to_string();
            if error.is_some() {
                entry.last_error = error;
            }
        }
    }

    pub fn actor_restarted(&self, name: &str) {
        if let Some(entry) = self.inner.write().actors.get_mut(name) {
            entry.restarts += 1;
        }
    }

    pub fn set_state(&self, name: &str, state: &str) {
        if let Some(entry) = self.inner.write().actors.get_mut(name) {
            if entry.state != state {
                entry.state = state.to_string();
            }
        }
    }

    pub fn set_error(&self, name: &str, error: Option<String>) {
        if let Some(entry) = self.inner.write().actors.get_mut(name) {
            entry.last_error = error;
        }
    }

    pub fn set_details(&self, name: &str, details: serde_json::Value) {
        if let Some(entry) = self.inner.write().actors.get_mut(name) {
            entry.details = details;
        }
    }

    pub fn set_supervisor(&self, view: SupervisorView) {
        self.inner
            .write()
            .supervisors
            .insert(view.name.clone(), view);
    }

    pub fn actors(&self) -> Vec<ActorView> {
        self.inner
            .read()
            .actors
            .iter()
            .map(|(name, e)| ActorView {
                name: name.clone(),
                state: e.state.clone(),
                restarts: e.restarts,
                mailbox: MailboxView {
                    len: e.mailbox.len(),
                    capacity: e.mailbox.capacity(),
                },
                last_error: e.last_error.clone(),
                started_at: e.started_at.clone(),
                details: e.details.clone(),
                running: e.running,
            })
            .collect()
    }

    pub fn actor(&self, name: &str) -> Option<ActorView> {
        self.actors().into_iter().find(|a| a.name == name)
    }

    pub fn supervisors(&self) -> Vec<SupervisorView> {
        self.inner.read().supervisors.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_slots_count_until_dropped() {
        let gauge = MailboxGauge::new(8);
        let a = gauge.enter();
        let b = gauge.enter();
        assert_eq!(gauge.len(), 2);
        drop(a);
        drop(b);
        assert_eq!(gauge.len(), 0);
        assert_eq!(gauge.capacity(), 8);
    }

    #[test]
    fn restarts_and_errors_survive_re_registration() {
        let board = StatusBoard::new();
        board.actor_started("CommandRouter", MailboxGauge::new(4));
        board.actor_exited("CommandRouter", Some("panicked: boom".into()));
        board.actor_restarted("CommandRouter");
        board.actor_started("CommandRouter", MailboxGauge::new(4));
        let view = board.actor("CommandRouter").unwrap();
        assert_eq!(view.restarts, 1);
        assert_eq!(view.last_error.as_deref(), Some("panicked: boom"));
        assert!(view.running);
    }
}
