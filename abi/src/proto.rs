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
    /// A task: an address space plus a capability table.
    task: Task = -11 {
        /// `MR[1]` = unmap mask (`fpage::UnmapMask`), `MR[2..]` = flexpages (tag words - 2 of them).
        Unmap = 1,
    }
    /// The kernel console (Fiasco's Vlog / vcon).
    log: Log = -13 {
        /// `MR[1]` = length in bytes, `MR[2..]` = the bytes, packed little-endian.
        Write = 0,
    }
    /// Platform control: the machine as a whole.
    platform_ctl: PlatformCtl = -26 {
        /// `MR[1]` = exit status; 0 means success. Powers the machine off (QEMU: exits with it).
        Shutdown = 0,
    }
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

        /// The address field: a byte address for memory, a port for I/O, a slot index for objects.
        pub const fn base(self) -> u64 {
            self.0 >> 12
        }
    }

    /// Unmap masks (`MR[1]` of `task::Op::Unmap`), Fiasco's values.
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

    #[test]
    fn object_fpage_layout() {
        let f = fpage::Fpage::object(crate::CapIdx(5), 3, crate::Rights::D);
        assert_eq!(f.base(), 5);
        assert_eq!(f.order(), 3);
        assert_eq!(f.typ(), Some(fpage::Type::Object));
        assert_eq!(f.rights(), crate::Rights::D);
    }
}
