//! The alerting rules in `docs/prometheus-alerts.yml` are valid (`promtool check rules`),
//! behave as their unit tests in `docs/prometheus-alerts.test.yml` say (`promtool test
//! rules`), and every alert has such a test. promtool is the Debian package `prometheus`,
//! installed by `cargo xtask setup`.

use std::{path::PathBuf, process::Command};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// `promtool ARGS` in docs/; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(docs())
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found in PATH: it validates docs/prometheus-alerts.yml; run `cargo \
             xtask setup` (installs the Debian package prometheus, without starting its server)"
        ),
        Err(error) => panic!("cannot run promtool {args:?}: {error}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed ({}) in {}:\n{text}",
        args.join(" "),
        output.status,
        docs().display()
    );
    text
}

/// The names after `key: ` on the lines of `file` in docs/.
fn names(file: &str, key: &str) -> Vec<String> {
    let path = docs().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches("- ");
            Some(line.strip_prefix(key)?.strip_prefix(':')?.trim().to_owned())
        })
        .collect()
}

#[test]
fn alert_rules_are_valid() {
    let alerts = names("prometheus-alerts.yml", "alert");
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    let out = promtool(&["check", "rules", "prometheus-alerts.yml"]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{out}"
    );
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    promtool(&["test", "rules", "prometheus-alerts.test.yml"]);
    let tested = names("prometheus-alerts.test.yml", "alertname");
    for alert in names("prometheus-alerts.yml", "alert") {
        assert!(
            tested.contains(&alert),
            "alert {alert} has no test in docs/prometheus-alerts.test.yml"
        );
    }
}
