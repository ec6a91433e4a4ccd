//! Cluster events: watches workloads and Pods, detects readiness changes and
//! failures, and elects the one replica (by Lease) that reports them.
//!
//! - [`detect`]: pure state machine, observed objects in, `ClusterEvent`s out.
//! - [`watchers`]: the kube watch streams feeding the detector (I/O).
//! - [`leader`]: leader election on a coordination.k8s.io Lease (I/O).

pub mod detect;
pub mod leader;
pub mod watchers;

pub use detect::EventDetector;
pub use leader::{lease_name, LeaderElection, LeaderError};
