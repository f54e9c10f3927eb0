//! Runs the built `dpsynth` binary for the CLI tests.

use std::process::Command;

/// Runs `dpsynth ARGS`, returning the exit code, stdout and stderr.
pub fn dpsynth(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dpsynth"))
        .args(args)
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
