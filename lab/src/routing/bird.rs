//! bird2: the configurations of an lb host and of the upstream router (the text
//! `docs/REDUNDANCY.md` shows, generated from the same values), and a bird process in a
//! namespace with its own configuration, control socket, pid file and log.

use std::{
    net::IpAddr,
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

/// bird on an lb host: learns lb's routes (kernel table `table`, protocol `protocol`) and
/// announces them to the upstream router over eBGP, one session per address family, with BFD.
#[derive(Clone, Debug)]
pub struct LbHostBird {
    /// bird's router id (the host's IPv4 address).
    pub router_id: std::net::Ipv4Addr,
    /// The host's autonomous system (the same on every lb instance).
    pub asn: u32,
    /// The interface facing the router (BFD runs on it).
    pub interface: String,
    /// lb's `[announce] table`.
    pub table: u32,
    /// lb's `[announce] protocol`.
    pub protocol: u32,
    /// The router, for IPv4 VIPs: its address on the shared link and its AS; `local` is ours.
    pub upstream4: Option<Session>,
    /// The router over IPv6, for IPv6 VIPs.
    pub upstream6: Option<Session>,
    /// BFD timers.
    pub bfd: Bfd,
}

/// One BGP session: our address and the peer.
#[derive(Clone, Debug)]
pub struct Session {
    /// Our address on the link.
    pub local: IpAddr,
    /// The other side.
    pub peer: Peer,
}

impl LbHostBird {
    /// The `bird.conf` text.
    pub fn config(&self) -> String {
        let Self {
            router_id,
            asn,
            interface,
            table,
            protocol,
            upstream4,
            upstream6,
            bfd,
        } = self;
        let mut text = format!(
            r#"# bird2 on an lb host: announce the VIPs lb serves to the upstream router.
router id {router_id};
# Under systemd (Debian's bird.service runs bird -f), stderr goes to the journal.
log stderr all;

protocol device {{ }}

{bfd}
# lb keeps one blackhole route per servable VIP address in table {table}, protocol {protocol}
# (`[announce]` in lb.toml). bird does not write that table (export none); it learns the
# routes lb installs there (`learn`: they are not bird's own) and takes only lb's.
"#,
            bfd = bfd.bird_protocol(interface),
        );
        let families = [("4", upstream4), ("6", upstream6)];
        for (v, _) in families.iter().filter(|(_, s)| s.is_some()) {
            text += &format!(
                r#"protocol kernel lb{v} {{
  kernel table {table};
  learn;
  ipv{v} {{ import where krt_source = {protocol}; export none; }};
}}

"#
            );
        }
        let names: Vec<String> = families
            .iter()
            .filter(|(_, s)| s.is_some())
            .map(|(v, _)| format!("proto = \"lb{v}\""))
            .collect();
        text += &format!(
            r#"# Every instance announces a VIP with the same attributes, so the router sees equal
# paths and spreads the VIP over all of them (origin and MED are compared before
# multipath; FRR's redistributed routes differ unless a route-map aligns them too).
filter lb_vips {{
  if {} then {{
    bgp_origin = ORIGIN_IGP;
    bgp_med = 0;
    accept;
  }}
  reject;
}}
"#,
            names.join(" || ")
        );
        text += "\n# BFD notices a dead router (and the router a dead lb host) in interval x multiplier;\n\
                 # the short timers below only speed up (re)connecting.\n";
        for (v, session) in families {
            let Some(Session { local, peer }) = session else {
                continue;
            };
            let Peer {
                address,
                asn: peer_asn,
                ..
            } = peer;
            text += &format!(
                r#"protocol bgp upstream{v} {{
  local {local} as {asn};
  neighbor {address} as {peer_asn};
  bfd on;
  hold time 9;
  keepalive time 3;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 5;
  ipv{v} {{
    import none;
    export filter lb_vips;
    next hop self;
  }};
}}

"#
            );
        }
        text.truncate(text.trim_end().len());
        text + "\n"
    }
}

