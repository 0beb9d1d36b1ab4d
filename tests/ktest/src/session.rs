//! `ktest session-server` / `ktest session-client`: sessions between programs moe starts. The
//! client opens a session through the gate the script calls `hello` and gets a gate of its own
//! (the session); the server watches that gate (`IpcGate::Watch`), so when the client ends and
//! moe deletes its task, the server hears of it and frees the session.
//! `ktest ds-client`: the same, and the client shares a dataspace: it writes into one it
//! attached (region manager), passes a read-only capability through the session, and the
//! server attaches it and reads what the client wrote.

use crate::objects::{check, ok, R};
use abi::cap::well_known as wk;
use abi::proto::fpage::{unmap_mask, Fpage};
use abi::{CapIdx, MsgTag, Rights};
use l4::ipc::{self, ds, factory, gate, irq, mr, namespace, put_map_item, set_br, set_mr, task};
use l4::println;

const HELLO: CapIdx = CapIdx(20);
/// The client's slot for its session gate.
const SESSION: CapIdx = CapIdx(21);
/// The server's session gate and its watch Irq.
const S_GATE: CapIdx = CapIdx(40);
const S_IRQ: CapIdx = CapIdx(41);
const HELLO_LABEL: u64 = 7;
const SESSION_LABEL: u64 = 100;
const GONE_LABEL: u64 = 200;
const OPEN: u64 = 1;
/// On the session: a read-only dataspace capability comes with the message.
const SHARE: u64 = 2;
/// Where the client's dataspace arrives in the server, and where each attaches it.
const SHARED: CapIdx = CapIdx(42);
const DS: CapIdx = CapIdx(22);
const DS_RO: CapIdx = CapIdx(23);
const DS_COPY: CapIdx = CapIdx(24);
const CLIENT_AT: u64 = 0x20_0000_0000;
const SERVER_AT: u64 = 0x30_0000_0000;
const TEXT: &[u8] = b"written by the client into a dataspace";

pub fn server() -> R {
    ok(namespace::query(wk::NAMESPACE, "hello", HELLO), "query hello")?;
    ok(namespace::query(wk::NAMESPACE, "factory", wk::FACTORY), "query factory")?;
    ok(namespace::query(wk::NAMESPACE, "platform", wk::PLATFORM_CTL), "query platform")?;
    ok(gate::bind(HELLO, wk::THREAD, HELLO_LABEL), "bind hello")?;
    let rm = namespace::query(wk::NAMESPACE, "scheduler", wk::SCHEDULER).is_ok();
    if rm {
        ok(l4::rm::start(), "region manager")?;
    }
    println!("serving sessions");
    loop {
        // A shared dataspace may come with a session message.
        set_br(0, Fpage::object(SHARED, 0, Rights::ALL).0);
        let (tag, label) = ok(ipc::wait(0), "wait")?;
        match label {
            HELLO_LABEL if mr(0) == OPEN => {
                ok(factory::gate(wk::FACTORY, S_GATE, wk::THREAD, SESSION_LABEL), "session gate")?;
                ok(factory::irq(wk::FACTORY, S_IRQ), "watch irq")?;
                ok(irq::attach(S_IRQ, wk::THREAD, GONE_LABEL), "attach")?;
                put_map_item(0, 0, Fpage::object(S_GATE, 0, Rights::R | Rights::S), false);
                ok(ipc::reply(MsgTag::new(0, 0, 1, 0)), "reply with the session")?;
                // Watched once the client holds its copy.
                ok(gate::watch(S_GATE, Some(S_IRQ)), "watch")?;
                println!("session opened");
            }
            SESSION_LABEL if rm && mr(0) == SHARE && tag.items() == 1 => {
                ok(l4::rm::attach(SHARED, SERVER_AT, 8192, 0), "attach the shared dataspace")?;
                // SAFETY: the region is attached: the region manager maps its pages on touch.
                let got = unsafe { core::slice::from_raw_parts((SERVER_AT + 4096) as *const u8, TEXT.len()) };
                let same = got == TEXT;
                println!("read from the shared dataspace: {:?}", core::str::from_utf8(got).unwrap_or("?"));
                ok(l4::rm::detach(SERVER_AT), "detach")?;
                ok(
                    task::unmap(wk::TASK, unmap_mask::ALL_SPACES, &[Fpage::object(SHARED, 0, Rights::ALL)]),
                    "drop it",
                )?;
                set_mr(0, same as u64);
                ok(ipc::reply(MsgTag::new(0, 1, 0, 0)), "reply")?;
            }
            SESSION_LABEL => {
                set_mr(0, mr(0) + 1);
                ok(ipc::reply(MsgTag::new(0, 1, 0, 0)), "reply")?;
            }
            GONE_LABEL => {
                println!("session closed: its client is gone; freeing it");
                let fps = [Fpage::object(S_GATE, 0, Rights::ALL), Fpage::object(S_IRQ, 0, Rights::ALL)];
                ok(task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &fps), "free the session")?;
                check(task::cap_info(wk::TASK, S_GATE).is_ok_and(|(l, _)| l == 0), "session gate freed")?;
                // Before powering off, let the root task (below us) report what the client's
                // end freed.
                let _ = ipc::wait(abi::syscall::timeout::pack(0, 200_000));
                return Ok(());
            }
            _ => println!("unexpected message with label {label}"),
        }
    }
}

