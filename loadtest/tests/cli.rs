//! `ringway-load`'s command line, as clap makes it: help from the real
//! flags of each mode, clap's errors with a suggestion.

use std::process::Command;

fn load(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringway-load"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn each_mode_has_help_from_its_flags() {
    for (mode, flag) in [
        ("run", "--depth"),
        ("flood", "--bind"),
        ("connect", "--hold"),
        ("subscribe", "--method"),
        ("startup", "--clients"),
        ("node", "--block-ms"),
        ("compare", "--target"),
    ] {
        let out = load(&[mode, "--help"]);
        assert!(out.status.success(), "{mode}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains(flag), "{mode} --help lacks {flag}:\n{help}");
    }
}

#[test]
fn a_mistyped_flag_or_mode_gets_a_suggestion() {
    let out = load(&["run", "ws://127.0.0.1:1/", "--conections", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a similar argument exists: '--connections'"),
        "{err}"
    );
    let out = load(&["rum"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tip: a similar subcommand exists: 'run'"),
        "{err}"
    );
}
