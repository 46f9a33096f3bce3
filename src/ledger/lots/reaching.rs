//! The spend's time cut across many payers' trees: a simultaneous descent.

use super::query::sum_of;
use super::*;

/// The smallest lot key K of `trees` at which their lots together reach
/// `target` points (the sum of every lot at or before K is at least
/// `target`, which must be positive), or `None` if all of them together
/// fall short.
///
/// A simultaneous descent of all trees. Each tree has a cursor: a range of
/// one node's children (or lots) with the points of the tree's lots before
/// it. Invariant: every lot before a range is older than K and every lot
/// after it newer, so K lies in one of the ranges. Each non-empty range is
/// split in two; its *pivot* is the newest lot of the older half. S is the
/// points up to each pivot (up to the range, for an empty range), summed
/// over all trees; every lot it counts is at or before the newest pivot.
/// - If S less the newest pivot's own points reaches the target, K is older
///   than the newest pivot: that tree keeps the older half of its range.
/// - Else, with two or more ranges left, every lot at or before the oldest
///   pivot is counted in that remainder, which falls short: K is newer than
///   the oldest pivot, and that tree keeps the newer half.
/// - Else, one range is left and the pivot is the first lot where the
///   points reach the target, if S does: K is the pivot when it is a lot
///   (in a branch, the older half), or newer (the newer half).
///
/// Every step halves one range (or enters the one child left), so the cost
/// is O(Σ log n · log c) for c trees, whatever their lots are and however
/// they interleave.
pub(crate) fn first_reaching(arena: &LotArena, trees: &[&LotTree], target: i128) -> Option<LotKey> {
    debug_assert!(target > 0, "a target of no points is reached before any lot");
    let total: i128 = trees.iter().map(|tree| tree.read(arena).total()).sum();
    if total < target || trees.is_empty() {
        return None;
    }
    let mut cursors: Vec<Cursor<'_>> =
        trees.iter().map(|tree| Cursor::of(tree).entered(arena)).collect();
    let mut sum_through_pivots: i128 =
        cursors.iter().map(|cursor| cursor.through_pivot(arena)).sum();
    let mut pivots = Pivots::new(
        cursors
            .iter()
            .enumerate()
            .filter_map(|(tree, cursor)| Some((cursor.pivot(arena)?.0, tree))),
        trees.len(),
    );
    // A range halves at most log2(its size) + 1 times per level.
    let step_limit = trees.len() * MAX_HEIGHT * (SMALL_CAPACITY.ilog2() as usize + 2);
    for _ in 0..step_limit {
        let ((newest_key, newest), (_, oldest)) = (pivots.newest()?, pivots.oldest()?);
        let newest_cursor = &cursors[newest];
        let (_, newest_points) = newest_cursor.pivot(arena)?;
        // Every lot counted here but the newest pivot is older than it.
        let older_than_newest = sum_through_pivots - i128::from(newest_points);
        let (moving, to_older_half) = if older_than_newest >= target {
            (newest, true)
        } else if newest == oldest {
            if sum_through_pivots >= target && newest_cursor.levels == 0 {
                return Some(newest_key);
            }
            (newest, sum_through_pivots >= target)
        } else {
            (oldest, false)
        };
        let cursor = &mut cursors[moving];
        pivots.remove(cursor.pivot(arena)?.0, moving);
        sum_through_pivots -= cursor.through_pivot(arena);
        *cursor = cursor.halved(arena, to_older_half).entered(arena);
        sum_through_pivots += cursor.through_pivot(arena);
        if let Some((key, _)) = cursor.pivot(arena) {
            pivots.insert(key, moving);
        }
    }
    unreachable!("every step halves one range")
}

/// Where K may lie in one tree, for [`first_reaching`]: children (or lots)
/// `low..high` of one node.
#[derive(Debug, Clone, Copy)]
struct Cursor<'a> {
    /// Levels above the leaves: 0 for a leaf, whose range holds lots.
    levels: usize,
    /// A branch's index (above the leaves).
    branch: usize,
    /// The leaf's lots (at the leaves).
    leaf: &'a [Lot],
    low: usize,
    high: usize,
    /// The points of the tree's lots before the range.
    before: i128,
}

