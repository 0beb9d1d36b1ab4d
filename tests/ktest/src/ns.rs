//! `ktest ns-server` / `ktest ns-client`: two programs the root task (moe) starts from a boot
//! script. Each holds only its namespace and the log; everything else it asks for by name, so
//! the pair checks the script's wiring end to end: the server binds the gate the script calls
//! `hello`, the client calls it, and only the client was granted `platform` to power off.

use crate::objects::{check, echo_server, expect_err, ok, R};
use abi::cap::well_known as wk;
use abi::syscall::timeout;
use abi::{CapIdx, Error, MsgTag};
use l4::ipc::{self, gate, mr, namespace, set_mr};
use l4::println;

const HELLO: CapIdx = CapIdx(20);
const SCRATCH: CapIdx = CapIdx(21);

pub fn server() -> R {
    ok(namespace::query(wk::NAMESPACE, "hello", HELLO), "query hello")?;
    // The server holds no platform capability: the script did not grant one.
    expect_err(namespace::query(wk::NAMESPACE, "platform", SCRATCH), Error::NoEnt, "platform withheld")?;
    ok(gate::bind(HELLO, wk::THREAD, 7), "bind hello")?;
    println!("serving `hello`");
    echo_server()
}

pub fn client() -> R {
    ok(namespace::query(wk::NAMESPACE, "hello", HELLO), "query hello")?;
    expect_err(namespace::query(wk::NAMESPACE, "nosuch", SCRATCH), Error::NoEnt, "unknown name")?;
    let long = "x".repeat(abi::proto::namespace::NAME_MAX + 1);
    expect_err(namespace::query(wk::NAMESPACE, &long, SCRATCH), Error::Inval, "overlong name")?;
    // A client may call through the gate but not bind it.
    check(gate::bind(HELLO, wk::THREAD, 1).is_err(), "a client cannot bind the gate")?;
    // The server may not have bound the gate yet: an unbound gate answers NoEnt.
    let mut tries = 0;
    let reply = loop {
        set_mr(0, 41);
        match ipc::call(HELLO, MsgTag::new(0, 1, 0, 0), 0) {
            Err(Error::NoEnt) if tries < 1000 => {
                tries += 1;
                // Nobody sends to us: a 1 ms open wait is a sleep.
                let _ = ipc::wait(timeout::pack(timeout::NEVER, 1000));
            }
            r => break ok(r, "call hello")?,
        }
    };
    check(reply.words() == 2 && mr(0) == 42 && mr(1) == 7, "echo through the named gate")?;
    println!("hello answered 42");
    ok(namespace::query(wk::NAMESPACE, "platform", wk::PLATFORM_CTL), "query platform")?;
    Ok(())
}
