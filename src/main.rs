//! The `horizon` binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use horizon::config::ServeConfig;
use horizon::shard::{Gateway, HttpRefusal, Session, SessionFactory};
use horizon::ws::handshake::Request;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
horizon - RabbitMQ to WebSocket gateway for Kazoo and VoIPBin event streams

USAGE:
    horizon <COMMAND> [OPTIONS]

COMMANDS:
    serve      run the gateway (options: see README.md, Configuration)
    token      mint a signed development token
    help       print this message
    version    print the version
";

/// Until a dialect is built in (issue #4), the data plane runs but has nothing to serve: every
/// upgrade is refused with a 503 that says so, rather than accepting sockets that would never
/// receive anything.
struct NoDialect;

impl SessionFactory for NoDialect {
    fn open(&self, _request: &Request, _peer: SocketAddr) -> Result<Box<dyn Session>, HttpRefusal> {
        Err(HttpRefusal {
            status: 503,
            content_type: "text/plain; charset=utf-8",
            body: "no WebSocket dialect is enabled in this build of horizon yet\n".into(),
        })
    }
}

/// Writes a log line to standard output. A closed or broken stdout (the parent went away, a pipe
/// with no reader) must never take the gateway down, so write errors are ignored.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// The same for standard error.
macro_rules! elog {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Blocks SIGINT and SIGTERM in this thread and in every thread started after it, so that the
/// main thread can wait for them with `sigwait`.
fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> &'static str {
    let mut signal = 0;
    // SAFETY: `set` is a valid signal set and `signal` a valid out-pointer.
    unsafe { libc::sigwait(set, &mut signal) };
    if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}

fn serve(args: &[String]) -> ExitCode {
    let config = match ServeConfig::load(args, |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(e) => {
            elog!("horizon serve: {e}");
            return ExitCode::from(2);
        }
    };
    let signals = block_shutdown_signals();
    let shards = config.shards;
    let grace = config.shutdown_grace;
    let gateway = match Gateway::start(config, Arc::new(NoDialect)) {
        Ok(gateway) => gateway,
        Err(e) => {
            elog!("horizon serve: cannot start the WebSocket shards: {e}");
            return ExitCode::FAILURE;
        }
    };
    log!("horizon {} starting", env!("CARGO_PKG_VERSION"));
    log!("event source: none yet (the embedded bus and AMQP ingest arrive with issue #4)");
    log!(
        "websocket: listening on ws://{} with {shards} shard(s), driver {}",
        gateway.local_addr(),
        gateway.driver()
    );
    log!("dialects: none yet - upgrades are refused with 503 until issue #4 lands");
    let signal = wait_for_signal(&signals);
    log!("{signal}: shutting down (close 1001 to every socket, up to {grace:?} to drain)");
    gateway.shutdown();
    gateway.join();
    log!("stopped");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("version" | "-V" | "--version") => {
            println!("horizon {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("serve") => serve(&args[1..]),
        Some("token") => {
            eprintln!(
                "horizon token: not available yet (issue #4); see the status table in README.md"
            );
            ExitCode::from(2)
        }
        Some(other) => {
            eprintln!("horizon: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
