//! One payer's lots and which of them still hold points.
//!
//! Every deduction from a payer takes its oldest points, so what is left is
//! always "every lot but the oldest D points", where D is the points ever
//! debited: the lots before the *front* are used up, the front lot is partly
//! or wholly left, and every lot after it is whole. The state is therefore
//! just the lots (with prefix sums, see [`super::lots`]) plus D; the front is
//! one prefix-sum search away, whatever order the lots arrived in.

use super::LotKey;
use super::lots::{LotArena, LotTree};

/// A payer's lots and remaining points.
#[derive(Debug, Clone)]
pub(super) struct Payer {
    pub(super) name: Box<str>,
    /// Every lot ever credited, with its original points (in the ledger's
    /// arena). Used-up lots are kept because a late, older lot takes the
    /// place of newer points in the payer's past deductions.
    lots: LotTree,
    /// Points ever taken from this payer: they used up its oldest lots.
    debited: i128,
    /// The oldest lot with points left and how many it has left
    /// (1..=original), kept as the lots and `debited` determine it.
    /// `None` exactly when the balance is 0.
    front: Option<(LotKey, i64)>,
    /// The newest lot's key: at or after it, every point is available.
    newest: Option<LotKey>,
    balance: i64,
    /// Points taken by holds still open: out of the balance, and given back
    /// if the hold is released.
    held: i64,
    /// Points spent (captures included) and not refunded: they may come
    /// back, so credits keep room for them below `i64::MAX`.
    refundable: i64,
}

