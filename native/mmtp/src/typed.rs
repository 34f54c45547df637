//! Typed header fields (spec section 9.8): binary forms for canonical ids,
//! UUIDs, timestamps, numbers and base64 values, in a section after the
//! header block. Which names are typed, and as which kind, is the preset's
//! [`TypedTable`]: key *k* is its *k*-th field.

use std::fmt::Write;
use std::sync::Arc;

use crate::errors::{perr, ErrorCode, ProtocolError};
use crate::headers::{HeaderList, Headers};
use crate::hpack::{decode_integer, encode_string};
use crate::huffman;
use crate::varint::{decode_varint_complete, encode_varint, MAX_VARINT};

/// Longest byte string a hex or base64 field carries.
pub const MAX_TYPED_BYTES: usize = 64;
/// Most fields a preset may declare typed (keys stay one byte).
pub const MAX_TYPED_FIELDS: usize = 64;
const MAX_TIME_MS: i64 = 10_000_000_000_000_000;
const MAX_TIME_S: i64 = 10_000_000_000_000;

/// How a typed field's value travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Hex,
    HexUpper,
    Uuid,
    UuidUpper,
    TimeMs,
    TimeS,
    Uint,
    Base64Url,
    Base64,
    /// W3C trace context `traceparent`: 2-32-16-2 lowercase hex digits.
    Traceparent,
    /// A value shape with number and text holes (`template:` and a template).
    Template(Arc<ValueTemplate>),
    Echo,
}

/// A template kind's name is this prefix and its template.
pub const TEMPLATE_PREFIX: &str = "template:";

const KIND_NAMES: [(&str, Kind); 11] = [
    ("hex", Kind::Hex),
    ("hex-upper", Kind::HexUpper),
    ("uuid", Kind::Uuid),
    ("uuid-upper", Kind::UuidUpper),
    ("time-ms", Kind::TimeMs),
    ("time-s", Kind::TimeS),
    ("uint", Kind::Uint),
    ("base64url", Kind::Base64Url),
    ("base64", Kind::Base64),
    ("traceparent", Kind::Traceparent),
    ("echo", Kind::Echo),
];

impl Kind {
    /// The kind named `name` in a preset file (None: unknown kind or invalid template).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::parse_checked(name).ok()
    }

    /// The kind named `name`, or why it is refused.
    pub fn parse_checked(name: &str) -> Result<Kind, String> {
        if let Some(template) = name.strip_prefix(TEMPLATE_PREFIX) {
            return ValueTemplate::parse(template).map(|t| Kind::Template(Arc::new(t)));
        }
        KIND_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| k.clone())
            .ok_or_else(|| format!("unknown typed kind {name:?}"))
    }

    pub fn name(&self) -> String {
        if let Kind::Template(template) = self {
            return format!("{TEMPLATE_PREFIX}{}", template.text());
        }
        KIND_NAMES
            .iter()
            .find(|(_, k)| k == self)
            .map_or(String::new(), |(n, _)| (*n).to_owned())
    }
}

/// Limits of a template: its length, holes, and digits per number.
pub const MAX_TEMPLATE_CHARS: usize = 128;
pub const MAX_TEMPLATE_HOLES: usize = 8;
pub const MAX_NUMBER_DIGITS: usize = 16;
const MAX_NUMBER: u64 = 10_000_000_000_000_000;

/// A value shape with holes (spec section 9.8): `literals[0] hole
/// literals[1] ... hole literals[n]`; hole *i* holds a canonical decimal
/// with `fractions[i]` fraction digits, sent as `zigzag(value * 10^N)`, or
/// (`None`: a `{s}` hole) text, sent as an HPACK string literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueTemplate {
    literals: Vec<Box<str>>,
    fractions: Vec<Option<u32>>,
}

