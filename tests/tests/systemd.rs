//! The package under a real init: a Debian 12 container booted with systemd as PID 1
//! ([`lb_tests::container`]) is the gateway. The `.deb` that `cargo xtask package` built is
//! installed with apt, `/etc/lb/lb.toml` written for the lab, and DEPLOY.md's life cycle run
//! with `systemctl`, with real connections through the VIP from a client namespace to a DSR
//! backend namespace: `enable --now`, `lb status --check`, `reload`, a `restart` under traffic
//! without one failed connection (the new agent adopts the datapath), `stop` with forwarding
//! going on, `lb detach`, `apt remove` and `apt purge`, after which nothing is left: no pin in
//! the bpffs, no `[announce]` route, no `/run/lb`, no `/var/lib/lb`.
//!
//! The lab, on one bridge (lb_lab's LAN conventions: 10.77.0.0/24, VIPs in 10.78.0.0/24):
//!
//! ```text
//! client 10.77.0.10 ── p0 ┐
//! container host0 10.77.0.11 ── ve-<name> (moved into the switch as plb) ── br0
//! b1 10.77.0.12 (VIP 10.78.0.100 on lo, DSR) ── p1 ┘
//! ```
//!
//! `lb-decap@.service` is bound (`BindsTo=`, `After=`) to its interface's device unit, and a
//! container has no udev, so device units never appear in it and the unit as shipped would wait
//! for its device forever. The test runs a copy of the unit without those two lines, and
//! checks that they are the only difference: its sandbox, command line and stop are tested;
//! starting with the interface and stopping when it disappears are not.

use std::{fs, net::SocketAddr, time::Duration};

use lb_lab::{Naming, LAB_SUBNETS};
use lb_tests::{
    container::Container,
    deploy::{find_deb, guide_block, run_in},
    netns::{
        agent::lb_binary,
        connections::{self, Opener},
        pass_on,
        servers::NameServer,
        wait_every, Netns,
    },
};
use lb_user::datapath::Datapath;

const PORT: u16 = 8080;
const VIP: &str = "10.78.0.100";
/// The guide's example VIP, replaced by the lab's in its blocks.
const GUIDE_VIP: &str = "192.0.2.10";
/// `[announce]`: lb's routing table and route protocol in the container.
const TABLE: u32 = 250;
const PROTOCOL: u32 = 250;
/// The container's end of its veth, where lb attaches.
const INTERFACE: &str = "host0";
/// The host end of the veth, renamed once moved into the switch.
const PORT_NAME: &str = "plb";

/// Fields drop in order: the container first (its PID 1 killed, its veth gone with its
/// network namespace), then the servers, the switch's programs, the namespaces.
struct SystemdLab {
    container: Container,
    /// What the container's bpffs held before lb ran.
    bpffs_at_boot: Vec<String>,
    _servers: Vec<NameServer>,
    _switch_xdp: Datapath,
    lan: lb_lab::Lan,
}

impl SystemdLab {
    fn new() -> Self {
        let mut lan = lb_lab::Lan::empty(Naming::Unique("sd".to_owned()))
            .unwrap_or_else(|e| panic!("building the lab: {}", e.full_message()));
        lan.plug("client", LAB_SUBNETS.host(10))
            .unwrap_or_else(|e| panic!("plugging the client: {}", e.full_message()));
        lan.plug("b1", LAB_SUBNETS.host(12))
            .unwrap_or_else(|e| panic!("plugging b1: {}", e.full_message()));
        let backend = &lan.host(1).ns;
        run_in(
            backend,
            &guide_block("backend-dsr").replace(GUIDE_VIP, VIP),
            &lb_binary(),
        );
        let servers = vec![NameServer::start(backend, PORT, "b1")];

        let container = Container::boot(&[]);
        let veth = format!("ve-{}", container.name);
        lb_lab::sh(&format!("ip link set {veth} netns {}", lan.switch.name));
        lan.switch.ip_batch(&[
            format!("link set {veth} name {PORT_NAME}"),
            format!("link set {PORT_NAME} master br0"),
            format!("link set {PORT_NAME} up"),
        ]);
        let gateway = LAB_SUBNETS.host(11).ip;
        container.sh(&format!(
            "ip addr add {gateway}/24 dev {INTERFACE} && ip link set {INTERFACE} up"
        ));
        lan.host(0)
            .ns
            .ip(&format!("route add {VIP}/32 via {gateway}"));

        // A veth delivers what the other end's XDP program transmits only to a peer that
        // runs an XDP program too: lb's pass program on every switch port.
        let mut ports = lan.ports();
        ports.push(PORT_NAME.to_owned());
        let switch_xdp = lan.switch.run(|| pass_on(&ports));
        Self {
            bpffs_at_boot: walk(&container.bpffs()),
            container,
            _servers: servers,
            _switch_xdp: switch_xdp,
            lan,
        }
    }

    fn client(&self) -> &Netns {
        &self.lan.host(0).ns
    }

    fn vip(&self) -> SocketAddr {
        SocketAddr::new(VIP.parse().expect("vip"), PORT)
    }

