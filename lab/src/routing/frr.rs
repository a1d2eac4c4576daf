//! FRR: the configuration of an lb host (zebra imports lb's kernel table, bgpd redistributes
//! it with the same origin and MED as every other instance, bfdd) and of an upstream router
//! (eBGP multipath with BFD), and FRR's daemons in a namespace with their own files.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{Bfd, Peer};
use crate::{
    command::try_sh,
    daemon::{wait_for, write_file, Daemon},
    error::LabError,
    netns::Netns,
};

/// Where Debian installs FRR's daemons.
pub const FRR_DAEMONS_DIR: &str = "/usr/lib/frr";

/// FRR on an lb host, IPv4.
#[derive(Clone, Debug)]
pub struct LbHostFrr {
    /// The host's name (FRR's `hostname`).
    pub hostname: String,
    /// BGP router id (the host's IPv4 address).
    pub router_id: Ipv4Addr,
    /// The host's AS, the same on every lb instance.
    pub asn: u32,
    /// lb's `[announce] table`.
    pub table: u32,
    /// The upstream router.
    pub upstream: Peer,
    /// Prefixes the VIPs come from: only their host routes are announced.
    pub vip_prefixes: Vec<String>,
    /// BFD timers.
    pub bfd: Bfd,
}

impl LbHostFrr {
    /// zebra's part: import the kernel table lb writes into the RIB, as `table` routes.
    pub fn zebra(&self) -> String {
        let table = self.table;
        format!(
            "! lb's routes (kernel table {table}) become FRR \"table\" routes that bgpd can\n\
             ! redistribute. zebra imports every route of the table: keep the table lb's alone\n\
             ! (lb removes its own stale routes and warns about others).\n\
             ip import-table {table}\n!\n"
        )
    }

    /// bgpd's part: redistribute the imported table to the router with aligned attributes.
    pub fn bgpd(&self) -> String {
        let Self {
            router_id,
            asn,
            table,
            upstream,
            vip_prefixes,
            ..
        } = self;
        let Peer {
            address,
            asn: peer_asn,
            ..
        } = upstream;
        let mut text = String::new();
        for (i, prefix) in vip_prefixes.iter().enumerate() {
            text += &format!(
                "ip prefix-list LB-VIPS seq {} permit {prefix} ge 32\n",
                (i + 1) * 10
            );
        }
        text += &format!(
            r#"!
! Redistributed routes carry origin incomplete and MED 0 by default; bird's lb hosts
! announce origin IGP. The router multipaths only over equal paths: set the same origin
! and MED on every instance, whatever its daemon.
route-map LB-VIPS permit 10
 match ip address prefix-list LB-VIPS
 set origin igp
 set metric 0
!
router bgp {asn}
 bgp router-id {router_id}
 neighbor {address} remote-as {peer_asn}
 neighbor {address} bfd
 neighbor {address} timers 3 9
 neighbor {address} timers connect 1
 !
 address-family ipv4 unicast
  redistribute table {table} route-map LB-VIPS
  neighbor {address} route-map LB-VIPS out
 exit-address-family
!
"#
        );
        text
    }

    /// bfdd's part: the router as a BFD peer, with the timers.
    pub fn bfdd(&self) -> String {
        bfd_peers(&[self.upstream.address], &self.bfd)
    }

    /// The whole `frr.conf` (integrated configuration, what `/etc/frr/frr.conf` holds with
    /// `bgpd=yes` and `bfdd=yes` in `/etc/frr/daemons`).
    pub fn config(&self) -> String {
        format!(
            "{}{}{}{}",
            header(&self.hostname),
            self.zebra(),
            self.bgpd(),
            self.bfdd()
        )
    }

    /// One file per daemon, for [`Frr::try_start`].
    pub fn daemon_files(&self) -> DaemonFiles {
        let header = header(&self.hostname);
        DaemonFiles {
            zebra: format!("{header}{}", self.zebra()),
            bfdd: format!("{header}{}", self.bfdd()),
            bgpd: format!("{header}{}", self.bgpd()),
        }
    }
}

/// The configuration of each FRR daemon a lab runs (each reads its own file; an integrated
/// `frr.conf` is their concatenation, applied by `vtysh -b` on a real host).
#[derive(Clone, Debug)]
pub struct DaemonFiles {
    /// zebra's.
    pub zebra: String,
    /// bfdd's.
    pub bfdd: String,
    /// bgpd's.
    pub bgpd: String,
}

