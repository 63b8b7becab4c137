//! Reporting an attempt's outcome to the store without holding up the response: plain
//! successes go into the pool's batch (`successes.rs`), everything else is its own call.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::pool::Outcome;
use crate::state::AppState;
use crate::store::budget::ProviderHints;
use crate::store::successes::Ticket;
use crate::store::KeyStoreExt;
use crate::store::{Chosen, Report};

/// Where a success report stands: sent by its own background task, or buffered in a batch.
pub(crate) enum Reported {
    Task(JoinHandle<()>),
    Batched(Ticket),
}

impl Reported {
    /// Returns once the success reached the store (flushing its batch early if need be).
    async fn landed(self) {
        match self {
            Reported::Task(task) => {
                let _ = task.await;
            }
            Reported::Batched(ticket) => ticket.landed().await,
        }
    }
}

/// Reports a success without holding up the response: buffered for the next batch when it is a
/// plain one; a probe's (it closes the breaker) and one with a cooldown hint go at once.
/// `hints`: what the answer said about the key's budget, in a pool with budgets (it rides the
/// batch; README "Budgets").
pub(crate) fn report_success(
    state: &Arc<AppState>,
    pool: &str,
    chosen: &Chosen,
    cooldown_ms: Option<u64>,
    status: u16,
    hints: Option<ProviderHints>,
) -> Reported {
    if !chosen.probe && cooldown_ms.is_none() {
        if let Some(ticket) = state.successes.record(pool, &chosen.key, status, hints) {
            return Reported::Batched(ticket);
        }
    }
    Reported::Task(report_in_background(
        state,
        pool,
        chosen,
        Outcome::Success,
        cooldown_ms,
        status,
        None,
    ))
}

/// Reports an outcome without holding up the response; when `after` is given (the success
/// reported when a streamed answer began), waits until it landed first, so a mid-stream failure
/// is applied after that success and not wiped out by it.
pub(crate) fn report_in_background(
    state: &Arc<AppState>,
    pool: &str,
    chosen: &Chosen,
    outcome: Outcome,
    cooldown_ms: Option<u64>,
    status: u16,
    after: Option<Reported>,
) -> JoinHandle<()> {
    let (state2, pool, key, probe) = (
        state.clone(),
        pool.to_string(),
        chosen.key.clone(),
        chosen.probe,
    );
    state.tasks.spawn(async move {
        if let Some(first) = after {
            first.landed().await;
        }
        let r = Report {
            key: &key,
            outcome,
            cooldown_ms,
            http_status: status,
            probe,
            now_ms: None,
        };
        match state2.store.report(&pool, &r).await {
            Ok(rc) if rc.changed => {
                state2
                    .metrics
                    .record_cooldown(&pool, key.as_str(), rc.state, outcome)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pool = %pool, key = %key, error = %e, "store report failed"),
        }
    })
}
