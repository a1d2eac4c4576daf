//! The operator's path of docs/DEPLOY.md on a lab (issue #13): two backends prepared only with
//! the guide's tested blocks (the VIPs on the loopback and the sysctls; for tunnels the MTU and
//! `lb-decap@eth0`, run as its unit's command line) serve a DSR VIP and a tunnel VIP through an
//! agent started as `lb.service` starts it (its ExecStartPre, then its ExecStart). On the way:
//! no backend answers ARP for the VIP, `lb stats --watch 1 --count 2` prints two rate screens to
//! a pipe (and, in a pseudo-terminal, escapes only without `NO_COLOR`), and the guide's stop
//! for good (`systemctl disable --now lb`, then `lb detach`) first leaves the datapath
//! forwarding, then removes it.

use std::{
    net::{SocketAddr, TcpStream},
    process::{Command, Output},
    time::Duration,
};

use lb_common::stats::Counter;
use lb_tests::{
    deploy::{describe, guide_block, run_in, unit, unit_argv, unit_values, SystemctlLine},
    netns::{
        agent::{lb_binary, wait_file, AgentFiles, AgentProcess, Signal},
        connections::{bulk, Opener},
        servers::{ask_name, NameServer},
        topology::Lan,
        wait_every,
    },
};
use lb_user::datapath::Datapath;

const PORT: u16 = 8080;
/// The guide's example VIP, replaced by each of the lab's.
const GUIDE_VIP: &str = "192.0.2.10";
/// The DSR VIP and the tunnel VIP.
const VIPS: [(&str, &str, &str); 2] = [
    ("web", "10.78.0.100", "dsr"),
    ("app", "10.78.0.101", "tunnel"),
];
const BACKENDS: [&str; 2] = ["b1", "b2"];
/// MTU of the gateway and the switch: the guide sets the backends' own (1520).
const GATEWAY_MTU: u32 = 1600;
const CONNECTIONS: usize = 30;
/// `[announce]`: the routing table and protocol number of lb's routes.
const TABLE: u32 = 250;
const PROTOCOL: u32 = 250;

/// Fields drop in order: processes and servers first, then files, the namespaces last.
struct DeployLab {
    agent: Option<AgentProcess>,
    decaps: Vec<AgentProcess>,
    _servers: Vec<NameServer>,
    files: AgentFiles,
    lan: Lan,
}

fn vip(address: &str) -> SocketAddr {
    SocketAddr::new(address.parse().expect("vip"), PORT)
}

fn decap_log(files: &AgentFiles, backend: usize) -> std::path::PathBuf {
    files.dir.join(format!("decap-{}.log", BACKENDS[backend]))
}

impl DeployLab {
    fn new() -> Self {
        let lan = Lan::new("deploy", &["client", "lb", "b1", "b2"]);
        lan.set_mtu(&[1], GATEWAY_MTU);
        let files = AgentFiles::new("deploy");
        let lb = lb_binary();
        let mut servers = Vec::new();
        let mut decaps = Vec::new();
        for (i, name) in BACKENDS.iter().enumerate() {
            let ns = &lan.host(2 + i).ns;
            // Section 5, once per VIP ("repeat the ip addr add line for every VIP").
            for (_, address, _) in VIPS {
                run_in(
                    ns,
                    &guide_block("backend-dsr").replace(GUIDE_VIP, address),
                    &lb,
                );
            }
            let verify = run_in(ns, &guide_block("backend-verify"), &lb);
            for expected in [
                "10.78.0.100/32",
                "10.78.0.101/32",
                "net.ipv4.conf.all.arp_ignore = 1",
                "net.ipv4.conf.all.arp_announce = 2",
                "net.ipv4.conf.all.rp_filter = 2",
            ] {
                assert!(
                    verify.contains(expected),
                    "{name}: the guide's check shows:\n{verify}"
                );
            }
            // Section 6, line by line: systemctl is done as systemd would.
            for line in guide_block("backend-tunnel").lines() {
                match SystemctlLine::parse(line) {
                    Some(SystemctlLine::Start(unit_name)) => {
                        let (template, instance) = unit_name
                            .split_once('@')
                            .unwrap_or_else(|| panic!("{unit_name}: not a template instance"));
                        let text = unit(&format!("{template}@.service"));
                        assert!(unit_values(&text, "ExecStartPre").is_empty());
                        let [exec] = unit_values(&text, "ExecStart")
                            .try_into()
                            .expect("one ExecStart");
                        let argv = unit_argv(&exec, &lb, instance, &[]);
                        decaps.push(AgentProcess::start_argv(ns, &argv, &decap_log(&files, i)));
                    }
                    Some(other) => panic!("unexpected in backend-tunnel: {other:?}"),
                    None if line.trim().is_empty() => {}
                    None => {
                        run_in(ns, line, &lb);
                    }
                }
            }
            assert!(
                ns.ip("link show dev eth0").contains("mtu 1520"),
                "{name}: the guide's MTU"
            );
            servers.push(NameServer::start(ns, PORT, name));
        }
        for (i, name) in BACKENDS.iter().enumerate() {
            assert!(
                wait_file(
                    &decap_log(&files, i),
                    "decap attached",
                    1,
                    Duration::from_secs(10)
                ),
                "lb-decap@eth0 on {name} did not attach:\n{}",
                std::fs::read_to_string(decap_log(&files, i)).unwrap_or_default()
            );
        }
        Self {
            agent: None,
            decaps,
            _servers: servers,
            files,
            lan,
        }
    }