/// FRR on the router upstream of the lb instances, IPv4.
#[derive(Clone, Debug)]
pub struct RouterFrr {
    /// The router's name.
    pub hostname: String,
    /// BGP router id.
    pub router_id: Ipv4Addr,
    /// The router's AS.
    pub asn: u32,
    /// The lb instances (one AS for all of them).
    pub instances: Vec<Peer>,
    /// Prefixes the VIPs come from.
    pub vip_prefixes: Vec<String>,
    /// At most this many instances share a VIP (`maximum-paths`).
    pub maximum_paths: u32,
    /// BFD timers.
    pub bfd: Bfd,
}

impl RouterFrr {
    /// The whole `frr.conf`.
    pub fn config(&self) -> String {
        format!("{}{}{}", header(&self.hostname), self.bgpd(), self.bfdd())
    }

    /// One file per daemon, for [`Frr::try_start`] (zebra needs nothing beyond the header).
    pub fn daemon_files(&self) -> DaemonFiles {
        let header = header(&self.hostname);
        DaemonFiles {
            zebra: header.clone(),
            bfdd: format!("{header}{}", self.bfdd()),
            bgpd: format!("{header}{}", self.bgpd()),
        }
    }

    /// bfdd's part: one peer per instance.
    pub fn bfdd(&self) -> String {
        let addresses: Vec<IpAddr> = self.instances.iter().map(|p| p.address).collect();
        bfd_peers(&addresses, &self.bfd)
    }

    /// bgpd's part: a session per instance, their VIP host routes in, nothing out,
    /// multipath.
    pub fn bgpd(&self) -> String {
        let Self {
            router_id,
            asn,
            instances,
            vip_prefixes,
            maximum_paths,
            ..
        } = self;
        let mut text = String::new();
        for (i, prefix) in vip_prefixes.iter().enumerate() {
            text += &format!(
                "ip prefix-list LB-VIPS seq {} permit {prefix} ge 32\n",
                (i + 1) * 10
            );
        }
        text += &format!(
            r#"!
route-map FROM-LB permit 10
 match ip address prefix-list LB-VIPS
!
route-map TO-LB deny 10
!
router bgp {asn}
 bgp router-id {router_id}
 ! instances in different ASes multipath too
 bgp bestpath as-path multipath-relax
 neighbor LB peer-group
 neighbor LB bfd
 neighbor LB timers 3 9
 neighbor LB timers connect 1
"#
        );
        for Peer { address, asn, .. } in instances {
            text += &format!(
                " neighbor {address} remote-as {asn}\n neighbor {address} peer-group LB\n"
            );
        }
        text += &format!(
            r#" !
 address-family ipv4 unicast
  neighbor LB route-map FROM-LB in
  neighbor LB route-map TO-LB out
  ! one next hop per instance announcing a VIP
  maximum-paths {maximum_paths}
 exit-address-family
!
"#
        );
        text
    }
}

/// The first lines of every FRR file.
fn header(hostname: &str) -> String {
    format!("frr defaults datacenter\nhostname {hostname}\nlog syslog informational\n!\n")
}

/// bfdd's `bfd` block with one peer per address.
fn bfd_peers(peers: &[IpAddr], bfd: &Bfd) -> String {
    let ms = bfd.interval.as_millis();
    let multiplier = bfd.multiplier;
    let mut text = "bfd\n".to_owned();
    for peer in peers {
        text += &format!(
            " peer {peer}\n  receive-interval {ms}\n  transmit-interval {ms}\n  detect-multiplier {multiplier}\n !\n"
        );
    }
    text + "!\n"
}

/// FRR's zebra, bfdd and bgpd in a namespace, their files in one directory (owned by the
/// `frr` user, which the daemons run as: `<daemon>.conf`, `.pid`, `.vty`, `zserv.api`,
/// `bfdd.sock`, `<daemon>.log`). Stopped on drop (bgpd first).
pub struct Frr {
    bgpd: Daemon,
    bfdd: Daemon,
    zebra: Daemon,
    /// The directory, for `vtysh --vty_socket`.
    pub dir: PathBuf,
}

