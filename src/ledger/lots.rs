//! One payer's lots in (timestamp, id) order, with the sum of every subtree's
//! points, so that "how many points are older than this key" and "where do
//! the oldest D points end" are each one descent of a shallow tree.
//!
//! This is what makes a payer's state cheap whatever order its lots arrive
//! in: what is left of a payer is "all but its oldest D points" (D = points
//! ever debited), so its front lot is found by a prefix-sum search instead of
//! a walk over used-up lots.
//!
//! B+ trees in one arena per ledger. Lots sit in leaves of up to
//! [`LEAF_CAPACITY`], in key order; a branch holds up to [`FANOUT`] children
//! and, for each, the newest key under it, the sum of its points and the
//! points of its newest lot, so a descent picks a child by key or by prefix
//! sum without visiting the others. Wide nodes keep a tree shallow (a payer
//! with half a million lots is five levels deep, against nineteen for a
//! binary tree) and each level is a few adjacent cache lines, so a descent
//! costs nearly as little at a million lots as at a thousand.
//!
//! Lots are never removed, so nodes only ever split. A full node splits in
//! half, except at either end of the tree: a lot newer (or older) than every
//! other starts a node of its own, so lots arriving in time order fill their
//! leaves. Every node but the first and last of its level is therefore at
//! least half full, whatever the order, which bounds a tree's height by
//! about log8(n) + 2. A tree that fits one leaf grows it 1, 2, 4… lots at a
//! time, so a payer with few lots takes few bytes.

use super::LotKey;

/// Lots in one leaf at most.
const LEAF_CAPACITY: usize = 16;

/// Children of one branch at most.
const FANOUT: usize = 16;

/// Branch levels a tree may have. Each level but the top has at least twice
/// as many nodes as the one above it minus the two ends, so even 2^64
/// lots stay far below this; inserts and checks assert it.
const MAX_HEIGHT: usize = 32;

// Lengths are kept in a `u8`; a half split leaves both halves non-empty;
// a leaf's capacity doubles up to the full one.
const _: () = assert!(LEAF_CAPACITY <= u8::MAX as usize && LEAF_CAPACITY.is_power_of_two());
const _: () = assert!(FANOUT <= u8::MAX as usize && FANOUT >= 4);

/// A lot: its key and the points it was credited with (positive).
#[derive(Debug, Clone, Copy)]
struct Lot {
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
    /// Leaves: each a run of slots, its lots first, then room to grow.
    slots: Vec<Lot>,
    branches: Vec<Branch>,
    /// Lots of all trees together.
    lots: usize,
}

impl LotArena {
    /// The number of lots of all trees.
    pub(super) fn len(&self) -> usize {
        self.lots
    }

    /// Room for a leaf of `capacity` lots; returns its first slot.
    fn allocate(&mut self, capacity: usize) -> usize {
        let start = self.slots.len();
        self.slots.resize(start + capacity, NO_LOT);
        start
    }

    /// Moves the full root leaf at `start` (`len` lots, a power of two) to
    /// room for twice as many, in place when it is the last run of slots;
    /// returns its new first slot.
    fn grow(&mut self, start: usize, len: usize) -> usize {
        debug_assert!(len.is_power_of_two() && len < LEAF_CAPACITY);
        if start + len == self.slots.len() {
            self.slots.resize(start + 2 * len, NO_LOT);
            return start;
        }
        let moved = self.allocate(2 * len);
        self.slots.copy_within(start..start + len, moved);
        moved
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

/// A payer's lots: an ordered set of (key, points) with prefix sums, whose
/// nodes live in the ledger's [`LotArena`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LotTree {
    /// A branch's index, or at height 0 the first slot of the only leaf.
    root: usize,
    /// Levels of branches above the leaves: 0 while the tree is one leaf.
    height: u8,
    /// At height 0, the lots of the only leaf (0: the tree is empty); its
    /// capacity is the next power of two.
    root_len: u8,
}

/// A tree with its arena, for the queries.
pub(super) struct Lots<'a> {
    arena: &'a LotArena,
    tree: LotTree,
}

/// A tree with its arena, for inserts.
pub(super) struct LotsMut<'a> {
    arena: &'a mut LotArena,
    tree: &'a mut LotTree,
}