    /// `count` connections to the VIP from the client, each answered by the backend.
    fn assert_forwards(&self, count: usize, when: &str) {
        let vip = self.vip();
        let answers = connections::ask(self.client(), vip, count, Duration::from_secs(2));
        assert!(
            answers.iter().all(|a| a.as_deref() == Ok("b1")),
            "{when}: connections to {vip}: {answers:?}\nlb.service's journal:\n{}",
            self.container.journal("lb")
        );
    }

    /// Waits until `lb status --check` passes in the container (the agent runs, the datapath
    /// is attached, the VIP can serve); panics with the unit's journal if it does not.
    fn wait_serving(&self, after: &str) {
        let mut gave_up = false;
        let serving = wait_every(Duration::from_secs(30), Duration::from_millis(200), || {
            if self.container.run("lb status --check").status.success() {
                return true;
            }
            // systemd gave up ("Start request repeated too quickly"): no need to wait.
            gave_up = self
                .container
                .run("systemctl is-failed --quiet lb")
                .status
                .success();
            gave_up
        });
        if serving.is_some() && !gave_up {
            return;
        }
        panic!(
            "after `{after}`, lb.service does not serve under systemd (`lb status --check` \
             fails: the unit failed, or 30 s passed).\nsystemctl status lb:\n{}\njournalctl -u lb:\n{}",
            String::from_utf8_lossy(&self.container.run("systemctl status lb --no-pager").stdout),
            self.container.journal("lb")
        );
    }

    /// The routes lb announced in the container.
    fn announced(&self) -> String {
        let output = self
            .container
            .run(&format!("ip route show table {TABLE} proto {PROTOCOL}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Whether an XDP program is attached to the container's interface.
    fn xdp_attached(&self) -> bool {
        self.container
            .sh(&format!("ip -j link show dev {INTERFACE}"))
            .contains("\"xdp\"")
    }

    /// The container's bpffs's entries (pins), as the host sees them, less those of a new
    /// bpffs (the kernel's `maps.debug` and `progs.debug`).
    fn pins(&self) -> Vec<String> {
        walk(&self.container.bpffs())
            .into_iter()
            .filter(|path| !self.bpffs_at_boot.contains(path))
            .collect()
    }

    /// New connections to the VIP from the client every 10 ms until stopped.
    fn traffic(&self) -> Opener {
        Opener::start(
            self.client(),
            self.vip(),
            Duration::from_millis(10),
            Duration::from_secs(2),
        )
    }
}

/// Every path below `dir`, relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        found.push(
            path.strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string(),
        );
        if path.is_dir() {
            found.extend(walk(&path));
        }
    }
    found
}

fn config() -> String {
    let backend = LAB_SUBNETS.host(12).ip;
    format!(
        "# The systemd test's gateway (tests/tests/systemd.rs).\n\
         interface = \"{INTERFACE}\"\nxdp_mode = \"native\"\n\n\
         [health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 3\n\n\
         [announce]\ntable = {TABLE}\nprotocol = {PROTOCOL}\ndrain = \"200ms\"\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nforward = \"dsr\"\n\
         \x20 [[vip.backend]]\n  address = \"{backend}\"\n"
    )
}

