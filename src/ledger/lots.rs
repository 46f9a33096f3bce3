//! One payer's lots in (timestamp, id) order, with the sum of every subtree's
//! points, so that "how many points are older than this key" and "where do
//! the oldest D points end" are each one descent of a balanced tree.
//!
//! This is what makes a payer's state cheap whatever order its lots arrive
//! in: what is left of a payer is "all but its oldest D points" (D = points
//! ever debited), so its front lot is found by a prefix-sum search instead of
//! a walk over used-up lots.
//!
//! AVL trees in one arena per ledger: lots are never removed, so nodes are
//! only ever appended, indices are stable, and a tree's height stays below
//! 1.44·log2(n + 2) in the worst case (no randomness, so no input order can
//! degrade it). All payers of a ledger share the arena, so its spare
//! capacity is one vector's, not one per payer: a node is 48 bytes.

use std::cmp::Ordering;

use super::{LotKey, MAX_TRANSACTION_ID};

/// Index of a node in the arena; [`NIL`] is no node.
type NodeIndex = u32;

/// The absent child.
const NIL: NodeIndex = NodeIndex::MAX;

// A payer never has more lots than its user has transactions, so every lot's
// index fits below NIL.
const _: () = assert!(MAX_TRANSACTION_ID < NIL as u64);

/// The deepest an AVL tree of fewer than 2^32 nodes can be (1.44·32 < 47).
const MAX_HEIGHT: usize = 48;

#[derive(Debug, Clone)]
struct Node {
    key: LotKey,
    points: i64,
    /// Points of this node and all its descendants: never negative, and
    /// below 2^95 (fewer than 2^32 lots of less than 2^63 points; a payer's
    /// lifetime credits can pass `i64::MAX`, its balance cannot). Two words,
    /// so that the node packs into 48 bytes.
    sum_low: u64,
    sum_high: u32,
    left: NodeIndex,
    right: NodeIndex,
    /// Height of the subtree: 1 for a leaf.
    height: u8,
}

const _: () = assert!(std::mem::size_of::<Node>() == 48);

impl Node {
    fn sum(&self) -> i128 {
        i128::from(self.sum_high) << 64 | i128::from(self.sum_low)
    }

    fn set_sum(&mut self, sum: i128) {
        debug_assert!((0..1 << 95).contains(&sum), "a sum of lots fits 95 bits");
        // Truncation to the two halves is the point of these casts.
        (self.sum_low, self.sum_high) = (sum as u64, (sum >> 64) as u32);
    }
}

/// The nodes of every lot tree of one ledger.
#[derive(Debug, Clone, Default)]
pub(super) struct LotArena {
    nodes: Vec<Node>,
}

impl LotArena {
    /// The number of lots of all trees.
    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// A payer's lots: an ordered set of (key, points) with prefix sums, whose
/// nodes live in the ledger's [`LotArena`].
#[derive(Debug, Clone, Copy)]
pub(super) struct LotTree {
    root: NodeIndex,
}

impl Default for LotTree {
    fn default() -> Self {
        Self { root: NIL }
    }
}

/// A tree with its arena, for the queries.
pub(super) struct Lots<'a> {
    nodes: &'a [Node],
    root: NodeIndex,
}

/// A tree with its arena, for inserts.
pub(super) struct LotsMut<'a> {
    nodes: &'a mut Vec<Node>,
    tree: &'a mut LotTree,
}

impl LotTree {
    /// The tree, readable.
    pub(super) fn read<'a>(&self, arena: &'a LotArena) -> Lots<'a> {
        Lots { nodes: &arena.nodes, root: self.root }
    }

    /// The tree, for inserts.
    pub(super) fn write<'a>(&'a mut self, arena: &'a mut LotArena) -> LotsMut<'a> {
        LotsMut { nodes: &mut arena.nodes, tree: self }
    }

    /// A tree of `lots`, which must be sorted by key with unique keys
    /// (the caller checks), built balanced in O(n).
    pub(super) fn from_sorted(arena: &mut LotArena, lots: &[(LotKey, i64)]) -> Self {
        debug_assert!(lots.windows(2).all(|pair| pair[0].0 < pair[1].0));
        arena.nodes.reserve(lots.len());
        let mut tree = Self::default();
        let root = tree.write(arena).build(lots);
        tree.root = root;
        tree
    }
}

