//! Per-task capability tables: a task names objects only through slots of its own table.

use abi::{CapIdx, Rights};
use alloc::vec::Vec;

/// Slots per table. Indices at or above are invalid selectors.
pub const MAX_SLOTS: usize = 1 << 16;

/// A capability: a reference to object `O` with rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap<O> {
    pub obj: O,
    pub rights: Rights,
}

pub struct CapTable<O> {
    slots: Vec<Option<Cap<O>>>,
}

impl<O: Copy + PartialEq> Default for CapTable<O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<O: Copy + PartialEq> CapTable<O> {
    pub const fn new() -> Self {
        CapTable { slots: Vec::new() }
    }

    pub fn get(&self, idx: CapIdx) -> Option<Cap<O>> {
        *self.slots.get(usize::try_from(idx.0).ok()?)?
    }

    /// Puts `cap` into slot `idx`, replacing what was there (which is returned). Slot 0 is
    /// never valid, so the invalid selector stays invalid.
    pub fn set(&mut self, idx: CapIdx, cap: Cap<O>) -> Result<Option<Cap<O>>, abi::Error> {
        let i = usize::try_from(idx.0).map_err(|_| abi::Error::Inval)?;
        if i == 0 || i >= MAX_SLOTS {
            return Err(abi::Error::Inval);
        }
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        Ok(self.slots[i].replace(cap))
    }

    pub fn take(&mut self, idx: CapIdx) -> Option<Cap<O>> {
        self.slots.get_mut(usize::try_from(idx.0).ok()?)?.take()
    }

    /// Removes every capability to `obj` (the object is gone).
    pub fn purge(&mut self, obj: O) -> usize {
        let mut n = 0;
        for s in self.slots.iter_mut() {
            if s.is_some_and(|c| c.obj == obj) {
                *s = None;
                n += 1;
            }
        }
        n
    }

    pub fn iter(&self) -> impl Iterator<Item = (CapIdx, Cap<O>)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, c)| c.map(|c| (CapIdx(i as u64), c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_take_purge() {
        let mut t = CapTable::new();
        let c = Cap { obj: 7u32, rights: Rights::RW };
        assert_eq!(t.set(CapIdx(0), c), Err(abi::Error::Inval));
        assert_eq!(t.set(CapIdx(MAX_SLOTS as u64), c), Err(abi::Error::Inval));
        assert_eq!(t.set(CapIdx(5), c), Ok(None));
        assert_eq!(t.get(CapIdx(5)), Some(c));
        assert_eq!(t.get(CapIdx(4)), None);
        assert_eq!(t.get(CapIdx(u64::MAX)), None);
        t.set(CapIdx(9), c).unwrap();
        t.set(CapIdx(2), Cap { obj: 1, rights: Rights::R }).unwrap();
        assert_eq!(t.purge(7), 2);
        assert_eq!(t.iter().count(), 1);
        assert_eq!(t.take(CapIdx(2)).map(|c| c.obj), Some(1));
        assert_eq!(t.take(CapIdx(2)), None);
    }
}
