//! The command line, as clap makes it: help from the real flags, clap's
//! errors with a suggestion, a man page and shell completions.

use std::process::Command;

fn ringway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_flag_and_the_signals() {
    let out = ringway(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--check",
        "--listen",
        "--cert",
        "--key",
        "--plaintext",
        "--upstream",
        "--archive",
        "--chain",
        "--health-probe",
        "--workers",
        "--no-pin",
        "--shared",
        "--log-level",
        "--log-format",
        "--access-log",
        "import-nginx",
        "SIGHUP",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn a_mistyped_flag_gets_clap_s_error_with_a_suggestion() {
    let out = ringway(&["--listn", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a similar argument exists: '--listen'"),
        "{err}"
    );
    let bad = ringway(&["--health-probe", "sometimes", "--check"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("[possible values: rpc, connect, off]"),
        "{err}"
    );
}

#[test]
fn a_flag_given_twice_takes_the_last_value() {
    let out = ringway(&["--workers", "3", "--workers", "1", "--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_man_page_and_shell_completions_come_from_the_same_flags() {
    let man = ringway(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ringway"),
        "{page}"
    );
    assert!(page.contains("health\\-probe"), "{page}");
    let bash = ringway(&["completions", "bash"]);
    assert!(bash.status.success());
    assert!(String::from_utf8_lossy(&bash.stdout).contains("--upstream"));
}
