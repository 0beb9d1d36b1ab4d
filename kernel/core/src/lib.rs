//! Portable kernel logic: everything that does not touch hardware, tested on the host.
//!
//! The architecture implements [`hal::Arch`]; the kernel binary glues the two together.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod captable;
pub mod frames;
pub mod hal;
pub mod kernel;
pub mod mapdb;
pub mod mem;
pub mod sched;
pub mod slab;