impl Frr {
    /// Starts FRR in `ns` with `files` (an lb host's or a router's [`DaemonFiles`]) and its
    /// other files in `dir` (which must exist); returns once bgpd's vty answers.
    pub fn try_start(ns: &Netns, dir: &Path, files: &DaemonFiles) -> Result<Self, LabError> {
        try_sh(&format!("chown frr:frr {}", dir.display()))?;
        let DaemonFiles { zebra, bfdd, bgpd } = files;
        for (daemon, text) in [("zebra", zebra), ("bfdd", bfdd), ("bgpd", bgpd)] {
            write_file(&dir.join(format!("{daemon}.conf")), text)?;
        }
        let zebra = spawn(ns, dir, "zebra", &[])?;
        let zserv = dir.join("zserv.api");
        let mut frr = Self {
            bgpd: spawn_after_zebra(ns, dir, &zserv, "bgpd", &[])?,
            bfdd: spawn(
                ns,
                dir,
                "bfdd",
                &["--bfdctl", &dir.join("bfdd.sock").display().to_string()],
            )?,
            zebra,
            dir: dir.to_path_buf(),
        };
        let what = format!("FRR in {}: bgpd answers", ns.name);
        let dir = frr.dir.clone();
        let Self {
            bgpd, bfdd, zebra, ..
        } = &mut frr;
        wait_for(
            &what,
            Duration::from_secs(10),
            || {
                zebra.check_running()?;
                bfdd.check_running()?;
                bgpd.check_running()
            },
            || vtysh(&dir, "show bgp summary").map_err(|e| e.full_message()),
        )?;
        Ok(frr)
    }

    /// [`Self::try_start`], panicking with the error.
    pub fn start(ns: &Netns, dir: &Path, files: &DaemonFiles) -> Self {
        Self::try_start(ns, dir, files).unwrap_or_else(|error| panic!("{}", error.full_message()))
    }

    /// Runs `vtysh -c <command>` against these daemons.
    pub fn try_vtysh(&self, command: &str) -> Result<String, LabError> {
        vtysh(&self.dir, command)
    }

    /// The end of each daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        [&self.zebra, &self.bfdd, &self.bgpd]
            .map(|d| format!("{}:\n{}", d.name, d.log_tail(lines)))
            .join("\n")
    }

    /// Waits until the BGP session with `peer` is established.
    pub fn try_wait_established(
        &mut self,
        peer: IpAddr,
        timeout: Duration,
    ) -> Result<(), LabError> {
        let what = format!("{}: BGP with {peer} established", self.bgpd.name);
        let dir = self.dir.clone();
        let bgpd = &mut self.bgpd;
        wait_for(
            &what,
            timeout,
            || bgpd.check_running(),
            || {
                let out = vtysh(&dir, &format!("show bgp neighbors {peer} json"))
                    .map_err(|e| e.full_message())?;
                let compact: String = out.split_whitespace().collect();
                if compact.contains("\"bgpState\":\"Established\"") {
                    Ok(())
                } else {
                    Err(out
                        .lines()
                        .find(|l| l.contains("bgpState"))
                        .unwrap_or("")
                        .trim()
                        .to_owned())
                }
            },
        )
    }
}

/// Starts FRR daemon `name` in the foreground, logging to stdout (its log file).
fn spawn(ns: &Netns, dir: &Path, name: &str, extra: &[&str]) -> Result<Daemon, LabError> {
    let file = |suffix: &str| dir.join(format!("{name}{suffix}")).display().to_string();
    let mut command: Command = ns.command(Path::new(FRR_DAEMONS_DIR).join(name));
    command
        .args(["-f", &file(".conf"), "-i", &file(".pid")])
        .args(["-z", &dir.join("zserv.api").display().to_string()])
        .args(["--vty_socket", &dir.display().to_string()])
        .args(["-u", "frr", "-g", "frr", "-P", "0", "--log", "stdout"])
        .args(extra);
    Daemon::try_spawn(
        &format!("{name} in {}", ns.name),
        command,
        &dir.join(format!("{name}.log")),
    )
}

/// [`spawn`] once zebra's socket exists (the other daemons give up without it).
fn spawn_after_zebra(
    ns: &Netns,
    dir: &Path,
    zserv: &Path,
    name: &str,
    extra: &[&str],
) -> Result<Daemon, LabError> {
    wait_for(
        &format!("zebra in {}: {}", ns.name, zserv.display()),
        Duration::from_secs(5),
        || Ok(()),
        || {
            if zserv.exists() {
                Ok(())
            } else {
                Err("no socket yet".into())
            }
        },
    )?;
    spawn(ns, dir, name, extra)
}

/// `vtysh --vty_socket dir -c command`.
fn vtysh(dir: &Path, command: &str) -> Result<String, LabError> {
    try_sh(&format!(
        "vtysh --vty_socket {} -c '{command}'",
        dir.display()
    ))
}
