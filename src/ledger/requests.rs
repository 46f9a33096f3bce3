//! Request ids (AIP-155): a retried command with the same request id and the
//! same parameters gets the original outcome instead of being applied again.
//!
//! Each remembered request keeps its parameters (to tell a retry from a
//! reuse), its outcome (the id it produced, or the refusal), and when it was
//! accepted. Entries are dropped in acceptance order once older than the
//! retention, so memory is bounded by the request rate times the retention.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::holds::HoldId;
use super::{
    Capture, Hold, Ledger, LedgerError, Outcome, Refund, Release, Request, Spend, SpendId,
    Transaction, TransactionId,
};

/// The longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// What a request asked for; a retry must ask for the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestParams {
    /// AddTransaction.
    AddTransaction {
        /// The payer.
        payer: String,
        /// The points.
        points: i64,
        /// The timestamp.
        timestamp: DateTime<Utc>,
    },
    /// Spend.
    Spend {
        /// The points.
        points: i64,
    },
    /// HoldPoints.
    Hold {
        /// The points.
        points: i64,
        /// The timeout, in milliseconds.
        timeout_ms: i64,
    },
    /// CaptureHold.
    Capture {
        /// The hold.
        hold_id: HoldId,
        /// The points (0: all).
        points: i64,
    },
    /// ReleaseHold.
    Release {
        /// The hold.
        hold_id: HoldId,
    },
    /// RefundSpend.
    Refund {
        /// The spend.
        spend_id: SpendId,
        /// The points (0: all that is left).
        points: i64,
    },
}

impl RequestParams {
    /// The command these parameters ask for, run on `ledger` (whose clock
    /// the caller has advanced), with the id a retry is answered from: the
    /// transaction's, spend's or hold's id, or for a refund its event's
    /// place in the history's events plus one.
    fn run(&self, ledger: &mut Ledger) -> Result<(u64, Executed), LedgerError> {
        Ok(match self {
            Self::AddTransaction { payer, points, timestamp } => {
                let transaction = ledger.add_transaction(payer, *points, *timestamp)?;
                (transaction.id, Executed::Transaction(transaction))
            }
            Self::Spend { points } => {
                let spend = ledger.spend(*points)?;
                (spend.id, Executed::Spend(spend))
            }
            Self::Hold { points, timeout_ms } => {
                let hold = ledger.hold(*points, *timeout_ms)?;
                (hold.id, Executed::Hold(hold))
            }
            Self::Capture { hold_id, points } => {
                let capture = ledger.capture(*hold_id, *points)?;
                (capture.spend.id, Executed::Capture(capture))
            }
            Self::Release { hold_id } => (*hold_id, Executed::Release(ledger.release(*hold_id)?)),
            Self::Refund { spend_id, points } => {
                let refund = ledger.refund(*spend_id, *points)?;
                (ledger.last_refund_event() as u64 + 1, Executed::Refund(refund))
            }
        })
    }

    /// The reply of an earlier execution with outcome `id`, rebuilt.
    fn reply(&self, ledger: &Ledger, id: u64) -> Executed {
        match self {
            Self::AddTransaction { .. } => Executed::Transaction(ledger.transaction(id)),
            Self::Spend { .. } => Executed::Spend(ledger.spend_reply(id as usize - 1)),
            Self::Hold { .. } => Executed::Hold(ledger.hold_reply(id)),
            Self::Capture { .. } => Executed::Capture(ledger.capture_reply(id)),
            Self::Release { .. } => Executed::Release(ledger.release_reply(id)),
            Self::Refund { .. } => Executed::Refund(ledger.refund_reply(id as usize - 1)),
        }
    }

    /// Whether `id` can be the outcome of these parameters in `ledger`: an
    /// existing entry of the right kind, so that a retry's reply can be
    /// rebuilt from it (checked on restore).
    pub(super) fn outcome_fits(&self, ledger: &Ledger, id: u64) -> bool {
        let Some(index) = id.checked_sub(1).and_then(|index| usize::try_from(index).ok()) else {
            return false;
        };
        match self {
            Self::AddTransaction { .. } => index < ledger.transactions.len(),
            Self::Spend { .. } => ledger.spends.get(index).is_some_and(|spend| spend.hold_id == 0),
            Self::Capture { .. } => {
                ledger.spends.get(index).is_some_and(|spend| spend.hold_id != 0)
            }
            Self::Hold { .. } => index < ledger.holds.len(),
            Self::Release { .. } => ledger
                .holds
                .get(index)
                .is_some_and(|hold| matches!(hold.state, super::HoldState::Released { .. })),
            Self::Refund { .. } => ledger
                .events
                .get(index)
                .is_some_and(|event| matches!(event.event, super::Event::Refund { .. })),
        }
    }
}

