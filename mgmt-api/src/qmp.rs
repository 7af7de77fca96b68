//! A minimal async QMP client: how the daemon drives each VM process.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// One negotiated QMP session.
pub(crate) struct Qmp {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl Qmp {
    /// Connects (retrying while the socket appears, up to `wait`) and negotiates.
    pub(crate) async fn connect(sock: &Path, wait: Duration) -> Result<Qmp, String> {
        let start = tokio::time::Instant::now();
        let s = loop {
            match UnixStream::connect(sock).await {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= wait => return Err(format!("QMP socket {}: {e}", sock.display())),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (r, w) = s.into_split();
        let mut q = Qmp { r: BufReader::new(r), w };
        let g = q.next().await?;
        if g.get("QMP").is_none() {
            return Err(format!("no QMP greeting: {g}"));
        }
        q.command("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    async fn next(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.r.read_line(&mut line))
            .await
            .map_err(|_| "QMP: no answer".to_string())?
            .map_err(|e| format!("QMP: {e}"))?;
        if n == 0 {
            return Err("QMP: the VM process closed the connection".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP: bad message: {e}"))
    }

    /// Runs a command; returns its `return` value (events are skipped).
    pub(crate) async fn command(&mut self, name: &str, args: Value) -> Result<Value, String> {
        let msg = json!({"execute": name, "arguments": args});
        self.w.write_all(format!("{msg}\n").as_bytes()).await.map_err(|e| format!("QMP: {e}"))?;
        loop {
            let v = self.next().await?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(e["desc"].as_str().unwrap_or("QMP error").to_string());
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// Runs a snapshot job to its end; returns the job's error, if any.
    pub(crate) async fn job(&mut self, name: &str, args: Value) -> Result<(), String> {
        let id = args["job-id"].as_str().unwrap_or_default().to_string();
        self.command(name, args).await?;
        loop {
            let jobs = self.command("query-jobs", json!({})).await?;
            let job = jobs.as_array().and_then(|a| a.iter().find(|j| j["id"] == id.as_str())).cloned();
            match job {
                Some(j) if j["status"] == "concluded" => {
                    let _ = self.command("job-dismiss", json!({ "id": id })).await;
                    return match j.get("error").and_then(Value::as_str) {
                        Some(e) => Err(e.to_string()),
                        None => Ok(()),
                    };
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                None => return Err(format!("job {id} vanished")),
            }
        }
    }
}
