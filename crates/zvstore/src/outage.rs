//! Riding out a store outage: a store-wide circuit breaker, request
//! priorities, and the counters and log lines that say what happened.
//!
//! A VM's disk must not fail on the first hiccup of the object store: block
//! stacks (iSCSI `replacement_timeout`, NFS hard mounts, multipath
//! `queue_if_no_path`) queue I/O through an outage and fail only after a
//! deadline. [`Breaker`] is how [`crate::resilient::ResilientStore`] does
//! the same without a retry storm:
//!
//! - while the store answers, requests go straight through;
//! - the first transient failure opens the breaker: from then on, one
//!   request at a time (the *probe*) may try the store, after a capped,
//!   jittered exponential backoff; every other request waits for the
//!   probe's outcome instead of sending its own. 500 blocked reads cost a
//!   handful of requests per second, not 500;
//! - any answer from the store (even a 404) closes it and releases all
//!   waiters at once.
//!
//! Demand reads come first: a prefetch ([`Priority::Prefetch`], set with
//! [`Priority::scope`]) is never elected probe while a demand read waits,
//! so readahead and profile replay pause during an outage and never hold a
//! demand read's place.
//!
//! The breaker never decides whether a request gives up: each caller brings
//! its own deadline (`--io-timeout`), and [`Breaker::admit`] returns when
//! it passes.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;

/// Who is asking: a reader waiting for the bytes, or a guess ahead of one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// A reader (a guest, a `zvimg` command) waits for this request.
    #[default]
    Demand,
    /// Readahead, profile replay, hydration: may wait behind any demand read.
    Prefetch,
}

tokio::task_local! {
    static PRIORITY: Priority;
}

impl Priority {
    /// Runs `fut` with every store request it makes carrying this priority.
    /// A task-local rather than a parameter: the [`crate::ObjectStore`]
    /// trait stays the same for every caller that does not care.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        PRIORITY.scope(self, fut).await
    }

    /// The priority of the current task ([`Priority::Demand`] unless set
    /// by [`Priority::scope`]).
    pub fn current() -> Priority {
        PRIORITY.try_with(|p| *p).unwrap_or_default()
    }
}

tokio::task_local! {
    static ESCALATION: std::sync::Arc<Escalation>;
}

/// A background request (readahead, profile replay, hydration) that demand
/// reads may come to wait for: the image layer fetches a block once
/// however many readers want it, so a reader that asks for a block a
/// prefetch is already fetching waits for that prefetch's request.
///
/// [`Escalation::raise`] turns that request into a demand request from
/// then on: it takes a demand read's place in the breaker's queue, and its
/// deadline becomes the reader's own (`--io-timeout` from when the reader
/// asked) rather than the one the prefetch started with, so a reader never
/// fails earlier, nor waits at a lower priority, than it would have with a
/// request of its own.
#[derive(Debug)]
pub struct Escalation {
    /// When the first demand read that joined asked; `None` until one does.
    raised: watch::Sender<Option<Instant>>,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            raised: watch::channel(None).0,
        }
    }
}

impl Escalation {
    /// A demand read that asked at `since` waits for the request. The
    /// first call counts: later readers share its deadline, as readers
    /// joining a demand fetch share that fetch's.
    pub fn raise(&self, since: Instant) {
        self.raised.send_if_modified(|at| {
            if at.is_some() {
                return false;
            }
            *at = Some(since);
            true
        });
    }

    /// When the first demand read that joined asked, if one did.
    pub fn raised_at(&self) -> Option<Instant> {
        *self.raised.borrow()
    }

    /// Runs `fut` with every store request it makes escalatable by `this`.
    pub async fn scope<F: Future>(this: std::sync::Arc<Escalation>, fut: F) -> F::Output {
        ESCALATION.scope(this, fut).await
    }

    /// The escalation of the current task, if it runs in
    /// [`Escalation::scope`].
    pub fn current() -> Option<std::sync::Arc<Escalation>> {
        ESCALATION.try_with(std::sync::Arc::clone).ok()
    }
}

/// Who a store call is for, as it may change while the call waits: its
/// priority and deadline, raised to a demand read's by an [`Escalation`].
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The priority it was made with.
    pub priority: Priority,
    /// The deadline it was made with (`None`: none).
    pub deadline: Option<Instant>,
    /// Raises it, with how long a raising reader may wait (`None`: forever).
    pub escalation: Option<(std::sync::Arc<Escalation>, Option<Duration>)>,
}

