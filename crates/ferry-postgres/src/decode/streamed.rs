//! In-progress transactions of protocol v2 (`streaming 'on'`).
//!
//! The server sends chunks of a large transaction before it commits, each
//! chunk between Stream Start and Stream Stop, and finally a Stream Commit or
//! Stream Abort. The raw messages of each top-level xid are kept here in
//! arrival order, tagged with the (sub)transaction xid they carried. All
//! open transactions share ONE in-memory budget (the spill threshold): when
//! their buffered bytes together pass it, the largest one moves to an
//! anonymous temp file (and appends there from then on), so memory stays
//! bounded however many large transactions the server streams at once. Stream Commit hands the
//! transaction out for replay through the decoder; a subtransaction abort
//! marks its xid so its messages are skipped on replay; a top-level abort
//! drops everything. Nothing here reaches the consumer before the commit.
//!
//! File I/O is plain `std::fs` on the decoding task: the file is local,
//! written sequentially through a buffer and read back once.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::DecodeError;

/// Buffers of all streamed transactions not yet committed or aborted.
#[derive(Debug)]
pub struct StreamBuffers {
    txns: HashMap<u32, BufferedTxn>,
    /// Bytes all transactions together keep in memory before spilling.
    spill_threshold: usize,
    /// Bytes currently in memory, over all transactions.
    memory_bytes: usize,
    spill_dir: Option<PathBuf>,
}

/// One streamed transaction's messages.
#[derive(Debug, Default)]
pub struct BufferedTxn {
    memory: Vec<(u32, Vec<u8>)>,
    memory_bytes: usize,
    file: Option<BufWriter<File>>,
    aborted: HashSet<u32>,
    messages: u64,
}

impl StreamBuffers {
    /// `spill_threshold`: bytes all open transactions together keep in
    /// memory; past it the largest moves to a temp file in `spill_dir` (the
    /// system temp dir if `None`).
    pub fn new(spill_threshold: usize, spill_dir: Option<PathBuf>) -> Self {
        StreamBuffers {
            txns: HashMap::new(),
            spill_threshold,
            memory_bytes: 0,
            spill_dir,
        }
    }

    pub fn push(&mut self, top_xid: u32, xid: u32, raw: &[u8]) -> Result<(), DecodeError> {
        let txn = self.txns.entry(top_xid).or_default();
        txn.messages += 1;
        if let Some(file) = &mut txn.file {
            return write_record(file, xid, raw);
        }
        txn.memory.push((xid, raw.to_vec()));
        txn.memory_bytes += raw.len();
        self.memory_bytes += raw.len();
        while self.memory_bytes > self.spill_threshold {
            let Some((&largest, _)) = self
                .txns
                .iter()
                .filter(|(_, t)| t.file.is_none() && t.memory_bytes > 0)
                .max_by_key(|(_, t)| t.memory_bytes)
            else {
                break;
            };
            self.spill(largest)?;
        }
        Ok(())
    }

    /// Move transaction `top_xid`'s in-memory messages to a temp file.
    fn spill(&mut self, top_xid: u32) -> Result<(), DecodeError> {
        let open = self.txns.len();
        let Some(txn) = self.txns.get_mut(&top_xid) else {
            return Ok(());
        };
        let file = match &self.spill_dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        }
        .map_err(DecodeError::Spill)?;
        let mut file = BufWriter::new(file);
        for (x, m) in txn.memory.drain(..) {
            write_record(&mut file, x, &m)?;
        }
        txn.memory = Vec::new();
        self.memory_bytes -= txn.memory_bytes;
        tracing::info!(
            xid = top_xid,
            bytes = txn.memory_bytes,
            open_transactions = open,
            "streamed transaction spilled to disk"
        );
        txn.memory_bytes = 0;
        txn.file = Some(file);
        Ok(())
    }

    /// Stream Abort: the whole transaction (`subxid == xid`) or one subtransaction.
    pub fn abort(&mut self, xid: u32, subxid: u32) {
        if xid == subxid {
            if let Some(t) = self.txns.remove(&xid) {
                self.memory_bytes -= t.memory_bytes;
            }
        } else if let Some(t) = self.txns.get_mut(&xid) {
            t.aborted.insert(subxid);
        }
    }

    /// Bytes all open transactions keep in memory now.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Stream Commit: the transaction's messages for replay (empty if none
    /// were streamed, e.g. all changes filtered out).
    pub fn take(&mut self, xid: u32) -> Result<Replay, DecodeError> {
        let txn = self.txns.remove(&xid).unwrap_or_default();
        self.memory_bytes -= txn.memory_bytes;
        let source = match txn.file {
            Some(w) => {
                let mut f = w
                    .into_inner()
                    .map_err(|e| DecodeError::Spill(e.into_error()))?;
                f.seek(SeekFrom::Start(0)).map_err(DecodeError::Spill)?;
                Source::File(BufReader::new(f))
            }
            None => Source::Memory(txn.memory.into_iter()),
        };
        Ok(Replay {
            source,
            aborted: txn.aborted,
        })
    }

    /// Number of transactions currently buffered.
    pub fn open_transactions(&self) -> usize {
        self.txns.len()
    }
}