    fn client(&self) -> &lb_tests::netns::Netns {
        &self.lan.host(0).ns
    }

    /// `arp_ignore`: with the VIP on-link, the client's ARP for it gets no answer (without the
    /// sysctl both backends would answer, and the connection would succeed around lb).
    fn check_no_backend_answers_arp_for_the_vip(&self) {
        let (_, address, _) = VIPS[0];
        self.client()
            .ip(&format!("route add {address}/32 dev eth0"));
        let direct = self
            .client()
            .run(|| TcpStream::connect_timeout(&vip(address), Duration::from_millis(1500)));
        let neighbour = self.client().ip(&format!("neigh show {address} dev eth0"));
        self.client()
            .ip(&format!("route del {address}/32 dev eth0"));
        assert!(
            direct.is_err() && !neighbour.contains("lladdr"),
            "a backend answered ARP for the VIP {address}: {neighbour}"
        );
        println!(
            "ARP for {address} on the LAN: no answer ({})",
            neighbour.trim()
        );
    }

    /// Starts the agent as lb.service does: ExecStartPre must pass, then ExecStart runs.
    fn start_agent_as_the_unit_does(&mut self) {
        let lb_host = self.lan.host(1);
        let mut config = format!(
            "interface = \"eth0\"\nxdp_mode = \"native\"\nstate_dir = \"{}\"\nconntrack_size = 65536\n\n\
             [health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 3\n\n\
             [announce]\ntable = {TABLE}\nprotocol = {PROTOCOL}\ndrain = \"200ms\"\n",
            self.files.state_dir.display()
        );
        for (name, address, forward) in VIPS {
            config += &format!(
                "\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {PORT}\nforward = \"{forward}\"\n"
            );
            for i in 0..BACKENDS.len() {
                config += &format!(
                    "  [[vip.backend]]\n  address = \"{}\"\n",
                    self.lan.host(2 + i).ip
                );
            }
        }
        self.files.write_config(&config);
        self.client()
            .ip(&format!("route add 10.78.0.0/24 via {}", lb_host.ip));
        let text = unit("lb.service");
        let lb = lb_binary();
        let replace = [("/etc/lb/lb.toml", self.files.config.as_path())];
        for pre in unit_values(&text, "ExecStartPre") {
            let argv = unit_argv(&pre, &lb, "", &replace);
            let output = run(Command::new(&argv[0]).args(&argv[1..]));
            assert!(
                output.status.success(),
                "ExecStartPre {argv:?}: {}",
                describe(&output)
            );
        }
        let [exec] = unit_values(&text, "ExecStart")
            .try_into()
            .expect("one ExecStart");
        let argv = unit_argv(&exec, &lb, "", &replace);
        assert!(argv.contains(&"--keep-datapath".to_owned()), "{argv:?}");
        self.agent = Some(AgentProcess::start_argv(
            &lb_host.ns,
            &argv,
            &self.files.log,
        ));
        assert!(
            self.files
                .wait_log("datapath attached", 1, Duration::from_secs(15)),
            "agent did not attach:\n{}",
            self.files.log_text()
        );
        // Both VIPs' backends up before traffic: two rounds of checks.
        assert!(
            wait_every(Duration::from_secs(10), Duration::from_millis(20), || {
                let status = self.lb_in_lb(&["status", "--json"]);
                let json: serde_json::Value =
                    serde_json::from_slice(&status.stdout).unwrap_or_default();
                json["vips"].as_array().is_some_and(|vips| {
                    vips.len() == 2
                        && vips.iter().all(|v| {
                            v["backends"]
                                .as_array()
                                .is_some_and(|b| b.iter().all(|b| b["state"] == "up"))
                        })
                })
            })
            .is_some(),
            "backends not up:\n{}",
            self.files.log_text()
        );
        assert!(
            wait_every(Duration::from_secs(10), Duration::from_millis(20), || VIPS
                .iter()
                .all(|(_, a, _)| self.announced().contains(a)))
            .is_some(),
            "VIPs not announced: {}\n{}",
            self.announced(),
            self.files.log_text()
        );
    }