/// Sum and height of a node, 0 for [`NIL`]: shared by both views.
fn sum_of(nodes: &[Node], node: NodeIndex) -> i128 {
    if node == NIL { 0 } else { nodes[node as usize].sum() }
}

fn height_of(nodes: &[Node], node: NodeIndex) -> u8 {
    if node == NIL { 0 } else { nodes[node as usize].height }
}

impl LotsMut<'_> {
    /// Builds the middle lot's subtree of `lots` and returns its index; the
    /// recursion halves the slice, so its depth is log2(n).
    fn build(&mut self, lots: &[(LotKey, i64)]) -> NodeIndex {
        if lots.is_empty() {
            return NIL;
        }
        let middle = lots.len() / 2;
        let left = self.build(&lots[..middle]);
        let right = self.build(&lots[middle + 1..]);
        let (key, points) = lots[middle];
        self.push(key, points, left, right)
    }

    fn push(&mut self, key: LotKey, points: i64, left: NodeIndex, right: NodeIndex) -> NodeIndex {
        let index = NodeIndex::try_from(self.nodes.len())
            .ok()
            .filter(|&index| index != NIL)
            .expect("a payer has fewer lots than the transaction limit");
        self.nodes.push(Node { key, points, sum_low: 0, sum_high: 0, left, right, height: 1 });
        self.update(index);
        index
    }

    fn sum(&self, node: NodeIndex) -> i128 {
        sum_of(self.nodes, node)
    }

    fn height(&self, node: NodeIndex) -> u8 {
        height_of(self.nodes, node)
    }

    /// Recomputes a node's height and sum from its children.
    fn update(&mut self, node: NodeIndex) {
        let Node { left, right, points, .. } = self.nodes[node as usize];
        let height = 1 + self.height(left).max(self.height(right));
        let sum = self.sum(left) + i128::from(points) + self.sum(right);
        let node = &mut self.nodes[node as usize];
        node.height = height;
        node.set_sum(sum);
    }

    /// Adds a lot whose key is not in the tree. O(log n).
    ///
    /// On the way down every ancestor's sum grows by `points` (all of them
    /// contain the new lot); on the way up only heights are fixed, and only
    /// as far as they change: after one rotation, or at the first node whose
    /// height stays, the tree above is already right.
    pub(super) fn insert(&mut self, key: LotKey, points: i64) {
        debug_assert!(points > 0);
        let leaf = self.push(key, points, NIL, NIL);
        if self.tree.root == NIL {
            self.tree.root = leaf;
            return;
        }
        // (node, whether the path goes on to its left child)
        let mut path = [(NIL, false); MAX_HEIGHT];
        let mut depth = 0;
        let mut node = self.tree.root;
        loop {
            assert!(depth < MAX_HEIGHT, "an AVL tree is never deeper than {MAX_HEIGHT}");
            let here = &mut self.nodes[node as usize];
            here.set_sum(here.sum() + i128::from(points));
            let go_left = match key.cmp(&here.key) {
                Ordering::Less => true,
                Ordering::Greater => false,
                Ordering::Equal => {
                    unreachable!("lot keys are unique: they hold the transaction id")
                }
            };
            path[depth] = (node, go_left);
            depth += 1;
            let child = if go_left { &mut here.left } else { &mut here.right };
            if *child == NIL {
                *child = leaf;
                break;
            }
            node = *child;
        }
        while depth > 0 {
            depth -= 1;
            let (node, _) = path[depth];
            let height_before = self.nodes[node as usize].height;
            let subtree_root = self.rebalance(node);
            if subtree_root != node {
                match depth.checked_sub(1).map(|parent| path[parent]) {
                    None => self.tree.root = subtree_root,
                    Some((parent, true)) => self.nodes[parent as usize].left = subtree_root,
                    Some((parent, false)) => self.nodes[parent as usize].right = subtree_root,
                }
                return;
            }
            if self.nodes[node as usize].height == height_before {
                return;
            }
        }
    }

    /// Restores the AVL balance at `node` after one of its subtrees grew by
    /// one level, and returns the subtree's new root.
    fn rebalance(&mut self, node: NodeIndex) -> NodeIndex {
        self.update(node);
        let Node { left, right, .. } = self.nodes[node as usize];
        let balance = i16::from(self.height(left)) - i16::from(self.height(right));
        if balance > 1 {
            let left_child = &self.nodes[left as usize];
            if self.height(left_child.left) < self.height(left_child.right) {
                self.nodes[node as usize].left = self.rotate_left(left);
            }
            return self.rotate_right(node);
        }
        if balance < -1 {
            let right_child = &self.nodes[right as usize];
            if self.height(right_child.right) < self.height(right_child.left) {
                self.nodes[node as usize].right = self.rotate_right(right);
            }
            return self.rotate_left(node);
        }
        node
    }

    fn rotate_right(&mut self, node: NodeIndex) -> NodeIndex {
        let pivot = self.nodes[node as usize].left;
        self.nodes[node as usize].left = self.nodes[pivot as usize].right;
        self.nodes[pivot as usize].right = node;
        self.update(node);
        self.update(pivot);
        pivot
    }

    fn rotate_left(&mut self, node: NodeIndex) -> NodeIndex {
        let pivot = self.nodes[node as usize].right;
        self.nodes[node as usize].right = self.nodes[pivot as usize].left;
        self.nodes[pivot as usize].left = node;
        self.update(node);
        self.update(pivot);
        pivot
    }
}

