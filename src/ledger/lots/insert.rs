//! Inserting a lot: one descent, splitting full nodes on the way back up.

use super::arena::Branch;
use super::*;

/// A node on the way down an insert: the branch, the child taken, and
/// whether the branch is the first or last of its level.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub(crate) branch: usize,
    pub(crate) position: usize,
    pub(crate) first_of_level: bool,
    pub(crate) last_of_level: bool,
}

impl LotsMut<'_> {
    /// Adds a lot whose key is not in the tree. O(log n).
    ///
    /// A small payer's lots move to a B+ tree when they outgrow their
    /// vector. In a tree, every child taken on the way down gains `points`
    /// in its parent's sum (all of them contain the new lot). A full leaf
    /// splits, and its parent takes the new sibling, splitting in turn when
    /// full, up to a new root at worst.
    pub(crate) fn insert(&mut self, key: LotKey, points: i64) {
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
