//! The SecAgg+ neighbour graph (`docs/secagg.md` §3): a Harary graph H(k, n) on a random
//! permutation of the roster, i.e. each client is joined to the k/2 clients on each side of it
//! around a shuffled ring; the complete graph when `k = n − 1`.
//!
//! The permutation is a Fisher–Yates shuffle driven by the AES-256-CTR PRG under a key derived
//! from the session id, so every client computes the same graph from `Setup` alone and the server
//! cannot show different graphs to different clients.

use crate::error::Error;
use crate::keys::hkdf32;
use crate::prg::{MaskPrg, Sign, apply_masks_serial};
use crate::{ClientId, SessionId};

/// The neighbour relation of one session.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Roster index → position on the ring.
    position: Vec<u32>,
    /// Position on the ring → roster index.
    ring: Vec<u32>,
    half: u32,
    complete: bool,
}

impl Graph {
    /// The graph of `n` roster entries with degree `k` for `session`.
    pub fn new(session: &SessionId, n: u32, k: u32) -> Result<Graph, Error> {
        let complete = k + 1 >= n;
        let mut ring: Vec<u32> = (0..n).collect();
        if !complete {
            // One u32 of keystream per swap, with Lemire's nearly-divisionless bounded draw
            // (rejection keeps it exactly uniform).
            let seed = hkdf32(&session.0, b"aegis-secagg v1 graph", &[])?;
            let prg = MaskPrg::new(&seed)?;
            let mut stream = vec![0u32; 2 * n as usize + 64];
            apply_masks_serial(&mut stream, &[(&prg, Sign::Plus)])?;
            let mut words = stream.iter().copied();
            let mut refill = 0u64;
            for i in (1..n).rev() {
                let bound = u64::from(i) + 1;
                let j = loop {
                    let w = match words.next() {
                        Some(w) => u64::from(w),
                        None => {
                            // Practically unreachable; continue deterministically.
                            refill += 1;
                            refill.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
                        }
                    };
                    let m = w * bound;
                    let low = m & 0xffff_ffff;
                    if low >= (1u64 << 32) % bound {
                        break (m >> 32) as usize;
                    }
                };
                ring.swap(i as usize, j);
            }
        }
        let mut position = vec![0u32; n as usize];
        for (pos, &idx) in ring.iter().enumerate() {
            if let Some(p) = position.get_mut(idx as usize) {
                *p = pos as u32;
            }
        }
        Ok(Graph {
            position,
            ring,
            half: k / 2,
            complete,
        })
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the graph has no clients.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Roster indices of the neighbours of roster index `i`, in ring order.
    pub fn neighbours(&self, i: u32) -> Vec<u32> {
        let n = self.ring.len() as u32;
        if self.complete {
            return (0..n).filter(|&j| j != i).collect();
        }
        let Some(&p) = self.position.get(i as usize) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(2 * self.half as usize);
        for d in 1..=self.half {
            for q in [(p + d) % n, (p + n - d) % n] {
                if let Some(&j) = self.ring.get(q as usize) {
                    out.push(j);
                }
            }
        }
        out
    }

    /// Whether roster indices `a` and `b` are neighbours.
    pub fn adjacent(&self, a: u32, b: u32) -> bool {
        if a == b {
            return false;
        }
        if self.complete {
            return (a as usize) < self.ring.len() && (b as usize) < self.ring.len();
        }
        let (Some(&pa), Some(&pb)) = (self.position.get(a as usize), self.position.get(b as usize))
        else {
            return false;
        };
        let n = self.ring.len() as u32;
        let d = pa.abs_diff(pb);
        d.min(n - d) <= self.half
    }
}

/// Looks up a roster index by client id in a sorted roster.
pub(crate) fn index_of(roster_ids: &[ClientId], id: ClientId) -> Option<u32> {
    roster_ids.binary_search(&id).ok().map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn regular_symmetric_and_deterministic() {
        let s = SessionId([9u8; 32]);
        let g = Graph::new(&s, 101, 10).unwrap();
        let g2 = Graph::new(&s, 101, 10).unwrap();
        for i in 0..101 {
            let nb = g.neighbours(i);
            assert_eq!(nb.len(), 10);
            assert_eq!(nb, g2.neighbours(i));
            for &j in &nb {
                assert!(g.adjacent(i, j) && g.adjacent(j, i));
                assert!(g.neighbours(j).contains(&i));
            }
            let count = (0..101).filter(|&j| g.adjacent(i, j)).count();
            assert_eq!(count, 10);
        }
        // Another session gives another graph.
        let g3 = Graph::new(&SessionId([8u8; 32]), 101, 10).unwrap();
        assert!((0..101).any(|i| g3.neighbours(i) != g.neighbours(i)));
    }

    #[test]
    fn complete_graph() {
        let g = Graph::new(&SessionId([1u8; 32]), 5, 4).unwrap();
        assert_eq!(g.neighbours(2), vec![0, 1, 3, 4]);
        assert!(g.adjacent(0, 4) && !g.adjacent(3, 3));
    }
}
