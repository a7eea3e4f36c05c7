//! The dynamoctl binary against a fake node: output, exit codes and error format.

mod support;

use std::process::{Command, Output, Stdio};

use support::{dead_addr, FakeNode};

fn ctl(addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dynamoctl"));
    cmd.arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("DYNAMO_ADDR");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let input = stdin.unwrap_or("").to_string();
    let mut pipe = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = pipe.write_all(input.as_bytes());
    });
    child.wait_with_output().unwrap()
}

/// `ctl` against `addr` on a blocking thread, so that a fake node on the test's runtime
/// can answer it.
fn runner(
    addr: &str,
) -> impl Fn(Vec<&'static str>, Option<&'static str>) -> tokio::task::JoinHandle<Output> {
    let addr = addr.to_string();
    move |args, stdin| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || ctl(&addr, &args, stdin))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn context_of(out: &Output) -> String {
    text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("context: ").map(str::to_string))
        .expect("a context line")
}

// The fake node runs on this test's runtime while the CLI runs as a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_put_delete_cycle() {
    let node = FakeNode::start("node-1").await;
    let addr = node.addr.to_string();
    let run = runner(&addr);

    let out = run(vec!["get", "cart"], None).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("not found"), "{out:?}");

    let out = run(vec!["put", "cart", "milk"], None).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("acks: 2"));
    let ctx = context_of(&out);

    let out = run(vec!["put", "cart"], Some("from stdin")).await.unwrap();
    assert!(out.status.success(), "{out:?}");

    let out = run(vec!["get", "cart"], None).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("milk") && stdout.contains("from stdin"),
        "{stdout}"
    );
    assert!(stdout.contains("replies: 2"), "{stdout}");
    let read_ctx = context_of(&out);
    assert_ne!(ctx, read_ctx);

    let out = ctl(&addr, &["get", "cart", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["found"], true);
    assert_eq!(v["siblings"].as_array().unwrap().len(), 2);

    let ctx_arg: &'static str = Box::leak(read_ctx.into_boxed_str());
    let out = run(vec!["delete", "cart", "--context", ctx_arg], None)
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let out = run(vec!["get", "cart"], None).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "deleted: {out:?}");
    assert!(text(&out.stdout).contains("<tombstone>"), "{out:?}");
    assert!(!context_of(&out).is_empty(), "the context is still printed");

    let out = run(vec!["put", "cart", "x", "--context", "not base64!"], None)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: invalid_context: "),
        "{out:?}"
    );

    let out = run(vec!["put", "fail-quorum", "x"], None).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: UNAVAILABLE: only 1 of 2 replicas answered"
    );

    let out = run(vec!["status"], None).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("node node-1"), "{out:?}");

    let out = run(
        vec!["bench", "--ops", "300", "--keys", "20", "--json", "-c", "4"],
        None,
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ops"], 300);
    assert_eq!(v["errors"], 0);
    for kind in ["read", "write"] {
        assert!(v[kind]["latency_us"]["p999"].is_u64(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_without_a_context_removes_what_a_read_saw_and_dash_reads_stdin() {
    let node = FakeNode::start("node-1").await;
    let run = runner(&node.addr.to_string());

    // `-` as the value, or as --file, is stdin: two blind writes, two siblings.
    let out = run(vec!["put", "cart", "-"], Some("milk")).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = run(vec!["put", "cart", "--file", "-"], Some("bread"))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = run(vec!["get", "cart"], None).await.unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("4 bytes): milk") && stdout.contains("bread"),
        "{stdout}"
    );

    let out = run(vec!["delete", "cart"], None).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("deleting the 2 live version(s)"),
        "{out:?}"
    );
    let out = run(vec!["get", "cart"], None).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "deleted: {out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("<tombstone>") && !stdout.contains("milk") && !stdout.contains("bread"),
        "{stdout}"
    );

    // Nothing live: nothing is written, not even a tombstone.
    let out = run(vec!["delete", "empty"], None).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("nothing deleted"), "{out:?}");
    let out = run(vec!["get", "empty"], None).await.unwrap();
    assert!(text(&out.stdout).starts_with("replies: "), "{out:?}");
}

#[test]
fn unreachable_node_is_a_clear_error() {
    let out = ctl(&dead_addr(), &["get", "k"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: UNAVAILABLE: "), "{stderr}");
}
