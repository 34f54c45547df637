//! Connection-scoped headers (spec section 9.11): a client sends headers that
//! stay the same for a connection once, in a connection header block, and the
//! server re-attaches them to every request. The reference is
//! `channel/wire/connheaders.py`.

use crate::errors::{ErrorCode, ProtocolError};
use crate::headers::{HeaderList, Headers};

/// In a connection header block: drop the connection headers named by the value.
pub const DROP_HEADER: &str = ":drop";

/// Some fields of a header list, by index.
pub(crate) struct Subset<'a, H: ?Sized> {
    pub inner: &'a H,
    pub indices: Vec<usize>,
}

impl<H: HeaderList + ?Sized> HeaderList for Subset<'_, H> {
    fn field_count(&self) -> usize {
        self.indices.len()
    }
    fn field(&self, i: usize) -> (&str, &str) {
        self.inner.field(self.indices[i])
    }
}

/// The list in force after a connection header block's `update`.
pub fn apply_connection_update<H: HeaderList + ?Sized>(current: &Headers, update: &H) -> Headers {
    let updates: Vec<(&str, &str)> = (0..update.field_count()).map(|i| update.field(i)).collect();
    let changed = |name: &str| {
        updates.iter().any(|&(n, v)| {
            if n == DROP_HEADER {
                v == name
            } else {
                n == name
            }
        })
    };
    let mut after = Headers::new();
    for (name, value) in current.iter() {
        if !changed(name) {
            after.push(name, value);
        }
    }
    for &(name, value) in &updates {
        if name != DROP_HEADER {
            after.push(name, value);
        }
    }
    after
}

/// A received block's fields: plain names, or `:drop` naming one (FIELD_ERROR).
pub(crate) fn check_connection_update(update: &Headers) -> Result<(), ProtocolError> {
    for (name, value) in update.iter() {
        if name == DROP_HEADER {
            if value.is_empty() {
                return Err(ProtocolError::new(
                    ErrorCode::FieldError,
                    ":drop names no header",
                ));
            }
        } else if name.starts_with(':') {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!("{name} in a connection header block"),
            ));
        }
    }
    Ok(())
}

/// What a client's request becomes when `is_scoped` names its connection headers.
pub(crate) struct Lifted {
    /// Indices of the request's own fields.
    pub own: Vec<usize>,
    /// The connection header block's fields (empty: nothing changed).
    pub update: Vec<(String, String)>,
    /// The list in force afterwards (None: unchanged).
    pub after: Option<Headers>,
}

/// Split a request's headers: own fields, and the changes its connection-scoped
/// fields make to the list in force (a name whose values differ is set again;
/// a name in force the request does not carry is dropped).
pub(crate) fn lift_connection_headers<H: HeaderList + ?Sized>(
    headers: &H,
    is_scoped: impl Fn(&str) -> bool,
    current: &Headers,
) -> Lifted {
    let mut own = Vec::new();
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for i in 0..headers.field_count() {
        let field = headers.field(i);
        if is_scoped(field.0) {
            wanted.push(field);
        } else {
            own.push(i);
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for name in current
        .iter()
        .map(|(n, _)| n)
        .chain(wanted.iter().map(|f| f.0))
    {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut update = Vec::new();
    for name in names {
        let now = current.iter().filter(|(n, _)| *n == name).map(|(_, v)| v);
        let want = wanted.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v);
        if now.eq(want.clone()) {
            continue;
        }
        let mut any = false;
        for value in want {
            update.push((name.to_owned(), value.to_owned()));
            any = true;
        }
        if !any {
            update.push((DROP_HEADER.to_owned(), name.to_owned()));
        }
    }
    let after = (!update.is_empty()).then(|| apply_connection_update(current, &update));
    Lifted { own, update, after }
}

/// A REQUEST's effective list: `own[0]` (`:op`), the connection headers `own`
/// does not override, then `own[1..]`.
pub(crate) fn effective_request_headers<H: HeaderList + ?Sized>(
    connection: &Headers,
    own: &H,
) -> Headers {
    let mut effective = Headers::new();
    let count = own.field_count();
    if count > 0 {
        let (name, value) = own.field(0);
        effective.push(name, value);
    }
    let overridden = |name: &str| (0..count).any(|i| own.field(i).0 == name);
    for (name, value) in connection.iter() {
        if !overridden(name) {
            effective.push(name, value);
        }
    }
    for i in 1..count {
        let (name, value) = own.field(i);
        effective.push(name, value);
    }
    effective
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lift_and_apply_agree() {
        let scoped = |n: &str| n == "a" || n == "b";
        let mut current = Headers::new();
        for headers in [
            vec![("a", "1"), ("b", "2")],
            vec![("b", "3")],
            vec![("a", "1"), ("a", "2")],
            vec![],
        ] {
            let lifted = lift_connection_headers(&headers, scoped, &current);
            assert!(lifted.own.is_empty());
            if let Some(after) = lifted.after {
                current = after;
            }
            let mut got: Vec<_> = current.iter().collect();
            let mut want = headers.clone();
            got.sort();
            want.sort();
            assert_eq!(got, want);
        }
    }
}
