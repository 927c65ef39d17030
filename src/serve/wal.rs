//! The collector's write-ahead log: what the collector acknowledged and the events table does not
//! hold yet. One writer thread appends framed records to the current segment file and fsyncs once
//! for every group of requests waiting (group commit); a request is answered only after the fsync.
//! The flusher seals the current segment, commits the sealed ones to `events` and deletes them.
//! Segments left by a crash are sealed ones: the next flush replays them.
//!
//! A frame is `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`. A torn frame at the
//! end of a segment (a write the crash interrupted, never acknowledged) ends the segment.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// What the writer thread is asked to do.
enum Request {
    Append {
        frames: Vec<u8>,
        ack: oneshot::Sender<std::io::Result<()>>,
    },
    /// Close the current segment; later appends go to a new one.
    Seal { ack: oneshot::Sender<()> },
}

/// Counters shared by the writer, the flusher and `/metrics`.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Bytes in all segments not yet flushed (sealed and current).
    pub pending_bytes: AtomicU64,
    /// Bytes in the current segment.
    pub current_bytes: AtomicU64,
    /// When the current segment got its first record (micros since `started`), 0 when empty.
    pub current_first_write: AtomicU64,
    /// Sequence number of the current segment; all lower ones are sealed.
    pub current_seq: AtomicU64,
}

impl WalStats {
    /// Bytes in sealed segments: waiting for a flush that has not succeeded yet.
    pub fn sealed_bytes(&self) -> u64 {
        // The writer adds to `current_bytes` before `pending_bytes`; reading in the opposite
        // order can only under-count, never report a fresh write as sealed.
        let pending = self.pending_bytes.load(Ordering::SeqCst);
        pending.saturating_sub(self.current_bytes.load(Ordering::SeqCst))
    }
}

/// A handle on the log; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    dir: PathBuf,
    tx: mpsc::Sender<Request>,
    pub stats: Arc<WalStats>,
    started: Instant,
}

/// Requests waiting for the writer beyond this make callers wait: memory stays bounded.
const QUEUE: usize = 1024;
/// One group commit writes at most this much before it fsyncs.
const GROUP_BYTES: usize = 16 * 1024 * 1024;

impl Wal {
    /// Opens the log in `dir` (created when missing) and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Wal> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let existing = segments(dir)?;
        let mut pending = 0;
        for (_, path) in &existing {
            pending += std::fs::metadata(path)
                .map_err(|e| Error::io(path, e))?
                .len();
        }
        let next = existing.last().map_or(1, |(seq, _)| seq + 1);
        let stats = Arc::new(WalStats::default());
        stats.pending_bytes.store(pending, Ordering::SeqCst);
        stats.current_seq.store(next, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(QUEUE);
        let started = Instant::now();
        let writer = Writer {
            dir: dir.to_path_buf(),
            stats: stats.clone(),
            file: None,
            started,
        };
        std::thread::Builder::new()
            .name("tribe-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            tx,
            stats,
            started,
        })
    }

    /// Appends records and returns once they are on disk.
    pub async fn append(&self, records: &[Vec<u8>]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut frames = Vec::with_capacity(records.iter().map(|r| r.len() + 8).sum());
        for record in records {
            frame(&mut frames, record);
        }
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Request::Append { frames, ack })
            .await
            .map_err(|_| Error::Other("write-ahead log is closed".into()))?;
        done.await
            .map_err(|_| Error::Other("write-ahead log writer stopped".into()))?
            .map_err(|e| Error::io(&self.dir, e))
    }

    /// Seals the current segment and returns every sealed segment, oldest first.
    pub async fn seal(&self) -> Result<Vec<PathBuf>> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Request::Seal { ack })
            .await
            .map_err(|_| Error::Other("write-ahead log is closed".into()))?;
        done.await
            .map_err(|_| Error::Other("write-ahead log writer stopped".into()))?;
        self.sealed()
    }

    /// Sealed segments, oldest first.
    pub fn sealed(&self) -> Result<Vec<PathBuf>> {
        let current = self.stats.current_seq.load(Ordering::SeqCst);
        Ok(segments(&self.dir)?
            .into_iter()
            .filter(|(seq, _)| *seq < current)
            .map(|(_, path)| path)
            .collect())
    }

    /// Deletes flushed segments.
    pub fn remove(&self, flushed: &[PathBuf]) -> Result<()> {
        for path in flushed {
            let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            self.stats.pending_bytes.fetch_sub(len, Ordering::SeqCst);
        }
        Ok(())
    }

    /// How long the oldest record of the current segment has waited.
    pub fn current_age(&self) -> std::time::Duration {
        match self.stats.current_first_write.load(Ordering::SeqCst) {
            0 => std::time::Duration::ZERO,
            first => {
                let now = self.started.elapsed().as_micros() as u64;
                std::time::Duration::from_micros(now.saturating_sub(first))
            }
        }
    }
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A segment file read back: its bytes and where each whole record lies in them.
pub struct Segment {
    bytes: Vec<u8>,
    records: Vec<std::ops::Range<usize>>,
}