impl<'a> Lots<'a> {
    /// The points of every lot together.
    pub(super) fn total(&self) -> i128 {
        self.sum(self.root)
    }

    fn sum(&self, node: NodeIndex) -> i128 {
        sum_of(self.nodes, node)
    }

    fn height(&self, node: NodeIndex) -> u8 {
        height_of(self.nodes, node)
    }

    /// The points of the lots with a key before `key` (`None`: every lot). O(log n).
    pub(super) fn sum_before(&self, key: Option<LotKey>) -> i128 {
        let Some(key) = key else { return self.total() };
        let mut sum = 0;
        let mut node = self.root;
        while node != NIL {
            let here = &self.nodes[node as usize];
            if here.key < key {
                sum += self.sum(here.left) + i128::from(here.points);
                node = here.right;
            } else {
                node = here.left;
            }
        }
        sum
    }

    /// The points of the lots with a key at or before `key`. O(log n).
    pub(super) fn sum_through(&self, key: LotKey) -> i128 {
        let mut sum = 0;
        let mut node = self.root;
        while node != NIL {
            let here = &self.nodes[node as usize];
            if here.key <= key {
                sum += self.sum(here.left) + i128::from(here.points);
                node = here.right;
            } else {
                node = here.left;
            }
        }
        sum
    }

    /// The lot with `key`: the points of the lots before it, and its own.
    pub(super) fn find(&self, key: LotKey) -> Option<(i128, i64)> {
        let mut before = 0;
        let mut node = self.root;
        while node != NIL {
            let here = &self.nodes[node as usize];
            match key.cmp(&here.key) {
                Ordering::Less => node = here.left,
                Ordering::Greater => {
                    before += self.sum(here.left) + i128::from(here.points);
                    node = here.right;
                }
                Ordering::Equal => return Some((before + self.sum(here.left), here.points)),
            }
        }
        None
    }

    /// The oldest lot not wholly inside the oldest `consumed` points, with
    /// how many of its points lie past them (1..=its points); `None` when
    /// `consumed` covers every lot. O(log n).
    pub(super) fn first_past(&self, consumed: i128) -> Option<(LotKey, i64)> {
        debug_assert!(consumed >= 0);
        // Invariant: `before` is the sum of every lot left of `node`'s subtree.
        let mut before = 0;
        let mut node = self.root;
        let mut found = None;
        while node != NIL {
            let here = &self.nodes[node as usize];
            let through = before + self.sum(here.left) + i128::from(here.points);
            if through > consumed {
                // This lot ends past `consumed`; an older one might too.
                // Past by at most its own points, which fit in i64.
                let past = (through - consumed).min(i128::from(here.points)) as i64;
                found = Some((here.key, past));
                node = here.left;
            } else {
                before = through;
                node = here.right;
            }
        }
        found
    }

