//! A generational arena: kernel objects live in slots; an [`Id`] names a slot *and* the object
//! generation it was issued for, so a stale id (object deleted, slot reused) never aliases.

use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id {
    index: u32,
    generation: u32,
}

impl Id {
    pub const fn index(self) -> usize {
        self.index as usize
    }

    /// The id [`Id::as_u64`] made (lookups with it still check the generation).
    pub const fn from_u64(v: u64) -> Id {
        Id { index: v as u32, generation: (v >> 32) as u32 }
    }

    /// A unique number for this id (index and generation), e.g. as a map key.
    pub const fn as_u64(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }
}

enum Slot<T> {
    Used(u32, T),
    Free(u32),
}

pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slab<T> {
    pub const fn new() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), len: 0 }
    }

    /// (Always inlined: the map path inserts a mapping node on every page fault it resolves,
    /// and an out-of-line generic lands far from it, one more code page to touch.)
    #[inline(always)]
    pub fn insert(&mut self, value: T) -> Id {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            let generation = match slot {
                Slot::Free(g) => g.wrapping_add(1),
                Slot::Used(..) => unreachable!("free list names a used slot"),
            };
            *slot = Slot::Used(generation, value);
            return Id { index, generation };
        }
        let index = self.slots.len() as u32;
        self.slots.push(Slot::Used(0, value));
        Id { index, generation: 0 }
    }

    #[inline]
    pub fn get(&self, id: Id) -> Option<&T> {
        match self.slots.get(id.index())? {
            Slot::Used(g, v) if *g == id.generation => Some(v),
            _ => None,
        }
    }

    #[inline]
    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        match self.slots.get_mut(id.index())? {
            Slot::Used(g, v) if *g == id.generation => Some(v),
            _ => None,
        }
    }

    /// Two distinct live entries at once. (Always inlined: the IPC fast path uses it, and
    /// under TCG every out-of-line function is one more code page to touch.)
    #[inline(always)]
    pub fn get2_mut(&mut self, a: Id, b: Id) -> Option<(&mut T, &mut T)> {
        let [x, y] = self.slots.get_disjoint_mut([a.index(), b.index()]).ok()?;
        match (x, y) {
            (Slot::Used(ga, va), Slot::Used(gb, vb)) if *ga == a.generation && *gb == b.generation => {
                Some((va, vb))
            }
            _ => None,
        }
    }

    pub fn remove(&mut self, id: Id) -> Option<T> {
        let slot = self.slots.get_mut(id.index())?;
        match slot {
            Slot::Used(g, _) if *g == id.generation => {
                let old = core::mem::replace(slot, Slot::Free(id.generation));
                self.free.push(id.index);
                self.len -= 1;
                match old {
                    Slot::Used(_, v) => Some(v),
                    Slot::Free(_) => None,
                }
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Id, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| match s {
            Slot::Used(g, v) => Some((Id { index: i as u32, generation: *g }, v)),
            Slot::Free(_) => None,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (Id, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Used(g, v) => Some((Id { index: i as u32, generation: *g }, v)),
            Slot::Free(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_do_not_alias() {
        let mut s = Slab::new();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get(a), None);
        let c = s.insert("c");
        assert_eq!(c.index(), a.index(), "slot reused");
        assert_eq!(s.get(a), None, "old id stays dead");
        assert_eq!(s.get(c), Some(&"c"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().map(|(_, v)| *v).collect::<Vec<_>>(), vec!["c", "b"]);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.get2_mut(b, c).map(|(x, y)| (*x, *y)), Some(("b", "c")));
        assert!(s.get2_mut(b, b).is_none(), "not the same entry twice");
        assert!(s.get2_mut(a, b).is_none(), "stale id");
    }
}
