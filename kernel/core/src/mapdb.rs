//! The mapping database: for every mapped frame and every capability, the tree of mappings
//! derived from it, so that revocation is recursive and rights only ever shrink along a branch.
//!
//! A node is a *slot*: `(space, address)` for memory, `(space, slot index)` for capabilities.
//! It holds what the slot maps (`V`: a frame or an object) and its rights. Roots are slots whose
//! content did not come from another slot (sigma0's memory, a freshly created object's first
//! capability). Mapping derives a child; granting moves a node; unmapping revokes a subtree.
//!
//! Slots are found through a hash index ([`index`]); the slots of one space are also on a list
//! (anchored in the index under the reserved position [`HEAD`]), for the range operations
//! (unmapping a flexpage, a space going away) that an unordered index cannot answer by itself.

mod index;

use crate::slab::{Id, Slab};
use alloc::vec::Vec;
pub use index::Key;
use index::{Index, Probe};

/// The position under which the index keeps a space's list of slots (no slot has it).
const HEAD: u64 = u64::MAX;

/// Range operations look up each position of a range of at most this many positions, and walk
/// the space's list for larger ones.
const PROBE_LIMIT: u64 = 1024;

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
/// vCPU's guest resolves goes through here. `space_prev`/`space_next` link the slots of one
/// space.
struct Node<V> {
    key: Key,
    value: V,
    rights: u8,
    parent: Option<Id>,
    first_child: Option<Id>,
    prev: Option<Id>,
    next: Option<Id>,
    space_prev: Option<Id>,
    space_next: Option<Id>,
}

impl<V> Node<V> {
    fn new(key: Key, value: V, rights: u8, parent: Option<Id>) -> Self {
        assert!(key.1 != HEAD, "reserved slot position");
        Node {
            key,
            value,
            rights,
            parent,
            first_child: None,
            prev: None,
            next: None,
            space_prev: None,
            space_next: None,
        }
    }
}

/// A removed or changed slot: the caller must update its page tables / capability tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<V> {
    pub key: Key,
    pub value: V,
    pub rights: u8,
}

/// What a map or grant did: the entries it displaced at the target, and the new entry.
pub type Mapped<V> = (Vec<Entry<V>>, Entry<V>);

pub struct MapDb<V> {
    nodes: Slab<Node<V>>,
    index: Index,
    /// The distance between two slots of a space (the page size for memory).
    step: u64,
}

