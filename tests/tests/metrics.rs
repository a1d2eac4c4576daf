//! The agent's Prometheus endpoint, end to end: the real `lb run` in a namespace lab (a client,
//! the load balancer, two DSR backends) with `metrics = "127.0.0.1:9300"`, real connections,
//! and a scrape from inside the load balancer's namespace.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use lb_tests::netns::{
    agent::{AgentFiles, AgentProcess, Signal},
    connections,
    servers::{ask_name, NameServer},
    topology::Lan,
    wait_every,
};

const VIP: &str = "10.78.0.100";
const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9300";
const NAMES: [&str; 2] = ["b1", "b2"];
const CONNECTIONS: usize = 50;

struct MetricsLab {
    _servers: Vec<NameServer>,
    files: AgentFiles,
    lan: Lan,
}

impl MetricsLab {
    fn new(tag: &str, metrics: &str) -> Self {
        let lan = Lan::new(tag, &["client", "lb", "b1", "b2"]);
        let mut servers = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let backend = lan.host(2 + i);
            backend.ns.ip(&format!("addr add {VIP}/32 dev lo"));
            servers.push(NameServer::start(&backend.ns, PORT, name));
        }
        lan.host(0)
            .ns
            .ip(&format!("route add {VIP}/32 via {}", lan.host(1).ip));
        let files = AgentFiles::new(tag);
        let mut text = format!(
            "interface = \"eth0\"\nstate_dir = \"{}\"\nconntrack_size = 65536\nmetrics = \"{metrics}\"\n\n\
             [health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 3\n\n\
             [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nforward = \"dsr\"\n",
            files.state_dir.display()
        );
        for i in 0..NAMES.len() {
            text += &format!(
                "\n  [[vip.backend]]\n  address = \"{}\"\n",
                lan.host(2 + i).ip
            );
        }
        files.write_config(&text);
        Self {
            _servers: servers,
            files,
            lan,
        }
    }

    fn backend_ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.lan.host(2 + i).ip)
    }

    fn start_agent(&self) -> AgentProcess {
        let agent = AgentProcess::start(&self.lan.host(1).ns, &self.files, false);
        assert!(
            self.files
                .wait_log("datapath attached", 1, Duration::from_secs(15)),
            "agent did not attach:\n{}",
            self.files.log_text()
        );
        agent
    }

    /// `GET /metrics` from inside the load balancer's namespace: (status line, headers, body).
    fn scrape(&self) -> (String, String, String) {
        let address: SocketAddr = METRICS.parse().expect("metrics address");
        // Retried until the server answers (it listens once the agent has started it).
        let mut answer = Err(std::io::Error::other("not asked"));
        self.lan.host(1).ns.run(|| {
            wait_every(Duration::from_secs(5), Duration::from_millis(100), || {
                answer = get(address);
                answer.is_ok()
            })
        });
        let response = answer.unwrap_or_else(|error| {
            panic!(
                "scrape of {address} failed: {error}\n{}",
                self.files.log_text()
            )
        });
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head and body");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (
            status.to_owned(),
            headers.to_ascii_lowercase(),
            body.to_owned(),
        )
    }
}

/// A plain HTTP/1.0 request: the server answers and closes.
fn get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    String::from_utf8(response).map_err(std::io::Error::other)
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Checks the exposition format (OpenMetrics text, as `prometheus-client` writes it; a
/// Prometheus server scrapes it with the content type the agent sends) and returns the samples:
/// - `# HELP`, `# TYPE`, `# UNIT` lines name a family; `# EOF` ends the body;
/// - every other line is `name{label="value",...} value` (or `name value`) with a float value;
/// - every sample belongs to a family with a `# TYPE` line: counters' samples end in `_total`,
///   histograms' in `_bucket`, `_sum` or `_count`, gauges' are the family name.
fn parse_exposition(body: &str) -> Result<Vec<Sample>, String> {
    const TYPES: [&str; 8] = [
        "counter",
        "gauge",
        "histogram",
        "summary",
        "info",
        "stateset",
        "gaugehistogram",
        "unknown",
    ];
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut saw_eof = false;
    for line in body.lines() {
        if saw_eof {
            return Err(format!("line after # EOF: {line:?}"));
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind))
                    if valid_name(name) && TYPES.contains(&kind) =>
                {
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(format!("family {name} typed twice"));
                    }
                }
                (Some("HELP" | "UNIT"), Some(name), _) if valid_name(name) => {}
                (Some("EOF"), None, None) => saw_eof = true,
                _ => return Err(format!("bad comment line {line:?}")),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|e| format!("bad sample line {line:?}: {e}"))?;
        let family = family_of(&sample.name, &types)
            .ok_or_else(|| format!("sample {line:?} has no # TYPE"))?;
        if types[&family] == "counter" && (!sample.name.ends_with("_total") || sample.value < 0.0) {
            return Err(format!(
                "counter sample {line:?} does not end in _total or is negative"
            ));
        }
        samples.push(sample);
    }
    if !saw_eof {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}

