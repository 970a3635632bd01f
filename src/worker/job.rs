//! One job runner for every queue the workers consume. A [`Job`] parses a delivery and
//! executes it, returning a [`Step`] or a [`JobError`]; the [`Runner`] does the rest the
//! same way for every job: poison and over-delivered messages are dead-lettered, a step's
//! queued messages are published, transient failures are handed back without counting as a
//! delivery, anything else is dead-lettered with its reason; metrics are recorded here, once.

use std::{future::Future, sync::Arc};

use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Ctx, dead};
use crate::{
    domain::{AccountId, RequestId},
    erase::DbError,
    queue::{
        self,
        consumer::{Handler, Linger, Message, Outcome},
        publisher::Publisher,
        redelivery::{self, Run, Verdict},
    },
    retry::Transient,
    store::{dead_letters::Subject, outbox::OutboxMessage},
};

/// A kind of message the workers consume.
pub trait Job: Send + Sync + 'static {
    type Message: Send + Sync;
    /// Its name in metrics (the `kind` label) and logs.
    const NAME: &'static str;
    /// The routing key its messages arrive with, and are handed back or dead-lettered with.
    const ROUTING_KEY: &'static str;

    /// Reads a delivery; a message that cannot be read is poison.
    fn parse(&self, ctx: &Ctx, data: &[u8]) -> Result<Self::Message, Poison>;

    /// What fails with the message if it is dead-lettered.
    fn subject<'m>(&self, msg: &'m Self::Message) -> Subject<'m>;

    /// The span its work is logged in (request and bot ids only, never personal data).
    fn span(&self, msg: &Self::Message) -> tracing::Span;

    /// Does the work. Tests call it directly, without a broker.
    fn execute(
        &self,
        ctx: &Ctx,
        msg: &Self::Message,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<Step, JobError>> + Send;

    /// Most messages worked together (`ERASURE_COALESCE`; 1: one at a time).
    fn batch(&self, ctx: &Ctx) -> usize {
        ctx.config.worker.coalesce
    }

    /// How long a group waits for more messages while they keep arriving (by default, not
    /// at all: what is ready goes at once).
    fn linger(&self, _ctx: &Ctx) -> Option<Linger> {
        None
    }

    /// Does the work of several messages that were ready together, one result each, in order;
    /// by default one after the other, each in its span.
    fn execute_many(
        &self,
        ctx: &Ctx,
        msgs: &[&Self::Message],
        stop: &CancellationToken,
    ) -> impl Future<Output = Vec<Result<Step, JobError>>> + Send {
        async move {
            let mut results = Vec::with_capacity(msgs.len());
            for msg in msgs {
                results.push(
                    self.execute(ctx, msg, stop)
                        .instrument(self.span(msg))
                        .await,
                );
            }
            results
        }
    }
}

/// A message that cannot be read, with what it names (read even from a malformed message,
/// so that a producer finds its request `failed`, not missing).
#[derive(Debug)]
pub struct Poison {
    pub request_id: Option<RequestId>,
    pub account_id: Option<AccountId>,
    pub reason: String,
}

/// How a job's execution ended. Messages it committed to the outbox are published by the
/// runner (and by the outbox relay should that fail).
#[derive(Debug)]
pub enum Step {
    /// The request is planned: its users decided, one task per bot.
    Planned { messages: Vec<OutboxMessage> },
    /// Nothing to erase: the request settled at planning.
    SettledAtPlanning,
    /// A duplicate delivery of a request already planned or settled: nothing to do.
    Duplicate,
    /// Every row of the message's tasks is gone, and the tasks are done.
    Drained,
    /// The slice is used up (or shutdown began): continuations are queued.
    Continued { messages: Vec<OutboxMessage> },
    /// A stale copy of an earlier slice: nothing to do.
    Stale,
}

/// The kinds of job (`Job::NAME`), the `kind` label of their metrics.
pub const JOB_KINDS: [&str; 2] = [super::plan::PlanJob::NAME, super::task::TaskJob::NAME];

impl Step {
    /// Every step's name, the `step` label of `erasure_job_steps_total`.
    pub const NAMES: [&'static str; 6] = [
        "planned",
        "settled_at_planning",
        "duplicate",
        "drained",
        "continued",
        "stale",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Planned { .. } => "planned",
            Self::SettledAtPlanning => "settled_at_planning",
            Self::Duplicate => "duplicate",
            Self::Drained => "drained",
            Self::Continued { .. } => "continued",
            Self::Stale => "stale",
        }
    }

    fn messages(&self) -> &[OutboxMessage] {
        match self {
            Self::Planned { messages } | Self::Continued { messages } => messages,
            _ => &[],
        }
    }
}

