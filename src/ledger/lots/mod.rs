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
pub(super) use arena::LotArena;
use arena::{Branch, Entry};
pub(super) use reaching::first_reaching;

mod arena;
mod insert;
mod query;
mod reaching;
#[cfg(test)]
mod tests;

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
