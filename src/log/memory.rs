//! An [`EventLog`] in memory, shared with "other writers" through
//! [`MemoryLog::remote_append`]: the test double for a shared log.

use std::sync::{Arc, Mutex};

use crate::log::{Error, EventLog, LogReader, RemoteCommit};

/// Every record in memory; appends by "other writers" are delivered as
/// remote commits.
#[derive(Debug, Default)]
pub struct MemoryLog {
    records: Arc<Mutex<Vec<Vec<u8>>>>,
    remote: Mutex<Option<std::sync::mpsc::Sender<RemoteCommit>>>,
    receiver: Mutex<Option<std::sync::mpsc::Receiver<RemoteCommit>>>,
    node: Option<String>,
}

impl MemoryLog {
    /// An empty log whose remote commits can be taken once.
    pub fn shared() -> MemoryLog {
        let (sender, receiver) = std::sync::mpsc::channel();
        MemoryLog {
            records: Arc::default(),
            remote: Mutex::new(Some(sender)),
            receiver: Mutex::new(Some(receiver)),
            node: None,
        }
    }

    /// The same, written by the fleet node `node`.
    pub fn shared_as(node: &str) -> MemoryLog {
        MemoryLog {
            node: Some(node.to_string()),
            ..MemoryLog::shared()
        }
    }

    /// Appends as another writer would, and delivers the commit.
    pub fn remote_append(&self, payloads: Vec<Vec<u8>>) {
        let first_seq = {
            let mut records = self.records.lock().unwrap();
            let first = records.len() as u64 + 1;
            records.extend(payloads.iter().cloned());
            first
        };
        if let Some(remote) = &*self.remote.lock().unwrap() {
            let _ = remote.send(RemoteCommit {
                first_seq,
                payloads,
            });
        }
    }
}

impl EventLog for MemoryLog {
    fn append(&self, payloads: Vec<Vec<u8>>) -> Result<u64, Error> {
        let mut records = self.records.lock().unwrap();
        let first = records.len() as u64 + 1;
        records.extend(payloads);
        Ok(first)
    }

    fn last_seq(&self) -> u64 {
        self.records.lock().unwrap().len() as u64
    }

    fn first_seq(&self) -> u64 {
        1
    }

    fn read_from(&self, seq: u64) -> Result<Box<dyn LogReader>, Error> {
        let records = self.records.lock().unwrap();
        let from = usize::try_from(seq.saturating_sub(1)).unwrap_or(usize::MAX);
        let rest: Vec<(u64, Vec<u8>)> = records
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, payload)| (i as u64 + 1, payload.clone()))
            .collect();
        Ok(Box::new(MemoryReader {
            records: rest.into_iter(),
            current: Vec::new(),
        }))
    }

    fn write_snapshot(&self, _seq: u64, _data: &[u8]) -> Result<(), Error> {
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.len() as u64)
            .sum()
    }

    fn failed(&self) -> Option<Error> {
        None
    }

    fn remote_commits(&self) -> Option<std::sync::mpsc::Receiver<RemoteCommit>> {
        self.receiver.lock().unwrap().take()
    }

    fn node(&self) -> Option<String> {
        self.node.clone()
    }
}

struct MemoryReader {
    records: std::vec::IntoIter<(u64, Vec<u8>)>,
    current: Vec<u8>,
}

impl LogReader for MemoryReader {
    fn next_borrowed(&mut self) -> Option<Result<(u64, &[u8]), Error>> {
        let (seq, payload) = self.records.next()?;
        self.current = payload;
        Some(Ok((seq, &self.current)))
    }
}