    /// Every lot in key order. The explicit stack is bounded by the height.
    pub(super) fn iter(&self) -> impl Iterator<Item = (LotKey, i64)> + 'a {
        let nodes = self.nodes;
        let mut stack: Vec<NodeIndex> = Vec::with_capacity(MAX_HEIGHT);
        let mut node = self.root;
        std::iter::from_fn(move || {
            while node != NIL {
                stack.push(node);
                node = nodes[node as usize].left;
            }
            let next = stack.pop()?;
            let here = &nodes[next as usize];
            node = here.right;
            Some((here.key, here.points))
        })
    }

    /// Checks the order, the sums, the heights and the AVL balance of every
    /// node, and returns how many nodes the tree holds (the caller checks
    /// that the trees of an arena hold each node once). O(n).
    pub(super) fn check(&self) -> Result<usize, String> {
        let mut reached = 0usize;
        self.check_below(self.root, None, None, &mut reached, 0)?;
        Ok(reached)
    }

    fn check_below(
        &self,
        node: NodeIndex,
        above: Option<LotKey>,
        below: Option<LotKey>,
        reached: &mut usize,
        depth: usize,
    ) -> Result<(), String> {
        if node == NIL {
            return Ok(());
        }
        if depth > MAX_HEIGHT || *reached >= self.nodes.len() {
            return Err("the lot tree has a cycle".to_owned());
        }
        *reached += 1;
        let here = &self.nodes[node as usize];
        if above.is_some_and(|above| here.key <= above) || below.is_some_and(|b| here.key >= b) {
            return Err(format!("lot {:?} is out of order", here.key));
        }
        if here.points <= 0 {
            return Err(format!("lot {:?} has {} points", here.key, here.points));
        }
        self.check_below(here.left, above, Some(here.key), reached, depth + 1)?;
        self.check_below(here.right, Some(here.key), below, reached, depth + 1)?;
        let (left, right) = (self.height(here.left), self.height(here.right));
        if here.height != 1 + left.max(right) || left.abs_diff(right) > 1 {
            return Err(format!("lot {:?} has a wrong height or is unbalanced", here.key));
        }
        let sum = self.sum(here.left) + i128::from(here.points) + self.sum(here.right);
        if here.sum() != sum {
            return Err(format!("lot {:?} has a wrong subtree sum", here.key));
        }
        Ok(())
    }
}

