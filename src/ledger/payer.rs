//! One payer's lots and which of them still hold points.
//!
//! Every deduction from a payer takes its oldest points, so what is left is
//! always a suffix of its lots in (timestamp, id) order: the lots before the
//! *front* are used up, the front lot is partly or wholly left, and every lot
//! after it is whole. The state is therefore just the lots plus the front.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::LotKey;

/// A payer's lots and remaining points.
#[derive(Debug, Clone)]
pub(super) struct Payer {
    pub(super) name: Box<str>,
    /// Every lot ever credited, with its original points. Used-up lots are
    /// kept because a late, older lot can hand their points back.
    lots: BTreeMap<LotKey, i64>,
    /// The oldest lot with points left and how many it has left (1..=original).
    /// `None` exactly when the balance is 0.
    front: Option<(LotKey, i64)>,
    balance: i64,
    /// Lifetime sums, kept wide so they cannot overflow; they back the
    /// invariant balance = credited − debited.
    credited: i128,
    debited: i128,
}

impl Payer {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            lots: BTreeMap::new(),
            front: None,
            balance: 0,
            credited: 0,
            debited: 0,
        }
    }

    /// Rebuilds a payer from its lots and balance, as written by a snapshot:
    /// the points used up are credited − balance, taken from the oldest lots.
    /// `lots` must be sorted by key with positive points (checked).
    pub(super) fn restore(
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
        let credited: i128 = lots.iter().map(|&(_, points)| i128::from(points)).sum();
        if balance < 0 || i128::from(balance) > credited {
            return Err(format!("payer {name:?}: balance {balance} outside 0..={credited}"));
        }
        let mut used_up = credited - i128::from(balance);
        let mut front = None;
        for &(key, points) in &lots {
            if used_up < i128::from(points) {
                // `used_up` < points <= i64::MAX here, so the cast is exact.
                front = Some((key, points - used_up as i64));
                break;
            }
            used_up -= i128::from(points);
        }
        Ok(Self {
            name: name.into(),
            lots: lots.into_iter().collect(),
            front,
            balance,
            credited,
            debited: credited - i128::from(balance),
        })
    }

    pub(super) fn balance(&self) -> i64 {
        self.balance
    }

    /// The key of the oldest lot with points left.
    pub(super) fn front_key(&self) -> Option<LotKey> {
        self.front.map(|(key, _)| key)
    }

    /// Adds a lot. The caller has checked that the balance cannot overflow.
    ///
    /// A lot newer than the front lands among whole lots and moves nothing.
    /// Otherwise it lands among used-up points: the payer's past deductions now
    /// count against it first, which hands the same number of points back to
    /// the newest used-up points. Cost: O(log n) per lot the front moves over.
    pub(super) fn credit(&mut self, key: LotKey, points: i64) {
        assert!(points > 0, "a lot has positive points");
        let previous = self.lots.insert(key, points);
        assert!(previous.is_none(), "lot keys are unique (they hold the id)");
        self.balance =
            self.balance.checked_add(points).expect("caller checked the balance for overflow");
        self.credited += i128::from(points);

        if let Some((front_key, _)) = self.front
            && key > front_key
        {
            return;
        }
        self.hand_back(points);
    }

    /// Moves the front towards older lots, refilling `points` used-up points,
    /// newest first. Only called when the new lot sits at or before the front,
    /// so the walk stops at that lot at the latest.
    fn hand_back(&mut self, mut points: i64) {
        let (mut cursor, mut remaining) = match self.front {
            Some(front) => front,
            None => {
                let (&newest, _) = self.lots.last_key_value().expect("a lot was just added");
                (newest, 0)
            }
        };
        let mut steps = 0usize;
        loop {
            assert!(steps <= self.lots.len(), "hand_back walks each lot at most once");
            steps += 1;
            let original = self.lots[&cursor];
            let refill = (original - remaining).min(points);
            remaining += refill;
            points -= refill;
            if points == 0 {
                debug_assert!(remaining > 0);
                self.front = Some((cursor, remaining));
                return;
            }
            let (&older, _) = self
                .lots
                .range(..cursor)
                .next_back()
                .expect("the newly credited lot bounds the walk");
            cursor = older;
            remaining = 0;
        }
    }

    /// Takes up to `points` from the front lot only, and returns how many were
    /// taken. Spends use this so that they can switch payers between lots.
    pub(super) fn take_from_front(&mut self, points: i64) -> i64 {
        let (key, remaining) = self.front.expect("take_from_front needs a positive balance");
        assert!(points > 0);
        let taken = remaining.min(points);
        self.balance -= taken;
        self.debited += i128::from(taken);
        self.front = if taken < remaining {
            Some((key, remaining - taken))
        } else {
            self.lots
                .range((Bound::Excluded(key), Bound::Unbounded))
                .next()
                .map(|(&next, &original)| (next, original))
        };
        debug_assert_eq!(self.front.is_none(), self.balance == 0);
        taken
    }

    /// Takes `points` (at most the balance), oldest lots first.
    pub(super) fn debit(&mut self, points: i64) {
        assert!(0 < points && points <= self.balance, "caller checked the balance");
        let mut left = points;
        let mut steps = 0usize;
        while left > 0 {
            assert!(steps <= self.lots.len(), "debit walks each lot at most once");
            steps += 1;
            left -= self.take_from_front(left);
        }
    }

    /// Points still held by the lot with `key`, which must belong to this payer.
    pub(super) fn remaining_in(&self, key: LotKey) -> i64 {
        let original = self.lots[&key];
        match self.front {
            Some((front_key, remaining)) if key == front_key => remaining,
            Some((front_key, _)) if key > front_key => original,
            _ => 0,
        }
    }

    /// Checks this payer's invariants in O(lots); for tests and debugging.
    pub(super) fn check_invariants(&self) -> Result<(), String> {
        let name = &self.name;
        if self.balance < 0 {
            return Err(format!("payer {name:?} balance {} is negative", self.balance));
        }
        if i128::from(self.balance) != self.credited - self.debited {
            return Err(format!(
                "payer {name:?} balance {} != credited {} - debited {}",
                self.balance, self.credited, self.debited
            ));
        }
        let credited: i128 = self.lots.values().map(|&points| i128::from(points)).sum();
        if credited != self.credited {
            return Err(format!(
                "payer {name:?} lots sum {credited} != credited {}",
                self.credited
            ));
        }
        let remaining: i128 = self.lots.keys().map(|&key| i128::from(self.remaining_in(key))).sum();
        if remaining != i128::from(self.balance) {
            return Err(format!(
                "payer {name:?} remaining in lots {remaining} != balance {}",
                self.balance
            ));
        }
        match self.front {
            None if self.balance != 0 => Err(format!("payer {name:?} has points but no front")),
            Some((key, remaining)) if !(1..=self.lots[&key]).contains(&remaining) => Err(format!(
                "payer {name:?} front {key:?} has {remaining} of {} points",
                self.lots[&key]
            )),
            _ => Ok(()),
        }
    }
}
