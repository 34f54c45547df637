//! Body coding (spec section 10): raw, or one magicless zstd frame per message
//! with a dictionary shared by every connection of the process.
//!
//! Compression contexts are pooled per dictionary and shared by all
//! connections (no per-connection compression state). Decoding is bomb-proof
//! (spec section 10.3): the frame header is parsed here, the declared size is
//! checked against `max_body_size` *before* decompressing, the window is
//! bounded, output goes into a buffer of exactly the declared size, and the
//! frame must account for every byte.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use zstd_safe::{
    CCtx, CParameter, DCtx, DParameter, FrameFormat, InBuffer, OutBuffer, ResetDirective,
};
use zstd_sys::ZSTD_strategy as Strategy;

use crate::dictionaries::Dictionary;
use crate::errors::{ErrorCode, LocalError, ProtocolError};
use crate::varint::{decode_varint_complete, encode_varint};

/// Bodies shorter than this never shrink under zstd, so they go raw.
pub const MIN_COMPRESS_BYTES: usize = 16;
/// The reference's level (spec section 10.2).
pub const COMPRESSION_LEVEL: i32 = 5;
/// Contexts kept per dictionary for reuse (more are created under contention
/// and dropped after use).
const POOL_SIZE: usize = 8;
/// Share of a size class's bytes that compressing must save, by default, for
/// the codec to keep trying it (`set_min_saving`; 0: always try).
pub const DEFAULT_MIN_SAVING: f64 = 0.01;
/// Size classes of the yield table: bodies of 16..32 bytes, 32..64, ...; the
/// last class holds everything from 32 KiB up.
const YIELD_CLASSES: usize = 12;
/// A class is judged only once this many of its raw bytes have been tried.
pub const YIELD_WARMUP_BYTES: u64 = 16 * 1024;
/// Past this many tried bytes a class's counts are halved, so recent bodies
/// weigh most.
pub const YIELD_WINDOW_BYTES: u64 = 256 * 1024;
/// In a class that does not pay, one body in this many is still tried, so the
/// codec notices when the traffic changes.
pub const YIELD_SAMPLE_EVERY: u64 = 32;

/// What compressing recent bodies of one size class saved (one dictionary).
///
/// zstd costs 3-5 µs on a 90-byte body and saves nothing on bodies that carry
/// no repeats (ids, tokens, numbers, already compressed data) unless a
/// dictionary knows them. Sending such bodies raw gives the same bytes; the
/// codec stops trying where its recent tries saved under `min_saving` of the
/// bytes, and keeps sampling. Relaxed atomics: the counts steer a heuristic,
/// a lost update only shifts a decision by one body.
#[derive(Default)]
struct Yield {
    tried_bytes: AtomicU64,
    saved_bytes: AtomicU64,
    /// Bodies judged while the class did not pay (tried or not).
    judged: AtomicU64,
}

fn yield_class(len: usize) -> usize {
    // len >= MIN_COMPRESS_BYTES (16): class 0 is 16..32.
    ((usize::BITS - 1 - len.leading_zeros()) as usize - 4).min(YIELD_CLASSES - 1)
}

