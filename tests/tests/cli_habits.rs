//! The command-line habits operators expect (issue #13): an example in every command's
//! `--help`, exit status 0 / 1 / 2 for success / failure / usage, `--watch` taking a bare number
//! of seconds, and no terminal escapes with `NO_COLOR` even in a terminal (which gets them
//! otherwise). `lb stats --watch` itself, on a live datapath, is in deploy.rs and cli.rs.

use std::process::{Command, Output};

use clap::CommandFactory as _;
use lb_tests::{deploy::describe, netns::agent::lb_binary};

fn lb(args: &[&str]) -> Output {
    Command::new(lb_binary())
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run lb")
}

#[test]
fn every_commands_help_has_an_example() {
    let cli = lb_user::cli::Cli::command();
    let mut commands: Vec<Vec<&str>> = vec![vec![]];
    commands.extend(cli.get_subcommands().map(|c| vec![c.get_name()]));
    assert!(commands.len() > 8, "{commands:?}");
    for command in commands {
        let mut args = command.clone();
        args.push("--help");
        let output = lb(&args);
        assert!(
            output.status.success(),
            "lb {args:?}: {}",
            describe(&output)
        );
        let help = String::from_utf8_lossy(&output.stdout);
        let example = help
            .split_once("Example")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("`lb {}` has no example:\n{help}", args.join(" ")));
        let name = command.first().copied().unwrap_or("check");
        assert!(
            example.contains(&format!("lb {name}")) || example.contains("systemctl"),
            "`lb {}`'s example does not run it:\n{help}",
            args.join(" ")
        );
    }
    let top = String::from_utf8_lossy(&lb(&["--help"]).stdout).into_owned();
    assert!(
        top.contains("Exit status: 0 success; 1 failure") && top.contains("2 usage error"),
        "{top}"
    );
}

#[test]
fn exit_status_is_0_on_success_1_on_failure_2_on_usage_errors() {
    let config = std::env::temp_dir().join(format!("lbt-habits-{}.toml", std::process::id()));
    std::fs::copy(
        lb_tests::deploy::workspace().join("packaging/lb.toml"),
        &config,
    )
    .expect("copy");
    let config_arg = config.display().to_string();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--version"], 0, "lb "),
        (&["check", "--config", &config_arg], 0, "ok (1 VIPs"),
        (
            &["check", "--config", "/nonexistent/lb.toml"],
            1,
            "/nonexistent/lb.toml",
        ),
        (
            &["stats", "--state-dir", "/sys/fs/bpf/lbt-habits-none"],
            1,
            "no lb datapath",
        ),
        (&[], 2, "Usage"),
        (&["stats", "--bogus"], 2, "--bogus"),
        (&["stats", "--watch", "0"], 2, "longer than 0"),
        (&["stats", "--watch", "1x"], 2, "give seconds"),
        (
            &["explain", "--vip", "nonsense", "--client", "192.0.2.7:4000"],
            2,
            "--vip nonsense",
        ),
    ];
    for (args, code, needle) in cases {
        let output = lb(args);
        let text = describe(&output);
        assert_eq!(output.status.code(), Some(*code), "lb {args:?}:\n{text}");
        assert!(
            text.contains(needle),
            "lb {args:?} should say {needle:?}:\n{text}"
        );
    }
    let _ = std::fs::remove_file(config);
}

/// `lb --help` in a pseudo-terminal (util-linux `script`): styled, unless NO_COLOR is set.
#[test]
fn no_color_turns_escapes_off_in_a_terminal() {
    let in_terminal = |no_color: bool| {
        let mut command = Command::new("script");
        command
            .args([
                "-qec",
                &format!("{} --help", lb_binary().display()),
                "/dev/null",
            ])
            .env("TERM", "xterm");
        if no_color {
            command.env("NO_COLOR", "1");
        } else {
            command.env_remove("NO_COLOR");
        }
        let output = command.output().expect("run script");
        assert!(output.status.success(), "{}", describe(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let styled = in_terminal(false);
    assert!(
        styled.contains("Usage") && styled.contains('\x1b'),
        "{styled:?}"
    );
    let plain = in_terminal(true);
    assert!(
        plain.contains("Usage") && !plain.contains('\x1b'),
        "{plain:?}"
    );
    let piped = String::from_utf8_lossy(&lb(&["--help"]).stdout).into_owned();
    assert!(!piped.contains('\x1b'), "{piped:?}");
}
