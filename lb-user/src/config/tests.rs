//! Unit tests of the configuration parser: every key, every default, every error location.

use super::*;
use lb_common::maps::{DEFAULT_CONNTRACK_SIZE, MAX_VIPS};

fn ok(text: &str) -> Config {
    parse(Path::new("test.toml"), text).unwrap_or_else(|error| panic!("{error}"))
}

fn error(text: &str) -> ConfigError {
    match parse(Path::new("test.toml"), text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error,
    }
}

/// Asserts the error's line, key and that its message contains `message`.
#[track_caller]
fn assert_error(text: &str, line: usize, key: &str, message: &str) -> ConfigError {
    let error = error(text);
    assert_eq!(error.file, Path::new("test.toml"), "{error}");
    assert_eq!(error.line, Some(line), "{error}");
    assert!(error.column.is_some(), "{error}");
    assert_eq!(error.key.as_deref(), Some(key), "{error}");
    assert!(
        error.message.contains(message),
        "{error}\nexpected: {message}"
    );
    error
}

const HEAD: &str = "interface = \"eth0\"\n";

/// A config with one VIP `web` on 10.0.0.100:80 and one backend; `vip` and `backend` are
/// extra lines for the VIP table and the backend table.
fn one_vip(top: &str, vip: &str, backend: &str) -> String {
    format!(
        "{HEAD}{top}\n[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n{vip}\n\
         [[vip.backend]]\naddress = \"10.0.0.11\"\n{backend}\n"
    )
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

const FULL: &str = r#"
interface = "eth0"
xdp_mode = "native"
tunnel_source = ["192.0.2.1", "2001:db8::1"]
table_size = 251
conntrack_size = 4096
state_dir = "/run/lb"
metrics = "127.0.0.1:9300"

[conntrack]
tcp_timeout = "10m"
udp_timeout = "45s"
tcp_closing_timeout = "20s"

[health]
interval = "2s"
timeout = "1s"
rise = 4
port = 8080

[[vip]]
name = "web"
address = "10.0.0.100"
port = 80
health = { timeout = "300ms", fall = 5 }

  [[vip.backend]]
  address = "10.0.0.11"

  [[vip.backend]]
  address = "10.0.0.12"
  weight = 0
  health = { interval = "1s", port = 8081 }

[[vip]]
name = "dns.v6"
address = "2001:db8::53"
port = 0
protocol = "udp"
forward = "tunnel"
on_all_down = "fail-open"

  [[vip.backend]]
  address = "192.168.0.1"
  weight = 10000

[[vip]]
name = "api_2"
address = "10.0.0.100"
port = 443

  [[vip.backend]]
  address = "10.0.0.11"
  weight = 3
  health = { port = 9000, rise = 1 }
"#;

#[test]
fn full_config() {
    let config = ok(FULL);
    let global = HealthSettings {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        rise: 4,
        fall: 3,
        port: 8080,
        check: CheckKind::Tcp,
        slow_start: Duration::ZERO,
        target: CheckTarget::Vip,
    };
    let web = HealthSettings {
        timeout: Duration::from_millis(300),
        fall: 5,
        ..global.clone()
    };
    let expected = Config {
        fixed: FixedConfig {
            interface: "eth0".into(),
            xdp_mode: AttachMode::Native,
            conntrack_size: 4096,
            state_dir: "/run/lb".into(),
            metrics: Some("127.0.0.1:9300".parse().unwrap()),
        },
        live: LiveConfig {
            tunnel_source: vec![ip("192.0.2.1"), ip("2001:db8::1")],
            table_size: 251,
            conntrack: ConntrackConfig {
                tcp_timeout: Duration::from_secs(600),
                udp_timeout: Duration::from_secs(45),
                tcp_closing_timeout: Duration::from_secs(20),
            },
            announce: None,
            vips: vec![
                VipConfig {
                    name: "web".into(),
                    address: ip("10.0.0.100"),
                    port: 80,
                    protocol: Protocol::Tcp,
                    forward: ForwardMode::Dsr,
                    on_all_down: OnAllDown::Drop,
                    balance: Balance::Maglev,
                    second_chance: crate::config::DEFAULT_SECOND_CHANCE,
                    announce: false,
                    backends: vec![
                        BackendConfig {
                            address: ip("10.0.0.11"),
                            weight: 1,
                            health: web.clone(),
                        },
                        BackendConfig {
                            address: ip("10.0.0.12"),
                            weight: 0,
                            health: HealthSettings {
                                interval: Duration::from_secs(1),
                                port: 8081,
                                ..web
                            },
                        },
                    ],
                },
                VipConfig {
                    name: "dns.v6".into(),
                    address: ip("2001:db8::53"),
                    port: 0,
                    protocol: Protocol::Udp,
                    forward: ForwardMode::Tunnel,
                    on_all_down: OnAllDown::FailOpen,
                    balance: Balance::Maglev,
                    second_chance: crate::config::DEFAULT_SECOND_CHANCE,
                    announce: false,
                    backends: vec![BackendConfig {
                        address: ip("192.168.0.1"),
                        weight: 10000,
                        health: global.clone(),
                    }],
                },
                VipConfig {
                    name: "api_2".into(),
                    address: ip("10.0.0.100"),
                    port: 443,
                    protocol: Protocol::Tcp,
                    forward: ForwardMode::Dsr,
                    on_all_down: OnAllDown::Drop,
                    balance: Balance::Maglev,
                    second_chance: crate::config::DEFAULT_SECOND_CHANCE,
                    announce: false,
                    backends: vec![BackendConfig {
                        address: ip("10.0.0.11"),
                        weight: 3,
                        health: HealthSettings {
                            port: 9000,
                            rise: 1,
                            ..global
                        },
                    }],
                },
            ],
        },
    };
    assert_eq!(config, expected);
}

#[test]
fn defaults() {
    let config = ok(&one_vip("", "", ""));
    assert_eq!(config.fixed.xdp_mode, AttachMode::Auto);
    assert!(config.live.tunnel_source.is_empty());
    assert_eq!(config.live.table_size, 65537);
    assert_eq!(config.fixed.conntrack_size, DEFAULT_CONNTRACK_SIZE);
    assert_eq!(config.live.conntrack, ConntrackConfig::default());
    assert_eq!(config.live.conntrack.tcp_timeout, Duration::from_secs(900));
    assert_eq!(config.fixed.state_dir, Path::new("/sys/fs/bpf/lb"));
    assert_eq!(config.fixed.metrics, None);
    let vip = &config.live.vips[0];
    assert_eq!(
        (vip.protocol, vip.forward, vip.on_all_down),
        (Protocol::Tcp, ForwardMode::Dsr, OnAllDown::Drop)
    );
    assert_eq!(vip.backends[0].weight, 1);
    assert_eq!(
        vip.backends[0].health,
        HealthSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            port: 80,
            check: CheckKind::Tcp,
            slow_start: Duration::ZERO,
            target: CheckTarget::Vip,
        }
    );
}

