//! Log output: lines go to stderr from a dedicated thread, through a buffer.
//!
//! Written on the worker thread, each access-log line cost a `write(2)` there (~15 µs per
//! request on the benchmark machine, a third of the proxy's CPU with `access_log: all`), and a
//! slow reader of stderr (the container runtime's pipe) would stall every request on that
//! thread. Here a line costs its formatting and a channel send; the writer thread writes what
//! has queued up in one go. If stderr falls 128k lines behind, lines are dropped rather than
//! requests delayed, and counted (`rw_proxy_log_lines_dropped_total`).
//!
//! Queued lines are lost if the process ends without [`flush`]: leave through [`exit`].

use std::io::{BufWriter, IsTerminal};
use std::sync::{Mutex, OnceLock};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Sets up logging at the level of `RUST_LOG` (default: info), as text or JSON lines. Also
/// routes Pingora's `log` records into it.
pub fn init(json: bool) {
    let (writer, guard) = NonBlockingBuilder::default()
        .thread_name("rw-proxy-log")
        .finish(BufWriter::new(std::io::stderr()));
    let _ = DROPPED.set(writer.error_counter());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    match result {
        Ok(()) => {
            if let Ok(mut slot) = WRITER.lock() {
                *slot = Some(guard);
            }
        }
        Err(e) => eprintln!("rw-proxy: cannot set up logging: {e}"),
    }
}

/// Log lines dropped because stderr could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Writes out every queued line (waiting up to ~1 s for stderr); later lines are not written.
pub fn flush() {
    let guard = WRITER.lock().ok().and_then(|mut slot| slot.take());
    drop(guard);
}

/// Ends the process after writing out the queued log lines.
pub fn exit(code: i32) -> ! {
    flush();
    std::process::exit(code)
}
