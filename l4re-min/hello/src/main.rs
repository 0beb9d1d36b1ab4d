//! The smallest program: greets from ring 3 through the kernel console and powers the machine
//! off if it holds the platform capability (as a boot task it does; under moe only if granted).
#![no_std]
#![no_main]

l4::entry!(main);

fn main(args: &str) -> i32 {
    let kip = l4::kip();
    l4::println!("Hello from ring 3 (args: {args})");
    l4::println!("kernel ABI v{}, TSC {} MHz", kip.abi_version, kip.tsc_hz / 1_000_000);
    let e = l4::shutdown(0);
    l4::println!("shutdown refused: {e:?}");
    1
}
