//! The arena every lot tree of one ledger lives in: leaves of lots and
//! branches that keep, for each child, its newest key, newest points and sum.

use super::{FANOUT, LEAF_CAPACITY, Lot, NO_LOT};
use crate::ledger::LotKey;

/// What a branch keeps of one child.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    /// The key of the newest lot under the child.
    pub(crate) newest_key: LotKey,
    /// That lot's points (the simultaneous descent of [`first_reaching`]
    /// needs them).
    pub(crate) newest_points: i64,
    /// The points of every lot under the child: below 2^95 (fewer than 2^32
    /// lots of less than 2^63 points).
    pub(crate) sum: i128,
    /// A branch's index, or at height 1 a leaf's first slot.
    pub(crate) child: usize,
    /// At height 1, the number of lots in the child leaf; 0 above.
    pub(crate) leaf_len: u8,
}

pub(crate) const NO_ENTRY: Entry =
    Entry { newest_key: NO_LOT.key, newest_points: 0, sum: 0, child: 0, leaf_len: 0 };

/// Up to [`FANOUT`] children, oldest first, as parallel arrays so that a scan
/// of the keys or of the sums reads a few adjacent cache lines.
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub(crate) newest_keys: [LotKey; FANOUT],
    pub(crate) newest_points: [i64; FANOUT],
    pub(crate) sums: [i128; FANOUT],
    pub(crate) children: [usize; FANOUT],
    pub(crate) leaf_lens: [u8; FANOUT],
    pub(crate) len: u8,
}

impl Branch {
    pub(crate) fn of(entries: &[Entry]) -> Self {
        debug_assert!((1..=FANOUT).contains(&entries.len()));
        let mut branch = Self {
            newest_keys: [NO_ENTRY.newest_key; FANOUT],
            newest_points: [0; FANOUT],
            sums: [0; FANOUT],
            children: [0; FANOUT],
            leaf_lens: [0; FANOUT],
            len: entries.len() as u8,
        };
        for (position, &entry) in entries.iter().enumerate() {
            branch.set(position, entry);
        }
        branch
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub(crate) fn entry(&self, position: usize) -> Entry {
        Entry {
            newest_key: self.newest_keys[position],
            newest_points: self.newest_points[position],
            sum: self.sums[position],
            child: self.children[position],
            leaf_len: self.leaf_lens[position],
        }
    }

    pub(crate) fn set(&mut self, position: usize, entry: Entry) {
        self.newest_keys[position] = entry.newest_key;
        self.newest_points[position] = entry.newest_points;
        self.sums[position] = entry.sum;
        self.children[position] = entry.child;
        self.leaf_lens[position] = entry.leaf_len;
    }

    /// The entries, with `entry` inserted at `position`: one more than fit.
    pub(crate) fn with_inserted(&self, position: usize, entry: Entry) -> [Entry; FANOUT + 1] {
        let mut entries = [NO_ENTRY; FANOUT + 1];
        for (from, to) in (0..self.len()).zip((0..=FANOUT).filter(|&to| to != position)) {
            entries[to] = self.entry(from);
        }
        entries[position] = entry;
        entries
    }

    /// Inserts `entry` at `position`; the branch has room.
    pub(crate) fn insert(&mut self, position: usize, entry: Entry) {
        let len = self.len();
        debug_assert!(len < FANOUT && position <= len);
        self.newest_keys.copy_within(position..len, position + 1);
        self.newest_points.copy_within(position..len, position + 1);
        self.sums.copy_within(position..len, position + 1);
        self.children.copy_within(position..len, position + 1);
        self.leaf_lens.copy_within(position..len, position + 1);
        self.len += 1;
        self.set(position, entry);
    }

    /// The entry a parent keeps of this branch.
    pub(crate) fn summary(&self, index: usize) -> Entry {
        let last = self.len() - 1;
        Entry {
            newest_key: self.newest_keys[last],
            newest_points: self.newest_points[last],
            sum: self.sums[..=last].iter().sum(),
            child: index,
            leaf_len: 0,
        }
    }
}

/// The nodes of every lot tree of one ledger.
#[derive(Debug, Clone, Default)]
pub(crate) struct LotArena {
    /// Leaves: each a run of [`LEAF_CAPACITY`] slots, its lots first.
    pub(crate) slots: Vec<Lot>,
    pub(crate) branches: Vec<Branch>,
    /// Lots of all payers together, small ones included.
    pub(crate) lots: usize,
}

impl LotArena {
    /// The number of lots of all trees.
    pub(crate) fn len(&self) -> usize {
        self.lots
    }

    /// Room for a leaf holding `lots` (at most a leaf's capacity); returns
    /// its first slot.
    pub(crate) fn allocate_leaf(&mut self, lots: &[Lot]) -> usize {
        debug_assert!(lots.len() <= LEAF_CAPACITY);
        let start = self.slots.len();
        self.slots.extend_from_slice(lots);
        self.slots.resize(start + LEAF_CAPACITY, NO_LOT);
        start
    }

    /// Inserts `lot` at `position` of the leaf at `start` holding `len`
    /// lots; the leaf has room.
    pub(crate) fn insert_into_leaf(&mut self, start: usize, len: usize, position: usize, lot: Lot) {
        debug_assert!(position <= len);
        self.slots.copy_within(start + position..start + len, start + position + 1);
        self.slots[start + position] = lot;
    }

    /// The entry a parent keeps of the leaf at `start` holding `len` lots.
    pub(crate) fn leaf_summary(&self, start: usize, len: usize) -> Entry {
        let lots = &self.slots[start..start + len];
        let newest = lots[len - 1];
        Entry {
            newest_key: newest.key,
            newest_points: newest.points,
            sum: lots.iter().map(|lot| i128::from(lot.points)).sum(),
            child: start,
            leaf_len: len as u8,
        }
    }

    /// Adds `branch` and returns its index.
    pub(crate) fn push_branch(&mut self, branch: Branch) -> usize {
        self.branches.push(branch);
        self.branches.len() - 1
    }
}
