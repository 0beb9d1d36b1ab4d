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

/// A slot in the tree. Children hang off their parent as a doubly linked list through the
/// nodes themselves (`first_child`, `prev`/`next` siblings): deriving a mapping allocates
/// nothing but its node, and removing one is O(1) — the map path of every page fault a
/// vCPU's guest resolves goes through here.
struct Node<K, V> {
    key: K,
    value: V,
    rights: u8,
    parent: Option<Id>,
    first_child: Option<Id>,
    prev: Option<Id>,
    next: Option<Id>,
}

impl<K, V> Node<K, V> {
    fn new(key: K, value: V, rights: u8, parent: Option<Id>) -> Self {
        Node { key, value, rights, parent, first_child: None, prev: None, next: None }
    }
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
        let id = self.nodes.insert(Node::new(key, value, rights, None));
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
        // The common case, an empty target: one descent of the index to find and fill it.
        if let alloc::collections::btree_map::Entry::Vacant(slot) = self.index.entry(to) {
            let s = self.nodes.get(src).expect("indexed node exists");
            let node = Node::new(to, s.value, s.rights & mask, Some(src));
            let e = Self::entry(&node);
            let id = self.nodes.insert(node);
            slot.insert(id);
            self.link_child(src, id);
            return Ok((Vec::new(), e));
        }
        let mut removed = Vec::new();
        if let Some(&old) = self.index.get(&to) {
            if self.is_ancestor_or_self(old, src) {
                return Err(MapDbError::Cycle);
            }
            self.remove_subtree(old, &mut removed);
        }
        let s = self.nodes.get(src).expect("indexed node exists");
        let node = Node::new(to, s.value, s.rights & mask, Some(src));
        let e = Self::entry(&node);
        let id = self.nodes.insert(node);
        self.link_child(src, id);
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

    /// Makes `child` (not linked anywhere) the first child of `parent`.
    fn link_child(&mut self, parent: Id, child: Id) {
        let first = self.nodes.get_mut(parent).expect("parent exists").first_child.replace(child);
        if let Some(f) = first {
            self.nodes.get_mut(f).expect("sibling exists").prev = Some(child);
        }
        let c = self.nodes.get_mut(child).expect("child exists");
        (c.parent, c.prev, c.next) = (Some(parent), None, first);
    }

    /// The children of `id`, in list order.
    fn children(&self, id: Id) -> Vec<Id> {
        let mut out = Vec::new();
        let mut c = self.nodes.get(id).and_then(|n| n.first_child);
        while let Some(x) = c {
            out.push(x);
            c = self.nodes.get(x).and_then(|n| n.next);
        }
        out
    }

    /// Unlinks `id` from its parent's list of children (it keeps its own children).
    fn detach_from_parent(&mut self, id: Id) {
        let Some(n) = self.nodes.get_mut(id) else { return };
        let (parent, prev, next) = (n.parent.take(), n.prev.take(), n.next.take());
        match prev {
            Some(p) => self.nodes.get_mut(p).expect("sibling exists").next = next,
            None => {
                if let Some(pn) = parent.and_then(|p| self.nodes.get_mut(p)) {
                    pn.first_child = next;
                }
            }
        }
        if let Some(nx) = next {
            self.nodes.get_mut(nx).expect("sibling exists").prev = prev;
        }
    }

