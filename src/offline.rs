//! Offline journal commands (`aliasd journal verify|dump|compact|repair`),
//! run while the server is stopped.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

use crate::config::JournalAction;

/// Runs one offline journal command.
///
/// # Errors
///
/// Damage found by `verify`, or a journal that cannot be opened or written.
pub fn run(action: JournalAction, json: bool) -> anyhow::Result<()> {
    match action {
        JournalAction::Verify(dir) => verify(&dir.resolve(), json),
        JournalAction::Dump(dir) => dump(&dir.resolve()),
        JournalAction::Compact(dir) => compact(&dir.resolve()),
        JournalAction::Repair { dir, yes } => repair(&dir.resolve(), yes),
    }
}

fn verify(dir: &Path, json: bool) -> anyhow::Result<()> {
    if !dir.exists() {
        bail!("no journal at {}", dir.display());
    }
    let report = journal::verify(dir)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "records": report.records,
                "segments": report.segments,
                "last_seq": report.last_seq.0,
                "snapshot_seq": report.snapshot_seq.map(|s| s.0),
            })
        );
    } else {
        println!(
            "ok: {} records in {} segments, last seq {}, snapshot {}",
            report.records,
            report.segments,
            report.last_seq.0,
            report
                .snapshot_seq
                .map(|s| s.0.to_string())
                .unwrap_or_else(|| "none".into())
        );
    }
    Ok(())
}

fn open(dir: &Path, repair: bool) -> anyhow::Result<journal::Opened> {
    if !dir.exists() {
        bail!("no journal at {}", dir.display());
    }
    let options = journal::Options {
        repair,
        ..journal::Options::default()
    };
    journal::Journal::open(dir, options)
        .with_context(|| format!("opening journal {}", dir.display()))
}

fn dump(dir: &Path) -> anyhow::Result<()> {
    let opened = open(dir, false)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for record in opened.journal.read_from(journal::Seq(1))? {
        let (seq, payload) = record?;
        match crate::event::Event::decode(&payload) {
            Ok(event) => writeln!(out, "{}", event.to_json())?,
            Err(e) => bail!("record {}: {e}", seq.0),
        }
    }
    out.flush()?;
    Ok(())
}

fn compact(dir: &Path) -> anyhow::Result<()> {
    let opened = open(dir, false)?;
    let log = crate::log::file::FileLog::from(opened.journal.clone());
    let index = crate::registry::load_index(&log, opened.snapshot.map(Into::into))?;
    let data = crate::snapshot::encode(&index);
    opened
        .journal
        .write_snapshot(journal::Seq(index.last_seq()), &data)?;
    println!(
        "snapshot written at seq {} ({} aliases, {} bytes)",
        index.last_seq(),
        index.len(),
        data.len()
    );
    Ok(())
}

fn repair(dir: &Path, yes: bool) -> anyhow::Result<()> {
    match journal::verify(dir) {
        Ok(report) => {
            println!(
                "journal is intact ({} records); nothing to repair",
                report.records
            );
            return Ok(());
        }
        Err(journal::Error::Corrupt {
            path,
            offset,
            reason,
        }) => {
            println!(
                "damage in {} at byte {offset}: {reason}\nrepair keeps every record before it and drops that record and everything after it (later segments included); \
                 a valid snapshot is always kept: if the records kept would end before it, every segment is moved as it is into a directory inside the journal's instead, and the journal goes on after the snapshot",
                path.display()
            );
        }
        Err(e) => return Err(e.into()),
    }
    if !yes {
        bail!("nothing changed; run again with --yes to repair");
    }
    let opened = open(dir, true)?;
    let recovery = &opened.recovery;
    match (&recovery.set_aside, &opened.snapshot) {
        (Some(aside), Some(snapshot)) => println!(
            "repaired: kept the snapshot at seq {} (the registry as of that seq); the journal \
             ended before it, so its segments ({} valid records, all covered by the snapshot) \
             were moved, unchanged, to {}; journal now ends at seq {}",
            snapshot.seq.0,
            recovery.set_aside_records,
            aside.display(),
            opened.journal.last_seq().0
        ),
        _ => println!(
            "repaired: dropped {} records ({} bytes); journal now ends at seq {}",
            recovery.dropped_records,
            recovery.truncated_bytes,
            opened.journal.last_seq().0
        ),
    }
    Ok(())
}
