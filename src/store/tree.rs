//! A Fenwick (binary indexed) tree of selectable weights over key slots 1..=cap, cap a power of
//! two. Weighted choice is one descent (O(log n)); a weight change is O(log n) node updates.
//!
//! `lua/lib.lua` and `lua/select.lua` keep the same tree in a Redis hash; this is the in-process
//! twin used by the memory store, written to give the same slot for the same draw.

/// Weights of one traffic group, indexed by slot.
#[derive(Clone, Debug, Default)]
pub struct WeightTree {
    /// `nodes[i]` for i in 1..=cap; `nodes[0]` is unused.
    nodes: Vec<i64>,
}

/// A selectable key left out of one descent (already tried by the request).
#[derive(Clone, Copy, Debug)]
pub struct Excluded {
    pub slot: u64,
    pub weight: i64,
}

fn lowbit(i: u64) -> u64 {
    i & i.wrapping_neg()
}

impl WeightTree {
    pub fn cap(&self) -> u64 {
        self.nodes.len().saturating_sub(1) as u64
    }

    fn node(&self, i: u64) -> i64 {
        self.nodes.get(i as usize).copied().unwrap_or(0)
    }

    /// Grows to `cap` (a power of two at least the current one). The new top node takes the
    /// old total; every other new node covers only empty slots.
    pub fn grow_to(&mut self, cap: u64) {
        let mut cur = self.cap().max(1);
        if self.nodes.is_empty() {
            self.nodes = vec![0; 2];
        }
        while cur < cap {
            let total = self.node(cur);
            self.nodes.resize((cur * 2 + 1) as usize, 0);
            self.nodes[(cur * 2) as usize] = total;
            cur *= 2;
        }
    }

    pub fn add(&mut self, slot: u64, delta: i64) {
        if delta == 0 || slot == 0 {
            return;
        }
        let cap = self.cap();
        let mut i = slot;
        while i <= cap {
            self.nodes[i as usize] += delta;
            i += lowbit(i);
        }
    }

    /// The sum of every slot's weight.
    pub fn total(&self) -> i64 {
        self.node(self.cap())
    }

    /// The slot whose cumulative weight range holds `rand` (uniform in `[0, 2^53)`), with the
    /// excluded slots' weights taken out; `None` when nothing is left to choose.
    pub fn choose(&self, rand: u64, excluded: &[Excluded]) -> Option<u64> {
        let cap = self.cap();
        if cap < 1 {
            return None;
        }
        let total = self.total() - excluded.iter().map(|e| e.weight).sum::<i64>();
        if total <= 0 {
            return None;
        }
        // The same floating-point expression as select.lua, so both pick the same slot.
        let mut rem = (rand as f64 / 9_007_199_254_740_992.0 * total as f64).floor() as i64;
        let mut pos = 0u64;
        let mut step = cap;
        while step >= 1 {
            let next = pos + step;
            if next <= cap {
                let mut v = self.node(next);
                for e in excluded {
                    if e.slot > pos && e.slot <= next {
                        v -= e.weight;
                    }
                }
                if v <= rem {
                    pos = next;
                    rem -= v;
                }
            }
            step /= 2;
        }
        Some(pos + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(weights: &[i64]) -> WeightTree {
        let mut t = WeightTree::default();
        t.grow_to((weights.len() as u64).next_power_of_two());
        for (i, w) in weights.iter().enumerate() {
            t.add(i as u64 + 1, *w);
        }
        t
    }

    /// Draws that split [0, 2^53) into `total` equal parts land on slots in proportion to weight.
    #[test]
    fn choice_covers_each_slot_in_proportion_to_its_weight() {
        let t = tree(&[3, 0, 1, 4, 2]);
        let total = 10u64;
        let mut hits = [0u64; 6];
        for part in 0..total {
            let rand = (part * (1u64 << 53)) / total + 1;
            hits[t.choose(rand, &[]).unwrap() as usize] += 1;
        }
        assert_eq!(hits, [0, 3, 0, 1, 4, 2]);
    }

    #[test]
    fn excluded_slots_are_never_chosen() {
        let t = tree(&[5, 5, 5]);
        let ex = [Excluded { slot: 2, weight: 5 }];
        for i in 0..100u64 {
            let rand = i * ((1u64 << 53) / 100);
            assert_ne!(t.choose(rand, &ex), Some(2));
        }
        let all: Vec<Excluded> = (1..=3).map(|slot| Excluded { slot, weight: 5 }).collect();
        assert_eq!(t.choose(0, &all), None);
    }

    #[test]
    fn growing_keeps_the_total_and_the_choices() {
        let mut t = tree(&[1, 2, 3]);
        let before: Vec<_> = (0..60u64).map(|i| t.choose(i << 47, &[])).collect();
        t.grow_to(64);
        assert_eq!(t.total(), 6);
        let after: Vec<_> = (0..60u64).map(|i| t.choose(i << 47, &[])).collect();
        assert_eq!(before, after);
        t.add(40, 6);
        assert_eq!(t.total(), 12);
        assert_eq!(t.choose((1u64 << 53) - 1, &[]), Some(40));
    }

    #[test]
    fn an_empty_tree_chooses_nothing() {
        assert_eq!(WeightTree::default().choose(0, &[]), None);
        assert_eq!(tree(&[0, 0]).choose(12345, &[]), None);
    }
}