#[test]
fn minimal_config() {
    let config = ok("interface = \"eth0\"\n");
    assert_eq!(config.fixed.interface, "eth0");
    assert!(config.live.vips.is_empty());
    let config = ok("interface = \"eth0\"\ntunnel_source = \"2001:db8::1\"\n");
    assert_eq!(config.live.tunnel_source, vec![ip("2001:db8::1")]);
    // A backend of another family through a tunnel, and inline tables.
    let config = ok(&format!(
        "{HEAD}vip = [{{ name = \"a\", address = \"10.0.0.1\", port = 1, forward = \
         \"tunnel\", backend = [{{ address = \"2001:db8::2\" }}] }}]\n"
    ));
    assert_eq!(config.live.vips[0].backends[0].address, ip("2001:db8::2"));
}

#[test]
fn display() {
    let error = ConfigError {
        file: "demo.toml".into(),
        line: Some(14),
        column: Some(11),
        key: Some("vip[1].backend[0].weight".into()),
        message: "weight must be between 0 and 10000".into(),
    };
    assert_eq!(
        error.to_string(),
        "demo.toml:14:11: vip[1].backend[0].weight: weight must be between 0 and 10000"
    );
    let error = ConfigError {
        line: Some(3),
        column: None,
        key: None,
        ..error
    };
    assert_eq!(
        error.to_string(),
        "demo.toml:3: weight must be between 0 and 10000"
    );
}

