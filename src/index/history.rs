//! The seqs of each alias's events, and of each type's: what
//! `GET /api/history?alias=` (or `?type=`) reads instead of the whole
//! journal (SPEC §5: history's work bounded by an index).
//!
//! One list per alias key (exact and prefix aliases share the key space, as
//! the history filter does) and one per event type, each a run of
//! LEB128-encoded gaps between consecutive seqs, so an event costs a byte or
//! two in each rather than eight.

use std::sync::Arc;

use super::HashMap;
use crate::event::EventType;

/// The seqs of one alias's events, ascending, as LEB128 gaps.
#[derive(Debug, Clone, Default)]
struct SeqList {
    /// The last seq pushed (0 before the first).
    last: u64,
    /// Each seq less the one before it (the first less 0), 7 bits a byte.
    gaps: Vec<u8>,
}

impl SeqList {
    fn push(&mut self, seq: u64) {
        let mut gap = seq - self.last;
        loop {
            let byte = (gap & 0x7f) as u8;
            gap >>= 7;
            if gap == 0 {
                self.gaps.push(byte);
                break;
            }
            self.gaps.push(byte | 0x80);
        }
        self.last = seq;
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut bytes = self.gaps.iter();
        let mut seq = 0u64;
        std::iter::from_fn(move || {
            let mut gap = 0u64;
            let mut shift = 0;
            loop {
                let byte = *bytes.next()?;
                gap |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            seq += gap;
            Some(seq)
        })
    }
}

impl SeqList {
    /// The seqs after `after` and up to `until`, at most `max`.
    fn page(&self, after: u64, until: u64, max: usize) -> Vec<u64> {
        if self.last <= after {
            return Vec::new();
        }
        self.iter()
            .skip_while(|seq| *seq <= after)
            .take_while(|seq| *seq <= until)
            .take(max)
            .collect()
    }
}

/// Seqs of events by alias and by type (a part of the journal's, see
/// [`super::Index::alias_seqs`]).
///
/// In the index's own part, an alias's list holds its past events only: the
/// seq of its latest one is its entry's `seq`, so an alias with one event
/// (most of a large registry) costs nothing here. A part gathered from the
/// log ([`super::Index::install_history_base`]) holds every seq.
#[derive(Debug, Clone, Default)]
pub struct AliasSeqs {
    exact: HashMap<Arc<str>, SeqList>,
    prefixes: HashMap<Arc<str>, SeqList>,
    /// By `EventType as usize`.
    kinds: [SeqList; EventType::ALL.len()],
    events: u64,
}

impl AliasSeqs {
    /// Notes event `seq` about the alias with this key (exact or prefix);
    /// seqs of one alias come in increasing order (a repeated or older one
    /// is ignored).
    pub fn record_alias(&mut self, prefix: bool, key: &Arc<str>, seq: u64) {
        let lists = match prefix {
            true => &mut self.prefixes,
            false => &mut self.exact,
        };
        let list = match lists.get_mut(&**key) {
            Some(list) => list,
            None => lists.entry(key.clone()).or_default(),
        };
        if seq > list.last {
            list.push(seq);
        }
    }

    /// Notes event `seq` of type `kind` (in increasing order).
    pub fn record_kind(&mut self, kind: EventType, seq: u64) {
        let of_kind = &mut self.kinds[kind as usize];
        if seq > of_kind.last {
            of_kind.push(seq);
            self.events += 1;
        }
    }

    /// Both: [`AliasSeqs::record_alias`] and [`AliasSeqs::record_kind`].
    pub fn record(&mut self, prefix: bool, key: &Arc<str>, kind: EventType, seq: u64) {
        self.record_alias(prefix, key, seq);
        self.record_kind(kind, seq);
    }

    /// The seqs recorded for the alias key `key` (the exact alias's and the
    /// prefix alias's with that key, as the history filter reads a key)
    /// after `after` and up to `until`, at most `max`, ascending.
    pub fn page(&self, key: &str, after: u64, until: u64, max: usize) -> Vec<u64> {
        let page = |lists: &HashMap<Arc<str>, SeqList>| {
            lists
                .get(key)
                .map_or_else(Vec::new, |list| list.page(after, until, max))
        };
        let mut seqs = page(&self.exact);
        let prefix = page(&self.prefixes);
        if !prefix.is_empty() {
            seqs.extend(prefix);
            seqs.sort_unstable();
            seqs.truncate(max);
        }
        seqs
    }

    /// The seqs of the events of type `kind` after `after` and up to
    /// `until`, at most `max`.
    pub fn kind_page(&self, kind: EventType, after: u64, until: u64, max: usize) -> Vec<u64> {
        self.kinds[kind as usize].page(after, until, max)
    }