/// The `# TYPE`d family a sample name belongs to.
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types
        .get(name)
        .is_some_and(|t| t == "gauge" || t == "unknown")
    {
        return Some(name.to_owned());
    }
    for (suffix, kinds) in [
        ("_total", &["counter"][..]),
        ("_created", &["counter", "histogram", "summary"][..]),
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
        ("_info", &["info"][..]),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| kinds.contains(&t.as_str())) {
                return Some(base.to_owned());
            }
        }
    }
    None
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find('=').ok_or("label without =")?;
            let key = &inner[..eq];
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            let mut chars = inner[eq + 1..].char_indices();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c @ ('\\' | '"')) => value.push(c),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    '"' => {
                        end = Some(eq + 1 + i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or("unterminated label value")?;
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            inner = &inner[end..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value.parse().map_err(|e| format!("value {value:?}: {e}"))?;
    // An optional timestamp may follow; exemplars are not used.
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<f64>()
            .map_err(|e| format!("timestamp {timestamp:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(samples, name, labels).as_slice() {
        [one] => one.value,
        other => panic!("expected one sample {name}{labels:?}, found {other:?}"),
    }
}

#[test]
fn metrics_endpoint_reflects_traffic_and_health() {
    let lab = MetricsLab::new("metrics", METRICS);
    let agent = lab.start_agent();
    assert!(
        lab.files
            .log_text()
            .contains(&format!("metrics: serving http://{METRICS}/metrics")),
        "{}",
        lab.files.log_text()
    );

    let vip = SocketAddr::new(VIP.parse().expect("vip"), PORT);
    let answers = connections::ask(
        &lab.lan.host(0).ns,
        vip,
        CONNECTIONS,
        Duration::from_secs(2),
    );
    let failures = connections::failures(&answers);
    assert!(
        failures.is_empty(),
        "{failures:?}\n{}",
        lab.files.log_text()
    );

    // A reload, so `lb_reloads_total{result="ok"}` has counted something.
    agent.signal(Signal::SIGHUP);
    assert!(
        lab.files
            .wait_log("reload (SIGHUP)", 1, Duration::from_secs(5)),
        "SIGHUP ignored:\n{}",
        lab.files.log_text()
    );

    let (status, headers, body) = lab.scrape();
    println!("{status}\n{headers}\n\n{body}");
    assert!(status.contains(" 200 "), "status {status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "headers {headers}"
    );
    let samples = parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));

    let web = [("vip", "web")];
    let new_flows = value(&samples, "lb_vip_new_flows_total", &web);
    assert!(
        new_flows >= CONNECTIONS as f64,
        "lb_vip_new_flows_total{{vip=\"web\"}} = {new_flows}"
    );
    assert!(value(&samples, "lb_vip_packets_total", &web) >= 3.0 * CONNECTIONS as f64);
    assert!(value(&samples, "lb_vip_bytes_total", &web) > 0.0);
    // The flow table by class: every connection made is tracked (closed ones as closing).
    assert_eq!(value(&samples, "lb_conntrack_capacity_flows", &[]), 65536.0);
    let tracked: f64 = ["established", "closing", "unconfirmed", "idle"]
        .iter()
        .map(|class| value(&samples, "lb_conntrack_flows", &[("class", class)]))
        .sum();
    assert!(tracked >= CONNECTIONS as f64, "{tracked} flows tracked");
    assert!(value(&samples, "lb_packets_total", &[("verdict", "tx")]) >= 3.0 * CONNECTIONS as f64);
    for reason in [
        "parse_error",
        "no_backend",
        "too_big",
        "no_headroom",
        "redirect_failed",
    ] {
        assert_eq!(
            find(&samples, "lb_dropped_packets_total", &[("reason", reason)]).len(),
            1,
            "drop reason {reason}"
        );
    }
    assert_eq!(
        find(
            &samples,
            "lb_passed_packets_total",
            &[("reason", "not_vip")]
        )
        .len(),
        1
    );

    let backend_packets: f64 = find(&samples, "lb_backend_packets_total", &web)
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(
        backend_packets >= 150.0,
        "backend packets {backend_packets}"
    );
    for i in 0..NAMES.len() {
        let address = lab.backend_ip(i).to_string();
        let labels = [("vip", "web"), ("backend", address.as_str())];
        assert_eq!(
            value(&samples, "lb_backend_up", &labels),
            1.0,
            "backend {address} up"
        );
        assert_eq!(
            value(&samples, "lb_backend_draining", &labels),
            0.0,
            "backend {address} not draining"
        );
        let checks = value(&samples, "lb_health_check_duration_seconds_count", &labels);
        assert!(checks > 0.0, "health checks of {address}: {checks}");
        let inf = labels
            .iter()
            .copied()
            .chain([("le", "+Inf")])
            .collect::<Vec<_>>();
        assert_eq!(
            value(&samples, "lb_health_check_duration_seconds_bucket", &inf),
            checks
        );
        assert!(
            value(&samples, "lb_backend_new_flows_total", &labels) > 0.0,
            "both backends got flows"
        );
        for (target, expected) in [("vip", 1.0), ("backend", 0.0)] {
            let labels = [labels[0], labels[1], ("target", target)];
            assert_eq!(
                value(&samples, "lb_backend_check_target", &labels),
                expected,
                "{address} checked through the vip"
            );
        }
    }
    // Checks travel the serving path, counted apart from clients' packets.
    assert!(value(&samples, "lb_check_packets_total", &[("action", "steered")]) > 0.0);
    assert_eq!(
        value(&samples, "lb_check_packets_total", &[("action", "no_path")]),
        0.0
    );
    assert_eq!(
        find(&samples, "lb_backend_up", &[]).len(),
        NAMES.len(),
        "only configured backends are labelled"
    );
    assert_eq!(
        find(&samples, "lb_backend_active_flows", &[]).len(),
        NAMES.len(),
        "every backend's active connections"
    );
    assert!(value(&samples, "lb_ring_rebuilds_total", &web) >= 1.0);
    assert!(value(&samples, "lb_reloads_total", &[("result", "ok")]) >= 1.0);
    assert_eq!(
        value(&samples, "lb_reloads_total", &[("result", "failed")]),
        0.0
    );
}

#[test]
fn the_exposition_checker_rejects_malformed_bodies() {
    let good = "# HELP lb_x X.\n# TYPE lb_x counter\nlb_x_total{a=\"1\",b=\"q\\\"\"} 3\n# EOF\n";
    assert_eq!(parse_exposition(good).expect("valid")[0].labels["b"], "q\"");
    for bad in [
        "# TYPE lb_x counter\nlb_x 3\n# EOF\n",
        "lb_y 1\n# EOF\n",
        "# TYPE lb_x gauge\nlb_x{a=1} 3\n# EOF\n",
        "# TYPE lb_x gauge\nlb_x three\n# EOF\n",
        "# TYPE lb_x gauge\nlb_x 3\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn an_address_that_cannot_be_bound_leaves_the_agent_running_without_metrics() {
    // Not an address of the load balancer's namespace: bind fails with EADDRNOTAVAIL.
    let lab = MetricsLab::new("nometrics", "10.79.0.1:9300");
    let _agent = lab.start_agent();
    let log = lab.files.log_text();
    assert!(
        log.contains("metrics: cannot listen on 10.79.0.1:9300"),
        "{log}"
    );
    let vip = SocketAddr::new(VIP.parse().expect("vip"), PORT);
    let answer = lab
        .lan
        .host(0)
        .ns
        .run(|| ask_name(vip, Duration::from_secs(2)));
    assert!(
        answer.is_ok_and(|name| NAMES.contains(&name.as_str())),
        "{}",
        lab.files.log_text()
    );
}
