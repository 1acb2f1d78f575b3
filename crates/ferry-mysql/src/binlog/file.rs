//! Reading binlog files offline (tests, fixtures, `mysqlbinlog`-style use).
//!
//! [`BinlogFileReader`] checks the `fe 'bin'` magic, frames each event
//! itself (header, declared size, enough bytes, CRC32 when the file uses
//! checksums) before handing complete bytes to `mysql_common`'s parser, so a
//! truncated or damaged file is a typed error naming `file:offset`, never a
//! panic. MySQL 8 TRANSACTION_PAYLOAD events are yielded, then the events
//! inside them (decompressed, zstd), as a replication stream delivers them.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

use ferry_core::Error;
use mysql_common::binlog::BinlogFileHeader;
use mysql_common::binlog::consts::{BinlogChecksumAlg, BinlogVersion, EventType};
use mysql_common::binlog::events::{Event, FormatDescriptionEvent, TransactionPayloadEvent};

/// Binlog event header length (v4).
const HEADER_LEN: usize = 19;
/// Largest event ferry reads (MySQL caps packets at 1 GiB).
const MAX_EVENT: usize = 1 << 30;

/// Iterates over the events of one binlog file.
pub struct BinlogFileReader<R> {
    input: R,
    name: String,
    offset: u64,
    fde: FormatDescriptionEvent<'static>,
    /// Decompressed events of the last TRANSACTION_PAYLOAD, and where we are in them.
    inner: Option<(Vec<u8>, usize)>,
    done: bool,
}

impl<R> std::fmt::Debug for BinlogFileReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinlogFileReader")
            .field("name", &self.name)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

fn damaged(name: &str, offset: u64, what: impl std::fmt::Display) -> Error {
    Error::operator(
        format!("binlog {name}:{offset}: {what}"),
        "the binlog file is truncated or damaged; read the changes through the server instead",
    )
}

impl<R: Read> BinlogFileReader<R> {
    /// Opens a binlog file; `name` is its file name (`mysql-bin.000003`).
    pub fn new(name: impl Into<String>, mut input: R) -> Result<Self, Error> {
        let name = name.into();
        let mut magic = [0u8; 4];
        input
            .read_exact(&mut magic)
            .map_err(|_| damaged(&name, 0, "too short for a binlog file"))?;
        if magic != BinlogFileHeader::VALUE {
            return Err(damaged(&name, 0, "not a binlog file (bad magic)"));
        }
        Ok(BinlogFileReader {
            input,
            name,
            offset: 4,
            fde: FormatDescriptionEvent::new(BinlogVersion::Version4),
            inner: None,
            done: false,
        })
    }

