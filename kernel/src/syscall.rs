//! The `invoke` system call: capability lookup, protocol check and dispatch to the object.
//! Message words are read from the caller's UTCB through the kernel's mapping of its frame, never
//! through user pointers.

use crate::objects::{with_kernel, Kernel, Obj};
use crate::A;
use abi::proto::{fpage, log as vlog, platform_ctl, task, Protocol};
use abi::utcb::MR_COUNT;
use abi::{CapSel, Error, MsgTag, Rights};
use arch_x86_64::TrapFrame;
use kernel_core::hal::{Arch, UserFrame};
use kernel_core::mem::PhysAddr;

/// The message registers of the current thread named by `tag`.
struct Mrs {
    words: [u64; MR_COUNT],
    count: usize,
}

impl Mrs {
    fn read(utcb: PhysAddr, tag: MsgTag) -> Result<Mrs, Error> {
        let count = tag.words();
        if count > MR_COUNT {
            return Err(Error::Inval);
        }
        let mut bytes = [0u8; MR_COUNT * 8];
        A::read_phys(utcb, &mut bytes[..count * 8]);
        let mut words = [0u64; MR_COUNT];
        for (w, c) in words.iter_mut().zip(bytes.chunks_exact(8)).take(count) {
            *w = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
        }
        Ok(Mrs { words, count })
    }

    fn get(&self, i: usize) -> Result<u64, Error> {
        if i < self.count {
            Ok(self.words[i])
        } else {
            Err(Error::Inval)
        }
    }
}

/// Handles `syscall` from user mode.
pub fn invoke(f: &mut TrapFrame) {
    let [rdx, rax, _label, _timeout] = f.syscall_args();
    let r = with_kernel(|k| dispatch(k, CapSel::from_raw(rdx), MsgTag(rax)));
    // The invoker may have destroyed its own task; it must not go back to user mode.
    crate::sched::leave_if_dead();
    let tag = match r {
        Ok(t) => t,
        Err(e) => MsgTag::error(e),
    };
    f.set_syscall_result(tag.0, 0);
}

fn dispatch(k: &mut Kernel, sel: CapSel, tag: MsgTag) -> Result<MsgTag, Error> {
    let cap = k.lookup(sel.idx()).ok_or(Error::NoEnt)?;
    let proto = match cap.obj {
        Obj::Task(_) => Protocol::Task,
        Obj::Log => Protocol::Log,
        Obj::PlatformCtl => Protocol::PlatformCtl,
    };
    if tag.label() != 0 && tag.label() != proto.label() {
        return Err(Error::BadProto);
    }
    if !cap.rights.contains(Rights::R) {
        return Err(Error::Perm);
    }
    let thread = k.threads.get(k.current.ok_or(Error::NoEnt)?).ok_or(Error::NoEnt)?;
    let mrs = Mrs::read(thread.utcb_frame, tag)?;
    let op = mrs.get(0)?;
    match cap.obj {
        Obj::Log => match vlog::Op::from_code(op).ok_or(Error::NoSys)? {
            vlog::Op::Write => log_write(k, &mrs),
        },
        Obj::PlatformCtl => match platform_ctl::Op::from_code(op).ok_or(Error::NoSys)? {
            platform_ctl::Op::Shutdown => {
                if !cap.rights.contains(Rights::W) {
                    return Err(Error::Perm);
                }
                let status = mrs.get(1)?;
                log::info!("shutdown requested with status {status}");
                A::shutdown(status as u32)
            }
        },
        Obj::Task(_) => match task::Op::from_code(op).ok_or(Error::NoSys)? {
            task::Op::Unmap => task_unmap(k, &mrs),
        },
    }
}

/// `Log::Write`: prints bytes, prefixing each line with the task's name.
fn log_write(k: &mut Kernel, mrs: &Mrs) -> Result<MsgTag, Error> {
    let len = mrs.get(1)? as usize;
    if len > (mrs.count.saturating_sub(2)) * 8 {
        return Err(Error::Inval);
    }
    let task = k.current_task().ok_or(Error::NoEnt)?;
    let t = k.tasks.get_mut(task).ok_or(Error::NoEnt)?;
    let mut bytes = [0u8; MR_COUNT * 8];
    for (i, w) in mrs.words[2..mrs.count].iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    arch_x86_64::serial::with_console(|s| {
        for &b in &bytes[..len] {
            if t.log_at_line_start {
                s.write_bytes(t.name.as_bytes());
                s.write_bytes(b": ");
            }
            s.write_bytes(&[b]);
            t.log_at_line_start = b == b'\n';
        }
    });
    Ok(MsgTag::new(0, 0, 0, 0))
}

/// `Task::Unmap` on object flexpages of the caller's own table. With `DELETE_OBJ` and the D
/// right, the named objects are destroyed (a task deleting its own capability ends itself).
/// Memory and I/O flexpages arrive with the mapping database (ABI v2).
fn task_unmap(k: &mut Kernel, mrs: &Mrs) -> Result<MsgTag, Error> {
    let mask = mrs.get(1)?;
    let me = k.current_task().ok_or(Error::NoEnt)?;
    for i in 2..mrs.count {
        let fp = fpage::Fpage(mrs.words[i]);
        match fp.typ() {
            Some(fpage::Type::Object) => {}
            Some(_) => return Err(Error::NoSys),
            None => return Err(Error::Inval),
        }
        if fp.order() > 16 {
            return Err(Error::Inval);
        }
        for idx in fp.base()..fp.base() + (1u64 << fp.order()) {
            let idx = abi::CapIdx(idx);
            let Some(cap) = k.tasks.get(me).and_then(|t| t.caps.get(idx)) else { continue };
            let delete = mask & fpage::unmap_mask::DELETE_OBJ == fpage::unmap_mask::DELETE_OBJ
                && cap.rights.contains(Rights::D)
                && fp.rights().contains(Rights::D);
            if delete {
                if let Obj::Task(t) = cap.obj {
                    k.destroy_task(t);
                    if t == me {
                        return Ok(MsgTag::new(0, 0, 0, 0));
                    }
                    continue;
                }
            }
            if mask & fpage::unmap_mask::ALL_SPACES != 0 {
                if let Some(t) = k.tasks.get_mut(me) {
                    t.caps.take(idx);
                }
            }
        }
    }
    Ok(MsgTag::new(0, 0, 0, 0))
}
