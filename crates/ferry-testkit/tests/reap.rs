//! Servers left behind by a killed test process are reaped by the next start.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::{MariaDbOptions, MariaDbServer, PgOptions, PgServer};

const CHILD_ENV: &str = "FERRY_TESTKIT_REAP_CHILD";

/// Helper run in a child process by `servers_of_killed_process_are_reaped`;
/// a no-op in a normal test run.
#[test]
fn reap_helper_holds_servers() {
    let Ok(out) = std::env::var(CHILD_ENV) else {
        return;
    };
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let my = MariaDbServer::start(MariaDbOptions::new()).unwrap();
    let text = format!(
        "{}\n{}\n{}\n{}\n",
        pg.dir().display(),
        pg.pid().unwrap(),
        my.dir().display(),
        my.pid().unwrap()
    );
    std::fs::write(format!("{out}.tmp"), text).unwrap();
    std::fs::rename(format!("{out}.tmp"), &out).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn servers_of_killed_process_are_reaped() {
    let scratch = ferry_testkit::testkit_root().join(format!("reap-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&scratch);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reap_helper_holds_servers", "--test-threads=1"])
        .env(CHILD_ENV, &scratch)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !scratch.exists() {
        assert!(
            Instant::now() < deadline,
            "helper did not start its servers"
        );
        assert!(child.try_wait().unwrap().is_none(), "helper exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&scratch).unwrap();
    std::fs::remove_file(&scratch).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (pg_dir, pg_pid) = (PathBuf::from(lines[0]), lines[1].parse::<u32>().unwrap());
    let (my_dir, my_pid) = (PathBuf::from(lines[2]), lines[3].parse::<u32>().unwrap());

    // Simulate a test process killed without running Drop.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        alive(pg_pid) && alive(my_pid),
        "servers outlive their test process"
    );
    assert!(pg_dir.exists() && my_dir.exists());

    // The next start reaps them.
    let pg = PgServer::start(PgOptions::new()).unwrap();
    assert!(!alive(pg_pid), "orphaned postgres {pg_pid} still running");
    assert!(!alive(my_pid), "orphaned mariadbd {my_pid} still running");
    assert!(!Path::new(&pg_dir).exists());
    assert!(!Path::new(&my_dir).exists());
    assert!(pg.dir().exists());
}
