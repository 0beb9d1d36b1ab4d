//! ktest's benchmarks run from text that fills one 2 MiB block (see `l4re-min/l4/user.ld`), so
//! that the kernel maps it, and the tasks it maps it into, with a 2 MiB page: what a program
//! with large text (L4Linux) gets, and what the benchmarks' page walks then cost.
fn main() {
    println!("cargo:rustc-link-arg-bins=--defsym=__text_align=0x200000");
}
