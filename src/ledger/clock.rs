//! Time in the ledger: points that expire, holds that time out, and the
//! "expiring soon" list.
//!
//! The core reads no clock. Every command is preceded by
//! [`Ledger::advance`] with the time it was accepted at (recorded in the
//! journal, so that replay gives the same result); advancing releases the
//! holds that timed out and expires points. The ledger's time never goes
//! back, even if the clocks of the servers writing it disagree.
//!
//! Expiry fits the rule that a payer's remaining points are its newest:
//! expiring at time t makes the payer's deductions at least the points it
//! was credited with timestamps at or before t − validity, so what expires
//! is always its oldest points left. Each payer's next expiry is therefore
//! its front lot's, and the ledger's next one is its oldest front's: found
//! in O(1), and each payer that expires costs O(log n).

use chrono::{DateTime, TimeDelta, Utc};

use super::{Event, Ledger, LotKey, MAX_TRANSACTION_ID, PayerIndex};

/// The longest validity points may have: 100 years, in milliseconds. Keeps
/// every expiry time far inside the timestamps a ledger can represent.
pub const MAX_POINTS_VALIDITY_MS: i64 = 100 * 366 * 24 * 60 * 60 * 1000;

/// The time a command runs at and how long points stay valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// Now, in milliseconds since 1970-01-01T00:00:00Z.
    pub now_ms: i64,
    /// How long a lot's points stay valid after its timestamp, in
    /// milliseconds; `None`: points never expire.
    pub points_validity_ms: Option<i64>,
}

impl Clock {
    /// The newest lot key whose points have expired: lots with a timestamp at
    /// or before now − validity. `None` when points never expire (or the cut
    /// lies before every representable time).
    pub(super) fn cutoff(&self) -> Option<LotKey> {
        let validity_ms = self.points_validity_ms?;
        let cutoff = DateTime::from_timestamp_millis(self.now_ms.checked_sub(validity_ms)?)?;
        Some(LotKey::new(cutoff, MAX_TRANSACTION_ID))
    }

    /// Whether a lot with `timestamp` has expired by now.
    pub(super) fn arrives_expired(&self, timestamp: DateTime<Utc>) -> bool {
        self.cutoff().is_some_and(|cutoff| LotKey::new(timestamp, 0) <= cutoff)
    }
}

/// Points of one payer that expire within a window, and when the first of
/// them do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringPoints {
    /// The partner.
    pub payer: String,
    /// Points that expire within the window.
    pub points: i64,
    /// When the first of them expire.
    pub expire_time: DateTime<Utc>,
}

impl Ledger {
    /// Moves the ledger's time to `clock` (never back): releases every hold
    /// that timed out by then, oldest timeout first, and expires every point
    /// past its validity. Returns whether anything changed, which a store
    /// must then keep as it keeps a command. O(log n) per hold released and
    /// per payer whose points expire.
    pub fn advance(&mut self, clock: Clock) -> bool {
        self.clock = Clock { now_ms: clock.now_ms.max(self.clock.now_ms), ..clock };
        let now_ms = self.clock.now_ms;
        let mut changed = false;
        // Bounded: each turn closes one open hold.
        while let Some(&(expire_at_ms, hold_id)) = self.open_holds.first()
            && expire_at_ms <= now_ms
        {
            self.release_timed_out(hold_id);
            changed = true;
        }
        changed | self.expire_due()
    }

    /// The clock of the last [`Ledger::advance`]: the ledger's time (the
    /// latest it has seen) and the validity it ran with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Puts the clock back to `clock`, as it was before an [`Ledger::advance`]
    /// that changed nothing else: for a store that keeps no record of a call,
    /// so that the ledger's time only ever moves with a kept record (which
    /// replay then repeats).
    pub fn rewind_clock(&mut self, clock: Clock) {
        debug_assert!(clock.now_ms <= self.clock.now_ms, "a rewind undoes an advance");
        self.clock = clock;
    }

    /// Expires what has expired at the ledger's time, and records one
    /// expiration entry for it; returns whether anything expired. Called
    /// after every change that gives points back, since points given back
    /// to a payer whose newest used-up points have expired expire at once.
    pub(super) fn expire_due(&mut self) -> bool {
        let Some(cutoff) = self.clock.cutoff() else { return false };
        let mut expired: Vec<(PayerIndex, i64)> = Vec::new();
        // Bounded: each turn moves one payer's front past the cut.
        while let Some((&front, &index)) = self.fronts.first_key_value()
            && front <= cutoff
        {
            let points =
                self.update_payer(index, |payer, arena| payer.expire_through(arena, cutoff));
            assert!(points > 0, "a payer whose front is past its validity has points to expire");
            self.total -= points;
            expired.push((index, points));
            assert!(expired.len() <= self.payers.len(), "each payer expires once per step");
        }
        if expired.is_empty() {
            return false;
        }
        self.push_event(Event::Expiration { expired });
        true
    }

    /// When this ledger next changes by itself (a hold times out, or its
    /// oldest points expire) under `points_validity_ms`, in milliseconds
    /// since 1970-01-01T00:00:00Z; `None` if nothing is waiting. O(1).
    pub fn next_due_ms(&self, points_validity_ms: Option<i64>) -> Option<i64> {
        let hold = self.open_holds.first().map(|&(expire_at_ms, _)| expire_at_ms);
        let expiry = points_validity_ms.and_then(|validity_ms| {
            let (&front, _) = self.fronts.first_key_value()?;
            Some(front.expire_at_ms(validity_ms))
        });
        hold.into_iter().chain(expiry).min()
    }

    /// Per payer, the points that expire within `within_ms` after `clock`'s
    /// time (or the ledger's, if later), and when the first of them do,
    /// ordered by that time (then by payer). Empty when points never
    /// expire. Expects a ledger advanced to `clock`, so that nothing it
    /// holds has expired already. O(log n) per payer.
    pub fn expiring_points(&self, clock: Clock, within_ms: i64) -> Vec<ExpiringPoints> {
        let Some(validity_ms) = clock.points_validity_ms else { return Vec::new() };
        let now_ms = clock.now_ms.max(self.clock.now_ms);
        let window = Clock { now_ms: now_ms.saturating_add(within_ms), ..clock };
        let Some(limit) = window.cutoff() else { return Vec::new() };
        let mut expiring: Vec<ExpiringPoints> = self
            .payers
            .iter()
            .filter_map(|payer| {
                let (first, points) = payer.left_through(&self.arena, limit)?;
                let expire_time = DateTime::from_timestamp(first.seconds, first.nanos())?
                    .checked_add_signed(TimeDelta::milliseconds(validity_ms))?;
                Some(ExpiringPoints { payer: payer.name.to_string(), points, expire_time })
            })
            .collect();
        expiring.sort_by(|a, b| (a.expire_time, &a.payer).cmp(&(b.expire_time, &b.payer)));
        expiring
    }
}

impl LotKey {
    /// The nanoseconds within the second of this lot's timestamp.
    pub(super) fn nanos(&self) -> u32 {
        // Below 2^30 by construction.
        (self.nanos_and_id >> Self::ID_BITS) as u32
    }

    /// When this lot's points expire under `validity_ms`, in whole
    /// milliseconds (rounded up, so that a ledger advanced to it expires
    /// the lot), saturating far outside any real time.
    pub(super) fn expire_at_ms(&self, validity_ms: i64) -> i64 {
        let millis =
            self.seconds.saturating_mul(1000) + i64::from(self.nanos().div_ceil(1_000_000));
        millis.saturating_add(validity_ms)
    }
}