/// libzstd 1.5.7's "default" parameter row (any source size), levels 1..=22:
/// (windowLog, chainLog, hashLog, searchLog, minMatch, targetLength, strategy).
/// The reference compresses with exactly these explicit parameters (level 5
/// for an unknown source size), so the same row gives the same bytes.
const LEVEL_PARAMS: [(u32, u32, u32, u32, u32, u32, Strategy); 22] = [
    (19, 13, 14, 1, 7, 0, Strategy::ZSTD_fast),
    (20, 15, 16, 1, 6, 0, Strategy::ZSTD_fast),
    (21, 16, 17, 1, 5, 0, Strategy::ZSTD_dfast),
    (21, 18, 18, 1, 5, 0, Strategy::ZSTD_dfast),
    (21, 18, 19, 3, 5, 2, Strategy::ZSTD_greedy),
    (21, 18, 19, 3, 5, 4, Strategy::ZSTD_lazy),
    (21, 19, 20, 4, 5, 8, Strategy::ZSTD_lazy),
    (21, 19, 20, 4, 5, 16, Strategy::ZSTD_lazy2),
    (22, 20, 21, 4, 5, 16, Strategy::ZSTD_lazy2),
    (22, 21, 22, 5, 5, 16, Strategy::ZSTD_lazy2),
    (22, 21, 22, 6, 5, 16, Strategy::ZSTD_lazy2),
    (22, 22, 23, 6, 5, 32, Strategy::ZSTD_lazy2),
    (22, 22, 22, 4, 5, 32, Strategy::ZSTD_btlazy2),
    (22, 22, 23, 5, 5, 32, Strategy::ZSTD_btlazy2),
    (22, 23, 23, 6, 5, 32, Strategy::ZSTD_btlazy2),
    (22, 22, 22, 5, 5, 48, Strategy::ZSTD_btopt),
    (23, 23, 22, 5, 4, 64, Strategy::ZSTD_btopt),
    (23, 23, 22, 6, 3, 64, Strategy::ZSTD_btultra),
    (23, 24, 22, 7, 3, 256, Strategy::ZSTD_btultra2),
    (25, 25, 23, 7, 3, 256, Strategy::ZSTD_btultra2),
    (26, 26, 24, 7, 3, 512, Strategy::ZSTD_btultra2),
    (27, 27, 25, 9, 3, 999, Strategy::ZSTD_btultra2),
];

/// `BodyUsage` key of bodies sent uncompressed (dictionary ids are >= 0; 0:
/// zstd without a dictionary).
pub const RAW_BODY: i64 = -1;

/// Bodies and bytes by the dictionary that coded them, for one app (metrics).
/// Each row: bodies sent, raw bytes sent, wire bytes sent, bodies received,
/// raw bytes received, wire bytes received. Shared by the app's connections.
#[derive(Debug, Default)]
pub struct BodyUsage {
    rows: Mutex<BTreeMap<i64, [u64; 6]>>,
}

impl BodyUsage {
    fn add(&self, dict_id: i64, at: usize, raw_bytes: u64, wire_bytes: u64) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let row = rows.entry(dict_id).or_default();
        row[at] += 1;
        row[at + 1] += raw_bytes;
        row[at + 2] += wire_bytes;
    }

    pub fn sent(&self, dict_id: i64, raw_bytes: u64, wire_bytes: u64) {
        self.add(dict_id, 0, raw_bytes, wire_bytes);
    }

    pub fn received(&self, dict_id: i64, raw_bytes: u64, wire_bytes: u64) {
        self.add(dict_id, 3, raw_bytes, wire_bytes);
    }

    /// Every row, by dictionary id.
    pub fn snapshot(&self) -> Vec<(i64, [u64; 6])> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// A body as it goes on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum EncodedBody<'a> {
    Raw(&'a [u8]),
    /// Dictionary id varint + magicless zstd frame.
    Compressed(Vec<u8>),
}

impl EncodedBody<'_> {
    pub fn data(&self) -> &[u8] {
        match self {
            EncodedBody::Raw(raw) => raw,
            EncodedBody::Compressed(data) => data,
        }
    }

    pub fn compressed(&self) -> bool {
        matches!(self, EncodedBody::Compressed(_))
    }
}

/// What the codec keeps for one dictionary id (0: no dictionary).
struct DictState {
    dictionary: Option<Dictionary>,
    compressors: Mutex<Vec<CCtx<'static>>>,
    decompressors: Mutex<Vec<DCtx<'static>>>,
    yields: [Yield; YIELD_CLASSES],
}

impl DictState {
    fn new(dictionary: Option<Dictionary>) -> Self {
        DictState {
            dictionary,
            compressors: Mutex::new(Vec::new()),
            decompressors: Mutex::new(Vec::new()),
            yields: Default::default(),
        }
    }

    fn content(&self) -> Option<&[u8]> {
        self.dictionary.as_ref().map(|d| &*d.content)
    }
}

fn min_saving_q16(fraction: f64) -> u64 {
    (fraction.clamp(0.0, 1.0) * 65536.0).round() as u64
}