    /// How many events are recorded (by type).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// How many aliases have a list.
    pub fn aliases(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    /// The heap this takes, roughly: the gaps' buffers and the maps' slots
    /// (keys are shared with the index where it holds the alias).
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Arc<str>, SeqList)>() + 1;
        (self.exact.capacity() + self.prefixes.capacity()) * slot
            + self
                .exact
                .values()
                .chain(self.prefixes.values())
                .chain(self.kinds.iter())
                .map(|list| list.gaps.capacity())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_one_aliases_seqs() {
        let mut seqs = AliasSeqs::default();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let mut of_a = Vec::new();
        for seq in 1..=3000u64 {
            if seq % 7 == 0 || seq > 2990 {
                seqs.record(false, &a, EventType::AliasUpdated, seq);
                of_a.push(seq);
            } else {
                seqs.record(false, &b, EventType::AliasCreated, seq);
            }
        }
        seqs.record(false, &a, EventType::AliasUpdated, 5); // older: ignored
        seqs.record(false, &a, EventType::AliasDeleted, 1 << 40);
        of_a.push(1 << 40);
        assert_eq!(seqs.page("a", 0, u64::MAX, usize::MAX), of_a);
        assert_eq!(seqs.page("a", 7, 28, 10), [14, 21, 28]);
        assert_eq!(seqs.page("a", 6, u64::MAX, 2), [7, 14]);
        assert_eq!(seqs.page("a", 1 << 40, u64::MAX, 2), Vec::<u64>::new());
        assert_eq!(seqs.page("c", 0, u64::MAX, 2), Vec::<u64>::new());
        assert_eq!(seqs.events(), 3001);
        // A prefix alias with the same key: both, in order.
        seqs.record_alias(true, &a, 8);
        assert_eq!(seqs.page("a", 0, 30, 4), [7, 8, 14, 21]);
        assert_eq!(
            seqs.kind_page(EventType::AliasUpdated, 0, u64::MAX, usize::MAX),
            of_a[..of_a.len() - 1]
        );
        assert_eq!(
            seqs.kind_page(EventType::AliasDeleted, 0, u64::MAX, 9),
            [1 << 40]
        );
        assert_eq!(seqs.kind_page(EventType::AliasCreated, 0, 3, 9), [1, 2, 3]);
        assert_eq!(seqs.aliases(), 3, "a, b and the prefix a");
        // Gaps under 128 take a byte each.
        let gap_bytes: usize = seqs.exact.values().map(|l| l.gaps.len()).sum();
        assert!(gap_bytes < 3001 + 10, "{gap_bytes}");
    }

    /// An index loaded from a snapshot at seq 100 knows the seqs of later
    /// events at once, and answers `alias_seqs` only once the seqs up to 100
    /// are installed; then a page spans both parts.
    #[test]
    fn an_index_from_a_snapshot_answers_once_its_base_is_installed() {
        let mut index = crate::index::Index::for_snapshot(100, 0);
        assert_eq!(index.history_gap(), Some(100));
        for seq in [103, 150] {
            let mut event = crate::event::created_for_test(seq, "m1");
            event.alias = "x".into();
            index.apply(&event).unwrap();
        }
        let key = crate::name::ModelName::parse("x").unwrap().key();
        assert_eq!(index.alias_seqs(&key, 0, u64::MAX, 10), None);
        let mut base = AliasSeqs::default();
        let key_arc: Arc<str> = Arc::from(key.as_str());
        for seq in [2, 40, 100] {
            base.record(false, &key_arc, EventType::AliasCreated, seq);
        }
        index.install_history_base(Arc::new(base.clone()), 99);
        assert_eq!(
            index.history_gap(),
            Some(100),
            "a base for other seqs is refused"
        );
        index.install_history_base(Arc::new(base), 100);
        assert_eq!(index.history_gap(), None);
        let page = |after, until, max| index.alias_seqs(&key, after, until, max).unwrap();
        assert_eq!(page(0, u64::MAX, 10), [2, 40, 100, 103, 150]);
        assert_eq!(page(2, u64::MAX, 3), [40, 100, 103]);
        assert_eq!(page(40, 103, 10), [100, 103]);
        assert_eq!(page(100, u64::MAX, 10), [103, 150]);
        assert_eq!(page(0, 50, 10), [2, 40]);
        let created = index.kind_seqs(EventType::AliasCreated, 0, u64::MAX, 10);
        assert_eq!(created.unwrap(), [2, 40, 100, 103, 150]);
        // A time-travel index keeps none.
        assert_eq!(
            index
                .clone()
                .without_history()
                .alias_seqs(&key, 0, u64::MAX, 1),
            None
        );
    }
}
