//! Ctrl-C: SIGINT, SIGTERM and SIGHUP stop the demo cleanly. The handler only writes the
//! signal's number to a pipe; a thread reading it does the cleanup and exits with status 130.
//! (Handlers, unlike a blocked signal mask, are not inherited by the programs the demo starts.)

use std::io::Read;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;

use anyhow::{Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Write end of the self-pipe the signal handler writes to (-1: none yet).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: nix::libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe and reads one byte from `byte`, which lives until
    // it returns; nothing else happens in the handler.
    unsafe { nix::libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// On SIGINT, SIGTERM or SIGHUP: prints that the demo was interrupted, runs `cleanup` and
/// exits with status 130.
pub(super) fn on_interrupt(cleanup: impl FnOnce() + Send + 'static) -> Result<()> {
    let (mut reader, writer) = std::io::pipe().context("signal pipe")?;
    SIGNAL_PIPE.store(writer.into_raw_fd(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2).
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("installing a {signal} handler"))?;
    }
    thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = reader.read_exact(&mut byte);
        let name = Signal::try_from(i32::from(byte[0])).map_or("a signal", |s| s.as_str());
        eprintln!("\n==> interrupted ({name}): cleaning up");
        cleanup();
        std::process::exit(130);
    });
    Ok(())
}