/// Count one try: `raw` body bytes became `wire` bytes (raw when not smaller).
fn note_yield(class: &Yield, raw: usize, wire: usize) {
    let saved = raw.saturating_sub(wire) as u64;
    let tried = class.tried_bytes.fetch_add(raw as u64, Ordering::Relaxed) + raw as u64;
    let saved = class.saved_bytes.fetch_add(saved, Ordering::Relaxed) + saved;
    if tried > YIELD_WINDOW_BYTES {
        class.tried_bytes.store(tried / 2, Ordering::Relaxed);
        class.saved_bytes.store(saved / 2, Ordering::Relaxed);
    }
}

fn zstd_error(code: usize) -> String {
    zstd_safe::get_error_name(code).to_owned()
}

/// Shared, stateless-per-message body codec over the dictionaries a process holds.
pub struct BodyCodec {
    level: i32,
    plain: DictState,
    dictionaries: RwLock<BTreeMap<u32, Arc<DictState>>>,
    encoded_raw_bytes: AtomicU64,
    encoded_wire_bytes: AtomicU64,
    /// `min_saving` as a fraction of 2^16 (0: always try).
    min_saving_q16: AtomicU64,
    skipped_bodies: AtomicU64,
}

impl Default for BodyCodec {
    fn default() -> Self {
        BodyCodec::new(Vec::new()).expect("no dictionaries")
    }
}

impl std::fmt::Debug for BodyCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyCodec")
            .field("level", &self.level)
            .field("dictionaries", &self.dictionary_ids())
            .finish()
    }
}

impl BodyCodec {
    /// A level-5 codec holding `dictionaries`.
    pub fn new(dictionaries: Vec<Dictionary>) -> Result<Self, String> {
        BodyCodec::with_level(COMPRESSION_LEVEL, dictionaries)
    }

    pub fn with_level(level: i32, dictionaries: Vec<Dictionary>) -> Result<Self, String> {
        if !(1..=22).contains(&level) {
            return Err(format!("compression level {level} is not 1..=22"));
        }
        let codec = BodyCodec {
            level,
            plain: DictState::new(None),
            dictionaries: RwLock::new(BTreeMap::new()),
            encoded_raw_bytes: AtomicU64::new(0),
            encoded_wire_bytes: AtomicU64::new(0),
            min_saving_q16: AtomicU64::new(min_saving_q16(DEFAULT_MIN_SAVING)),
            skipped_bodies: AtomicU64::new(0),
        };
        for dictionary in dictionaries {
            codec
                .add_dictionary(dictionary)
                .map_err(|e| e.message.into_owned())?;
        }
        Ok(codec)
    }

    /// Hold a dictionary; the same id with other content is a `DICTIONARY_ERROR`.
    pub fn add_dictionary(&self, dictionary: Dictionary) -> Result<(), ProtocolError> {
        let mut map = self.dictionaries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(&dictionary.dict_id) {
            if existing.dictionary.as_ref().map(|d| &d.content) != Some(&dictionary.content) {
                return Err(ProtocolError::new(
                    ErrorCode::DictionaryError,
                    format!(
                        "dictionary id {} already holds different content",
                        dictionary.dict_id
                    ),
                ));
            }
            return Ok(());
        }
        map.insert(
            dictionary.dict_id,
            Arc::new(DictState::new(Some(dictionary))),
        );
        Ok(())
    }

    pub fn has_dictionary(&self, dict_id: u64) -> bool {
        u32::try_from(dict_id).is_ok_and(|id| self.state(id).is_some())
    }

    pub fn dictionary(&self, dict_id: u32) -> Option<Dictionary> {
        self.state(dict_id).and_then(|s| s.dictionary.clone())
    }

    /// Held ids, ascending.
    pub fn dictionary_ids(&self) -> Vec<u32> {
        let map = self.dictionaries.read().unwrap_or_else(|e| e.into_inner());
        map.keys().copied().collect()
    }

    /// The largest id held (0: none).
    pub fn newest_dictionary_id(&self) -> u32 {
        let map = self.dictionaries.read().unwrap_or_else(|e| e.into_inner());
        map.keys().next_back().copied().unwrap_or(0)
    }