impl<V: Copy> MapDb<V> {
    /// An empty database whose slots lie `step` apart in a space.
    pub const fn new(step: u64) -> Self {
        MapDb { nodes: Slab::new(), index: Index::new(step.trailing_zeros()), step }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node of a slot (never a list head: positions of slots are below `HEAD`).
    #[inline(always)]
    fn find(&self, key: Key) -> Option<Id> {
        if key.1 == HEAD {
            return None;
        }
        self.index.get(key)
    }

    /// What `key` maps, with its rights.
    pub fn get(&self, key: Key) -> Option<(V, u8)> {
        let n = self.nodes.get(self.find(key)?)?;
        Some((n.value, n.rights))
    }

    fn entry(n: &Node<V>) -> Entry<V> {
        Entry { key: n.key, value: n.value, rights: n.rights }
    }

    #[inline(always)]
    fn node(&mut self, id: Id) -> &mut Node<V> {
        self.nodes.get_mut(id).expect("linked node exists")
    }

    /// Makes `key` a root holding `value`. Fails if the slot is occupied.
    pub fn insert_root(&mut self, key: Key, value: V, rights: u8) -> Result<(), MapDbError> {
        if self.find(key).is_some() {
            return Err(MapDbError::Occupied);
        }
        let id = self.nodes.insert(Node::new(key, value, rights, None));
        self.index.insert(key, id);
        self.link_space(id, key.0);
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
    ///
    /// Inlined into its callers (the memory one sits in the map path's code section), the
    /// uncommon case of an occupied target out of line.
    #[inline(always)]
    pub fn derive(&mut self, from: Key, to: Key, mask: u8) -> Result<Mapped<V>, MapDbError> {
        let src = self.find(from).ok_or(MapDbError::NoSource)?;
        assert!(to.1 != HEAD, "reserved slot position");
        // Room for the slot and its space's list head, so the probe's entry stays valid.
        self.index.reserve(2);
        let (at, removed) = match self.index.probe(to) {
            // The common case, an empty target: one probe to find and fill it.
            Probe::Vacant(i) => (i, Vec::new()),
            Probe::Found(i) => self.vacate(src, i, to)?,
        };
        let s = self.nodes.get(src).expect("indexed node exists");
        let node = Node::new(to, s.value, s.rights & mask, Some(src));
        let e = Self::entry(&node);
        let id = self.nodes.insert(node);
        self.index.fill(at, to, id);
        self.link_child(src, id);
        self.link_space(id, to.0);
        Ok((removed, e))
    }

    /// Empties the slot `to` (found at index entry `i`) for a mapping from `src`, unless that
    /// would cut `src` off its own root. Returns the entry to fill and what was removed.
    #[inline(never)]
    fn vacate(&mut self, src: Id, i: usize, to: Key) -> Result<(usize, Vec<Entry<V>>), MapDbError> {
        let old = self.index.id_at(i);
        if self.is_ancestor_or_self(old, src) {
            return Err(MapDbError::Cycle);
        }
        let mut removed = Vec::new();
        self.remove_subtree(old, &mut removed);
        self.index.reserve(2);
        let Probe::Vacant(i) = self.index.probe(to) else { unreachable!("slot just emptied") };
        Ok((i, removed))
    }

    /// Moves the node at `from` to `to` (rights reduced by `mask`): the grantor loses it, the
    /// derivations stay. Returns what `to` held before, and the new entry.
    pub fn grant(&mut self, from: Key, to: Key, mask: u8) -> Result<Mapped<V>, MapDbError> {
        let src = self.find(from).ok_or(MapDbError::NoSource)?;
        if from == to {
            return Err(MapDbError::Cycle);
        }
        assert!(to.1 != HEAD, "reserved slot position");
        let mut removed = Vec::new();
        if let Some(old) = self.find(to) {
            if self.is_ancestor_or_self(old, src) {
                return Err(MapDbError::Cycle);
            }
            self.remove_subtree(old, &mut removed);
        }
        self.index.remove(from);
        self.unlink_space(src);
        let n = self.node(src);
        n.key = to;
        n.rights &= mask;
        let e = Self::entry(n);
        self.index.insert(to, src);
        self.link_space(src, to.0);
        // Rights of the subtree may not exceed the granted node's.
        let r = e.rights;
        self.reduce_below(src, r, &mut Vec::new());
        Ok((removed, e))
    }

    /// Makes `child` (not linked anywhere) the first child of `parent`.
    #[inline(always)]
    fn link_child(&mut self, parent: Id, child: Id) {
        let first = self.node(parent).first_child.replace(child);
        if let Some(f) = first {
            self.node(f).prev = Some(child);
        }
        let c = self.node(child);
        (c.parent, c.prev, c.next) = (Some(parent), None, first);
    }

    /// Puts `id` (on no list) first on the list of the slots of `space`.
    #[inline(always)]
    fn link_space(&mut self, id: Id, space: u64) {
        self.index.reserve(1);
        let first = match self.index.probe((space, HEAD)) {
            Probe::Found(i) => {
                let first = self.index.id_at(i);
                self.index.set_at(i, id);
                self.node(first).space_prev = Some(id);
                Some(first)
            }
            Probe::Vacant(i) => {
                self.index.fill(i, (space, HEAD), id);
                None
            }
        };
        let n = self.node(id);
        (n.space_prev, n.space_next) = (None, first);
    }

    /// Takes `id` off the list of its space.
    fn unlink_space(&mut self, id: Id) {
        let n = self.node(id);
        let (space, prev, next) = (n.key.0, n.space_prev.take(), n.space_next.take());
        if let Some(nx) = next {
            self.node(nx).space_prev = prev;
        }
        match (prev, next) {
            (Some(p), _) => self.node(p).space_next = next,
            (None, Some(nx)) => {
                self.index.insert((space, HEAD), nx);
            }
            (None, None) => {
                self.index.remove((space, HEAD));
            }
        }
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
            Some(p) => self.node(p).next = next,
            None => {
                if let Some(pn) = parent.and_then(|p| self.nodes.get_mut(p)) {
                    pn.first_child = next;
                }
            }
        }
        if let Some(nx) = next {
            self.node(nx).prev = prev;
        }
    }

    fn remove_subtree(&mut self, id: Id, out: &mut Vec<Entry<V>>) {
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
            if self.nodes.get(n).is_none() {
                continue;
            }
            self.unlink_space(n);
            let node = self.nodes.remove(n).expect("checked above");
            self.index.remove(node.key);
            out.push(Self::entry(&node));
        }
    }

    /// Removes everything derived from `key` (and `key` itself if `include_self`).
    pub fn revoke(&mut self, key: Key, include_self: bool) -> Vec<Entry<V>> {
        let mut out = Vec::new();
        let Some(id) = self.find(key) else { return out };
        if include_self {
            self.remove_subtree(id, &mut out);
        } else {
            for c in self.children(id) {
                self.remove_subtree(c, &mut out);
            }
        }
        out
    }

