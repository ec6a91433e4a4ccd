//! `ClusterWatcher`: cluster events for the backend, from one replica only.
//! It campaigns for the leader Lease (`kubernetes.leader_election`), and
//! while this replica leads it runs the watchers of `src/watch/` on objects
//! matching `kubernetes.watch_label_selector` and puts every `ClusterEvent`
//! into the outbox as a reliable frame. Leadership changes are published in
//! `RelayContext::leader` (`Hello.leader`) and told to the ConnectionActor,
//! which re-opens the stream so the backend sees the new `Hello.leader`.
//! On stop it releases the Lease, so another replica takes over at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, StreamHandler, WrapFuture,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::context::RelayContext;
use super::messages::LeadershipChanged;
use crate::proto::relayer_frame::Body;
use crate::supervisor::{ChildContext, Stop};
use crate::watch::{lease_name, LeaderElection};

/// Events waiting between the watchers and the outbox.
const EVENT_CHANNEL: usize = 256;
/// How often a cluster event waiting for replay-buffer room looks again.
const EVENT_ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// How often to look for the Kubernetes client while it is being built.
const CLIENT_POLL: Duration = Duration::from_millis(500);

pub struct ClusterWatcher {
    rc: Arc<RelayContext>,
    child: ChildContext,
    election: Option<LeaderElection>,
    watching: Option<CancellationToken>,
    lease: String,
    namespace: String,
    events_sent: Arc<std::sync::atomic::AtomicU64>,
}

impl ClusterWatcher {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        let cfg = &rc.config;
        let lease = lease_name(&cfg.credentials.secret_name, &cfg.cluster.name);
        let namespace = if !cfg.credentials.secret_namespace.is_empty() {
            cfg.credentials.secret_namespace.clone()
        } else {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| "default".into())
        };
        Self {
            rc,
            child,
            election: None,
            watching: None,
            lease,
            namespace,
            events_sent: Arc::default(),
        }
    }

    fn publish(&self) {
        let leader = self.rc.leader.load(Ordering::Relaxed);
        let state = match (&self.watching, leader) {
            _ if !self.rc.config.kubernetes.enabled => "Disabled",
            (Some(_), _) => "Watching",
            (None, true) => "Leader",
            (None, false) => "Standby",
        };
        self.child.set_state(state);
        self.child.set_details(json!({
            "leader": leader,
            "leader_election": self.rc.config.kubernetes.leader_election,
            "lease": format!("{}/{}", self.namespace, self.lease),
            "label_selector": self.rc.config.kubernetes.watch_label_selector,
            "events_sent": self.events_sent.load(Ordering::Relaxed),
        }));
    }

    fn begin(&mut self, ctx: &mut Context<Self>) {
        let Some(kube) = self.rc.kube.read().clone() else {
            ctx.run_later(CLIENT_POLL, |act, ctx| act.begin(ctx));
            return;
        };
        let client = kube.client().clone();
        if !self.rc.config.kubernetes.leader_election {
            self.set_leader(true, ctx);
            return;
        }
        let identity = format!(
            "{}-{}",
            self.rc.identity.instance_id,
            &self.rc.identity.incarnation[..8]
        );
        let (namespace, lease, duration) = (
            self.namespace.clone(),
            self.lease.clone(),
            self.rc.config.kubernetes.lease_duration,
        );
        let campaign = async move {
            LeaderElection::start(client, &namespace, &lease, &identity, duration).await
        };
        ctx.spawn(campaign.into_actor(self).map(|started, act, ctx| match started {
            Ok(election) => {
                ctx.add_stream(tokio_stream::wrappers::WatchStream::new(election.subscribe()));
                act.election = Some(election);
                act.child.set_error(None);
            }
            Err(err) => {
                tracing::error!(error = %err, "leader election could not start; retrying in 5 s");
                act.child.set_error(Some(err.to_string()));
                ctx.run_later(Duration::from_secs(5), |act, ctx| act.begin(ctx));
            }
        }));
    }

    fn set_leader(&mut self, leader: bool, _: &mut Context<Self>) {
        let was = self.rc.leader.swap(leader, Ordering::Relaxed);
        if leader && self.watching.is_none() {
            self.start_watching();
        } else if !leader {
            if let Some(stop) = self.watching.take() {
                stop.cancel();
            }
        }
        if was != leader {
            tracing::info!(leader, lease = %self.lease, "leadership changed");
            if let Some(connection) = self.rc.directory.connection() {
                connection.do_send(LeadershipChanged { leader });
            }
        }
        self.publish();
    }

    fn start_watching(&mut self) {
        let Some(kube) = self.rc.kube.read().clone() else {
            return;
        };
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(EVENT_CHANNEL);
        let selector = self.rc.config.kubernetes.watch_label_selector.clone();
        tokio::spawn(crate::watch::watchers::run(
            kube.client().clone(),
            selector,
            tx,
            stop.clone(),
        ));
        let (rc, sent) = (self.rc.clone(), self.events_sent.clone());
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                tracing::debug!(kind = %event.kind, "cluster event");
                // Events are never dropped, so they wait for room: with acks
                // withheld the bounded channel fills and the watch backs up,
                // instead of the replay buffer growing without bound.
                while !rc.outbox.has_room_for_result() {
                    tokio::time::sleep(EVENT_ROOM_POLL).await;
                }
                rc.outbox.push_result(Body::Event(event));
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
        self.watching = Some(stop);
    }
}

impl Actor for ClusterWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.publish();
        if self.rc.config.kubernetes.enabled {
            self.begin(ctx);
        }
    }
}

impl StreamHandler<bool> for ClusterWatcher {
    fn handle(&mut self, leader: bool, ctx: &mut Context<Self>) {
        self.set_leader(leader, ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Stop> for ClusterWatcher {
    type Result = ();

    /// Stops the watchers and releases the Lease before stopping.
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        if let Some(stop) = self.watching.take() {
            stop.cancel();
        }
        self.rc.leader.store(false, Ordering::Relaxed);
        match self.election.take() {
            Some(election) => {
                ctx.spawn(
                    election
                        .stop()
                        .into_actor(self)
                        .map(|(), _, ctx| ctx.stop()),
                );
            }
            None => ctx.stop(),
        }
    }
}

impl Drop for ClusterWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.watching.take() {
            stop.cancel();
        }
    }
}
