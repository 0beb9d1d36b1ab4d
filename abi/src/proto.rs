//! Kernel object protocols and their opcodes: the one table from which kernel dispatch and user
//! stubs both follow.
//!
//! A message to a kernel object carries the object's protocol as its tag label (or label 0,
//! meaning "the object's own protocol") and the opcode in `MR[0]`. The arguments of each opcode
//! are documented at the opcode; results come back in the MRs of the reply.

/// Declares every kernel object protocol: `module: Name = label { Op = code, ... }`.
///
/// Generates `Protocol` (with `label()` / `from_label()`) and, per object, a module with `LABEL`
/// and an `Op` enum with `code()` / `from_code()`, so that a new opcode is one line here.
macro_rules! protocols {
    ($(
        $(#[$pm:meta])*
        $module:ident : $name:ident = $label:literal {
            $( $(#[$om:meta])* $op:ident = $code:literal ),* $(,)?
        }
    )*) => {
        /// Every kernel object protocol.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Protocol { $( $(#[$pm])* $name ),* }

        impl Protocol {
            pub const ALL: &'static [Protocol] = &[$(Protocol::$name),*];

            /// The protocol's name as written in the table.
            pub const fn name(self) -> &'static str {
                match self { $( Protocol::$name => stringify!($name) ),* }
            }

            /// Names and codes of the protocol's opcodes, in table order.
            pub fn ops(self) -> &'static [(&'static str, u64)] {
                match self { $( Protocol::$name => &[$( (stringify!($op), $code) ),*] ),* }
            }

            pub const fn label(self) -> i64 {
                match self { $( Protocol::$name => $label ),* }
            }

            pub fn from_label(label: i64) -> Option<Protocol> {
                match label { $( $label => Some(Protocol::$name), )* _ => None }
            }
        }

        $(
            $(#[$pm])*
            pub mod $module {
                /// Tag label of this protocol.
                pub const LABEL: i64 = $label;

                /// Opcodes, passed in `MR[0]`.
                #[derive(Clone, Copy, Debug, PartialEq, Eq)]
                pub enum Op { $( $(#[$om])* $op = $code ),* }

                impl Op {
                    pub const ALL: &'static [Op] = &[$(Op::$op),*];

                    pub const fn code(self) -> u64 {
                        self as u64
                    }

                    pub fn from_code(code: u64) -> Option<Op> {
                        match code { $( $code => Some(Op::$op), )* _ => None }
                    }
                }
            }
        )*
    };
}

protocols! {
    /// An IPC gate as a kernel object (Fiasco's L4_PROTO_KOBJECT). Messages with any other label
    /// go to the thread the gate is bound to.
    ipc_gate: IpcGate = -10 {
        /// `MR[1]` = thread capability, `MR[2]` = label the receiver sees for messages via this gate.
        Bind = 0x10,
        /// Reply: `MR[0]` = the gate's label, `MR[1]` = 1 if bound.
        GetInfo = 0x11,
        /// Needs W. `MR[1]` = an Irq capability slot of the caller (0: stop watching). The Irq is
        /// triggered when the gate's capabilities fall to one — the server's own: its client
        /// dropped its copy or ended — and at once if only one is left already. How a server
        /// learns that the client of a session gate is gone.
        Watch = 0x12,
    }
    /// A task: an address space plus a capability table.
    task: Task = -11 {
        /// Into the invoked task: `MR[1]` = source task capability, `MR[2]` = flexpage in the source,
        /// `MR[3]` = send base in the destination (address or slot index << 12) | `map::GRANT`.
        Map = 0,
        /// `MR[1]` = unmap mask (`fpage::unmap_mask`), `MR[2..]` = flexpages of the invoked task.
        Unmap = 1,
        /// `MR[1]` = slot index. Reply: `MR[0]` = protocol label of the object (0: empty slot),
        /// `MR[1]` = rights.
        CapInfo = 2,
        /// Names the task in kernel messages (log prefix, fault reports), like Fiasco's debugger
        /// object names: `MR[1]` = length (1..=`TASK_NAME_MAX`, UTF-8), `MR[2..]` = the bytes.
        SetName = 3,
        /// `MR[1]`, `MR[2]` = two slots of the invoked task. Reply: `MR[0]` = 1 if both name the
        /// same object (Fiasco's `cap_equal`): how a server tells which of its objects a
        /// capability it received refers to.
        CapEqual = 4,
    }
    /// A thread.
    thread: Thread = -12 {
        /// `MR[1]` = `thread_control` flags; `MR[2]` = pager capability, `MR[3]` = exception
        /// handler capability, `MR[4]` = task capability, `MR[5]` = UTCB user address.
        Control = 0,
        /// `MR[1]` = ip, `MR[2]` = sp (`u64::MAX`: unchanged), `MR[3]` = `ex_regs` flags.
        /// Reply: `MR[0]` = old ip, `MR[1]` = old sp, `MR[2]` = old flags register.
        ExRegs = 1,
        /// On the caller's own thread capability: leave the vCPU's upcall handler and continue
        /// the context in its state area — in the user task if `USER_MODE` is set, carrying the
        /// message's map items into that task. An IRQ pending with IRQs enabled upcalls at once.
        VcpuResume = 4,
        /// `MR[1]` = user address of the vCPU state area (1 KiB aligned, in the UTCB area):
        /// makes the thread a vCPU. `MR[2..]` (optional, up to `vcpu::GUEST_REGIONS`) =
        /// memory flexpages of the thread's task (1 GiB to 512 GiB, aligned) that hold the guest
        /// kernel, state area and UTCB included: the vCPU runs its guest in *guest worlds*
        /// (`vcpu` module docs).
        VcpuControl = 7,
    }
    /// The kernel console (Fiasco's Vlog / vcon): output, and input for one terminal task.
    log: Log = -13 {
        /// `MR[1]` = length in bytes, `MR[2..]` = the bytes, packed little-endian
        /// (`utcb::pack_bytes`). Each line gets the task's name as prefix, except the terminal's
        /// output, which goes out exactly as written.
        Write = 0,
        /// Needs W. `MR[1]` = an Irq capability slot of the caller (0: none), or
        /// `TERMINAL_RELEASE`. Makes the caller's task the console's terminal: its output goes
        /// out raw and the Irq is triggered whenever input arrives (at once if some waits).
        /// The terminal keeps the role until it releases it or its task dies; meanwhile other
        /// tasks get `Error::Exists`. The terminal calls again to change its Irq; releasing
        /// when not the terminal is `Error::Perm`.
        Terminal = 1,
        /// Terminal only (others: `Error::Perm`), never blocks. `MR[1]` (optional) = most bytes
        /// wanted (absent or larger: `LOG_READ_MAX`). Reply: `MR[0]` = number of bytes n
        /// (0: none waiting), `MR[1..]` = the bytes, packed as for `Write`.
        Read = 2,
    }
    /// The scheduler.
    scheduler: Scheduler = -14 {
        /// Reply: `MR[0]` = CPUs online (bit mask), `MR[1]` = highest priority.
        Info = 0,
        /// `MR[1]` = thread capability, `MR[2]` = priority, `MR[3]` = CPU set (bit mask),
        /// `MR[4]` = time slice in microseconds (0: default). Makes the thread runnable.
        RunThread = 1,
    }
    /// A factory: creates objects against its kernel-memory quota.
    factory: Factory = -15 {
        /// `MR[1]` = protocol label of the object kind, `MR[2]` = slot for the new capability,
        /// then per kind: IpcGate `MR[3]` = thread capability (0: unbound), `MR[4]` = label;
        /// Semaphore `MR[3]` = initial count; Factory `MR[3]` = quota in bytes.
        Create = 0,
    }
    /// An interrupt (also used for notifications).
    irq: Irq = -1 {
        /// `MR[1]` = thread capability, `MR[2]` = label delivered with each interrupt message.
        Attach = 0,
        Detach = 1,
        /// Raises the interrupt (software IRQ).
        Trigger = 2,
        /// Re-enables delivery after an interrupt message.
        Unmask = 4,
        /// `MR[1]` = period in microseconds (0: stop), `MR[2]` = 1 for one shot: the kernel
        /// timer raises this Irq (the clock of a guest OS).
        SetTimer = 5,
    }
    /// A counting semaphore.
    semaphore: Semaphore = -20 {
        /// Waits until the count is positive, then decrements it (timeout in `r8`).
        Down = 0,
        /// Increments the count, waking one waiter.
        Up = 2,
    }
    /// The interrupt controller: binds hardware interrupt lines to Irq objects.
    icu: Icu = -27 {
        /// `MR[1]` = interrupt number, `MR[2]` = Irq capability.
        Bind = 0,
        /// `MR[1]` = interrupt number.
        Unbind = 1,
        /// Reply: `MR[0]` = number of interrupt lines.
        Info = 2,
    }
    /// Platform control: the machine as a whole.
    platform_ctl: PlatformCtl = -26 {
        /// `MR[1]` = exit status; 0 means success. Powers the machine off (QEMU: exits with it).
        Shutdown = 0,
        /// Checks the kernel's internal invariants (for tests and fuzzers); `Error::Inval` and a
        /// console message name the first violation.
        SelfCheck = 1,
    }
}

/// Labels of messages the kernel sends on behalf of an event (not objects one can invoke).
pub mod event {
    /// A page fault, sent to the faulting thread's pager: `MR[0]` = fault address with
    /// bit 1 set for a write and bit 0 for an instruction fetch, `MR[1]` = ip. The reply's map
    /// items resolve it; an empty reply retries the access.
    pub const PAGE_FAULT: i64 = -2;
    /// An exception, sent to the thread's exception handler: `MR[0..]` = `exc_regs` layout.
    /// The reply may carry changed registers (same layout) to resume with.
    pub const EXCEPTION: i64 = -5;
    /// The sigma0 protocol: `MR[0]` = request, see `sigma0`.
    pub const SIGMA0: i64 = -6;
}

/// Flags of `thread::Op::Control` (`MR[1]`), Fiasco's values.
pub mod thread_control {
    pub const SET_PAGER: u64 = 0x0001_0000;
    pub const SET_EXC_HANDLER: u64 = 0x0004_0000;
    pub const BIND_TASK: u64 = 0x0080_0000;
}

/// Flags of `thread::Op::ExRegs` (`MR[3]`).
pub mod ex_regs {
    /// Abort an IPC the thread is blocked in (it returns with `Error::Canceled`).
    pub const CANCEL: u64 = 0x10000;
}

/// Word offsets of the exception message (`event::EXCEPTION`) and reply.
pub mod exc_regs {
    pub const TRAPNO: usize = 0;
    pub const ERROR: usize = 1;
    pub const IP: usize = 2;
    pub const SP: usize = 3;
    pub const FLAGS: usize = 4;
    pub const FAULT_ADDR: usize = 5;
    pub const RAX: usize = 6;
    pub const RBX: usize = 7;
    pub const RCX: usize = 8;
    pub const RDX: usize = 9;
    pub const RSI: usize = 10;
    pub const RDI: usize = 11;
    pub const RBP: usize = 12;
    pub const R8: usize = 13;
    /// Words in the message.
    pub const WORDS: usize = 14;
}

/// Map items: typed message items (two words) after the untyped words of a message.
///
/// ```text
/// word 0:  send base (address, or slot index << 12)  | GRANT (bit 1) | ITEM (bit 3)
/// word 1:  flexpage to send (in the sender's space)
/// ```
/// The receiver's buffer register `BR[0]` holds its receive window (a flexpage). An item lands at
/// `window base + (send base mod window size)`, shrunk to fit the window, as in L4.
pub mod map {
    /// Marks word 0 of a typed item.
    pub const ITEM: u64 = 8;
    /// Grant: the sender loses what it sends.
    pub const GRANT: u64 = 2;
}

/// Longest task name (`task::Op::SetName`).
pub const TASK_NAME_MAX: usize = 32;

/// `MR[1]` of `log::Op::Terminal`: the terminal gives up its role.
pub const TERMINAL_RELEASE: u64 = u64::MAX;

/// Most bytes one `log::Op::Read` returns: what fits in `MR[1..]`.
pub const LOG_READ_MAX: usize = crate::utcb::mr_bytes_after(1);

/// Bytes of console input the kernel buffers for the terminal; more input than that, unread,
/// is dropped (the newest bytes, as a UART overrun would) and counted.
pub const CONSOLE_INPUT_BUFFER: usize = 4096;

/// The namespace protocol, served by the root task: a program asks for a capability by name.
/// `MR[0]` = `QUERY`, `MR[1]` = name length, `MR[2..]` = the name's bytes; the reply maps the
/// capability into the receive window the caller put in `BR[0]`, or is `Error::NoEnt`.
pub mod namespace {
    /// Label of namespace requests (user protocols are positive).
    pub const LABEL: i64 = 0x4001;
    pub const QUERY: u64 = 0;
    /// A boot module the script lets the program read (`file NAME`): `MR[1]` = byte offset,
    /// `MR[2]` = log2 size of a chunk, `MR[3..]` = the name; `BR[0]` = where to receive it.
    /// Reply: `MR[0]` = the module's size, plus a map item with a private copy of
    /// `[offset, offset + 2^size)` (zero past the end) unless the offset is past the end.
    /// The copy counts against the program's quota.
    pub const FILE: u64 = 1;
    /// A new dataspace of `MR[1]` bytes (rounded up to pages), zeroed, charged to the program's
    /// quota; `BR[0]` = an object receive window. Reply: a map item with the dataspace
    /// capability (read-write; `dataspace::READ_ONLY` gives a read-only one to share).
    pub const ALLOC: u64 = 2;
    /// A new dataspace (charged to the caller) with a copy of the contents of the dataspace
    /// whose capability comes with the message (one object map item); `BR[0]` = an object
    /// receive window. Reply: a map item with the copy's read-write capability.
    pub const COPY: u64 = 3;
    /// `MR[1..]` = a name the script lets the caller provide (`provides NAME`), with one object
    /// map item: the capability to publish under it (replacing an earlier one). Programs the
    /// script gives `cap X = NAME` find it by `QUERY` from then on (`NoEnt` before). Reply:
    /// ok, or `Perm` for a name the caller does not provide.
    pub const REGISTER: u64 = 4;
    /// Longest name.
    pub const NAME_MAX: usize = 32;
}

/// Dataspaces (label `LABEL`), served by the root task on each dataspace capability: memory a
/// program allocates (`namespace::ALLOC`) and shares by passing the capability. A dataspace is
/// freed, and its pages revoked everywhere, when no program holds a capability to it any more.
pub mod dataspace {
    pub const LABEL: i64 = 0x4003;
    /// Reply: `MR[0]` = size in bytes.
    pub const SIZE: u64 = 0;
    /// `MR[1]` = byte offset (page aligned); `BR[0]` = a memory receive window. Reply: a map
    /// item with that page, writable only through a read-write capability.
    pub const MAP: u64 = 1;
    /// `BR[0]` = an object receive window. Reply: a map item with a read-only capability to
    /// the same dataspace.
    pub const READ_ONLY: u64 = 2;
}

/// The parent protocol: a program tells the task that started it about its life, as L4Re's
/// parent signals do. `MR[0]` = `SIGNAL`, `MR[1]` = the signal, `MR[2..]` = its arguments.
pub mod parent {
    /// Label of parent messages (user protocols are positive).
    pub const LABEL: i64 = 0x4002;
    pub const SIGNAL: u64 = 0;
    /// The program is ending: `MR[2]` = its exit status. Sent without waiting for a reply.
    pub const EXIT: u64 = 0;
}

/// The sigma0 protocol (label `event::SIGMA0`), served by the first user program.
pub mod sigma0 {
    /// `MR[1]` = log2 size. Reply: a map item with any free RAM of that size.
    pub const REQ_ANY: u64 = 1;
    /// Reply: `MR[0]` = free RAM in bytes.
    pub const REQ_INFO: u64 = 2;
    /// `MR[1]` = an I/O flexpage. Reply: a map item granting those ports (sigma0 owns all).
    pub const REQ_IO: u64 = 3;
    /// `MR[1]..MR[2]` = a page-aligned range of the caller's space, charged to its quota at
    /// once (`NoMem` if it does not fit) and backed on first touch: a page fault there is
    /// answered with zeroed memory (moe; sigma0 itself answers `Perm`). One range per program.
    pub const REQ_RESERVE: u64 = 4;
}

/// Flexpages: a naturally aligned power-of-two range of memory, I/O ports or capabilities.
pub mod fpage {
    /// ```text
    ///  63                         12 11     6 5   4 3      0
    /// +-----------------------------+--------+-----+--------+
    /// |   address (page / cap idx)  | order  | typ | rights |
    /// +-----------------------------+--------+-----+--------+
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Fpage(pub u64);

    /// Flexpage type field.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Type {
        Memory = 1,
        IoPort = 2,
        Object = 3,
    }

    impl Fpage {
        /// An object flexpage covering `2^order` capability slots starting at `first`.
        pub const fn object(first: crate::CapIdx, order: u32, rights: crate::Rights) -> Self {
            Fpage(
                (first.0 << 12)
                    | ((order as u64 & 0x3f) << 6)
                    | ((Type::Object as u64) << 4)
                    | rights.bits() as u64,
            )
        }

        pub const fn order(self) -> u32 {
            ((self.0 >> 6) & 0x3f) as u32
        }

        /// Whether the flexpage is of type `t` (a comparison of the type bits, without
        /// decoding them: kernel fast paths avoid the jump table a `match` may become).
        pub const fn is(self, t: Type) -> bool {
            (self.0 >> 4) & 3 == t as u64
        }

        pub fn typ(self) -> Option<Type> {
            match (self.0 >> 4) & 3 {
                1 => Some(Type::Memory),
                2 => Some(Type::IoPort),
                3 => Some(Type::Object),
                _ => None,
            }
        }

        pub const fn rights(self) -> crate::Rights {
            crate::Rights::from_bits_truncate((self.0 & 0xf) as u8)
        }

        /// A memory flexpage of `2^order` bytes at `addr` (aligned down to the size).
        pub const fn memory(addr: u64, order: u32, rights: crate::Rights) -> Self {
            Fpage(
                (addr & !0xfff)
                    | ((order as u64 & 0x3f) << 6)
                    | ((Type::Memory as u64) << 4)
                    | rights.bits() as u64,
            )
        }

        /// An I/O-port flexpage of `2^order` ports starting at `port`.
        pub const fn io(port: u64, order: u32, rights: crate::Rights) -> Self {
            Fpage(
                (port << 12)
                    | ((order as u64 & 0x3f) << 6)
                    | ((Type::IoPort as u64) << 4)
                    | rights.bits() as u64,
            )
        }

        /// The address field: a byte address for memory, a port for I/O, a slot index for objects.
        pub const fn base(self) -> u64 {
            match (self.0 >> 4) & 3 {
                1 => self.0 & !0xfff,
                _ => self.0 >> 12,
            }
        }

        /// Number of units (bytes, ports, slots) the flexpage covers, if representable.
        pub fn size(self) -> Option<u64> {
            1u64.checked_shl(self.order())
        }
    }

    /// Unmap masks (`MR[1]` of `task::Op::Unmap`), Fiasco's values.
    /// Rights bits of a memory flexpage (Fiasco's L4_FPAGE_X/W/R); object flexpages use
    /// `crate::Rights` instead.
    pub mod mem_rights {
        pub const X: u8 = 1;
        pub const W: u8 = 2;
        pub const R: u8 = 4;
    }

    pub mod unmap_mask {
        /// Revoke only what was derived into other spaces.
        pub const OTHER_SPACES: u64 = 0;
        /// Also remove the flexpage from the invoking space.
        pub const ALL_SPACES: u64 = 0x8000_0000;
        /// Remove everywhere and destroy the objects (needs the D right).
        pub const DELETE_OBJ: u64 = 0xc000_0000;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_label(p.label()), Some(*p));
            assert!(p.label() < 0, "kernel protocols are negative labels");
        }
        for op in log::Op::ALL {
            assert_eq!(log::Op::from_code(op.code()), Some(*op));
        }
        assert_eq!(Protocol::from_label(0), None);
    }

    /// docs/abi.md documents every opcode of the table, with its protocol label and number.
    #[test]
    fn abi_doc_covers_the_table() {
        let doc = include_str!("../../docs/abi.md");
        for p in Protocol::ALL {
            for (op, code) in p.ops() {
                let row = alloc::format!("| {} | {} | {op} = {code} |", p.name(), p.label());
                assert!(doc.lines().any(|l| l.starts_with(&row)), "docs/abi.md lacks the row `{row}`");
            }
        }
    }

    #[test]
    fn object_fpage_layout() {
        let f = fpage::Fpage::object(crate::CapIdx(5), 3, crate::Rights::D);
        assert_eq!(f.base(), 5);
        assert_eq!(f.order(), 3);
        assert_eq!(f.typ(), Some(fpage::Type::Object));
        assert_eq!(f.rights(), crate::Rights::D);
    }
}