/// Why a job did not finish.
#[derive(Clone, Debug, thiserror::Error)]
pub enum JobError {
    /// The service's own database went away and stayed away beyond the retry budget: the
    /// message is handed back, and that does not count as a delivery, however long it lasts.
    #[error("{0}")]
    Transient(String),
    /// A further database of the target catalog does not answer: the message is handed back
    /// like [`JobError::Transient`], but only `ERASURE_MAX_HANDBACKS` times; then it fails
    /// with the reason, for an operator to fix and redrive.
    #[error("{reason}")]
    Unreachable { database: String, reason: String },
    /// The message breaks a rule of the contract: it can never succeed as sent.
    #[error("{0}")]
    Refused(String),
    /// A task message names tasks that do not exist.
    #[error("task is unknown (its request was never planned)")]
    UnknownTask,
    /// Will not succeed by trying again (a database error that is not transient); the reason
    /// is short and names no one.
    #[error("{0}")]
    Permanent(String),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        Self::of(&e)
    }
}

impl From<DbError> for JobError {
    fn from(e: DbError) -> Self {
        match &e.database {
            Some(database) if e.is_transient() => Self::Unreachable {
                database: database.clone(),
                reason: e.describe(),
            },
            _ => Self::of(&e),
        }
    }
}

impl JobError {
    fn of(e: &impl Transient) -> Self {
        if e.is_transient() {
            Self::Transient(e.describe())
        } else {
            Self::Permanent(e.describe())
        }
    }
}

impl Transient for JobError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Unreachable { .. })
    }
    fn describe(&self) -> String {
        self.to_string()
    }
}

/// The header counting a message's hand-backs for a database of the catalog that does not
/// answer.
const UNREACHABLE_ROUNDS: &str = "x-erasure-unreachable-rounds";

/// Runs a [`Job`] for a queue consumer.
pub struct Runner<J> {
    job: J,
    ctx: Arc<Ctx>,
    publisher: Arc<Publisher>,
}

impl<J: Job> Runner<J> {
    pub fn new(job: J, ctx: Arc<Ctx>, publisher: Arc<Publisher>) -> Self {
        Self {
            job,
            ctx,
            publisher,
        }
    }

    /// Reads a delivery: the message and, for a redelivery, its run
    /// ([`queue::redelivery`]); or the outcome of one that is not to run (poison, a crash
    /// loop: dead-lettered; delivered too often for other reasons, or the verdict
    /// interrupted: put back).
    async fn admit(&self, message: &Message) -> Result<(J::Message, Option<Run>), Outcome> {
        let (data, props) = (&message.data, &message.props);
        let msg = match self.job.parse(&self.ctx, data) {
            Ok(msg) => msg,
            Err(poison) => {
                metrics::counter!("erasure_poison_messages_total", "kind" => J::NAME).increment(1);
                let subject = Subject::Request {
                    request_id: poison.request_id.as_ref(),
                    account_id: poison.account_id.as_ref(),
                };
                return Err(self.dead_letter(subject, &poison.reason, data).await);
            }
        };
        // A redelivery is a crash loop only for the runs that ended with the worker gone,
        // not for the broker's every return (queue::redelivery).
        let max = self.ctx.config.queue.max_deliveries;
        let unsettled = redelivery::unsettled_before(props);
        // The span is made only off the hot path: a delivery to execute is logged in it later.
        let outcome = match redelivery::verdict(
            &self.ctx.pool,
            self.ctx.retry_budget(),
            props,
            data,
            max,
        )
        .await
        {
            Ok(Verdict::Execute(run)) => return Ok((msg, run)),
            Ok(Verdict::CrashLoop {
                deliveries,
                crashes,
            }) => {
                let reason = format!(
                    "delivered {deliveries} times without being settled ({crashes} ended with the worker gone)"
                );
                let outcome = self
                    .dead_letter(self.job.subject(&msg), &reason, data)
                    .instrument(self.job.span(&msg))
                    .await;
                redelivery::forget(&self.ctx.pool, self.ctx.retry_budget(), props, data).await;
                outcome
            }
            Ok(Verdict::Republish { .. }) => {
                async {
                    tracing::info!(unsettled, "redelivered without crashes; republishing it");
                    self.put_back(&queue::message_id(props), data, unsettled, None)
                        .await
                }
                .instrument(self.job.span(&msg))
                .await
            }
            Err(e) => {
                async {
                    tracing::warn!(error = %e.describe(), "interrupted; handing the message back");
                    self.put_back(&queue::message_id(props), data, unsettled, None)
                        .await
                }
                .instrument(self.job.span(&msg))
                .await
            }
        };
        Err(outcome)
    }

    /// What becomes of a delivery once its work ended with `result`.
    async fn settle(
        &self,
        msg: &J::Message,
        message: &Message,
        result: Result<Step, JobError>,
    ) -> Outcome {
        let (data, props) = (&message.data, &message.props);
        let unsettled = redelivery::unsettled_before(props);
        match result {
            Ok(step) => {
                metrics::counter!("erasure_job_steps_total", "kind" => J::NAME, "step" => step.name())
                    .increment(1);
                tracing::debug!(step = step.name(), "job step finished");
                Outcome::Ack
            }
            Err(JobError::Transient(e)) => {
                tracing::warn!(error = %e, "interrupted; handing the message back");
                self.put_back(&queue::message_id(props), data, unsettled, None)
                    .await
            }
            Err(JobError::Unreachable { database, reason }) => {
                let rounds = queue::header_u64(props, UNREACHABLE_ROUNDS).unwrap_or(0) + 1;
                if rounds > u64::from(self.ctx.config.worker.max_handbacks) {
                    let reason = format!("{reason} (still so after {} hand-backs)", rounds - 1);
                    return self.dead_letter(self.job.subject(msg), &reason, data).await;
                }
                tracing::warn!(database, error = %reason, rounds, "a database of the catalog does not answer; handing the message back");
                self.put_back(&queue::message_id(props), data, unsettled, Some(rounds))
                    .await
            }
            Err(e) => {
                self.dead_letter(self.job.subject(msg), &e.to_string(), data)
                    .await
            }
        }
    }