#[test]
fn unreadable_file() {
    let error = load(Path::new("/nonexistent/demo.toml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot read /nonexistent/demo.toml: No such file or directory"
    );
    assert_eq!((error.line, error.key), (None, None));
}

#[test]
fn load_reads_the_file() {
    let path = std::env::temp_dir().join(format!("lb-config-{}.toml", std::process::id()));
    std::fs::write(&path, one_vip("", "", "weight = 20000")).unwrap();
    let error = load(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(error.file, path);
    assert_eq!(
        error.to_string(),
        format!(
            "{}:10:10: vip[0].backend[0].weight: weight must be between 0 and 10000",
            path.display()
        )
    );
}

#[test]
fn syntax_error() {
    let error = error("interface = \"eth0\"\n[health\n");
    assert_eq!(error.line, Some(2));
    assert_eq!(error.column, Some(8));
    assert!(error.message.contains("expected `]`"), "{error}");
    assert!(error.to_string().starts_with("test.toml:2:8: "), "{error}");
}

#[test]
fn type_errors() {
    assert_error(
        &format!("{HEAD}table_size = \"big\"\n"),
        2,
        "table_size",
        "invalid type",
    );
    assert_error(
        &one_vip("", "", "weight = -1"),
        10,
        "vip[0].backend[0].weight",
        "u32",
    );
    assert_error(
        &one_vip("", "", "health = { port = 70000 }"),
        10,
        "vip[0].backend[0].health.port",
        "u16",
    );
    assert_error(
        &format!("{HEAD}tunnel_source = 3\n"),
        2,
        "tunnel_source",
        "IP address",
    );
}

#[test]
fn missing_keys() {
    assert_error(
        "table_size = 3\n",
        1,
        "interface",
        "missing field `interface`",
    );
    let error = assert_error(
        &format!("{HEAD}[[vip]]\nname = \"a\"\nport = 1\n"),
        2,
        "vip[0].address",
        "missing field `address`",
    );
    assert_eq!(error.column, Some(1));
    assert_error(
        &one_vip("", "", "").replace("address = \"10.0.0.11\"", "weight = 2"),
        8,
        "vip[0].backend[0].address",
        "missing field `address`",
    );
}

#[test]
fn unknown_keys() {
    assert_error(
        &format!("{HEAD}bogus = 1\n"),
        2,
        "bogus",
        "unknown field `bogus`",
    );
    assert_error(
        &format!("{HEAD}[health]\nrize = 1\n"),
        3,
        "health.rize",
        "unknown field",
    );
    assert_error(
        &one_vip("", "protcol = \"udp\"", ""),
        7,
        "vip[0].protcol",
        "unknown field",
    );
    let error = assert_error(
        &one_vip("", "", "wieght = 2"),
        10,
        "vip[0].backend[0].wieght",
        "unknown field",
    );
    assert_eq!(error.column, Some(1));
    assert_error(
        &one_vip("", "health = { prot = 1 }", ""),
        7,
        "vip[0].health.prot",
        "unknown field",
    );
}

#[test]
fn table_size_not_prime() {
    let error = assert_error(
        &format!("{HEAD}table_size = 65536\n"),
        2,
        "table_size",
        "65536 is not prime (try 65537 or 65521)",
    );
    assert_eq!(
        error.to_string(),
        "test.toml:2:14: table_size: 65536 is not prime (try 65537 or 65521)"
    );
}

#[test]
fn table_size_too_small() {
    assert_error(
        &format!("{HEAD}table_size = 1\n"),
        2,
        "table_size",
        "at least 2",
    );
    let mut text =
        format!("{HEAD}table_size = 29\n[[vip]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 1\n");
    for backend in 1..=3 {
        text.push_str(&format!(
            "[[vip.backend]]\naddress = \"10.0.1.{backend}\"\n"
        ));
    }
    assert_error(
        &text,
        2,
        "table_size",
        "too small for VIP \"a\" with 3 backends: Maglev needs at least 10 × 3 = 30 slots (try 31)",
    );
    ok(&text.replace("= 29", "= 31"));
}

#[test]
fn default_table_size_too_small() {
    let mut text = format!("{HEAD}[[vip]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 1\n");
    for backend in 0..6554 {
        text.push_str(&format!(
            "[[vip.backend]]\naddress = \"10.1.{}.{}\"\n",
            backend / 256,
            backend % 256
        ));
    }
    assert_error(
        &text,
        2,
        "vip[0]",
        "the default table_size 65537 is too small",
    );
}

#[test]
fn conntrack_timeouts() {
    assert_error(
        &format!("{HEAD}[conntrack]\ntcp_timeout = \"soon\"\n"),
        3,
        "conntrack.tcp_timeout",
        "invalid duration \"soon\"",
    );
    assert_error(
        &format!("{HEAD}[conntrack]\nudp_timeout = \"25h\"\n"),
        3,
        "conntrack.udp_timeout",
        "longer than a day",
    );
    assert_error(
        &format!("{HEAD}[conntrack]\ntcp_timeout_s = \"1m\"\n"),
        3,
        "conntrack.tcp_timeout_s",
        "unknown field `tcp_timeout_s`",
    );
    let config = ok(&format!("{HEAD}[conntrack]\nudp_timeout = \"0s\"\n"));
    assert_eq!(
        config.live.conntrack.udp_timeout,
        Duration::ZERO,
        "0s: never protected"
    );
    assert_eq!(
        config.live.conntrack.tcp_timeout,
        ConntrackConfig::default().tcp_timeout
    );
}

#[test]
fn conntrack_size_too_small() {
    assert_error(
        &format!("{HEAD}conntrack_size = 1023\n"),
        2,
        "conntrack_size",
        "at least 1024",
    );
    ok(&format!("{HEAD}conntrack_size = 1024\n"));
}

#[test]
fn state_dir_relative() {
    assert_error(
        &format!("{HEAD}state_dir = \"lb\"\n"),
        2,
        "state_dir",
        "absolute path",
    );
}

#[test]
fn interface_empty() {
    assert_error("interface = \"\"\n", 1, "interface", "must not be empty");
    assert_error(
        "interface = \"a-very-long-interface\"\n",
        1,
        "interface",
        "longer than 15",
    );
}

#[test]
fn too_many_vips() {
    let mut text = HEAD.to_owned();
    for vip in 0..=MAX_VIPS {
        text.push_str(&format!(
            "[[vip]]\nname = \"v{vip}\"\naddress = \"10.0.0.1\"\nport = {}\nbackend = [{{ address = \"10.0.1.1\" }}]\n",
            vip + 1
        ));
    }
    let line = 2 + 5 * MAX_VIPS as usize;
    assert_error(&text, line, "vip[1024]", "too many VIPs: at most 1024");
}

#[test]
fn too_many_backends() {
    let mut text = HEAD.to_owned();
    for vip in 0..17 {
        text.push_str(&format!(
            "[[vip]]\nname = \"v{vip}\"\naddress = \"10.0.0.1\"\nport = {}\n",
            vip + 1
        ));
        for backend in 0..1000 {
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"10.1.{}.{}\"\n",
                backend / 256,
                backend % 256
            ));
        }
    }
    let line = 2 + 16 * 2004 + 4 + 384 * 2;
    assert_error(
        &text,
        line,
        "vip[16].backend[384]",
        "too many backends: at most 16384",
    );
}

