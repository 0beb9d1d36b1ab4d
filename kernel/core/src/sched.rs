//! Per-CPU ready queues: fixed priorities 0..=255 (higher runs first), round robin within one.

use alloc::collections::VecDeque;

pub const PRIORITIES: usize = 256;

pub struct ReadyQueues<Id> {
    /// Boxed: the 8 KiB of queue heads stay off the page that holds the bitmap and the rest
    /// of the kernel's hot state.
    queues: alloc::boxed::Box<[VecDeque<Id>; PRIORITIES]>,
    /// Bit p set: queue p is non-empty. Finds the highest level in four word scans.
    nonempty: [u64; PRIORITIES / 64],
    /// The highest non-empty level, -1 if none: kept up to date so that the IPC fast path's
    /// question ([`ReadyQueues::any_above`]) is one comparison.
    top: i16,
}

impl<Id: Copy + PartialEq> Default for ReadyQueues<Id> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Id: Copy + PartialEq> ReadyQueues<Id> {
    pub fn new() -> Self {
        ReadyQueues {
            queues: alloc::boxed::Box::new(core::array::from_fn(|_| VecDeque::new())),
            nonempty: [0; PRIORITIES / 64],
            top: -1,
        }
    }

    /// Marks level `prio` non-empty.
    fn filled(&mut self, prio: u8) {
        self.nonempty[prio as usize / 64] |= 1 << (prio % 64);
        self.top = self.top.max(prio as i16);
    }

    /// Marks level `prio` empty.
    fn emptied(&mut self, prio: u8) {
        self.nonempty[prio as usize / 64] &= !(1 << (prio % 64));
        self.top = self.highest().map_or(-1, i16::from);
    }

    /// Appends `id` at the tail of its priority level. Enqueuing a queued id is a no-op.
    pub fn enqueue(&mut self, id: Id, prio: u8) {
        let q = &mut self.queues[prio as usize];
        if !q.contains(&id) {
            q.push_back(id);
            self.filled(prio);
        }
    }

    /// Puts `id` at the head of its level: it runs next among equals (direct IPC hand-off).
    pub fn enqueue_front(&mut self, id: Id, prio: u8) {
        let q = &mut self.queues[prio as usize];
        if let Some(pos) = q.iter().position(|x| *x == id) {
            q.remove(pos);
        }
        q.push_front(id);
        self.filled(prio);
    }

    /// The highest non-empty priority.
    pub fn highest(&self) -> Option<u8> {
        (0..self.nonempty.len())
            .rev()
            .find(|&w| self.nonempty[w] != 0)
            .map(|w| (w * 64 + 63 - self.nonempty[w].leading_zeros() as usize) as u8)
    }

    /// True if a thread of priority strictly above `prio` is ready. One comparison: the IPC
    /// fast path asks this on every hand-off (inlined there, to stay in its code page).
    #[inline(always)]
    pub fn any_above(&self, prio: u8) -> bool {
        self.top > prio as i16
    }

    /// Removes and returns the head of the highest non-empty level.
    pub fn dequeue(&mut self) -> Option<Id> {
        let p = self.highest()?;
        let q = &mut self.queues[p as usize];
        let id = q.pop_front();
        if q.is_empty() {
            self.emptied(p);
        }
        id
    }

    /// Takes `id` out of its level (a thread that blocks or dies while ready).
    pub fn remove(&mut self, id: Id, prio: u8) -> bool {
        let q = &mut self.queues[prio as usize];
        let Some(pos) = q.iter().position(|x| *x == id) else { return false };
        q.remove(pos);
        if q.is_empty() {
            self.emptied(prio);
        }
        true
    }

    /// True if no thread is ready.
    pub fn is_empty(&self) -> bool {
        self.top < 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_round_robin() {
        let mut r = ReadyQueues::new();
        r.enqueue(1, 10);
        r.enqueue(2, 200);
        r.enqueue(3, 10);
        r.enqueue(4, 0);
        r.enqueue(1, 10);
        assert_eq!(r.highest(), Some(200));
        assert_eq!(r.dequeue(), Some(2));
        assert_eq!(r.dequeue(), Some(1));
        r.enqueue(1, 10);
        assert_eq!(r.dequeue(), Some(3));
        assert!(r.remove(1, 10));
        assert!(!r.remove(1, 10));
        assert_eq!(r.dequeue(), Some(4));
        assert!(r.is_empty());
        assert_eq!(r.dequeue(), None);
        assert!(!r.any_above(0));
        r.enqueue(9, 255);
        assert_eq!(r.highest(), Some(255));
        assert!(r.any_above(254) && !r.any_above(255));
        r.enqueue(7, 64);
        assert!(r.any_above(63) && r.any_above(0));
        r.enqueue(8, 255);
        r.enqueue_front(8, 255);
        assert_eq!(r.dequeue(), Some(8));
    }

    proptest::proptest! {
        /// `any_above` answers as a scan of every level would, after any sequence of enqueues
        /// (at the tail or the head), dequeues and removals.
        #[test]
        fn any_above_agrees_with_a_scan(ops in proptest::collection::vec((0u8..4, 0u32..6, proptest::prelude::any::<u8>()), 1..200)) {
            let mut r = ReadyQueues::new();
            let mut prio_of = std::collections::HashMap::new();
            for (op, id, prio) in ops {
                match op {
                    0 => if prio_of.get(&id).is_none_or(|p| *p == prio) {
                        r.enqueue(id, prio);
                        prio_of.insert(id, prio);
                    },
                    1 => if prio_of.get(&id).is_none_or(|p| *p == prio) {
                        r.enqueue_front(id, prio);
                        prio_of.insert(id, prio);
                    },
                    2 => if let Some(id) = r.dequeue() {
                        prio_of.remove(&id);
                    },
                    _ => if let Some(p) = prio_of.remove(&id) {
                        proptest::prop_assert!(r.remove(id, p));
                    },
                }
                for q in [0u8, 1, 63, 64, 127, 128, 200, 254, 255, prio] {
                    let scan = (q as usize + 1..PRIORITIES).any(|l| !r.queues[l].is_empty());
                    proptest::prop_assert_eq!(r.any_above(q), scan);
                }
            }
        }
    }
}
