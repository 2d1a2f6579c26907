//! `ModelName::parse` on any string: never panics; what it accepts displays
//! back to the same name and maps to a path of five normal components.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = aliasd::name::ModelName::parse(text) {
        let again = aliasd::name::ModelName::parse(&name.display())
            .unwrap_or_else(|e| panic!("{text:?} displays as {:?}: {e}", name.display()));
        assert_eq!(again.key(), name.key(), "{text:?}");
        let rel = name.manifest_rel_path();
        assert_eq!(rel.components().count(), 5, "{text:?} -> {rel:?}");
        assert!(
            rel.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{text:?} -> {rel:?}"
        );
    }
    let _ = aliasd::name::is_valid_prefix(text);
});
