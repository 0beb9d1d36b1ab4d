//! Boot-time options for testing and measuring the kernel itself (kernel command line).

use crate::A;
use kernel_core::hal::Arch;

/// `selftest=kernel-fault`: touch an unmapped kernel address, to prove that a kernel fault
/// is reported with a register dump and fails the boot.
pub fn kernel_fault() {
    log::info!("selftest: faulting in kernel mode on purpose");
    let bad = 0xffff_c000_0000_0000u64 as *const u64;
    // SAFETY: deliberately invalid: the read faults and the fault handler stops the machine.
    let v = unsafe { bad.read_volatile() };
    log::error!("selftest: read of an unmapped address returned {v}");
}

/// `bench`: micro-benchmarks that only the kernel can run, printed as `BENCH name value unit`.
pub fn bench() {
    const BATCHES: usize = 31;
    const PER_BATCH: u64 = 64;
    let cr3 = arch_x86_64::paging::read_cr3();
    let mut samples = [0u64; BATCHES];
    for s in samples.iter_mut() {
        let t0 = A::cycles();
        for _ in 0..PER_BATCH {
            arch_x86_64::paging::write_cr3(cr3);
        }
        *s = (A::cycles() - t0) / PER_BATCH;
    }
    samples.sort_unstable();
    log::info!("BENCH cr3_write {} cycles", samples[BATCHES / 2]);
    log::info!("BENCH tsc_hz {} hz", A::cycles_hz());
}
