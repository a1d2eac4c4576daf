//! The Debian package that `cargo xtask package` built (issue #13): its files, control data,
//! conffile and maintainer scripts; the units, verified by `systemd-analyze` in a root made of
//! the package; the installed `lb` run from a scratch root (`--version`, `check` of the shipped
//! example, the guide's upgrade check); the man pages rendered; the bash completion completing;
//! and `dpkg --root` installing it, the packaged agent started as its unit does, `dpkg -r`
//! detaching the datapath it left, `dpkg -P` removing the conffile.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use lb_tests::deploy::{describe, find_deb, guide_block, workspace, Scratch};

fn deb() -> PathBuf {
    find_deb().unwrap_or_else(|message| panic!("{message}"))
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether `program` is on PATH.
fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The visible commands of `lb`, from the clap definition.
fn commands() -> Vec<String> {
    use clap::CommandFactory as _;
    lb_user::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_owned())
        .collect()
}

#[test]
fn the_package_holds_the_binary_units_example_man_pages_completions_and_guide() {
    let deb = deb();
    println!("checking {}", deb.display());
    // Files and their modes, from the archive itself.
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mode_of = |path: &str| {
        listing
            .lines()
            .find(|line| line.ends_with(&format!(".{path}")))
            .map(|line| {
                line.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
    };
    let mut expected: Vec<(String, &str)> = vec![
        ("/usr/bin/lb".into(), "-rwxr-xr-x"),
        ("/etc/lb/lb.toml".into(), "-rw-r--r--"),
        ("/usr/lib/systemd/system/lb.service".into(), "-rw-r--r--"),
        (
            "/usr/lib/systemd/system/lb-decap@.service".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/bash-completion/completions/lb".into(),
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_lb".into(), "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/lb.fish".into(),
            "-rw-r--r--",
        ),
        ("/usr/share/doc/lb/README.md".into(), "-rw-r--r--"),
        ("/usr/share/doc/lb/DEPLOY.md".into(), "-rw-r--r--"),
        ("/usr/share/doc/lb/copyright".into(), "-rw-r--r--"),
        ("/usr/share/man/man8/lb.8.gz".into(), "-rw-r--r--"),
    ];
    for command in commands() {
        expected.push((
            format!("/usr/share/man/man8/lb-{command}.8.gz"),
            "-rw-r--r--",
        ));
    }
    for (path, mode) in &expected {
        assert_eq!(
            mode_of(path).as_deref(),
            Some(*mode),
            "{path} in the package, with mode {mode}:\n{listing}"
        );
    }

    // Control data: name, dependencies, the conffile, the maintainer scripts.
    let field = |name: &str| {
        run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "lb");
    let depends = field("Depends");
    for dependency in ["libc6", "procps"] {
        assert!(depends.contains(dependency), "Depends: {depends}");
    }
    let control = Scratch::new("deb-control");
    run_ok(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(&control.dir),
    );
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).expect("conffiles"),
        "/etc/lb/lb.toml\n",
        "the example configuration is the one conffile"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        assert_eq!(
            fs::read(&path).expect("script"),
            fs::read(workspace().join("packaging/debian").join(script)).expect("source"),
            "{script} is packaging/debian/{script}"
        );
        run_ok(Command::new("sh").arg("-n").arg(&path));
    }

    // Installed into a scratch root: the files are the tree's, and the binary runs.
    let root = Scratch::unpacked("deb-root", &deb);
    for (installed, source) in [
        ("/etc/lb/lb.toml", "packaging/lb.toml"),
        ("/usr/lib/systemd/system/lb.service", "packaging/lb.service"),
        (
            "/usr/lib/systemd/system/lb-decap@.service",
            "packaging/lb-decap@.service",
        ),
        ("/usr/share/doc/lb/README.md", "README.md"),
        ("/usr/share/doc/lb/DEPLOY.md", "docs/DEPLOY.md"),
    ] {
        assert!(
            fs::read(root.join(installed)).ok() == fs::read(workspace().join(source)).ok(),
            "{installed} differs from {source}: the package is stale, run `cargo xtask package`"
        );
    }
    let lb = root.join("/usr/bin/lb");
    let version = run_ok(Command::new(&lb).arg("--version"));
    let deb_version = field("Version");
    let upstream = deb_version.split('-').next().unwrap_or_default();
    assert_eq!(
        version.trim(),
        format!("lb {upstream}"),
        "package {deb_version}"
    );
    let example = root.join("/etc/lb/lb.toml");
    let checked = run_ok(Command::new(&lb).arg("check").arg("--config").arg(&example));
    assert!(checked.contains(": ok (1 VIPs, 3 backends)"), "{checked}");
    println!("installed lb: {}; {}", version.trim(), checked.trim());

    // The example's commented tunnel VIP is valid once uncommented.
    let text = fs::read_to_string(&example).expect("example");
    let at = text.find("# [[vip]]").expect("the commented tunnel VIP");
    let uncommented: String = text[at..]
        .lines()
        .map(|line| {
            line.strip_prefix("# ")
                .unwrap_or(line.trim_start_matches('#'))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let both = root.join("/etc/lb/lb-with-tunnel.toml");
    fs::write(&both, format!("{}{uncommented}", &text[..at])).expect("write");
    let checked = run_ok(Command::new(&lb).arg("check").arg("--config").arg(&both));
    assert!(checked.contains(": ok (2 VIPs, 5 backends)"), "{checked}");

    check_man_pages(&root);
    check_completions(&root);
    check_units(&root);
}

/// Every page renders, with its examples; `lb(8)` documents exit status and environment.
fn check_man_pages(root: &Scratch) {
    let man_dir = root.join("/usr/share/man/man8");
    let mut pages = vec!["lb".to_owned()];
    pages.extend(commands().iter().map(|c| format!("lb-{c}")));
    for page in &pages {
        let rendered = run_ok(
            Command::new("man")
                .arg("-l")
                .arg(man_dir.join(format!("{page}.8.gz")))
                .env("MANWIDTH", "100"),
        );
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES"] {
            assert!(
                rendered.contains(section),
                "{page}(8) has no {section}:\n{rendered}"
            );
        }
        if page == "lb" {
            for section in [
                "EXIT STATUS",
                "ENVIRONMENT",
                "NO_COLOR",
                "FILES",
                "SEE ALSO",
            ] {
                assert!(
                    rendered.contains(section),
                    "lb(8) has no {section}:\n{rendered}"
                );
            }
        }
    }
    println!("man pages render: {}", pages.join(", "));
}

/// The bash completion completes commands and options; zsh and fish files are what those
/// shells load (and parse, where the shell is installed).
fn check_completions(root: &Scratch) {
    let bash = root.join("/usr/share/bash-completion/completions/lb");
    // Bash calls the function with the command, the word being completed and the one before.
    let complete = |words: &[&str]| {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let script = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; _lb lb '{}' '{}'; echo \"${{COMPREPLY[*]}}\"",
            bash.display(),
            quoted.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        run_ok(Command::new("bash").arg("-c").arg(script))
    };
    let offered = complete(&["lb", ""]);
    for hidden in ["generate", "xdp-pass"] {
        assert!(
            !offered.contains(hidden),
            "`lb <TAB>` offers {hidden}: {offered}"
        );
    }
    let offered = complete(&["lb", "st"]);
    assert!(
        offered.contains("stats") && offered.contains("status"),
        "`lb st<TAB>`: {offered}"
    );
    let offered = complete(&["lb", "stats", "--w"]);
    assert!(
        offered.contains("--watch"),
        "`lb stats --w<TAB>`: {offered}"
    );
    let offered = complete(&["lb", "de"]);
    assert!(
        offered.contains("decap") && offered.contains("detach"),
        "`lb de<TAB>`: {offered}"
    );
    println!("bash completion: lb de<TAB> -> {}", offered.trim());

    let zsh = root.join("/usr/share/zsh/vendor-completions/_lb");
    let zsh_text = fs::read_to_string(&zsh).expect("zsh completion");
    assert!(
        zsh_text.starts_with("#compdef lb"),
        "zsh loads _lb by its first line"
    );
    let fish = root.join("/usr/share/fish/vendor_completions.d/lb.fish");
    let fish_text = fs::read_to_string(&fish).expect("fish completion");
    assert!(fish_text.contains("complete -c lb"), "{fish_text}");
    for (shell, file) in [("zsh", &zsh), ("fish", &fish)] {
        if have(shell) {
            run_ok(Command::new(shell).arg("-n").arg(file));
            println!("{shell} parses {}", file.display());
        } else {
            println!(
                "{shell} is not installed: {} checked by content only",
                file.display()
            );
        }
    }
}

/// The units' command lines and hardening, then `systemd-analyze verify` and `security`.
fn check_units(root: &Scratch) {
    let lb_service =
        fs::read_to_string(root.join("/usr/lib/systemd/system/lb.service")).expect("lb.service");
    for line in [
        "ExecStartPre=/usr/bin/lb check --config /etc/lb/lb.toml",
        "ExecStart=/usr/bin/lb run --config /etc/lb/lb.toml --keep-datapath",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/sys/fs/bpf",
        "RuntimeDirectory=lb",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN CAP_NET_RAW",
        "NoNewPrivileges=yes",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            lb_service.lines().any(|l| l == line),
            "lb.service lacks `{line}`"
        );
    }
    let decap = fs::read_to_string(root.join("/usr/lib/systemd/system/lb-decap@.service"))
        .expect("lb-decap@.service");
    for line in [
        "ExecStart=/usr/bin/lb decap --interface %i",
        "Restart=on-failure",
        "ProtectSystem=strict",
    ] {
        assert!(
            decap.lines().any(|l| l == line),
            "lb-decap@.service lacks `{line}`"
        );
    }

    if !have("systemd-analyze") {
        println!(
            "systemd-analyze is not installed (`cargo xtask setup` installs the systemd package): \
             units NOT verified"
        );
        return;
    }
    // A root made of the package plus what a Debian host provides: systemd's own units
    // (multi-user.target, ...) and the programs the units run that the package does not ship
    // (/bin/kill of procps, a dependency).
    let verify = Scratch::new("verify-root");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", root.dir.display()))
            .arg(&verify.dir),
    );
    let units = verify.join("/usr/lib/systemd/system");
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "cp -an /usr/lib/systemd/system/. '{}'",
        units.display()
    )));
    let programs: Vec<String> = [&lb_service, &decap]
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| line.starts_with("Exec"))
        .filter_map(|line| line.split_once('=')?.1.split_whitespace().next())
        .map(|program| program.trim_start_matches(['-', '@', '+', '!']).to_owned())
        .collect();
    for program in programs.iter().filter(|p| !root.join(p).exists()) {
        let target = verify.join(program);
        fs::create_dir_all(target.parent().expect("dir")).expect("mkdir");
        fs::copy(program, &target)
            .unwrap_or_else(|e| panic!("{program} (run by a unit, not in the package): {e}"));
    }
    // `--man=yes` runs `man` for every `Documentation=man:` page: against the package's pages.
    let output = run(Command::new("systemd-analyze")
        .args(["verify", "--man=yes"])
        .arg(format!("--root={}", verify.dir.display()))
        .args(["lb.service", "lb-decap@eth0.service"])
        .env("MANPATH", verify.join("/usr/share/man")));
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "systemd-analyze verify lb.service lb-decap@eth0.service ({}):\n{}",
        output.status,
        describe(&output)
    );
    println!("systemd-analyze verify: lb.service and lb-decap@eth0.service pass");
    for unit in ["lb.service", "lb-decap@eth0.service"] {
        let security = run_ok(
            Command::new("systemd-analyze")
                .args(["security", "--offline=yes", "--no-pager"])
                .arg(format!("--root={}", verify.dir.display()))
                .arg(unit),
        );
        let exposure =
            exposure(&security).unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
        println!("systemd-analyze security {unit}: exposure {exposure} (0 safest, 10 unsafe)");
        // A BPF agent runs as root with CAP_BPF/CAP_NET_ADMIN/CAP_SYS_ADMIN on the host's
        // network; the sandbox is what keeps it below 5 ("OK"). Without it, about 9.
        assert!(exposure < 5.0, "{unit} lost its hardening:\n{security}");
    }
}

