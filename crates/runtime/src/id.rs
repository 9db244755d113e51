//! Container id rules (the same as runc's: `^[\w+\-.]+$`, not `.` or `..`).

use crate::{Error, Result};

/// Longest id accepted: ids become directory names, and NAME_MAX is 255.
pub const MAX_ID_LEN: usize = 255;

pub fn validate_id(id: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidId {
        id: id.to_owned(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id == "." || id == ".." {
        return Err(invalid("it is a relative path component"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid("it is longer than 255 bytes"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
    {
        return Err(invalid(
            "only letters, digits, '_', '+', '-' and '.' are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_runc_ids() {
        for id in ["a", "abc-123", "x_y.z+1", "0123456789abcdef"] {
            validate_id(id).unwrap();
        }
    }

    #[test]
    fn rejects_bad_ids() {
        for id in ["", ".", "..", "a/b", "../x", "a b", "é", "a\0b"] {
            assert!(validate_id(id).is_err(), "{id:?}");
        }
        assert!(validate_id(&"a".repeat(256)).is_err());
    }
}