    fn remove_subtree(&mut self, id: Id, out: &mut Vec<Entry<K, V>>) {
        self.detach_from_parent(id);
        // Depth first through the lists of children; a leaf (the common case: a page in a
        // process) never touches the stack, so nothing is allocated for it.
        let mut stack = Vec::new();
        let mut next = Some(id);
        while let Some(n) = next.take().or_else(|| stack.pop()) {
            let mut c = self.nodes.get(n).and_then(|x| x.first_child);
            while let Some(x) = c {
                stack.push(x);
                c = self.nodes.get(x).and_then(|y| y.next);
            }
            if let Some(node) = self.nodes.remove(n) {
                self.index.remove(&node.key);
                out.push(Self::entry(&node));
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
            for c in self.children(id) {
                self.remove_subtree(c, &mut out);
            }
        }
        out
    }

    fn reduce_below(&mut self, id: Id, allowed: u8, out: &mut Vec<Entry<K, V>>) {
        let mut stack = self.children(id);
        while let Some(c) = stack.pop() {
            stack.extend(self.children(c));
            let Some(n) = self.nodes.get_mut(c) else { continue };
            if n.rights & !allowed != 0 {
                n.rights &= allowed;
                out.push(Self::entry(n));
            }
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
        let mut stack = self.children(id);
        while let Some(c) = stack.pop() {
            stack.extend(self.children(c));
            let Some(n) = self.nodes.get_mut(c) else { continue };
            if n.rights & rights != 0 {
                n.rights &= !rights;
                out.push(Self::entry(n));
            }
        }
        out
    }

    /// Removes every slot in `range` with everything derived from them (a space going away).
    pub fn remove_range(&mut self, range: core::ops::RangeInclusive<K>) -> Vec<Entry<K, V>> {
        self.revoke_range(range, true)
    }

    /// [`MapDb::revoke`] of every slot in `range` (a flexpage unmapped): one walk of the index
    /// for all of them, rather than a lookup each.
    pub fn revoke_range(
        &mut self,
        range: core::ops::RangeInclusive<K>,
        include_self: bool,
    ) -> Vec<Entry<K, V>> {
        let ids: Vec<Id> = self.index.range(range).map(|(_, id)| *id).collect();
        let mut out = Vec::new();
        for id in ids {
            // Gone already if it was derived from a slot of the range revoked before it.
            if self.nodes.get(id).is_none() {
                continue;
            }
            if include_self {
                self.remove_subtree(id, &mut out);
            } else {
                for c in self.children(id) {
                    self.remove_subtree(c, &mut out);
                }
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
            // Local checks only (each link against its other end), so the whole check stays
            // linear in the number of nodes; together they rule out lost or cyclic lists.
            if let Some(p) = n.parent {
                let Some(pn) = self.nodes.get(p) else { return Err("dangling parent") };
                if n.rights & !pn.rights != 0 {
                    return Err("child has rights its parent lacks");
                }
                let listed = match n.prev {
                    None => pn.first_child == Some(id),
                    Some(pr) => self.nodes.get(pr).is_some_and(|x| x.next == Some(id) && x.parent == Some(p)),
                };
                if !listed {
                    return Err("parent does not list child");
                }
            } else if n.prev.is_some() || n.next.is_some() {
                return Err("a root in a list of siblings");
            }
            if let Some(nx) = n.next {
                if self.nodes.get(nx).is_none_or(|x| x.prev != Some(id)) {
                    return Err("sibling links disagree");
                }
            }
            if let Some(f) = n.first_child {
                if self.nodes.get(f).is_none_or(|x| x.parent != Some(id) || x.prev.is_some()) {
                    return Err("first child does not name parent");
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
        RevokeRange(u8, u8, u8, bool),
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
            k.clone().prop_map(Op::RemoveSpace),
            (k.clone(), k.clone(), k, any::<bool>()).prop_map(|(s, a, b, me)| Op::RevokeRange(s, a, b, me)),
        ]
    }

    /// Keys derived (transitively) from `k`, found by following the rights chain the slow way.
    fn descendants(db: &Db, k: (u8, u8)) -> Vec<(u8, u8)> {
        let Some(&id) = db.index.get(&k) else { return vec![] };
        let mut out = vec![];
        let mut stack = db.children(id);
        while let Some(c) = stack.pop() {
            out.push(db.nodes.get(c).unwrap().key);
            stack.extend(db.children(c));
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
                    Op::RevokeRange(s, a, b, me) => {
                        let (a, b) = (a.min(b), a.max(b));
                        let slots: Vec<(u8, u8)> = (a..=b).map(|x| (s, x)).filter(|k| db.get(*k).is_some()).collect();
                        let below: Vec<(u8, u8)> = slots.iter().flat_map(|k| descendants(&db, *k)).collect();
                        db.revoke_range((s, a)..=(s, b), me);
                        for k in &below {
                            prop_assert!(db.get(*k).is_none(), "derived mapping survived a range revoke");
                        }
                        for k in slots {
                            // A slot of the range stays unless it goes itself or was derived
                            // from another one of the range.
                            prop_assert_eq!(db.get(k).is_none(), me || below.contains(&k));
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
