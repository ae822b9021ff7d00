//! The relay: claims committed outbox rows in batches, publishes each batch with pipelined
//! confirms, and removes what the broker confirmed.

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Outbox, RelayOptions};
use crate::client::{ClientProxy, Prepared};
use crate::delivery::Properties;
use crate::error::{Error, Result};
use crate::pattern::Pattern;
use crate::store::{Database, Row, Settled, database, now_ms, reason};
use crate::telemetry::{self, OutboxMetrics};

/// The first pause after a failed pass (broker or database down); it doubles up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After a wake that found nothing (the commit not visible yet), the relay looks again this soon.
const RECHECK: Duration = Duration::from_millis(20);
/// How often, at most, the relay counts the rows waiting (one `COUNT(*)`); between counts its
/// backlog gauge only goes down, by the rows it removed.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// A running relay ([`Outbox::relay`]). Dropping it stops the relay at once; rows it was
/// publishing stay in the outbox and go out again.
#[derive(Debug)]
pub struct Relay {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    pub(super) fn start<DB: Database>(outbox: Outbox<DB>, options: RelayOptions) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(outbox, options, stopped));
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops the relay once its current batch is settled.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the outbox relay ended abnormally");
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// How a pass ended.
enum Pass {
    /// A full batch went out: there may be more.
    Full,
    /// Fewer rows than a batch: the outbox is drained, but for the rows refused, the first of
    /// which is due again after the duration given.
    Drained(Option<Duration>),
    /// The broker could not take the batch (or part of it): try again after a pause.
    Outage(String),
}

/// The relay's loop, until told to stop.
async fn run<DB: Database>(
    outbox: Outbox<DB>,
    options: RelayOptions,
    mut stopped: watch::Receiver<bool>,
) {
    let wake = outbox.inner.wake.clone();
    let listener = DB::listen(&outbox.inner.pool, wake.clone());
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    let mut woken = false;
    // When the first row refused is due again: the relay looks then, whatever its poll.
    let mut retry_at: Option<Instant> = None;
    let mut backlog = Backlog::new::<DB>();
    backlog.update(&outbox.inner.pool).await;
    while !*stopped.borrow() {
        let passed = pass(&outbox, &options, &mut backlog).await;
        backlog.update(&outbox.inner.pool).await;
        let pause = match passed {
            Ok(Pass::Full) => {
                woken = false;
                Duration::ZERO
            }
            Ok(Pass::Drained(retry)) => {
                if failing {
                    tracing::info!("outbox relay publishing again");
                }
                failing = false;
                backoff = MIN_BACKOFF;
                let now = Instant::now();
                retry_at = match (retry_at.filter(|at| *at > now), retry) {
                    (Some(at), Some(after)) => Some(at.min(now + after)),
                    (at, after) => at.or(after.map(|after| now + after)),
                };
                let pause = if std::mem::take(&mut woken) {
                    RECHECK
                } else {
                    options.poll_interval
                };
                retry_at.map_or(pause, |at| pause.min(at.saturating_duration_since(now)))
            }
            Ok(Pass::Outage(why)) => {
                woken = false;
                report(&mut failing, &why, backoff);
                next_backoff(&mut backoff)
            }
            Err(error) => {
                woken = false;
                report(&mut failing, &error.to_string(), backoff);
                next_backoff(&mut backoff)
            }
        };
        if pause.is_zero() {
            continue;
        }
        tokio::select! {
            () = wake.notified(), if !failing => woken = true,
            () = tokio::time::sleep(pause) => {}
            _ = stopped.changed() => {}
        }
    }
    if let Some(listener) = listener {
        listener.abort();
    }
}

/// The relay's instruments, and its backlog: counted when it starts and then at most every
/// [`BACKLOG_EVERY`], less the rows it removed since, so that the gauge falls as soon as the
/// relay catches up, without a count per pass.
struct Backlog {
    metrics: OutboxMetrics,
    rows: i64,
    counted: Option<Instant>,
}

impl Backlog {
    fn new<DB: Database>() -> Self {
        Self {
            metrics: OutboxMetrics::new(DB::SYSTEM),
            rows: 0,
            counted: None,
        }
    }

    /// A batch was settled: `published` rows removed once confirmed, `dead` moved aside.
    fn settled(&mut self, published: usize, dead: usize) {
        self.metrics.settled(published, dead);
        let removed = i64::try_from(published.saturating_add(dead)).unwrap_or(i64::MAX);
        self.rows = self.rows.saturating_sub(removed).max(0);
    }

    /// Sets the gauge, counting the rows first when the last count is old enough.
    async fn update<DB: Database>(&mut self, pool: &sqlx::Pool<DB>) {
        // Without the feature `metrics` nothing reads the gauge: no count.
        if !telemetry::RECORDING {
            return;
        }
        if self.counted.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) {
            self.counted = Some(Instant::now());
            match DB::backlog(pool).await {
                Ok(rows) => self.rows = rows,
                Err(error) => tracing::debug!(%error, "could not count the outbox backlog"),
            }
        }
        self.metrics.backlog(self.rows);
    }
}

