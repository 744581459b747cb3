//! The `log` backend: every record goes to COM1 as `[seconds.micros] LEVEL target: message`,
//! timed by the TSC, through the console's output queue (errors and warnings drain it).

use super::serial::CONSOLE;
use super::tsc;
use core::fmt::Write;
use log::{Level, LevelFilter, Log, Metadata, Record};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = tsc::micros_since_boot();
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let mut console = CONSOLE.lock();
        let _ = writeln!(
            console,
            "[{:4}.{:06}] {} {}: {}",
            us / 1_000_000,
            us % 1_000_000,
            level,
            record.target().rsplit("::").next().unwrap_or(""),
            record.args()
        );
        // Errors and warnings go out before anything else happens (a crash may follow);
        // the rest leaves as the UART takes it (see `hypervisor::console`).
        if record.level() <= Level::Warn {
            console.drain();
        }
    }

    fn flush(&self) {
        CONSOLE.lock().flush();
    }
}

/// Installs the logger at `level`.
pub fn init(level: LevelFilter) {
    // A second call is harmless: the first logger stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
