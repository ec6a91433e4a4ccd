//! The supervision tree (drawn in `actors.md`):
//!
//! ```text
//! RelayerSupervisor (one_for_one, 5 restarts / 60 s, then the process exits 70)
//! ├── HealthActor          permanent
//! ├── RelaySupervisor (rest_for_one, 5 / 60 s, then escalates)
//! │   ├── WorkloadExecutor permanent
//! │   ├── CommandRouter    permanent   (routes to the executor)
//! │   └── ConnectionActor  permanent   (feeds the router)
//! ├── TelemetryIngest      permanent   (OTLP receivers → outbox)
//! ├── ClusterWatcher       permanent   (leader Lease, cluster events)
//! └── CredentialWriter     permanent   (rotated token → cluster Secret)
//! ```
//!
//! rest_for_one encodes the dependencies: a restarted executor restarts the
//! router and the connection after it, so nobody keeps routing to a dead
//! address; a restarted ConnectionActor touches nothing before it.

use std::sync::Arc;

use super::cluster_watcher::ClusterWatcher;
use super::command_router::CommandRouter;
use super::connection_actor::ConnectionActor;
use super::context::RelayContext;
use super::credential_writer::CredentialWriter;
use super::directory::{ExecutorInbox, HealthInbox, RouterInbox};
use super::health_actor::HealthActor;
use super::telemetry_ingest::TelemetryIngest;
use super::workload_executor::WorkloadExecutor;
use crate::supervisor::{ChildSpec, Restart, Strategy, SupervisorSpec};

/// Mailbox bounds. Sessions await each router delivery, so the router's
/// mailbox never holds more than a few batches; the executor's is bounded by
/// `commands.max_in_flight`, which the router enforces before sending.
const ROUTER_MAILBOX: usize = 64;
const CONNECTION_MAILBOX: usize = 16;
const HEALTH_MAILBOX: usize = 64;
const WATCHER_MAILBOX: usize = 16;
/// Rotations are rare; a few queued writes (rotation, rollback) at most.
const WRITER_MAILBOX: usize = 8;

pub fn relayer_tree(rc: &Arc<RelayContext>) -> SupervisorSpec {
    let executor_mailbox = rc.config.commands.max_in_flight as usize + 16;
    let relay = SupervisorSpec::new(
        "RelaySupervisor",
        Strategy::RestForOne,
        vec![
            {
                let (make, publish) = (rc.clone(), rc.clone());
                ChildSpec::actor(
                    "WorkloadExecutor",
                    Restart::Permanent,
                    executor_mailbox,
                    move |child, _| WorkloadExecutor::new(make.clone(), child),
                    move |addr, _| publish.directory.set_executor(ExecutorInbox::of(addr)),
                )
            },
            {
                let (make, publish) = (rc.clone(), rc.clone());
                ChildSpec::actor(
                    "CommandRouter",
                    Restart::Permanent,
                    ROUTER_MAILBOX,
                    move |child, _| CommandRouter::new(make.clone(), child),
                    move |addr, gauge| publish.directory.set_router(RouterInbox::of(addr, gauge)),
                )
            },
            {
                let (make, publish) = (rc.clone(), rc.clone());
                ChildSpec::actor(
                    "ConnectionActor",
                    Restart::Permanent,
                    CONNECTION_MAILBOX,
                    move |child, _| ConnectionActor::new(make.clone(), child),
                    move |addr, _| publish.directory.set_connection(addr.recipient()),
                )
            },
        ],
    );
    let (make, publish) = (rc.clone(), rc.clone());
    SupervisorSpec::new(
        "RelayerSupervisor",
        Strategy::OneForOne,
        vec![
            ChildSpec::actor(
                "HealthActor",
                Restart::Permanent,
                HEALTH_MAILBOX,
                move |child, _| HealthActor::new(make.clone(), child),
                move |addr, _| publish.directory.set_health(HealthInbox::of(addr)),
            ),
            relay.into_child(rc.board.clone()),
            {
                let make = rc.clone();
                ChildSpec::actor(
                    "TelemetryIngest",
                    Restart::Permanent,
                    WATCHER_MAILBOX,
                    move |child, _| TelemetryIngest::new(make.clone(), child),
                    |_, _| {},
                )
            },
            {
                let make = rc.clone();
                ChildSpec::actor(
                    "ClusterWatcher",
                    Restart::Permanent,
                    WATCHER_MAILBOX,
                    move |child, _| ClusterWatcher::new(make.clone(), child),
                    |_, _| {},
                )
            },
            {
                let (make, publish) = (rc.clone(), rc.clone());
                ChildSpec::actor(
                    "CredentialWriter",
                    Restart::Permanent,
                    WRITER_MAILBOX,
                    move |child, _| CredentialWriter::new(make.clone(), child),
                    move |addr, _| publish.directory.set_credential_writer(addr.recipient()),
                )
            },
        ],
    )
}
