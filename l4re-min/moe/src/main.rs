//! moe: the root task. Runs the boot script and serves namespaces; see README.md.
#![no_std]
#![no_main]

extern crate alloc;

use abi::cap::well_known as wk;
use abi::proto::{dataspace, event, exc_regs, fpage::unmap_mask, fpage::Fpage, namespace, parent, sigma0};
use abi::{CapIdx, Error, MsgTag, Rights};
use alloc::string::String;
use alloc::vec::Vec;
use bootscript::{Kernel, Script, Target};
use l4::ipc::{factory, get_str, mr, put_map_item, server_loop, set_br, set_mr, task};
use l4::loader::{spawn, Args, Slots};
use l4::println;

mod ds;
mod mem;

l4::entry!(main);

/// Our slots: the script's gates, then per program its task and thread, then its namespace gate.
const GATES: u64 = 100;
const PROGRAMS: u64 = 300;
const NAMESPACES: u64 = 700;
/// Where a capability a program sends us arrives.
const SCRATCH: CapIdx = CapIdx(999);
/// Capabilities programs registered (`provides NAME`), one slot per provided name.
const REGISTRY: u64 = 1300;
/// Per program granted `@factory`: its own factory.
const FACTORIES: u64 = 1000;
/// Kernel memory a program's own factory may spend (page tables, objects): Linux's processes.
const FACTORY_QUOTA: u64 = 32 << 20;

fn main(_args: &str) -> i32 {
    let Some(img) = l4::sys::boot_image() else {
        println!("no boot image mapped: nothing to start");
        return 1;
    };
    let Some(cfg) = img.modules().flatten().find(|m| m.name == "boot.cfg") else {
        println!("the boot image has no `boot.cfg`: nothing to start");
        return 1;
    };
    let script = match core::str::from_utf8(cfg.data)
        .map_err(|_| String::from("not UTF-8"))
        .and_then(|t| bootscript::parse(t).map_err(|e| alloc::format!("{e}")))
    {
        Ok(s) => s,
        Err(e) => {
            println!("boot.cfg: {e}");
            return 1;
        }
    };
    if script.gates.len() > (PROGRAMS - GATES) as usize
        || script.programs.len() > (NAMESPACES - PROGRAMS) as usize / 2
    {
        println!("boot.cfg: more than 200 gates or programs");
        return 1;
    }
    for (i, _) in script.gates.iter().enumerate() {
        if let Err(e) = factory::gate(wk::FACTORY, CapIdx(GATES + i as u64), CapIdx(0), 0) {
            println!("cannot create gate {}: {e:?}", script.gates[i]);
            return 1;
        }
    }
    println!("starting {} programs", script.programs.len());
    let mut pool = mem::Pool::new();
    let mut accounts: Vec<mem::Account> =
        script.programs.iter().map(|p| mem::Account::new(p.quota)).collect();
    let mut started = 0;
    for (i, p) in script.programs.iter().enumerate() {
        let Some(m) = img.modules().flatten().find(|m| m.name == p.module) else {
            println!("boot.cfg: line {}: no module `{}` in the boot image", p.line, p.module);
            continue;
        };
        // One gate, labelled with the program, is its namespace, parent, pager and exception
        // handler.
        let ns = slots(i).pager;
        if let Err(e) = factory::gate(wk::FACTORY, ns, wk::THREAD, i as u64 + 1) {
            println!("boot.cfg: line {}: no namespace for `{}`: {e:?}", p.line, p.module);
            continue;
        }
        let caps = [
            (ns, wk::NAMESPACE, Rights::RW | Rights::S),
            (ns, wk::PARENT, Rights::RW | Rights::S),
            match p.log {
                // A stand-in speaking the Log protocol; the program cannot tell.
                Some(g) => (CapIdx(GATES + g as u64), wk::LOG, Rights::R | Rights::S),
                None => (wk::LOG, wk::LOG, Rights::RW),
            },
        ];
        if p.caps.iter().any(|c| c.target == Target::Kernel(Kernel::Factory)) {
            if let Err(e) = factory::factory(wk::FACTORY, CapIdx(FACTORIES + i as u64), FACTORY_QUOTA) {
                println!("boot.cfg: line {}: no factory for `{}`: {e:?}", p.line, p.module);
                continue;
            }
        }
        let mut pages = mem::ImagePages { pool: &mut pool, account: &mut accounts[i] };
        let env: Vec<&str> = p.env.iter().map(String::as_str).collect();
        let args = Args { line: &p.args, env: &env };
        match spawn(m.data, &p.name, args, slots(i), &caps, p.prio, &mut pages) {
            Ok(()) => {
                started += 1;
                println!("{}: {} KiB of memory for image and stack", p.name, accounts[i].image / 1024);
            }
            Err(e) => {
                pool.reclaim(&mut accounts[i]);
                println!("boot.cfg: line {}: `{}` not started: {e}", p.line, p.module);
            }
        }
    }
    println!("{started} of {} programs started", script.programs.len());
    let registered = alloc::vec![false; script.provided.len()];
    Moe { script, accounts, pool, img, ds: ds::Dataspaces::default(), registered }.serve()
}