    /// Puts back a message whose handling failed for a transient reason: republished,
    /// confirmed, then the original is acknowledged, so that waiting out an outage does not
    /// count as a delivery. A plain requeue would count, and a long enough outage would have
    /// the broker dead-letter healthy messages (`x-delivery-limit`) with nothing recorded.
    pub async fn hand_back(&self, message_id: &str, data: &[u8]) -> Outcome {
        self.put_back(message_id, data, 0, None).await
    }

    /// [`Runner::hand_back`], carrying the `unsettled` deliveries before this one (the
    /// copy's broker count starts again, the crash count does not), and counting `rounds` in
    /// the message when a database of the catalog is what is missing.
    async fn put_back(
        &self,
        message_id: &str,
        data: &[u8],
        unsettled: u64,
        rounds: Option<u64>,
    ) -> Outcome {
        metrics::counter!("erasure_handed_back_total", "kind" => J::NAME).increment(1);
        let mut headers = redelivery::carried(unsettled);
        headers.insert("x-erasure-retried".into(), AMQPValue::Boolean(true));
        if let Some(rounds) = rounds {
            headers.insert(
                UNREACHABLE_ROUNDS.into(),
                AMQPValue::LongLongInt(rounds as i64),
            );
        }
        match self
            .publisher
            .publish(J::ROUTING_KEY, message_id, data, headers)
            .await
        {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "could not put a message back; requeueing it");
                Outcome::Requeue
            }
        }
    }

    async fn dead_letter(&self, subject: Subject<'_>, reason: &str, data: &[u8]) -> Outcome {
        match dead::dead_letter(
            self.ctx.retry_budget(),
            &self.ctx.pool,
            &self.publisher,
            J::ROUTING_KEY,
            subject,
            reason,
            data,
        )
        .await
        {
            dead::Filed::Yes => {
                metrics::counter!("erasure_dead_lettered_total", "kind" => J::NAME).increment(1);
                Outcome::Ack
            }
            dead::Filed::NotRecorded => {
                let id = subject
                    .request_id()
                    .map_or_else(|| "unidentified".into(), |r| r.to_string());
                self.hand_back(&id, data).await
            }
            dead::Filed::NotPublished => Outcome::Requeue,
        }
    }
}

impl<J: Job> Handler for Runner<J> {
    fn batch(&self) -> usize {
        self.job.batch(&self.ctx)
    }

    fn linger(&self) -> Option<Linger> {
        self.job.linger(&self.ctx)
    }

    /// Reads every delivery, works the ones that may run together, publishes what their steps
    /// queued (in one round of pipelined confirms), then settles each.
    async fn handle(&self, messages: Vec<Message>, stop: CancellationToken) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(messages.len());
        let mut ready: Vec<(usize, J::Message, Option<Run>)> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            match self.admit(message).await {
                Ok((msg, run)) => {
                    ready.push((i, msg, run));
                    outcomes.push(None);
                }
                Err(outcome) => outcomes.push(Some(outcome)),
            }
        }
        let msgs: Vec<&J::Message> = ready.iter().map(|(_, m, _)| m).collect();
        if !msgs.is_empty() {
            metrics::histogram!("erasure_job_group_messages", "kind" => J::NAME)
                .record(msgs.len() as f64);
        }
        let results = match msgs.as_slice() {
            [] => Vec::new(),
            [one] => {
                vec![
                    self.job
                        .execute(&self.ctx, one, &stop)
                        .instrument(self.job.span(one))
                        .await,
                ]
            }
            many => {
                let span = tracing::info_span!("group", kind = J::NAME, messages = many.len());
                self.job
                    .execute_many(&self.ctx, many, &stop)
                    .instrument(span)
                    .await
            }
        };
        let queued: Vec<OutboxMessage> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .flat_map(|step| step.messages().iter().cloned())
            .collect();
        self.publisher.publish_outbox(&self.ctx.pool, &queued).await;
        for ((i, msg, run), result) in ready.into_iter().zip(results) {
            if let Some(run) = run {
                // Handed back, the message lives on (its runs with it); otherwise it is
                // settled.
                run.finish(!matches!(
                    result,
                    Err(JobError::Transient(_) | JobError::Unreachable { .. })
                ))
                .await;
            }
            let outcome = self
                .settle(&msg, &messages[i], result)
                .instrument(self.job.span(&msg))
                .await;
            outcomes[i] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every delivery has its outcome"))
            .collect()
    }
}
