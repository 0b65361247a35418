//! The balancers, as pure functions over the usable backends and their effective weights
//! (configured weight × slow-start share): smooth weighted round robin, least connections per
//! unit of weight, and weighted rendezvous hashing.
//!
//! Each returns an order, not one backend: the first is the pick, the rest are where the
//! handshake fails over to, best first.

use std::sync::Mutex;

/// A backend the balancer may choose, by its index in the pool.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub index: usize,
    /// Configured weight × slow-start share (> 0).
    pub weight: f64,
    /// Live sessions.
    pub active: usize,
    /// The backend's identity for hashing ([`hash_bytes`] of its URL): stable across
    /// restarts and reloads, and independent of its place in the list.
    pub id: u64,
}

/// Smooth weighted round robin (nginx's): each pick adds every candidate's weight to its
/// credit and takes the one with the most, which then pays the total. Weights 5:1:1 give
/// `a a b a c a a`, not `a a a a a b c`; equal weights are plain round robin.
#[derive(Debug, Default)]
pub struct SmoothWeighted(Mutex<Vec<f64>>);

impl SmoothWeighted {
    /// The candidates in turn order: this pick first, then the others from the most credit.
    pub fn order(&self, pool_size: usize, cands: &mut [Candidate]) {
        let mut credit = self.0.lock().unwrap_or_else(|p| p.into_inner());
        credit.resize(pool_size, 0.0);
        let total: f64 = cands.iter().map(|c| c.weight).sum();
        for c in cands.iter() {
            credit[c.index] += c.weight;
        }
        // Stable sort: equal credit goes by list order, like nginx.
        cands.sort_by(|a, b| credit[b.index].total_cmp(&credit[a.index]));
        if let Some(first) = cands.first() {
            credit[first.index] -= total;
        }
    }
}

/// A weighted random order (Efraimidis–Spirakis: each candidate drawn as `-ln(u) / weight`,
/// smallest first), for where a client whose sticky backend is first goes should that one
/// fail: spread by weight, and without a turn of the rotation.
pub fn weighted_random_order(cands: &mut [Candidate]) {
    // Non-negative, so the bits order as the numbers do; a weight of 0 draws +inf, last.
    cands.sort_by_cached_key(|c| {
        let u = 1.0 - rand::random::<f64>();
        // `0.0 -`, not `-`: u = 1 would give -0.0, whose bits sort after every other draw.
        ((0.0 - u.ln()) / c.weight).to_bits()
    });
}

/// Fewest live sessions per unit of weight first; ties keep the order they came in (the
/// round robin's), so equal backends share the load.
pub fn least_conn_order(cands: &mut [Candidate]) {
    cands.sort_by(|a, b| (a.active as f64 / a.weight).total_cmp(&(b.active as f64 / b.weight)));
}

/// Highest rendezvous score for `key` first. Each backend's score depends only on the key,
/// its identity and its weight, so a backend that leaves (or is skipped as unhealthy) takes
/// only its own keys with it; the others keep theirs.
pub fn hash_order(key: u64, cands: &mut [Candidate]) {
    cands.sort_by(|a, b| score(key, b).total_cmp(&score(key, a)));
}

/// Weighted rendezvous score (Schindelhauer and Schomaker's logarithmic method): `-w / ln(u)`
/// with `u` uniform in (0, 1) from the key and the backend; the largest wins, and a backend
/// wins a share of keys proportional to its weight.
fn score(key: u64, c: &Candidate) -> f64 {
    let h = mix(key ^ mix(c.id));
    // 53 bits in (0, 1): never 0 (ln 0) nor 1 (ln 1 = 0).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -c.weight / u.ln()
}

/// FNV-1a, 64 bits: a fixed, seedless hash, so a key maps to the same backend in every
/// process and after every restart.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: FNV's low bits are poor on short keys; this spreads every input
/// bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                index: i,
                weight: 1.0,
                active: 0,
                id: hash_bytes(format!("ws://10.0.0.{i}:9000").as_bytes()),
            })
            .collect()
    }

    fn pick(key: u64, cands: &[Candidate]) -> usize {
        let mut c = cands.to_vec();
        hash_order(key, &mut c);
        c[0].index
    }

    fn key(i: usize) -> u64 {
        hash_bytes(format!("user-{i}").as_bytes())
    }

    #[test]
    fn hashing_spreads_10000_keys_evenly_over_5_backends() {
        let all = backends(5);
        let mut counts = [0usize; 5];
        for i in 0..10_000 {
            counts[pick(key(i), &all)] += 1;
        }
        for n in counts {
            assert!(
                (1700..=2300).contains(&n),
                "not within ±15% of 2000: {counts:?}"
            );
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let all = backends(5);
        let before: Vec<usize> = (0..10_000).map(|i| pick(key(i), &all)).collect();
        let on_removed = before.iter().filter(|&&b| b == 3).count();
        let rest: Vec<Candidate> = all.iter().copied().filter(|c| c.index != 3).collect();
        let after: Vec<usize> = (0..10_000).map(|i| pick(key(i), &rest)).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(moved, on_removed);
        assert!(before.iter().zip(&after).all(|(&a, &b)| a == b || a == 3));
    }

    #[test]
    fn weights_are_respected_in_hashing() {
        let mut all = backends(2);
        all[1].weight = 3.0;
        let on_heavy = (0..10_000).filter(|&i| pick(key(i), &all) == 1).count();
        assert!((7000..=8000).contains(&on_heavy), "{on_heavy}");
    }

    #[test]
    fn the_same_key_always_hashes_alike() {
        // No seed: these values hold in every process (a restart keeps the mapping).
        assert_eq!(hash_bytes(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_bytes(b"a"), 0xaf63_dc4c_8601_ec8c);
        let all = backends(5);
        let picks: Vec<usize> = (0..8).map(|i| pick(key(i), &all)).collect();
        assert_eq!(
            picks,
            (0..8)
                .map(|i| pick(key(i), &backends(5)))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let rr = SmoothWeighted::default();
        let mut cands = backends(3);
        cands[0].weight = 5.0;
        let picks: Vec<usize> = (0..7)
            .map(|_| {
                let mut c = cands.clone();
                rr.order(3, &mut c);
                c[0].index
            })
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let plain = SmoothWeighted::default();
        let picks: Vec<usize> = (0..4)
            .map(|_| {
                let mut c = backends(2);
                plain.order(2, &mut c);
                c[0].index
            })
            .collect();
        assert_eq!(picks, [0, 1, 0, 1]);
    }

    #[test]
    fn least_conn_counts_per_weight() {
        let mut c = backends(3);
        c[0].active = 4;
        c[1].active = 3;
        c[2].active = 5;
        c[2].weight = 2.0;
        least_conn_order(&mut c);
        assert_eq!(c.iter().map(|c| c.index).collect::<Vec<_>>(), [2, 1, 0]);
    }
}