    fn reduce_below(&mut self, id: Id, allowed: u8, out: &mut Vec<Entry<V>>) {
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
    pub fn reduce(&mut self, key: Key, rights: u8, include_self: bool) -> Vec<Entry<V>> {
        let mut out = Vec::new();
        let Some(id) = self.find(key) else { return out };
        if include_self {
            let n = self.node(id);
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

    /// The slots of `space` at positions `first..=last`: a lookup per position for short
    /// ranges (in order), a walk of the space's list for long ones (in list order: a space's
    /// removal needs no sorting).
    fn slots_in(&self, space: u64, first: u64, last: u64) -> Vec<(u64, Id)> {
        let last = last.min(HEAD - 1);
        let Some(first) = first.checked_next_multiple_of(self.step).filter(|f| *f <= last) else {
            return Vec::new();
        };
        let positions = (last - first) / self.step + 1;
        if positions <= PROBE_LIMIT {
            return (0..positions)
                .map(|i| first + i * self.step)
                .filter_map(|p| Some((p, self.index.get((space, p))?)))
                .collect();
        }
        let mut out = Vec::new();
        let mut n = self.index.get((space, HEAD));
        while let Some(id) = n {
            let node = self.nodes.get(id).expect("listed node exists");
            if (first..=last).contains(&node.key.1) {
                out.push((node.key.1, id));
            }
            n = node.space_next;
        }
        out
    }

    /// Removes every slot of `space` with everything derived from them (a space going away).
    pub fn remove_space(&mut self, space: u64) -> Vec<Entry<V>> {
        self.revoke_range(space, 0, HEAD - 1, true)
    }

    /// [`MapDb::revoke`] of every slot of `space` at `first..=last` (a flexpage unmapped),
    /// found in one pass rather than a lookup each.
    pub fn revoke_range(&mut self, space: u64, first: u64, last: u64, include_self: bool) -> Vec<Entry<V>> {
        let mut out = Vec::new();
        for (_, id) in self.slots_in(space, first, last) {
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

    /// Slots of `space` at `first..=last`, in order.
    pub fn keys_in(&self, space: u64, first: u64, last: u64) -> Vec<Key> {
        let mut keys: Vec<Key> =
            self.slots_in(space, first, last).into_iter().map(|(p, _)| (space, p)).collect();
        keys.sort_unstable();
        keys
    }

    /// All slots holding `value` (e.g. every capability to an object being destroyed).
    pub fn slots_of(&self, value: V) -> Vec<Key>
    where
        V: PartialEq,
    {
        self.nodes.iter().filter(|(_, n)| n.value == value).map(|(_, n)| n.key).collect()
    }

    /// Checks the structural invariants; returns a description of the first violation.
    pub fn check(&self) -> Result<(), &'static str> {
        let (mut listed, mut spaces) = (0, 0);
        for (key, first) in self.index.iter() {
            if key.1 != HEAD {
                if self.nodes.get(first).is_none_or(|n| n.key != key) {
                    return Err("index names a node of another slot");
                }
                continue;
            }
            // A space's list: its nodes, each of that space, the links agreeing; bounded by
            // the node count, so a cycle is caught too.
            spaces += 1;
            let (mut prev, mut n) = (None, Some(first));
            while let Some(id) = n {
                let Some(node) = self.nodes.get(id) else { return Err("dangling space link") };
                if node.key.0 != key.0 || node.space_prev != prev {
                    return Err("space list links disagree");
                }
                listed += 1;
                if listed > self.nodes.len() {
                    return Err("space lists hold more than every node");
                }
                (prev, n) = (Some(id), node.space_next);
            }
        }
        if listed != self.nodes.len() {
            return Err("a node on no space list");
        }
        if self.index.len() != self.nodes.len() + spaces {
            return Err("index and node count differ");
        }
        for (id, n) in self.nodes.iter() {
            if self.find(n.key) != Some(id) {
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

    type Db = MapDb<u32>;

    fn k(s: u8, p: u8) -> Key {
        (s as u64, p as u64)
    }

    #[test]
    fn derive_revoke_grant() {
        let mut db = Db::new(1);
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
        assert_eq!(db.remove_space(0).len(), 2);
        assert!(db.is_empty());
        assert_eq!(db.get((0, u64::MAX)), None, "a list head is not a slot");
        db.check().unwrap();
    }

    #[test]
    fn ranges_by_lookup_and_by_list_agree() {
        // Page-sized steps: a range of PROBE_LIMIT pages is looked up position by position,
        // a longer one walks the space's list; both give the slots in order.
        let mut db = Db::new(4096);
        for p in [7u64, 1, 5000, 3, 1023, 1024] {
            db.insert_root((1, p << 12), p as u32, 1).unwrap();
        }
        db.insert_root((2, 1 << 12), 0, 1).unwrap();
        let short = db.keys_in(1, 0, (PROBE_LIMIT << 12) - 1);
        let long = db.keys_in(1, 0, u64::MAX);
        let want: Vec<Key> = [1u64, 3, 7, 1023].iter().map(|p| (1, p << 12)).collect();
        assert_eq!(short, want);
        assert_eq!(long[..4], want[..]);
        assert_eq!(long[4..], [(1, 1024 << 12), (1, 5000 << 12)]);
        assert_eq!(db.keys_in(1, (3 << 12) + 1, 7 << 12), vec![(1, 7 << 12)], "unaligned start");
        assert_eq!(db.revoke_range(1, 0, u64::MAX, true).len(), 6);
        assert_eq!(db.len(), 1);
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
        /// A range too long to look up slot by slot: the space's list is walked.
        RevokeAll(u8, bool),
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
            (k.clone(), k.clone(), k.clone(), any::<bool>())
                .prop_map(|(s, a, b, me)| Op::RevokeRange(s, a, b, me)),
            (k, any::<bool>()).prop_map(|(s, me)| Op::RevokeAll(s, me)),
        ]
    }

    /// Keys derived (transitively) from `k`, found by following the rights chain the slow way.
    fn descendants(db: &Db, k: Key) -> Vec<Key> {
        let Some(id) = db.find(k) else { return vec![] };
        let mut out = vec![];
        let mut stack = db.children(id);
        while let Some(c) = stack.pop() {
            out.push(db.nodes.get(c).unwrap().key);
            stack.extend(db.children(c));
        }
        out
    }

    /// `revoke_range` of `s` at `a..=b`, checked against what the slots there held before.
    fn revoke_and_check(db: &mut Db, s: u8, a: u64, b: u64, me: bool) -> Result<(), TestCaseError> {
        let slots: Vec<Key> = (0..=u8::MAX as u64)
            .filter(|x| (a..=b).contains(x))
            .map(|x| (s as u64, x))
            .filter(|key| db.get(*key).is_some())
            .collect();
        let below: Vec<Key> = slots.iter().flat_map(|key| descendants(db, *key)).collect();
        db.revoke_range(s as u64, a, b, me);
        for d in &below {
            prop_assert!(db.get(*d).is_none(), "derived mapping survived a range revoke");
        }
        for key in slots {
            // A slot of the range stays unless it goes itself or was derived from another
            // one of the range.
            prop_assert_eq!(db.get(key).is_none(), me || below.contains(&key));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..60)) {
            let mut db = Db::new(1);
            let mut next_value = 0u32;
            for o in ops {
                match o {
                    Op::Root(s, a, r) => {
                        next_value += 1;
                        let _ = db.insert_root(k(s, a), next_value, r);
                    }
                    Op::Derive(s, a, t, b, m) => {
                        let before = db.get(k(s, a));
                        if let Ok((_, e)) = db.derive(k(s, a), k(t, b), m) {
                            let (v, r) = before.unwrap();
                            prop_assert_eq!(e.value, v);
                            prop_assert_eq!(e.rights & !r, 0, "rights grew through map");
                        }
                    }
                    Op::Grant(s, a, t, b, m) => {
                        let before = db.get(k(s, a));
                        if let Ok((_, e)) = db.grant(k(s, a), k(t, b), m) {
                            prop_assert_eq!(db.get(k(s, a)), None);
                            prop_assert_eq!(e.rights & !before.unwrap().1, 0);
                        }
                    }
                    Op::Revoke(s, a, me) => {
                        let below = descendants(&db, k(s, a));
                        db.revoke(k(s, a), me);
                        for d in below {
                            prop_assert!(db.get(d).is_none(), "derived mapping survived revoke");
                        }
                        if me {
                            prop_assert!(db.get(k(s, a)).is_none());
                        }
                    }
                    Op::Reduce(s, a, r, me) => {
                        let below = descendants(&db, k(s, a));
                        db.reduce(k(s, a), r, me);
                        for d in below {
                            prop_assert_eq!(db.get(d).unwrap().1 & r, 0);
                        }
                    }
                    Op::RevokeRange(s, a, b, me) => {
                        let (a, b) = (a.min(b), a.max(b));
                        revoke_and_check(&mut db, s, a as u64, b as u64, me)?;
                    }
                    Op::RevokeAll(s, me) => revoke_and_check(&mut db, s, 0, u64::MAX, me)?,
                    Op::RemoveSpace(s) => {
                        db.remove_space(s as u64);
                        prop_assert!((0..=u8::MAX).all(|a| db.get(k(s, a)).is_none()));
                    }
                }
                prop_assert_eq!(db.check(), Ok(()));
            }
        }
    }
}
