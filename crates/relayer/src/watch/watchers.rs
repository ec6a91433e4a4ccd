//! Runs the Kubernetes watches (Deployments, StatefulSets, Jobs, Pods and,
//! when installed, kagent.dev Agents) and feeds their objects through one
//! [`EventDetector`], sending the resulting `ClusterEvent`s on a channel.
//!
//! A thin shell: the decisions are in [`super::detect`].

use std::fmt::Debug;

use futures::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::detect::{EventDetector, Watched, WatchedKind, AGENT_API_VERSION, AGENT_KIND};
use crate::clock::now_unix_ms;
use crate::proto::ClusterEvent;

/// One item of the merged watch streams.
enum Observation {
    Applied(Watched),
    Deleted(Watched),
    RelistStarted(WatchedKind),
    RelistDone(WatchedKind),
    Failed(WatchedKind, watcher::Error),
}

/// Watches, cluster-wide and restricted to `label_selector`, the workloads
/// and Pods (and Agents when the `agents.kagent.dev` CRD exists at start) and
/// sends their events on `events`, waiting when the channel is full.
///
/// Runs until `stop` is cancelled or the receiver of `events` is dropped.
/// Watch errors are logged and the watch retried with kube's default
/// backoff; none is fatal. The label selector applies to every kind, so
/// Pods are seen only if their template carries the label too.
pub async fn run(
    client: Client,
    label_selector: String,
    events: mpsc::Sender<ClusterEvent>,
    stop: CancellationToken,
) {
    let config = watcher::Config::default().labels(&label_selector);
    let mut streams = vec![
        watch(
            Api::<Deployment>::all(client.clone()),
            &config,
            WatchedKind::Deployment,
            Watched::Deployment,
        ),
        watch(
            Api::<StatefulSet>::all(client.clone()),
            &config,
            WatchedKind::StatefulSet,
            Watched::StatefulSet,
        ),
        watch(
            Api::<Job>::all(client.clone()),
            &config,
            WatchedKind::Job,
            Watched::Job,
        ),
        watch(
            Api::<Pod>::all(client.clone()),
            &config,
            WatchedKind::Pod,
            Watched::Pod,
        ),
    ];
    let agent = GroupVersionKind::gvk("kagent.dev", "v1alpha2", AGENT_KIND);
    let discovered = tokio::select! {
        biased;
        () = stop.cancelled() => return,
        found = kube::discovery::pinned_kind(&client, &agent) => found,
    };
    match discovered {
        Ok((resource, _)) => {
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            streams.push(watch(api, &config, WatchedKind::Agent, Watched::Agent));
        }
        Err(error) => tracing::info!(
            %error,
            "{AGENT_API_VERSION} {AGENT_KIND} is not served (CRD agents.kagent.dev missing?): Agents are not watched until the next start"
        ),
    }
    tracing::info!(selector = %label_selector, watches = streams.len(), "watching workloads for cluster events");

    let mut merged = stream::select_all(streams);
    let mut detector = EventDetector::new();
    loop {
        let observation = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            next = merged.next() => match next {
                Some(observation) => observation,
                None => return,
            },
        };
        let out = match observation {
            Observation::Applied(obj) => detector.applied(&obj, now_unix_ms()),
            Observation::Deleted(obj) => {
                detector.deleted(&obj);
                continue;
            }
            Observation::RelistStarted(kind) => {
                detector.relist_started(kind);
                continue;
            }
            Observation::RelistDone(kind) => {
                detector.relist_done(kind);
                tracing::debug!(
                    ?kind,
                    remembered = detector.len(),
                    evicted = detector.evicted(),
                    "watch listed"
                );
                continue;
            }
            Observation::Failed(kind, error) => {
                // The backoff below the stream spaces these out.
                tracing::warn!(?kind, %error, "watch failed; retrying with backoff");
                continue;
            }
        };
        for event in out {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                sent = events.send(event) => if sent.is_err() {
                    tracing::debug!("cluster event receiver dropped; stopping watches");
                    return;
                },
            }
        }
    }
}

/// One kind's watch as a stream of [`Observation`]s.
fn watch<K>(
    api: Api<K>,
    config: &watcher::Config,
    kind: WatchedKind,
    wrap: fn(K) -> Watched,
) -> BoxStream<'static, Observation>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(api, config.clone())
        .default_backoff()
        .map(move |item| match item {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => Observation::Applied(wrap(obj)),
            Ok(Event::Delete(obj)) => Observation::Deleted(wrap(obj)),
            Ok(Event::Init) => Observation::RelistStarted(kind),
            Ok(Event::InitDone) => Observation::RelistDone(kind),
            Err(error) => Observation::Failed(kind, error),
        })
        .boxed()
}
