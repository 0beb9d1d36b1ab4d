//! The CMOS real-time clock, read once at boot for the wall-clock time the KIP publishes.

use x86_64::instructions::port::Port;

fn cmos(reg: u8) -> u8 {
    // SAFETY: ports 0x70/0x71 select and read a CMOS register; reading the clock registers
    // (index < 0x40, NMI left enabled) has no side effect. Only this module uses them.
    unsafe {
        Port::<u8>::new(0x70).write(reg);
        Port::<u8>::new(0x71).read()
    }
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The clock's time in seconds since the Unix epoch (the RTC holds UTC in QEMU), or `None`
/// if it reads as nonsense.
pub fn unix_seconds() -> Option<u64> {
    let read = || {
        // Wait while an update is in progress (status A bit 7), then take all fields.
        let mut spins = 0;
        while cmos(0x0a) & 0x80 != 0 && spins < 1_000_000 {
            spins += 1;
        }
        [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(cmos)
    };
    // Two equal reads: none straddled an update.
    let mut r = read();
    for _ in 0..4 {
        let again = read();
        if again == r {
            break;
        }
        r = again;
    }
    let status_b = cmos(0x0b);
    let bcd = |v: u8| if status_b & 0x04 == 0 { (v & 0x0f) + (v >> 4) * 10 } else { v };
    let (sec, min, day, mon, yy) = (bcd(r[0]), bcd(r[1]), bcd(r[3]), bcd(r[4]), bcd(r[5]));
    let mut hour = bcd(r[2] & 0x7f);
    if status_b & 0x02 == 0 && r[2] & 0x80 != 0 {
        hour = (hour % 12) + 12; // 12-hour mode, PM
    }
    let century = match bcd(r[6]) {
        19..=29 => bcd(r[6]) as i64,
        _ => 20,
    };
    if sec > 59 || min > 59 || hour > 23 || !(1..=31).contains(&day) || !(1..=12).contains(&mon) {
        return None;
    }
    let days = days_from_civil(century * 100 + yy as i64, mon as u32, day as u32);
    let s = days * 86_400 + hour as i64 * 3600 + min as i64 * 60 + sec as i64;
    u64::try_from(s).ok()
}