#[test]
fn vip_name() {
    assert_error(
        &one_vip("", "", "").replace("\"web\"", "\"\""),
        4,
        "vip[0].name",
        "VIP name must not be empty",
    );
    assert_error(
        &one_vip("", "", "").replace("\"web\"", "\"we b\""),
        4,
        "vip[0].name",
        "invalid VIP name \"we b\"",
    );
}

#[test]
fn duplicate_vip_name() {
    let text = format!(
        "{}[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 81\n",
        one_vip("", "", "")
    );
    assert_error(
        &text,
        12,
        "vip[1].name",
        "duplicate VIP name \"web\" (also vip[0].name)",
    );
}

#[test]
fn duplicate_vip() {
    let text = format!(
        "{}[[vip]]\nname = \"web2\"\naddress = \"10.0.0.100\"\nport = 80\nprotocol = \"tcp\"\n",
        one_vip("", "", "")
    );
    assert_error(
        &text,
        13,
        "vip[1].address",
        "VIP \"web2\" has the same address, port and protocol (10.0.0.100:80/tcp) as VIP \"web\" (vip[0])",
    );
    // Another protocol is another VIP.
    let text = format!(
        "{}[[vip]]\nname = \"web2\"\naddress = \"10.0.0.100\"\nport = 80\nprotocol = \"udp\"\nbackend = [{{ address = \"10.0.0.1\" }}]\n",
        one_vip("", "", "")
    );
    ok(&text);
}

