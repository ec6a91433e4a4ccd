//! `CredentialWriter`: writes a rotated cluster token back into the cluster
//! Secret, off the ConnectionActor's path. The ConnectionActor sends
//! `WriteBackToken` and reconnects with the new token when the write ends
//! (or after a bounded wait); writes run one at a time, in order, so a
//! rollback written after a rotation always lands last.
//!
//! A write that fails leaves the token in memory only: the actor warns, counts
//! it in `consonant_relayer_credentials_writeback_failures_total` and shows the
//! error in `/debug/actors`. It never stops the relayer.

use std::sync::Arc;

use actix::{Actor, ActorContext, ActorFutureExt, AtomicResponse, Context, Handler, WrapFuture};
use serde_json::json;

use super::context::RelayContext;
use super::messages::WriteBackToken;
use crate::credentials::writeback::{self, SecretTarget, WriteBackError};
use crate::credentials::Secret;
use crate::supervisor::{ChildContext, Stop};

pub struct CredentialWriter {
    rc: Arc<RelayContext>,
    child: ChildContext,
    writes: u64,
    failures: u64,
    last_error: Option<String>,
    target: Option<String>,
}

impl CredentialWriter {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        Self {
            rc,
            child,
            writes: 0,
            failures: 0,
            last_error: None,
            target: None,
        }
    }

    fn enabled(&self) -> bool {
        !self.rc.config.credentials.secret_name.is_empty()
    }

    fn publish(&self, state: &str) {
        self.child.set_state(state);
        self.child.set_error(self.last_error.clone());
        self.child.set_details(json!({
            "secret_name": self.rc.config.credentials.secret_name,
            "secret": self.target,
            "writes": self.writes,
            "failures": self.failures,
        }));
    }
}

impl Actor for CredentialWriter {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.publish(if self.enabled() { "Idle" } else { "Disabled" });
    }
}

/// The Kubernetes client the executor built, else a fresh one.
async fn client(rc: &RelayContext) -> Result<kube::Client, String> {
    if let Some(executor) = rc.kube.read().clone() {
        return Ok(executor.client().clone());
    }
    crate::kube::client::connect(&rc.config.kubernetes)
        .await
        .map_err(|err| err.to_string())
}

async fn write(
    rc: Arc<RelayContext>,
    token: Secret,
) -> Result<SecretTarget, (Option<SecretTarget>, WriteBackError)> {
    let secret_name = rc.config.credentials.secret_name.clone();
    let client = client(&rc).await.map_err(|detail| {
        (
            None,
            WriteBackError::Client {
                secret: secret_name,
                detail,
            },
        )
    })?;
    let target = writeback::target(&rc.config.credentials, &client).map_err(|err| (None, err))?;
    writeback::write_token(client, &target, &token)
        .await
        .map_err(|err| (Some(target.clone()), err))?;
    Ok(target)
}

impl Handler<WriteBackToken> for CredentialWriter {
    type Result = AtomicResponse<Self, Result<bool, String>>;

    fn handle(&mut self, msg: WriteBackToken, _: &mut Context<Self>) -> Self::Result {
        if !self.enabled() {
            tracing::warn!(reason = msg.reason.name(), "credentials.secret_name is empty: the rotated cluster token lives in memory only, and a restart falls back to the token in the files, which the backend refuses once the new one is used; set credentials.secret_name (the chart does)");
            return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(false))));
        }
        self.publish("Writing");
        let reason = msg.reason;
        let fut = write(self.rc.clone(), msg.token).into_actor(self).map(move |result, act, _| {
            match result {
                Ok(target) => {
                    act.writes += 1;
                    act.last_error = None;
                    act.target = Some(target.to_string());
                    act.rc.metrics.credentials_writebacks.inc();
                    tracing::info!(secret = %target, reason = reason.name(), "cluster token written to the Secret");
                    act.publish("Idle");
                    Ok(true)
                }
                Err((target, err)) => {
                    act.failures += 1;
                    act.target = target.map(|t| t.to_string());
                    act.rc.metrics.credentials_writeback_failures.inc();
                    let text = err.to_string();
                    tracing::warn!(error = %text, reason = reason.name(), "could not write the cluster token to its Secret; the relayer keeps it in memory, but a restart before the Secret is fixed uses the token in the files, which the backend refuses once the new one is in use");
                    act.last_error = Some(text.clone());
                    act.publish("Failed");
                    Err(text)
                }
            }
        });
        AtomicResponse::new(Box::pin(fut))
    }
}

impl Handler<Stop> for CredentialWriter {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