pub fn client() -> R {
    ok(namespace::query(wk::NAMESPACE, "hello", HELLO), "query hello")?;
    set_br(0, Fpage::object(SESSION, 0, Rights::ALL).0);
    set_mr(0, OPEN);
    ok(ipc::call(HELLO, MsgTag::new(0, 1, 0, 0), 0), "open a session")?;
    set_mr(0, 41);
    ok(ipc::call(SESSION, MsgTag::new(0, 1, 0, 0), 0), "call the session")?;
    check(mr(0) == 42, "the session answers")?;
    println!("session answered {}; leaving", mr(0));
    Ok(())
}

pub fn ds_client() -> R {
    ok(namespace::query(wk::NAMESPACE, "hello", HELLO), "query hello")?;
    ok(l4::rm::start(), "region manager")?;
    ok(ds::alloc(8000, DS), "allocate a dataspace")?;
    check(ds::size(DS) == Ok(8192), "the size is rounded up to pages")?;
    ok(l4::rm::attach(DS, CLIENT_AT, 8192, 0), "attach")?;
    check(
        l4::rm::attach(DS, CLIENT_AT + 4096, 4096, 0) == Err(abi::Error::Exists),
        "regions do not overlap",
    )?;
    // A reserved area, and a second view of the dataspace wherever there is room.
    let hole = ok(l4::rm::reserve(None, 1 << 20), "reserve")?;
    let view = ok(l4::rm::attach_anywhere(DS, 8192, 0), "attach anywhere")?;
    check(view >= hole + (1 << 20) || view + 8192 <= hole, "not inside the reserved area")?;
    // SAFETY: the region is attached (8 KiB at CLIENT_AT): its pages are mapped on first touch.
    unsafe {
        check(*(CLIENT_AT as *const u64) == 0, "a new dataspace is zeroed")?;
        core::ptr::copy_nonoverlapping(TEXT.as_ptr(), (CLIENT_AT + 4096) as *mut u8, TEXT.len());
    }
    // SAFETY: `view` maps the same dataspace (attached above): the write shows there.
    check(unsafe { *((view + 4096) as *const u8) } == TEXT[0], "both views see the same pages")?;
    ok(l4::rm::detach(view), "detach the second view")?;
    // A copy: the same contents, then its own.
    ok(ds::copy(DS, DS_COPY), "copy the dataspace")?;
    let copy = ok(l4::rm::attach_anywhere(DS_COPY, 8192, 0), "attach the copy")?;
    // SAFETY: `copy` and CLIENT_AT are attached regions of 8 KiB each.
    unsafe {
        check(*((copy + 4096) as *const u8) == TEXT[0], "the copy has the contents")?;
        *((copy + 4096) as *mut u8) = b'W';
        check(*((CLIENT_AT + 4096) as *const u8) == TEXT[0], "writing the copy leaves the original")?;
    }
    println!("copied a dataspace");
    ok(ds::read_only(DS, DS_RO), "read-only capability")?;
    set_br(0, Fpage::object(SESSION, 0, Rights::ALL).0);
    set_mr(0, OPEN);
    ok(ipc::call(HELLO, MsgTag::new(0, 1, 0, 0), 0), "open a session")?;
    set_mr(0, SHARE);
    put_map_item(1, 0, Fpage::object(DS_RO, 0, Rights::R | Rights::S), false);
    ok(ipc::call(SESSION, MsgTag::new(0, 1, 1, 0), 0), "share the dataspace")?;
    check(mr(0) == 1, "the server read what we wrote")?;
    println!("the server read our dataspace; leaving");
    Ok(())
}