    /// Stop trying zstd on a size class whose recent tries saved less than
    /// `fraction` of their bytes (0: always try; 1 in `YIELD_SAMPLE_EVERY`
    /// bodies of such a class is still tried).
    pub fn set_min_saving(&self, fraction: f64) {
        self.min_saving_q16
            .store(min_saving_q16(fraction), Ordering::Relaxed);
    }

    /// Bodies sent raw without trying zstd because their class did not pay.
    pub fn skipped_bodies(&self) -> u64 {
        self.skipped_bodies.load(Ordering::Relaxed)
    }

    /// Body bytes handed to `encode` and the bytes it produced.
    pub fn encoded_bytes(&self) -> (u64, u64) {
        (
            self.encoded_raw_bytes.load(Ordering::Relaxed),
            self.encoded_wire_bytes.load(Ordering::Relaxed),
        )
    }

    fn state(&self, dict_id: u32) -> Option<Arc<DictState>> {
        let map = self.dictionaries.read().unwrap_or_else(|e| e.into_inner());
        map.get(&dict_id).cloned()
    }

    fn new_compressor(&self, dictionary: Option<&[u8]>) -> Result<CCtx<'static>, String> {
        let mut cctx = CCtx::try_create().ok_or("cannot allocate a zstd compression context")?;
        let (window, chain, hash, search, min_match, target, strategy) =
            LEVEL_PARAMS[(self.level - 1) as usize];
        // The reference's parameters, in the order it sets them.
        let params = [
            CParameter::Format(FrameFormat::Magicless),
            CParameter::CompressionLevel(0),
            CParameter::WindowLog(window),
            CParameter::HashLog(hash),
            CParameter::ChainLog(chain),
            CParameter::SearchLog(search),
            CParameter::MinMatch(min_match),
            CParameter::TargetLength(target),
            CParameter::Strategy(strategy),
            CParameter::ContentSizeFlag(true),
            CParameter::ChecksumFlag(false),
            CParameter::DictIdFlag(false),
        ];
        for param in params {
            cctx.set_parameter(param).map_err(zstd_error)?;
        }
        if let Some(content) = dictionary {
            cctx.load_dictionary(content).map_err(zstd_error)?;
        }
        Ok(cctx)
    }

    fn new_decompressor(dictionary: Option<&[u8]>) -> Result<DCtx<'static>, String> {
        let mut dctx = DCtx::try_create().ok_or("cannot allocate a zstd decompression context")?;
        dctx.set_parameter(DParameter::Format(FrameFormat::Magicless))
            .map_err(zstd_error)?;
        if let Some(content) = dictionary {
            dctx.load_dictionary(content).map_err(zstd_error)?;
        }
        Ok(dctx)
    }

    /// Compress one frame (magicless, content size, no checksum, no dict id).
    fn compress(&self, state: &DictState, body: &[u8]) -> Result<Vec<u8>, String> {
        let pooled = state
            .compressors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut cctx = match pooled {
            Some(cctx) => cctx,
            None => self.new_compressor(state.content())?,
        };
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(body.len()));
        let result = cctx.compress2(&mut frame, body);
        let mut pool = state.compressors.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_ok() && pool.len() < POOL_SIZE {
            pool.push(cctx);
        }
        result.map_err(zstd_error)?;
        Ok(frame)
    }

    /// Compress with `dict_id` (0: none) when that makes the body smaller
    /// (dictionary id included); bodies under 16 bytes go raw.
    pub fn encode<'a>(&self, body: &'a [u8], dict_id: u32) -> Result<EncodedBody<'a>, LocalError> {
        let encoded = self.encode_inner(body, dict_id)?;
        self.encoded_raw_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        self.encoded_wire_bytes
            .fetch_add(encoded.data().len() as u64, Ordering::Relaxed);
        Ok(encoded)
    }

    fn encode_inner<'a>(
        &self,
        body: &'a [u8],
        dict_id: u32,
    ) -> Result<EncodedBody<'a>, LocalError> {
        if body.len() < MIN_COMPRESS_BYTES {
            return Ok(EncodedBody::Raw(body));
        }
        let held;
        let state = if dict_id == 0 {
            &self.plain
        } else {
            held = self.state(dict_id).ok_or_else(|| {
                LocalError::forbidden(format!("dictionary {dict_id} is not loaded"))
            })?;
            &*held
        };
        let class = &state.yields[yield_class(body.len())];
        if !self.worth_trying(class) {
            self.skipped_bodies.fetch_add(1, Ordering::Relaxed);
            return Ok(EncodedBody::Raw(body));
        }
        let frame = self
            .compress(state, body)
            .map_err(|e| LocalError::forbidden(format!("zstd: {e}")))?;
        let prefix = crate::varint::varint_size(dict_id as u64);
        let wire = prefix + frame.len();
        note_yield(class, body.len(), wire);
        if wire >= body.len() {
            return Ok(EncodedBody::Raw(body));
        }
        let mut data = Vec::with_capacity(prefix + frame.len());
        encode_varint(&mut data, dict_id as u64);
        data.extend_from_slice(&frame);
        Ok(EncodedBody::Compressed(data))
    }

    /// Whether a body of this class should be compressed: always while the
    /// class is young or pays, else one in `YIELD_SAMPLE_EVERY`.
    fn worth_trying(&self, class: &Yield) -> bool {
        let min_saving = self.min_saving_q16.load(Ordering::Relaxed);
        let tried = class.tried_bytes.load(Ordering::Relaxed);
        if min_saving == 0 || tried < YIELD_WARMUP_BYTES {
            return true;
        }
        let saved = class.saved_bytes.load(Ordering::Relaxed);
        if u128::from(saved) << 16 >= u128::from(tried) * u128::from(min_saving) {
            return true;
        }
        class.judged.fetch_add(1, Ordering::Relaxed) % YIELD_SAMPLE_EVERY == YIELD_SAMPLE_EVERY - 1
    }

    /// Raise `DICTIONARY_ERROR` unless zstd can load `dictionary` both ways
    /// (the reference compresses and decompresses a short sample with it).
    pub fn check_dictionary(&self, dictionary: &Dictionary) -> Result<(), ProtocolError> {
        let fail = |why: String| {
            ProtocolError::new(
                ErrorCode::DictionaryError,
                format!(
                    "dictionary {} does not load in zstd: {why}",
                    dictionary.dict_id
                ),
            )
        };
        let mut cctx = self
            .new_compressor(Some(&dictionary.content))
            .map_err(fail)?;
        let sample = b"dictionary check";
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(sample.len()));
        cctx.compress2(&mut frame, sample)
            .map_err(|c| fail(zstd_error(c)))?;
        let mut dctx = Self::new_decompressor(Some(&dictionary.content)).map_err(fail)?;
        let mut back = Vec::with_capacity(sample.len());
        let mut output = OutBuffer::around(&mut back);
        let mut input = InBuffer::around(&frame);
        match dctx.decompress_stream(&mut output, &mut input) {
            Ok(0) if back == sample => Ok(()),
            Ok(_) => Err(fail("sample did not round-trip".into())),
            Err(code) => Err(fail(zstd_error(code))),
        }
    }

    /// Decode a compressed body (dictionary id + frame) within the limits.
    pub fn decode(
        &self,
        data: &[u8],
        max_body_size: u64,
        max_window_size: u64,
    ) -> Result<Vec<u8>, ProtocolError> {
        let (dict_id, offset) = decode_varint_complete(data, 0)?;
        let held;
        let state = if dict_id == 0 {
            &self.plain
        } else {
            held = u32::try_from(dict_id)
                .ok()
                .and_then(|id| self.state(id))
                .ok_or_else(|| {
                    ProtocolError::new(
                        ErrorCode::UnknownDictionary,
                        format!("body compressed with unknown dictionary {dict_id}"),
                    )
                })?;
            &*held
        };
        let frame = &data[offset..];
        let header = FrameHeader::parse(frame).ok_or_else(|| {
            ProtocolError::new(ErrorCode::CompressionError, "bad zstd frame header")
        })?;
        let Some(declared) = header.content_size else {
            return Err(ProtocolError::new(
                ErrorCode::CompressionError,
                "zstd frame does not declare its content size",
            ));
        };
        if declared > max_body_size {
            return Err(ProtocolError::new(
                ErrorCode::BodyTooLarge,
                format!("body declares {declared} bytes, max_body_size is {max_body_size}"),
            ));
        }
        let window_limit = next_power_of_two(max_window_size.max(max_body_size));
        if header.window_size > window_limit {
            return Err(ProtocolError::new(
                ErrorCode::CompressionError,
                format!("zstd window {} exceeds {window_limit}", header.window_size),
            ));
        }
        self.decompress(state, frame, declared as usize, window_limit)
            .map_err(|why| ProtocolError::new(ErrorCode::CompressionError, format!("zstd: {why}")))
    }

    fn decompress(
        &self,
        state: &DictState,
        frame: &[u8],
        declared: usize,
        window_limit: u64,
    ) -> Result<Vec<u8>, String> {
        let pooled = state
            .decompressors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut dctx = match pooled {
            Some(dctx) => dctx,
            None => Self::new_decompressor(state.content())?,
        };
        let window_log = window_limit.trailing_zeros().min(31);
        let mut body = Vec::with_capacity(declared);
        let result = dctx
            .reset(ResetDirective::SessionOnly)
            .and_then(|_| dctx.set_parameter(DParameter::WindowLogMax(window_log)))
            .and_then(|_| {
                let mut output = OutBuffer::around(&mut body);
                let mut input = InBuffer::around(frame);
                let code = dctx.decompress_stream(&mut output, &mut input)?;
                Ok((code, input.pos()))
            });
        let clean = matches!(result, Ok((0, _)));
        {
            let mut pool = state
                .decompressors
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if clean && pool.len() < POOL_SIZE {
                pool.push(dctx);
            }
        }
        let (code, consumed) = result.map_err(zstd_error)?;
        if code != 0 {
            return Err("did not decompress full frame".into());
        }
        if body.len() != declared {
            return Err(format!(
                "frame declared {declared} bytes but held {}",
                body.len()
            ));
        }
        if consumed != frame.len() {
            return Err("bytes after the end of the zstd frame".into());
        }
        Ok(body)
    }
}

