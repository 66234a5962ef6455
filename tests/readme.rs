//! The README's first-run example, run exactly as written: its config
//! block saved as `first-run.yaml`, then each of its command lines in
//! order (a line ending in `&` keeps running in the background, the way a
//! newcomer's shell would; a foreground line is retried until it succeeds
//! and the server's answer came through, as a person would retype it while
//! the server starts). It runs in a
//! network namespace of its own, so the fixed ports the README uses
//! (8080, 4140, 4191) never meet anything else on the machine. The one
//! substitution: `cargo run --bin strait --` is the binary this test was
//! built with (cargo cannot be run from inside `cargo test`).
//!
//! Needs root and `ip netns`; where `ip netns add` is refused the test
//! says SKIPPED and why.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::TempDir;

/// The fenced block that follows the `<!-- marker -->` line.
fn block<'a>(readme: &'a str, marker: &str) -> &'a str {
    let after = readme
        .split_once(&format!("<!-- {marker} -->\n"))
        .unwrap_or_else(|| panic!("README lost its '{marker}' block"))
        .1;
    let body = after.split_once('\n').expect("a fence").1;
    body.split_once("```").expect("a closing fence").0
}

struct Namespace {
    name: String,
    children: Vec<Child>,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl Namespace {
    fn shell(&self, line: &str, dir: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "bash", "-c", line])
            .current_dir(dir);
        cmd
    }
}

#[test]
fn the_first_run_example_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let config = block(&readme, "first-run config");
    let commands = block(&readme, "first-run commands");

    let name = format!("strait-readme-{}", std::process::id());
    let _ = Command::new("ip")
        .args(["netns", "del", &name])
        .stderr(Stdio::null())
        .status();
    let added = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .expect("run ip");
    if !added.status.success() {
        eprintln!(
            "SKIPPED: cannot create a network namespace: {}",
            String::from_utf8_lossy(&added.stderr).trim()
        );
        return;
    }
    let mut ns = Namespace {
        name,
        children: Vec::new(),
    };
    let lo = ns
        .shell("ip link set lo up", std::path::Path::new("/"))
        .status();
    assert!(lo.is_ok_and(|s| s.success()), "cannot bring up lo");

    let dir = TempDir::new("readme");
    std::fs::write(dir.0.join("first-run.yaml"), config).expect("save first-run.yaml");
    let strait = env!("CARGO_BIN_EXE_strait");
    let mut outputs = Vec::new();
    for line in commands.lines().filter(|l| !l.trim().is_empty()) {
        let line = line.replace("cargo run --bin strait --", strait);
        let command = line.split(" #").next().unwrap_or(&line).trim();
        if let Some(background) = command.strip_suffix('&') {
            let child = ns
                .shell(&format!("exec {background}"), &dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a background command");
            ns.children.push(child);
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let output = loop {
            let out = ns.shell(command, &dir.0).output().expect("run a command");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            // Through the proxy, a server still starting is a 502 (curl
            // succeeds); a person would try again, and so do we.
            let starting = stdout.contains("connection refused by upstream");
            if out.status.success() && !starting {
                break stdout;
            }
            assert!(
                Instant::now() < deadline,
                "README line failed: {command}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        outputs.push((command.to_string(), output));
    }
    let answer = outputs
        .iter()
        .find(|(c, _)| c.starts_with("curl -H 'Host: web'"))
        .map(|(_, o)| o.as_str())
        .expect("the README curls the proxy");
    // python's http.server lists the directory it serves: ours.
    assert!(answer.contains("first-run.yaml"), "{answer}");
    let metrics = outputs
        .iter()
        .find(|(c, _)| c.contains("/metrics"))
        .map(|(_, o)| o.as_str())
        .expect("the README shows the metrics");
    assert!(
        metrics.contains("request_total{") && metrics.contains("authority=\"web\""),
        "{metrics}"
    );
}