impl ValueTemplate {
    /// Parse `{N}` and `{s}` holes out of `template` (the reference's `ValueTemplate.parse`).
    pub fn parse(template: &str) -> Result<ValueTemplate, String> {
        if template.len() > MAX_TEMPLATE_CHARS || !template.is_ascii() {
            return Err(format!(
                "a template must be ASCII of <= {MAX_TEMPLATE_CHARS} chars"
            ));
        }
        let b = template.as_bytes();
        let mut literals: Vec<Box<str>> = Vec::new();
        let mut fractions = Vec::new();
        let (mut start, mut i) = (0, 0);
        while i < b.len() {
            if i + 2 < b.len()
                && b[i] == b'{'
                && (b[i + 1].is_ascii_digit() || b[i + 1] == b's')
                && b[i + 2] == b'}'
            {
                literals.push(template[start..i].into());
                fractions.push(
                    b[i + 1]
                        .is_ascii_digit()
                        .then(|| u32::from(b[i + 1] - b'0')),
                );
                i += 3;
                start = i;
            } else {
                i += 1;
            }
        }
        literals.push(template[start..].into());
        if fractions.is_empty() || fractions.len() > MAX_TEMPLATE_HOLES {
            return Err(format!(
                "template needs 1-{MAX_TEMPLATE_HOLES} holes: {template:?}"
            ));
        }
        let last = literals.len() - 1;
        for (i, literal) in literals.iter().enumerate() {
            let literal: &str = literal;
            if literal
                .bytes()
                .any(|c| c == b'{' || c == b'}' || !(0x20..0x7f).contains(&c))
            {
                return Err(format!("template {template:?}: bad literal {literal:?}"));
            }
            if i > 0 && i < last && literal.is_empty() {
                return Err(format!("template {template:?}: two holes touch"));
            }
            if i > 0
                && fractions[i - 1] == Some(0)
                && literal.bytes().next().is_some_and(|c| c.is_ascii_digit())
            {
                return Err(format!(
                    "template {template:?}: a digit follows a {{0}} hole"
                ));
            }
        }
        Ok(ValueTemplate {
            literals,
            fractions,
        })
    }

    /// The template text (`{N}` and `{s}` holes between the literals).
    pub fn text(&self) -> String {
        let mut text = self.literals[0].to_string();
        for (fraction, literal) in self.fractions.iter().zip(&self.literals[1..]) {
            match fraction {
                Some(n) => {
                    let _ = write!(text, "{{{n}}}{literal}");
                }
                None => {
                    let _ = write!(text, "{{s}}{literal}");
                }
            }
        }
        text
    }

    /// Call `each` with the holes' contents, in order, when `value` has this
    /// shape (numbers times 10^N; text up to the next literal's first match).
    fn holes<'v>(&self, value: &'v str, mut each: impl FnMut(Hole<'v>)) -> bool {
        let Some(mut rest) = value.strip_prefix(&*self.literals[0]) else {
            return false;
        };
        for (fraction, literal) in self.fractions.iter().zip(&self.literals[1..]) {
            let literal: &str = literal;
            let after = match fraction {
                Some(n) => {
                    let Some((number, after)) = scan_number(rest, *n) else {
                        return false;
                    };
                    each(Hole::Number(number));
                    after
                }
                None => {
                    // The shortest non-empty text the next literal follows.
                    let first = rest.chars().next().map_or(0, char::len_utf8);
                    if first == 0 {
                        return false;
                    }
                    let end = if literal.is_empty() {
                        rest.len()
                    } else {
                        match rest[first..].find(literal) {
                            Some(at) => first + at,
                            None => return false,
                        }
                    };
                    each(Hole::Text(&rest[..end]));
                    &rest[end..]
                }
            };
            let Some(after) = after.strip_prefix(literal) else {
                return false;
            };
            rest = after;
        }
        rest.is_empty()
    }

    fn encode(&self, out: &mut Vec<u8>, value: &str) {
        self.holes(value, |hole| match hole {
            Hole::Number(n) => encode_varint(out, zigzag_delta(n, 0) as u64),
            Hole::Text(text) => encode_string(out, text.as_bytes()),
        });
    }

