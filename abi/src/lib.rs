//! The user/kernel contract of the microkernel (ABI version [`ABI_VERSION`]).
//!
//! Semantics and bit layouts follow Fiasco.OC / L4Re where they exist there, so that readers who
//! know that system find their way. Everything a user program and the kernel must agree on lives
//! in this crate and nowhere else; `docs/abi.md` describes it in prose.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

pub mod bootimage;
pub mod cap;
pub mod error;
pub mod kip;
pub mod msgtag;
pub mod proto;
pub mod startup;
pub mod syscall;
pub mod utcb;
pub mod vcpu;

pub use cap::{CapIdx, CapSel, Rights};
pub use error::Error;
pub use msgtag::MsgTag;

/// Version of the contract described by this crate. Bumped on every incompatible change; the
/// kernel publishes it in the KIP and user programs check it at start-up.
pub const ABI_VERSION: u32 = 2;