/// Smallest power of two >= `value`, at least 1024.
fn next_power_of_two(value: u64) -> u64 {
    value
        .max(1024)
        .checked_next_power_of_two()
        .unwrap_or(1 << 63)
}

/// The parts of a magicless zstd frame header the receiver checks (RFC 8878
/// section 3.1.1.1, as libzstd's `ZSTD_getFrameHeader_advanced` reads them).
struct FrameHeader {
    content_size: Option<u64>,
    window_size: u64,
}

impl FrameHeader {
    fn parse(frame: &[u8]) -> Option<FrameHeader> {
        let &descriptor = frame.first()?;
        let dict_id_size = [0usize, 1, 2, 4][(descriptor & 3) as usize];
        let single_segment = descriptor & 0x20 != 0;
        let fcs_id = descriptor >> 6;
        let fcs_size = [0usize, 2, 4, 8][fcs_id as usize];
        let header_size = 1
            + usize::from(!single_segment)
            + dict_id_size
            + fcs_size
            + usize::from(single_segment && fcs_id == 0);
        if frame.len() < header_size || descriptor & 0x08 != 0 {
            return None;
        }
        let mut pos = 1;
        let mut window_size = 0u64;
        if !single_segment {
            let byte = frame[pos];
            pos += 1;
            let window_log = (byte >> 3) as u32 + 10;
            if window_log > 31 {
                return None;
            }
            window_size = 1u64 << window_log;
            window_size += (window_size >> 3) * (byte & 7) as u64;
        }
        pos += dict_id_size;
        let le = |n: usize| {
            frame[pos..pos + n]
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | b as u64)
        };
        let content_size = match fcs_id {
            0 if single_segment => Some(frame[pos] as u64),
            0 => None,
            1 => Some(le(2) + 256),
            2 => Some(le(4)),
            _ => Some(le(8)).filter(|&size| size != u64::MAX),
        };
        if single_segment {
            window_size = content_size.unwrap_or(0);
        }
        Some(FrameHeader {
            content_size,
            window_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_raw_below_threshold() {
        let codec = BodyCodec::default();
        assert_eq!(
            codec.encode(b"short", 0).unwrap(),
            EncodedBody::Raw(b"short")
        );
        let body = b"{\"a\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}";
        let encoded = codec.encode(body, 0).unwrap();
        assert!(encoded.compressed());
        let back = codec.decode(encoded.data(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(back, body);
    }

    /// Bytes zstd cannot shrink: a fixed xorshift stream.
    fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 24) as u8
            })
            .collect()
    }

