//! The `Supervisor` actor: starts its children in order, watches each
//! child's task, restarts per restart type and strategy with a jittered
//! delay, and escalates when the restart intensity is exceeded — to its own
//! supervisor, or at the root to `on_escalate` (which ends the process with a
//! non-zero code so Kubernetes restarts the pod).
//!
//! actix's own `Supervisor` restarts a stopped actor instantly and without
//! limit and never restarts after a panic; this one treats a panic as a
//! failure and bounds restarts.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};

use super::board::{StatusBoard, SupervisorView};
use super::child::{spawn_actor, ChildContext, ChildSpec, ExitReporter, RunningChild, Stop};
use super::policy::{
    restart_set, should_restart, Exit, Intensity, IntensityTracker, Restart, Strategy,
};
use crate::backoff::Backoff;
use crate::metrics::MailboxGauge;

/// Called at the root when it gives up; gets the reason.
pub type Escalation = Rc<dyn Fn(&str)>;

/// What a supervisor supervises and how.
#[derive(Clone)]
pub struct SupervisorSpec {
    pub name: String,
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub children: Vec<ChildSpec>,
    /// Delay before a restart: jittered, doubling with recent restarts.
    pub restart_delay_base: Duration,
    pub restart_delay_max: Duration,
}

impl SupervisorSpec {
    pub fn new(name: &str, strategy: Strategy, children: Vec<ChildSpec>) -> Self {
        Self {
            name: name.to_string(),
            strategy,
            intensity: Intensity::default(),
            children,
            restart_delay_base: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(5),
        }
    }

    pub fn with_intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// This supervisor as a child of another (always permanent: its own
    /// intensity decides when it gives up).
    pub fn into_child(self, board: StatusBoard) -> ChildSpec {
        let name = self.name.clone();
        let factory = move |child: ChildContext| {
            let gauge = MailboxGauge::new(16);
            board.actor_started(&child.name, gauge);
            let supervisor = Supervisor::new(
                self.clone(),
                board.clone(),
                Escalate::Parent(child.exit.clone()),
            );
            let (_, running) = spawn_actor(supervisor, 16, child.exit);
            running
        };
        ChildSpec {
            name,
            restart: Restart::Permanent,
            factory: Rc::new(factory),
        }
    }
}

/// Where a supervisor's give-up goes.
#[derive(Clone)]
pub enum Escalate {
    Parent(ExitReporter),
    Root(Escalation),
}

struct Slot {
    spec: ChildSpec,
    generation: u64,
    running: Option<RunningChild>,
}

pub struct Supervisor {
    spec: SupervisorSpec,
    board: StatusBoard,
    escalate: Escalate,
    slots: Vec<Slot>,
    tracker: IntensityTracker,
    delay: Backoff,
    stopping: bool,
    escalated: bool,
}

impl Supervisor {
    pub fn new(spec: SupervisorSpec, board: StatusBoard, escalate: Escalate) -> Self {
        let tracker = IntensityTracker::new(spec.intensity);
        let delay = Backoff::new(spec.restart_delay_base, spec.restart_delay_max);
        let slots = spec
            .children
            .iter()
            .cloned()
            .map(|spec| Slot {
                spec,
                generation: 0,
                running: None,
            })
            .collect();
        Self {
            spec,
            board,
            escalate,
            slots,
            tracker,
            delay,
            stopping: false,
            escalated: false,
        }
    }

    /// Starts the root of a tree on the current arbiter.
    pub fn start_root(
        spec: SupervisorSpec,
        board: StatusBoard,
        on_escalate: Escalation,
    ) -> actix::Addr<Supervisor> {
        let (addr, running) = spawn_actor(
            Supervisor::new(spec, board, Escalate::Root(on_escalate)),
            16,
            ExitReporter::default(),
        );
        // The root's task is not watched: the root reports through `on_escalate`.
        drop(running);
        addr
    }

    fn publish(&self) {
        self.board.set_supervisor(SupervisorView {
            name: self.spec.name.clone(),
            strategy: self.spec.strategy,
            max_restarts: self.spec.intensity.max_restarts,
            within_secs: self.spec.intensity.within.as_secs(),
            restarts_in_window: self.tracker.recent(),
            children: self.slots.iter().map(|s| s.spec.name.clone()).collect(),
            escalated: self.escalated,
        });
        self.board.set_state(
            &self.spec.name,
            if self.escalated {
                "Escalated"
            } else {
                "Supervising"
            },
        );
    }

    fn start_child(&mut self, index: usize, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let slot = &mut self.slots[index];
        slot.generation += 1;
        let generation = slot.generation;
        let child_ctx = ChildContext {
            name: slot.spec.name.clone(),
            board: self.board.clone(),
            exit: ExitReporter::default(),
        };
        let mut running = (slot.spec.factory)(child_ctx);
        let Some(join) = running.join.take() else {
            return;
        };
        let exit = running.exit.clone();
        slot.running = Some(running);
        tracing::debug!(supervisor = %self.spec.name, child = %slot.spec.name, generation, "child started");
        ctx.spawn(join.into_actor(self).map(move |outcome, act, ctx| {
            let exit = RunningChild::classify(outcome, &exit);
            act.child_exited(index, generation, exit, ctx);
        }));
    }