    fn decode(
        &self,
        section: &[u8],
        mut offset: usize,
        value: &mut String,
    ) -> Result<usize, ProtocolError> {
        value.push_str(&self.literals[0]);
        for (fraction, literal) in self.fractions.iter().zip(&self.literals[1..]) {
            let Some(fraction) = fraction else {
                offset = read_text(section, offset, value)?;
                value.push_str(literal);
                continue;
            };
            let (zigzag, next) = decode_varint_complete(section, offset)?;
            offset = next;
            let number = unzigzag(zigzag);
            if number.unsigned_abs() >= MAX_NUMBER {
                return Err(ProtocolError::new(
                    ErrorCode::FieldError,
                    format!("typed number {number} out of range"),
                ));
            }
            let scale = 10u64.pow(*fraction);
            let sign = if number < 0 { "-" } else { "" };
            let (whole, part) = (number.unsigned_abs() / scale, number.unsigned_abs() % scale);
            if *fraction == 0 {
                let _ = write!(value, "{sign}{whole}");
            } else {
                let _ = write!(
                    value,
                    "{sign}{whole}.{part:0width$}",
                    width = *fraction as usize
                );
            }
            value.push_str(literal);
        }
        Ok(offset)
    }
}

/// One hole's content in a value.
enum Hole<'v> {
    Number(i64),
    Text(&'v str),
}

/// Append the HPACK string literal at `offset` (a text hole) to `value`;
/// return the next offset. Malformed or non-UTF-8 text is a `FIELD_ERROR`.
fn read_text(section: &[u8], offset: usize, value: &mut String) -> Result<usize, ProtocolError> {
    let bad = || ProtocolError::new(ErrorCode::FieldError, "typed text is malformed");
    let data = section
        .get(offset..)
        .filter(|d| !d.is_empty())
        .ok_or_else(bad)?;
    let (length, used) = decode_integer(data, 7).ok_or_else(bad)?;
    let end = usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_add(used))
        .filter(|&end| end <= data.len())
        .ok_or_else(bad)?;
    let mut raw = Vec::new();
    if data[0] & 0x80 != 0 {
        huffman::decode(&mut raw, &data[used..end]).map_err(|_| bad())?;
    } else {
        raw.extend_from_slice(&data[used..end]);
    }
    value.push_str(std::str::from_utf8(&raw).map_err(|_| bad())?);
    Ok(offset + end)
}

/// The canonical number with `fraction` fraction digits at the start of
/// `text` (times 10^fraction), and the text after it.
fn scan_number(text: &str, fraction: u32) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    let negative = b.first() == Some(&b'-');
    let start = usize::from(negative);
    let whole = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
    if whole == 0 || (whole > 1 && b[start] == b'0') {
        return None;
    }
    let mut end = start + whole;
    let mut digits = whole;
    if fraction > 0 {
        let f = fraction as usize;
        if b.get(end) != Some(&b'.')
            || b.len() < end + 1 + f
            || !b[end + 1..end + 1 + f].iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        end += 1 + f;
        digits += f;
    }
    if digits > MAX_NUMBER_DIGITS {
        return None;
    }
    let magnitude = b[start..end]
        .iter()
        .filter(|c| c.is_ascii_digit())
        .fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0'));
    if negative && magnitude == 0 {
        return None;
    }
    Some((if negative { -magnitude } else { magnitude }, &text[end..]))
}

fn canonical_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 55
        && b.iter().enumerate().all(|(i, &c)| match i {
            2 | 35 | 52 => c == b'-',
            _ => hex_value(c, false).is_some(),
        })
}

/// The generic typed fields (presets 0, 1 and preset files without a list).
pub const GENERIC_TYPED: [(&str, Kind); 6] = [
    ("trace-id", Kind::Hex),
    ("ts", Kind::TimeMs),
    ("server-time", Kind::TimeMs),
    ("sign", Kind::Hex),
    ("trace-id", Kind::Echo),
    ("request-id", Kind::Hex),
];

/// A preset's typed fields, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedTable {
    fields: Vec<(Box<str>, Kind)>,
    /// Key of the echo field (0: none).
    echo_key: u64,
}