    fn json_body(i: usize) -> Vec<u8> {
        format!("{{\"kind\":\"order.shipped\",\"order\":{i},\"text\":\"Your parcel is on its way, your parcel is on its way\"}}").into_bytes()
    }

    #[test]
    fn a_size_class_that_never_shrinks_is_sampled_one_body_in_32() {
        let codec = BodyCodec::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let (len, bodies) = (88, 5_000);
        for _ in 0..bodies {
            let body = noise(&mut seed, len);
            assert!(!codec.encode(&body, 0).unwrap().compressed());
        }
        let warmup = YIELD_WARMUP_BYTES.div_ceil(len as u64);
        let tried_after = (bodies as u64 - warmup) / YIELD_SAMPLE_EVERY;
        assert_eq!(codec.skipped_bodies(), bodies as u64 - warmup - tried_after);
        // Other size classes keep their own counts.
        let longer = [json_body(1), json_body(2)].concat();
        assert_ne!(yield_class(longer.len()), yield_class(len));
        assert!(codec.encode(&longer, 0).unwrap().compressed());
    }

    #[test]
    fn bodies_that_shrink_are_always_compressed() {
        let codec = BodyCodec::default();
        for i in 0..3_000 {
            assert!(codec.encode(&json_body(i), 0).unwrap().compressed());
        }
        assert_eq!(codec.skipped_bodies(), 0);
    }

