//! `Journal::open` and `journal::verify` on a directory holding one fuzzed
//! segment file: never panic; open refuses only what verify refuses; what open
//! recovers reads back gap-free and verifies clean; payloads decode as events
//! or fail cleanly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("aliasd-fuzz-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("00000000000000000001.seg"), data).expect("write segment");
    let verified = journal::verify(&dir);
    match journal::Journal::open(&dir, journal::Options::default()) {
        Ok(opened) => {
            if verified.is_ok() {
                assert_eq!(
                    opened.recovery.truncated_bytes, 0,
                    "verify passed, open cut"
                );
            }
            let last = opened.journal.last_seq().0;
            let mut next = 1;
            for record in opened
                .journal
                .read_from(journal::Seq(1))
                .expect("read_from")
            {
                let (seq, payload) = record.expect("a recovered record reads back");
                assert_eq!(seq.0, next);
                next += 1;
                let _ = aliasd::event::Event::decode(&payload);
            }
            assert_eq!(next - 1, last);
            opened.journal.close();
            drop(opened);
            if let Err(e) = journal::verify(&dir) {
                panic!("verify after recovery: {e}");
            }
        }
        Err(e) => {
            assert!(verified.is_err(), "verify passed but open failed: {e}");
        }
    }
});
