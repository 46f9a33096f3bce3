//! Queries on one tree: sums before a key, where the oldest points end,
//! iteration, and the structural checks.

use super::arena::Entry;
use super::*;

impl<'a> Lots<'a> {
    /// The points of every lot together.
    pub(crate) fn total(&self) -> i128 {
        match self.descend(|_, _, _| true) {
            Ok((before, lots)) => before + sum_of(lots),
            Err(total) => total,
        }
    }

    /// Walks down from the root: at each branch, passes over the children
    /// for which `pass(points before the child, its newest key, its sum)`
    /// holds and enters the first that does not. Returns the points before
    /// the leaf reached (or a small payer's lots) and its lots, or, when
    /// every child of a branch is passed over, the points of all of them
    /// (with those before it).
    pub(crate) fn descend(
        &self,
        pass: impl Fn(i128, LotKey, i128) -> bool,
    ) -> Result<(i128, &'a [Lot]), i128> {
        let (root, height) = match self.tree {
            LotTree::Small(lots) => return Ok((0, lots)),
            &LotTree::Big { root, height } => (root, height),
        };
        let arena = self.arena;
        let mut before = 0;
        let mut node = root;
        let mut leaf_len = 0;
        for _ in 0..height {
            let branch = &arena.branches[node];
            let mut position = 0;
            while position < branch.len()
                && pass(before, branch.newest_keys[position], branch.sums[position])
            {
                before += branch.sums[position];
                position += 1;
            }
            if position == branch.len() {
                return Err(before);
            }
            leaf_len = usize::from(branch.leaf_lens[position]);
            node = branch.children[position];
        }
        Ok((before, &arena.slots[node..node + leaf_len]))
    }

    /// The points of the lots with a key before `key` (`None`: every lot). O(log n).
    pub(crate) fn sum_before(&self, key: Option<LotKey>) -> i128 {
        let Some(key) = key else { return self.total() };
        self.sum_while(|lot_key| lot_key < key)
    }

    /// The points of the lots with a key at or before `key`. O(log n).
    pub(crate) fn sum_through(&self, key: LotKey) -> i128 {
        self.sum_while(|lot_key| lot_key <= key)
    }

    /// The points of the lots whose keys satisfy `within`, which holds for
    /// a prefix of them.
    pub(crate) fn sum_while(&self, within: impl Fn(LotKey) -> bool) -> i128 {
        match self.descend(|_, newest, _| within(newest)) {
            Ok((before, lots)) => {
                let inside = lots.iter().take_while(|lot| within(lot.key));
                before + inside.map(|lot| i128::from(lot.points)).sum::<i128>()
            }
            Err(all) => all,
        }
    }

    /// The lot with `key`: the points of the lots before it, and its own.
    pub(crate) fn find(&self, key: LotKey) -> Option<(i128, i64)> {
        let (mut before, lots) = self.descend(|_, newest, _| newest < key).ok()?;
        for lot in lots {
            if lot.key == key {
                return Some((before, lot.points));
            }
            before += i128::from(lot.points);
        }
        None
    }

    /// The oldest lot not wholly inside the oldest `consumed` points, with
    /// how many of its points lie past them (1..=its points); `None` when
    /// `consumed` covers every lot. O(log n).
    pub(crate) fn first_past(&self, consumed: i128) -> Option<(LotKey, i64)> {
        debug_assert!(consumed >= 0);
        let (mut before, lots) = self.descend(|before, _, sum| before + sum <= consumed).ok()?;
        for lot in lots {
            let through = before + i128::from(lot.points);
            if through > consumed {
                // `before` is at most `consumed`, so this is 1..=points.
                return Some((lot.key, (through - consumed).min(i128::from(lot.points)) as i64));
            }
            before = through;
        }
        None
    }