impl Caller {
    /// A call with a fixed priority and deadline.
    pub fn fixed(priority: Priority, deadline: Option<Instant>) -> Caller {
        Caller {
            priority,
            deadline,
            escalation: None,
        }
    }

    /// The current task's call: its [`Priority`] and [`Escalation`], with
    /// `io_timeout` counted from `started` (and, once raised, from when
    /// the raising reader asked).
    pub fn current(started: Instant, io_timeout: Option<Duration>) -> Caller {
        Caller {
            priority: Priority::current(),
            deadline: io_timeout.map(|t| started + t),
            escalation: Escalation::current().map(|e| (e, io_timeout)),
        }
    }

    fn raised_at(&self) -> Option<(Instant, Option<Duration>)> {
        let (e, io_timeout) = self.escalation.as_ref()?;
        e.raised_at().map(|at| (at, *io_timeout))
    }

    /// Its priority now.
    pub fn priority(&self) -> Priority {
        match self.raised_at() {
            Some(_) => Priority::Demand,
            None => self.priority,
        }
    }

    /// Its deadline now.
    pub fn deadline(&self) -> Option<Instant> {
        match self.raised_at() {
            Some((at, io_timeout)) => io_timeout.map(|t| at + t),
            None => self.deadline,
        }
    }

    /// Waits until it is raised (forever if it cannot be, or already was).
    async fn raised(&self, rx: &mut Option<watch::Receiver<Option<Instant>>>) {
        match rx {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// Counters of outages, shared by every store of one process (the daemon
/// reports them in its stats file). All monotonic.
#[derive(Debug, Default)]
pub struct OutageStats {
    /// Outages declared (a probe failed after the first failure).
    pub outages: AtomicU64,
    /// Milliseconds spent in ended outages (see [`OutageStats::outage_seconds`]
    /// for the figure that includes one in progress).
    pub outage_ms: AtomicU64,
    /// Store calls (reads, HEADs) that had to wait for the store to come back.
    pub reads_waited: AtomicU64,
    /// Attempts sent after a transient failure (probes and retries).
    pub retries: AtomicU64,
    /// Of `retries`, by the kind of failure that caused them, in
    /// [`RetryKind::ALL`] order (see [`OutageStats::retries_by_kind`]).
    retry_kinds: [AtomicU64; RetryKind::ALL.len()],
    /// Start of the outage in progress, in ms since `epoch` (0 = none).
    current_since_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl OutageStats {
    /// Counts one retry caused by `kind` (in `retries` too).
    pub fn count_retry(&self, kind: RetryKind) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.retry_kinds[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Retries so far by cause, every kind listed (zeros included), keyed
    /// by [`RetryKind::label`].
    pub fn retries_by_kind(&self) -> std::collections::BTreeMap<String, u64> {
        RetryKind::ALL
            .iter()
            .map(|&k| {
                (
                    k.label().to_owned(),
                    self.retry_kinds[k as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Whether the store is unreachable right now (an outage was declared
    /// and has not ended).
    pub fn in_outage(&self) -> bool {
        self.current_since_ms.load(Ordering::Relaxed) != 0
    }

    fn now_ms(&self) -> u64 {
        // +1 keeps 0 free to mean "no outage in progress".
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }

    /// Whole seconds spent in outages, the one in progress included.
    pub fn outage_seconds(&self) -> u64 {
        let mut ms = self.outage_ms.load(Ordering::Relaxed);
        let since = self.current_since_ms.load(Ordering::Relaxed);
        if since != 0 {
            ms += self.now_ms().saturating_sub(since);
        }
        ms / 1000
    }

    fn begin(&self) {
        self.outages.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        self.current_since_ms.store(now, Ordering::Relaxed);
    }

    fn end(&self, lasted: Duration) {
        self.current_since_ms.store(0, Ordering::Relaxed);
        self.outage_ms
            .fetch_add(lasted.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Why a store request was sent again: the transient failure before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryKind {
    /// The attempt ran out of time (`--timeout`, HTTP 408).
    Timeout,
    /// The store asked to slow down: 429, 503, `SlowDown`, throttling.
    Throttled,
    /// Another 5xx (`InternalError`, 500, 502, 504).
    ServerError,
    /// A body shorter (or longer) than asked for, or cut off.
    ShortBody,
    /// Credentials expired and the provider chain is refreshing them.
    Credentials,
    /// No answer: connection refused or reset, DNS failure, TLS.
    Connection,
}

impl RetryKind {
    /// Every kind, in counting order.
    pub const ALL: [RetryKind; 6] = [
        RetryKind::Timeout,
        RetryKind::Throttled,
        RetryKind::ServerError,
        RetryKind::ShortBody,
        RetryKind::Credentials,
        RetryKind::Connection,
    ];

    /// The kind of a retryable `error`. Backends describe transient
    /// failures in words (status and code, or the client's error chain),
    /// so this reads the description; what it cannot place is a
    /// connection failure, the usual case of a request with no answer.
    pub fn of(error: &crate::StoreError) -> RetryKind {
        let detail = match error {
            crate::StoreError::Timeout { .. } => return RetryKind::Timeout,
            crate::StoreError::Transient { detail, .. } => detail.as_str(),
            _ => return RetryKind::Connection,
        };
        let has = |words: &[&str]| words.iter().any(|w| detail.contains(w));
        if has(&["credentials expired"]) {
            RetryKind::Credentials
        } else if has(&[
            "HTTP 429",
            "HTTP 503",
            "SlowDown",
            "Throttl",
            "TooManyRequests",
        ]) {
            RetryKind::Throttled
        } else if has(&["HTTP 408", "RequestTimeout", "timed out"]) {
            RetryKind::Timeout
        } else if has(&["HTTP 5", "InternalError"]) {
            RetryKind::ServerError
        } else if has(&["body has", "body", "Content-Length", "end of file"]) {
            RetryKind::ShortBody
        } else {
            RetryKind::Connection
        }
    }

    /// The label value (`kind="throttled"`) and stats-file key.
    pub fn label(self) -> &'static str {
        match self {
            RetryKind::Timeout => "timeout",
            RetryKind::Throttled => "throttled",
            RetryKind::ServerError => "server_error",
            RetryKind::ShortBody => "short_body",
            RetryKind::Credentials => "credentials",
            RetryKind::Connection => "connection",
        }
    }
}

/// How fast probes follow each other while the store is down.
#[derive(Clone, Copy, Debug)]
pub struct ProbePacing {
    /// Ceiling of the first backoff; doubles with each failed probe.
    pub base: Duration,
    /// Upper bound on one backoff: one to two probes per `max` once the
    /// outage has lasted a few probes.
    pub max: Duration,
}

impl ProbePacing {
    /// The wait before probe `n` (1-based): uniform in the upper half of
    /// `0..=min(max, base * 2^(n-1))`. Jittered so that many clients
    /// failing together do not probe in lockstep; never below half the
    /// ceiling, so the rate of probes stays bounded (at most two per `max`).
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n).as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
    }

    /// The upper bound of [`ProbePacing::delay`] for probe `n`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// What [`Breaker::admit`] granted.
#[derive(Debug)]
pub struct Admission<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Admission<'_> {
    /// Whether the caller was elected to probe a store that is failing.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The store answered (any answer, even "not found"): it is reachable.
    pub fn reachable(mut self) {
        self.reported = true;
        self.breaker.on_answer();
    }

    /// The request failed transiently (`cause` is the error, for the log).
    pub fn unreachable(mut self, cause: &dyn std::fmt::Display) {
        self.reported = true;
        self.breaker.on_failure(self.probe, cause);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        // A probe abandoned without an outcome (its caller was cancelled)
        // must not leave the others waiting for a probe that never ends.
        if self.probe && !self.reported {
            self.breaker.release_probe();
        }
    }
}

/// The caller's deadline passed while it waited for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePassed;

#[derive(Debug)]
struct Outage {
    since: Instant,
    /// Consecutive failures since the last answer.
    failures: u32,
    /// Logged and counted (a probe failed too): a lone 503 is no outage.
    declared: bool,
    probing: bool,
    next_probe: Instant,
    /// Store calls that waited during this outage.
    waited: u64,
    /// Demand calls waiting right now (they go before prefetches).
    demand_waiting: usize,
    /// A caller's deadline passed during this outage: like iSCSI after its
    /// `replacement_timeout`, calls now fail after the next probe fails,
    /// until the store answers again.
    expired: bool,
    /// The probe since the last paced one was an early one (a demand read
    /// near its deadline): no other until the next paced probe.
    early_probed: bool,
}

/// A store-wide circuit breaker (see the module documentation).
#[derive(Debug)]
pub struct Breaker {
    /// What the store is called in log lines.
    name: String,
    pacing: ProbePacing,
    state: Mutex<Option<Outage>>,
    /// Bumped on every change, so waiters wake up and look again.
    changed: watch::Sender<u64>,
    stats: std::sync::Arc<OutageStats>,
}

impl Breaker {
    /// A closed breaker for the store named `name` (used in log lines),
    /// counting into `stats`.
    pub fn new(
        name: impl Into<String>,
        pacing: ProbePacing,
        stats: std::sync::Arc<OutageStats>,
    ) -> Breaker {
        Breaker {
            name: name.into(),
            pacing,
            state: Mutex::new(None),
            changed: watch::channel(0).0,
            stats,
        }
    }

    /// Whether the store is believed reachable (no failure since its last
    /// answer). Prefetchers may check it to skip work during an outage.
    pub fn is_available(&self) -> bool {
        self.lock().is_none()
    }

    /// The counters this breaker updates.
    pub fn stats(&self) -> &std::sync::Arc<OutageStats> {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Waits until the caller may send a request: at once while the store
    /// answers; during an outage, until the store is back or the caller is
    /// elected probe. `deadline` (`None`: wait forever) bounds the wait.
    /// `waited` is the caller's "has waited" flag across its attempts: the
    /// first wait sets it and counts the call in `reads_waited`, once.
    pub async fn admit(
        &self,
        priority: Priority,
        deadline: Option<Instant>,
        waited: &mut bool,
    ) -> Result<Admission<'_>, DeadlinePassed> {
        self.admit_caller(&Caller::fixed(priority, deadline), waited)
            .await
    }

    /// [`Breaker::admit`] for a call whose priority and deadline may be
    /// raised while it waits (see [`Escalation`]): looked at again each
    /// time it wakes, and it wakes when raised.
    pub async fn admit_caller(
        &self,
        caller: &Caller,
        waited: &mut bool,
    ) -> Result<Admission<'_>, DeadlinePassed> {
        let mut rx = self.changed.subscribe();
        let mut raised_rx = caller
            .escalation
            .as_ref()
            .filter(|(e, _)| e.raised_at().is_none())
            .map(|(e, _)| e.raised.subscribe());
        let mut counted_demand = false;
        // Failed probes of this outage when the caller arrived (an outage
        // past --io-timeout: the caller waits for one more probe only).
        let mut arrived_at_failure: Option<u32> = None;
        let result = loop {
            rx.borrow_and_update();
            let (priority, deadline) = (caller.priority(), caller.deadline());
            if priority == Priority::Demand {
                // Raised: nothing more to wait for on that side.
                raised_rx = None;
            }
            let wake_at = {
                let mut state = self.lock();
                let Some(outage) = state.as_mut() else {
                    break Ok(false);
                };
                let now = Instant::now();
                let may_probe = priority == Priority::Demand || outage.demand_waiting == 0;
                let due = now >= outage.next_probe;
                // A demand read that would have less time left at the next
                // probe than it waits for it (or none) probes now rather
                // than fail without a fair try: one such early probe
                // between two paced ones, whoever asks, so that reads near
                // their deadlines never turn the pacing into a storm.
                let early = !due
                    && priority == Priority::Demand
                    && !outage.early_probed
                    && deadline.is_some_and(|d| {
                        outage.next_probe.saturating_duration_since(now)
                            > d.saturating_duration_since(now) / 2
                    });
                if !outage.probing && (due || early) && may_probe {
                    outage.probing = true;
                    outage.early_probed = early;
                    break Ok(true);
                }
                if outage.expired
                    && outage.failures > *arrived_at_failure.get_or_insert(outage.failures)
                {
                    break Err(DeadlinePassed);
                }
                if deadline.is_some_and(|d| now >= d) {
                    break Err(DeadlinePassed);
                }
                if !*waited {
                    *waited = true;
                    outage.waited += 1;
                    self.stats.reads_waited.fetch_add(1, Ordering::Relaxed);
                }
                if priority == Priority::Demand && !counted_demand {
                    counted_demand = true;
                    outage.demand_waiting += 1;
                }
                let probe_at = (!outage.probing).then_some(outage.next_probe);
                match (probe_at, deadline) {
                    (Some(p), Some(d)) => Some(p.min(d)),
                    (p, d) => p.or(d),
                }
            };
            let changed = async {
                tokio::select! {
                    _ = rx.changed() => {}
                    () = caller.raised(&mut raised_rx) => {}
                }
            };
            match wake_at {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), changed).await;
                }
                None => changed.await,
            }
        };
        if counted_demand && let Some(outage) = self.lock().as_mut() {
            outage.demand_waiting = outage.demand_waiting.saturating_sub(1);
        }
        result.map(|probe| Admission {
            breaker: self,
            probe,
            reported: false,
        })
    }

    fn on_answer(&self) {
        let ended = self.lock().take();
        let Some(outage) = ended else { return };
        if outage.declared {
            let lasted = outage.since.elapsed();
            self.stats.end(lasted);
            tracing::warn!(
                store = %self.name,
                "store reachable again after {:.1}s; {} reads waited for it",
                lasted.as_secs_f64(),
                outage.waited
            );
        }
        self.bump();
    }

    fn on_failure(&self, was_probe: bool, cause: &dyn std::fmt::Display) {
        let mut declare = false;
        {
            let mut state = self.lock();
            let now = Instant::now();
            let outage = state.get_or_insert_with(|| Outage {
                since: now,
                failures: 0,
                declared: false,
                probing: false,
                next_probe: now,
                waited: 0,
                demand_waiting: 0,
                expired: false,
                early_probed: false,
            });
            outage.failures += 1;
            if was_probe {
                outage.probing = false;
            }
            // Requests in flight when the store went down fail one after
            // another; only the first (or a probe) moves the next probe.
            if was_probe || outage.failures == 1 {
                outage.next_probe = now + self.pacing.delay(outage.failures);
            }
            if was_probe && !outage.declared {
                outage.declared = true;
                declare = true;
            }
        }
        if declare {
            self.stats.begin();
            tracing::warn!(
                store = %self.name,
                "store unreachable: {cause}; reads wait for it to come back (see --io-timeout)"
            );
        }
        self.bump();
    }

    /// A caller gave up at its deadline: from now until the store answers,
    /// a call waits for the outcome of one more probe only, instead of a
    /// full deadline of its own (the kernel retries a failed readahead page
    /// by page, and every retry would otherwise wait again), like iSCSI
    /// failing I/O fast once its `replacement_timeout` has passed.
    pub fn expire(&self, waited: Duration) {
        let first = match self.lock().as_mut() {
            Some(outage) if !outage.expired => {
                outage.expired = true;
                true
            }
            _ => false,
        };
        if first {
            tracing::warn!(
                store = %self.name,
                "store unreachable for longer than --io-timeout ({:.1}s): reads fail after the next probe until it answers again",
                waited.as_secs_f64()
            );
        }
        self.bump();
    }

    /// Whether calls fail after one probe (see [`Breaker::expire`]).
    pub fn has_expired(&self) -> bool {
        self.lock().as_ref().is_some_and(|o| o.expired)
    }

    fn release_probe(&self) {
        if let Some(outage) = self.lock().as_mut() {
            outage.probing = false;
        }
        self.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(
            "test",
            ProbePacing {
                base: Duration::from_millis(20),
                max: Duration::from_millis(50),
            },
            Arc::default(),
        ))
    }

    #[test]
    fn pacing_grows_and_is_capped() {
        let p = ProbePacing {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(50), Duration::from_secs(1));
        assert!((1..20).all(|n| p.delay(n) <= p.ceiling(n) && p.delay(n) >= p.ceiling(n) / 2));
    }

    #[tokio::test]
    async fn one_probe_at_a_time_while_down() {
        let b = breaker();
        b.admit(Priority::Demand, None, &mut false)
            .await
            .unwrap()
            .unreachable(&"refused");
        assert!(!b.is_available());
        let sent = Arc::new(AtomicU32::new(0));
        let up_after = 6;
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (b, sent) = (Arc::clone(&b), Arc::clone(&sent));
                tokio::spawn(async move {
                    loop {
                        let a = b.admit(Priority::Demand, None, &mut false).await.unwrap();
                        let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::task::yield_now().await;
                        if n >= up_after {
                            a.reachable();
                            return;
                        }
                        a.unreachable(&"refused");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // While down, only probes went, one at a time (up_after of them, the
        // last one answered); then the other 49 went through once each.
        assert_eq!(sent.load(Ordering::SeqCst), up_after + 49);
        assert!(b.is_available());
        assert_eq!(b.stats().outages.load(Ordering::Relaxed), 1);
        assert!(b.stats().reads_waited.load(Ordering::Relaxed) >= 49);
    }

    #[tokio::test]
    async fn a_deadline_ends_the_wait() {
        let b = breaker();
        b.admit(Priority::Demand, None, &mut false)
            .await
            .unwrap()
            .unreachable(&"refused");
        // Hold the probe: nobody else may go.
        let probe = loop {
            let a = b.admit(Priority::Demand, None, &mut false).await.unwrap();
            if a.probe {
                break a;
            }
        };
        let deadline = Instant::now() + Duration::from_millis(30);
        assert_eq!(
            b.admit(Priority::Demand, Some(deadline), &mut false)
                .await
                .unwrap_err(),
            DeadlinePassed
        );
        // Past a deadline, a later call (with no deadline of its own) waits
        // for one more probe only: that probe failing fails it.
        b.expire(Duration::from_millis(30));
        assert!(b.has_expired());
        let late = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                b.admit(Priority::Demand, None, &mut false)
                    .await
                    .map(|a| a.is_probe())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        probe.unreachable(&"still refused");
        assert_eq!(late.await.unwrap(), Err(DeadlinePassed));
        // A probe dropped without an outcome frees the slot for the next.
        let probe = loop {
            if let Ok(a) = b.admit(Priority::Demand, None, &mut false).await
                && a.probe
            {
                break a;
            }
        };
        drop(probe);
        let a = loop {
            if let Ok(a) = b.admit(Priority::Demand, None, &mut false).await {
                break a;
            }
        };
        assert!(a.probe);
        a.reachable();
        assert!(!b.has_expired());
        assert!(b.admit(Priority::Prefetch, None, &mut false).await.is_ok());
    }

    #[tokio::test]
    async fn a_demand_read_due_to_fail_before_the_next_probe_probes_first() {
        let b = Arc::new(Breaker::new(
            "test",
            ProbePacing {
                base: Duration::from_secs(10),
                max: Duration::from_secs(10),
            },
            Arc::default(),
        ));
        b.admit(Priority::Demand, None, &mut false)
            .await
            .unwrap()
            .unreachable(&"refused");
        // The next probe is 5-10 s away; this read has 50 ms.
        let soon = || Some(Instant::now() + Duration::from_millis(50));
        let a = tokio::time::timeout(
            Duration::from_secs(2),
            b.admit(Priority::Demand, soon(), &mut false),
        )
        .await
        .expect("admitted at once, not at the next probe")
        .expect("a try before its deadline");
        assert!(a.is_probe());
        a.unreachable(&"still refused");
        // One early probe between two paced ones: the next read near its
        // deadline waits for the paced probe (and so gives up), so reads
        // near their deadlines never make a storm of probes.
        assert_eq!(
            b.admit(Priority::Demand, soon(), &mut false)
                .await
                .unwrap_err(),
            DeadlinePassed
        );
        // A prefetch does not jump the pacing: it gives up at its deadline.
        assert_eq!(
            b.admit(Priority::Prefetch, soon(), &mut false)
                .await
                .unwrap_err(),
            DeadlinePassed
        );
        // Nor does a demand read with time to wait for the next probe.
        let patient = Some(Instant::now() + Duration::from_secs(60));
        assert!(
            tokio::time::timeout(
                Duration::from_millis(100),
                b.admit(Priority::Demand, patient, &mut false)
            )
            .await
            .is_err(),
            "a read with time to spare waits for the paced probe"
        );
    }

    #[tokio::test]
    async fn prefetch_waits_behind_demand() {
        let b = breaker();
        b.admit(Priority::Demand, None, &mut false)
            .await
            .unwrap()
            .unreachable(&"refused");
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |p: Priority| {
            let (b, order) = (Arc::clone(&b), Arc::clone(&order));
            tokio::spawn(async move {
                let a = b.admit(p, None, &mut false).await.unwrap();
                order.lock().unwrap().push((p, a.probe));
                a.reachable();
            })
        };
        let pre = spawn(Priority::Prefetch);
        tokio::task::yield_now().await;
        let dem = spawn(Priority::Demand);
        pre.await.unwrap();
        dem.await.unwrap();
        let order = order.lock().unwrap();
        assert_eq!(order[0], (Priority::Demand, true), "{order:?}");
        assert_eq!(order[1], (Priority::Prefetch, false), "{order:?}");
    }
}
