//! The commands and reads the service runs against a store, each a thin
//! shell over the shared write and read paths: what it executes on the
//! ledger, and the record it keeps.

#[cfg(doc)]
use crate::ledger::Ledger;
use chrono::{DateTime, Utc};

use super::embedded::records::{
    AddTransactionRecord, AddTransactionsRecord, Command, SpendRecord, command_of,
};
use super::{HEAVY_BATCH_ENTRIES, PayerName, ReadFrom, RequestId, Store, StoreError, UserId};
use crate::ledger::{
    Executed, ExpiringPoints, HistoryCursor, HistoryPage, NewTransaction, Outcome, PageLimits,
    RequestParams, Spend, Transaction,
};

/// Balances as GetBalances shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balances {
    /// Every payer ever credited with its balance, 0 included.
    pub balances: Vec<(String, i64)>,
    /// Every payer with points in open holds, and how many.
    pub held: Vec<(String, i64)>,
    /// The history position they reflect: that of the last entry included.
    pub position: u64,
}

/// Why there is nothing as of a place in a user's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOfRefusal {
    /// The position is past the end of the history, which has
    /// `history_len` entries.
    PastTheEnd { history_len: u64 },
    /// The time falls among the first `unknown` entries, kept before accept
    /// times were (see [`Ledger::position_at_time`]).
    AcceptTimeUnknown { unknown: u64 },
}

/// When balances are read as of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Now.
    Now,
    /// Right after the history entry at this position (0: before any).
    Position(u64),
    /// Right after the last entry accepted at or before this time, in
    /// milliseconds since 1970-01-01T00:00:00Z.
    Time(i64),
}

impl Store {
    /// Records a transaction for `user_id`; see [`Ledger::execute_add_transaction`].
    /// Returns once the change is durable.
    pub async fn add_transaction(
        &self,
        user_id: UserId<'_>,
        request_id: Option<RequestId<'_>>,
        payer: PayerName<'_>,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Result<Transaction, StoreError> {
        let payer = payer.as_str();
        let max_payers = self.limits.max_payers_per_user;
        self.write(
            user_id,
            request_id,
            false,
            |ledger, request| {
                // Only new payers count; a retry of an accepted credit always
                // names a payer that exists.
                if points > 0 && !ledger.has_payer(payer) && ledger.payer_count() >= max_payers {
                    return Err(StoreError::PayerLimitReached {
                        limit: max_payers,
                        batch_index: None,
                    });
                }
                Ok(ledger.execute_add_transaction(request, payer, points, timestamp))
            },
            |result| {
                let id = result.as_ref().map_or(0, |transaction| transaction.id);
                Command::AddTransaction(AddTransactionRecord::new(payer, points, timestamp, id))
            },
        )
        .await
    }

