//! The time that due dates are judged by: the system clock. Debug builds (what the test
//! suite runs) add the offset in milliseconds written in the file `POSTERN_TEST_CLOCK`
//! names, so tests move a running `serve` days ahead without sleeping; release builds
//! ignore it.

pub fn now_ms() -> i64 {
    crate::audit::now_ms().saturating_add(offset_ms())
}

#[cfg(debug_assertions)]
fn offset_ms() -> i64 {
    std::env::var_os("POSTERN_TEST_CLOCK")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(not(debug_assertions))]
fn offset_ms() -> i64 {
    0
}
