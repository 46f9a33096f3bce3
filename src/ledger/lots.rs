//! One payer's lots in (timestamp, id) order, with the sum of every subtree's
//! points, so that "how many points are older than this key" and "where do
//! the oldest D points end" are each one descent of a shallow tree.
//!
//! This is what makes a payer's state cheap whatever order its lots arrive
//! in: what is left of a payer is "all but its oldest D points" (D = points
//! ever debited), so its front lot is found by a prefix-sum search instead of
//! a walk over used-up lots.
//!
//! A payer with up to [`SMALL_CAPACITY`] lots keeps them in a sorted vector
//! of its own: a scan of a few cache lines answers every query, and a payer
//! with a few lots takes a few bytes.
//!
//! Past that, a B+ tree in one arena per ledger. Lots sit in leaves of up to
//! [`LEAF_CAPACITY`], in key order; a branch holds up to [`FANOUT`] children
//! and, for each, the newest key under it, the sum of its points and the
//! points of its newest lot, so a descent picks a child by key or by prefix
//! sum without visiting the others. Wide nodes keep a tree shallow (half a
//! million lots arriving in time order are five levels deep, six in random
//! order, against nineteen for a binary tree) and each level is a few
//! adjacent cache lines, so a descent costs nearly as little at a million
//! lots as at a thousand.
//!
//! Lots are never removed, so nodes only ever split. A full node splits in
//! half, except at either end of the tree: a lot newer (or older) than every
//! other starts a node of its own, so lots arriving in time order fill their
//! leaves. Every node but the first and last of its level is therefore at
//! least half full, whatever the order, which bounds a tree's height by
//! about log8(n) + 2.

use super::LotKey;

/// Lots a payer keeps in its own vector before they move to a tree: a
/// tree's first branch and leaves cost more than such a vector, and a scan of
/// this many lots costs about what a descent does.
const SMALL_CAPACITY: usize = 64;

/// Lots in one leaf at most.
const LEAF_CAPACITY: usize = 16;

/// Children of one branch at most.
const FANOUT: usize = 16;

/// Branch levels a tree may have. Each level but the top has at least twice
/// as many nodes as the one above it minus the two ends, so even 2^64
/// lots stay far below this; inserts and checks assert it.
const MAX_HEIGHT: usize = 32;

// Lengths are kept in a `u8`; a half split leaves both halves non-empty; a
// small payer's lots fill more than one leaf when they move to a tree, so a
// tree always has a branch.
const _: () = assert!(LEAF_CAPACITY <= u8::MAX as usize && LEAF_CAPACITY >= 4);
const _: () = assert!(FANOUT <= u8::MAX as usize && FANOUT >= 4);
const _: () = assert!(SMALL_CAPACITY > LEAF_CAPACITY);

/// A lot: its key and the points it was credited with (positive).
#[derive(Debug, Clone, Copy)]
pub(super) struct Lot {
    key: LotKey,
    points: i64,
}

/// What fills a slot no lot uses yet.
const NO_LOT: Lot = Lot { key: LotKey { seconds: 0, nanos_and_id: 0 }, points: 0 };

/// What a branch keeps of one child.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The key of the newest lot under the child.
    newest_key: LotKey,
    /// That lot's points (the simultaneous descent of [`first_reaching`]
    /// needs them).
    newest_points: i64,
    /// The points of every lot under the child: below 2^95 (fewer than 2^32
    /// lots of less than 2^63 points).
    sum: i128,
    /// A branch's index, or at height 1 a leaf's first slot.
    child: usize,
    /// At height 1, the number of lots in the child leaf; 0 above.
    leaf_len: u8,
}

const NO_ENTRY: Entry =
    Entry { newest_key: NO_LOT.key, newest_points: 0, sum: 0, child: 0, leaf_len: 0 };

/// Up to [`FANOUT`] children, oldest first, as parallel arrays so that a scan
/// of the keys or of the sums reads a few adjacent cache lines.
#[derive(Debug, Clone)]
struct Branch {
    newest_keys: [LotKey; FANOUT],
    newest_points: [i64; FANOUT],
    sums: [i128; FANOUT],
    children: [usize; FANOUT],
    leaf_lens: [u8; FANOUT],
    len: u8,
}

