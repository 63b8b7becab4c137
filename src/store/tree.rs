//! The selectable keys of one traffic group, split into weight classes, and the exact weighted
//! choice over them by rejection sampling: O(1) expected steps whatever the pool size.
//!
//! A key of weight `w > 0` is in class `c = floor(log2 w)` (`2^c <= w < 2^(c+1)`, c in 0..=9
//! since weights are at most 1000). Its bound `B_c = 2^(c+1) - 1` is the largest weight the class
//! can hold, and its upper-bound mass is `M_c = n_c * B_c`. One round draws a class with
//! probability `M_c / sum M`, a member uniformly by rank, and accepts it with probability
//! `w / B_c`: each key wins a round with probability `w / sum M`, so the accepted key follows the
//! weights exactly, and a round succeeds with probability > 1/2 (always, for a class of weight-1
//! keys).
//! Excluded keys (already tried by the request) count as rejections. After [`ROUNDS`] rejected
//! rounds (probability < 1e-9 without exclusions) the choice falls back to the first
//! non-excluded member scanning classes from high to low, by rank.
//!
//! `lua/lib.lua` keeps the same classes as Redis sorted sets `kg:{P}:cls:<g>:<c>` (member = key
//! id, score = weight) with the counts and total in the hash `kg:{P}:clsn:<g>`; `lua/select.lua`
//! runs the same sampler. The random draws come from a Park–Miller stream seeded by the request's
//! integer in `[0, 2^53)`, computed with the same f64 operations in the same order as the
//! script, so both stores choose the same key.

/// Number of weight classes (weights 1..=1000 fit in classes 0..=9).
pub const CLASSES: usize = 10;

/// Rejected rounds before the deterministic fallback.
pub const ROUNDS: usize = 64;

const PM_M: f64 = 2_147_483_647.0;

/// `B_c = 2^(c+1) - 1`: the largest weight class `c` can hold (`select.lua`'s `BOUND`).
fn bound(c: usize) -> f64 {
    ((1u64 << (c + 1)) - 1) as f64
}

/// The class of a weight `w > 0`: floor(log2 w), capped at the last class.
pub fn class_of(w: u32) -> usize {
    ((31 - w.max(1).leading_zeros()) as usize).min(CLASSES - 1)
}

/// The Park–Miller ("minimal standard") stream of select.lua: `x' = 16807 x mod (2^31 - 1)`,
/// every value an integer below 2^53, hence exact in f64 as in Lua.
#[derive(Clone, Debug)]
pub struct Draws {
    x: f64,
}

impl Draws {
    /// Seeds with `x0 = (rand mod (2^31 - 2)) + 1`, in f64 exactly like select.lua.
    pub fn new(rand: u64) -> Draws {
        let m1 = PM_M - 1.0;
        let r = rand as f64;
        let mut x = r - (r / m1).floor() * m1;
        if x < 0.0 {
            x += m1;
        }
        if x >= m1 {
            x -= m1;
        }
        Draws { x: x + 1.0 }
    }

    /// The next uniform draw in (0, 1).
    pub fn next_u(&mut self) -> f64 {
        let u = self.x / PM_M;
        let y = 16807.0 * self.x;
        self.x = y - (y / PM_M).floor() * PM_M;
        u
    }
}

/// The weight classes of one traffic group.
#[derive(Clone, Debug, Default)]
pub struct WeightClasses {
    /// Per class, (weight, id) ordered like the Redis sorted set: by score, then member bytes.
    classes: [Vec<(u32, String)>; CLASSES],
    total: i64,
}

impl WeightClasses {
    /// Adds a selectable key (`w > 0`; zero is ignored).
    pub fn insert(&mut self, id: &str, w: u32) {
        if w == 0 {
            return;
        }
        let v = &mut self.classes[class_of(w)];
        let entry = (w, id.to_string());
        if let Err(at) = v.binary_search(&entry) {
            v.insert(at, entry);
            self.total += w as i64;
        }
    }

    /// Removes a key added with weight `w`.
    pub fn remove(&mut self, id: &str, w: u32) {
        if w == 0 {
            return;
        }
        let v = &mut self.classes[class_of(w)];
        if let Ok(at) = v.binary_search(&(w, id.to_string())) {
            v.remove(at);
            self.total -= w as i64;
        }
    }