#[test]
fn the_package_runs_its_life_cycle_under_systemd_as_pid_1() {
    let deb = find_deb().unwrap_or_else(|message| panic!("{message}"));
    let lab = SystemdLab::new();
    let gateway = &lab.container;
    println!(
        "container {} booted (PID 1 is {} on the host)",
        gateway.name, gateway.leader
    );

    // Install with apt, as DEPLOY.md says: the minimal root already has the dependencies.
    fs::copy(&deb, gateway.root().join("root/lb.deb")).expect("copy the package in");
    let installed = gateway.sh("apt-get install -y /root/lb.deb");
    println!("{}", installed.lines().last().unwrap_or_default());
    assert!(gateway.exists("/usr/bin/lb"), "{installed}");
    assert!(
        !gateway.run("systemctl is-enabled lb").status.success(),
        "the package enables nothing by itself"
    );
    gateway.write("/etc/lb/lb.toml", config().as_bytes());
    gateway.sh("lb check --config /etc/lb/lb.toml");

    // Section 7: start, and at every boot.
    gateway.sh("systemctl enable --now lb");
    lab.wait_serving("systemctl enable --now lb");
    assert!(lab.xdp_attached(), "no program on {INTERFACE}");
    let journal = gateway.journal("lb");
    assert!(journal.contains("datapath attached"), "{journal}");
    lab.assert_forwards(20, "after enable --now");
    assert!(
        wait_every(Duration::from_secs(15), Duration::from_millis(100), || lab
            .announced()
            .contains(VIP))
        .is_some(),
        "[announce] routes: {:?}\n{}",
        lab.announced(),
        gateway.journal("lb")
    );
    let status = gateway.sh("lb status");
    println!("lb status:\n{status}");

    // Section 8: reload.
    gateway.sh("systemctl reload lb");
    assert!(
        wait_every(
            Duration::from_secs(15),
            Duration::from_millis(100),
            || gateway.journal("lb").contains("reload (SIGHUP)")
                || gateway.journal("lb").contains("reloaded (SIGHUP)")
        )
        .is_some(),
        "systemctl reload lb: the agent did not reload:\n{}",
        gateway.journal("lb")
    );
    lab.wait_serving("systemctl reload lb");

    // A restart under traffic: the new agent adopts the datapath, no connection fails.
    let traffic = lab.traffic();
    assert!(
        traffic.wait_attempts(20, Duration::from_secs(10)),
        "no connection before the restart"
    );
    gateway.sh("systemctl restart lb");
    lab.wait_serving("systemctl restart lb");
    assert!(
        traffic.wait_attempts(30, Duration::from_secs(10)),
        "no connection after the restart"
    );
    let attempts = traffic.stop();
    // Each answered by the one backend.
    let ok = attempts
        .iter()
        .filter(|a| a.result.as_deref() == Ok("b1"))
        .count();
    let failed = attempts.len() - ok;
    println!("systemctl restart lb under traffic: {ok} connections succeeded, {failed} failed");
    assert!(ok > 0, "no connection during the restart");
    assert_eq!(failed, 0, "connections failed during systemctl restart lb");
    let journal = gateway.journal("lb");
    assert!(
        journal.contains("adopted the running datapath"),
        "the restarted agent did not adopt the datapath:\n{journal}"
    );

    // Stopped, the datapath goes on forwarding (and the routes stay).
    gateway.sh("systemctl stop lb");
    assert!(
        !gateway.run("lb status --check").status.success(),
        "lb status --check passes with the agent stopped"
    );
    lab.assert_forwards(10, "after systemctl stop lb");
    assert!(lab.announced().contains(VIP), "routes withdrawn on stop");

    // Section 10: stop for good.
    gateway.sh("systemctl disable lb");
    let detached = gateway.sh("lb detach --config /etc/lb/lb.toml");
    println!("{}", detached.trim());
    assert!(
        detached.contains("detached: the lb program is off host0"),
        "{detached}"
    );
    assert_eq!(
        lab.pins(),
        Vec::<String>::new(),
        "pins left after lb detach"
    );
    assert_eq!(lab.announced().trim(), "", "routes left after lb detach");
    assert!(!lab.xdp_attached(), "a program left on {INTERFACE}");

    check_decap_unit(&lab);

    // Removing and purging the package leaves nothing behind.
    gateway.sh("apt-get remove -y lb");
    assert!(
        !gateway.exists("/usr/bin/lb"),
        "apt remove left /usr/bin/lb"
    );
    assert!(
        gateway.exists("/etc/lb/lb.toml"),
        "apt remove keeps the configuration"
    );
    gateway.sh("apt-get purge -y lb");
    for path in ["/etc/lb", "/run/lb", "/var/lib/lb"] {
        assert!(
            !gateway.exists(path),
            "{path} left after apt purge: {}",
            gateway.sh(&format!("ls -la {path}"))
        );
    }
    assert_eq!(
        lab.pins(),
        Vec::<String>::new(),
        "pins left after apt purge"
    );
    assert_eq!(lab.announced().trim(), "", "routes left after apt purge");
}

/// `lb-decap@host0` as its unit runs it, less the device binding (no udev in a container):
/// started by systemd in its sandbox, it attaches to the interface; stopped, it detaches and
/// logs what it stripped.
fn check_decap_unit(lab: &SystemdLab) {
    let gateway = &lab.container;
    let shipped = gateway.read("/usr/lib/systemd/system/lb-decap@.service");
    let device = |line: &str| {
        line == "BindsTo=sys-subsystem-net-devices-%i.device"
            || line == "After=sys-subsystem-net-devices-%i.device"
    };
    assert_eq!(
        shipped.lines().filter(|line| device(line)).count(),
        2,
        "lb-decap@.service's device binding changed: update this test:\n{shipped}"
    );
    let copy: String = shipped
        .lines()
        .filter(|line| !device(line))
        .map(|line| format!("{line}\n"))
        .collect();
    gateway.write(
        "/etc/systemd/system/lb-decap-nodevice@.service",
        copy.as_bytes(),
    );
    gateway.sh("systemctl daemon-reload && systemctl start lb-decap-nodevice@host0");
    let unit = "lb-decap-nodevice@host0";
    assert!(
        wait_every(Duration::from_secs(15), Duration::from_millis(100), || {
            gateway.journal(unit).contains("decap attached")
        })
        .is_some(),
        "lb-decap@ (without its device binding) did not attach under systemd:\n{}",
        gateway.journal(unit)
    );
    assert!(lab.xdp_attached(), "decap: no program on {INTERFACE}");
    gateway.sh(&format!("systemctl stop {unit}"));
    let journal = gateway.journal(unit);
    assert!(journal.contains("decapsulated="), "{journal}");
    assert!(!lab.xdp_attached(), "decap left its program on {INTERFACE}");
    gateway.sh("rm /etc/systemd/system/lb-decap-nodevice@.service && systemctl daemon-reload");
    println!("lb-decap@ (less BindsTo=/After= on the device) attached and detached under systemd");
}
