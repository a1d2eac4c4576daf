//! keepalived: active–passive lb instances for sites without BGP. The router routes the VIPs
//! to a floating address that VRRP keeps on one instance; a track script (`lb status --check`)
//! gives it up when that instance's lb cannot serve. The configuration text, and keepalived in a
//! namespace with its own files.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    command::try_sh,
    daemon::{write_file, Daemon},
    error::LabError,
    netns::Netns,
};

/// One instance's VRRP configuration.
#[derive(Clone, Debug)]
pub struct Vrrp {
    /// keepalived's `router_id` (the host's name).
    pub router_id: String,
    /// The interface VRRP runs on and the floating address goes to.
    pub interface: String,
    /// The virtual router id (1..=255), the same on every instance of the pair.
    pub virtual_router_id: u8,
    /// This instance's priority: the highest live one holds the address.
    pub priority: u8,
    /// How often the master advertises; a backup takes over after about three missed
    /// advertisements (VRRPv3 allows centiseconds).
    pub advert_interval: Duration,
    /// The floating address the router sends VIP traffic to.
    pub floating: Ipv4Addr,
    /// Its prefix length on `interface`.
    pub prefix_len: u8,
    /// The health check that demotes the instance when it fails.
    pub track_script: Option<TrackScript>,
}

/// keepalived's `vrrp_script`: a command run every `interval`; `fall` failures in a row take
/// the instance to the FAULT state (it releases the address), `rise` successes bring it back.
#[derive(Clone, Debug)]
pub struct TrackScript {
    /// The command (`/usr/sbin/lb status --check`).
    pub command: String,
    /// Seconds between runs (keepalived takes whole seconds).
    pub interval_seconds: u32,
    /// Failures to fault.
    pub fall: u32,
    /// Successes to recover.
    pub rise: u32,
}

impl Vrrp {
    /// The `keepalived.conf` text.
    pub fn config(&self) -> String {
        let Self {
            router_id,
            interface,
            virtual_router_id,
            priority,
            advert_interval,
            floating,
            prefix_len,
            track_script,
        } = self;
        let advert = advert_interval.as_secs_f64();
        let mut text = format!(
            r#"# keepalived on an lb instance: VRRP keeps the floating address {floating} on one
# instance; the router sends the VIPs' traffic to it.
global_defs {{
  router_id {router_id}
  script_user root
  enable_script_security
  vrrp_version 3
  # Announce the address at once and again a second later (the router's ARP entry).
  vrrp_garp_master_delay 1
  vrrp_garp_master_repeat 3
}}
"#
        );
        if let Some(TrackScript {
            command,
            interval_seconds,
            fall,
            rise,
        }) = track_script
        {
            text += &format!(
                r#"
# Exit status 0 only while this instance's agent runs, its datapath is attached and at
# least one VIP is servable; otherwise the instance gives the address up.
vrrp_script lb_check {{
  script "{command}"
  interval {interval_seconds}
  timeout {interval_seconds}
  fall {fall}
  rise {rise}
}}
"#
            );
        }
        text += &format!(
            r#"
vrrp_instance lb {{
  state BACKUP
  interface {interface}
  virtual_router_id {virtual_router_id}
  priority {priority}
  advert_int {advert}
  virtual_ipaddress {{
    {floating}/{prefix_len} dev {interface}
  }}
"#
        );
        if track_script.is_some() {
            text += "  track_script {\n    lb_check\n  }\n";
        }
        text + "}\n"
    }
}

/// keepalived (VRRP only) in a namespace with its files in one directory: `keepalived.conf`,
/// `keepalived.pid`, `vrrp.pid`, `keepalived.log`. Stopped on drop (it removes the floating
/// address).
pub struct Keepalived {
    /// The process.
    pub daemon: Daemon,
    /// The configuration file.
    pub config: PathBuf,
}

impl Keepalived {
    /// Writes `config` into `dir`, checks it (`keepalived --config-test`) and starts
    /// keepalived in `ns` in the foreground, logging to its log file.
    pub fn try_start(ns: &Netns, dir: &Path, config: &str) -> Result<Self, LabError> {
        let file = |name: &str| dir.join(name);
        let conf = file("keepalived.conf");
        write_file(&conf, config)?;
        try_sh(&format!("keepalived --config-test -f {}", conf.display()))?;
        let mut command = ns.command("keepalived");
        command
            .args([
                "--vrrp",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
            ])
            .arg("--use-file")
            .arg(&conf)
            .arg("--pid")
            .arg(file("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(file("vrrp.pid"));
        let daemon = Daemon::try_spawn(
            &format!("keepalived in {}", ns.name),
            command,
            &file("keepalived.log"),
        )?;
        Ok(Self {
            daemon,
            config: conf,
        })
    }

    /// [`Self::try_start`], panicking with the error.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> Self {
        Self::try_start(ns, dir, config).unwrap_or_else(|error| panic!("{}", error.full_message()))
    }
}
