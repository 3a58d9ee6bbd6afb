//! The `Content-Range: <start>-<end>` of an upload chunk (PATCH or the closing PUT).
//!
//! Both ends are client numbers: parsed as digits only, into `u64`, with the length
//! computed by checked arithmetic, so no value can panic or wrap around.

/// The inclusive byte span a chunk claims to cover; never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    start: u64,
    end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRangeError {
    #[error("Content-Range {0:?} must be <start>-<end> in decimal bytes")]
    Malformed(String),
    #[error("Content-Range {0:?} ends before it starts")]
    Backwards(String),
    #[error("Content-Range {0:?} is larger than any upload can be")]
    TooLarge(String),
}

/// Digits only: `u64::from_str` would also take a leading `+`.
fn position(digits: &str, value: &str) -> Result<u64, ChunkRangeError> {
    let digits = digits.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ChunkRangeError::Malformed(value.to_string()));
    }
    digits
        .parse()
        .map_err(|_| ChunkRangeError::TooLarge(value.to_string()))
}

impl ChunkRange {
    pub fn new(start: u64, end: u64) -> Result<Self, ChunkRangeError> {
        let shown = || format!("{start}-{end}");
        if end < start {
            return Err(ChunkRangeError::Backwards(shown()));
        }
        // The length must fit a u64 too: `0-18446744073709551615` would be 2^64 bytes.
        if (end - start).checked_add(1).is_none() {
            return Err(ChunkRangeError::TooLarge(shown()));
        }
        Ok(ChunkRange { start, end })
    }

    /// Parses the spec's `<start>-<end>`; also takes the `bytes ` unit and a `/<total>`
    /// suffix of RFC 9110's form, which some clients send.
    pub fn parse(value: &str) -> Result<Self, ChunkRangeError> {
        let spec = value.trim();
        let spec = spec
            .strip_prefix("bytes ")
            .or_else(|| spec.strip_prefix("bytes="))
            .unwrap_or(spec);
        let spec = spec.split_once('/').map_or(spec, |(range, _total)| range);
        let (start, end) = spec
            .split_once('-')
            .ok_or_else(|| ChunkRangeError::Malformed(value.to_string()))?;
        let (start, end) = (position(start, value)?, position(end, value)?);
        ChunkRange::new(start, end).map_err(|e| match e {
            ChunkRangeError::Backwards(_) => ChunkRangeError::Backwards(value.to_string()),
            _ => ChunkRangeError::TooLarge(value.to_string()),
        })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes covered; at least 1, and it cannot overflow (checked in `new`).
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Display for ChunkRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_form_and_the_rfc_form() {
        let r = ChunkRange::parse("0-9").unwrap();
        assert_eq!((r.start(), r.end(), r.len()), (0, 9, 10));
        assert_eq!(ChunkRange::parse("bytes 10-19/*").unwrap().start(), 10);
        assert_eq!(ChunkRange::parse(" 5-5 ").unwrap().len(), 1);
    }

    #[test]
    fn refuses_backwards_malformed_and_signed_ranges() {
        assert!(matches!(
            ChunkRange::parse("9-3"),
            Err(ChunkRangeError::Backwards(_))
        ));
        for bad in [
            "", "-", "5", "5-", "-5", "a-b", "+1-2", "1-+2", "1--2", "0x1-2",
        ] {
            assert!(
                matches!(ChunkRange::parse(bad), Err(ChunkRangeError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn extreme_values_are_errors_not_wrap_arounds() {
        let max = u64::MAX;
        assert!(matches!(
            ChunkRange::parse(&format!("0-{max}")),
            Err(ChunkRangeError::TooLarge(_))
        ));
        assert!(matches!(
            ChunkRange::parse("0-18446744073709551616"),
            Err(ChunkRangeError::TooLarge(_))
        ));
        let top = ChunkRange::parse(&format!("1-{max}")).unwrap();
        assert_eq!(top.len(), max);
        assert_eq!(ChunkRange::parse(&format!("{max}-{max}")).unwrap().len(), 1);
    }
}