    /// Every lot in key order. The explicit stack is bounded by the height.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (LotKey, i64)> + 'a {
        let arena = self.arena;
        // (branch, next child) for each level above the current leaf.
        let mut stack: Vec<(usize, usize)> = Vec::new();
        let (mut leaf, height): (&'a [Lot], usize) = match self.tree {
            LotTree::Small(lots) => (lots, 0),
            &LotTree::Big { root, height } => {
                stack.reserve_exact(usize::from(height));
                stack.push((root, 0));
                (&[], usize::from(height))
            }
        };
        std::iter::from_fn(move || {
            loop {
                if let Some((first, rest)) = leaf.split_first() {
                    leaf = rest;
                    return Some((first.key, first.points));
                }
                let (branch, next) = stack.last_mut()?;
                let here = &arena.branches[*branch];
                if *next == here.len() {
                    stack.pop();
                    continue;
                }
                let child = here.children[*next];
                let leaf_len = usize::from(here.leaf_lens[*next]);
                *next += 1;
                if stack.len() == height {
                    leaf = &arena.slots[child..child + leaf_len];
                } else {
                    stack.push((child, 0));
                }
            }
        })
    }

    /// Checks the order and points of the lots, the sums and newest lots
    /// kept for every child, that every node holds between one entry and
    /// its capacity and that every leaf is at the same depth; returns how
    /// many lots the tree holds (the caller checks that the trees of an
    /// arena hold every lot once). O(n).
    pub(crate) fn check(&self) -> Result<usize, String> {
        let mut newest = None;
        match self.tree {
            LotTree::Small(lots) if lots.len() > SMALL_CAPACITY => {
                Err(format!("a small payer has {} lots", lots.len()))
            }
            LotTree::Small(lots) => {
                check_lots(lots, &mut newest)?;
                Ok(lots.len())
            }
            &LotTree::Big { root, height } => {
                if !(1..MAX_HEIGHT).contains(&usize::from(height)) {
                    return Err(format!("the lot tree is {height} levels deep"));
                }
                let mut reached = 0;
                self.check_branch(root, usize::from(height), &mut newest, &mut reached)?;
                Ok(reached)
            }
        }
    }

    /// Checks the branch at `index`, `levels` above the leaves, and what it
    /// keeps of every child; counts its lots into `reached`. `newest` is the
    /// key of the lot before the branch, moved to its last.
    pub(crate) fn check_branch(
        &self,
        index: usize,
        levels: usize,
        newest: &mut Option<LotKey>,
        reached: &mut usize,
    ) -> Result<Entry, String> {
        let Some(branch) = self.arena.branches.get(index) else {
            return Err(format!("branch {index} is not in the arena"));
        };
        if branch.len == 0 || branch.len() > FANOUT {
            return Err(format!("branch {index} has {} children", branch.len));
        }
        if *reached > self.arena.lots {
            return Err("the lot tree reaches more lots than the arena has".to_owned());
        }
        for position in 0..branch.len() {
            let kept = branch.entry(position);
            let child = if levels == 1 {
                let len = usize::from(kept.leaf_len);
                let lots = kept
                    .child
                    .checked_add(LEAF_CAPACITY)
                    .and_then(|end| self.arena.slots.get(kept.child..end))
                    .filter(|_| (1..=LEAF_CAPACITY).contains(&len))
                    .ok_or_else(|| {
                        format!("branch {index} keeps a leaf of {len} lots out of place")
                    })?;
                check_lots(&lots[..len], newest)?;
                *reached += len;
                self.arena.leaf_summary(kept.child, len)
            } else {
                if kept.leaf_len != 0 {
                    return Err(format!("branch {index} keeps a leaf length above the leaves"));
                }
                self.check_branch(kept.child, levels - 1, newest, reached)?
            };
            let (expected, found) = (child.newest_key, kept.newest_key);
            if (expected, child.newest_points, child.sum) != (found, kept.newest_points, kept.sum) {
                return Err(format!("branch {index} keeps a wrong sum or newest lot of a child"));
            }
        }
        Ok(branch.summary(index))
    }
}

/// The points of `lots` together.
pub(crate) fn sum_of(lots: &[Lot]) -> i128 {
    lots.iter().map(|lot| i128::from(lot.points)).sum()
}

/// Checks that `lots` follow `newest` (the key of the lot before them) in
/// key order with positive points, and moves `newest` to their last.
pub(crate) fn check_lots(lots: &[Lot], newest: &mut Option<LotKey>) -> Result<(), String> {
    for lot in lots {
        if newest.is_some_and(|newest| lot.key <= newest) {
            return Err(format!("lot {:?} is out of order", lot.key));
        }
        if lot.points <= 0 {
            return Err(format!("lot {:?} has {} points", lot.key, lot.points));
        }
        *newest = Some(lot.key);
    }
    Ok(())
}