    #[test]
    fn a_class_that_starts_to_pay_is_compressed_again() {
        let codec = BodyCodec::default();
        let mut seed = 7;
        for _ in 0..20_000 {
            codec.encode(&noise(&mut seed, 100), 0).unwrap();
        }
        let body = json_body(5);
        assert_eq!(yield_class(body.len()), yield_class(100));
        let skipped = codec.skipped_bodies();
        let resumed = (0..64 * YIELD_SAMPLE_EVERY)
            .position(|_| {
                codec.encode(&body, 0).unwrap().compressed()
                    && codec.encode(&body, 0).unwrap().compressed()
            })
            .expect("compression resumes");
        assert!(resumed > 0 && codec.skipped_bodies() > skipped);
    }

    #[test]
    fn min_saving_zero_always_tries() {
        let codec = BodyCodec::default();
        codec.set_min_saving(0.0);
        let mut seed = 3;
        for _ in 0..2_000 {
            codec.encode(&noise(&mut seed, 64), 0).unwrap();
        }
        assert_eq!(codec.skipped_bodies(), 0);
    }

    #[test]
    fn yield_classes_double() {
        assert_eq!(yield_class(16), 0);
        assert_eq!(yield_class(31), 0);
        assert_eq!(yield_class(32), 1);
        assert_eq!(yield_class(88), 2);
        assert_eq!(yield_class(32 * 1024 - 1), YIELD_CLASSES - 2);
        assert_eq!(yield_class(1 << 30), YIELD_CLASSES - 1);
    }

    #[test]
    fn bomb_is_refused_from_its_header() {
        // Content size 256 MiB declared in an 8-byte field.
        let codec = BodyCodec::default();
        let data = [0x00, 0xc0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0];
        let err = codec.decode(&data, 1 << 20, 1 << 20).unwrap_err();
        assert_eq!(err.code, ErrorCode::BodyTooLarge);
    }
}