impl Branch {
    fn of(entries: &[Entry]) -> Self {
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

    fn len(&self) -> usize {
        usize::from(self.len)
    }

    fn entry(&self, position: usize) -> Entry {
        Entry {
            newest_key: self.newest_keys[position],
            newest_points: self.newest_points[position],
            sum: self.sums[position],
            child: self.children[position],
            leaf_len: self.leaf_lens[position],
        }
    }

    fn set(&mut self, position: usize, entry: Entry) {
        self.newest_keys[position] = entry.newest_key;
        self.newest_points[position] = entry.newest_points;
        self.sums[position] = entry.sum;
        self.children[position] = entry.child;
        self.leaf_lens[position] = entry.leaf_len;
    }

    /// The entries, with `entry` inserted at `position`: one more than fit.
    fn with_inserted(&self, position: usize, entry: Entry) -> [Entry; FANOUT + 1] {
        let mut entries = [NO_ENTRY; FANOUT + 1];
        for (from, to) in (0..self.len()).zip((0..=FANOUT).filter(|&to| to != position)) {
            entries[to] = self.entry(from);
        }
        entries[position] = entry;
        entries
    }

    /// Inserts `entry` at `position`; the branch has room.
    fn insert(&mut self, position: usize, entry: Entry) {
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
    fn summary(&self, index: usize) -> Entry {
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
pub(super) struct LotArena {
    /// Leaves: each a run of [`LEAF_CAPACITY`] slots, its lots first.
    slots: Vec<Lot>,
    branches: Vec<Branch>,
    /// Lots of all payers together, small ones included.
    lots: usize,
}

impl LotArena {
    /// The number of lots of all trees.
    pub(super) fn len(&self) -> usize {
        self.lots
    }

    /// Room for a leaf holding `lots` (at most a leaf's capacity); returns
    /// its first slot.
    fn allocate_leaf(&mut self, lots: &[Lot]) -> usize {
        debug_assert!(lots.len() <= LEAF_CAPACITY);
        let start = self.slots.len();
        self.slots.extend_from_slice(lots);
        self.slots.resize(start + LEAF_CAPACITY, NO_LOT);
        start
    }

    /// Inserts `lot` at `position` of the leaf at `start` holding `len`
    /// lots; the leaf has room.
    fn insert_into_leaf(&mut self, start: usize, len: usize, position: usize, lot: Lot) {
        debug_assert!(position <= len);
        self.slots.copy_within(start + position..start + len, start + position + 1);
        self.slots[start + position] = lot;
    }

    /// The entry a parent keeps of the leaf at `start` holding `len` lots.
    fn leaf_summary(&self, start: usize, len: usize) -> Entry {
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
    fn push_branch(&mut self, branch: Branch) -> usize {
        self.branches.push(branch);
        self.branches.len() - 1
    }
}

/// A payer's lots: an ordered set of (key, points) with prefix sums.
#[derive(Debug, Clone)]
pub(super) enum LotTree {
    /// Up to [`SMALL_CAPACITY`] lots in key order.
    Small(Vec<Lot>),
    /// A B+ tree whose nodes live in the ledger's [`LotArena`].
    Big {
        /// The root branch's index.
        root: usize,
        /// Levels of branches above the leaves: at least 1.
        height: u8,
    },
}

impl Default for LotTree {
    fn default() -> Self {
        Self::Small(Vec::new())
    }
}

/// A tree with its arena, for the queries.
pub(super) struct Lots<'a> {
    arena: &'a LotArena,
    tree: &'a LotTree,
}

/// A tree with its arena, for inserts.
pub(super) struct LotsMut<'a> {
    arena: &'a mut LotArena,
    tree: &'a mut LotTree,
}

impl LotTree {
    /// The tree, readable.
    pub(super) fn read<'a>(&'a self, arena: &'a LotArena) -> Lots<'a> {
        Lots { arena, tree: self }
    }

    /// The tree, for inserts.
    pub(super) fn write<'a>(&'a mut self, arena: &'a mut LotArena) -> LotsMut<'a> {
        LotsMut { arena, tree: self }
    }

    /// A tree of `lots`, which must be sorted by key with unique keys and
    /// positive points (the caller checks), built in O(n).
    pub(super) fn from_sorted(arena: &mut LotArena, lots: &[(LotKey, i64)]) -> Self {
        debug_assert!(lots.windows(2).all(|pair| pair[0].0 < pair[1].0));
        arena.lots += lots.len();
        let lots: Vec<Lot> = lots.iter().map(|&(key, points)| Lot { key, points }).collect();
        if lots.len() <= SMALL_CAPACITY { Self::Small(lots) } else { Self::built(arena, &lots) }
    }

    /// A B+ tree of more than a leaf's worth of sorted `lots`, built bottom-up
    /// with full nodes (but the last of each level).
    fn built(arena: &mut LotArena, lots: &[Lot]) -> Self {
        debug_assert!(lots.len() > LEAF_CAPACITY);
        let mut level: Vec<Entry> = lots
            .chunks(LEAF_CAPACITY)
            .map(|chunk| {
                let start = arena.allocate_leaf(chunk);
                arena.leaf_summary(start, chunk.len())
            })
            .collect();
        let mut height = 0;
        while level.len() > 1 {
            level = level
                .chunks(FANOUT)
                .map(|chunk| {
                    let index = arena.push_branch(Branch::of(chunk));
                    arena.branches[index].summary(index)
                })
                .collect();
            height += 1;
        }
        assert!(height < MAX_HEIGHT, "a tree is never {MAX_HEIGHT} levels deep");
        Self::Big { root: level[0].child, height: height as u8 }
    }
}

/// A node on the way down an insert: the branch, the child taken, and
/// whether the branch is the first or last of its level.
#[derive(Debug, Clone, Copy)]
struct Step {
    branch: usize,
    position: usize,
    first_of_level: bool,
    last_of_level: bool,
}

impl LotsMut<'_> {
    /// Adds a lot whose key is not in the tree. O(log n).
    ///
    /// A small payer's lots move to a B+ tree when they outgrow their
    /// vector. In a tree, every child taken on the way down gains `points`
    /// in its parent's sum (all of them contain the new lot). A full leaf
    /// splits, and its parent takes the new sibling, splitting in turn when
    /// full, up to a new root at worst.
    pub(super) fn insert(&mut self, key: LotKey, points: i64) {
        assert!(points > 0, "a lot has positive points");
        let lot = Lot { key, points };
        let arena = &mut *self.arena;
        arena.lots += 1;
        let (root, height) = match self.tree {
            LotTree::Small(lots) if lots.len() < SMALL_CAPACITY => {
                let position = lots.partition_point(|lot| lot.key < key);
                debug_assert!(lots.get(position).is_none_or(|lot| lot.key != key));
                // Doubling from one lot: a payer with two lots holds two.
                if lots.len() == lots.capacity() {
                    lots.reserve_exact(lots.len().max(1));
                }
                lots.insert(position, lot);
                return;
            }
            LotTree::Small(lots) => {
                let lots = std::mem::take(lots);
                *self.tree = LotTree::built(arena, &lots);
                let LotTree::Big { root, height } = *self.tree else {
                    unreachable!("a built tree is big")
                };
                (root, height)
            }
            LotTree::Big { root, height } => (*root, *height),
        };

        let mut path = [Step { branch: 0, position: 0, first_of_level: true, last_of_level: true };
            MAX_HEIGHT];
        let height = usize::from(height);
        assert!((1..MAX_HEIGHT).contains(&height), "a tree is 1 to {MAX_HEIGHT} levels deep");
        let (mut first_of_level, mut last_of_level) = (true, true);
        let mut node = root;
        let mut leaf_len = 0;
        for step in path.iter_mut().take(height) {
            let branch = &mut arena.branches[node];
            let len = branch.len();
            let position = branch.newest_keys[..len]
                .iter()
                .position(|&newest| key <= newest)
                .unwrap_or(len - 1);
            debug_assert!(branch.newest_keys[position] != key, "lot keys are unique");
            branch.sums[position] += i128::from(points);
            if key > branch.newest_keys[position] {
                branch.newest_keys[position] = key;
                branch.newest_points[position] = points;
            }
            *step = Step { branch: node, position, first_of_level, last_of_level };
            first_of_level &= position == 0;
            last_of_level &= position == len - 1;
            leaf_len = usize::from(branch.leaf_lens[position]);
            node = branch.children[position];
        }

        let position = arena.slots[node..node + leaf_len].partition_point(|l| l.key < key);
        if leaf_len < LEAF_CAPACITY {
            arena.insert_into_leaf(node, leaf_len, position, lot);
            let parent = path[height - 1];
            arena.branches[parent.branch].leaf_lens[parent.position] += 1;
            return;
        }

        // Split the full leaf; `sibling` is the new node, after `node` or
        // (at the very start of the tree) before it.
        let (mut sibling, mut sibling_after) = if last_of_level && position == leaf_len {
            let start = arena.allocate_leaf(&[lot]);
            (arena.leaf_summary(start, 1), true)
        } else if first_of_level && position == 0 {
            let start = arena.allocate_leaf(&[lot]);
            (arena.leaf_summary(start, 1), false)
        } else {
            let half = LEAF_CAPACITY / 2;
            let start = arena.allocate_leaf(&[]);
            arena.slots.copy_within(node + half..node + LEAF_CAPACITY, start);
            let (left_len, right_len) = if position <= half {
                arena.insert_into_leaf(node, half, position, lot);
                (half + 1, half)
            } else {
                arena.insert_into_leaf(start, half, position - half, lot);
                (half, half + 1)
            };
            leaf_len = left_len;
            (arena.leaf_summary(start, right_len), true)
        };
        let mut old = arena.leaf_summary(node, leaf_len);

        for step in path[..height].iter().rev() {
            let branch = &mut arena.branches[step.branch];
            branch.set(step.position, old);
            let position = if sibling_after { step.position + 1 } else { step.position };
            if branch.len() < FANOUT {
                branch.insert(position, sibling);
                return;
            }
            let new_branch = if step.last_of_level && position == FANOUT {
                sibling_after = true;
                Branch::of(&[sibling])
            } else if step.first_of_level && position == 0 {
                sibling_after = false;
                Branch::of(&[sibling])
            } else {
                let entries = branch.with_inserted(position, sibling);
                let left = FANOUT / 2 + 1;
                *branch = Branch::of(&entries[..left]);
                sibling_after = true;
                Branch::of(&entries[left..])
            };
            old = arena.branches[step.branch].summary(step.branch);
            let index = arena.push_branch(new_branch);
            sibling = arena.branches[index].summary(index);
        }

        // The root split: a new root holds both halves.
        let children = if sibling_after { [old, sibling] } else { [sibling, old] };
        let root = arena.push_branch(Branch::of(&children));
        assert!(height + 1 < MAX_HEIGHT, "a tree is never {MAX_HEIGHT} levels deep");
        *self.tree = LotTree::Big { root, height: height as u8 + 1 };
    }
}

impl<'a> Lots<'a> {
    /// The points of every lot together.
    pub(super) fn total(&self) -> i128 {
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
    fn descend(
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
    pub(super) fn sum_before(&self, key: Option<LotKey>) -> i128 {
        let Some(key) = key else { return self.total() };
        self.sum_while(|lot_key| lot_key < key)
    }

    /// The points of the lots with a key at or before `key`. O(log n).
    pub(super) fn sum_through(&self, key: LotKey) -> i128 {
        self.sum_while(|lot_key| lot_key <= key)
    }

    /// The points of the lots whose keys satisfy `within`, which holds for
    /// a prefix of them.
    fn sum_while(&self, within: impl Fn(LotKey) -> bool) -> i128 {
        match self.descend(|_, newest, _| within(newest)) {
            Ok((before, lots)) => {
                let inside = lots.iter().take_while(|lot| within(lot.key));
                before + inside.map(|lot| i128::from(lot.points)).sum::<i128>()
            }
            Err(all) => all,
        }
    }

    /// The lot with `key`: the points of the lots before it, and its own.
    pub(super) fn find(&self, key: LotKey) -> Option<(i128, i64)> {
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
    pub(super) fn first_past(&self, consumed: i128) -> Option<(LotKey, i64)> {
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
    pub(super) fn iter(&self) -> impl Iterator<Item = (LotKey, i64)> + 'a {
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
    pub(super) fn check(&self) -> Result<usize, String> {
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
    fn check_branch(
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
fn sum_of(lots: &[Lot]) -> i128 {
    lots.iter().map(|lot| i128::from(lot.points)).sum()
}

/// Checks that `lots` follow `newest` (the key of the lot before them) in
/// key order with positive points, and moves `newest` to their last.
fn check_lots(lots: &[Lot], newest: &mut Option<LotKey>) -> Result<(), String> {
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
pub(super) fn first_reaching(arena: &LotArena, trees: &[&LotTree], target: i128) -> Option<LotKey> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seconds: i64, id: u64) -> LotKey {
        LotKey { seconds, nanos_and_id: id }
    }

    /// The same queries answered by sorting a plain list.
    fn naive_sum_before(lots: &[(LotKey, i64)], limit: LotKey) -> i128 {
        lots.iter().filter(|(key, _)| *key < limit).map(|&(_, points)| i128::from(points)).sum()
    }

    fn naive_first_reaching(lots: &[(LotKey, i64)], target: i128) -> Option<LotKey> {
        lots.iter()
            .scan(0i128, |through, &(key, points)| {
                *through += i128::from(points);
                Some((key, *through))
            })
            .find(|&(_, through)| through >= target)
            .map(|(key, _)| key)
    }

    /// Every query of `tree` against the sorted `lots` it holds.
    fn assert_answers_like(tree: Lots<'_>, lots: &[(LotKey, i64)], rng: &mut fastrand::Rng) {
        assert_eq!(tree.check(), Ok(lots.len()));
        assert_eq!(tree.iter().collect::<Vec<_>>(), lots);
        let total: i128 = lots.iter().map(|&(_, points)| i128::from(points)).sum();
        assert_eq!(tree.total(), total);
        for _ in 0..300 {
            let probe = key(rng.i64(-60..2_100), rng.u64(0..2_100));
            assert_eq!(tree.sum_before(Some(probe)), naive_sum_before(lots, probe));
            assert_eq!(tree.find(probe).is_some(), lots.iter().any(|&(key, _)| key == probe));
            let consumed = rng.i128(0..total + 10);
            let expected = lots.iter().scan(0i128, |before, &(key, points)| {
                *before += i128::from(points);
                Some((key, points, *before))
            });
            let expected = expected
                .filter(|&(_, _, through)| through > consumed)
                .map(|(key, points, through)| {
                    (key, (through - consumed).min(i128::from(points)) as i64)
                })
                .next();
            assert_eq!(tree.first_past(consumed), expected);
        }
        for &(key, points) in lots {
            assert_eq!(tree.find(key), Some((naive_sum_before(lots, key), points)));
            assert_eq!(tree.sum_through(key), naive_sum_before(lots, key) + i128::from(points));
        }
    }

    /// Lots in an order that stresses one way of splitting: time order,
    /// reverse order, random, or alternating between both ends.
    fn lots_in_order(order: &str, count: u64, rng: &mut fastrand::Rng) -> Vec<(LotKey, i64)> {
        (0..count)
            .map(|id| {
                let seconds = match order {
                    "ascending" => id as i64,
                    "descending" => -(id as i64),
                    "both ends" if id % 2 == 0 => id as i64,
                    "both ends" => -(id as i64),
                    _ => rng.i64(-50..50),
                };
                (key(seconds, id), rng.i64(1..1_000))
            })
            .collect()
    }

    #[test]
    fn inserts_in_any_order_keep_the_tree_shallow_and_the_sums_exact() {
        let mut rng = fastrand::Rng::with_seed(7);
        for order in ["ascending", "descending", "both ends", "random"] {
            for count in [0, 1, 2, 3, 5, 16, 17, 40, 300, 5_000] {
                let mut arena = LotArena::default();
                let mut tree = LotTree::default();
                let mut lots = lots_in_order(order, count, &mut rng);
                for &(key, points) in &lots {
                    tree.write(&mut arena).insert(key, points);
                }
                lots.sort();
                assert_answers_like(tree.read(&arena), &lots, &mut rng);
                assert_eq!(arena.len(), lots.len());
                // Half-full nodes but at the two ends of each level.
                let height = match tree {
                    LotTree::Small(_) => 0,
                    LotTree::Big { height, .. } => height,
                };
                assert!(height <= 3, "{order}, {count} lots: height {height}");
                if order != "random" && count > SMALL_CAPACITY as u64 {
                    // Lots at either end fill their leaves.
                    let leaves = count.div_ceil(LEAF_CAPACITY as u64) as usize + 1;
                    let slots = arena.slots.len();
                    assert!(slots <= leaves * LEAF_CAPACITY + 16, "{order}, {count}: {slots}");
                }

                let mut built_arena = LotArena::default();
                let built = LotTree::from_sorted(&mut built_arena, &lots);
                assert_answers_like(built.read(&built_arena), &lots, &mut rng);
            }
        }
    }

    #[test]
    fn a_tree_built_from_sorted_lots_takes_more_lots_anywhere() {
        let mut rng = fastrand::Rng::with_seed(11);
        for count in [1, 15, 16, 17, 256, 257, 4_097] {
            let mut lots = lots_in_order("ascending", count, &mut rng);
            let mut arena = LotArena::default();
            let mut tree = LotTree::from_sorted(&mut arena, &lots);
            for id in count..count + 500 {
                let lot = (key(rng.i64(-10..count as i64 + 10), id), rng.i64(1..50));
                tree.write(&mut arena).insert(lot.0, lot.1);
                lots.push(lot);
            }
            lots.sort();
            assert_answers_like(tree.read(&arena), &lots, &mut rng);
        }
    }

    #[test]
    fn the_first_key_where_several_trees_reach_a_target_is_the_naive_one() {
        let mut rng = fastrand::Rng::with_seed(3);
        for (tree_count, lot_count, order) in [
            (1, 50, "random"),
            (1, 2_000, "random"),
            (2, 100, "ascending"),
            (2, 2_000, "ascending"),
            (3, 2_000, "random"),
            (20, 3_000, "random"),
        ] {
            let lots = lots_in_order(order, lot_count, &mut rng);
            let mut arena = LotArena::default();
            let mut trees = vec![LotTree::default(); tree_count];
            // One more tree with no lots at all takes part too.
            trees.push(LotTree::default());
            // Dealt out by id: two trees in time order interleave lot by lot.
            for &(key, points) in &lots {
                trees[(key.nanos_and_id % tree_count as u64) as usize]
                    .write(&mut arena)
                    .insert(key, points);
            }
            let mut sorted = lots.clone();
            sorted.sort();
            let total: i128 = sorted.iter().map(|&(_, points)| i128::from(points)).sum();
            let trees: Vec<&LotTree> = trees.iter().collect();
            for _ in 0..300 {
                let target = rng.i128(1..total + 2);
                assert_eq!(
                    first_reaching(&arena, &trees, target),
                    naive_first_reaching(&sorted, target),
                    "{tree_count} trees, target {target}"
                );
            }
            assert_eq!(first_reaching(&arena, &trees, total), sorted.last().map(|&(key, _)| key));
            assert_eq!(first_reaching(&arena, &trees, 1), sorted.first().map(|&(key, _)| key));
        }
    }

    #[test]
    fn a_wrong_sum_kept_for_a_child_is_found_by_the_check() {
        let mut rng = fastrand::Rng::with_seed(5);
        let lots = lots_in_order("ascending", 100, &mut rng);
        let mut arena = LotArena::default();
        let tree = LotTree::from_sorted(&mut arena, &lots);
        let LotTree::Big { root, .. } = tree else { panic!("100 lots make a tree") };
        arena.branches[root].sums[1] += 1;
        let error = tree.read(&arena).check().expect_err("the sum is wrong");
        assert!(error.contains("wrong sum"), "{error}");
    }
}