#[test]
fn duplicate_backend() {
    let text = format!(
        "{}[[vip.backend]]\naddress = \"10.0.0.11\"\n",
        one_vip("", "", "")
    );
    assert_error(
        &text,
        12,
        "vip[0].backend[1].address",
        "duplicate backend address 10.0.0.11 (also vip[0].backend[0])",
    );
}

#[test]
fn vip_without_backends() {
    let text = format!("{HEAD}[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n");
    assert_error(&text, 2, "vip[0]", "VIP \"web\" has no backends");
}

#[test]
fn weight_too_large() {
    let error = assert_error(
        &one_vip("", "", "weight = 10001"),
        10,
        "vip[0].backend[0].weight",
        "weight must be between 0 and 10000",
    );
    assert_eq!(error.column, Some(10));
}

#[test]
fn dsr_family() {
    let text = one_vip("", "", "").replace("10.0.0.11", "2001:db8::11");
    assert_error(
        &text,
        9,
        "vip[0].backend[0].address",
        "dsr cannot change the address family: use forward = \"tunnel\"",
    );
    ok(&one_vip("", "forward = \"tunnel\"", "").replace("10.0.0.11", "2001:db8::11"));
}

#[test]
fn port_zero_needs_a_health_port() {
    let text = one_vip("", "", "").replace("port = 80", "port = 0");
    assert_error(
        &text,
        8,
        "vip[0].backend[0]",
        "VIP \"web\" has port 0 (all ports): backend 10.0.0.11 needs a health port",
    );
    // From any level.
    let text = one_vip("[health]\nport = 1", "", "").replace("port = 80", "port = 0");
    assert_eq!(ok(&text).live.vips[0].backends[0].health.port, 1);
    let text = one_vip("", "health = { port = 2 }", "").replace("port = 80", "port = 0");
    assert_eq!(ok(&text).live.vips[0].backends[0].health.port, 2);
    let text = one_vip("", "", "health = { port = 3 }").replace("port = 80", "port = 0");
    assert_eq!(ok(&text).live.vips[0].backends[0].health.port, 3);
}