/// bird on the upstream router: one BGP session per lb instance, the VIP routes merged into
/// one multipath kernel route (next hop per instance announcing it), BFD.
#[derive(Clone, Debug)]
pub struct RouterBird {
    /// bird's router id.
    pub router_id: std::net::Ipv4Addr,
    /// The router's AS.
    pub asn: u32,
    /// The interface facing the lb instances (BFD runs on it).
    pub interface: String,
    /// Our address facing the lb instances (IPv4 sessions).
    pub local4: Option<IpAddr>,
    /// Our IPv6 address facing them (IPv6 sessions).
    pub local6: Option<IpAddr>,
    /// The lb instances, one session each (the family of each address decides its session).
    pub instances: Vec<Peer>,
    /// Prefixes the VIPs come from (`10.78.0.0/24`); anything else an instance announces is
    /// refused. IPv4 and IPv6 alike.
    pub vip_prefixes: Vec<String>,
    /// BFD timers.
    pub bfd: Bfd,
}

impl RouterBird {
    /// The `bird.conf` text.
    pub fn config(&self) -> String {
        let Self {
            router_id,
            asn,
            interface,
            local4,
            local6,
            instances,
            vip_prefixes,
            bfd,
        } = self;
        let mut text = format!(
            r#"# bird2 on the router upstream of the lb instances.
router id {router_id};
# Under systemd (Debian's bird.service runs bird -f), stderr goes to the journal.
log stderr all;

protocol device {{ }}

{bfd}"#,
            bfd = bfd.bird_protocol(interface),
        );
        let families = [("4", local4, false), ("6", local6, true)];
        for (v, local, is_v6) in families {
            let Some(local) = local else { continue };
            let prefixes: Vec<String> = vip_prefixes
                .iter()
                .filter(|p| p.contains(':') == is_v6)
                .map(|p| format!("{p}{{{len},{len}}}", len = if is_v6 { 128 } else { 32 }))
                .collect();
            text += &format!(
                r#"
# One kernel route per VIP with a next hop per instance announcing it (merge paths):
# the kernel spreads flows over them by its multipath hash (fib_multipath_hash_policy).
protocol kernel kernel{v} {{
  merge paths on;
  ipv{v} {{ import none; export all; }};
}}

# Host routes of the VIP prefixes only.
filter lb_vips{v} {{
  if net ~ [ {prefixes} ] then accept;
  reject;
}}

template bgp lb{v} {{
  local {local} as {asn};
  bfd on;
  hold time 9;
  keepalive time 3;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 5;
  ipv{v} {{ import filter lb_vips{v}; export none; }};
}}
"#,
                prefixes = prefixes.join(", ")
            );
            for Peer { name, address, asn } in instances {
                if address.is_ipv6() == is_v6 {
                    text += &format!(
                        "protocol bgp {name}_{v} from lb{v} {{ neighbor {address} as {asn}; }}\n"
                    );
                }
            }
        }
        text
    }
}

/// A bird process in a namespace, with its files in one directory: `bird.conf`, the control
/// socket `bird.ctl`, `bird.pid`, `bird.log` (its stderr). Stopped on drop.
pub struct Bird {
    /// The process.
    pub daemon: Daemon,
    /// The control socket, for `birdc -s`.
    pub socket: PathBuf,
}

/// The files of a bird in `dir`: configuration, control socket, pid file, log.
pub fn bird_files(dir: &Path) -> [PathBuf; 4] {
    ["bird.conf", "bird.ctl", "bird.pid", "bird.log"].map(|name| dir.join(name))
}

impl Bird {
    /// Writes `config` into `dir`, checks it (`bird -p`), and returns the command that runs
    /// bird in `ns` in the foreground with `dir`'s files (for a caller with its own process
    /// table, such as the demo).
    pub fn try_prepare(ns: &Netns, dir: &Path, config: &str) -> Result<Command, LabError> {
        let [conf, socket, pid, _] = bird_files(dir);
        write_file(&conf, config)?;
        try_sh(&format!("bird -p -c {}", conf.display()))?;
        let mut command = ns.command("bird");
        command
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(&pid);
        Ok(command)
    }