/// "→ Overall exposure level for lb.service: 4.0 OK 🙂" → 4.0.
fn exposure(security: &str) -> Option<f64> {
    let line = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit(':')
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_guides_upgrade_check_runs_the_new_package_on_the_running_configuration() {
    let deb = deb();
    let root = Scratch::unpacked("deb-running", &deb);
    let new = Scratch::new("deb-new");
    let block = guide_block("upgrade-check");
    let script = substitute(
        &block,
        &[
            ("lb_0.2.0-1_amd64.deb", &deb),
            ("/tmp/lb-new", &new.dir),
            ("/etc/lb/lb.toml", &root.join("/etc/lb/lb.toml")),
        ],
    );
    let output = run_ok(Command::new("sh").arg("-ec").arg(&script));
    assert!(
        output.contains("lb ") && output.contains(": ok ("),
        "the upgrade check printed:\n{output}"
    );
    println!("{script}\n{output}");
}

/// `text` with each placeholder replaced (the guide's example paths by the test's).
fn substitute(text: &str, replacements: &[(&str, &Path)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "the block no longer mentions {from}:\n{text}"
        );
        text = text.replace(from, &to.display().to_string());
    }
    text
}

/// An empty dpkg database in `root`, for `dpkg --root`.
fn dpkg_database(root: &Scratch) {
    let db = root.join("/var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        fs::create_dir_all(db.join(dir)).expect("dpkg dirs");
    }
    for file in ["status", "available"] {
        fs::write(db.join(file), "").expect("dpkg files");
    }
}