impl TypedTable {
    /// Refuses a list the spec does not allow (kinds, names, duplicates, size).
    pub fn new(fields: Vec<(String, Kind)>) -> Result<TypedTable, String> {
        if fields.len() > MAX_TYPED_FIELDS {
            return Err(format!(
                "a preset declares at most {MAX_TYPED_FIELDS} typed fields, got {}",
                fields.len()
            ));
        }
        let mut echo_key = 0;
        for (i, (name, kind)) in fields.iter().enumerate() {
            if !valid_name(name) {
                return Err(format!(
                    "typed field name {name:?} must be a lowercase header name"
                ));
            }
            if let Kind::Template(template) = kind {
                if template.fractions.is_empty() {
                    return Err(format!("typed field {name:?}: a template without holes"));
                }
            }
            if *kind == Kind::Echo {
                if echo_key != 0 {
                    return Err("a preset declares at most one echo field".into());
                }
                echo_key = i as u64 + 1;
            } else if fields[..i]
                .iter()
                .any(|(n, k)| n == name && *k != Kind::Echo)
            {
                return Err(format!("typed field {name:?} is declared twice"));
            }
        }
        Ok(TypedTable {
            fields: fields
                .into_iter()
                .map(|(n, k)| (n.into_boxed_str(), k))
                .collect(),
            echo_key,
        })
    }

    pub fn generic() -> TypedTable {
        TypedTable::new(
            GENERIC_TYPED
                .iter()
                .map(|(n, k)| (n.to_string(), k.clone()))
                .collect(),
        )
        .expect("the generic list is valid")
    }

    /// The fields, in key order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Kind)> {
        self.fields.iter().map(|(n, k)| (&**n, k))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The name an echo stands for, if the table has an echo field.
    pub fn echo_name(&self) -> Option<&str> {
        (self.echo_key > 0).then(|| &*self.fields[self.echo_key as usize - 1].0)
    }

