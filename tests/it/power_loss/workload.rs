//! The workloads of the power-loss cases, and the reference model they are
//! checked against.

use super::epoch;
use crate::common::operations::comparable_state;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use points::StoreOptions;
use points::ledger::{Ledger, LedgerState, NewTransaction, Request};

pub(super) const USERS: [&str; 3] = ["alice", "bob", "default"];
const PAYERS: [&str; 3] = ["DANNON", "UNILEVER", "MILLER COORS"];

/// One step of a workload.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Add {
        user: &'static str,
        request_id: Option<String>,
        payer: &'static str,
        points: i64,
        timestamp: DateTime<Utc>,
    },
    Spend {
        user: &'static str,
        request_id: Option<String>,
        points: i64,
    },
    Batch {
        user: &'static str,
        entries: Vec<(&'static str, i64, DateTime<Utc>)>,
    },
    Snapshot,
}

/// A random workload: adds (some taking points back), spends, batches,
/// request ids that are retried or reused, and snapshots.
pub(super) fn workload(rng: &mut fastrand::Rng) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut request_ids: Vec<Step> = Vec::new();
    let length = rng.usize(5..60);
    for _ in 0..length {
        let user = USERS[rng.usize(..USERS.len())];
        let request_id = rng.bool().then(|| format!("r{}", rng.u32(..1000)));
        let step = match rng.u32(..100) {
            0..=39 => Step::Add {
                user,
                request_id,
                payer: PAYERS[rng.usize(..PAYERS.len())],
                points: if rng.u32(..4) == 0 { -rng.i64(1..300) } else { rng.i64(1..500) },
                timestamp: epoch() + TimeDelta::hours(rng.i64(0..48)),
            },
            40..=64 => Step::Spend { user, request_id, points: rng.i64(1..600) },
            65..=79 => Step::Batch {
                user,
                entries: (0..rng.usize(1..6))
                    .map(|_| {
                        let points =
                            if rng.u32(..5) == 0 { -rng.i64(1..100) } else { rng.i64(1..300) };
                        (
                            PAYERS[rng.usize(..PAYERS.len())],
                            points,
                            epoch() + TimeDelta::hours(rng.i64(0..48)),
                        )
                    })
                    .collect(),
            },
            80..=89 if !request_ids.is_empty() => {
                request_ids[rng.usize(..request_ids.len())].clone()
            }
            _ => Step::Snapshot,
        };
        if matches!(
            &step,
            Step::Add { request_id: Some(_), .. } | Step::Spend { request_id: Some(_), .. }
        ) {
            request_ids.push(step.clone());
        }
        steps.push(step);
    }
    steps
}

/// A batch step's entries as the store and the ledger take them.
pub(super) fn new_transactions(
    entries: &[(&'static str, i64, DateTime<Utc>)],
) -> Vec<NewTransaction<'static>> {
    let new = |&(payer, points, timestamp): &(&'static str, i64, DateTime<Utc>)| NewTransaction {
        payer,
        points,
        timestamp,
    };
    entries.iter().map(new).collect()
}

/// The ledger request of a step's `request_id`, accepted at `now_ms`.
fn request(request_id: &Option<String>, now_ms: i64) -> Option<Request<'_>> {
    request_id.as_deref().map(|id| Request {
        id,
        now_ms,
        retention_ms: StoreOptions::DEFAULT_REQUEST_ID_RETENTION_MS,
        max_remembered: StoreOptions::DEFAULT_MAX_REQUEST_IDS_PER_USER,
    })
}

/// The reference: each user's pure ledger, driven by the same steps.
#[derive(Default)]
pub(super) struct Model {
    pub(super) ledgers: HashMap<&'static str, Ledger>,
}

impl Model {
    pub(super) fn apply(&mut self, step: &Step) {
        self.apply_to_ledgers(step);
        // A refused command for a user with no ledger leaves none (the store
        // never creates a user for a refusal, nor remembers it).
        self.ledgers.retain(|_, ledger| ledger.history_len() > 0);
    }

    fn apply_to_ledgers(&mut self, step: &Step) {
        let now_ms = Utc::now().timestamp_millis();
        match step {
            Step::Add { user, request_id, payer, points, timestamp } => {
                let ledger = self.ledgers.entry(user).or_default();
                let request = request(request_id, now_ms);
                let _ = ledger.execute_add_transaction(request, payer, *points, *timestamp);
            }
            Step::Spend { user, request_id, points } => {
                let ledger = self.ledgers.entry(user).or_default();
                let _ = ledger.execute_spend(request(request_id, now_ms), *points);
            }
            Step::Batch { user, entries } => {
                let ledger = self.ledgers.entry(user).or_default();
                let _ = ledger.add_transactions(&new_transactions(entries));
            }
            Step::Snapshot => {}
        }
    }

    pub(super) fn states(&self) -> BTreeMap<&'static str, LedgerState> {
        USERS
            .iter()
            .map(|user| (*user, self.ledgers.get(user).map(comparable_state).unwrap_or_default()))
            .collect()
    }
}
