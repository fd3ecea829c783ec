//! The `latchkey` binary's commands, run as a user would run them.

use std::process::Command;

fn latchkey(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env_remove("LATCHKEY_STORE")
        .output()
        .expect("run latchkey");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_store_reports_every_guarantee_on_a_healthy_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("check.db").display());
    let (code, stdout, stderr) = latchkey(&["check-store", "--store", &url]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let checks = latchkey::store::contract::CHECKS;
    for check in checks {
        assert!(stdout.contains(check.guarantee), "missing {}", check.name);
    }
    assert!(stdout.contains(&format!("{0} of {0} guarantees hold.", checks.len())));
    assert!(!stdout.contains("BROKEN"));
}

#[test]
fn check_store_explains_an_unusable_store_and_hides_passwords() {
    let (code, _, stderr) = latchkey(&["check-store", "--store", "mysql://u:hunter2@db/x"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unsupported store URL scheme"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