#[test]
fn health_values() {
    assert_error(
        &one_vip("[health]\ninterval = \"0s\"", "", ""),
        3,
        "health.interval",
        "interval must be above 0",
    );
    assert_error(
        &one_vip("", "health = { timeout = \"0ms\" }", ""),
        7,
        "vip[0].health.timeout",
        "timeout must be above 0",
    );
    assert_error(
        &one_vip("", "", "health = { rise = 0 }"),
        10,
        "vip[0].backend[0].health.rise",
        "rise must be at least 1",
    );
    assert_error(
        &one_vip("[health]\nfall = 0", "", ""),
        3,
        "health.fall",
        "fall must be at least 1",
    );
    assert_error(
        &one_vip("[health]\nport = 0", "", ""),
        3,
        "health.port",
        "health port must not be 0",
    );
    assert_error(
        &one_vip("[health]\ninterval = \"1 fortnight\"", "", ""),
        3,
        "health.interval",
        "invalid duration \"1 fortnight\"",
    );
}

#[test]
fn timeout_longer_than_interval() {
    assert_error(
        &one_vip("[health]\ntimeout = \"2s\"", "", ""),
        3,
        "health.timeout",
        "timeout 2s is longer than interval 1s",
    );
    // The key closest to the backend is blamed.
    assert_error(
        &one_vip(
            "[health]\ntimeout = \"800ms\"",
            "",
            "health = { interval = \"500ms\" }",
        ),
        11,
        "vip[0].backend[0].health.interval",
        "timeout 800ms is longer than interval 500ms",
    );
    assert_error(
        &one_vip(
            "[health]\ninterval = \"5s\"",
            "health = { timeout = \"6s\" }",
            "",
        ),
        8,
        "vip[0].health.timeout",
        "timeout 6s is longer than interval 5s",
    );
    ok(&one_vip("[health]\ninterval = \"500ms\"", "", ""));
}

#[test]
fn tunnel_source() {
    assert_error(
        &format!("{HEAD}tunnel_source = [\"192.0.2.1\", \"2001:db8::1\", \"192.0.2.2\"]\n"),
        2,
        "tunnel_source[2]",
        "tunnel_source has 3 addresses: give at most two, one IPv4 and one IPv6",
    );
    let error = assert_error(
        &format!("{HEAD}tunnel_source = [\"192.0.2.1\", \"192.0.2.2\"]\n"),
        2,
        "tunnel_source[1]",
        "192.0.2.2 and 192.0.2.1 are both IPv4",
    );
    assert_eq!(error.column, Some(31));
    assert_error(
        &format!("{HEAD}tunnel_source = \"192.0.2\"\n"),
        2,
        "tunnel_source",
        "invalid IP address \"192.0.2\"",
    );
    assert!(ok(&format!("{HEAD}tunnel_source = []\n"))
        .live
        .tunnel_source
        .is_empty());
}

#[test]
fn invalid_enums() {
    assert_error(
        &format!("{HEAD}xdp_mode = \"fast\"\n"),
        2,
        "xdp_mode",
        "invalid xdp_mode \"fast\": expected one of auto, native, generic",
    );
    assert_error(
        &one_vip("", "protocol = \"sctp\"", ""),
        7,
        "vip[0].protocol",
        "invalid protocol \"sctp\": expected one of tcp, udp",
    );
    assert_error(
        &one_vip("", "forward = \"nat\"", ""),
        7,
        "vip[0].forward",
        "expected one of dsr, tunnel",
    );
    assert_error(
        &one_vip("", "on_all_down = \"open\"", ""),
        7,
        "vip[0].on_all_down",
        "expected one of drop, fail-open",
    );
}

#[test]
fn invalid_addresses() {
    assert_error(
        &format!("{HEAD}metrics = \"localhost:9300\"\n"),
        2,
        "metrics",
        "invalid socket address \"localhost:9300\"",
    );
    assert_error(
        &one_vip("", "", "").replace("10.0.0.100", "10.0.0"),
        5,
        "vip[0].address",
        "invalid IP address \"10.0.0\"",
    );
    assert_error(
        &one_vip("", "", "").replace("10.0.0.11", "backend1"),
        9,
        "vip[0].backend[0].address",
        "invalid IP address \"backend1\"",
    );
}

