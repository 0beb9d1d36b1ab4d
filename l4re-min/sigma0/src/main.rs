//! sigma0: the first user program. The kernel hands it all memory it does not keep (described in
//! the KIP) and every I/O port; sigma0 hands them out through the sigma0 protocol and serves
//! page faults of the boot tasks whose pager it is with fresh zeroed pages.
#![no_std]
#![no_main]

use abi::kip::{SIGMA0_MEM_RANGES, SIGMA0_PHYS_OFFSET};
use abi::proto::{event, fpage::Fpage, sigma0};
use abi::{Error, MsgTag, Rights};
use l4::ipc::{mr, put_map_item, server_loop, set_mr};

l4::entry!(main);

const PAGE: u64 = 4096;
/// Largest block handed out at once (4 MiB).
const MAX_ORDER: u64 = 22;
/// Single pages skipped while aligning larger blocks, kept for later single-page requests.
const SPARE: usize = 4096;

/// A bump allocator over the ranges from the KIP, with a stack of spare single pages.
struct Pool {
    ranges: [[u64; 2]; SIGMA0_MEM_RANGES],
    count: usize,
    /// Range being carved and the next free address in it.
    cur: usize,
    next: u64,
    spare: [u64; SPARE],
    spares: usize,
}

impl Pool {
    fn from_kip() -> Pool {
        let kip = l4::kip();
        let count = (kip.sigma0_mem_count as usize).min(SIGMA0_MEM_RANGES);
        Pool {
            ranges: kip.sigma0_mem,
            count,
            cur: 0,
            next: kip.sigma0_mem[0][0],
            spare: [0; SPARE],
            spares: 0,
        }
    }

    fn free_bytes(&self) -> u64 {
        let rest: u64 = self.ranges[self.cur..self.count].iter().map(|r| r[1] - r[0]).sum();
        let used_in_cur = if self.cur < self.count { self.next - self.ranges[self.cur][0] } else { 0 };
        rest - used_in_cur + self.spares as u64 * PAGE
    }

    /// A naturally aligned block of `2^order` bytes (in our address space).
    fn alloc(&mut self, order: u64) -> Option<u64> {
        let size = 1u64 << order;
        if order == 12 && self.spares > 0 {
            self.spares -= 1;
            return Some(self.spare[self.spares]);
        }
        while self.cur < self.count {
            let [_, end] = self.ranges[self.cur];
            let aligned = self.next.next_multiple_of(size);
            if aligned + size <= end {
                let mut p = self.next;
                while p < aligned && self.spares < SPARE {
                    self.spare[self.spares] = p;
                    self.spares += 1;
                    p += PAGE;
                }
                self.next = aligned + size;
                return Some(aligned);
            }
            self.cur += 1;
            if self.cur < self.count {
                self.next = self.ranges[self.cur][0];
            }
        }
        None
    }
}

fn zero(addr: u64, size: u64) {
    // SAFETY: [addr, addr+size) is pool memory the kernel mapped into sigma0 and that sigma0
    // has not handed out yet (it is being handed out now); no Rust reference covers it.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, size as usize) };
}

fn main(_args: &str) -> i32 {
    let mut pool = Pool::from_kip();
    l4::println!(
        "{} MiB of memory in {} ranges (physical address + {SIGMA0_PHYS_OFFSET:#x})",
        pool.free_bytes() >> 20,
        pool.count
    );
    server_loop(|msg| {
        Some(match msg {
            Ok((tag, _label)) => serve(&mut pool, tag),
            Err(_) => MsgTag::error(Error::Inval),
        })
    })
}

/// Handles one request; returns the reply tag (items already in the MRs).
fn serve(pool: &mut Pool, tag: MsgTag) -> MsgTag {
    match tag.label() {
        event::SIGMA0 if tag.words() >= 1 && mr(0) == sigma0::REQ_INFO => {
            set_mr(0, pool.free_bytes());
            MsgTag::new(0, 1, 0, 0)
        }
        event::SIGMA0 if tag.words() >= 2 && mr(0) == sigma0::REQ_ANY => {
            let order = mr(1);
            if !(12..=MAX_ORDER).contains(&order) {
                return MsgTag::error(Error::Inval);
            }
            match pool.alloc(order) {
                Some(a) => {
                    zero(a, 1 << order);
                    put_map_item(0, 0, Fpage::memory(a, order as u32, Rights::from_bits_truncate(7)), false);
                    MsgTag::new(0, 0, 1, 0)
                }
                None => MsgTag::error(Error::NoMem),
            }
        }
        event::SIGMA0 if tag.words() >= 2 && mr(0) == sigma0::REQ_IO => {
            let fp = Fpage(mr(1));
            if fp.typ() != Some(abi::proto::fpage::Type::IoPort) || fp.order() > 16 {
                return MsgTag::error(Error::Inval);
            }
            // sigma0 owns every port; the kernel checks the range when it maps.
            put_map_item(0, 0, fp, false);
            MsgTag::new(0, 0, 1, 0)
        }
        event::PAGE_FAULT if tag.words() >= 2 => {
            let addr = mr(0) & !(PAGE - 1);
            match pool.alloc(12) {
                Some(a) => {
                    zero(a, PAGE);
                    put_map_item(0, addr, Fpage::memory(a, 12, Rights::from_bits_truncate(7)), false);
                    MsgTag::new(0, 0, 1, 0)
                }
                None => MsgTag::error(Error::NoMem),
            }
        }
        _ => MsgTag::error(Error::BadProto),
    }
}