impl LotTree {
    /// The tree, readable.
    pub(super) fn read<'a>(&self, arena: &'a LotArena) -> Lots<'a> {
        Lots { arena, tree: *self }
    }

    /// The tree, for inserts.
    pub(super) fn write<'a>(&'a mut self, arena: &'a mut LotArena) -> LotsMut<'a> {
        LotsMut { arena, tree: self }
    }

    /// A tree of `lots`, which must be sorted by key with unique keys and
    /// positive points (the caller checks), built bottom-up in O(n) with
    /// full nodes.
    pub(super) fn from_sorted(arena: &mut LotArena, lots: &[(LotKey, i64)]) -> Self {
        debug_assert!(lots.windows(2).all(|pair| pair[0].0 < pair[1].0));
        arena.lots += lots.len();
        if lots.len() <= LEAF_CAPACITY {
            let start = arena.allocate(lots.len().next_power_of_two());
            for (slot, &(key, points)) in arena.slots[start..].iter_mut().zip(lots) {
                *slot = Lot { key, points };
            }
            return Self { root: start, height: 0, root_len: lots.len() as u8 };
        }
        let mut level: Vec<Entry> = lots
            .chunks(LEAF_CAPACITY)
            .map(|chunk| {
                let start = arena.allocate(LEAF_CAPACITY);
                for (slot, &(key, points)) in arena.slots[start..].iter_mut().zip(chunk) {
                    *slot = Lot { key, points };
                }
                arena.leaf_summary(start, chunk.len())
            })
            .collect();
        let mut height = 0;
        while level.len() > 1 || height == 0 {
            level = level
                .chunks(FANOUT)
                .map(|chunk| {
                    let index = arena.push_branch(Branch::of(chunk));
                    arena.branches[index].summary(index)
                })
                .collect();
            height += 1;
        }
        assert!(height <= MAX_HEIGHT, "a tree is never deeper than {MAX_HEIGHT} levels");
        Self { root: level[0].child, height: height as u8, root_len: 0 }
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
    /// On the way down every child taken gains `points` in its parent's
    /// sum (all of them contain the new lot). A full leaf splits, and its
    /// parent takes the new sibling, splitting in turn when full, up to a
    /// new root at worst.
    pub(super) fn insert(&mut self, key: LotKey, points: i64) {
        assert!(points > 0, "a lot has positive points");
        let lot = Lot { key, points };
        let (arena, tree) = (&mut *self.arena, &mut *self.tree);
        arena.lots += 1;
        if tree.height == 0 && usize::from(tree.root_len) < LEAF_CAPACITY {
            let len = usize::from(tree.root_len);
            if len == 0 {
                tree.root = arena.allocate(1);
            } else if len.is_power_of_two() {
                tree.root = arena.grow(tree.root, len);
            }
            let position = arena.slots[tree.root..tree.root + len].partition_point(|l| l.key < key);
            arena.insert_into_leaf(tree.root, len, position, lot);
            tree.root_len += 1;
            return;
        }

        let mut path = [Step { branch: 0, position: 0, first_of_level: true, last_of_level: true };
            MAX_HEIGHT];
        let height = usize::from(tree.height);
        assert!(height < MAX_HEIGHT, "a tree is never deeper than {MAX_HEIGHT} levels");
        let (mut first_of_level, mut last_of_level) = (true, true);
        let mut node = tree.root;
        let mut leaf_len = usize::from(tree.root_len);
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
            debug_assert!(height > 0, "a root leaf with room was handled above");
            arena.insert_into_leaf(node, leaf_len, position, lot);
            let parent = path[height - 1];
            arena.branches[parent.branch].leaf_lens[parent.position] += 1;
            return;
        }

        // Split the full leaf; `sibling` is the new node, after `node` or
        // (at the very start of the tree) before it.
        let (sibling, sibling_after) = if last_of_level && position == leaf_len {
            let start = arena.allocate(LEAF_CAPACITY);
            arena.slots[start] = lot;
            (arena.leaf_summary(start, 1), true)
        } else if first_of_level && position == 0 {
            let start = arena.allocate(LEAF_CAPACITY);
            arena.slots[start] = lot;
            (arena.leaf_summary(start, 1), false)
        } else {
            let half = LEAF_CAPACITY / 2;
            let start = arena.allocate(LEAF_CAPACITY);
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
        let mut sibling = sibling;
        let mut sibling_after = sibling_after;

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
        tree.root = arena.push_branch(Branch::of(&children));
        tree.height += 1;
        tree.root_len = 0;
    }
}

impl<'a> Lots<'a> {
    /// The points of every lot together.
    pub(super) fn total(&self) -> i128 {
        match self.descend(|_, _, _| true) {
            Ok((before, lots)) => {
                before + lots.iter().map(|lot| i128::from(lot.points)).sum::<i128>()
            }
            Err(total) => total,
        }
    }

