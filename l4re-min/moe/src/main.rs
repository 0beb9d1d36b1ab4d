//! moe: the root task. Runs the boot script and serves namespaces; see README.md.
#![no_std]
#![no_main]

extern crate alloc;

use abi::cap::well_known as wk;
use abi::proto::{event, exc_regs, fpage::unmap_mask, fpage::Fpage, namespace, parent};
use abi::{CapIdx, Error, MsgTag, Rights};
use alloc::string::String;
use bootscript::{Kernel, Script, Target};
use l4::ipc::{factory, get_str, mr, put_map_item, reply_and_wait, task, wait};
use l4::loader::{spawn, Slots};
use l4::println;

l4::entry!(main);

/// Our slots: the script's gates, then per program its task and thread, then its namespace gate.
const GATES: u64 = 100;
const PROGRAMS: u64 = 300;
const NAMESPACES: u64 = 700;

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
    let mut started = 0;
    for (i, p) in script.programs.iter().enumerate() {
        let Some(m) = img.modules().flatten().find(|m| m.name == p.module) else {
            println!("boot.cfg: line {}: no module `{}` in the boot image", p.line, p.module);
            continue;
        };
        let ns = CapIdx(NAMESPACES + i as u64);
        if let Err(e) = factory::gate(wk::FACTORY, ns, wk::THREAD, i as u64 + 1) {
            println!("boot.cfg: line {}: no namespace for `{}`: {e:?}", p.line, p.module);
            continue;
        }
        // One gate serves both of the program's protocols: namespace and parent.
        let caps = [
            (ns, wk::NAMESPACE, Rights::RW | Rights::S),
            (ns, wk::PARENT, Rights::RW | Rights::S),
            match p.log {
                // A stand-in speaking the Log protocol; the program cannot tell.
                Some(g) => (CapIdx(GATES + g as u64), wk::LOG, Rights::R | Rights::S),
                None => (wk::LOG, wk::LOG, Rights::RW),
            },
        ];
        match spawn(m.data, &p.name, &p.args, slots(i), &caps, p.prio) {
            Ok(bytes) => {
                started += 1;
                println!("{}: {} KiB of memory for image and stack", p.name, bytes / 1024);
            }
            Err(e) => println!("boot.cfg: line {}: `{}` not started: {e}", p.line, p.module),
        }
    }
    println!("{started} of {} programs started", script.programs.len());
    serve(&script)
}

/// Where we keep program `i`'s task and thread capabilities.
fn slots(i: usize) -> Slots {
    Slots { task: CapIdx(PROGRAMS + 2 * i as u64), thread: CapIdx(PROGRAMS + 2 * i as u64 + 1) }
}

/// Program `i` ended (`how`): report it and delete its task and thread (the kernel objects die
/// with our capabilities, the last ones).
fn ended(script: &Script, i: usize, how: core::fmt::Arguments) {
    let s = slots(i);
    let fps = [Fpage::object(s.task, 0, Rights::ALL), Fpage::object(s.thread, 0, Rights::ALL)];
    let name = &script.programs[i].name;
    match task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &fps) {
        Ok(()) => println!("{name} {how}"),
        Err(e) => println!("{name} {how}; deleting it failed: {e:?}"),
    }
}

/// The capability a program's name refers to: our slot and the rights it gets.
fn lookup(script: &Script, program: usize, name: &str) -> Option<(CapIdx, Rights)> {
    let cap = script.programs.get(program)?.caps.iter().find(|c| c.name == name)?;
    Some(match cap.target {
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
            },
            Rights::RW,
        ),
    })
}

fn serve(script: &Script) -> ! {
    let mut msg = wait(0);
    loop {
        let reply = match msg {
            Ok((tag, label))
                if tag.label() == parent::LABEL
                    && tag.words() == 3
                    && (mr(0), mr(1)) == (parent::SIGNAL, parent::EXIT)
                    && label > 0 =>
            {
                // Sent without waiting for a reply: nothing to answer.
                ended(script, label as usize - 1, format_args!("exited with status {}", mr(2) as i32));
                msg = wait(0);
                continue;
            }
            Ok((tag, label)) if tag.label() == event::EXCEPTION && label > 0 => {
                // We are the program's exception handler: it crashed. Deleting it is the answer.
                let (trap, ip) = (mr(exc_regs::TRAPNO), mr(exc_regs::IP));
                ended(script, label as usize - 1, format_args!("crashed: exception {trap} at ip {ip:#x}"));
                msg = wait(0);
                continue;
            }
            Ok((tag, label)) if tag.label() == namespace::LABEL && mr(0) == namespace::QUERY && label > 0 => {
                let program = label as usize - 1;
                let mut buf = [0u8; namespace::NAME_MAX];
                match get_str(1, tag.words(), namespace::NAME_MAX, &mut buf)
                    .and_then(|n| lookup(script, program, n))
                {
                    Some((slot, rights)) => {
                        put_map_item(0, 0, Fpage::object(slot, 0, rights), false);
                        MsgTag::new(0, 0, 1, 0)
                    }
                    None => MsgTag::error(Error::NoEnt),
                }
            }
            Ok(_) => MsgTag::error(Error::BadProto),
            Err(_) => MsgTag::error(Error::Inval),
        };
        msg = reply_and_wait(reply, 0);
    }
}
