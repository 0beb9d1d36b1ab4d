//! `ktest session-server` / `ktest session-client`: sessions between programs moe starts. The
//! client opens a session through the gate the script calls `hello` and gets a gate of its own
//! (the session); the server watches that gate (`IpcGate::Watch`), so when the client ends and
//! moe deletes its task, the server hears of it and frees the session.

use crate::objects::{check, ok, R};
use abi::cap::well_known as wk;
use abi::proto::fpage::{unmap_mask, Fpage};
use abi::{CapIdx, MsgTag, Rights};
use l4::ipc::{self, factory, gate, irq, mr, namespace, put_map_item, set_br, set_mr, task};
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

pub fn server() -> R {
    ok(namespace::query(wk::NAMESPACE, "hello", HELLO), "query hello")?;
    ok(namespace::query(wk::NAMESPACE, "factory", wk::FACTORY), "query factory")?;
    ok(namespace::query(wk::NAMESPACE, "platform", wk::PLATFORM_CTL), "query platform")?;
    ok(gate::bind(HELLO, wk::THREAD, HELLO_LABEL), "bind hello")?;
    println!("serving sessions");
    loop {
        let (_, label) = ok(ipc::wait(0), "wait")?;
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
            SESSION_LABEL => {
                set_mr(0, mr(0) + 1);
                ok(ipc::reply(MsgTag::new(0, 1, 0, 0)), "reply")?;
            }
            GONE_LABEL => {
                println!("session closed: its client is gone; freeing it");
                let fps = [Fpage::object(S_GATE, 0, Rights::ALL), Fpage::object(S_IRQ, 0, Rights::ALL)];
                ok(task::unmap(wk::TASK, unmap_mask::DELETE_OBJ, &fps), "free the session")?;
                check(task::cap_info(wk::TASK, S_GATE).is_ok_and(|(l, _)| l == 0), "session gate freed")?;
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
