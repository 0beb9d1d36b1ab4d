//! The mapping database: for every mapped frame and every capability, the tree of mappings
//! derived from it, so that revocation is recursive and rights only ever shrink along a branch.
//!
//! A node is a *slot*: `(space, address)` for memory, `(space, slot index)` for capabilities.
//! It holds what the slot maps (`V`: a frame or an object) and its rights. Roots are slots whose
//! content did not come from another slot (sigma0's memory, a freshly created object's first
//! capability). Mapping derives a child; granting moves a node; unmapping revokes a subtree.

use crate::slab::{Id, Slab};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Why a mapping operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapDbError {
    /// The source slot is empty.
    NoSource,
    /// The target is the source itself or one of its ancestors.
    Cycle,
    /// A root already occupies the slot.
    Occupied,
}

struct Node<K, V> {
    key: K,
    value: V,
    rights: u8,
    parent: Option<Id>,
    children: Vec<Id>,
}

/// A removed or changed slot: the caller must update its page tables / capability tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<K, V> {
    pub key: K,
    pub value: V,
    pub rights: u8,
}

/// What a map or grant did: the entries it displaced at the target, and the new entry.
pub type Mapped<K, V> = (Vec<Entry<K, V>>, Entry<K, V>);

pub struct MapDb<K, V> {
    nodes: Slab<Node<K, V>>,
    index: BTreeMap<K, Id>,
}

