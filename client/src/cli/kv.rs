//! `dynamoctl get | put | delete`.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use dynamo_client::{Client, Context, GetResult, WriteResult};
use serde_json::json;

use super::show_bytes;

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Replicas to wait for (1..=N; default: the cluster's R).
    #[arg(long)]
    pub r: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value; `-`, or neither it nor --file, reads it from stdin.
    #[arg(conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file (`-`: stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Context from a previous get or put of this key (base64); without it the write adds
    /// a sibling instead of superseding anything.
    #[arg(long, default_value = "")]
    pub context: String,
    /// Replicas that must acknowledge (1..=N; default: the cluster's W).
    #[arg(long)]
    pub w: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Context from a get of this key (base64): the versions the delete removes. Without
    /// it, the key is read first and the delete removes every version that read saw (a
    /// concurrent write it did not see survives, as with any context).
    #[arg(long)]
    pub context: Option<String>,
    /// Replicas that must acknowledge (1..=N; default: the cluster's W).
    #[arg(long)]
    pub w: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Reads a key; exit code 1 when it has no live value.
pub async fn get(client: &Client, args: &GetArgs) -> anyhow::Result<ExitCode> {
    let got = client.get(&args.key, args.r).await?;
    if args.json {
        println!("{}", get_json(&args.key, &got));
    } else {
        print!("{}", get_text(&got));
    }
    if got.is_found() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("not found: {:?} has no live value", args.key);
        Ok(ExitCode::from(1))
    }
}

/// Writes a value and prints the new context.
pub async fn put(client: &Client, args: &PutArgs) -> anyhow::Result<ExitCode> {
    let context = Context::from_base64(&args.context)?;
    let value = read_value(args)?;
    let written = client
        .put_detailed(&args.key, value, &context, args.w)
        .await?;
    print_write(&args.key, &written, args.json);
    Ok(ExitCode::SUCCESS)
}

/// Deletes what the context covers, or what a read sees without one, and prints the new
/// context; exit code 1, with nothing written, when a read finds no live value.
pub async fn delete(client: &Client, args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let context = match &args.context {
        Some(text) => Context::from_base64(text)?,
        None => {
            let got = client.get(&args.key, None).await?;
            if !got.is_found() {
                eprintln!(
                    "not found: {:?} has no live value; nothing deleted",
                    args.key
                );
                return Ok(ExitCode::from(1));
            }
            let live = got.values().count();
            eprintln!(
                "deleting the {live} live version(s) a read of {:?} saw",
                args.key
            );
            got.context
        }
    };
    let written = client.delete_detailed(&args.key, &context, args.w).await?;
    print_write(&args.key, &written, args.json);
    Ok(ExitCode::SUCCESS)
}

fn read_value(args: &PutArgs) -> anyhow::Result<Vec<u8>> {
    match (&args.value, &args.file) {
        (Some(value), _) if value != "-" => return Ok(value.clone().into_bytes()),
        (_, Some(path)) if path.as_os_str() != "-" => {
            return std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        }
        _ => {}
    }
    if std::io::stdin().is_terminal() {
        eprintln!("reading the value from stdin (end it with Ctrl-D)");
    }
    let mut value = Vec::new();
    std::io::stdin()
        .read_to_end(&mut value)
        .context("reading the value from stdin")?;
    Ok(value)
}

fn get_text(got: &GetResult) -> String {
    let mut out = String::new();
    for (i, s) in got.siblings.iter().enumerate() {
        match &s.value {
            Some(v) => out.push_str(&format!(
                "sibling {} (dot {}, {} bytes): {}\n",
                i + 1,
                s.dot,
                v.len(),
                show_bytes(v)
            )),
            None => out.push_str(&format!("sibling {} (dot {}): <tombstone>\n", i + 1, s.dot)),
        }
    }
    out.push_str(&format!("replies: {}\n", got.replies));
    out.push_str(&format!("context: {}\n", got.context));
    out
}

fn get_json(key: &str, got: &GetResult) -> serde_json::Value {
    use base64::Engine as _;
    let siblings: Vec<_> = got
        .siblings
        .iter()
        .map(|s| {
            let value = s.value.as_ref();
            json!({
                "dot": s.dot,
                "tombstone": value.is_none(),
                "value": value.and_then(|v| std::str::from_utf8(v).ok()),
                "value_base64": value.map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
            })
        })
        .collect();
    json!({
        "key": key,
        "found": got.is_found(),
        "siblings": siblings,
        "replies": got.replies,
        "context": got.context.to_base64(),
    })
}

fn print_write(key: &str, written: &WriteResult, as_json: bool) {
    if as_json {
        let v = json!({"key": key, "acks": written.acks, "context": written.context.to_base64()});
        println!("{v}");
    } else {
        println!("acks: {}", written.acks);
        println!("context: {}", written.context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use dynamo_client::Sibling;

    fn result() -> GetResult {
        GetResult {
            siblings: vec![
                Sibling {
                    value: Some(Bytes::from_static(b"milk")),
                    dot: "node-1#1:4".into(),
                },
                Sibling {
                    value: None,
                    dot: "node-2#1:2".into(),
                },
            ],
            context: Context::from_bytes(vec![1, 2, 3]),
            replies: 2,
        }
    }

    #[test]
    fn text_marks_tombstones_and_shows_context() {
        let text = get_text(&result());
        assert!(
            text.contains("sibling 1 (dot node-1#1:4, 4 bytes): milk"),
            "{text}"
        );
        assert!(
            text.contains("sibling 2 (dot node-2#1:2): <tombstone>"),
            "{text}"
        );
        assert!(text.contains("replies: 2"), "{text}");
        assert!(text.contains("context: AQID"), "{text}");
    }

    #[test]
    fn json_shape() {
        let v = get_json("cart", &result());
        assert_eq!(v["found"], true);
        assert_eq!(v["replies"], 2);
        assert_eq!(v["context"], "AQID");
        assert_eq!(v["siblings"][0]["value"], "milk");
        assert_eq!(v["siblings"][0]["value_base64"], "bWlsaw==");
        assert_eq!(v["siblings"][1]["tombstone"], true);
        assert!(v["siblings"][1]["value"].is_null());
    }
}