impl<'a> Cursor<'a> {
    /// The whole of `tree`.
    fn of(tree: &'a LotTree) -> Self {
        match tree {
            LotTree::Small(lots) => {
                Self { levels: 0, branch: 0, leaf: lots, low: 0, high: lots.len(), before: 0 }
            }
            &LotTree::Big { root, height } => Self {
                levels: usize::from(height),
                branch: root,
                leaf: &[],
                low: 0,
                high: usize::MAX,
                before: 0,
            },
        }
    }

    /// The end of the older half of the range: it holds the pivot last.
    fn middle(&self) -> usize {
        self.low + (self.high - self.low).div_ceil(2)
    }

    /// The same place, entering a branch range's only child (repeatedly)
    /// and resolving a whole branch (`high` = MAX) to its children.
    fn entered(mut self, arena: &'a LotArena) -> Self {
        while self.levels > 0 {
            let branch = &arena.branches[self.branch];
            self.high = self.high.min(branch.len());
            if self.high - self.low > 1 {
                break;
            }
            let child = branch.children[self.low];
            self.levels -= 1;
            if self.levels == 0 {
                let len = usize::from(branch.leaf_lens[self.low]);
                (self.leaf, self.high) = (&arena.slots[child..child + len], len);
            } else {
                (self.branch, self.high) = (child, usize::MAX);
            }
            self.low = 0;
        }
        self
    }

    /// The pivot's key and points; `None` for an empty range.
    fn pivot(&self, arena: &LotArena) -> Option<(LotKey, i64)> {
        if self.low == self.high {
            return None;
        }
        let last = self.middle() - 1;
        if self.levels == 0 {
            let lot = self.leaf[last];
            Some((lot.key, lot.points))
        } else {
            let branch = &arena.branches[self.branch];
            Some((branch.newest_keys[last], branch.newest_points[last]))
        }
    }

    /// The points of the older half.
    fn older_half_sum(&self, arena: &LotArena) -> i128 {
        let (low, middle) = (self.low, self.middle());
        if self.levels == 0 {
            sum_of(&self.leaf[low..middle])
        } else {
            arena.branches[self.branch].sums[low..middle].iter().sum()
        }
    }

    /// The points of the tree's lots up to the pivot (all before the range
    /// when it is empty).
    fn through_pivot(&self, arena: &LotArena) -> i128 {
        self.before + if self.low == self.high { 0 } else { self.older_half_sum(arena) }
    }

    /// The older half (K is older than the pivot, or is the pivot) or the
    /// newer half (K is newer than the pivot). A leaf's older half leaves
    /// the pivot out: it goes there only when K is older than the pivot.
    fn halved(&self, arena: &LotArena, to_older_half: bool) -> Self {
        let middle = self.middle();
        if to_older_half {
            let high = if self.levels == 0 { middle - 1 } else { middle };
            Self { high, ..*self }
        } else {
            Self { low: middle, before: self.before + self.older_half_sum(arena), ..*self }
        }
    }
}

/// The pivots of [`first_reaching`]'s cursors, ordered by key: a list
/// scanned whole for a few trees, a B-tree set for many.
enum Pivots {
    Few(Vec<(LotKey, usize)>),
    Many(std::collections::BTreeSet<(LotKey, usize)>),
}

impl Pivots {
    /// Up to this many trees, a scan is cheaper than a set.
    const FEW: usize = 8;

    fn new(pivots: impl Iterator<Item = (LotKey, usize)>, trees: usize) -> Self {
        if trees <= Self::FEW { Self::Few(pivots.collect()) } else { Self::Many(pivots.collect()) }
    }

    fn newest(&self) -> Option<(LotKey, usize)> {
        match self {
            Self::Few(pivots) => pivots.iter().max().copied(),
            Self::Many(pivots) => pivots.last().copied(),
        }
    }

    fn oldest(&self) -> Option<(LotKey, usize)> {
        match self {
            Self::Few(pivots) => pivots.iter().min().copied(),
            Self::Many(pivots) => pivots.first().copied(),
        }
    }

    fn remove(&mut self, key: LotKey, tree: usize) {
        match self {
            Self::Few(pivots) => pivots.retain(|&pivot| pivot != (key, tree)),
            Self::Many(pivots) => {
                pivots.remove(&(key, tree));
            }
        }
    }

    fn insert(&mut self, key: LotKey, tree: usize) {
        match self {
            Self::Few(pivots) => pivots.push((key, tree)),
            Self::Many(pivots) => {
                pivots.insert((key, tree));
            }
        }
    }
}