/// What a command executed, as its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    /// A transaction recorded.
    Transaction(Transaction),
    /// A spend.
    Spend(Spend),
    /// A hold opened.
    Hold(Hold),
    /// A hold captured.
    Capture(Capture),
    /// A hold released.
    Release(Release),
    /// A spend refunded.
    Refund(Refund),
}

/// A remembered request, as stored in snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The caller's request id.
    pub request_id: String,
    /// What it asked for.
    pub params: RequestParams,
    /// The id of the transaction or spend it produced, or its refusal.
    pub outcome: Result<u64, LedgerError>,
    /// When it was accepted, in milliseconds since 1970-01-01T00:00:00Z.
    pub accepted_at_ms: i64,
}

#[derive(Debug, Clone)]
struct Remembered {
    params: RequestParams,
    outcome: Result<u64, LedgerError>,
    accepted_at_ms: i64,
}

/// The remembered requests of one user.
#[derive(Debug, Clone, Default)]
pub(super) struct RequestLog {
    by_id: HashMap<Arc<str>, Remembered>,
    /// (accepted at, id) in acceptance order, for dropping expired entries.
    by_age: VecDeque<(i64, Arc<str>)>,
}

impl RequestLog {
    /// The remembered request `request_id`, if still within `retention_ms` of `now_ms`.
    pub(super) fn get(
        &self,
        request_id: &str,
        now_ms: i64,
        retention_ms: i64,
    ) -> Option<(&RequestParams, &Result<u64, LedgerError>)> {
        self.by_id
            .get(request_id)
            .filter(|entry| now_ms < entry.accepted_at_ms.saturating_add(retention_ms))
            .map(|entry| (&entry.params, &entry.outcome))
    }

    /// Remembers a request, replacing an expired one with the same id.
    pub(super) fn insert(&mut self, record: RequestRecord) {
        let id: Arc<str> = record.request_id.into();
        self.by_age.push_back((record.accepted_at_ms, Arc::clone(&id)));
        let remembered = Remembered {
            params: record.params,
            outcome: record.outcome,
            accepted_at_ms: record.accepted_at_ms,
        };
        self.by_id.insert(id, remembered);
    }

    /// Drops every request accepted `retention_ms` or more before `now_ms`.
    /// Amortised O(1) per request ever remembered.
    pub(super) fn purge(&mut self, now_ms: i64, retention_ms: i64) {
        while let Some((accepted_at_ms, _)) = self.by_age.front() {
            if now_ms < accepted_at_ms.saturating_add(retention_ms) {
                break;
            }
            let (accepted_at_ms, id) = self.by_age.pop_front().expect("front exists");
            // The id may have been reused after expiring: drop only this entry.
            if self.by_id.get(&id).is_some_and(|entry| entry.accepted_at_ms == accepted_at_ms) {
                self.by_id.remove(&id);
            }
        }
        if self.by_id.is_empty() {
            self.by_age.shrink_to(64);
        }
    }

    /// How many requests are remembered.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every remembered request, oldest first, for snapshots.
    pub(super) fn records(&self) -> impl Iterator<Item = RequestRecord> + '_ {
        self.by_age.iter().filter_map(|(accepted_at_ms, id)| {
            let entry = self.by_id.get(id)?;
            (entry.accepted_at_ms == *accepted_at_ms).then(|| RequestRecord {
                request_id: id.to_string(),
                params: entry.params.clone(),
                outcome: entry.outcome.clone(),
                accepted_at_ms: entry.accepted_at_ms,
            })
        })
    }
}

impl Ledger {
    /// The transaction with `id` (which must exist), rebuilt from the history.
    pub(super) fn transaction(&self, id: TransactionId) -> Transaction {
        let record = &self.transactions[id as usize - 1];
        Transaction {
            id,
            payer: self.payers[record.payer_index as usize].name.to_string(),
            points: record.points,
            timestamp: record.timestamp,
        }
    }

    /// Executes a command once per request id: a retry with the same id
    /// and parameters gets the original outcome, a reuse with other
    /// parameters is refused with [`LedgerError::RequestIdReused`]. The
    /// caller has advanced the ledger's clock. The reply comes with its
    /// outcome id (see [`Ledger::replay`]).
    pub fn execute(
        &mut self,
        request: Option<Request<'_>>,
        params: RequestParams,
    ) -> Outcome<(u64, Executed)> {
        match request.map(|request| self.remembered(request, &params)) {
            Some(Some(outcome)) => outcome.map(|id| (id, params.reply(self, id))),
            _ => Outcome::Fresh(
                self.replay(request.map(|request| (request.id, request.now_ms)), params),
            ),
        }
    }

