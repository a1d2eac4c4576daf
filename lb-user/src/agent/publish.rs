//! The status snapshot the agent publishes for `lb status` and `lb stats` (see
//! `crate::status`), and the records kept across restarts: built at once on state changes,
//! reloads and start, else at most once a second (the serve loop decides when), and written
//! to their files by a thread of their own ([`Publisher`]).
//!
//! Serializing and writing them takes tens of milliseconds at 16,384 backends; done in the
//! event loop, that delayed every ring change behind it. The writer always writes the newest
//! publication and skips those it had no time for. Whoever needs the files current (an admin
//! command's reply, a stop) waits for them ([`Publisher::wait`]).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
};

use lb_common::check_path::CheckCounter;
use tokio::time::Instant;

use super::{response_time, target::serving_state, weights::configured_units, Agent};
use crate::{
    datapath::AttachMode,
    error::Chain,
    records::{self, BackendRecord, PreviousRingRecord, Records, RingRecord},
    status::{self, BackendStatus, RingStatus, Snapshot, VipStatus},
};

impl Agent {
    /// The snapshot of what the agent knows at `now`.
    fn snapshot(&self, now: Instant, check_packets: &[(CheckCounter, u64)]) -> Snapshot {
        Snapshot {
            pid: std::process::id(),
            updated_unix_ms: status::now_unix_ms(),
            config: self.path.clone(),
            interface: self.fixed.interface.clone(),
            xdp_mode: AttachMode::of(self.attached.mode),
            program_id: self.attached.program_id,
            announce: self.announcer.as_ref().map(|a| a.owner()),
            stopping: self.stopping,
            check_packets: check_packets
                .iter()
                .map(|(counter, count)| (counter.name().to_owned(), *count))
                .collect(),
            second_chance_hops: self.second_chance.hops_carried(),
            half_open_checks: self.checkers.half_open_checks(),
            vips: self
                .vips
                .values()
                .map(|vip| (vip, response_time::fastest(vip.response_averages())))
                .map(|(vip, fastest)| VipStatus {
                    name: vip.config.name.clone(),
                    id: vip.id,
                    address: vip.config.address.to_string(),
                    port: vip.config.port,
                    protocol: vip.config.protocol,
                    forward: vip.config.forward,
                    announce: vip.config.announce,
                    balance: Some(vip.config.balance),
                    second_chance_seconds: (vip.config.forward
                        == lb_common::maps::ForwardMode::Tunnel
                        && !vip.config.second_chance.is_zero())
                    .then_some(vip.config.second_chance.as_secs_f64()),
                    previous_ring_until_unix_ms: vip.previous.as_ref().map(|p| unix_ms(p.until)),
                    ring: vip.ring.as_ref().map(|ring| RingStatus {
                        map_id: ring.map_id,
                        size: ring.size,
                        // Filled by the writer, from the kernel's map.
                        fingerprint: None,
                    }),
                    backends: vip
                        .backends
                        .iter()
                        .map(|b| BackendStatus {
                            address: b.address().to_string(),
                            id: b.id,
                            weight: b.config.weight,
                            state: serving_state(&b.facts(now)),
                            admin: b.admin,
                            admin_by: b.admin_by.clone(),
                            effective_weight: configured_units(b.facts(now).weight),
                            failures: b.availability.failures,
                            mttr_seconds: b.availability.mttr().map(|d| d.as_secs_f64()),
                            mttf_seconds: b.availability.mttf().map(|d| d.as_secs_f64()),
                            availability: b.availability.availability(),
                            up_seconds: b.availability.up_ms as f64 / 1000.0,
                            observed_seconds: b.availability.observed_ms as f64 / 1000.0,
                            last_check_ok: b.last.as_ref().map(|r| r.ok),
                            last_check_latency_us: b
                                .last
                                .as_ref()
                                .map(|r| r.latency.as_micros() as u64),
                            last_check_error: b.last.as_ref().and_then(|r| r.error.clone()),
                            last_change_unix_ms: b.last_change_unix_ms,
                            check_target: Some(b.config.health.target),
                            weight_reason: b.response.reason(fastest),
                            response_time_us: (vip.config.balance
                                == crate::config::Balance::ResponseTime)
                                .then_some(b.response.average)
                                .flatten()
                                .map(|average| average.as_micros() as u64),
                            slots: vip
                                .ring
                                .as_ref()
                                .map_or(0, |ring| ring.slots_of(b.address())),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Counts availability up to now, then writes the status snapshot `lb status` reads and
    /// the records kept across restarts.
    pub(super) fn publish(&mut self) {
        let now = Instant::now();
        for vip in self.vips.values_mut() {
            for backend in &mut vip.backends {
                backend.observe(now);
            }
        }
        let check_packets = self.checkers.check_packets();
        let snapshot = self.snapshot(now, &check_packets);
        self.hops_published = snapshot.second_chance_hops;
        let records = Records {
            created_unix_ms: self.records.created_unix_ms,
            backends: self
                .vips
                .values()
                .flat_map(|vip| {
                    vip.backends.iter().map(|b| {
                        let record = BackendRecord {
                            admin: b.admin,
                            admin_by: b.admin_by.clone(),
                            availability: b.availability.clone(),
                        };
                        (records::key(&vip.config.name, b.address()), record)
                    })
                })
                .collect(),
            previous_rings: self
                .vips
                .values()
                .filter_map(|vip| {
                    let previous = vip.previous.as_ref()?;
                    let record = PreviousRingRecord {
                        chain: previous
                            .chain
                            .iter()
                            .map(|shape| RingRecord {
                                size: shape.size(),
                                members: shape.members().to_vec(),
                            })
                            .collect(),
                        until_unix_ms: unix_ms(previous.until),
                    };
                    Some((vip.config.name.clone(), record))
                })
                .collect(),
        };
        // The records of backends the configuration no longer has are dropped with this
        // publication: only those loaded at start matter to the agent, to restore the backends
        // it starts with.
        self.records.backends.clear();
        self.records.previous_rings.clear();
        self.publisher.publish(Publication { snapshot, records });
        if let Some(m) = &self.metrics {
            m.check_packets_counted(&check_packets);
            m.second_chance_counted(self.hops_published);
            m.backends_observed(self.vips.values().flat_map(|vip| {
                vip.backends.iter().map(|b| {
                    (
                        vip.id,
                        b.id,
                        crate::metrics::BackendRecordView {
                            admin: b.admin,
                            check_target: b.config.health.target,
                            effective_weight: configured_units(b.facts(now).weight),
                            failures: b.availability.failures,
                            up_seconds: b.availability.up_ms as f64 / 1000.0,
                            observed_seconds: b.availability.observed_ms as f64 / 1000.0,
                        },
                    )
                })
            }));
        } // metrics hook
    }
}

/// What [`Publisher`] writes.
pub(super) struct Publication {
    /// For `lb status` and `lb stats`; the writer fills in its rings' fingerprints.
    snapshot: Snapshot,
    /// Kept across restarts.
    records: Records,
}

/// Writes publications to their files on a thread of its own, newest first.
pub(super) struct Publisher {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// What the agent and the writer share.
#[derive(Default)]
struct Queue {
    /// The newest publication not yet taken by the writer.
    pending: Option<Publication>,
    /// Publications handed over so far.
    published: u64,
    /// Of those, the newest one written (or skipped for a newer one written).
    written: u64,
    /// No more publications: the writer ends once `pending` is written.
    closed: bool,
}

impl Publisher {
    /// Starts the writer for `state_dir`.
    pub(super) fn start(state_dir: PathBuf) -> Self {
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("lb-publish".to_owned())
            .spawn(move || write_publications(&state_dir, &writer))
            .expect("spawning the status writer thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Hands `publication` to the writer (replacing one it has not taken yet).
    fn publish(&self, publication: Publication) {
        let (queue, wake) = &*self.shared;
        let mut queue = lock(queue);
        queue.pending = Some(publication);
        queue.published += 1;
        wake.notify_all();
    }

    /// Waits until everything published so far is in its files.
    pub(super) fn wait(&self) {
        let (queue, wake) = &*self.shared;
        let mut queue = lock(queue);
        let target = queue.published;
        while queue.written < target && !queue.closed {
            queue = wake
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Writes what is pending and stops the writer.
    pub(super) fn close(&mut self) {
        {
            let (queue, wake) = &*self.shared;
            lock(queue).closed = true;
            wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.close();
    }
}

/// The queue, even if a writer panicked holding it (its content is still whole).
fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: takes the newest publication, writes it, until closed and drained.
fn write_publications(state_dir: &std::path::Path, shared: &(Mutex<Queue>, Condvar)) {
    let (queue, wake) = shared;
    let mut fingerprints = Fingerprints::default();
    loop {
        let (mut publication, number) = {
            let mut queue = lock(queue);
            while queue.pending.is_none() && !queue.closed {
                queue = wake
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            match queue.pending.take() {
                Some(publication) => (publication, queue.published),
                None => return,
            }
        };
        fingerprints.fill(&mut publication.snapshot);
        write_files(state_dir, &publication);
        let mut queue = lock(queue);
        queue.written = number;
        wake.notify_all();
    }
}

/// The fingerprints of the rings in use, by ring map id: each computed once, from the ring as
/// the kernel holds it (about a millisecond at 65,537 slots), on the writer's thread.
#[derive(Default)]
struct Fingerprints(HashMap<u32, u64>);

impl Fingerprints {
    /// Fills in the fingerprint of every ring of `snapshot`; forgets rings no longer in it.
    fn fill(&mut self, snapshot: &mut Snapshot) {
        let mut in_use = HashMap::with_capacity(snapshot.vips.len());
        for vip in &mut snapshot.vips {
            let Some(ring) = vip.ring.as_mut() else {
                continue;
            };
            let known = self.0.get(&ring.map_id).copied();
            ring.fingerprint = known.or_else(|| {
                let slots = crate::datapath::read_ring_by_id(ring.map_id).ok()?;
                let addresses = vip
                    .backends
                    .iter()
                    .map(|b| (b.id, b.address.clone()))
                    .collect();
                Some(crate::fingerprint::ring_fingerprint(&slots, &addresses))
            });
            if let Some(fingerprint) = ring.fingerprint {
                in_use.insert(ring.map_id, fingerprint);
            }
        }
        self.0 = in_use;
    }
}

/// `time` as Unix milliseconds (0 before the epoch).
pub(super) fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Writes the snapshot and the records, logging what fails.
fn write_files(state_dir: &std::path::Path, publication: &Publication) {
    if let Err(error) = status::write(state_dir, &publication.snapshot) {
        tracing::warn!(
            "cannot write the status snapshot {}: {}",
            status::path_for(state_dir).display(),
            Chain(&error)
        );
    }
    if let Err(error) = records::save(state_dir, &publication.records) {
        tracing::warn!(
            "cannot save {}: {}",
            records::path_for(state_dir).display(),
            Chain(&error)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::AttachMode;

    fn snapshot(pid: u32) -> Snapshot {
        Snapshot {
            pid,
            updated_unix_ms: 1,
            config: PathBuf::from("/etc/lb/lb.toml"),
            interface: "eth0".to_owned(),
            xdp_mode: AttachMode::Native,
            program_id: None,
            announce: None,
            stopping: false,
            check_packets: Default::default(),
            second_chance_hops: 0,
            half_open_checks: true,
            vips: Vec::new(),
        }
    }

    fn records(created_unix_ms: u64) -> Records {
        Records {
            created_unix_ms,
            ..Records::default()
        }
    }

    #[test]
    fn the_newest_publication_is_in_the_files_once_waited_for_and_after_close() {
        let state_dir =
            std::env::temp_dir().join(format!("lb-unit-publish-{}", std::process::id()));
        let mut publisher = Publisher::start(state_dir.clone());
        for pid in 1..=50 {
            publisher.publish(Publication {
                snapshot: snapshot(pid),
                records: records(u64::from(pid)),
            });
        }
        publisher.wait();
        assert_eq!(status::read(&state_dir), Some(snapshot(50)));
        assert_eq!(records::load(&state_dir).created_unix_ms, 50);

        publisher.publish(Publication {
            snapshot: snapshot(51),
            records: records(51),
        });
        publisher.close();
        assert_eq!(
            status::read(&state_dir),
            Some(snapshot(51)),
            "close writes what is pending"
        );
        publisher.wait(); // returns at once once closed
        status::remove(&state_dir);
        records::remove(&state_dir);
    }
}