impl Payer {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            lots: LotTree::default(),
            debited: 0,
            front: None,
            newest: None,
            balance: 0,
            held: 0,
            refundable: 0,
        }
    }

    /// Rebuilds a payer from its lots and balance, as written by a snapshot:
    /// the points used up are credited − balance, taken from the oldest lots.
    /// `lots` must be sorted by key with positive points (checked).
    pub(super) fn restore(
        arena: &mut LotArena,
        name: &str,
        balance: i64,
        lots: Vec<(LotKey, i64)>,
    ) -> Result<Self, String> {
        if lots.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(format!("payer {name:?}: lots are not in (timestamp, id) order"));
        }
        if let Some((key, points)) = lots.iter().find(|(_, points)| *points <= 0) {
            return Err(format!("payer {name:?}: lot {key:?} has {points} points"));
        }
        let newest = lots.last().map(|&(key, _)| key);
        let lots = LotTree::from_sorted(arena, &lots);
        let credited = lots.read(arena).total();
        if balance < 0 || i128::from(balance) > credited {
            return Err(format!("payer {name:?}: balance {balance} outside 0..={credited}"));
        }
        let debited = credited - i128::from(balance);
        let front = lots.read(arena).first_past(debited);
        Ok(Self {
            name: name.into(),
            lots,
            debited,
            front,
            newest,
            balance,
            held: 0,
            refundable: 0,
        })
    }

    pub(super) fn balance(&self) -> i64 {
        self.balance
    }

    /// Points in this payer's open holds.
    pub(super) fn held(&self) -> i64 {
        self.held
    }

    /// Points spent from this payer and not refunded.
    pub(super) fn refundable(&self) -> i64 {
        self.refundable
    }

    /// Moves `points` between what is held and what is spent and
    /// refundable, as holds open and resolve and spends are refunded; the
    /// caller keeps both at or above 0.
    pub(super) fn adjust_returnable(&mut self, held_change: i64, refundable_change: i64) {
        self.held += held_change;
        self.refundable += refundable_change;
        assert!(self.held >= 0 && self.refundable >= 0, "points given back were taken first");
    }

    /// Gives `points` back: the payer's deductions shrink, so its newest
    /// used-up points come back (what is left stays its newest points).
    /// The caller gives back only points taken from this payer. O(log n).
    pub(super) fn give_back(&mut self, arena: &LotArena, points: i64) {
        assert!(points > 0 && i128::from(points) <= self.debited, "only taken points come back");
        self.debited -= i128::from(points);
        self.balance += points;
        self.front = self.lots.read(arena).first_past(self.debited);
        debug_assert!(self.front.is_some());
    }

    /// Expires the points left in lots at or before `cutoff`: the payer's
    /// deductions grow to cover them, which are its oldest points. Returns
    /// how many expired. O(log n).
    pub(super) fn expire_through(&mut self, arena: &LotArena, cutoff: LotKey) -> i64 {
        let expired = self.available_through(arena, cutoff);
        if expired > 0 {
            self.debit(arena, expired);
        }
        expired
    }

    /// Points left in lots at or before `limit`, and the key of the oldest
    /// of them, for "expiring soon" lists.
    pub(super) fn left_through(&self, arena: &LotArena, limit: LotKey) -> Option<(LotKey, i64)> {
        let left = self.available_through(arena, limit);
        self.front.filter(|_| left > 0).map(|(key, _)| (key, left))
    }

    /// The key of the oldest lot with points left.
    pub(super) fn front_key(&self) -> Option<LotKey> {
        self.front.map(|(key, _)| key)
    }

    /// Adds a lot. The caller has checked that the balance cannot overflow.
    ///
    /// A lot newer than the front lands among whole lots and moves nothing.
    /// Otherwise it lands among used-up points: the payer's past deductions
    /// now count against it first, which hands the same number of points
    /// back to the newest used-up points, so the front moves to older lots.
    /// O(log n) either way.
    pub(super) fn credit(&mut self, arena: &mut LotArena, key: LotKey, points: i64) {
        assert!(points > 0, "a lot has positive points");
        self.lots.write(arena).insert(key, points);
        self.newest = self.newest.max(Some(key));
        self.balance =
            self.balance.checked_add(points).expect("caller checked the balance for overflow");
        match self.front {
            Some((front_key, _)) if key > front_key => {}
            _ => self.front = self.lots.read(arena).first_past(self.debited),
        }
        debug_assert_eq!(self.front.is_none(), self.balance == 0);
    }

    /// Takes `points` (at most the balance), oldest lots first. O(log n).
    pub(super) fn debit(&mut self, arena: &LotArena, points: i64) {
        assert!(0 < points && points <= self.balance, "caller checked the balance");
        self.balance -= points;
        self.debited += i128::from(points);
        // Taking everything back is common; it needs no search.
        self.front =
            if self.balance == 0 { None } else { self.lots.read(arena).first_past(self.debited) };
        debug_assert_eq!(self.front.is_none(), self.balance == 0);
    }

    /// The points left in lots with a key before `limit` (`None`: all of
    /// them). O(1) when `limit` is at or before the front or after the
    /// newest lot, O(log n) otherwise.
    pub(super) fn available_before(&self, arena: &LotArena, limit: Option<LotKey>) -> i64 {
        match (limit, self.front) {
            (_, None) => 0,
            (Some(limit), Some((front, _))) if limit <= front => 0,
            (Some(limit), _) if Some(limit) <= self.newest => {
                let before = self.lots.read(arena).sum_before(Some(limit));
                Self::clamp_available(before - self.debited, self.balance)
            }
            _ => self.balance,
        }
    }

    /// The points left in lots with a key at or before `limit`; O(1) outside
    /// the front and the newest lot, as [`Payer::available_before`].
    pub(super) fn available_through(&self, arena: &LotArena, limit: LotKey) -> i64 {
        match self.front {
            None => 0,
            Some((front, _)) if limit < front => 0,
            Some(_) if Some(limit) < self.newest => {
                let through = self.lots.read(arena).sum_through(limit);
                Self::clamp_available(through - self.debited, self.balance)
            }
            Some(_) => self.balance,
        }
    }

    /// Points left in a prefix of the lots: between 0 and the balance, so
    /// the cast is exact.
    fn clamp_available(left: i128, balance: i64) -> i64 {
        left.clamp(0, i128::from(balance)) as i64
    }

    /// Takes up to `points` from the lots older than `limit` (the next
    /// payer's front in a spend), and returns how many were taken: a spend
    /// switches payers only there. O(log n).
    pub(super) fn take_before(
        &mut self,
        arena: &LotArena,
        limit: Option<LotKey>,
        points: i64,
    ) -> i64 {
        assert!(points > 0);
        let taken = self.available_before(arena, limit).min(points);
        assert!(taken > 0, "a spend takes from the payer with the oldest front");
        self.debit(arena, taken);
        taken
    }

    /// The payer's lots.
    pub(super) fn lots(&self) -> &LotTree {
        &self.lots
    }

    /// Points ever taken from this payer.
    pub(super) fn debited(&self) -> i128 {
        self.debited
    }

    /// Points still held by the lot with `key`, which must belong to this
    /// payer. O(log n).
    pub(super) fn remaining_in(&self, arena: &LotArena, key: LotKey) -> i64 {
        let (before, original) =
            self.lots.read(arena).find(key).expect("the lot belongs to this payer");
        // Clamped to 0..=original, so the cast is exact.
        (before + i128::from(original) - self.debited).clamp(0, i128::from(original)) as i64
    }

    /// Checks this payer's invariants in O(lots) and returns how many lots
    /// it has; for tests and debugging.
    pub(super) fn check_invariants(&self, arena: &LotArena) -> Result<usize, String> {
        let name = &self.name;
        let lots = self.lots.read(arena);
        let lot_count = lots.check().map_err(|error| format!("payer {name:?}: {error}"))?;
        if self.balance < 0 {
            return Err(format!("payer {name:?} balance {} is negative", self.balance));
        }
        let credited = lots.total();
        if i128::from(self.balance) != credited - self.debited {
            return Err(format!(
                "payer {name:?} balance {} != credited {credited} - debited {}",
                self.balance, self.debited
            ));
        }
        // What is left, lot by lot, oldest points used up first.
        let mut used_up = self.debited;
        let mut front = None;
        for (key, points) in lots.iter() {
            let used = used_up.min(i128::from(points));
            used_up -= used;
            let left = i128::from(points) - used;
            if left > 0 && front.is_none() {
                front = Some((key, left as i64));
            }
            if i128::from(self.remaining_in(arena, key)) != left {
                return Err(format!("payer {name:?} lot {key:?} should have {left} left"));
            }
        }
        if self.newest != lots.iter().last().map(|(key, _)| key) {
            return Err(format!("payer {name:?} newest lot {:?} is wrong", self.newest));
        }
        if front != self.front {
            return Err(format!("payer {name:?} front {:?} should be {front:?}", self.front));
        }
        Ok(lot_count)
    }
}
