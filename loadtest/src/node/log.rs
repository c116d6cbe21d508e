//! The shared append-only log that stands in for the Kafka event stream.
//!
//! One JSON object per line. Every node of a demo cluster opens the same file: the node that
//! accepts a write appends it (under an exclusive `flock`, see `committer`), every node tails it
//! into memory. The failover checker reads the same file afterwards, so the format is public:
//!
//! ```json
//! {"seq":12,"ts_ms":1767225600123,"node":"node-1","epoch":3,"op":"put","key":"k","value":"v"}
//! {"seq":13,"ts_ms":1767225600124,"node":"node-1","epoch":3,"op":"delete","key":"k"}
//! ```
//!
//! `seq` is the 1-based line number in the file (torn or unreadable lines count too).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Wall-clock time of the append (ms since the Unix epoch); readers apply `ts_ms + lag`.
    pub ts_ms: u64,
    /// Name of the node that accepted the write.
    pub node: String,
    /// The `X-Writer-Epoch` the write was accepted with.
    pub epoch: u64,
    pub op: OpKind,
    pub key: String,
    /// Present for `put`, absent for `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One line of the log as read back: a record, or a line that is not one (a torn write of a
/// process killed mid-append, or a foreign line), kept so that line numbers stay right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Record(Record),
    Corrupt { line_no: u64, reason: String },
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Opens (creating if needed) the log for appending. O_APPEND makes every `write` land at the
/// current end even though several processes hold the file open.
pub fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

/// Reads the log incrementally: each call returns the complete lines appended since the last.
#[derive(Debug)]
pub struct LogTail {
    file: File,
    /// Bytes of a line whose newline has not been written yet.
    partial: Vec<u8>,
    /// Complete lines consumed so far (= the `seq` of the last one).
    lines: u64,
    buf: Vec<u8>,
}

impl LogTail {
    pub fn open(path: &Path) -> io::Result<Self> {
        // The file may not exist yet when a reader starts before any writer: create it empty.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let mut file = file;
        file.seek(SeekFrom::Start(0))?;
        Ok(LogTail {
            file,
            partial: Vec::new(),
            lines: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// True when the file ends in the middle of a line. Under the log lock this means a torn
    /// write (its writer died), outside it may just be a write in progress.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Reads everything appended since the last call and returns the complete lines.
    pub fn read_new(&mut self) -> io::Result<Vec<Line>> {
        self.buf.clear();
        self.file.read_to_end(&mut self.buf)?;
        if self.buf.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut start = 0;
        let data = std::mem::take(&mut self.buf);
        while let Some(pos) = data[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            self.lines += 1;
            let line = if self.partial.is_empty() {
                parse_line(&data[start..end], self.lines)
            } else {
                self.partial.extend_from_slice(&data[start..end]);
                let whole = std::mem::take(&mut self.partial);
                parse_line(&whole, self.lines)
            };
            out.push(line);
            start = end + 1;
        }
        self.partial.extend_from_slice(&data[start..]);
        self.buf = data;
        Ok(out)
    }

    /// Moves past `bytes` holding `lines` complete lines that this process appended itself
    /// while holding the lock, so they are not parsed back.
    pub fn skip_own(&mut self, bytes: u64, lines: u64) -> io::Result<()> {
        debug_assert!(self.partial.is_empty());
        self.file.seek(SeekFrom::Current(bytes as i64))?;
        self.lines += lines;
        Ok(())
    }
}

fn parse_line(bytes: &[u8], line_no: u64) -> Line {
    match serde_json::from_slice::<Record>(bytes) {
        Ok(r) => Line::Record(r),
        Err(e) => Line::Corrupt {
            line_no,
            reason: e.to_string(),
        },
    }
}

/// Reads a whole log file (for the failover checker and tests). A trailing line without a
/// newline is reported as corrupt.
pub fn read_all(path: &Path) -> io::Result<Vec<Line>> {
    let mut tail = LogTail::open(path)?;
    let mut lines = tail.read_new()?;
    if tail.has_partial() {
        lines.push(Line::Corrupt {
            line_no: tail.lines() + 1,
            reason: "torn line at end of file (no newline)".into(),
        });
    }
    Ok(lines)
}

/// A record as `node` appends it: a put of `value`, or a delete when there is none.
#[cfg(test)]
pub(crate) fn record(
    seq: u64,
    ts_ms: u64,
    node: &str,
    epoch: u64,
    key: &str,
    value: Option<&str>,
) -> Record {
    Record {
        seq,
        ts_ms,
        node: node.into(),
        epoch,
        op: if value.is_some() {
            OpKind::Put
        } else {
            OpKind::Delete
        },
        key: key.into(),
        value: value.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(seq: u64, epoch: u64, key: &str, value: Option<&str>) -> Record {
        record(seq, 1, "n", epoch, key, value)
    }

    #[test]
    fn record_format_is_stable() {
        let r = rec(3, 7, "k", Some("v"));
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"seq":3,"ts_ms":1,"node":"n","epoch":7,"op":"put","key":"k","value":"v"}"#
        );
        let d = serde_json::to_string(&rec(4, 7, "k", None)).unwrap();
        assert!(!d.contains("value"), "{d}");
    }

    #[test]
    fn tail_returns_only_complete_lines_and_joins_partials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut f = open_for_append(&path).unwrap();
        let mut tail = LogTail::open(&path).unwrap();
        assert!(tail.read_new().unwrap().is_empty());

        let l1 = serde_json::to_string(&rec(1, 1, "a", Some("x\ny"))).unwrap();
        let l2 = serde_json::to_string(&rec(2, 1, "b", None)).unwrap();
        write!(f, "{l1}\n{}", &l2[..5]).unwrap();
        let got = tail.read_new().unwrap();
        assert_eq!(got, vec![Line::Record(rec(1, 1, "a", Some("x\ny")))]);
        assert!(tail.has_partial());

        writeln!(f, "{}", &l2[5..]).unwrap();
        writeln!(f, "not json").unwrap();
        let got = tail.read_new().unwrap();
        assert_eq!(got[0], Line::Record(rec(2, 1, "b", None)));
        assert!(matches!(got[1], Line::Corrupt { line_no: 3, .. }));
        assert_eq!(tail.lines(), 3);
        assert!(!tail.has_partial());
    }

    #[test]
    fn skip_own_moves_past_appended_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut f = open_for_append(&path).unwrap();
        let mut tail = LogTail::open(&path).unwrap();
        let l1 = serde_json::to_string(&rec(1, 1, "a", Some("1"))).unwrap() + "\n";
        f.write_all(l1.as_bytes()).unwrap();
        tail.skip_own(l1.len() as u64, 1).unwrap();
        let l2 = serde_json::to_string(&rec(2, 1, "b", Some("2"))).unwrap() + "\n";
        f.write_all(l2.as_bytes()).unwrap();
        assert_eq!(
            tail.read_new().unwrap(),
            vec![Line::Record(rec(2, 1, "b", Some("2")))]
        );
        assert_eq!(tail.lines(), 2);
    }
}
