//! One payer's lots in (timestamp, id) order, with the sum of every subtree's
//! points, so that "how many points are older than this key" and "where do
//! the oldest D points end" are each one descent of a balanced tree.
//!
//! This is what makes a payer's state cheap whatever order its lots arrive
//! in: what is left of a payer is "all but its oldest D points" (D = points
//! ever debited), so its front lot is found by a prefix-sum search instead of
//! a walk over used-up lots.
//!
//! An AVL tree in an arena: lots are never removed, so nodes are only ever
//! appended, indices are stable, and the height stays below 1.44·log2(n + 2)
//! in the worst case (no randomness, so no input order can degrade it).

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

/// A sum of lots' points. A payer's lifetime credits can pass `i64::MAX`
/// (its balance cannot), so sums are 128 bits wide; they are stored as two
/// words to keep a node at 8-byte alignment (56 bytes, not 64).
#[derive(Debug, Clone, Copy, Default)]
struct WideSum {
    low: u64,
    high: i64,
}

impl WideSum {
    fn get(self) -> i128 {
        i128::from(self.high) << 64 | i128::from(self.low)
    }

    fn new(value: i128) -> Self {
        // Truncation to the two halves is the point of these casts.
        Self { low: value as u64, high: (value >> 64) as i64 }
    }
}

#[derive(Debug, Clone)]
struct Node {
    key: LotKey,
    points: i64,
    /// Points of this node and all its descendants.
    sum: WideSum,
    left: NodeIndex,
    right: NodeIndex,
    /// Height of the subtree: 1 for a leaf.
    height: u8,
}

/// A payer's lots: an ordered set of (key, points) with prefix sums.
#[derive(Debug, Clone)]
pub(super) struct LotTree {
    nodes: Vec<Node>,
    root: NodeIndex,
}

impl Default for LotTree {
    fn default() -> Self {
        Self { nodes: Vec::new(), root: NIL }
    }
}

impl LotTree {
    /// A tree of `lots`, which must be sorted by key with unique keys
    /// (the caller checks), built balanced in O(n).
    pub(super) fn from_sorted(lots: &[(LotKey, i64)]) -> Self {
        debug_assert!(lots.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let mut tree = Self { nodes: Vec::with_capacity(lots.len()), root: NIL };
        tree.root = tree.build(lots);
        tree
    }

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
        self.nodes.push(Node {
            key,
            points,
            sum: WideSum::new(i128::from(points)),
            left,
            right,
            height: 1,
        });
        self.update(index);
        index
    }

    /// The points of every lot together.
    pub(super) fn total(&self) -> i128 {
        self.sum(self.root)
    }

    fn sum(&self, node: NodeIndex) -> i128 {
        if node == NIL { 0 } else { self.nodes[node as usize].sum.get() }
    }

    fn height(&self, node: NodeIndex) -> u8 {
        if node == NIL { 0 } else { self.nodes[node as usize].height }
    }

    /// Recomputes a node's height and sum from its children.
    fn update(&mut self, node: NodeIndex) {
        let Node { left, right, points, .. } = self.nodes[node as usize];
        let height = 1 + self.height(left).max(self.height(right));
        let sum = self.sum(left) + i128::from(points) + self.sum(right);
        let node = &mut self.nodes[node as usize];
        node.height = height;
        node.sum = WideSum::new(sum);
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
        if self.root == NIL {
            self.root = leaf;
            return;
        }
        // (node, whether the path goes on to its left child)
        let mut path = [(NIL, false); MAX_HEIGHT];
        let mut depth = 0;
        let mut node = self.root;
        loop {
            assert!(depth < MAX_HEIGHT, "an AVL tree is never deeper than {MAX_HEIGHT}");
            let here = &mut self.nodes[node as usize];
            here.sum = WideSum::new(here.sum.get() + i128::from(points));
            let go_left = match key.cmp(&here.key) {
                Ordering::Less => true,
                Ordering::Greater => false,
                Ordering::Equal => unreachable!("lot keys are unique: they hold the transaction id"),
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
                    None => self.root = subtree_root,
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
    pub(super) fn iter(&self) -> impl Iterator<Item = (LotKey, i64)> + '_ {
        let mut stack: Vec<NodeIndex> = Vec::with_capacity(MAX_HEIGHT);
        let mut node = self.root;
        std::iter::from_fn(move || {
            while node != NIL {
                stack.push(node);
                node = self.nodes[node as usize].left;
            }
            let next = stack.pop()?;
            let here = &self.nodes[next as usize];
            node = here.right;
            Some((here.key, here.points))
        })
    }

    /// Checks the order, the sums, the heights and the AVL balance of every
    /// node, and that every node is reachable exactly once. O(n).
    pub(super) fn check(&self) -> Result<(), String> {
        let mut reached = 0usize;
        self.check_below(self.root, None, None, &mut reached, 0)?;
        if reached != self.nodes.len() {
            return Err(format!("{reached} of {} lots reachable", self.nodes.len()));
        }
        Ok(())
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
        if here.sum.get() != sum {
            return Err(format!("lot {:?} has a wrong subtree sum", here.key));
        }
        Ok(())
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

    #[test]
    fn wide_sums_round_trip_through_their_two_words() {
        for value in [0, 1, -1, i128::from(i64::MAX) * 3, i128::from(u64::MAX) + 5, -(1 << 90)] {
            assert_eq!(WideSum::new(value).get(), value);
        }
    }

    #[test]
    fn inserts_in_any_order_keep_the_tree_balanced_and_the_sums_exact() {
        let mut rng = fastrand::Rng::with_seed(7);
        for order in ["ascending", "descending", "random"] {
            let mut tree = LotTree::default();
            let mut lots = Vec::new();
            for id in 0..2_000u64 {
                let seconds = match order {
                    "ascending" => id as i64,
                    "descending" => -(id as i64),
                    _ => rng.i64(-50..50),
                };
                let points = rng.i64(1..1_000);
                tree.insert(key(seconds, id), points);
                lots.push((key(seconds, id), points));
            }
            tree.check().unwrap();
            assert!(usize::from(tree.height(tree.root)) <= 16, "{order}: height {}", tree.height(tree.root));
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
                    .map(|(key, points, through)| (key, (through - consumed).min(i128::from(points)) as i64))
                    .next();
                assert_eq!(tree.first_past(consumed), expected);
            }
            for &(key, points) in &lots {
                assert_eq!(tree.find(key), Some((naive_sum_before(&lots, key), points)));
                assert_eq!(tree.sum_through(key), naive_sum_before(&lots, key) + i128::from(points));
            }
            assert_eq!(LotTree::from_sorted(&lots).iter().collect::<Vec<_>>(), lots);
            LotTree::from_sorted(&lots).check().unwrap();
        }
    }
}
