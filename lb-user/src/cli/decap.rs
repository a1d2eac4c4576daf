//! `lb decap --interface IF`: runs the `decap` program on a tunnel-mode backend until
//! SIGINT/SIGTERM, then reports what it stripped.

use crate::datapath::{AttachMode, Decap};

/// Attaches, waits for a stop signal, logs the counts and detaches.
pub async fn run(interface: &str, mode: AttachMode) -> anyhow::Result<()> {
    let mut decap = Decap::attach(interface, mode.xdp_mode())?;
    tracing::info!(%interface, mode = ?decap.mode, addresses = ?decap.addresses, "decap attached");
    super::wait_for_shutdown().await?;
    let counts = decap.counts()?;
    tracing::info!(
        %interface,
        decapsulated = counts.decapsulated,
        passed = counts.passed,
        malformed = counts.malformed,
        "detaching decap: {} tunnel packets stripped, {} other packets passed, {} malformed dropped",
        counts.decapsulated,
        counts.passed,
        counts.malformed
    );
    Ok(())
}
