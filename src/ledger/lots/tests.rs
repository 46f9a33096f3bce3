//! The trees against a naive model, over adversarial orders and sizes.

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