/// Where we keep program `i`'s task and thread capabilities; its gate is also its pager.
fn slots(i: usize) -> Slots {
    Slots {
        task: CapIdx(PROGRAMS + 2 * i as u64),
        thread: CapIdx(PROGRAMS + 2 * i as u64 + 1),
        pager: CapIdx(NAMESPACES + i as u64),
    }
}

/// The capability a program's name refers to: our slot and the rights it gets.
fn lookup(script: &Script, registered: &[bool], program: usize, name: &str) -> Option<(CapIdx, Rights)> {
    let cap = script.programs.get(program)?.caps.iter().find(|c| c.name == name)?;
    Some(match cap.target {
        // Not registered yet: not there yet.
        // Registered, and still there: a provider's copies go when the provider ends.
        Target::Provided(k)
            if registered.get(k) == Some(&true)
                && task::cap_info(wk::TASK, CapIdx(REGISTRY + k as u64)).is_ok_and(|(l, _)| l != 0) =>
        {
            (CapIdx(REGISTRY + k as u64), Rights::R | Rights::S)
        }
        Target::Provided(_) => return None,
        // Clients may call through the gate; the server may also bind it (W).
        Target::Gate { gate, server } => (
            CapIdx(GATES + gate as u64),
            if server { Rights::ALL - Rights::D } else { Rights::R | Rights::S },
        ),
        Target::Kernel(k) => (
            match k {
                Kernel::Log => wk::LOG,
                Kernel::Platform => wk::PLATFORM_CTL,
                Kernel::Scheduler => wk::SCHEDULER,
                Kernel::Icu => wk::ICU,
                Kernel::Factory => CapIdx(FACTORIES + program as u64),
            },
            Rights::RW | Rights::S,
        ),
    })
}

/// What moe serves from: the script and each program's memory account.
struct Moe {
    script: Script,
    accounts: Vec<mem::Account>,
    pool: mem::Pool,
    /// The boot image, for the modules programs read (`file`).
    img: abi::bootimage::BootImage<'static>,
    ds: ds::Dataspaces,
    /// Per provided name: registered yet.
    registered: Vec<bool>,
}

