//! The mapping database's index: which node holds the slot `(space, position)`.
//!
//! Open addressing with linear probing in a power-of-two table kept at most 3/4 full; a
//! removal shifts the entries after it back instead of leaving a tombstone. A lookup reads one
//! or two adjacent entries (one page) where a B-tree descent read one node allocation per
//! level: the map path of every page fault a vCPU's guest resolves looks up two slots, and
//! under TCG each distinct page it touches after an address-space switch costs a TLB refill.
//!
//! Slots of one space come in runs: a guest maps a fault's 16 pages at once, a fork a process's
//! pages. So the hash spreads runs of [`RUN`] consecutive positions, not positions: a run's
//! slots have consecutive home entries (24 bytes each), and mapping 16 pages reads about four
//! places of the table instead of sixteen. Runs of 16 read one, but the blocks they fill
//! lengthen every probe that lands in one: 2 to 3 times the instructions per map (measured).

use crate::slab::Id;
use alloc::vec;
use alloc::vec::Vec;

/// A slot: `(space, position)`. The position `u64::MAX` is reserved (see `mapdb::HEAD`).
pub type Key = (u64, u64);

/// The space of an empty entry (no task id has all bits set).
const EMPTY: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Entry {
    key: Key,
    id: Id,
}

const VACANT: Entry = Entry { key: (EMPTY, 0), id: Id::from_u64(0) };

/// Where a key is, or the empty entry where it would go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Found(usize),
    Vacant(usize),
}

/// Consecutive positions that share a hash (and so a region of the table).
const RUN: u64 = 4;

pub struct Index {
    table: Vec<Entry>,
    len: usize,
    /// log2 of the distance between two positions (the page size for memory).
    step_shift: u32,
}

impl Index {
    /// An empty index of positions `2^step_shift` apart.
    pub const fn new(step_shift: u32) -> Self {
        Index { table: Vec::new(), len: 0, step_shift }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The entry `k`'s probe sequence starts at: the home of its run of [`RUN`] positions
    /// (Fibonacci hashing of the space and the run's number) plus its place in the run.
    #[inline(always)]
    fn home(&self, k: Key) -> usize {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let n = k.1 >> self.step_shift;
        let h = (k.0.wrapping_mul(GOLDEN) ^ (n / RUN)).wrapping_mul(GOLDEN);
        let run_home = (h >> (64 - self.table.len().trailing_zeros())) as usize;
        run_home.wrapping_add((n % RUN) as usize) & (self.table.len() - 1)
    }

    /// Finds `k`, or the entry it would fill. Call [`Index::reserve`] first if it is to be
    /// filled (the table is never empty then).
    #[inline(always)]
    pub fn probe(&self, k: Key) -> Probe {
        let mask = self.table.len().wrapping_sub(1);
        if self.table.is_empty() {
            return Probe::Vacant(0);
        }
        let mut i = self.home(k);
        loop {
            let e = &self.table[i];
            if e.key == k {
                return Probe::Found(i);
            }
            if e.key.0 == EMPTY {
                return Probe::Vacant(i);
            }
            i = (i + 1) & mask;
        }
    }

    #[inline(always)]
    pub fn get(&self, k: Key) -> Option<Id> {
        match self.probe(k) {
            Probe::Found(i) => Some(self.table[i].id),
            Probe::Vacant(_) => None,
        }
    }

    /// The id of the entry [`Index::probe`] found at `i`.
    #[inline(always)]
    pub fn id_at(&self, i: usize) -> Id {
        self.table[i].id
    }

    /// Replaces the id of the entry found at `i`.
    #[inline(always)]
    pub fn set_at(&mut self, i: usize, id: Id) {
        self.table[i].id = id;
    }

    /// Makes room for `n` more entries without growing (which moves every entry).
    #[inline(always)]
    pub fn reserve(&mut self, n: usize) {
        if (self.len + n) * 4 > self.table.len() * 3 {
            self.grow(n);
        }
    }

    #[inline(never)]
    fn grow(&mut self, n: usize) {
        let mut cap = self.table.len().max(16);
        while (self.len + n) * 4 > cap * 3 {
            cap *= 2;
        }
        let old = core::mem::replace(&mut self.table, vec![VACANT; cap]);
        for e in old.into_iter().filter(|e| e.key.0 != EMPTY) {
            let Probe::Vacant(i) = self.probe(e.key) else { unreachable!("a key twice in the index") };
            self.table[i] = e;
        }
    }

    /// Fills the empty entry [`Index::probe`] returned for `k` (room reserved before it).
    #[inline(always)]
    pub fn fill(&mut self, i: usize, k: Key, id: Id) {
        assert!(k.0 != EMPTY && self.table[i].key.0 == EMPTY);
        self.table[i] = Entry { key: k, id };
        self.len += 1;
    }

    /// Enters `k`, or replaces its id; returns the old one.
    pub fn insert(&mut self, k: Key, id: Id) -> Option<Id> {
        self.reserve(1);
        match self.probe(k) {
            Probe::Found(i) => Some(core::mem::replace(&mut self.table[i].id, id)),
            Probe::Vacant(i) => {
                self.fill(i, k, id);
                None
            }
        }
    }

    pub fn remove(&mut self, k: Key) -> Option<Id> {
        let Probe::Found(mut hole) = self.probe(k) else { return None };
        let id = self.table[hole].id;
        let mask = self.table.len() - 1;
        let mut j = (hole + 1) & mask;
        // Entries after the hole move into it if it lies on their probe sequence (their home
        // is not between the hole and them), so that every probe still ends at its key.
        while self.table[j].key.0 != EMPTY {
            let home = self.home(self.table[j].key);
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.table[hole] = self.table[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.table[hole] = VACANT;
        self.len -= 1;
        Some(id)
    }

    /// Every entry, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Id)> + '_ {
        self.table.iter().filter(|e| e.key.0 != EMPTY).map(|e| (e.key, e.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;

    #[test]
    fn a_run_of_positions_is_one_stretch_of_the_table() {
        let mut ix = Index::new(12);
        for p in 0..4096u64 {
            ix.insert((7, p << 12), Id::from_u64(p));
        }
        // A run's positions lie within a few entries of its first, where hashing each
        // position spread them over the table.
        let at = |p: u64| match ix.probe((7, p << 12)) {
            Probe::Found(i) => i,
            Probe::Vacant(_) => panic!("lost {p}"),
        };
        for run in (0..4096).step_by(RUN as usize * 97) {
            let first = at(run);
            for p in run..run + RUN {
                let off = at(p).wrapping_sub(first) & (ix.table.len() - 1);
                assert!(off < 2 * RUN as usize, "position {p} lies {off} entries after its run's first");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Behaves like a map under any sequence of inserts and removes (few distinct spaces
        /// and page-aligned positions, so probe sequences collide and wrap).
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((any::<bool>(), 0u64..3, 0u64..64, any::<u32>()), 1..400)) {
            let (mut ix, mut model) = (Index::new(12), BTreeMap::new());
            for (ins, s, p, v) in ops {
                let k = (s, p << 12);
                let id = Id::from_u64(v as u64);
                if ins {
                    prop_assert_eq!(ix.insert(k, id), model.insert(k, id));
                } else {
                    prop_assert_eq!(ix.remove(k), model.remove(&k));
                }
                prop_assert_eq!(ix.len(), model.len());
                for (k, id) in &model {
                    prop_assert_eq!(ix.get(*k), Some(*id));
                }
                prop_assert_eq!(ix.iter().count(), model.len());
            }
        }
    }
}