    /// Walks down from the root: at each branch, passes over the children
    /// for which `pass(points before the child, its newest key, its sum)`
    /// holds and enters the first that does not. Returns the points before
    /// the leaf reached and its lots, or, when every child of a branch is
    /// passed over, the points of all of them (with those before it).
    fn descend(
        &self,
        pass: impl Fn(i128, LotKey, i128) -> bool,
    ) -> Result<(i128, &'a [Lot]), i128> {
        let arena = self.arena;
        let mut before = 0;
        let mut node = self.tree.root;
        let mut leaf_len = usize::from(self.tree.root_len);
        for _ in 0..self.tree.height {
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
        let tree = self.tree;
        // (branch, next child) for each level above the current leaf.
        let mut stack: Vec<(usize, usize)> = Vec::with_capacity(usize::from(tree.height));
        if tree.height > 0 {
            stack.push((tree.root, 0));
        }
        let mut leaf: &'a [Lot] = if tree.height == 0 {
            &arena.slots[tree.root..tree.root + usize::from(tree.root_len)]
        } else {
            &[]
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
                if stack.len() == usize::from(tree.height) {
                    leaf = &arena.slots[child..child + leaf_len];
                } else {
                    stack.push((child, 0));
                }
            }
        })
    }

    /// Checks the order, the sums and newest keys kept for every child, the
    /// node sizes and that every leaf is at the same depth, and returns how
    /// many lots the tree holds (the caller checks that the trees of an
    /// arena hold every lot once). O(n).
    pub(super) fn check(&self) -> Result<usize, String> {
        let tree = self.tree;
        if usize::from(tree.height) >= MAX_HEIGHT {
            return Err(format!("the lot tree is {} levels deep", tree.height));
        }
        if tree.height == 0 {
            let len = usize::from(tree.root_len);
            if len == 0 {
                return Ok(0);
            }
            let mut newest = None;
            self.check_leaf(tree.root, len, len.next_power_of_two(), &mut newest)?;
            return Ok(len);
        }
        let mut newest = None;
        let mut reached = 0;
        self.check_branch(tree.root, usize::from(tree.height), &mut newest, &mut reached)?;
        Ok(reached)
    }

    /// Checks the leaf at `start` and returns its summary; `newest` is the
    /// key before it, moved to its last.
    fn check_leaf(
        &self,
        start: usize,
        len: usize,
        capacity: usize,
        newest: &mut Option<LotKey>,
    ) -> Result<Entry, String> {
        if len == 0 || len > capacity || start + capacity > self.arena.slots.len() {
            return Err(format!("a leaf holds {len} lots in room for {capacity}"));
        }
        for lot in &self.arena.slots[start..start + len] {
            if newest.is_some_and(|newest| lot.key <= newest) {
                return Err(format!("lot {:?} is out of order", lot.key));
            }
            if lot.points <= 0 {
                return Err(format!("lot {:?} has {} points", lot.key, lot.points));
            }
            *newest = Some(lot.key);
        }
        Ok(self.arena.leaf_summary(start, len))
    }

    /// Checks the branch at `index`, `levels` above the leaves, and what it
    /// keeps of every child; counts its lots into `reached`.
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
                *reached += usize::from(kept.leaf_len);
                self.check_leaf(kept.child, usize::from(kept.leaf_len), LEAF_CAPACITY, newest)?
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