impl Moe {
    /// Program `i` ended (`how`): report it, delete its task, thread and gate (the kernel
    /// objects die with our capabilities, the last ones) and take back the memory it was lent.
    fn ended(&mut self, i: usize, how: core::fmt::Arguments) {
        let s = slots(i);
        let own_factory = CapIdx(FACTORIES + i as u64);
        let fps = [s.task, s.thread, s.pager, own_factory].map(|c| Fpage::object(c, 0, Rights::ALL));
        let name = &self.script.programs[i].name;
        let a = &self.accounts[i];
        let (lent, image, reused) = (a.used / 1024, a.image / 1024, a.reused / 1024);
        match task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &fps) {
            Ok(()) => {
                self.pool.reclaim(&mut self.accounts[i]);
                println!("{name} {how}; memory back: {lent} KiB lent, {image} KiB image and stack, {reused} KiB of it reused");
            }
            Err(e) => println!("{name} {how}; deleting it failed: {e:?}"),
        }
    }

    /// A request on program `i`'s pager protocol: memory within its quota. Its page faults
    /// are answered only in the range it reserved; everything else it may touch was mapped
    /// before it asked.
    fn sigma0(&mut self, i: usize) -> MsgTag {
        match mr(0) {
            sigma0::REQ_ANY => match self.pool.lend(&mut self.accounts[i], mr(1) as u32) {
                Ok((at, order)) => {
                    put_map_item(0, 0, Fpage::memory(at, order, Rights::from_bits_truncate(7)), false);
                    MsgTag::new(0, 0, 1, 0)
                }
                Err(e) => MsgTag::error(e),
            },
            sigma0::REQ_INFO => {
                set_mr(0, self.accounts[i].quota - self.accounts[i].used);
                MsgTag::new(0, 1, 0, 0)
            }
            sigma0::REQ_RESERVE => match self.pool.reserve(&mut self.accounts[i], mr(1), mr(2)) {
                Ok(()) => MsgTag::new(0, 0, 0, 0),
                Err(e) => MsgTag::error(e),
            },
            _ => MsgTag::error(Error::Perm),
        }
    }

    fn serve(mut self) -> ! {
        // Capabilities programs send us (`namespace::COPY`) land in SCRATCH; our own calls
        // (sigma0, factories) change the receive window, so it is set again before each wait.
        let window = || set_br(0, Fpage::object(SCRATCH, 0, Rights::ALL).0);
        window();
        server_loop(|msg| {
            let r = self.handle(msg);
            window();
            r
        })
    }

    fn handle(&mut self, msg: Result<(MsgTag, u64), Error>) -> Option<MsgTag> {
        let Ok((tag, label)) = msg else { return Some(MsgTag::error(Error::Inval)) };
        if label >= ds::GONE_LABEL {
            if let Some((id, owner, size)) = self.ds.gone(&mut self.pool, &mut self.accounts, label) {
                let name = &self.script.programs[owner].name;
                println!("dataspace {id} of {name} freed ({} KiB): no program holds it", size / 1024);
            }
            return None;
        }
        if label >= ds::GATE_LABEL {
            return self.dataspace(label - ds::GATE_LABEL, tag);
        }
        // Every other gate we serve is a program's, labelled with its index + 1.
        let Some(i) = (label as usize).checked_sub(1).filter(|i| *i < self.script.programs.len()) else {
            return Some(MsgTag::error(Error::BadProto));
        };
        match tag.label() {
            parent::LABEL if tag.words() == 3 && (mr(0), mr(1)) == (parent::SIGNAL, parent::EXIT) => {
                // Sent without waiting for a reply: nothing to answer.
                self.ended(i, format_args!("exited with status {}", mr(2) as i32));
                None
            }
            event::EXCEPTION => {
                // We are the program's exception handler: it crashed. Deleting it is the answer.
                let (trap, ip) = (mr(exc_regs::TRAPNO), mr(exc_regs::IP));
                self.ended(i, format_args!("crashed: exception {trap} at ip {ip:#x}"));
                None
            }
            event::PAGE_FAULT => {
                let (addr, ip) = (mr(0) & !0xfff, mr(1));
                // The first touch of its reserved range: zeroed memory there.
                match self.pool.back(&mut self.accounts[i], addr) {
                    Ok(Some(((at, order), base))) => {
                        put_map_item(0, base, Fpage::memory(at, order, Rights::from_bits_truncate(7)), false);
                        return Some(MsgTag::new(0, 0, 1, 0));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.ended(
                            i,
                            format_args!(
                                "ended: no memory left to back its reserved range at {addr:#x} ({e:?})"
                            ),
                        );
                        return None;
                    }
                }
                // We are its pager and lent it nothing there: a wild access.
                self.ended(i, format_args!("crashed: page fault at {addr:#x} (ip {ip:#x})"));
                None
            }
            event::SIGMA0 if tag.words() >= 2 => Some(self.sigma0(i)),
            namespace::LABEL if mr(0) == namespace::QUERY => {
                let mut buf = [0u8; namespace::NAME_MAX];
                Some(
                    match get_str(1, tag.words(), namespace::NAME_MAX, &mut buf)
                        .and_then(|n| lookup(&self.script, &self.registered, i, n))
                    {
                        Some((slot, rights)) => {
                            put_map_item(0, 0, Fpage::object(slot, 0, rights), false);
                            MsgTag::new(0, 0, 1, 0)
                        }
                        None => MsgTag::error(Error::NoEnt),
                    },
                )
            }
            namespace::LABEL if mr(0) == namespace::FILE && tag.words() >= 4 => Some(self.file(i, tag)),
            namespace::LABEL if mr(0) == namespace::COPY && tag.items() == 1 => {
                let r = self.ds.copy(&mut self.pool, &mut self.accounts[i], i, SCRATCH);
                // The sender's capability is not ours to keep.
                let _ =
                    task::unmap(wk::TASK, unmap_mask::ALL_SPACES, &[Fpage::object(SCRATCH, 0, Rights::ALL)]);
                self.hand_out(r)
            }
            namespace::LABEL if mr(0) == namespace::REGISTER && tag.items() == 1 => {
                Some(self.register(i, tag))
            }
            namespace::LABEL if mr(0) == namespace::ALLOC && tag.words() >= 2 => {
                let r = self.ds.alloc(&mut self.pool, &mut self.accounts[i], i, mr(1));
                self.hand_out(r)
            }
            _ => Some(MsgTag::error(Error::BadProto)),
        }
    }

    /// A `namespace::REGISTER` of program `i`: the capability in SCRATCH becomes the one its
    /// provided name stands for.
    fn register(&mut self, i: usize, tag: MsgTag) -> MsgTag {
        let mut buf = [0u8; namespace::NAME_MAX];
        let k = get_str(1, tag.words(), namespace::NAME_MAX, &mut buf)
            .and_then(|n| self.script.provided.iter().position(|(p, by)| p == n && *by == i));
        let r = match k {
            None => Err(Error::Perm),
            Some(k) => {
                // Granted, not mapped: SCRATCH is emptied, the registry slot holds the copy.
                let to = ((REGISTRY + k as u64) << 12) | abi::proto::map::GRANT;
                task::map(wk::TASK, wk::TASK, Fpage::object(SCRATCH, 0, Rights::ALL), to).map(|()| {
                    self.registered[k] = true;
                    println!("{} registered `{}`", self.script.programs[i].name, self.script.provided[k].0);
                })
            }
        };
        if r.is_err() {
            let _ = task::unmap(wk::TASK, unmap_mask::ALL_SPACES, &[Fpage::object(SCRATCH, 0, Rights::ALL)]);
        }
        match r {
            Ok(()) => MsgTag::new(0, 0, 0, 0),
            Err(e) => MsgTag::error(e),
        }
    }

    /// Replies with a new dataspace's read-write capability, or the error.
    fn hand_out(&mut self, r: Result<(usize, CapIdx), Error>) -> Option<MsgTag> {
        match r {
            Ok((id, gate)) => self.reply_with_gate(id, 0, gate),
            Err(e) => Some(MsgTag::error(e)),
        }
    }

    /// Replies with dataspace `id`'s gate of `side` (call rights only), then watches it: the
    /// watch reports at once while only we hold the gate, so the reply comes first.
    fn reply_with_gate(&mut self, id: usize, side: usize, gate: CapIdx) -> Option<MsgTag> {
        put_map_item(0, 0, Fpage::object(gate, 0, Rights::R | Rights::S), false);
        let _ = l4::ipc::reply(MsgTag::new(0, 0, 1, 0));
        self.ds.handed_out(id, side);
        None
    }

    /// A request on dataspace gate `n` (`2 id + side`, side 0 read-write, 1 read-only).
    fn dataspace(&mut self, n: u64, tag: MsgTag) -> Option<MsgTag> {
        let (id, side) = ((n / 2) as usize, (n % 2) as usize);
        let Some(d) = self.ds.get(id) else { return Some(MsgTag::error(Error::NoEnt)) };
        if tag.label() != dataspace::LABEL || tag.words() == 0 {
            return Some(MsgTag::error(Error::BadProto));
        }
        match mr(0) {
            dataspace::SIZE => {
                set_mr(0, d.size());
                Some(MsgTag::new(0, 1, 0, 0))
            }
            dataspace::MAP if tag.words() >= 2 => match d.page(mr(1), side) {
                Some(fp) => {
                    put_map_item(0, 0, fp, false);
                    Some(MsgTag::new(0, 0, 1, 0))
                }
                None => Some(MsgTag::error(Error::Inval)),
            },
            dataspace::READ_ONLY => self.reply_with_gate(id, 1, CapIdx(ds::ro_slot(id))),
            _ => Some(MsgTag::error(Error::Inval)),
        }
    }

    /// A `namespace::FILE` request of program `i`: a private copy of part of a module it may
    /// read, lent from the pool within its quota.
    fn file(&mut self, i: usize, tag: MsgTag) -> MsgTag {
        let (offset, order) = (mr(1), mr(2) as u32);
        let mut buf = [0u8; namespace::NAME_MAX];
        let Some(name) = get_str(3, tag.words(), namespace::NAME_MAX, &mut buf) else {
            return MsgTag::error(Error::Inval);
        };
        if !self.script.programs[i].files.iter().any(|f| f == name) {
            return MsgTag::error(Error::NoEnt);
        }
        let Some(m) = self.img.modules().flatten().find(|m| m.name == name) else {
            return MsgTag::error(Error::NoEnt);
        };
        let size = m.data.len() as u64;
        set_mr(0, size);
        if offset >= size {
            return MsgTag::new(0, 1, 0, 0);
        }
        match self.pool.lend(&mut self.accounts[i], order) {
            Ok((at, order)) => {
                let n = (size - offset).min(1 << order) as usize;
                // SAFETY: the chunk is ours, mapped writable, 2^order >= n bytes, zeroed, and
                // lent to nobody but this program (which cannot run while we serve it).
                unsafe {
                    core::ptr::copy_nonoverlapping(m.data[offset as usize..].as_ptr(), at as *mut u8, n)
                };
                put_map_item(1, 0, Fpage::memory(at, order, Rights::from_bits_truncate(7)), false);
                MsgTag::new(0, 1, 1, 0)
            }
            Err(e) => MsgTag::error(e),
        }
    }
}
