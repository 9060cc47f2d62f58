//! Drives one load level against one server: a closed loop of `c` clients each sending its
//! next request when the previous answer is in (`--concurrency`), or an open loop of Poisson
//! arrivals at a set rate (`--request-rate`). A level stops taking new requests at its
//! request count or its duration, whichever comes first, waits for what is in flight, and
//! ends at once when `cancel` turns true (Ctrl-C), the requests still in flight recorded as
//! cancelled.

use super::client::{Client, RequestRecord, WorkItem};
use super::progress::Progress;
use super::stats::LoadShape;
use super::workload::Job;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

#[derive(Debug, Clone, Copy)]
pub struct LevelPlan {
    pub shape: LoadShape,
    /// Requests to send; `None` with a duration.
    pub requests: Option<usize>,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// Open loop only: most requests in flight at once (arrivals wait beyond it).
    pub max_concurrency: Option<usize>,
    pub seed: u64,
}

pub struct LevelResult {
    pub records: Vec<RequestRecord>,
    pub duration_s: f64,
    pub interrupted: bool,
}

/// Shared by the clients of one level: which job is next, how many requests may still go.
struct Budget {
    jobs: Arc<Vec<Job>>,
    next_job: AtomicUsize,
    sent: AtomicUsize,
    limit: usize,
    deadline: Option<Instant>,
    cancel: watch::Receiver<bool>,
}

impl Budget {
    /// Reserves one request; false when the level is over.
    fn take_request(&self) -> bool {
        if *self.cancel.borrow() || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.sent.fetch_add(1, Ordering::SeqCst) < self.limit
    }

    fn next_job(&self) -> Option<&Job> {
        let index = self.next_job.fetch_add(1, Ordering::SeqCst);
        self.jobs.get(index % self.jobs.len().max(1))
    }
}

pub async fn run_level(
    client: &Client,
    jobs: Arc<Vec<Job>>,
    plan: LevelPlan,
    progress: Progress,
    cancel: watch::Receiver<bool>,
) -> LevelResult {
    let start = Instant::now();
    let budget = Arc::new(Budget {
        jobs,
        next_job: AtomicUsize::new(0),
        sent: AtomicUsize::new(0),
        limit: plan.requests.unwrap_or(usize::MAX),
        deadline: plan.duration.map(|d| start + d),
        cancel: cancel.clone(),
    });
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let run_job = {
        let (client, records, progress) = (client.clone(), records.clone(), progress.clone());
        move |budget: Arc<Budget>, job: Job| {
            let (client, records, progress) = (client.clone(), records.clone(), progress.clone());
            async move { run_conversation(&client, &budget, job, start, &records, &progress).await }
        }
    };
    match plan.shape {
        LoadShape::Concurrency(clients) => {
            for _ in 0..clients.max(1) {
                let (budget, run_job) = (budget.clone(), run_job.clone());
                tasks.spawn(async move {
                    while let Some(job) = budget.next_job().cloned() {
                        if !run_job(budget.clone(), job).await {
                            break;
                        }
                    }
                });
            }
        }
        LoadShape::RequestRate(rate) => {
            let gaps = Exp::new(rate.max(1e-9)).ok();
            let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
            let slots = Arc::new(Semaphore::new(
                plan.max_concurrency.unwrap_or(Semaphore::MAX_PERMITS),
            ));
            let mut next_arrival = start;
            let mut cancel = cancel.clone();
            loop {
                if budget.sent.load(Ordering::SeqCst) >= budget.limit
                    || budget.deadline.is_some_and(|d| next_arrival >= d)
                {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next_arrival.into()) => {}
                    _ = cancel.wait_for(|c| *c) => break,
                }
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let Some(job) = budget.next_job().cloned() else {
                    break;
                };
                let (budget, run_job) = (budget.clone(), run_job.clone());
                tasks.spawn(async move {
                    let _slot = slot;
                    run_job(budget, job).await;
                });
                let gap = gaps.map(|g| g.sample(&mut rng)).unwrap_or(1.0);
                next_arrival += Duration::from_secs_f64(gap);
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let duration_s = start.elapsed().as_secs_f64();
    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
    progress.finish();
    LevelResult {
        records,
        duration_s,
        interrupted: *cancel.borrow(),
    }
}

/// Sends a job's turns one after another; false once the level's budget is spent.
async fn run_conversation(
    client: &Client,
    budget: &Budget,
    job: Job,
    level_start: Instant,
    records: &Mutex<Vec<RequestRecord>>,
    progress: &Progress,
) -> bool {
    let mut item: WorkItem = job.first;
    let mut follow_ups = job.follow_ups.into_iter();
    loop {
        if !budget.take_request() {
            return false;
        }
        let record = client.send(&item, level_start, budget.cancel.clone()).await;
        let failed = record.outcome.error_kind().is_some();
        let answer = record.text.clone();
        progress.record(&record);
        records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
        // A conversation whose turn failed has no answer to build on.
        let Some(question) = follow_ups.next().filter(|_| !failed) else {
            return true;
        };
        item = Job::next_turn(&item, &answer, &question);
    }
}
