//! The frame journal: every reliable frame the backend keeps (after dedup on
//! `(incarnation, seq)`) appended as one JSON line to a file *before* it is
//! acked, as a durable backend stores what it acks. In process only
//! ([`crate::DevBackendOptions::frame_journal`]): the fault tests SIGKILL
//! the backend and still need to know everything it had acked, which the
//! in-memory state loses with the process but the file (in the kernel's
//! page cache once written) keeps.
//!
//! Each line is written with one `write` call on an `O_APPEND` file, so a
//! line is whole even if the process dies right after; the journal is not
//! fsynced (a killed process is the fault here, not a lost machine).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use parking_lot::Mutex;
use serde::Serialize;

use super::FrameRecord;

/// One journal line: the frame as the debug log records it (`/frames`),
/// and for telemetry the spans in its OTLP (when it decoded).
#[derive(Serialize)]
struct JournalEntry<'a> {
    #[serde(flatten)]
    frame: &'a FrameRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    spans: Option<u64>,
}

/// An append-only journal file.
#[derive(Debug)]
pub(crate) struct FrameJournal {
    file: Mutex<File>,
}

impl FrameJournal {
    /// Opens (creating) `path` for appending.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends one entry. A failed write is logged, not fatal: the journal
    /// is a test aid, and a test reading it finds the entry missing.
    pub(crate) fn append(&self, frame: &FrameRecord, spans: Option<u64>) {
        let entry = JournalEntry { frame, spans };
        let mut line = serde_json::to_vec(&entry).expect("a journal entry serializes");
        line.push(b'\n');
        if let Err(err) = self.file.lock().write_all(&line) {
            tracing::error!(%err, "frame journal write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::FrameKind;
    use super::*;

    #[test]
    fn appends_one_json_line_per_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let frame = |incarnation: &str, seq, kind, command_id: Option<&str>, status| FrameRecord {
            incarnation: incarnation.into(),
            seq,
            kind,
            command_id: command_id.map(Into::into),
            status,
            retryable: false,
        };
        let journal = FrameJournal::open(&path).unwrap();
        journal.append(
            &frame("i-1", 1, FrameKind::Result, Some("c-1"), Some("SUCCEEDED")),
            None,
        );
        journal.append(&frame("i-1", 2, FrameKind::Telemetry, None, None), Some(10));
        // Reopened (as after a restart), it appends.
        FrameJournal::open(&path)
            .unwrap()
            .append(&frame("i-2", 1, FrameKind::Event, None, None), None);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                serde_json::json!({"incarnation": "i-1", "seq": 1, "kind": "result", "command_id": "c-1", "status": "SUCCEEDED"}),
                serde_json::json!({"incarnation": "i-1", "seq": 2, "kind": "telemetry", "spans": 10}),
                serde_json::json!({"incarnation": "i-2", "seq": 1, "kind": "event"}),
            ]
        );
    }
}
