//! Header lists: the decoded form ([`Headers`]) and what send methods accept
//! ([`HeaderList`]).

use std::fmt;

/// An ordered list of header fields, stored compactly: one string holding
/// every name and value, and the end offsets of each. Decoding a block of 8
/// fields costs 2 allocations instead of 17.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// Per field: (end of name, end of value) in `text`.
    ends: Vec<(usize, usize)>,
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i` as `(name, value)`.
    pub fn get(&self, i: usize) -> Option<(&str, &str)> {
        let &(name_end, value_end) = self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
        Some((&self.text[start..name_end], &self.text[name_end..value_end]))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }

    /// The first value of `name`, if any.
    pub fn value_of(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// RFC 7541 size: name + value octets + 32 per field.
    pub fn list_size(&self) -> u64 {
        (self.text.len() + 32 * self.len()) as u64
    }

    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    /// Remove the first field and return its value (the REQUEST's `:op`).
    pub(crate) fn take_first_value(&mut self) -> String {
        let (name_end, value_end) = self.ends.remove(0);
        let value = self.text[name_end..value_end].to_owned();
        self.text.drain(..value_end);
        for end in &mut self.ends {
            end.0 -= value_end;
            end.1 -= value_end;
        }
        value
    }

    /// Heap bytes this list holds.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * std::mem::size_of::<(usize, usize)>()
    }

    /// Drop spare capacity (for events kept around).
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.push(n.as_ref(), v.as_ref());
        }
        headers
    }
}

/// Anything a send method can take as headers: slices, arrays and vectors of
/// `(name, value)` pairs of `&str` / `String`, or a decoded [`Headers`].
pub trait HeaderList {
    fn field_count(&self) -> usize;
    fn field(&self, i: usize) -> (&str, &str);
}

impl<N: AsRef<str>, V: AsRef<str>> HeaderList for [(N, V)] {
    fn field_count(&self) -> usize {
        self.len()
    }
    fn field(&self, i: usize) -> (&str, &str) {
        (self[i].0.as_ref(), self[i].1.as_ref())
    }
}

impl<N: AsRef<str>, V: AsRef<str>, const K: usize> HeaderList for [(N, V); K] {
    fn field_count(&self) -> usize {
        K
    }
    fn field(&self, i: usize) -> (&str, &str) {
        (self[i].0.as_ref(), self[i].1.as_ref())
    }
}

impl<N: AsRef<str>, V: AsRef<str>> HeaderList for Vec<(N, V)> {
    fn field_count(&self) -> usize {
        self.len()
    }
    fn field(&self, i: usize) -> (&str, &str) {
        (self[i].0.as_ref(), self[i].1.as_ref())
    }
}

impl HeaderList for Headers {
    fn field_count(&self) -> usize {
        self.len()
    }
    fn field(&self, i: usize) -> (&str, &str) {
        self.get(i).unwrap_or(("", ""))
    }
}

/// A REQUEST's list: `:op` first, then the caller's fields.
pub(crate) struct WithOp<'a, H: ?Sized> {
    pub op: &'a str,
    pub rest: &'a H,
}

impl<H: HeaderList + ?Sized> HeaderList for WithOp<'_, H> {
    fn field_count(&self) -> usize {
        1 + self.rest.field_count()
    }
    fn field(&self, i: usize) -> (&str, &str) {
        if i == 0 {
            (crate::connection::OP_HEADER, self.op)
        } else {
            self.rest.field(i - 1)
        }
    }
}

/// The header list's RFC 7541 size (octets + 32 per field).
pub(crate) fn header_list_size<H: HeaderList + ?Sized>(headers: &H) -> u64 {
    (0..headers.field_count())
        .map(|i| {
            let (n, v) = headers.field(i);
            (n.len() + v.len() + 32) as u64
        })
        .sum()
}