    /// The value an echo in the answer to a request with `headers` stands for.
    pub(crate) fn echo_value_of<'h, H: HeaderList + ?Sized>(
        &self,
        headers: &'h H,
    ) -> Option<&'h str> {
        let name = self.echo_name()?;
        (0..headers.field_count())
            .map(|i| headers.field(i))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    fn lookup(&self, name: &str) -> Option<(u64, &Kind)> {
        self.fields
            .iter()
            .enumerate()
            .find(|(_, (n, k))| **n == *name && *k != Kind::Echo)
            .map(|(i, (_, k))| (i as u64 + 1, k))
    }

    /// How one outgoing field travels (the reference's `TypedTable.split`).
    pub(crate) fn classify(
        &self,
        name: &str,
        value: &str,
        echo_value: Option<&str>,
        epoch_ms: u64,
    ) -> Typed {
        if self.echo_key > 0 && echo_value == Some(value) && self.echo_name() == Some(name) {
            return Typed::Echo(self.echo_key);
        }
        match self.lookup(name) {
            Some((key, kind)) if canonical(kind, value, epoch_ms) => Typed::Value(key),
            _ => Typed::No,
        }
    }

    /// Append the typed section's entries for the fields that have a typed form.
    pub(crate) fn encode<H: HeaderList + ?Sized>(
        &self,
        out: &mut Vec<u8>,
        headers: &H,
        epoch_ms: u64,
        echo_value: Option<&str>,
    ) {
        for i in 0..headers.field_count() {
            let (name, value) = headers.field(i);
            match self.classify(name, value, echo_value, epoch_ms) {
                Typed::No => {}
                Typed::Echo(key) => encode_varint(out, key),
                Typed::Value(key) => {
                    encode_varint(out, key);
                    encode_value(out, &self.fields[key as usize - 1].1, value, epoch_ms);
                }
            }
        }
    }

    /// Decode a typed section, appending its fields to `out`. Decoded fields
    /// count against `budget` (what `max_header_list_size` leaves after the
    /// HPACK fields) with RFC 7541 sizes: a one-byte echo counts a whole value.
    pub(crate) fn decode(
        &self,
        section: &[u8],
        epoch_ms: u64,
        echo_value: Option<&str>,
        budget: i128,
        out: &mut Headers,
    ) -> Result<(), ProtocolError> {
        let mut offset = 0;
        let mut list_size: i128 = 0;
        let mut value = String::new();
        while offset < section.len() {
            let (key, next) = decode_varint_complete(section, offset)?;
            offset = next;
            if key == 0 || key > self.fields.len() as u64 {
                return Err(ProtocolError::new(
                    ErrorCode::FieldError,
                    format!("unknown typed field key {key}"),
                ));
            }
            let (name, kind) = &self.fields[key as usize - 1];
            value.clear();
            if *kind == Kind::Echo {
                let Some(echo) = echo_value else {
                    return Err(ProtocolError::new(
                        ErrorCode::FieldError,
                        format!("{name} echo with no {name} on the request"),
                    ));
                };
                value.push_str(echo);
            } else {
                offset = decode_value(kind, section, offset, epoch_ms, &mut value)?;
            }
            out.push(name, &value);
            list_size += (name.len() + value.len() + 32) as i128;
            if list_size > budget {
                return Err(ProtocolError::new(
                    ErrorCode::HeaderListTooLarge,
                    format!("typed fields exceed max_header_list_size {}", budget.max(0)),
                ));
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+.^_`|~-".contains(&b)
        })
}

/// How one outgoing field travels.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Typed {
    /// Through HPACK.
    No,
    /// The field of this key, in its kind's form.
    Value(u64),
    Echo(u64),
}

// ------------------------------------------------------------ canonical forms

/// The value of a canonical decimal (ASCII digits, no leading zero) below `limit`.
fn decimal(value: &str, limit: u64) -> Option<u64> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 17 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    let parsed: u64 = value.parse().ok()?;
    (parsed < limit).then_some(parsed)
}

fn hex_value(c: u8, upper: bool) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' if !upper => Some(c - b'a' + 10),
        b'A'..=b'F' if upper => Some(c - b'A' + 10),
        _ => None,
    }
}

fn canonical_hex(value: &str, upper: bool) -> bool {
    let len = value.len();
    len > 0
        && len <= 2 * MAX_TYPED_BYTES
        && len % 2 == 0
        && value.bytes().all(|b| hex_value(b, upper).is_some())
}

fn canonical_uuid(value: &str, upper: bool) -> bool {
    let b = value.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => hex_value(c, upper).is_some(),
        })
}

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_digit(c: u8, url: bool) -> Option<u8> {
    let alphabet = if url { B64_URL } else { B64_STD };
    alphabet.iter().position(|&a| a == c).map(|p| p as u8)
}

/// The bytes of a canonical base64(url) value (re-encoding gives it back).
fn b64_bytes(value: &str, url: bool) -> Option<Vec<u8>> {
    let b = value.as_bytes();
    if b.is_empty() || b.len() > 4 * MAX_TYPED_BYTES.div_ceil(3) {
        return None;
    }
    let digits: &[u8] = if url {
        if b.len() % 4 == 1 {
            return None;
        }
        b
    } else {
        if b.len() % 4 != 0 {
            return None;
        }
        let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        &b[..b.len() - pad]
    };
    if !url && digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in digits {
        acc = (acc << 6) | b64_digit(c, url)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Unused trailing bits must be zero, else re-encoding would differ.
    if acc != 0 || out.is_empty() || out.len() > MAX_TYPED_BYTES {
        return None;
    }
    Some(out)
}

fn b64_text(raw: &[u8], url: bool, out: &mut String) {
    let alphabet = if url { B64_URL } else { B64_STD };
    for chunk in raw.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        let digits = chunk.len() + 1;
        for i in 0..4 {
            if i < digits {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if !url {
                out.push('=');
            }
        }
    }
}

fn zigzag_delta(value: i64, epoch: i64) -> u128 {
    let delta = value as i128 - epoch as i128;
    if delta >= 0 {
        (delta as u128) << 1
    } else {
        ((-delta) as u128) * 2 - 1
    }
}

fn unzigzag(value: u64) -> i64 {
    if value % 2 == 0 {
        (value / 2) as i64
    } else {
        -(value.div_ceil(2) as i64)
    }
}

fn epoch_of(kind: &Kind, epoch_ms: u64) -> i64 {
    if *kind == Kind::TimeS {
        (epoch_ms / 1000) as i64
    } else {
        epoch_ms as i64
    }
}

/// Whether `value` is canonical for `kind` (and, for times, its distance from
/// the epoch fits a varint: otherwise it goes through HPACK, as the reference does).
fn canonical(kind: &Kind, value: &str, epoch_ms: u64) -> bool {
    match kind {
        Kind::Hex => canonical_hex(value, false),
        Kind::HexUpper => canonical_hex(value, true),
        Kind::Uuid => canonical_uuid(value, false),
        Kind::UuidUpper => canonical_uuid(value, true),
        Kind::TimeMs | Kind::TimeS => {
            let limit = if *kind == Kind::TimeMs {
                MAX_TIME_MS
            } else {
                MAX_TIME_S
            };
            decimal(value, limit as u64).is_some_and(|v| {
                zigzag_delta(v as i64, epoch_of(kind, epoch_ms)) <= MAX_VARINT as u128
            })
        }
        Kind::Uint => decimal(value, MAX_VARINT + 1).is_some(),
        Kind::Base64Url => b64_bytes(value, true).is_some(),
        Kind::Base64 => b64_bytes(value, false).is_some(),
        Kind::Traceparent => canonical_traceparent(value),
        Kind::Template(template) => template.holes(value, |_| {}),
        Kind::Echo => false,
    }
}

/// Append the wire form of a canonical `value` (checked by `canonical`).
fn encode_value(out: &mut Vec<u8>, kind: &Kind, value: &str, epoch_ms: u64) {
    match kind {
        Kind::Hex | Kind::HexUpper => {
            encode_varint(out, (value.len() / 2) as u64);
            out.extend(value.as_bytes().chunks(2).map(|pair| {
                let upper = *kind == Kind::HexUpper;
                (hex_value(pair[0], upper).unwrap_or(0) << 4)
                    | hex_value(pair[1], upper).unwrap_or(0)
            }));
        }
        Kind::Uuid | Kind::UuidUpper => {
            let digits: Vec<u8> = value.bytes().filter(|&c| c != b'-').collect();
            let upper = *kind == Kind::UuidUpper;
            out.extend(digits.chunks(2).map(|pair| {
                (hex_value(pair[0], upper).unwrap_or(0) << 4)
                    | hex_value(pair[1], upper).unwrap_or(0)
            }));
        }
        Kind::TimeMs | Kind::TimeS => {
            let v = decimal(value, u64::MAX).unwrap_or(0) as i64;
            encode_varint(out, zigzag_delta(v, epoch_of(kind, epoch_ms)) as u64);
        }
        Kind::Uint => encode_varint(out, decimal(value, u64::MAX).unwrap_or(0)),
        Kind::Base64Url | Kind::Base64 => {
            let raw = b64_bytes(value, *kind == Kind::Base64Url).unwrap_or_default();
            encode_varint(out, raw.len() as u64);
            out.extend_from_slice(&raw);
        }
        Kind::Traceparent => {
            let digits: Vec<u8> = value.bytes().filter(|&c| c != b'-').collect();
            out.extend(digits.chunks(2).map(|pair| {
                (hex_value(pair[0], false).unwrap_or(0) << 4)
                    | hex_value(pair[1], false).unwrap_or(0)
            }));
        }
        Kind::Template(template) => template.encode(out, value),
        Kind::Echo => {}
    }
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_hex(value: &mut String, bytes: &[u8], upper: bool) {
    let digits = if upper { HEX_UPPER } else { HEX_LOWER };
    for &byte in bytes {
        value.push(digits[(byte >> 4) as usize] as char);
        value.push(digits[(byte & 15) as usize] as char);
    }
}

/// Decode one value of `kind` at `offset` into `value`; return the next offset.
fn decode_value(
    kind: &Kind,
    section: &[u8],
    offset: usize,
    epoch_ms: u64,
    value: &mut String,
) -> Result<usize, ProtocolError> {
    match kind {
        Kind::Hex | Kind::HexUpper | Kind::Base64Url | Kind::Base64 => {
            let (length, offset) = decode_varint_complete(section, offset)?;
            if !(1..=MAX_TYPED_BYTES as u64).contains(&length)
                || length > (section.len() - offset) as u64
            {
                return Err(ProtocolError::new(
                    ErrorCode::FieldError,
                    format!("typed {} length {length}", kind.name()),
                ));
            }
            let raw = &section[offset..offset + length as usize];
            match kind {
                Kind::Hex => push_hex(value, raw, false),
                Kind::HexUpper => push_hex(value, raw, true),
                _ => b64_text(raw, *kind == Kind::Base64Url, value),
            }
            Ok(offset + length as usize)
        }
        Kind::Uuid | Kind::UuidUpper => {
            if section.len() - offset < 16 {
                return perr(ErrorCode::FieldError, "typed uuid runs past the section");
            }
            let raw = &section[offset..offset + 16];
            let upper = *kind == Kind::UuidUpper;
            for (i, part) in [&raw[..4], &raw[4..6], &raw[6..8], &raw[8..10], &raw[10..]]
                .iter()
                .enumerate()
            {
                if i > 0 {
                    value.push('-');
                }
                push_hex(value, part, upper);
            }
            Ok(offset + 16)
        }
        Kind::Uint => {
            let (number, offset) = decode_varint_complete(section, offset)?;
            let _ = write!(value, "{number}");
            Ok(offset)
        }
        Kind::TimeMs | Kind::TimeS => {
            let (delta, offset) = decode_varint_complete(section, offset)?;
            let limit = if *kind == Kind::TimeMs {
                MAX_TIME_MS
            } else {
                MAX_TIME_S
            };
            let time = epoch_of(kind, epoch_ms) as i128 + unzigzag(delta) as i128;
            if !(0..limit as i128).contains(&time) {
                return Err(ProtocolError::new(
                    ErrorCode::FieldError,
                    format!("typed time {time} out of range"),
                ));
            }
            let _ = write!(value, "{time}");
            Ok(offset)
        }
        Kind::Traceparent => {
            if section.len() - offset < 26 {
                return perr(
                    ErrorCode::FieldError,
                    "typed traceparent runs past the section",
                );
            }
            let raw = &section[offset..offset + 26];
            for (i, part) in [&raw[..1], &raw[1..17], &raw[17..25], &raw[25..]]
                .iter()
                .enumerate()
            {
                if i > 0 {
                    value.push('-');
                }
                push_hex(value, part, false);
            }
            Ok(offset + 26)
        }
        Kind::Template(template) => template.decode(section, offset, value),
        Kind::Echo => Ok(offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(kind: Kind, value: &str) {
        let table = TypedTable::new(vec![("x".into(), kind.clone())]).unwrap();
        let headers = [("x", value)];
        assert_eq!(
            table.classify("x", value, None, 1_764_000_000_500),
            Typed::Value(1)
        );
        let mut section = Vec::new();
        table.encode(&mut section, &headers[..], 1_764_000_000_500, None);
        let mut out = Headers::new();
        table
            .decode(&section, 1_764_000_000_500, None, 1 << 20, &mut out)
            .unwrap();
        assert_eq!(out.get(0), Some(("x", value)), "{kind:?}");
    }

    #[test]
    fn kinds_round_trip_their_canonical_values() {
        round_trip(Kind::Uuid, "6ba7b810-9dad-11d1-80b4-00c04fd430c8");
        round_trip(Kind::UuidUpper, "6BA7B810-9DAD-11D1-80B4-00C04FD430C8");
        round_trip(Kind::HexUpper, "00FF");
        round_trip(Kind::TimeS, "1764000000");
        round_trip(Kind::TimeS, "0");
        round_trip(Kind::Uint, "72057594037927935");
        round_trip(Kind::Base64Url, "q83vEjRWeJq83vEjRWeJqw");
        round_trip(Kind::Base64, "q83vEjRWeJq83vEjRWeJqw==");
        round_trip(Kind::Base64, "QQ==");
        round_trip(
            Kind::Traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let numbers = |t: &str| Kind::parse_checked(&format!("template:{t}")).unwrap();
        round_trip(
            numbers("app;dur={1}, db;dur={1}"),
            "app;dur=102.4, db;dur=0.9",
        );
        round_trip(numbers("{5};{5};{0}"), "51.86645;-4.41320;35");
        round_trip(numbers("v{0}"), "v-12");
        round_trip(numbers("{2}"), "-0.05");
        round_trip(numbers("a={s}; b"), "a=\u{e9}t\u{e9}; b");
        round_trip(numbers("\"{s}\""), "\"5a59fbcc\"");
        round_trip(numbers("{s}, {0}"), "x,y, 3");
    }

    #[test]
    fn value_templates_are_checked() {
        for bad in ["none", "{0}{0}", "{0}1", "a{x}", "{0}}", "caf\u{e9}{0}"] {
            assert!(
                Kind::parse_checked(&format!("template:{bad}")).is_err(),
                "{bad}"
            );
        }
        let kind = Kind::parse_checked("template:a{2}b{s}").unwrap();
        assert_eq!(kind.name(), "template:a{2}b{s}");
        assert!(Kind::parse_checked("template:{s}{0}").is_err());
    }

    #[test]
    fn non_canonical_values_are_not_typed() {
        for (kind, value) in [
            (Kind::Uuid, "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"),
            (Kind::HexUpper, "00ff"),
            (Kind::Uint, "72057594037927936"),
            (Kind::Uint, "007"),
            (Kind::Base64Url, "q83vEjRWeJq83vEjRWeJqx"),
            (Kind::Base64, "QQ="),
            (Kind::TimeS, "10000000000000"),
            (
                Kind::Traceparent,
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            ),
            (Kind::parse("template:{1}ms").unwrap(), "-0.0ms"),
            (Kind::parse("template:{1}ms").unwrap(), "01.5ms"),
            (Kind::parse("template:{1}ms").unwrap(), "1.50ms"),
            (Kind::parse("template:{1}ms").unwrap(), "1ms"),
            (Kind::parse("template:{0}").unwrap(), "12345678901234567"),
            (Kind::parse("template:a={s};").unwrap(), "a=;"),
            (Kind::parse("template:a={s};").unwrap(), "a=b"),
            (Kind::parse("template:a={s}; b").unwrap(), "a=x; b; b"),
        ] {
            let table = TypedTable::new(vec![("x".into(), kind)]).unwrap();
            assert_eq!(table.classify("x", value, None, 0), Typed::No, "{value}");
        }
    }

    #[test]
    fn invalid_lists_are_refused() {
        assert!(TypedTable::new(vec![("X".into(), Kind::Hex)]).is_err());
        assert!(TypedTable::new(vec![("x".into(), Kind::Hex), ("x".into(), Kind::Uint)]).is_err());
        assert!(TypedTable::new(vec![("x".into(), Kind::Echo), ("y".into(), Kind::Echo)]).is_err());
        assert!(TypedTable::new(vec![("x".into(), Kind::Hex), ("x".into(), Kind::Echo)]).is_ok());
    }

    #[test]
    fn zigzag_round_trip() {
        for v in [0i64, 1, -1, 123, -370, 1 << 40, -(1 << 40)] {
            assert_eq!(unzigzag(zigzag_delta(v, 0) as u64), v);
        }
        assert_eq!(zigzag_delta(123, 0), 246);
        assert_eq!(zigzag_delta(-370, 0), 739);
    }
}