impl<K: Ord + Copy, V: Copy> Default for MapDb<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Copy, V: Copy> MapDb<K, V> {
    pub const fn new() -> Self {
        MapDb { nodes: Slab::new(), index: BTreeMap::new() }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// What `key` maps, with its rights.
    pub fn get(&self, key: K) -> Option<(V, u8)> {
        let n = self.nodes.get(*self.index.get(&key)?)?;
        Some((n.value, n.rights))
    }

    fn entry(n: &Node<K, V>) -> Entry<K, V> {
        Entry { key: n.key, value: n.value, rights: n.rights }
    }

    /// Makes `key` a root holding `value`. Fails if the slot is occupied.
    pub fn insert_root(&mut self, key: K, value: V, rights: u8) -> Result<(), MapDbError> {
        if self.index.contains_key(&key) {
            return Err(MapDbError::Occupied);
        }
        let id = self.nodes.insert(Node { key, value, rights, parent: None, children: Vec::new() });
        self.index.insert(key, id);
        Ok(())
    }

    fn is_ancestor_or_self(&self, anc: Id, mut n: Id) -> bool {
        loop {
            if n == anc {
                return true;
            }
            match self.nodes.get(n).and_then(|x| x.parent) {
                Some(p) => n = p,
                None => return false,
            }
        }
    }

    /// Maps `from` to `to` with `from`'s rights reduced by `mask`. Whatever `to` held is revoked
    /// first (returned, together with its subtree). Returns the removed entries and the new one.
    pub fn derive(&mut self, from: K, to: K, mask: u8) -> Result<Mapped<K, V>, MapDbError> {
        let src = *self.index.get(&from).ok_or(MapDbError::NoSource)?;
        let mut removed = Vec::new();
        if let Some(&old) = self.index.get(&to) {
            if self.is_ancestor_or_self(old, src) {
                return Err(MapDbError::Cycle);
            }
            self.remove_subtree(old, &mut removed);
        }
        let s = self.nodes.get(src).expect("indexed node exists");
        let node = Node {
            key: to,
            value: s.value,
            rights: s.rights & mask,
            parent: Some(src),
            children: Vec::new(),
        };
        let e = Self::entry(&node);
        let id = self.nodes.insert(node);
        self.nodes.get_mut(src).expect("source exists").children.push(id);
        self.index.insert(to, id);
        Ok((removed, e))
    }

    /// Moves the node at `from` to `to` (rights reduced by `mask`): the grantor loses it, the
    /// derivations stay. Returns what `to` held before, and the new entry.
    pub fn grant(&mut self, from: K, to: K, mask: u8) -> Result<Mapped<K, V>, MapDbError> {
        let src = *self.index.get(&from).ok_or(MapDbError::NoSource)?;
        if from == to {
            return Err(MapDbError::Cycle);
        }
        let mut removed = Vec::new();
        if let Some(&old) = self.index.get(&to) {
            if self.is_ancestor_or_self(old, src) {
                return Err(MapDbError::Cycle);
            }
            self.remove_subtree(old, &mut removed);
        }
        self.index.remove(&from);
        let n = self.nodes.get_mut(src).expect("indexed node exists");
        n.key = to;
        n.rights &= mask;
        let e = Self::entry(n);
        self.index.insert(to, src);
        // Rights of the subtree may not exceed the granted node's.
        let r = e.rights;
        self.reduce_below(src, r, &mut Vec::new());
        Ok((removed, e))
    }

    fn detach_from_parent(&mut self, id: Id) {
        if let Some(p) = self.nodes.get(id).and_then(|n| n.parent) {
            if let Some(pn) = self.nodes.get_mut(p) {
                pn.children.retain(|c| *c != id);
            }
        }
    }

    fn remove_subtree(&mut self, id: Id, out: &mut Vec<Entry<K, V>>) {
        self.detach_from_parent(id);
        let mut stack = alloc::vec![id];
        while let Some(n) = stack.pop() {
            if let Some(node) = self.nodes.remove(n) {
                self.index.remove(&node.key);
                out.push(Self::entry(&node));
                stack.extend(node.children);
            }
        }
    }

    /// Removes everything derived from `key` (and `key` itself if `include_self`).
    pub fn revoke(&mut self, key: K, include_self: bool) -> Vec<Entry<K, V>> {
        let mut out = Vec::new();
        let Some(&id) = self.index.get(&key) else { return out };
        if include_self {
            self.remove_subtree(id, &mut out);
        } else {
            let children = core::mem::take(&mut self.nodes.get_mut(id).expect("indexed").children);
            for c in children {
                if let Some(n) = self.nodes.get_mut(c) {
                    n.parent = None;
                }
                self.remove_subtree(c, &mut out);
            }
        }
        out
    }

    fn reduce_below(&mut self, id: Id, allowed: u8, out: &mut Vec<Entry<K, V>>) {
        let mut stack: Vec<Id> = self.nodes.get(id).map(|n| n.children.clone()).unwrap_or_default();
        while let Some(c) = stack.pop() {
            let Some(n) = self.nodes.get_mut(c) else { continue };
            if n.rights & !allowed != 0 {
                n.rights &= allowed;
                out.push(Self::entry(n));
            }
            stack.extend(n.children.iter().copied());
        }
    }

    /// Takes `rights` away from everything derived from `key` (and from `key` if
    /// `include_self`). Returns the entries whose rights changed.
    pub fn reduce(&mut self, key: K, rights: u8, include_self: bool) -> Vec<Entry<K, V>> {
        let mut out = Vec::new();
        let Some(&id) = self.index.get(&key) else { return out };
        if include_self {
            let n = self.nodes.get_mut(id).expect("indexed");
            if n.rights & rights != 0 {
                n.rights &= !rights;
                out.push(Self::entry(n));
            }
        }
        let mut stack: Vec<Id> = self.nodes.get(id).map(|n| n.children.clone()).unwrap_or_default();
        while let Some(c) = stack.pop() {
            let Some(n) = self.nodes.get_mut(c) else { continue };
            if n.rights & rights != 0 {
                n.rights &= !rights;
                out.push(Self::entry(n));
            }
            stack.extend(n.children.iter().copied());
        }
        out
    }

    /// Removes every slot in `range` with everything derived from them (a space going away).
    pub fn remove_range(&mut self, range: core::ops::RangeInclusive<K>) -> Vec<Entry<K, V>> {
        let keys: Vec<K> = self.index.range(range).map(|(k, _)| *k).collect();
        let mut out = Vec::new();
        for k in keys {
            if let Some(&id) = self.index.get(&k) {
                self.remove_subtree(id, &mut out);
            }
        }
        out
    }

    /// Keys in `range`, in order.
    pub fn keys_in(&self, range: core::ops::RangeInclusive<K>) -> Vec<K> {
        self.index.range(range).map(|(k, _)| *k).collect()
    }

    /// All slots holding `value` (e.g. every capability to an object being destroyed).
    pub fn slots_of(&self, value: V) -> Vec<K>
    where
        V: PartialEq,
    {
        self.nodes.iter().filter(|(_, n)| n.value == value).map(|(_, n)| n.key).collect()
    }

    /// Checks the structural invariants; returns a description of the first violation.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.index.len() != self.nodes.len() {
            return Err("index and node count differ");
        }
        for (id, n) in self.nodes.iter() {
            if self.index.get(&n.key) != Some(&id) {
                return Err("node not indexed under its key");
            }
            if let Some(p) = n.parent {
                let Some(pn) = self.nodes.get(p) else { return Err("dangling parent") };
                if !pn.children.contains(&id) {
                    return Err("parent does not list child");
                }
                if n.rights & !pn.rights != 0 {
                    return Err("child has rights its parent lacks");
                }
            }
            for c in &n.children {
                if self.nodes.get(*c).and_then(|x| x.parent) != Some(id) {
                    return Err("child does not name parent");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Db = MapDb<(u8, u8), u32>;

    #[test]
    fn derive_revoke_grant() {
        let mut db = Db::new();
        db.insert_root((0, 1), 100, 0b111).unwrap();
        assert_eq!(db.insert_root((0, 1), 1, 1), Err(MapDbError::Occupied));
        db.derive((0, 1), (1, 1), 0b110).unwrap();
        db.derive((1, 1), (2, 1), 0b111).unwrap();
        assert_eq!(db.get((2, 1)), Some((100, 0b110)), "rights never grow through map");
        assert_eq!(db.derive((2, 1), (0, 1), 0xff), Err(MapDbError::Cycle));
        assert_eq!(db.derive((9, 9), (3, 3), 0xff), Err(MapDbError::NoSource));
        let (_, e) = db.grant((2, 1), (3, 1), 0b100).unwrap();
        assert_eq!((e.key, e.rights), ((3, 1), 0b100));
        assert_eq!(db.get((2, 1)), None);
        let gone = db.revoke((1, 1), false);
        assert_eq!(gone.iter().map(|e| e.key).collect::<Vec<_>>(), vec![(3, 1)]);
        assert!(db.get((1, 1)).is_some());
        let changed = db.reduce((0, 1), 0b010, false);
        assert_eq!(changed.len(), 1);
        assert_eq!(db.get((1, 1)), Some((100, 0b100)));
        assert_eq!(db.remove_range((0, 0)..=(0, 255)).len(), 2);
        assert!(db.is_empty());
        db.check().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Root(u8, u8, u8),
        Derive(u8, u8, u8, u8, u8),
        Grant(u8, u8, u8, u8, u8),
        Revoke(u8, u8, bool),
        Reduce(u8, u8, u8, bool),
        RemoveSpace(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = 0u8..4;
        prop_oneof![
            (k.clone(), k.clone(), any::<u8>()).prop_map(|(a, b, r)| Op::Root(a, b, r)),
            (k.clone(), k.clone(), k.clone(), k.clone(), any::<u8>())
                .prop_map(|(a, b, c, d, m)| Op::Derive(a, b, c, d, m)),
            (k.clone(), k.clone(), k.clone(), k.clone(), any::<u8>())
                .prop_map(|(a, b, c, d, m)| Op::Grant(a, b, c, d, m)),
            (k.clone(), k.clone(), any::<bool>()).prop_map(|(a, b, s)| Op::Revoke(a, b, s)),
            (k.clone(), k.clone(), any::<u8>(), any::<bool>())
                .prop_map(|(a, b, r, s)| Op::Reduce(a, b, r, s)),
            k.prop_map(Op::RemoveSpace),
        ]
    }

    /// Keys derived (transitively) from `k`, found by following the rights chain the slow way.
    fn descendants(db: &Db, k: (u8, u8)) -> Vec<(u8, u8)> {
        let Some(&id) = db.index.get(&k) else { return vec![] };
        let mut out = vec![];
        let mut stack = db.nodes.get(id).unwrap().children.clone();
        while let Some(c) = stack.pop() {
            let n = db.nodes.get(c).unwrap();
            out.push(n.key);
            stack.extend(n.children.iter().copied());
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..60)) {
            let mut db = Db::new();
            let mut next_value = 0u32;
            for o in ops {
                match o {
                    Op::Root(s, a, r) => {
                        next_value += 1;
                        let _ = db.insert_root((s, a), next_value, r);
                    }
                    Op::Derive(s, a, t, b, m) => {
                        let before = db.get((s, a));
                        if let Ok((_, e)) = db.derive((s, a), (t, b), m) {
                            let (v, r) = before.unwrap();
                            prop_assert_eq!(e.value, v);
                            prop_assert_eq!(e.rights & !r, 0, "rights grew through map");
                        }
                    }
                    Op::Grant(s, a, t, b, m) => {
                        let before = db.get((s, a));
                        if let Ok((_, e)) = db.grant((s, a), (t, b), m) {
                            prop_assert_eq!(db.get((s, a)), None);
                            prop_assert_eq!(e.rights & !before.unwrap().1, 0);
                        }
                    }
                    Op::Revoke(s, a, me) => {
                        let below = descendants(&db, (s, a));
                        db.revoke((s, a), me);
                        for k in below {
                            prop_assert!(db.get(k).is_none(), "derived mapping survived revoke");
                        }
                        if me {
                            prop_assert!(db.get((s, a)).is_none());
                        }
                    }
                    Op::Reduce(s, a, r, me) => {
                        let below = descendants(&db, (s, a));
                        db.reduce((s, a), r, me);
                        for k in below {
                            prop_assert_eq!(db.get(k).unwrap().1 & r, 0);
                        }
                    }
                    Op::RemoveSpace(s) => {
                        db.remove_range((s, 0)..=(s, u8::MAX));
                        prop_assert!(db.index.range((s, 0)..=(s, u8::MAX)).next().is_none());
                    }
                }
                prop_assert_eq!(db.check(), Ok(()));
            }
        }
    }
}
