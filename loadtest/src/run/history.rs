//! Per-write history (`loadtest run --history FILE`, and the failover checker): one JSON line
//! per write the generator sent or tried to send.

use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    pub worker: usize,
    pub key: String,
    pub value: String,
    /// Microseconds since the start of the run.
    pub intended_us: u64,
    pub sent_us: u64,
    /// When the response (or the error) came back.
    pub ack_us: u64,
    /// HTTP status, when a response came back.
    #[serde(default)]
    pub status: Option<u16>,
    /// "ok", or an error label (`connect`, `timeout`, `io`, `http_503` ...).
    pub outcome: String,
    /// The epoch the write was accepted with (`X-Writer-Epoch` of the response, or the JSON
    /// body's `epoch`), when the server said.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// The node that answered (`X-Node`), when it said.
    #[serde(default)]
    pub node: Option<String>,
}

impl WriteRecord {
    pub fn acked(&self) -> bool {
        self.outcome == "ok"
    }
}

pub fn write_jsonl(path: &Path, records: &[WriteRecord]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("--history {}: {e}", path.display()))?;
    let mut w = BufWriter::new(f);
    for r in records {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<WriteRecord>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}