    /// The sum of the selectable weights.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Member count of each class.
    pub fn len(&self) -> usize {
        self.classes.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The weighted choice of select.lua. `excluded_weight` is the summed weight of the excluded
    /// keys that are members here, `n_excluded` their number; `is_excluded` tells an excluded id.
    pub fn choose(
        &self,
        rand: u64,
        excluded_weight: i64,
        n_excluded: usize,
        is_excluded: impl Fn(&str) -> bool,
    ) -> Option<&str> {
        if self.total - excluded_weight <= 0 {
            return None;
        }
        let mut mass = [0f64; CLASSES];
        let mut sum = 0f64;
        for (c, m) in mass.iter_mut().enumerate() {
            *m = self.classes[c].len() as f64 * bound(c);
            sum += *m;
        }
        let mut d = Draws::new(rand);
        for _ in 0..ROUNDS {
            let t = (d.next_u() * sum).floor();
            let (mut c, mut cum) = (0usize, mass[0]);
            while cum <= t && c < CLASSES - 1 {
                c += 1;
                cum += mass[c];
            }
            let members = &self.classes[c];
            let r = (d.next_u() * members.len() as f64).floor() as usize;
            let acc = (d.next_u() * bound(c)).floor();
            if let Some((w, id)) = members.get(r) {
                if !is_excluded(id) && acc < *w as f64 {
                    return Some(id);
                }
            }
        }
        self.classes.iter().rev().find_map(|members| {
            members
                .iter()
                .take(n_excluded + 1)
                .map(|(_, id)| id.as_str())
                .find(|id| !is_excluded(id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(weights: &[u32]) -> WeightClasses {
        let mut t = WeightClasses::default();
        for (i, w) in weights.iter().enumerate() {
            t.insert(&format!("k{i}"), *w);
        }
        t
    }

    fn seeds(n: u64) -> impl Iterator<Item = u64> {
        // Spread over [0, 2^53), like the replicas' draws.
        (0..n).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11)
    }

    #[test]
    fn classes_are_floor_log2() {
        assert_eq!(class_of(1), 0);
        assert_eq!(class_of(2), 1);
        assert_eq!(class_of(3), 1);
        assert_eq!(class_of(4), 2);
        assert_eq!(class_of(511), 8);
        assert_eq!(class_of(512), 9);
        assert_eq!(class_of(1000), 9);
    }

    #[test]
    fn the_stream_is_park_miller() {
        let mut d = Draws::new(0);
        assert_eq!(d.next_u() * PM_M, 1.0);
        assert_eq!((d.next_u() * PM_M).round(), 16807.0);
        assert_eq!((d.next_u() * PM_M).round(), 282_475_249.0);
        // The 10,000th value from seed 1 is 1,043,618,065 (Park & Miller, 1988).
        let mut d = Draws::new(0);
        for _ in 0..10_000 {
            d.next_u();
        }
        assert_eq!(d.x, 1_043_618_065.0);
        let mut d = Draws::new((1u64 << 53) - 1);
        let u = d.next_u();
        assert!(u > 0.0 && u < 1.0);
    }

    /// Over a fixed set of seeds, each key's share is its weight's share (within 3 sigma).
    #[test]
    fn choice_follows_the_weights_over_a_fixed_set_of_seeds() {
        let weights = [3u32, 0, 1, 4, 2, 700, 1000, 63, 64];
        let t = classes(&weights);
        let total: u32 = weights.iter().sum();
        let n = 200_000u64;
        let mut hits = vec![0u64; weights.len()];
        for s in seeds(n) {
            let id = t.choose(s, 0, 0, |_| false).unwrap();
            hits[id[1..].parse::<usize>().unwrap()] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let p = *w as f64 / total as f64;
            let expected = n as f64 * p;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt().max(1.0);
            let got = hits[i] as f64;
            assert!(
                (got - expected).abs() <= 4.0 * sigma,
                "key {i} (weight {w}): {got} hits, expected {expected:.0}"
            );
        }
        assert_eq!(hits[1], 0, "weight 0 is never chosen");
    }

    #[test]
    fn the_same_seed_gives_the_same_key() {
        let t = classes(&[5, 6, 7, 100, 900]);
        for s in seeds(1000) {
            assert_eq!(t.choose(s, 0, 0, |_| false), t.choose(s, 0, 0, |_| false));
        }
    }

    #[test]
    fn excluded_keys_are_never_chosen() {
        let t = classes(&[5, 5, 5, 900]);
        for s in seeds(2000) {
            let got = t.choose(s, 905, 2, |id| id == "k1" || id == "k3");
            assert!(matches!(got, Some("k0") | Some("k2")), "{got:?}");
        }
        // Only a light key is left beside a heavy excluded one: the fallback still finds it.
        let t = classes(&[1, 1000]);
        for s in seeds(2000) {
            assert_eq!(t.choose(s, 1000, 1, |id| id == "k1"), Some("k0"));
        }
        let all = |_: &str| true;
        assert_eq!(t.choose(0, 1001, 2, all), None);
    }

    #[test]
    fn removing_takes_a_key_out() {
        let mut t = classes(&[3, 4]);
        t.remove("k1", 4);
        assert_eq!(t.total(), 3);
        assert_eq!(t.len(), 1);
        for s in seeds(100) {
            assert_eq!(t.choose(s, 0, 0, |_| false), Some("k0"));
        }
    }

    #[test]
    fn an_empty_group_chooses_nothing() {
        assert_eq!(WeightClasses::default().choose(0, 0, 0, |_| false), None);
        assert_eq!(classes(&[0, 0]).choose(12345, 0, 0, |_| false), None);
        assert!(classes(&[0]).is_empty());
    }
}
