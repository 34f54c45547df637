//! Compression dictionaries (spec sections 10.4–10.7): identity and the
//! `.mmtpdict` file format.

use std::sync::Arc;

pub const FILE_MAGIC: &[u8; 8] = b"MMTPDICT";
pub const FILE_FORMAT_VERSION: u8 = 1;
pub const MAX_DICTIONARY_ID: u64 = u32::MAX as u64;
const HEADER_LEN: usize = 13;

/// A zstd dictionary known to both peers under `dict_id` (1 ..= 2^32 - 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dictionary {
    pub dict_id: u32,
    pub content: Arc<[u8]>,
}

impl Dictionary {
    pub fn new(dict_id: u32, content: impl Into<Arc<[u8]>>) -> Result<Self, String> {
        let content = content.into();
        if dict_id == 0 {
            return Err(format!(
                "dictionary id must be 1..{MAX_DICTIONARY_ID}, got 0"
            ));
        }
        if content.is_empty() {
            return Err("dictionary content is empty".into());
        }
        Ok(Dictionary { dict_id, content })
    }

    /// Parse the `.mmtpdict` file format (spec section 10.7).
    pub fn from_file_bytes(data: &[u8]) -> Result<Self, String> {
        if data.len() <= HEADER_LEN || &data[..8] != FILE_MAGIC {
            return Err("not an MMTP dictionary file (bad magic or too short)".into());
        }
        if data[8] != FILE_FORMAT_VERSION {
            return Err(format!("unsupported dictionary file version {}", data[8]));
        }
        let dict_id = u32::from_be_bytes([data[9], data[10], data[11], data[12]]);
        Dictionary::new(dict_id, &data[HEADER_LEN..])
    }

    /// Serialise in the `.mmtpdict` file format.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.content.len());
        out.extend_from_slice(FILE_MAGIC);
        out.push(FILE_FORMAT_VERSION);
        out.extend_from_slice(&self.dict_id.to_be_bytes());
        out.extend_from_slice(&self.content);
        out
    }
}