/// Logs a failed pass: a warning when an outage starts, then quietly.
fn report(failing: &mut bool, why: &str, pause: Duration) {
    if std::mem::replace(failing, true) {
        tracing::debug!(reason = %why, ?pause, "outbox relay still waiting");
    } else {
        tracing::warn!(reason = %why, "outbox relay cannot publish; waiting with backoff (rows stay in the outbox)");
    }
}

/// The pause now, doubling the next one up to [`MAX_BACKOFF`].
fn next_backoff(backoff: &mut Duration) -> Duration {
    let pause = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    pause
}

/// Claims one batch, publishes it, and settles it.
async fn pass<DB: Database>(
    outbox: &Outbox<DB>,
    options: &RelayOptions,
    backlog: &mut Backlog,
) -> Result<Pass> {
    let clients = outbox
        .inner
        .clients
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let destinations: Vec<String> = clients.keys().cloned().collect();
    let pool = &outbox.inner.pool;
    let limit = i64::try_from(options.batch_size).unwrap_or(i64::MAX);
    let claim = DB::claim(pool, &destinations, limit, now_ms())
        .await
        .map_err(|e| database("claiming outbox rows", e))?;
    let full = claim.rows.len() >= options.batch_size;
    let mut settled = Settled::default();
    let mut outage = None;
    for (destination, rows) in by_destination(&claim.rows) {
        let Some(client) = clients.get(destination) else {
            continue;
        };
        if let Err(error) = client.ready().await {
            outage.get_or_insert(error.to_string());
            continue;
        }
        let batch: Vec<Prepared> = rows.iter().map(|row| prepare(client, row)).collect();
        let results = client.publish_batch(&batch).await;
        let mut results = results.into_iter();
        for row in rows {
            match results.next() {
                Some(Ok(())) => settled.done.push(row.id),
                Some(Err(error)) if is_outage(&error) => {
                    outage.get_or_insert(error.to_string());
                }
                Some(Err(error)) => refused(row, &error, options, &mut settled),
                None => {
                    outage.get_or_insert_with(|| "the connection was lost".to_owned());
                }
            }
        }
    }
    DB::settle(pool, claim.tx, &settled, now_ms())
        .await
        .map_err(|e| database("removing published outbox rows", e))?;
    backlog.settled(settled.done.len(), settled.poison.len());
    let retry = settled
        .retry
        .iter()
        // A few ms late rather than early: a row looked for before it is due is not found.
        .map(|(_, at, _)| at.saturating_sub(now_ms()).saturating_add(5))
        .min()
        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    Ok(match outage {
        Some(why) => Pass::Outage(why),
        None if full => Pass::Full,
        None => Pass::Drained(retry),
    })
}

/// The rows of each destination, in the order claimed.
fn by_destination(rows: &[Row]) -> BTreeMap<&str, Vec<&Row>> {
    let mut groups: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        groups.entry(&row.destination).or_default().push(row);
    }
    groups
}

/// Errors that say nothing of the row: the broker is unreachable, blocked or slow. The row is
/// tried again, unchanged, once the broker is back.
fn is_outage(error: &Error) -> bool {
    matches!(
        error,
        Error::Disconnected { .. }
            | Error::Connect { .. }
            | Error::Blocked { .. }
            | Error::ConfirmTimeout { .. }
            | Error::Broker { .. }
    )
}

/// A row the broker refused: tried again later, or moved aside once it can never go out.
fn refused(row: &Row, error: &Error, options: &RelayOptions, settled: &mut Settled) {
    let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
    let never = matches!(error, Error::TooLarge { .. } | Error::TooLong { .. });
    if never || attempts >= options.max_attempts {
        tracing::error!(
            message_id = %row.message_id, destination = %row.destination, pattern = %row.routing_key,
            attempts, %error, "outbox row cannot be published; moved to rmq_bus_outbox_dead"
        );
        settled.poison.push((row.id, reason(error)));
    } else {
        // The rows behind it go first meanwhile.
        let delay = retry_delay(attempts);
        tracing::warn!(
            message_id = %row.message_id, destination = %row.destination, attempts, %error,
            "outbox row refused; trying again later"
        );
        settled
            .retry
            .push((row.id, now_ms().saturating_add(delay), reason(error)));
    }
}

/// How long a row refused `attempts` times waits: 1 s, 2 s, 4 s, … up to a minute.
fn retry_delay(attempts: u32) -> i64 {
    (1_000_i64 << attempts.saturating_sub(1).min(6)).min(60_000)
}

/// A row as the event it was emitted as: same body, message id, correlation and trace.
fn prepare(client: &ClientProxy, row: &Row) -> Prepared {
    let mut properties = Properties {
        delivery_mode: Some(client.delivery_mode()),
        correlation_id: row.correlation_id.clone(),
        message_id: Some(row.message_id.clone()),
        ..Properties::default()
    };
    if let Some(traceparent) = &row.traceparent {
        properties
            .headers
            .insert("traceparent".to_owned(), traceparent.clone().into());
    }
    Prepared {
        pattern: Pattern::from(row.routing_key.as_str()),
        body: row.body.clone(),
        properties,
    }
}
