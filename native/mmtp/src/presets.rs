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
use crate::typed::{Kind, TypedTable};

/// Most names a preset may list as connection-scoped or never-indexed.
pub const MAX_PRESET_NAMES: usize = 32;

/// RFC 7541 entry overhead.
pub const ENTRY_OVERHEAD: usize = 32;

/// One preset, ready to be referred to by dynamic tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresetTable {
    pub id: u32,
    pub name: String,
    /// Entries in listed order (the first listed is the oldest table entry).
    entries: Vec<(Box<str>, Box<str>)>,
    /// Sum of name + value + 32 over the entries.
    table_bytes: usize,
    /// Typed fields: key k is the k-th (spec section 9.8).
    typed: TypedTable,
    /// Names a client sends as connection-scoped headers (spec section 9.11).
    connection: Vec<Box<str>>,
    /// Names never indexed besides the spec's list (spec section 9.6).
    never_indexed: Vec<Box<str>>,
}

impl PresetTable {
    /// Build a preset with the generic typed fields; refuses one that needs
    /// more than 3072 bytes of table space.
    pub fn new(id: u32, name: &str, entries: Vec<(String, String)>) -> Result<Self, String> {
        PresetTable::with_declarations(id, name, entries, None, Vec::new(), Vec::new())
    }

    /// Build a preset with its own typed fields (None: the generic ones),
    /// connection-scoped and never-indexed names (spec section 9.3).
    pub fn with_declarations(
        id: u32,
        name: &str,
        entries: Vec<(String, String)>,
        typed: Option<Vec<(String, Kind)>>,
        connection: Vec<String>,
        never_indexed: Vec<String>,
    ) -> Result<Self, String> {
        let table_bytes = entries
            .iter()
            .map(|(n, v)| n.len() + v.len() + ENTRY_OVERHEAD)
            .sum();
        if table_bytes > MAX_PRESET_TABLE_BYTES {
            return Err(format!(
                "preset {id} needs {table_bytes} table bytes, limit {MAX_PRESET_TABLE_BYTES}"
            ));
        }
        let typed = match typed {
            None => TypedTable::generic(),
            Some(fields) => TypedTable::new(fields)?,
        };
        for (what, names) in [
            ("connection", &connection),
            ("never_indexed", &never_indexed),
        ] {
            if names.len() > MAX_PRESET_NAMES {
                return Err(format!(
                    "preset '{what}' lists at most {MAX_PRESET_NAMES} names"
                ));
            }
            for header in names.iter() {
                if header.is_empty()
                    || header.starts_with(':')
                    || header.bytes().any(|b| b.is_ascii_uppercase())
                {
                    return Err(format!(
                        "preset '{what}': {header:?} is not a lowercase header name"
                    ));
                }
            }
        }
        Ok(PresetTable {
            id,
            name: name.to_owned(),
            entries: entries
                .into_iter()
                .map(|(n, v)| (n.into_boxed_str(), v.into_boxed_str()))
                .collect(),
            table_bytes,
            typed,
            connection: connection.into_iter().map(String::into_boxed_str).collect(),
            never_indexed: never_indexed
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
        })
    }

    pub fn typed(&self) -> &TypedTable {
        &self.typed
    }

    /// Names a client sends as connection-scoped headers.
    pub fn connection_names(&self) -> impl Iterator<Item = &str> {
        self.connection.iter().map(|n| &**n)
    }

    /// Whether the preset lists `name` as never indexed (besides the spec's list).
    #[inline]
    pub fn never_indexes(&self, name: &str) -> bool {
        !self.never_indexed.is_empty() && self.never_indexed.iter().any(|n| **n == *name)
    }

    /// Names the preset lists as never indexed.
    pub fn never_indexed_names(&self) -> impl Iterator<Item = &str> {
        self.never_indexed.iter().map(|n| &**n)
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
#[derive(Clone, Debug)]
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
        self.insert(PresetTable::new(id, name, entries)?)
    }

    /// Register a built preset; an id never changes meaning.
    pub fn insert(&mut self, table: PresetTable) -> Result<(), String> {
        let id = table.id;
        if let Some(existing) = self.by_id.get(&id) {
            if existing.entries != table.entries
                || existing.typed != table.typed
                || existing.connection != table.connection
                || existing.never_indexed != table.never_indexed
            {
                return Err(format!(
                    "preset id {id} is already registered with other content"
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
