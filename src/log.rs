//! Logging that can never take the gateway down: a closed or broken stdout (the parent went
//! away, a pipe with no reader) only loses the line. `log!` writes to standard output, `elog!`
//! to standard error.

/// Writes one line to standard output.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// Writes one line to standard error.
#[macro_export]
macro_rules! elog {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