/// `dpkg --root ROOT ARGS`, with the maintainer scripts run outside a chroot ($DPKG_ROOT
/// set: the scripts then leave the host's systemd alone). The host's dpkg database does not
/// know the dependencies in ROOT's, hence --force-depends.
fn dpkg(root: &Scratch, args: &[&std::ffi::OsStr]) -> String {
    run_ok(
        Command::new("dpkg")
            .arg(format!("--root={}", root.dir.display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args),
    )
}

/// The operator's path with the packaged binary: `dpkg -i`, edit /etc/lb/lb.toml, start the
/// agent as lb.service does, stop it as systemd does (the datapath stays), then `dpkg -r`:
/// prerm detaches it; `dpkg -P` removes the conffile.
#[test]
fn dpkg_installs_into_a_scratch_root_and_removing_the_package_detaches_the_datapath() {
    use lb_tests::{
        deploy::{unit_argv, unit_values},
        netns::{
            agent::{AgentFiles, AgentProcess, Signal},
            servers::NameServer,
            topology::Lan,
        },
    };
    let deb = deb();
    let root = Scratch::new("dpkg-root");
    dpkg_database(&root);
    let installed = dpkg(&root, &["-i".as_ref(), deb.as_os_str()]);
    println!("{installed}");
    let status = dpkg(&root, &["--status".as_ref(), "lb".as_ref()]);
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("Conffiles:\n /etc/lb/lb.toml "), "{status}");
    // Installing again is an upgrade for the scripts (postinst configure OLD-VERSION).
    dpkg(&root, &["-i".as_ref(), deb.as_os_str()]);

    // The operator edits the conffile for this host (here: the lab's).
    let lan = Lan::new("pkg", &["lb", "b1"]);
    let backend = lan.host(1);
    let _server = NameServer::start(&backend.ns, 8080, "b1");
    let files = AgentFiles::new("pkg");
    let config = root.join("/etc/lb/lb.toml");
    let text = fs::read_to_string(&config).expect("conffile");
    let text = text
        .replace(
            "# state_dir = \"/sys/fs/bpf/lb\"",
            &format!("state_dir = \"{}\"", files.state_dir.display()),
        )
        .replace("port = 80\n", "port = 8080\n")
        .replace("192.0.2.11", &backend.ip.to_string())
        .replace(
            "  [[vip.backend]]\n  address = \"192.0.2.12\"\n  weight = 1\n\n",
            "",
        )
        .replace("  [[vip.backend]]\n  address = \"192.0.2.13\"\n", "  # ")
        .replace("192.0.2.10", "10.78.0.100");
    fs::write(&config, &text).expect("edit the conffile");
    let lb = root.join("/usr/bin/lb");
    let checked = run_ok(Command::new(&lb).arg("check").arg("--config").arg(&config));
    assert!(
        checked.contains("ok (1 VIPs, 1 backends)"),
        "{checked}\n{text}"
    );

    // Started as lb.service starts it, with the installed binary and configuration.
    let unit = fs::read_to_string(root.join("/usr/lib/systemd/system/lb.service")).expect("unit");
    let [exec] = unit_values(&unit, "ExecStart")
        .try_into()
        .expect("one ExecStart");
    let argv = unit_argv(&exec, &lb, "", &[("/etc/lb/lb.toml", config.as_path())]);
    let agent = AgentProcess::start_argv(&lan.host(0).ns, &argv, &files.log);
    assert!(
        files.wait_log("datapath attached", 1, std::time::Duration::from_secs(15)),
        "the packaged agent did not attach:\n{}",
        files.log_text()
    );
    assert!(
        agent.stop(Signal::SIGTERM).success(),
        "{}",
        files.log_text()
    );
    let xdp = |ns: &lb_tests::netns::Netns| ns.ip("-j link show dev eth0").contains("\"xdp\"");
    assert!(
        files.state_dir.exists() && xdp(&lan.host(0).ns),
        "stopped like systemctl stop lb, the datapath stays:\n{}",
        files.log_text()
    );

    let removed = dpkg(&root, &["-r".as_ref(), "lb".as_ref()]);
    println!("{removed}");
    assert!(
        removed.contains("detached: the lb program is off eth0"),
        "{removed}"
    );
    assert!(!files.state_dir.exists(), "pins left after dpkg -r");
    assert!(
        !xdp(&lan.host(0).ns),
        "a program left on eth0 after dpkg -r"
    );
    assert!(!lb.exists(), "dpkg -r left /usr/bin/lb");
    assert!(config.exists(), "dpkg -r keeps the edited conffile");
    dpkg(&root, &["-P".as_ref(), "lb".as_ref()]);
    assert!(!config.exists(), "dpkg -P removes the conffile");
}