    /// Records a batch for `user_id`, all or nothing; see
    /// [`Ledger::add_transactions`]. One journal record, so one fsync.
    pub async fn add_transactions(
        &self,
        user_id: UserId<'_>,
        batch: &[NewTransaction<'_>],
    ) -> Result<Vec<Transaction>, StoreError> {
        let max_payers = self.limits.max_payers_per_user;
        self.write(
            user_id,
            None,
            batch.len() >= HEAVY_BATCH_ENTRIES,
            |ledger, _| {
                // New payers count against the limit in the order they appear.
                let mut new_payers = std::collections::HashSet::new();
                for (index, entry) in batch.iter().enumerate() {
                    if entry.points > 0
                        && !ledger.has_payer(entry.payer)
                        && new_payers.insert(entry.payer)
                        && ledger.payer_count() + new_payers.len() > max_payers
                    {
                        return Err(StoreError::PayerLimitReached {
                            limit: max_payers,
                            batch_index: Some(index),
                        });
                    }
                }
                Ok(Outcome::Fresh(ledger.add_transactions(batch)))
            },
            |result| {
                let transactions = result.as_deref().unwrap_or_default();
                Command::AddTransactions(AddTransactionsRecord {
                    transactions: transactions
                        .iter()
                        .map(|done| {
                            AddTransactionRecord::new(
                                &done.payer,
                                done.points,
                                done.timestamp,
                                done.id,
                            )
                        })
                        .collect(),
                })
            },
        )
        .await
    }

    /// Spends `user_id`'s points; see [`Ledger::execute_spend`]. Returns once
    /// the change is durable.
    pub async fn spend(
        &self,
        user_id: UserId<'_>,
        request_id: Option<RequestId<'_>>,
        points: i64,
    ) -> Result<Spend, StoreError> {
        self.write(
            user_id,
            request_id,
            false,
            |ledger, request| Ok(ledger.execute_spend(request, points)),
            |result| {
                Command::Spend(SpendRecord {
                    points,
                    spend_id: result.as_ref().map_or(0, |spend| spend.id),
                })
            },
        )
        .await
    }

    /// Holds, captures, releases or refunds for `user_id` (see
    /// [`Ledger::execute`]); returns once the change is durable.
    pub async fn execute(
        &self,
        user_id: UserId<'_>,
        request_id: Option<RequestId<'_>>,
        params: RequestParams,
    ) -> Result<Executed, StoreError> {
        self.write(
            user_id,
            request_id,
            false,
            |ledger, request| Ok(ledger.execute(request, params.clone())),
            |result| command_of(&params, result.as_ref().map_or(0, |&(id, _)| id)),
        )
        .await
        .map(|(_, executed)| executed)
    }

    /// `user_id`'s balances and held points now or as they were at `as_of`
    /// (see [`Ledger::points_as_of`]), once every change they reflect is
    /// durable, or why there are none for `as_of`.
    pub async fn balances_as_of(
        &self,
        user_id: UserId<'_>,
        as_of: AsOf,
    ) -> Result<Result<Balances, AsOfRefusal>, StoreError> {
        self.read(user_id, |ledger| {
            let owned = |(payer, points): (&str, i64)| (payer.to_owned(), points);
            let history_len = ledger.history_len() as u64;
            let position = match as_of {
                AsOf::Now => {
                    return Ok(Balances {
                        balances: ledger.balances().map(owned).collect(),
                        held: ledger.held().map(owned).collect(),
                        position: history_len,
                    });
                }
                AsOf::Position(position) => position,
                AsOf::Time(time_ms) => ledger
                    .position_at_time(time_ms)
                    .map_err(|unknown| AsOfRefusal::AcceptTimeUnknown { unknown })?,
            };
            let points =
                ledger.points_as_of(position).ok_or(AsOfRefusal::PastTheEnd { history_len })?;
            Ok(Balances {
                balances: points
                    .iter()
                    .map(|&(payer, balance, _)| owned((payer, balance)))
                    .collect(),
                held: points
                    .iter()
                    .filter(|&&(_, _, held)| held > 0)
                    .map(|&(payer, _, held)| owned((payer, held)))
                    .collect(),
                position,
            })
        })
        .await
    }

    /// The place in `user_id`'s history lists right after the entry at
    /// `position`, or the length of the history it is past the end of. See
    /// [`Ledger::cursor_after`].
    pub async fn cursor_after(
        &self,
        user_id: UserId<'_>,
        position: u64,
    ) -> Result<Result<HistoryCursor, AsOfRefusal>, StoreError> {
        self.read(user_id, |ledger| {
            let history_len = ledger.history_len() as u64;
            ledger.cursor_after(position).ok_or(AsOfRefusal::PastTheEnd { history_len })
        })
        .await
    }

    /// Per payer, `user_id`'s points that expire within `within_ms` from
    /// now, earliest first; see [`Ledger::expiring_points`].
    pub async fn expiring_points(
        &self,
        user_id: UserId<'_>,
        within_ms: i64,
    ) -> Result<Vec<ExpiringPoints>, StoreError> {
        let clock = self.clock_now();
        self.read(user_id, |ledger| ledger.expiring_points(clock, within_ms)).await
    }

    /// Every payer ever credited to `user_id` with its balance (none for an
    /// unknown user), once every change it reflects is durable.
    pub async fn balances(&self, user_id: UserId<'_>) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(user_id, |ledger| {
            ledger.balances().map(|(payer, points)| (payer.to_owned(), points)).collect()
        })
        .await
    }

    /// A page of `user_id`'s history, or `None` if `cursor` is not a position
    /// of it, once every change it reflects is durable. An unknown user has
    /// an empty history. The page stops before its entries' encoded size
    /// passes `max_bytes` (one entry always fits); see
    /// [`Ledger::history_page_within`].
    pub async fn history_page(
        &self,
        user_id: UserId<'_>,
        cursor: HistoryCursor,
        limits: PageLimits,
    ) -> Result<Option<HistoryPage>, StoreError> {
        self.read(user_id, |ledger| ledger.history_page_within(cursor, limits)).await
    }

    /// [`Store::history_page`] for a follower that has read the history
    /// once since it subscribed: on a shared store, the cached ledger as it
    /// is, which [`Store::wake_followers`] brings up to date before waking
    /// the follower (one catch-up per change rather than one per follower
    /// and page). What it shows is durable, as with any read.
    pub async fn followed_history_page(
        &self,
        user_id: UserId<'_>,
        cursor: HistoryCursor,
        limits: PageLimits,
    ) -> Result<Option<HistoryPage>, StoreError> {
        self.read_from(user_id, ReadFrom::Cached, |ledger| {
            ledger.history_page_within(cursor, limits)
        })
        .await
    }
}