    /// Offset of the next event in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn read_outer(&mut self) -> Result<Option<Event>, Error> {
        let at = self.offset;
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = self
                .input
                .read(&mut header[got..])
                .map_err(|e| damaged(&self.name, at, format!("read error: {e}")))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(damaged(&self.name, at, "truncated event header"));
        }
        let size = u32::from_le_bytes([header[9], header[10], header[11], header[12]]) as usize;
        if !(HEADER_LEN..=MAX_EVENT).contains(&size) {
            return Err(damaged(
                &self.name,
                at,
                format!("impossible event size {size}"),
            ));
        }
        let mut buf = header.to_vec();
        buf.resize(size, 0);
        self.input.read_exact(&mut buf[HEADER_LEN..]).map_err(|_| {
            damaged(
                &self.name,
                at,
                format!("truncated event (declares {size} bytes)"),
            )
        })?;
        let event = self.parse(&buf, at, true)?;
        self.offset += size as u64;
        Ok(Some(event))
    }

    fn parse(&mut self, buf: &[u8], at: u64, checksummed: bool) -> Result<Event, Error> {
        let is_fde = buf.get(4) == Some(&(EventType::FORMAT_DESCRIPTION_EVENT as u8));
        let mut fde = self.fde.clone();
        if !checksummed {
            let mut footer = fde.footer();
            footer.set_checksum_enabled(false);
            fde = fde.with_footer(footer);
        }
        // The body must hold the checksum the format promises.
        let crc = matches!(
            self.fde.footer().get_checksum_alg(),
            Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32))
        );
        let min = HEADER_LEN
            + if is_fde {
                57
            } else if checksummed && crc {
                4
            } else {
                0
            };
        if buf.len() < min {
            return Err(damaged(&self.name, at, "event shorter than its header"));
        }
        let parsed = catch_unwind(AssertUnwindSafe(|| Event::read(&fde, buf)));
        let event = match parsed {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => return Err(damaged(&self.name, at, format!("unparseable event: {e}"))),
            Err(_) => return Err(damaged(&self.name, at, "unparseable event")),
        };
        if checksummed
            && let Ok(Some(alg)) = event.footer().get_checksum_alg()
            && alg == BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32
            && (is_fde || event.footer().get_checksum_enabled())
        {
            let want = event.checksum().map(u32::from_le_bytes);
            let have = event.calc_checksum(alg);
            if want != Some(have) {
                return Err(damaged(&self.name, at, "event checksum mismatch"));
            }
        }
        if is_fde {
            let fde = catch_unwind(AssertUnwindSafe(|| {
                event.read_event::<FormatDescriptionEvent<'_>>()
            }))
            .map_err(|_| damaged(&self.name, at, "unparseable FORMAT_DESCRIPTION"))?
            .map_err(|e| {
                damaged(
                    &self.name,
                    at,
                    format!("unparseable FORMAT_DESCRIPTION: {e}"),
                )
            })?;
            self.fde = fde.into_owned().with_footer(event.footer());
        }
        if event.header().event_type_raw() == EventType::TRANSACTION_PAYLOAD_EVENT as u8 {
            if !checksummed {
                return Err(damaged(
                    &self.name,
                    at,
                    "TRANSACTION_PAYLOAD inside a payload",
                ));
            }
            let payload = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<u8>, String> {
                let tpe: TransactionPayloadEvent<'_> =
                    event.read_event().map_err(|e| e.to_string())?;
                let limit = tpe.uncompressed_size().min(MAX_EVENT as u64 * 4);
                let mut out = Vec::new();
                tpe.decompressed()
                    .map_err(|e| e.to_string())?
                    .take(limit + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| e.to_string())?;
                if out.len() as u64 != tpe.uncompressed_size() {
                    return Err(format!(
                        "payload decompresses to {} bytes, header says {}",
                        out.len(),
                        tpe.uncompressed_size()
                    ));
                }
                Ok(out)
            }))
            .map_err(|_| damaged(&self.name, at, "undecodable TRANSACTION_PAYLOAD"))?
            .map_err(|e| {
                damaged(
                    &self.name,
                    at,
                    format!("undecodable TRANSACTION_PAYLOAD: {e}"),
                )
            })?;
            self.inner = Some((payload, 0));
        }
        Ok(event)
    }

    fn read_inner(&mut self) -> Result<Option<Event>, Error> {
        let Some((buf, pos)) = self.inner.take() else {
            return Ok(None);
        };
        if pos >= buf.len() {
            return Ok(None);
        }
        // Errors inside a payload name the payload event's offset.
        let at = self.offset;
        let rest = &buf[pos..];
        if rest.len() < HEADER_LEN {
            return Err(damaged(
                &self.name,
                at,
                "truncated event inside TRANSACTION_PAYLOAD",
            ));
        }
        let size = u32::from_le_bytes([rest[9], rest[10], rest[11], rest[12]]) as usize;
        if size < HEADER_LEN || size > rest.len() {
            return Err(damaged(
                &self.name,
                at,
                "bad event size inside TRANSACTION_PAYLOAD",
            ));
        }
        let event = self.parse(&rest[..size], at, false)?;
        self.inner = Some((buf, pos + size));
        Ok(Some(event))
    }
}

impl<R: Read> Iterator for BinlogFileReader<R> {
    type Item = Result<Event, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = match self.read_inner() {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => self.read_outer(),
            Err(e) => Err(e),
        };
        match r {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