    fn child_exited(&mut self, index: usize, generation: u64, exit: Exit, ctx: &mut Context<Self>) {
        let slot = &mut self.slots[index];
        let name = slot.spec.name.clone();
        let error = match &exit {
            Exit::Failed(reason) => Some(reason.clone()),
            Exit::Normal => None,
        };
        if slot.generation != generation {
            return; // an older incarnation we already replaced
        }
        slot.running = None;
        self.board.actor_exited(&name, error.clone());
        if self.stopping {
            self.stop_if_done(ctx);
            return;
        }
        match &exit {
            Exit::Failed(reason) => {
                tracing::error!(supervisor = %self.spec.name, child = %name, %reason, "child failed")
            }
            Exit::Normal => {
                tracing::info!(supervisor = %self.spec.name, child = %name, "child stopped")
            }
        }
        if !should_restart(slot.spec.restart, &exit) {
            self.publish();
            return;
        }
        if !self.tracker.record(Instant::now()) {
            let reason = format!(
                "{}: more than {} restarts in {:?} (last: {} {})",
                self.spec.name,
                self.spec.intensity.max_restarts,
                self.spec.intensity.within,
                name,
                error.as_deref().unwrap_or("stopped")
            );
            self.give_up(reason, ctx);
            return;
        }
        let set = restart_set(self.spec.strategy, index, self.slots.len());
        for &later in set.iter().skip(1) {
            let slot = &mut self.slots[later];
            slot.generation += 1; // its exit is expected now, not a failure
                                  // Aborted, not asked: the new instance must not overlap the old one.
            if let Some(running) = slot.running.take() {
                running.abort.abort();
                self.board.actor_exited(&slot.spec.name, None);
            }
        }
        // The delay doubles with each restart still inside the intensity window.
        self.delay.reset();
        for _ in 1..self.tracker.recent() {
            self.delay.next_delay();
        }
        let delay = self.delay.next_delay().max(Duration::from_millis(10));
        tracing::warn!(supervisor = %self.spec.name, children = ?set.iter().map(|i| self.slots[*i].spec.name.clone()).collect::<Vec<_>>(), delay_ms = delay.as_millis() as u64, "restarting");
        ctx.run_later(delay, move |act, ctx| {
            for i in set {
                act.board.actor_restarted(&act.slots[i].spec.name);
                act.start_child(i, ctx);
            }
            act.publish();
        });
        self.publish();
    }

    fn give_up(&mut self, reason: String, ctx: &mut Context<Self>) {
        tracing::error!(supervisor = %self.spec.name, %reason, "restart intensity exceeded; escalating");
        self.escalated = true;
        self.publish();
        self.stopping = true;
        self.stop_children();
        match &self.escalate {
            Escalate::Parent(exit) => exit.fail(reason),
            Escalate::Root(on_escalate) => on_escalate(&reason),
        }
        self.stop_if_done(ctx);
    }

    fn stop_children(&mut self) {
        for slot in self.slots.iter_mut().rev() {
            if let Some(running) = &slot.running {
                (running.stop)();
            }
        }
    }

    fn stop_if_done(&mut self, ctx: &mut Context<Self>) {
        if self.slots.iter().all(|s| s.running.is_none()) {
            actix::ActorContext::stop(ctx);
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for index in 0..self.slots.len() {
            self.start_child(index, ctx);
        }
        self.publish();
    }
}

impl Handler<Stop> for Supervisor {
    type Result = ();

    /// Stops children last-started first, then itself; a child that does not
    /// stop within 10 s is aborted.
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.stop_children();
        self.stop_if_done(ctx);
        ctx.run_later(Duration::from_secs(10), |act, ctx| {
            for slot in act.slots.iter_mut() {
                if let Some(running) = slot.running.take() {
                    tracing::warn!(child = %slot.spec.name, "child did not stop in 10 s; aborting it");
                    running.abort.abort();
                }
            }
            actix::ActorContext::stop(ctx);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::child::Stop;
    use actix::{ActorContext, Addr, Message};
    use parking_lot::Mutex;
    use std::sync::Arc;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Boom;

    /// A child that records its starts, and panics on `Boom`.
    struct Probe {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
        fn started(&mut self, _: &mut Context<Self>) {
            self.log.lock().push(format!("start {}", self.name));
        }
    }

    impl Handler<Boom> for Probe {
        type Result = ();
        fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
            panic!("boom in {}", self.name);
        }
    }

    impl Handler<Stop> for Probe {
        type Result = ();
        fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
            self.log.lock().push(format!("stop {}", self.name));
            ctx.stop();
        }
    }