#[test]
fn first_error_wins() {
    let text = one_vip("table_size = 4", "", "weight = 20000");
    assert_error(&text, 2, "table_size", "4 is not prime (try 5 or 3)");
}

#[test]
fn announce() {
    let config = ok(&one_vip("[announce]", "", ""));
    assert_eq!(
        config.live.announce,
        Some(AnnounceConfig {
            table: DEFAULT_ANNOUNCE_TABLE,
            protocol: DEFAULT_ANNOUNCE_PROTOCOL,
            drain: DEFAULT_ANNOUNCE_DRAIN,
        })
    );
    assert!(
        config.live.vips[0].announce,
        "announced by default with [announce]"
    );
    let config = ok(&one_vip(
        "[announce]\ntable = 100\nprotocol = 99\ndrain = \"0s\"",
        "announce = false",
        "",
    ));
    let announce = config.live.announce.expect("announce");
    assert_eq!((announce.table, announce.protocol), (100, 99));
    assert!(announce.drain.is_zero());
    assert!(!config.live.vips[0].announce);
    let quiet = ok(&one_vip("", "announce = true", ""));
    assert!(quiet.live.announce.is_none());
    assert!(
        !quiet.live.vips[0].announce,
        "nothing is announced without [announce]"
    );
    assert_error(
        &one_vip("[announce]\ntable = 254", "", ""),
        3,
        "announce.table",
        "use 1 to 252",
    );
    assert_error(
        &one_vip("[announce]\nprotocol = 4", "", ""),
        3,
        "announce.protocol",
        "use 5 to 255",
    );
    assert_error(
        &one_vip("[announce]\ndrain = \"soon\"", "", ""),
        3,
        "announce.drain",
        "invalid duration",
    );
}

#[test]
fn http_checks_and_slow_start() {
    let config = ok(&one_vip(
        "[health]\ntype = \"http\"\npath = \"/healthz\"\nslow_start = \"30s\"",
        "health = { expect = [200, 204] }",
        "health = { host = \"www.example.com\" }",
    ));
    let health = &config.live.vips[0].backends[0].health;
    assert_eq!(health.slow_start, Duration::from_secs(30));
    let CheckKind::Http(http) = &health.check else {
        panic!("{health:?}");
    };
    assert_eq!(http.path, "/healthz");
    assert_eq!(http.host.as_deref(), Some("www.example.com"));
    assert!(http.accepts(204) && !http.accepts(201));
    let any = ok(&one_vip("[health]\ntype = \"http\"", "", ""));
    let CheckKind::Http(http) = &any.live.vips[0].backends[0].health.check else {
        panic!("http");
    };
    assert_eq!(http.path, "/");
    assert!(http.accepts(200) && http.accepts(299) && !http.accepts(503));
    // The backend goes back to TCP: the inherited HTTP keys are not used.
    let tcp = ok(&one_vip(
        "[health]\ntype = \"http\"\npath = \"/x\"",
        "",
        "health = { type = \"tcp\" }",
    ));
    assert_eq!(tcp.live.vips[0].backends[0].health.check, CheckKind::Tcp);
    // A backend that must see whole connections: inherited from [health], overridden per VIP.
    let connect = ok(&one_vip(
        "[health]\ntype = \"tcp-connect\"",
        "health = { type = \"tcp\" }",
        "",
    ));
    assert_eq!(
        connect.live.vips[0].backends[0].health.check,
        CheckKind::Tcp
    );
    let connect = ok(&one_vip("[health]\ntype = \"tcp-connect\"", "", ""));
    assert_eq!(
        connect.live.vips[0].backends[0].health.check,
        CheckKind::TcpConnect
    );
    assert_error(
        &one_vip("[health]\npath = \"/healthz\"", "", ""),
        3,
        "health.path",
        "add type = \"http\"",
    );
    assert_error(
        &one_vip("[health]\ntype = \"udp\"", "", ""),
        3,
        "health.type",
        "expected one of tcp, tcp-connect, http",
    );
    assert_error(
        &one_vip("[health]\ntype = \"http\"\npath = \"healthz\"", "", ""),
        4,
        "health.path",
        "must start with '/'",
    );
    assert_error(
        &one_vip("[health]\ntype = \"http\"\npath = \"/a b\"", "", ""),
        4,
        "health.path",
        "no spaces",
    );
    assert_error(
        &one_vip("[health]\ntype = \"http\"\nexpect = [200, 700]", "", ""),
        4,
        "health.expect[1]",
        "not an HTTP status code",
    );
    assert_error(
        &one_vip("[health]\ntype = \"http\"\nexpect = []", "", ""),
        4,
        "health.expect",
        "at least one status code",
    );
    assert_error(
        &one_vip("[health]\nslow_start = \"later\"", "", ""),
        3,
        "health.slow_start",
        "invalid duration",
    );
}