    /// The VIP routes lb announces (`[announce]`), in the load balancer's namespace.
    fn announced(&self) -> String {
        self.lan
            .host(1)
            .ns
            .table_routes(TABLE, &format!("proto {PROTOCOL}"))
    }

    /// `lb ARGS --state-dir DIR` inside the load balancer's namespace.
    fn lb_in_lb(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .arg(format!("--net={}", self.lan.host(1).ns.path()))
            .arg(lb_binary())
            .args(args)
            .arg("--state-dir")
            .arg(&self.files.state_dir))
    }

    /// Every VIP: connections spread over both backends, and 64 KiB each way of full-size
    /// segments (a tunnel needs the guide's MTU headroom for them).
    fn check_both_vips_serve(&self) {
        for (name, address, forward) in VIPS {
            let target = vip(address);
            let names: Vec<String> = self.client().run(|| {
                (0..CONNECTIONS)
                    .map(|i| {
                        ask_name(target, Duration::from_secs(2))
                            .unwrap_or_else(|e| panic!("{name}: connection {i} failed: {e}"))
                    })
                    .collect()
            });
            for backend in BACKENDS {
                assert!(
                    names.iter().any(|n| n == backend),
                    "{name}: none to {backend}: {names:?}"
                );
            }
            let served_by = self.client().run(|| bulk(target));
            println!("{name} ({forward}) at {address}: {CONNECTIONS} connections to both backends, 64 KiB each way with {served_by}");
        }
        let mut datapath = Datapath::open_pinned(&self.files.state_dir).expect("open pinned maps");
        for counter in [Counter::TooBig, Counter::NoBackend, Counter::ParseError] {
            assert_eq!(
                datapath.counter(counter).expect("counter"),
                0,
                "{counter:?}"
            );
        }
    }

    /// `lb stats --watch 1 --count 2` to a pipe while a client connects: two rate screens,
    /// a second apart, with traffic, and not one terminal escape.
    fn check_watch_prints_two_screens_to_a_pipe(&self) {
        let traffic = Opener::start(
            self.client(),
            vip(VIPS[0].1),
            Duration::from_millis(5),
            Duration::from_secs(1),
        );
        let output = self.lb_in_lb(&["stats", "--watch", "1", "--count", "2"]);
        traffic.stop();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{}", describe(&output));
        let screens: Vec<&str> = text.split("every ").skip(1).collect();
        assert_eq!(screens.len(), 2, "two screens:\n{text}");
        for screen in &screens {
            assert!(
                screen.starts_with("1.0s:"),
                "a bare 1 is one second:\n{text}"
            );
            assert!(
                screen.contains("vip web:") && screen.contains("vip app:"),
                "{text}"
            );
            assert!(
                !screen.contains("tx 0 pps"),
                "rates of the client's traffic:\n{text}"
            );
        }
        assert!(!text.contains('\x1b'), "escapes in piped output:\n{text:?}");
        println!("lb stats --watch 1 --count 2 | cat:\n{text}");

        // In a terminal the screen is cleared before each redraw, unless NO_COLOR is set.
        let in_terminal = |no_color: bool| {
            let line = format!(
                "nsenter --net={} {} stats --state-dir {} --watch 0.2 --count 1",
                self.lan.host(1).ns.path(),
                lb_binary().display(),
                self.files.state_dir.display()
            );
            let mut command = Command::new("script");
            command
                .args(["-qec", &line, "/dev/null"])
                .env("TERM", "xterm");
            if no_color {
                command.env("NO_COLOR", "1");
            } else {
                command.env_remove("NO_COLOR");
            }
            let output = run(&mut command);
            assert!(output.status.success(), "{}", describe(&output));
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let plain = in_terminal(true);
        assert!(
            plain.contains("vip web:") && !plain.contains('\x1b'),
            "NO_COLOR:\n{plain:?}"
        );
        let styled = in_terminal(false);
        assert!(
            styled.contains("\x1b[2J"),
            "a terminal without NO_COLOR:\n{styled:?}"
        );
    }

    /// The guide's stop for good: `systemctl disable --now lb` (SIGTERM, as systemd stops it)
    /// leaves the datapath forwarding; `lb detach --config` removes it; a second detach is
    /// not an error.
    fn check_stop_for_good(&mut self) {
        let block = guide_block("stop-for-good");
        let config = self.files.config.display().to_string();
        let mut detached = false;
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            match SystemctlLine::parse(line) {
                Some(SystemctlLine::Stop(unit_name)) => {
                    assert_eq!(unit_name, "lb", "{line}");
                    let status = self.agent.take().expect("agent").stop(Signal::SIGTERM);
                    assert!(status.success(), "lb run on SIGTERM: {status}");
                    let served = self
                        .client()
                        .run(|| ask_name(vip(VIPS[0].1), Duration::from_secs(2)));
                    assert!(
                        served.is_ok(),
                        "after `{}` the datapath must keep forwarding: {served:?}",
                        line.trim()
                    );
                    assert!(self.files.state_dir.exists());
                    assert!(
                        VIPS.iter().all(|(_, a, _)| self.announced().contains(a)),
                        "with --keep-datapath the routes stay: {}",
                        self.announced()
                    );
                }
                Some(other) => panic!("unexpected in stop-for-good: {other:?}"),
                None => {
                    let script = line.replace("/etc/lb/lb.toml", &config);
                    let output = run_in(&self.lan.host(1).ns, &script, &lb_binary());
                    assert!(
                        output.contains(
                            "withdrew 2 announced routes from table 250; \
                             detached: the lb program is off eth0"
                        ),
                        "{output}"
                    );
                    detached = true;
                    println!("{}", output.trim());
                }
            }
        }
        assert!(detached, "the block ran no lb detach:\n{block}");
        assert!(!self.files.state_dir.exists(), "pins left behind");
        assert_eq!(self.announced().trim(), "", "routes left behind");
        let link = self.lan.host(1).ns.ip("-j link show dev eth0");
        assert!(
            !link.contains("\"xdp\""),
            "a program is still attached: {link}"
        );
        let after = self
            .client()
            .run(|| TcpStream::connect_timeout(&vip(VIPS[0].1), Duration::from_millis(1000)));
        assert!(after.is_err(), "the VIP still answers after lb detach");
        let again = run_in(
            &self.lan.host(1).ns,
            &format!("lb detach --config {config}"),
            &lb_binary(),
        );
        assert!(again.contains("nothing to detach"), "{again}");
    }

    /// Stops every `lb-decap@` (SIGTERM, as systemd does) and returns what each stripped.
    fn stop_decaps(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.decaps)
            .into_iter()
            .enumerate()
            .map(|(i, decap)| {
                assert!(
                    decap.stop(Signal::SIGTERM).success(),
                    "lb decap on {}",
                    BACKENDS[i]
                );
                let log = std::fs::read_to_string(decap_log(&self.files, i)).expect("log");
                log.lines()
                    .find_map(|line| line.split("decapsulated=").nth(1))
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                    .unwrap_or_else(|| panic!("no counts in the log of {}:\n{log}", BACKENDS[i]))
            })
            .collect()
    }
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

#[test]
fn backends_prepared_by_the_guide_serve_a_dsr_and_a_tunnel_vip_through_the_units_commands() {
    let mut lab = DeployLab::new();
    lab.check_no_backend_answers_arp_for_the_vip();
    lab.start_agent_as_the_unit_does();

    // lb detach refuses while the agent runs.
    let refused = lab.lb_in_lb(&["detach"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(
        describe(&refused).contains("is still running"),
        "{}",
        describe(&refused)
    );

    lab.check_both_vips_serve();
    lab.check_watch_prints_two_screens_to_a_pipe();
    lab.check_stop_for_good();
    let stripped = lab.stop_decaps();
    println!("tunnel packets stripped by lb-decap@eth0 on b1, b2: {stripped:?}");
    assert!(stripped.iter().all(|n| *n > 0), "{stripped:?}");
}