/// The smallest lot key K of `trees` at which their lots together reach
/// `target` points (the sum of every lot at or before K is at least
/// `target`), or `None` if all of them together fall short.
///
/// A simultaneous descent of all trees: the tree whose current root is
/// newest either goes left (when the lots before that root already reach
/// the target) or the tree whose root is oldest goes right (its root and
/// everything before it cannot be K). Every step moves one tree one level
/// down, so the cost is O(Σ heights · log c) for c trees, whatever their
/// lots are and however they interleave.
pub(super) fn first_reaching(arena: &LotArena, trees: &[LotTree], target: i128) -> Option<LotKey> {
    let nodes = &arena.nodes;
    let total: i128 = trees.iter().map(|tree| sum_of(nodes, tree.root)).sum();
    if total < target || trees.is_empty() {
        return None;
    }
    /// A tree's current subtree and the points of its lots left of it.
    struct Cursor {
        node: NodeIndex,
        before: i128,
    }
    // Points at or before the cursor's root, counting the lots left of it.
    let through_root = |cursor: &Cursor| -> i128 {
        match nodes.get(cursor.node as usize) {
            Some(root) => cursor.before + sum_of(nodes, root.left) + i128::from(root.points),
            None => cursor.before,
        }
    };
    let mut cursors: Vec<Cursor> =
        trees.iter().map(|tree| Cursor { node: tree.root, before: 0 }).collect();
    let mut sum_through_roots: i128 = cursors.iter().map(through_root).sum();
    let mut roots: std::collections::BTreeSet<(LotKey, usize)> = cursors
        .iter()
        .enumerate()
        .filter(|(_, cursor)| cursor.node != NIL)
        .map(|(position, cursor)| (nodes[cursor.node as usize].key, position))
        .collect();
    let step_limit = trees.len() * (MAX_HEIGHT + 1);
    for _ in 0..step_limit {
        let (&(newest_key, newest), &(_, oldest)) = (roots.last()?, roots.first()?);
        let newest_root = &nodes[cursors[newest].node as usize];
        // Every lot counted here is before the newest root.
        let before_newest = sum_through_roots - i128::from(newest_root.points);
        let (moving, go_left) = if before_newest >= target {
            (newest, true)
        } else if newest == oldest {
            if sum_through_roots >= target {
                return Some(newest_key);
            }
            (newest, false)
        } else {
            // The oldest root has at most `before_newest` at or before it.
            (oldest, false)
        };
        let cursor = &mut cursors[moving];
        let root = &nodes[cursor.node as usize];
        roots.remove(&(root.key, moving));
        sum_through_roots -= through_root(cursor);
        if go_left {
            cursor.node = root.left;
        } else {
            cursor.before += sum_of(nodes, root.left) + i128::from(root.points);
            cursor.node = root.right;
        }
        sum_through_roots += through_root(cursor);
        if cursor.node != NIL {
            roots.insert((nodes[cursor.node as usize].key, moving));
        }
    }
    unreachable!("every step moves one tree one level down")
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

    #[test]
    fn wide_sums_round_trip_through_their_two_words() {
        let mut node = Node {
            key: key(0, 0),
            points: 1,
            sum_low: 0,
            sum_high: 0,
            left: NIL,
            right: NIL,
            height: 1,
        };
        for value in [0, 1, i128::from(i64::MAX) * 3, i128::from(u64::MAX) + 5, (1 << 95) - 1] {
            node.set_sum(value);
            assert_eq!(node.sum(), value);
        }
    }

    #[test]
    fn inserts_in_any_order_keep_the_tree_balanced_and_the_sums_exact() {
        let mut rng = fastrand::Rng::with_seed(7);
        for order in ["ascending", "descending", "random"] {
            let mut arena = LotArena::default();
            let mut tree = LotTree::default();
            let mut lots = Vec::new();
            for id in 0..2_000u64 {
                let seconds = match order {
                    "ascending" => id as i64,
                    "descending" => -(id as i64),
                    _ => rng.i64(-50..50),
                };
                let points = rng.i64(1..1_000);
                tree.write(&mut arena).insert(key(seconds, id), points);
                lots.push((key(seconds, id), points));
            }
            let tree = tree.read(&arena);
            assert_eq!(tree.check(), Ok(lots.len()));
            let height = tree.height(tree.root);
            assert!(height <= 16, "{order}: height {height}");
            lots.sort();
            assert_eq!(tree.iter().collect::<Vec<_>>(), lots);
            let total: i128 = lots.iter().map(|&(_, points)| i128::from(points)).sum();
            assert_eq!(tree.total(), total);
            for _ in 0..500 {
                let probe = key(rng.i64(-60..2_100), rng.u64(0..2_100));
                assert_eq!(tree.sum_before(Some(probe)), naive_sum_before(&lots, probe));
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
            for &(key, points) in &lots {
                assert_eq!(tree.find(key), Some((naive_sum_before(&lots, key), points)));
                assert_eq!(
                    tree.sum_through(key),
                    naive_sum_before(&lots, key) + i128::from(points)
                );
            }
            let mut arena = LotArena::default();
            let built = LotTree::from_sorted(&mut arena, &lots);
            // Three trees of the same lots, dealt out by id; the first lot
            // where all of them together reach a target is the naive one.
            let mut trees = [LotTree::default(); 3];
            for &(key, points) in &lots {
                trees[(key.nanos_and_id % 3) as usize].write(&mut arena).insert(key, points);
            }
            for _ in 0..300 {
                let target = rng.i128(1..total + 2);
                let naive = lots
                    .iter()
                    .scan(0i128, |through, &(key, points)| {
                        *through += i128::from(points);
                        Some((key, *through))
                    })
                    .find(|&(_, through)| through >= target)
                    .map(|(key, _)| key);
                assert_eq!(first_reaching(&arena, &trees, target), naive, "target {target}");
            }
            assert_eq!(built.read(&arena).iter().collect::<Vec<_>>(), lots);
            assert_eq!(built.read(&arena).check(), Ok(lots.len()));
        }
    }
}