    type Addrs = Arc<Mutex<Vec<(&'static str, Addr<Probe>)>>>;

    fn probe(name: &'static str, log: &Arc<Mutex<Vec<String>>>, addrs: &Addrs) -> ChildSpec {
        let log = log.clone();
        let addrs = addrs.clone();
        ChildSpec::actor(
            name,
            Restart::Permanent,
            8,
            move |_, _| Probe {
                name,
                log: log.clone(),
            },
            move |addr, _| addrs.lock().push((name, addr)),
        )
    }

    fn latest(addrs: &Addrs, name: &str) -> Addr<Probe> {
        addrs
            .lock()
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .clone()
    }

    async fn settle() {
        for _ in 0..20 {
            actix_rt::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn spec(strategy: Strategy, children: Vec<ChildSpec>) -> SupervisorSpec {
        let mut spec = SupervisorSpec::new("test", strategy, children);
        spec.restart_delay_base = Duration::from_millis(1);
        spec.restart_delay_max = Duration::from_millis(5);
        spec
    }

    #[actix_rt::test]
    async fn one_for_one_restarts_only_the_panicked_child() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let addrs: Addrs = Default::default();
        let board = StatusBoard::new();
        let children = vec![probe("a", &log, &addrs), probe("b", &log, &addrs)];
        let _root = Supervisor::start_root(
            spec(Strategy::OneForOne, children),
            board.clone(),
            Rc::new(|_| {}),
        );
        settle().await;
        latest(&addrs, "a").do_send(Boom);
        settle().await;
        assert_eq!(*log.lock(), vec!["start a", "start b", "start a"]);
        let a = board.actor("a").unwrap();
        assert_eq!(a.restarts, 1);
        assert!(a.last_error.unwrap().contains("boom in a"));
        assert!(a.running);
    }

    #[actix_rt::test]
    async fn rest_for_one_restarts_later_siblings_too() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let addrs: Addrs = Default::default();
        let board = StatusBoard::new();
        let children = vec![
            probe("a", &log, &addrs),
            probe("b", &log, &addrs),
            probe("c", &log, &addrs),
        ];
        let _root = Supervisor::start_root(
            spec(Strategy::RestForOne, children),
            board.clone(),
            Rc::new(|_| {}),
        );
        settle().await;
        latest(&addrs, "b").do_send(Boom);
        settle().await;
        assert_eq!(
            *log.lock(),
            vec!["start a", "start b", "start c", "start b", "start c"]
        );
        assert!(latest(&addrs, "c").connected());
        assert_eq!(board.actor("a").unwrap().restarts, 0);
    }

    #[actix_rt::test]
    async fn exceeding_intensity_escalates_to_the_root_callback() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let addrs: Addrs = Default::default();
        let board = StatusBoard::new();
        let escalated = Arc::new(Mutex::new(None::<String>));
        let seen = escalated.clone();
        let spec =
            spec(Strategy::OneForOne, vec![probe("a", &log, &addrs)]).with_intensity(Intensity {
                max_restarts: 2,
                within: Duration::from_secs(60),
            });
        let _root = Supervisor::start_root(
            spec,
            board.clone(),
            Rc::new(move |reason| *seen.lock() = Some(reason.to_string())),
        );
        settle().await;
        for _ in 0..3 {
            latest(&addrs, "a").do_send(Boom);
            settle().await;
        }
        let reason = escalated.lock().clone().expect("escalated");
        assert!(reason.contains("more than 2 restarts"), "{reason}");
        assert_eq!(log.lock().iter().filter(|l| *l == "start a").count(), 3);
    }

    #[actix_rt::test]
    async fn nested_supervisor_escalation_restarts_the_subtree() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let addrs: Addrs = Default::default();
        let board = StatusBoard::new();
        let inner = spec(Strategy::OneForOne, vec![probe("leaf", &log, &addrs)]).with_intensity(
            Intensity {
                max_restarts: 0,
                within: Duration::from_secs(60),
            },
        );
        let mut inner = inner;
        inner.name = "inner".into();
        let outer = spec(Strategy::OneForOne, vec![inner.into_child(board.clone())]);
        let _root = Supervisor::start_root(outer, board.clone(), Rc::new(|_| {}));
        settle().await;
        latest(&addrs, "leaf").do_send(Boom);
        settle().await;
        // The inner supervisor gave up at once; the outer restarted it, and with it the leaf.
        assert_eq!(log.lock().iter().filter(|l| *l == "start leaf").count(), 2);
        assert_eq!(board.actor("inner").unwrap().restarts, 1);
        assert!(board
            .actor("inner")
            .unwrap()
            .last_error
            .unwrap()
            .contains("more than 0 restarts"));
    }

    #[actix_rt::test]
    async fn stop_stops_children_last_first() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let addrs: Addrs = Default::default();
        let board = StatusBoard::new();
        let children = vec![probe("a", &log, &addrs), probe("b", &log, &addrs)];
        let root = Supervisor::start_root(
            spec(Strategy::OneForOne, children),
            board.clone(),
            Rc::new(|_| {}),
        );
        settle().await;
        root.do_send(Stop);
        settle().await;
        assert_eq!(*log.lock(), vec!["start a", "start b", "stop b", "stop a"]);
        assert!(!root.connected());
    }
}
