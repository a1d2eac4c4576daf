//! The examples and notes at the end of each command's `--help` (and of its man page, which
//! clap_mangen renders from the same text). Every command has at least one example; the tests
//! check it.

/// `lb --help`'s description (and `lb(8)`'s).
pub const ABOUT: &str = "\
Layer-4 XDP load balancer.

lb forwards TCP and UDP packets addressed to virtual IPs (VIPs) to healthy backends, in an XDP
program on the gateway's NIC: Maglev consistent hashing picks a flow's backend and a
connection-tracking table keeps it there. Backends answer clients directly (dsr) or receive the
packets in an IP-in-IP tunnel (tunnel, stripped on the backend by `lb decap`). `lb run` is the
agent: it health-checks the backends and programs the datapath; the other commands read or
remove what it pinned.";

/// `lb --help`: what to run first, the exit codes, colours, where the guide is.
pub const LB: &str = "\
Examples:
  lb check --config /etc/lb/lb.toml     validate a configuration
  systemctl start lb                    the packaged service (lb run --keep-datapath)
  lb status                             datapath, agent, each VIP's backends
  lb stats --watch 1                    rates, redrawn every second

Exit status: 0 success; 1 failure (the error is on stderr, with what to do); 2 usage error
(unknown option, bad value).
Output has no colours or terminal escapes when NO_COLOR is set or it is not a terminal.
The operator's guide: /usr/share/doc/lb/DEPLOY.md (docs/DEPLOY.md in the source).";

/// `lb run --help`.
pub const RUN: &str = "\
Example:
  lb run --config /etc/lb/lb.toml --keep-datapath

Reloads on SIGHUP and whenever the file changes (an invalid file is logged and ignored).
SIGTERM/SIGINT stop it; without --keep-datapath that also detaches the datapath.";

/// `lb stats --help`.
pub const STATS: &str = "\
Examples:
  lb stats
  lb stats --watch 1                    rates every second (also 500ms, 2s, 1m)
  lb stats --watch 1 --count 5 --json   five samples, one JSON object per line";

/// `lb status --help`.
pub const STATUS: &str = "\
Examples:
  lb status
  lb status --state-dir /sys/fs/bpf/lb --json
  lb status --check                     exit 0 only while lb can serve (for supervisors)";

/// `lb backend --help`.
pub const BACKEND: &str = "\
Examples:
  lb backend drain --vip web --backend 192.0.2.12     no new flows; tracked ones stay
  lb backend disable --vip web --backend 192.0.2.12   maintenance: out of the ring
  lb backend enable --vip web --backend 192.0.2.12    back, with slow start";

/// `lb explain --help`.
pub const EXPLAIN: &str = "\
Example:
  lb explain --vip 192.0.2.10:80/tcp --client 198.51.100.7:40000";

/// `lb check --help`.
pub const CHECK: &str = "\
Example:
  lb check --config /etc/lb/lb.toml.new && mv /etc/lb/lb.toml.new /etc/lb/lb.toml";

/// `lb decap --help`.
pub const DECAP: &str = "\
Examples:
  lb decap --interface eth0
  lb decap --interface eth0 --metrics 127.0.0.1:9301   counts at /metrics
  systemctl enable --now lb-decap@eth0  the packaged unit runs the same";

/// `lb detach --help`.
pub const DETACH: &str = "\
Example:
  systemctl disable --now lb && lb detach --config /etc/lb/lb.toml

`systemctl stop lb` (SIGTERM to `lb run --keep-datapath`) leaves the datapath forwarding on
its own, and its [announce] routes in place, so that a restart is hitless; this removes them.
Nothing attached is not an error.";

/// `lb xdp-pass --help` (hidden lab helper).
pub const XDP_PASS: &str = "\
Example:
  lb xdp-pass --interface veth1";

/// `lb generate --help` (hidden, used by `cargo xtask package`).
pub const GENERATE: &str = "\
Examples:
  lb generate man target/man
  lb generate completions target/completions";

/// The sections of `lb(8)` after EXAMPLES, in roff.
pub const MAN_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
0
Success.
.TP
1
Failure: the error, where it is and what to do are printed on standard error.
.TP
2
Usage error: an unknown command or option, or a bad value.
.SH ENVIRONMENT
.TP
RUST_LOG
Log filter of the agent and of \fBlb decap\fR (default \fBinfo\fR), e.g. \fBlb=debug\fR.
.TP
NO_COLOR
When set (and not empty), no colours or terminal escapes; output that is not a terminal never
has them.
.SH FILES
.TP
/etc/lb/lb.toml
The configuration read by \fBlb.service\fR (a commented example is installed).
.TP
/sys/fs/bpf/lb
The default \fBstate_dir\fR: the pinned maps and link of the datapath (bpffs).
.TP
/run/lb
The agent's snapshots (VIP names, health) read by \fBlb status\fR and \fBlb stats\fR, and its
control sockets (\fBlb backend\fR).
.TP
/var/lib/lb
Each backend's administrative state and availability history, kept across restarts.
.TP
/usr/lib/systemd/system/lb.service, lb-decap@.service
The agent and, on tunnel-mode backends, \fBlb decap\fR for an interface.
.TP
/usr/share/doc/lb/DEPLOY.md
The operator's guide: preparing a gateway and its backends, verifying, upgrading,
troubleshooting. /usr/share/doc/lb/README.md is the reference.
.SH "SEE ALSO"
\fBlb-run\fR(8), \fBlb-check\fR(8), \fBlb-status\fR(8), \fBlb-stats\fR(8), \fBlb-explain\fR(8),
\fBlb-backend\fR(8), \fBlb-decap\fR(8), \fBlb-detach\fR(8), \fBsystemctl\fR(1), \fBip\fR(8)
"#;
