//! Relinks the kernel when its linker script changes (cargo does not see the script: it is
//! passed in RUSTFLAGS by `cargo xtask`, which stay the same).
fn main() {
    println!("cargo:rerun-if-changed=arch/x86_64/kernel.ld");
}