    /// Records a transaction once per request id; see [`Ledger::execute`].
    pub fn execute_add_transaction(
        &mut self,
        request: Option<Request<'_>>,
        payer: &str,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Outcome<Transaction> {
        let params = RequestParams::AddTransaction { payer: payer.to_owned(), points, timestamp };
        self.execute(request, params).map(|(_, executed)| match executed {
            Executed::Transaction(transaction) => transaction,
            other => unreachable!("an AddTransaction executed as {other:?}"),
        })
    }

    /// Spends once per request id; see [`Ledger::execute`].
    pub fn execute_spend(&mut self, request: Option<Request<'_>>, points: i64) -> Outcome<Spend> {
        self.execute(request, RequestParams::Spend { points }).map(|(_, executed)| match executed {
            Executed::Spend(spend) => spend,
            other => unreachable!("a Spend executed as {other:?}"),
        })
    }

    /// The remembered outcome of `request`, as ids, if it is a retry (or a
    /// refusal if the id was reused); `None` if the request is new.
    fn remembered(&mut self, request: Request<'_>, params: &RequestParams) -> Option<Outcome<u64>> {
        self.requests.purge(request.now_ms, request.retention_ms);
        let Some((remembered_params, outcome)) =
            self.requests.get(request.id, request.now_ms, request.retention_ms)
        else {
            if self.requests.len() >= request.max_remembered {
                return Some(Outcome::Fresh(Err(LedgerError::RequestIdLimitReached {
                    limit: request.max_remembered,
                })));
            }
            return None;
        };
        if remembered_params != params {
            return Some(Outcome::Fresh(Err(LedgerError::RequestIdReused {
                request_id: request.id.to_owned(),
            })));
        }
        Some(Outcome::Repeated(outcome.clone()))
    }

    /// Executes a command without looking the request id up, remembering
    /// it if given as (id, accepted at ms): what the journal replays, where
    /// every record is a command that was executed. The reply comes with
    /// its outcome id: the transaction's, spend's or hold's id, or for a
    /// refund its place among the history's events plus one.
    pub fn replay(
        &mut self,
        request: Option<(&str, i64)>,
        params: RequestParams,
    ) -> Result<(u64, Executed), LedgerError> {
        let result = params.run(self);
        if let Some((request_id, accepted_at_ms)) = request {
            let outcome = result.as_ref().map(|&(id, _)| id);
            self.remember(request_id, accepted_at_ms, params, outcome);
        }
        result
    }

    /// Records a transaction without looking the request id up; see
    /// [`Ledger::replay`].
    pub fn replay_add_transaction(
        &mut self,
        request: Option<(&str, i64)>,
        payer: &str,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Result<Transaction, LedgerError> {
        let params = RequestParams::AddTransaction { payer: payer.to_owned(), points, timestamp };
        self.replay(request, params).map(|(_, executed)| match executed {
            Executed::Transaction(transaction) => transaction,
            other => unreachable!("an AddTransaction executed as {other:?}"),
        })
    }

    /// Spends without looking the request id up; see [`Ledger::replay`].
    pub fn replay_spend(
        &mut self,
        request: Option<(&str, i64)>,
        points: i64,
    ) -> Result<Spend, LedgerError> {
        self.replay(request, RequestParams::Spend { points }).map(|(_, executed)| match executed {
            Executed::Spend(spend) => spend,
            other => unreachable!("a Spend executed as {other:?}"),
        })
    }

    fn remember(
        &mut self,
        request_id: &str,
        accepted_at_ms: i64,
        params: RequestParams,
        outcome: Result<u64, &LedgerError>,
    ) {
        // Refusals that depend on the request alone are refused again anyway.
        if let Err(error) = outcome
            && !error.depends_on_state()
        {
            return;
        }
        self.requests.insert(RequestRecord {
            request_id: request_id.to_owned(),
            params,
            outcome: outcome.map_err(Clone::clone),
            accepted_at_ms,
        });
    }

    /// Forgets request ids accepted `retention_ms` or more before `now_ms`.
    pub fn purge_requests(&mut self, now_ms: i64, retention_ms: i64) {
        self.requests.purge(now_ms, retention_ms);
    }

    /// How many request ids are remembered.
    pub fn remembered_request_count(&self) -> usize {
        self.requests.len()
    }
}