fn write_record(w: &mut BufWriter<File>, xid: u32, raw: &[u8]) -> Result<(), DecodeError> {
    let len = u32::try_from(raw.len()).map_err(|_| DecodeError::Length)?;
    w.write_all(&xid.to_le_bytes())
        .map_err(DecodeError::Spill)?;
    w.write_all(&len.to_le_bytes())
        .map_err(DecodeError::Spill)?;
    w.write_all(raw).map_err(DecodeError::Spill)
}

#[derive(Debug)]
enum Source {
    Memory(std::vec::IntoIter<(u32, Vec<u8>)>),
    File(BufReader<File>),
}

/// The messages of a committed streamed transaction, in order, without
/// those of aborted subtransactions.
#[derive(Debug)]
pub struct Replay {
    source: Source,
    aborted: HashSet<u32>,
}

impl Replay {
    /// The next raw message (in streamed format, with its xid field).
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        loop {
            let (xid, raw) = match &mut self.source {
                Source::Memory(it) => match it.next() {
                    Some(x) => x,
                    None => return Ok(None),
                },
                Source::File(r) => match read_record(r)? {
                    Some(x) => x,
                    None => return Ok(None),
                },
            };
            if !self.aborted.contains(&xid) {
                return Ok(Some(raw));
            }
        }
    }
}

fn read_record(r: &mut BufReader<File>) -> Result<Option<(u32, Vec<u8>)>, DecodeError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(DecodeError::Spill(e)),
    }
    let xid = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let mut raw = vec![0u8; len];
    r.read_exact(&mut raw).map_err(DecodeError::Spill)?;
    Ok(Some((xid, raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut r: Replay) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(m) = r.next_message().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn spills_and_replays_in_order_without_aborted_subxacts() {
        for threshold in [0, 10, 1 << 20] {
            let mut b = StreamBuffers::new(threshold, None);
            b.push(7, 7, b"one").unwrap();
            b.push(7, 8, b"sub-aborted").unwrap();
            b.push(9, 9, b"other txn").unwrap();
            b.push(7, 7, b"two").unwrap();
            b.abort(7, 8);
            b.abort(9, 9);
            assert_eq!(b.open_transactions(), 1);
            let got = drain(b.take(7).unwrap());
            assert_eq!(
                got,
                vec![b"one".to_vec(), b"two".to_vec()],
                "threshold {threshold}"
            );
            assert!(drain(b.take(9).unwrap()).is_empty());
            assert_eq!(b.memory_bytes(), 0);
        }
    }

    #[test]
    fn concurrent_transactions_share_one_budget() {
        let mut b = StreamBuffers::new(100, None);
        // Four transactions of 40 bytes each: together past the budget of
        // 100, although each alone is below it.
        for round in 0..4u8 {
            for xid in 1..=4u32 {
                b.push(xid, xid, &[round; 10]).unwrap();
                assert!(b.memory_bytes() <= 100, "{}", b.memory_bytes());
            }
        }
        assert!(b.txns.values().any(|t| t.file.is_some()), "nothing spilled");
        for xid in 1..=4u32 {
            let got = drain(b.take(xid).unwrap());
            assert_eq!(got, (0..4u8).map(|r| vec![r; 10]).collect::<Vec<_>>());
        }
        assert_eq!(b.memory_bytes(), 0);
    }
}