/// The smallest lot key K of `trees` at which their lots together reach
/// `target` points (the sum of every lot at or before K is at least
/// `target`), or `None` if all of them together fall short.
///
/// A simultaneous descent of all trees. Each tree has a cursor: a range of
/// one node's children (or lots) that K's place in that tree is known to lie
/// in, and the points before it. Each range is split in two halves; the
/// *pivot* is the newest lot of the older half, and S is the sum, over all
/// trees, of the points up to the pivot. Then either S (less the newest
/// pivot's own points) already reaches the target, so K is older than the
/// newest pivot and that tree keeps its older half, or it does not, so K is
/// newer than the oldest pivot and that tree keeps its newer half. Every
/// step halves one range (or enters the one child left), so the cost is
/// O(Σ log n · log c) for c trees, whatever their lots are and however they
/// interleave.
pub(super) fn first_reaching(arena: &LotArena, trees: &[LotTree], target: i128) -> Option<LotKey> {
    let total: i128 = trees.iter().map(|tree| tree.read(arena).total()).sum();
    if total < target || trees.is_empty() {
        return None;
    }
    let mut cursors: Vec<Cursor> =
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
    // Each range halves at most log2(FANOUT) + 1 times per level.
    let step_limit = trees.len() * (MAX_HEIGHT + 1) * (FANOUT.ilog2() as usize + 2);
    for _ in 0..step_limit {
        let ((newest_key, newest), (_, oldest)) = (pivots.newest()?, pivots.oldest()?);
        let newest_cursor = &cursors[newest];
        let (_, newest_points) = newest_cursor.pivot(arena)?;
        // Every lot counted here but the newest pivot is older than it.
        let older_than_newest = sum_through_pivots - i128::from(newest_points);
        let (moving, to_older_half) = if older_than_newest >= target {
            (newest, true)
        } else if newest == oldest {
            // One range left, and the points through its pivot reach the
            // target while those before it do not: K is the pivot, when
            // the pivot is one lot.
            if sum_through_pivots >= target && newest_cursor.levels == 0 {
                return Some(newest_key);
            }
            (newest, sum_through_pivots >= target)
        } else {
            // Everything up to the oldest pivot is counted, and falls short.
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
struct Cursor {
    /// Levels above the leaves: 0 for a leaf, whose range holds lots.
    levels: usize,
    /// A branch's index, or a leaf's first slot.
    node: usize,
    low: usize,
    high: usize,
    /// The points of the tree's lots before the range.
    before: i128,
}

impl Cursor {
    /// The whole of `tree`.
    fn of(tree: &LotTree) -> Self {
        let levels = usize::from(tree.height);
        let high = if levels == 0 { usize::from(tree.root_len) } else { usize::MAX };
        Self { levels, node: tree.root, low: 0, high, before: 0 }
    }

    /// The end of the older half of the range: it holds the pivot last.
    fn middle(&self) -> usize {
        self.low + (self.high - self.low).div_ceil(2)
    }

    /// The same place, entering a branch range's only child (repeatedly)
    /// and resolving a whole branch (`high` = MAX) to its children.
    fn entered(mut self, arena: &LotArena) -> Self {
        while self.levels > 0 {
            let branch = &arena.branches[self.node];
            self.high = self.high.min(branch.len());
            if self.high - self.low > 1 {
                break;
            }
            self.node = branch.children[self.low];
            self.levels -= 1;
            self.high =
                if self.levels == 0 { usize::from(branch.leaf_lens[self.low]) } else { usize::MAX };
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
            let lot = arena.slots[self.node + last];
            Some((lot.key, lot.points))
        } else {
            let branch = &arena.branches[self.node];
            Some((branch.newest_keys[last], branch.newest_points[last]))
        }
    }

    /// The points of the older half.
    fn older_half_sum(&self, arena: &LotArena) -> i128 {
        let (low, middle) = (self.low, self.middle());
        if self.levels == 0 {
            arena.slots[self.node + low..self.node + middle]
                .iter()
                .map(|lot| i128::from(lot.points))
                .sum()
        } else {
            arena.branches[self.node].sums[low..middle].iter().sum()
        }
    }

    /// The points of the tree's lots up to the pivot (all before the range
    /// when it is empty).
    fn through_pivot(&self, arena: &LotArena) -> i128 {
        self.before + if self.low == self.high { 0 } else { self.older_half_sum(arena) }
    }

    /// The older half (K is older than the pivot, or is the pivot) or the
    /// newer half (K is newer than the pivot). A leaf's older half leaves
    /// the pivot out when K is known to be older than it.
    fn halved(&self, arena: &LotArena, to_older_half: bool) -> Self {
        let middle = self.middle();
        if to_older_half {
            // A one-lot range whose pivot is not K becomes empty.
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
                assert!(tree.height <= 5, "{order}, {count} lots: height {}", tree.height);
                if order != "random" && count > 0 {
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
            (2, 2_000, "ascending"),
            (3, 2_000, "random"),
            (20, 3_000, "random"),
        ] {
            let lots = lots_in_order(order, lot_count, &mut rng);
            let mut arena = LotArena::default();
            let mut trees = vec![LotTree::default(); tree_count];
            // Dealt out by id: two trees in time order interleave lot by lot.
            for &(key, points) in &lots {
                trees[(key.nanos_and_id % tree_count as u64) as usize]
                    .write(&mut arena)
                    .insert(key, points);
            }
            let mut sorted = lots.clone();
            sorted.sort();
            let total: i128 = sorted.iter().map(|&(_, points)| i128::from(points)).sum();
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
        arena.branches[tree.root].sums[1] += 1;
        let error = tree.read(&arena).check().expect_err("the sum is wrong");
        assert!(error.contains("wrong sum"), "{error}");
    }
}
