//! Preset header tables (spec section 9.3), chosen by id in HELLO.
//!
//! A preset is inserted into both peers' HPACK dynamic tables at connection
//! start, first entry first. Here the entries are built once per process and
//! shared by every table that loads them ([`PresetTable`] behind an `Arc`): a
//! table refers to the preset instead of copying it, and evictions (oldest,
//! i.e. first listed, first) only shorten how much of it is still live.

use std::collections::HashMap;
use std::sync::Arc;

use crate::limits::MAX_PRESET_TABLE_BYTES;

/// RFC 7541 entry overhead.
pub const ENTRY_OVERHEAD: usize = 32;

/// One preset, ready to be referred to by dynamic tables.
#[derive(Debug, PartialEq, Eq)]
pub struct PresetTable {
    pub id: u32,
    pub name: String,
    /// Entries in listed order (the first listed is the oldest table entry).
    entries: Vec<(Box<str>, Box<str>)>,
    /// Sum of name + value + 32 over the entries.
    table_bytes: usize,
}

impl PresetTable {
    /// Build a preset; refuses one that needs more than 3072 bytes of table space.
    pub fn new(id: u32, name: &str, entries: Vec<(String, String)>) -> Result<Self, String> {
        let table_bytes = entries
            .iter()
            .map(|(n, v)| n.len() + v.len() + ENTRY_OVERHEAD)
            .sum();
        if table_bytes > MAX_PRESET_TABLE_BYTES {
            return Err(format!(
                "preset {id} needs {table_bytes} table bytes, limit {MAX_PRESET_TABLE_BYTES}"
            ));
        }
        Ok(PresetTable {
            id,
            name: name.to_owned(),
            entries: entries
                .into_iter()
                .map(|(n, v)| (n.into_boxed_str(), v.into_boxed_str()))
                .collect(),
            table_bytes,
        })
    }

    /// Entries in listed order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (&**n, &**v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn table_bytes(&self) -> usize {
        self.table_bytes
    }

    /// The `i`-th newest entry (0 = last listed).
    #[inline]
    pub(crate) fn newest(&self, i: usize) -> (&[u8], &[u8]) {
        let (n, v) = &self.entries[self.entries.len() - 1 - i];
        (n.as_bytes(), v.as_bytes())
    }
}

/// Preset 1, `mobile-v1` (spec section 9.3), in listed order.
pub const MOBILE_V1: [(&str, &str); 14] = [
    ("trace-id", ""),
    ("ts", ""),
    ("sign", ""),
    ("server-time", ""),
    ("collapse-key", ""),
    ("cache-control", "no-cache"),
    ("cache-control", "no-store"),
    ("priority", "high"),
    ("priority", "normal"),
    ("retry", "1"),
    ("locale", "en-US"),
    ("locale", "zh-CN"),
    ("content-type", "application/json"),
    (":op", ""),
];

/// The presets one process knows, by id (shared by all its connections).
#[derive(Debug)]
pub struct Presets {
    by_id: HashMap<u32, Arc<PresetTable>>,
}

impl Default for Presets {
    fn default() -> Self {
        Presets::builtin()
    }
}

impl Presets {
    /// Preset 0 (empty) and preset 1 (`mobile-v1`).
    pub fn builtin() -> Self {
        let mut presets = Presets {
            by_id: HashMap::new(),
        };
        let mobile = MOBILE_V1
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        for table in [
            PresetTable::new(0, "empty", Vec::new()),
            PresetTable::new(1, "mobile-v1", mobile),
        ] {
            let table = table.expect("built-in presets fit");
            presets.by_id.insert(table.id, Arc::new(table));
        }
        presets
    }

    /// Register a preset (e.g. handed over by the Python gateway as a list of
    /// `(name, value)`); an id never changes meaning.
    pub fn add(
        &mut self,
        id: u32,
        name: &str,
        entries: Vec<(String, String)>,
    ) -> Result<(), String> {
        let table = PresetTable::new(id, name, entries)?;
        if let Some(existing) = self.by_id.get(&id) {
            if existing.entries != table.entries {
                return Err(format!(
                    "preset id {id} is already registered with other entries"
                ));
            }
            return Ok(());
        }
        self.by_id.insert(id, Arc::new(table));
        Ok(())
    }

    /// The preset with this wire id, if known.
    pub fn get(&self, id: u64) -> Option<&Arc<PresetTable>> {
        u32::try_from(id).ok().and_then(|id| self.by_id.get(&id))
    }

    /// Known ids, sorted.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub(crate) fn unknown_message(&self, id: u64) -> String {
        let ids: Vec<String> = self.ids().iter().map(|i| i.to_string()).collect();
        format!(
            "preset table {id} is unknown; known presets: ({})",
            ids.join(", ")
        )
    }
}
