//! The cluster events each cluster's relayer sent, newest last, bounded
//! (the oldest are dropped first).

use std::collections::VecDeque;

use super::registry::ClusterError;
use super::DevBackendState;
use consonant_proto as proto;

#[derive(Debug)]
pub(crate) struct EventLog {
    events: VecDeque<proto::ClusterEvent>,
    capacity: usize,
}

impl EventLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn push(&mut self, event: proto::ClusterEvent) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The last `limit` events, newest last.
    fn last(&self, limit: usize) -> Vec<proto::ClusterEvent> {
        let skip = self.events.len().saturating_sub(limit);
        self.events.iter().skip(skip).cloned().collect()
    }
}

impl DevBackendState {
    /// The last `limit` cluster events, newest last.
    pub fn events(
        &self,
        cluster_id: &str,
        limit: usize,
    ) -> Result<Vec<proto::ClusterEvent>, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let events = cluster.inner.lock().events.last(limit);
        Ok(events)
    }
}