    /// Starts bird in `ns` with `config`, its files in `dir` (which must exist); returns once
    /// its control socket answers.
    pub fn try_start(ns: &Netns, dir: &Path, config: &str) -> Result<Self, LabError> {
        let command = Self::try_prepare(ns, dir, config)?;
        let [_, socket, _, log] = bird_files(dir);
        let mut bird = Self {
            daemon: Daemon::try_spawn(&format!("bird in {}", ns.name), command, &log)?,
            socket,
        };
        let what = format!("{}: control socket", bird.daemon.name);
        let socket = bird.socket.clone();
        let daemon = &mut bird.daemon;
        wait_for(
            &what,
            Duration::from_secs(5),
            || daemon.check_running(),
            || birdc(&socket, "show status").map_err(|e| e.full_message()),
        )?;
        Ok(bird)
    }

    /// [`Self::try_start`], panicking with the error.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> Self {
        Self::try_start(ns, dir, config).unwrap_or_else(|error| panic!("{}", error.full_message()))
    }

    /// Runs `birdc -s <socket> <command>`; its output.
    pub fn try_birdc(&self, command: &str) -> Result<String, LabError> {
        birdc(&self.socket, command)
    }

    /// Whether BGP protocol `name` is established.
    pub fn try_established(&self, name: &str) -> Result<bool, LabError> {
        Ok(
            protocol_info(&self.try_birdc(&format!("show protocols {name}"))?, name)
                .is_some_and(|info| info.contains("Established")),
        )
    }

    /// Waits until every BGP protocol in `names` is established.
    pub fn try_wait_established(
        &mut self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<(), LabError> {
        let what = format!("{}: BGP {} established", self.daemon.name, names.join(", "));
        let socket = self.socket.clone();
        let daemon = &mut self.daemon;
        wait_for(
            &what,
            timeout,
            || daemon.check_running(),
            || match not_established(&socket, names) {
                Ok(down) if down.is_empty() => Ok(()),
                Ok(down) => Err(down.join("; ")),
                Err(error) => Err(error.full_message()),
            },
        )
    }

    /// [`Self::try_wait_established`], panicking with the error.
    pub fn wait_established(&mut self, names: &[&str], timeout: Duration) {
        self.try_wait_established(names, timeout)
            .unwrap_or_else(|error| panic!("{}", error.full_message()))
    }
}

/// The BGP protocols of `names` that the bird listening on `socket` has not established,
/// each with its state (`lb1_4: start 18:28:40.174 Active Socket: Connection refused`).
pub fn not_established(socket: &Path, names: &[&str]) -> Result<Vec<String>, LabError> {
    let out = birdc(socket, "show protocols")?;
    Ok(names
        .iter()
        .filter_map(|name| match protocol_info(&out, name) {
            Some(info) if info.contains("Established") => None,
            Some(info) => Some(format!("{name}: {info}")),
            None => Some(format!("{name}: no such protocol")),
        })
        .collect())
}

/// `birdc -s socket command`.
fn birdc(socket: &Path, command: &str) -> Result<String, LabError> {
    try_sh(&format!("birdc -s {} {command}", socket.display()))
}

/// The state and info columns of protocol `name` in `show protocols` output
/// (`up  18:28:51.182  Established`).
fn protocol_info(show_protocols: &str, name: &str) -> Option<String> {
    show_protocols.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == name).then(|| fields.skip(2).collect::<Vec<_>>().join(" "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protocol_state() {
        let out = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
                   lb1_4      BGP        ---        up     18:28:51.182  Established   \n\
                   lb2_4      BGP        ---        start  18:28:40.174  Active        Socket: Connection refused\n";
        assert_eq!(
            protocol_info(out, "lb1_4").as_deref(),
            Some("up 18:28:51.182 Established")
        );
        assert!(protocol_info(out, "lb2_4").is_some_and(|i| i.contains("Active")));
        assert_eq!(protocol_info(out, "lb3_4"), None);
    }
}