impl Segment {
    /// Reads a segment up to the first torn or corrupt frame.
    pub fn read(path: &Path) -> Result<Segment> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut records = Vec::new();
        let mut at = 0;
        while bytes.len() - at >= 8 {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
            let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
                break;
            };
            if crc32fast::hash(payload) != crc {
                break;
            }
            records.push(at + 8..at + 8 + len);
            at += 8 + len;
        }
        Ok(Segment { bytes, records })
    }

    /// The records, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.records.iter().map(|r| &self.bytes[r.clone()])
    }

    /// Bytes at the end that are not a whole frame (a write a crash interrupted).
    pub fn torn_bytes(&self) -> usize {
        self.bytes.len() - self.records.last().map_or(0, |r| r.end)
    }
}

/// Segment files in `dir` with their sequence numbers, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    stats: Arc<WalStats>,
    file: Option<File>,
    started: Instant,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut queued: Option<Request> = None;
        loop {
            let first = match queued.take() {
                Some(r) => r,
                None => match rx.blocking_recv() {
                    Some(r) => r,
                    None => return,
                },
            };
            match first {
                Request::Seal { ack } => {
                    self.seal();
                    let _ = ack.send(());
                }
                Request::Append { frames, ack } => {
                    // Group commit: everything already waiting goes into the same fsync.
                    let mut buffer = frames;
                    let mut acks = vec![ack];
                    while buffer.len() < GROUP_BYTES {
                        match rx.try_recv() {
                            Ok(Request::Append { frames, ack }) => {
                                buffer.extend_from_slice(&frames);
                                acks.push(ack);
                            }
                            Ok(seal) => {
                                queued = Some(seal);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let result = self.write(&buffer);
                    for ack in acks {
                        let _ = ack.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                }
            }
        }
    }

    fn write(&mut self, buffer: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let seq = self.stats.current_seq.load(Ordering::SeqCst);
            let path = self.dir.join(format!("{seq:016}.wal"));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            // The new file's name must survive a crash as well as its contents.
            File::open(&self.dir)?.sync_all()?;
            self.file = Some(file);
            let now = self.started.elapsed().as_micros().max(1) as u64;
            self.stats.current_first_write.store(now, Ordering::SeqCst);
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(buffer)?;
        file.sync_data()?;
        let len = buffer.len() as u64;
        self.stats.current_bytes.fetch_add(len, Ordering::SeqCst);
        self.stats.pending_bytes.fetch_add(len, Ordering::SeqCst);
        Ok(())
    }

    fn seal(&mut self) {
        if self.file.take().is_some() {
            self.stats.current_seq.fetch_add(1, Ordering::SeqCst);
            self.stats.current_bytes.store(0, Ordering::SeqCst);
            self.stats.current_first_write.store(0, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopening_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        wal.append(&[b"one".to_vec(), b"two".to_vec()])
            .await
            .unwrap();
        wal.append(&[b"three".to_vec()]).await.unwrap();
        assert_eq!(wal.stats.sealed_bytes(), 0, "nothing sealed yet");
        let sealed = wal.seal().await.unwrap();
        assert_eq!(sealed.len(), 1);
        // 3 records of 8 bytes framing each: sealed, waiting for a flush.
        assert_eq!(wal.stats.sealed_bytes(), 3 * 8 + 11);
        wal.append(&[b"four".to_vec()]).await.unwrap();
        drop(wal);

        // A crash mid-write leaves half a frame at the end of the newest segment.
        let reopened = Wal::open(dir.path()).unwrap();
        let all = reopened.sealed().unwrap();
        assert_eq!(all.len(), 2, "both old segments are sealed after a restart");
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&all[1])
            .unwrap();
        torn.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let first = Segment::read(&all[0]).unwrap();
        let records: Vec<&[u8]> = first.records().collect();
        assert_eq!(records, [&b"one"[..], b"two", b"three"]);
        assert_eq!(first.torn_bytes(), 0);
        let second = Segment::read(&all[1]).unwrap();
        assert_eq!(second.records().collect::<Vec<_>>(), [&b"four"[..]]);
        assert_eq!(second.torn_bytes(), 6);

        reopened.remove(&all).unwrap();
        assert!(reopened.sealed().unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_appends_are_grouped_and_all_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                wal.append(&[format!("r{i}").into_bytes()]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let sealed = wal.seal().await.unwrap();
        assert_eq!(Segment::read(&sealed[0]).unwrap().records().count(), 200);
    }
}
