//! What a program's first thread finds at its stack pointer.
//!
//! ```text
//! rsp →  args_ptr, args_len, kip                 every program (boot tasks: just these)
//!        EXT_MAGIC, argc, argv, envp, auxv       programs the runtime's loader starts
//! argv → argc pointers to NUL-terminated strings, then 0
//! envp → pointers to "KEY=VALUE" strings, then 0
//! auxv → (type, value) pairs (`at`), ending with (AT_NULL, 0)
//! ```
//! The argument string stays (the `l4` entry gets it as one `&str`); argv is the same string
//! split into words ([`split_args`]). Everything lies in the stack's top page.

/// Marks the extended block (word 3): "argvenv1".
pub const EXT_MAGIC: u64 = u64::from_le_bytes(*b"argvenv1");
/// Words of the extended block.
pub const BLOCK_WORDS: usize = 8;

/// Auxiliary vector types (the System V numbers).
pub mod at {
    pub const NULL: u64 = 0;
    pub const PAGESZ: u64 = 6;
    pub const ENTRY: u64 = 9;
}

/// Splits an argument string into words: whitespace separates them, and a word that starts
/// with `"` runs to the next `"` (both dropped), so it may hold spaces.
pub fn split_args(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    core::iter::from_fn(move || {
        rest = rest.trim_start();
        if rest.is_empty() {
            return None;
        }
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            let w = &q[..end];
            rest = q.get(end + 1..).unwrap_or("");
            return Some(w);
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let w = &rest[..end];
        rest = &rest[end..];
        Some(w)
    })
}

/// Lays out the stack's top page `page` (mapped at `top - page.len()` in the new program):
/// the argument string, argv and env strings, the vectors and the block. Returns the initial
/// stack pointer, or `None` if it all does not fit in the page.
pub fn layout(page: &mut [u8], top: u64, args: &str, env: &[&str], entry: u64, kip: u64) -> Option<u64> {
    let base = top.checked_sub(page.len() as u64)?;
    let args_addr = top.checked_sub(args.len() as u64)? & !15;
    let (argc, argv_bytes) = split_args(args).fold((0u64, 0u64), |(n, b), w| (n + 1, b + w.len() as u64 + 1));
    let env_bytes: u64 = env.iter().map(|e| e.len() as u64 + 1).sum();
    let strings = args_addr.checked_sub(argv_bytes + env_bytes)? & !7;
    let words = BLOCK_WORDS as u64 + (argc + 1) + (env.len() as u64 + 1) + 6;
    let sp = strings.checked_sub(words * 8)? & !15;
    if sp < base {
        return None;
    }
    let mut put = |addr: u64, bytes: &[u8]| {
        let at = (addr - base) as usize;
        page[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(args_addr, args.as_bytes());
    let (argv, envp) = (sp + BLOCK_WORDS as u64 * 8, sp + (BLOCK_WORDS as u64 + argc + 1) * 8);
    let auxv = envp + (env.len() as u64 + 1) * 8;
    let mut s = strings;
    for (i, w) in split_args(args).chain(env.iter().copied()).enumerate() {
        put(s, w.as_bytes());
        put(s + w.len() as u64, &[0]);
        let slot = if (i as u64) < argc { argv + i as u64 * 8 } else { envp + (i as u64 - argc) * 8 };
        put(slot, &s.to_le_bytes());
        s += w.len() as u64 + 1;
    }
    put(argv + argc * 8, &0u64.to_le_bytes());
    put(envp + env.len() as u64 * 8, &0u64.to_le_bytes());
    for (i, v) in [at::PAGESZ, 4096, at::ENTRY, entry, at::NULL, 0].iter().enumerate() {
        put(auxv + i as u64 * 8, &v.to_le_bytes());
    }
    let block = [args_addr, args.len() as u64, kip, EXT_MAGIC, argc, argv, envp, auxv];
    for (i, v) in block.iter().enumerate() {
        put(sp + i as u64 * 8, &v.to_le_bytes());
    }
    Some(sp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn words_and_quotes() {
        let w: alloc::vec::Vec<&str> = split_args("  argv one \"two words\" three ").collect();
        assert_eq!(w, ["argv", "one", "two words", "three"]);
        assert_eq!(split_args("").count(), 0);
        assert_eq!(split_args("\"unclosed quote").collect::<alloc::vec::Vec<_>>(), ["unclosed quote"]);
    }

    #[test]
    fn layout_reads_back() {
        let mut page = [0u8; 4096];
        let top = 0x8000_0000u64;
        let base = top - 4096;
        let sp = layout(&mut page, top, "prog \"a b\"", &["K=V"], 0x40_1000, 0x7fff_fff0_0000).unwrap();
        assert_eq!(sp % 16, 0);
        let word = |a: u64| {
            u64::from_le_bytes(page[(a - base) as usize..(a - base) as usize + 8].try_into().unwrap())
        };
        let cstr = |a: u64| {
            let s = &page[(a - base) as usize..];
            core::str::from_utf8(&s[..s.iter().position(|b| *b == 0).unwrap()]).unwrap().to_string()
        };
        assert_eq!(
            (word(sp + 8), word(sp + 16), word(sp + 24), word(sp + 32)),
            (10, 0x7fff_fff0_0000, EXT_MAGIC, 2)
        );
        let (argv, envp, auxv) = (word(sp + 40), word(sp + 48), word(sp + 56));
        assert_eq!(
            (cstr(word(argv)), cstr(word(argv + 8)), word(argv + 16)),
            ("prog".into(), "a b".into(), 0)
        );
        assert_eq!((cstr(word(envp)), word(envp + 8)), ("K=V".into(), 0));
        assert_eq!(
            [word(auxv), word(auxv + 8), word(auxv + 16), word(auxv + 24)],
            [at::PAGESZ, 4096, at::ENTRY, 0x40_1000]
        );
        let args = word(sp);
        assert_eq!(&page[(args - base) as usize..(args - base) as usize + 10], b"prog \"a b\"");
        // Too much for one page.
        let long = "x".repeat(5000);
        assert_eq!(layout(&mut page, top, &long, &[], 0, 0), None);
    }
}