#[test]
fn restart_only_changes_are_named_with_old_and_new_values() {
    let vips = "[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n\
                [[vip.backend]]\naddress = \"10.0.0.11\"\n";
    let base = ok(&format!("interface = \"eth0\"\n{vips}"));
    let changed = ok(&format!(
        "interface = \"eth1\"\nconntrack_size = 8192\nmetrics = \"127.0.0.1:9300\"\n\
         table_size = 251\n{vips}"
    ));
    assert_eq!(base.fixed.changes(&base.fixed), Vec::<String>::new());
    assert_eq!(
        base.fixed.changes(&changed.fixed),
        [
            "interface (eth0 -> eth1)".to_owned(),
            format!("conntrack_size ({DEFAULT_CONNTRACK_SIZE} -> 8192)"),
            "metrics (none -> 127.0.0.1:9300)".to_owned(),
        ]
    );
    assert_ne!(base.live, changed.live, "table_size reloads");
}

#[test]
fn a_load_aware_dsr_vip_announced_by_routing_is_warned_about() {
    let text = |balance: &str, forward: &str, announce: &str| {
        format!(
            "interface = \"eth0\"\n{announce}\n[[vip]]\nname = \"web\"\naddress = \"10.0.0.1\"\n\
             port = 80\nforward = \"{forward}\"\nbalance = \"{balance}\"\n\
             [[vip.backend]]\naddress = \"10.0.0.11\"\n"
        )
    };
    let warnings = |text: String| {
        parse(std::path::Path::new("t.toml"), &text)
            .expect("config")
            .live
            .warnings()
    };
    let warned = warnings(text("response-time", "dsr", "[announce]"));
    assert_eq!(warned.len(), 2);
    assert!(warned[0].starts_with("vip web: balance = \"response-time\" with forward = \"dsr\""));
    assert!(warned[1].starts_with("vip web: forward = \"dsr\" with [announce]: second chance"));
    let dsr = warnings(text("maglev", "dsr", "[announce]"));
    assert_eq!(dsr.len(), 1, "second chance needs a tunnel");
    assert!(warnings(text("response-time", "tunnel", "[announce]")).is_empty());
    assert!(warnings(text("response-time", "dsr", "")).is_empty());
    let warned = warnings(text("least-conn", "dsr", "[announce]"));
    assert_eq!(warned.len(), 2);
    assert!(warned[0].starts_with("vip web: balance = \"least-conn\" with forward = \"dsr\""));
    assert!(warnings(text("least-conn", "tunnel", "[announce]")).is_empty());
    let error = parse(std::path::Path::new("t.toml"), &text("fewest", "dsr", ""))
        .expect_err("unknown balance");
    assert!(
        error.to_string().contains(
            "invalid balance \"fewest\": expected one of maglev, response-time, least-conn"
        ),
        "{error}"
    );
}
